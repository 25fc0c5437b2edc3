//! Progress of a long job: an in-progress ack now, and an entry in the `jetfn-progress` KV bucket that an
//! operator (or `jetfn`, or any NATS client) reads by key.
//!
//! Why a KV entry and not a request the function answers: the entry is there whichever replica runs the job, while
//! a request would need every replica to answer or a subject per job; it survives the process (the last report of
//! a job that died is what an operator needs most); and reading it needs no code in the function. Entries expire
//! with the bucket's `max_age` (a day), so the bucket never grows with the job count.

use async_nats::jetstream::kv;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One consumer's progress writer, shared by its jobs (a `kv::Store` clone copies the bucket's stream info).
pub(crate) struct Reporter {
    pub(crate) store: Option<kv::Store>,
    pub(crate) client: async_nats::Client,
}

impl Reporter {
    pub(crate) async fn report(
        &self,
        function: &str,
        event_id: &str,
        ack_subject: Option<&async_nats::Subject>,
        attempt: u32,
        (done, total): (u64, u64),
        note: &str,
    ) {
        if let Some(reply) = ack_subject {
            crate::settle::progress_to(&self.client, reply.clone()).await;
        }
        let Some(store) = &self.store else {
            return;
        };
        let entry = events::Progress {
            event_id: event_id.to_owned(),
            function: function.to_owned(),
            attempt,
            done,
            total,
            note: events::progress::clean_note(note),
            updated: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
        };
        let Ok(value) = serde_json::to_vec(&entry) else {
            return;
        };
        let key = events::progress_key(function, event_id);
        match store.put(&key, value.into()).await {
            Ok(_) => tracing::debug!(done, total, "progress recorded"),
            Err(err) => tracing::warn!(error = %err, "progress not recorded"),
        }
    }
}
