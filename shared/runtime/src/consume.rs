//! The pull loop and bind: wait for a consumer to exist, pull its messages under its `max_ack_pending`, run one
//! task per message, and drain on shutdown. What a message's task does is the layer's ([`Process`]): the typed
//! layer for CloudEvents handlers, the raw layer for the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::Breaker;
use crate::health::Bound;
use crate::policy::Policy;
use crate::settle;

/// One message's work, from receipt to settle. Implemented once per layer and called through a type parameter;
/// the layers are not generic over the handler, which the typed layer reaches through one dynamic call per attempt
/// (`typed::RunAttempt`), so this crate compiles the pull loop once for all function binaries.
pub(crate) trait Process: Send + Sync + 'static {
    fn process(&self, message: jetstream::Message) -> impl Future<Output = ()> + Send;
}

/// Waits until `bind` succeeds, retrying with a growing delay: the consumer or a bucket may not exist yet.
pub(crate) async fn bind_with_backoff<B, F, Fut>(stream: &str, consumer: &str, bind: F) -> B
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<B>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match bind().await {
            Ok(bound) => return bound,
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"), stream, consumer,
                    "cannot bind yet (run `jetfn infra apply`?); retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Looks the durable consumer up on its stream.
pub(crate) async fn get_consumer(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<PullConsumer> {
    js.get_consumer_from_stream(consumer, stream)
        .await
        .map_err(|err| anyhow::anyhow!("consumer {consumer} on stream {stream}: {err}"))
}

/// Serves a bound consumer until `stop` is cancelled, then drains: stops pulling, lets in-flight messages finish
/// within `drain_timeout` and settle. What is unfinished at the deadline is redelivered later.
///
/// While `breaker` is open nothing is fetched: the pull (and its outstanding request, which the server drops once
/// its inbox has no subscriber) is given up, so every message goes to replicas whose route works, or waits on the
/// server while none does; the breaker's probe, not a message, tells when to fetch again.
pub(crate) async fn pull<P: Process>(
    consumer: PullConsumer,
    policy: &Policy,
    processor: Arc<P>,
    breaker: Option<&Breaker>,
    stop: &CancellationToken,
    bound: &Bound,
    drain_timeout: Duration,
) {
    bound.set(true);
    tracing::info!(
        stream = %policy.stream, consumer = %policy.consumer, max_deliver = ?policy.max_deliver,
        backoff = ?policy.backoff, max_ack_pending = policy.max_ack_pending, "consumer bound; serving"
    );
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(policy.max_ack_pending));
    let batch = policy.max_ack_pending.clamp(1, 256);
    let stopped = stop.cancelled();
    let mut stopped = std::pin::pin!(stopped);

    'pull: loop {
        if let Some(breaker) = breaker.filter(|breaker| breaker.is_open()) {
            tracing::info!(consumer = %policy.consumer, "circuit open: fetching nothing until it closes");
            tokio::select! {
                () = &mut stopped => break 'pull,
                () = breaker.closed() => {
                    tracing::info!(consumer = %policy.consumer, "circuit closed: fetching again");
                }
            }
        }
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "starting the pull failed; retrying");
                tokio::select! {
                    () = &mut stopped => break 'pull,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                }
            }
        };
        loop {
            let permit = tokio::select! {
                () = &mut stopped => break 'pull,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                () = &mut stopped => break 'pull,
                () = opened(breaker) => {
                    // Messages already delivered to this pull go through the layer, which gives them back at once;
                    // dropping the pull would leave them to be redelivered only after ack_wait.
                    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                        tracker.spawn(attempt(processor.clone(), message, None));
                    }
                    drop(permit);
                    continue 'pull;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    tracker.spawn(attempt(processor.clone(), message, Some(permit)));
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "pull error; continuing");
                    if matches!(
                        err.kind(),
                        jetstream::consumer::pull::MessagesErrorKind::ConsumerDeleted
                    ) {
                        bound.set(false);
                        // Not ready until `jetfn infra apply` re-creates it; then ready again, and serving.
                        loop {
                            tokio::select! {
                                () = &mut stopped => break 'pull,
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                            if consumer.get_info().await.is_ok() {
                                break;
                            }
                        }
                        tracing::info!(consumer = %policy.consumer, "consumer re-created; serving again");
                        bound.set(true);
                        continue 'pull;
                    }
                }
                None => continue 'pull,
            }
        }
    }

    // Draining: nothing new is pulled; messages buffered but not started are redelivered after ack_wait.
    bound.set(false);
    tracker.close();
    let in_flight = tracker.len();
    tracing::info!(
        consumer = %policy.consumer,
        in_flight,
        timeout_secs = drain_timeout.as_secs(),
        "draining in-flight handlers"
    );
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            consumer = %policy.consumer,
            still_running = tracker.len(),
            "drain timeout reached; unfinished messages will be redelivered"
        );
    }
}

/// One message's task: its work, then its slot under `max_ack_pending` given back.
///
/// Boxed here, once: the work's future holds the whole attempt's state and is large, and spawned unboxed it was
/// copied several times on its way into the task, about 2,600 instructions per event, 4% of the no-op
/// runtime's (tests/bench/ANALYSIS.md, section 28).
pub(crate) fn attempt<P: Process>(
    processor: Arc<P>,
    message: jetstream::Message,
    permit: Option<OwnedSemaphorePermit>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        processor.process(message).await;
        drop(permit);
    })
}

/// Resolves when `breaker` opens; never without one.
async fn opened(breaker: Option<&Breaker>) {
    match breaker {
        Some(breaker) => breaker.opened().await,
        None => std::future::pending().await,
    }
}

/// How a supervised handler ended.
pub(crate) enum Supervised<T> {
    Returned(T),
    Panicked,
    TimedOut,
}

impl<T> Supervised<T> {
    /// The outcome to settle: the handler's own (through `returned`), or a transient failure when it panicked or
    /// outlived `timeout`, so either layer reports both the same way.
    pub(crate) fn into_outcome(
        self,
        timeout: Duration,
        returned: impl FnOnce(T) -> settle::Outcome,
    ) -> settle::Outcome {
        let retry = |reason: String| settle::Outcome::Retry {
            after: None,
            reason,
        };
        match self {
            Self::Returned(value) => returned(value),
            Self::Panicked => retry("handler panicked".to_owned()),
            Self::TimedOut => retry(format!(
                "handler still running after {} s (JOB_HANDLER_TIMEOUT_SECS)",
                timeout.as_secs()
            )),
        }
    }
}

/// Runs a handler's future in place, keeping its message alive with progress acks and abandoning it after
/// `timeout`. A panic is caught here and the process keeps serving; polling in place avoids a task spawn per
/// message.
pub(crate) async fn supervise<F: Future>(
    handler: F,
    message: &jetstream::Message,
    policy: &Policy,
    timeout: Duration,
) -> Supervised<F::Output> {
    let mut handle = std::pin::pin!(std::panic::AssertUnwindSafe(handler).catch_unwind());
    // A handler that finishes at its first poll (one with nothing to wait for, or one that skips) needs neither
    // the progress timer nor the deadline, whose registering and cancelling take the timer driver per event.
    let joined = if let std::task::Poll::Ready(joined) = futures::poll!(&mut handle) {
        joined
    } else {
        let period = policy.progress_period();
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = &mut handle => break joined,
                _ = progress.tick() => settle::progress(message).await,
                () = &mut deadline => return Supervised::TimedOut,
            }
        }
    };
    match joined {
        Ok(output) => Supervised::Returned(output),
        Err(_panic) => Supervised::Panicked,
    }
}

/// Runs `work`, which comes after the handler and before the message's final ack (the outcome event of a dead
/// letter, a batch item's count, the dead-letter record), keeping the message with in-progress acks while it
/// runs. On a slow or stalled server that work can outlast what is left of `ack_wait`; the server would then give
/// the message to another replica, which runs the event again while this one dead-letters it (seen in CI: an
/// email sent on the redelivery of an event this replica was dead-lettering for a 550). Work that ends at its
/// first poll costs no timer.
pub(crate) async fn kept_alive<F: Future>(
    work: F,
    message: &jetstream::Message,
    period: Duration,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    if let std::task::Poll::Ready(output) = futures::poll!(&mut work) {
        return output;
    }
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = progress.tick() => settle::progress(message).await,
        }
    }
}

/// The headers an attempt of a typed handler reads, found in one pass over the message's header map. A lookup by
/// name hashes the name (SipHash, the map's hasher) and probes the map; five of them per attempt cost about 1,500
/// instructions, 2% of a no-op attempt (tests/bench/ANALYSIS.md, section 31), where a pass over a message's few
/// headers compares names. Each value is a header's first, as `HeaderMap::get` gives it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Known<'m> {
    /// `Nats-Msg-Id`, or empty.
    pub(crate) message_id: &'m str,
    pub(crate) batch_id: Option<&'m str>,
    pub(crate) batch_index: Option<&'m str>,
    /// The key of the event's sealed fields.
    pub(crate) key_id: Option<&'m str>,
    /// `Nats-Scheduler`: the server set it on a message a schedule generated.
    scheduler: bool,
    /// `Nats-Schedule-Next`: the next firing, or `purge` after a one-off `@at`.
    schedule_next: Option<&'m str>,
}

impl<'m> Known<'m> {
    pub(crate) fn of(headers: Option<&'m async_nats::HeaderMap>) -> Self {
        use async_nats::header::{NATS_MESSAGE_ID, NATS_SCHEDULE_NEXT, NATS_SCHEDULER};
        let mut known = Self::default();
        for (name, values) in headers.into_iter().flat_map(async_nats::HeaderMap::iter) {
            let Some(value) = values.first().map(async_nats::HeaderValue::as_str) else {
                continue;
            };
            if *name == NATS_MESSAGE_ID {
                known.message_id = value;
            } else if *name == publish::batch::BATCH_ID {
                known.batch_id = Some(value);
            } else if *name == publish::batch::BATCH_INDEX {
                known.batch_index = Some(value);
            } else if *name == publish::sealed::KEY_ID {
                known.key_id = Some(value);
            } else if *name == NATS_SCHEDULER {
                known.scheduler = true;
            } else if *name == NATS_SCHEDULE_NEXT {
                known.schedule_next = Some(value);
            }
        }
        known
    }

    /// A message a recurring NATS message schedule generated: the server sets `Nats-Scheduler` (the schedule's
    /// subject) and `Nats-Schedule-Next` (the next firing, or `purge` after a one-off `@at`).
    pub(crate) fn is_recurring_firing(&self) -> bool {
        self.scheduler && self.schedule_next.is_some_and(|next| next != "purge")
    }
}

/// The delivery count and stream sequence of a JetStream message; `None` (logged) for one without metadata.
pub(crate) fn delivery(message: &jetstream::Message) -> Option<(u32, u64)> {
    if let Some((delivered, sequence)) = message.reply.as_deref().and_then(ack_numbers) {
        return Some((u32::try_from(delivered).unwrap_or(u32::MAX), sequence));
    }
    // Not the plain form: `info` decides, and names what is wrong.
    match message.info() {
        Ok(info) => Some((
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            info.stream_sequence,
        )),
        Err(err) => {
            tracing::error!(error = %err, "message without JetStream metadata; ignoring it");
            None
        }
    }
}

/// The delivery count and stream sequence in a `$JS.ACK.` reply subject, where every number in it is plain digits;
/// `None` otherwise, and [`jetstream::Message::info`] reads it. `info` also parses the publish time into a date
/// (an `i128` parse and a calendar conversion) and the other numbers, which no attempt uses: `delivery` took
/// about 1,560 instructions per attempt through it, 900 through this (tests/bench/ANALYSIS.md, section 40).
/// Where this gives numbers, `info` gives the same ones (a unit test holds the two to that): the same tokens
/// (ADR-15's form of 7 tokens after the prefix, or 9 and more, of which it reads 10), and every number `info`
/// parses checked here too, so a subject it refuses is not taken here.
fn ack_numbers(reply: &str) -> Option<(u64, u64)> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // The first ten of `rest.split('.')`, by a loop over the bytes: `split` looks for each dot with a `memchr`
    // call, whose setup cost more than these short tokens.
    let mut tokens = [""; 10];
    let (mut count, mut start) = (0, 0);
    for (at, byte) in rest.bytes().enumerate() {
        if byte == b'.' {
            tokens[count] = &rest[start..at];
            count += 1;
            start = at + 1;
            if count == tokens.len() {
                break;
            }
        }
    }
    if count < tokens.len() {
        tokens[count] = &rest[start..];
        count += 1;
    }
    let numbers = match count {
        7 => &tokens[2..7],
        9.. => &tokens[4..9],
        _ => return None,
    };
    let [delivered, stream, consumer, published, pending] = numbers else {
        return None;
    };
    let digits = |token: &str, most: usize| {
        if token.is_empty() || token.len() > most {
            return None;
        }
        token.bytes().try_fold(0_u64, |value, byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u64::from(byte - b'0'))
        })
    };
    // Up to 19 digits always fit a u64 (and, as nanoseconds, a date `info` converts); `info` reads the delivery
    // count as an i64, which 18 always fit.
    digits(consumer, 19)?;
    digits(published, 19)?;
    digits(pending, 19)?;
    Some((digits(delivered, 18)?, digits(stream, 19)?))
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;
    use async_nats::header::{NATS_MESSAGE_ID, NATS_SCHEDULE_NEXT, NATS_SCHEDULER};

    use super::Known;

    /// What the lookups by name that [`Known::of`] replaced read from `headers`.
    fn by_lookup(headers: &HeaderMap) -> (String, Option<(String, u64)>, Option<&str>, bool) {
        let message_id = headers
            .get(NATS_MESSAGE_ID)
            .map_or("", async_nats::HeaderValue::as_str)
            .to_owned();
        let recurring = headers.get(NATS_SCHEDULER).is_some()
            && headers
                .get(NATS_SCHEDULE_NEXT)
                .is_some_and(|next| next.as_str() != "purge");
        (
            message_id,
            publish::batch::item_of(Some(headers)),
            publish::sealed::key_id_of(Some(headers)),
            recurring,
        )
    }

    fn by_pass(headers: &HeaderMap) -> (String, Option<(String, u64)>, Option<&str>, bool) {
        let known = Known::of(Some(headers));
        (
            known.message_id.to_owned(),
            publish::batch::item_from(known.batch_id, known.batch_index),
            known.key_id,
            known.is_recurring_firing(),
        )
    }

    #[test]
    fn one_pass_over_the_headers_reads_what_the_lookups_by_name_read() {
        let names = [
            "Nats-Msg-Id",
            "nats-msg-id",
            events::batches::BATCH_ID_HEADER,
            events::batches::BATCH_INDEX_HEADER,
            publish::sealed::KEY_ID_HEADER,
            "Nats-Scheduler",
            "Nats-Schedule-Next",
            "traceparent",
            "content-type",
        ];
        let values = ["evt-1", "7", "not a number", "purge", "@every 5m", ""];
        // Every subset of the names (some with a second value, which neither path reads), values rotating.
        for mask in 0_u32..(1 << names.len()) {
            let mut headers = HeaderMap::new();
            for (at, name) in names.iter().enumerate() {
                if mask & (1 << at) != 0 {
                    let pick = (at + mask as usize) % values.len();
                    headers.append(*name, values[pick]);
                    if (mask >> at) % 3 == 0 {
                        headers.append(*name, values[(pick + 1) % values.len()]);
                    }
                }
            }
            assert_eq!(
                by_pass(&headers),
                by_lookup(&headers),
                "headers {headers:?}"
            );
        }
        let none = Known::of(None);
        assert_eq!(none.message_id, "");
        assert!(none.batch_id.is_none() && none.key_id.is_none() && !none.is_recurring_firing());
    }

    /// Where [`super::ack_numbers`] reads a reply subject, async-nats' `info` reads the same numbers from it; the
    /// subjects it leaves to `info` include every one `info` refuses.
    #[tokio::test]
    async fn ack_numbers_agree_with_info() {
        // A client that never connects: `info` only reads the message.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("a client");
        let context = async_nats::jetstream::new(client);
        let info = |reply: &str| {
            let message = async_nats::jetstream::Message {
                message: async_nats::Message {
                    subject: "events.x".into(),
                    reply: Some(reply.into()),
                    payload: bytes::Bytes::new(),
                    headers: None,
                    status: None,
                    description: None,
                    length: 0,
                },
                context: context.clone(),
            };
            let info = message.info().ok()?;
            Some((u64::try_from(info.delivered).ok()?, info.stream_sequence))
        };
        let mut taken = 0;
        let numbers = [
            "0",
            "1",
            "7",
            "42",
            "18446744073709551615",
            "9999999999999999999",
            "99999999999999999999",
            "+1",
            "-1",
            "",
            "1a",
            "01",
            "1764668400000000000",
            "ab",
        ];
        let mut subjects = vec![
            "$JS.ACK.EVENTS.welcome.1.2.3.1764668400000000000.0".to_owned(),
            "$JS.ACK._.ACCHASH.EVENTS.welcome.3.1234.17.1764668400000000000.5".to_owned(),
            "$JS.ACK._.ACCHASH.EVENTS.welcome.3.1234.17.1764668400000000000.5.tok".to_owned(),
            "$JS.ACK.hub.ACCHASH.EVENTS.welcome.3.1234.17.1764668400000000000.5.tok.more.x"
                .to_owned(),
            "$JS.ACK.EVENTS.welcome.1.2.3.4".to_owned(),
            "$JS.ACK.EVENTS.welcome.1.2.3.4.5.6".to_owned(),
            "$JS.ACK.a.b.c.d.e.f.g.h".to_owned(),
            "$JS.ACK.".to_owned(),
            "$JS.NAK.EVENTS.welcome.1.2.3.4.5".to_owned(),
            "_INBOX.x".to_owned(),
        ];
        for (at, number) in numbers.iter().enumerate() {
            for position in 0..5 {
                let mut fields = ["1", "2", "3", "1764668400000000000", "0"];
                fields[position] = number;
                let [d, s, c, t, p] = fields;
                subjects.push(format!("$JS.ACK.EVENTS.welcome.{d}.{s}.{c}.{t}.{p}"));
                subjects.push(format!("$JS.ACK._.H.EVENTS.c{at}.{d}.{s}.{c}.{t}.{p}.z"));
            }
        }
        for subject in &subjects {
            let ours = super::ack_numbers(subject);
            if ours.is_some() {
                taken += 1;
                assert_eq!(ours, info(subject), "{subject}");
            }
        }
        // The plain form is taken, not all left to `info`.
        assert!(taken >= 40, "only {taken} taken");
        assert_eq!(
            super::ack_numbers(
                "$JS.ACK._.ACCHASH.EVENTS.welcome.3.1234.17.1764668400000000000.5.tok"
            ),
            Some((3, 1234))
        );
    }
}
