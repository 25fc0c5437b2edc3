//! The tantivy index: one document per message id, holding its version, or a tombstone once it was deleted.
//!
//! Only [`Writer`] changes the index, and only the committer thread owns it, so every check-then-write is
//! serialized. [`Searcher`] is the read side, shared with the search service.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;

use anyhow::Context as _;
use events::services::index::{Hit, SearchRequest, SearchResponse};
use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value as _,
};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

const LIVE: &str = "live";
const DELETED: &str = "deleted";

/// Orders the versions of one message: the event's own time first, then the kind of change (an update beats a
/// create of the same millisecond), then the stream sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// `created_at` of a create, `updated_at` of an update, in unix milliseconds.
    pub ms: i64,
    /// 0 for a create, 1 for an update.
    pub rank: u64,
    /// The event's sequence in its stream.
    pub seq: u64,
}

/// A message as the index stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDoc {
    /// The platform's message id.
    pub message_id: String,
    /// Its conversation.
    pub conversation_id: String,
    /// Its author.
    pub sender_id: String,
    /// Its text.
    pub body: String,
    /// When it was written, unix milliseconds; retention is measured from here.
    pub created_at_ms: i64,
}

/// One change an event asks for.
#[derive(Debug, Clone)]
pub enum Change {
    /// A create (first version) or an update (a later one).
    Upsert {
        /// The message.
        doc: MessageDoc,
        /// Its version.
        version: Version,
        /// True for `messages.created`: a create never replaces anything the index holds.
        create: bool,
    },
    /// A delete: final.
    Delete {
        /// The message id.
        message_id: String,
        /// Its conversation.
        conversation_id: String,
        /// When it was deleted, unix milliseconds.
        deleted_at_ms: i64,
    },
}

impl Change {
    fn message_id(&self) -> &str {
        match self {
            Self::Upsert { doc, .. } => &doc.message_id,
            Self::Delete { message_id, .. } => message_id,
        }
    }
}

/// What the index holds for one message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A searchable message at `version`.
    Live {
        /// Its version.
        version: Version,
        /// When it was written.
        created_at_ms: i64,
    },
    /// A tombstone: the message was deleted and stays deleted.
    Deleted {
        /// When the message was written (or deleted, when the index never saw it).
        created_at_ms: i64,
    },
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The change was written (it becomes durable at the next commit).
    Write,
    /// Nothing to do, and why.
    Skip(&'static str),
    /// The change must not be applied and must not be lost either: the runtime dead-letters it, and why. An event
    /// about a message written before the retention watermark is one: it was acked and dropped before, so a
    /// purge with a cut-off set too late (issue 14, item 7) dropped a backlog for good, with no record.
    Refuse(&'static str),
}

/// The rules that make indexing idempotent and safe against reordering; pure, so they are unit-tested alone.
///
/// `purged_before_ms` is the retention watermark: everything written before it was purged, so a late event about
/// such a message must not bring it back either.
pub fn decide(stored: Option<&Stored>, change: &Change, purged_before_ms: i64) -> Decision {
    match (change, stored) {
        (Change::Upsert { .. }, Some(Stored::Deleted { .. })) => {
            Decision::Skip("the message was deleted")
        }
        (Change::Upsert { doc, .. }, _) if doc.created_at_ms < purged_before_ms => {
            Decision::Refuse(
                "the message was written before the index's retention cut-off (a purge removed that period)",
            )
        }
        (Change::Upsert { create: true, .. }, Some(Stored::Live { .. })) => {
            Decision::Skip("the index already holds this message")
        }
        (Change::Upsert { version, .. }, Some(Stored::Live { version: held, .. }))
            if held >= version =>
        {
            Decision::Skip("the index holds this version or a newer one")
        }
        (Change::Upsert { .. }, _) => Decision::Write,
        (Change::Delete { .. }, Some(Stored::Deleted { .. })) => Decision::Skip("already deleted"),
        (Change::Delete { .. }, Some(Stored::Live { .. })) => Decision::Write,
        (Change::Delete { deleted_at_ms, .. }, None) if *deleted_at_ms < purged_before_ms => {
            // Any create of it was written before the deletion, so before the watermark: it stays out anyway.
            Decision::Skip("the message is past retention")
        }
        (Change::Delete { .. }, None) => Decision::Write,
    }
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    message_id: Field,
    conversation_id: Field,
    sender_id: Field,
    body: Field,
    created_at: Field,
    version_ms: Field,
    version_rank: Field,
    version_seq: Field,
    state: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        message_id: builder.add_text_field("message_id", STRING | STORED),
        conversation_id: builder.add_text_field("conversation_id", STRING | STORED),
        sender_id: builder.add_text_field("sender_id", STRING | STORED),
        body: builder.add_text_field("body", TEXT | STORED),
        created_at: builder.add_i64_field("created_at_ms", INDEXED | STORED | FAST),
        version_ms: builder.add_i64_field("version_ms", STORED),
        version_rank: builder.add_u64_field("version_rank", STORED),
        version_seq: builder.add_u64_field("version_seq", STORED),
        state: builder.add_text_field("state", STRING | STORED),
    };
    (builder.build(), fields)
}

/// What each commit records next to the segments (tantivy's commit payload), so it survives restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CommitPayload {
    purged_before_ms: i64,
}

/// The read side: cheap to clone, safe to use from many tasks.
#[derive(Clone)]
pub struct Searcher {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The request is wrong (bad query syntax, a limit out of range).
    #[error("{0}")]
    BadRequest(String),
    /// The index could not be read.
    #[error("{0}")]
    Internal(String),
}

impl Searcher {
    /// Runs one search on the last committed state.
    ///
    /// # Errors
    /// A bad request, or an index read failure.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse, SearchError> {
        let limit = request.page().map_err(SearchError::BadRequest)?;
        let f = self.fields;
        let text: Box<dyn Query> = if request.q.trim().is_empty() {
            Box::new(AllQuery)
        } else {
            QueryParser::for_index(&self.index, vec![f.body])
                .parse_query(&request.q)
                .map_err(|err| SearchError::BadRequest(format!("query: {err}")))?
        };
        let mut clauses = vec![
            (Occur::Must, text),
            (Occur::Must, term_query(f.state, LIVE)),
        ];
        if let Some(conversation) = &request.conversation_id {
            clauses.push((Occur::Must, term_query(f.conversation_id, conversation)));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(limit)
            .and_offset(request.offset)
            .order_by_score();
        let (total, top) = searcher
            .search(&query, &(Count, top))
            .map_err(|err| SearchError::Internal(err.to_string()))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|err| SearchError::Internal(err.to_string()))?;
            let created_at_ms = doc_i64(&doc, f.created_at);
            hits.push(Hit {
                message_id: doc_str(&doc, f.message_id),
                conversation_id: doc_str(&doc, f.conversation_id),
                sender_id: doc_str(&doc, f.sender_id),
                body: doc_str(&doc, f.body),
                created_at: rfc3339(created_at_ms),
                score,
            });
        }
        Ok(SearchResponse { total, hits })
    }

    /// Index entries (messages and tombstones) in the last committed state.
    pub fn entries(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// The write side, owned by the committer thread.
pub struct Writer {
    writer: IndexWriter<TantivyDocument>,
    searcher: Searcher,
    /// What this batch changed and is not committed yet.
    pending: HashMap<String, Stored>,
    purged_before_ms: i64,
}

/// Opens the index in `dir` (creating it when empty): the writer and a searcher on it.
///
/// # Errors
/// The directory cannot be created or opened, holds an index of another schema, or is locked by another process.
pub fn open(dir: &Path, writer_memory_bytes: usize) -> anyhow::Result<(Writer, Searcher)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (schema, fields) = schema();
    let directory =
        MmapDirectory::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let index = Index::open_or_create(directory, schema)
        .with_context(|| format!("opening the index in {}", dir.display()))?;
    let payload: CommitPayload = index
        .load_metas()?
        .payload
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let writer = index
        .writer_with_num_threads(1, writer_memory_bytes)
        .with_context(|| {
            format!(
                "locking the index in {} (is another indexing process using it?)",
                dir.display()
            )
        })?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let searcher = Searcher {
        index,
        reader,
        fields,
    };
    Ok((
        Writer {
            writer,
            searcher: searcher.clone(),
            pending: HashMap::new(),
            purged_before_ms: payload.purged_before_ms,
        },
        searcher,
    ))
}

impl Writer {
    /// Checks `change` against what the index holds (committed or pending) and, when it is newer, writes it.
    ///
    /// # Errors
    /// An index read or write failure.
    pub fn apply(&mut self, change: &Change) -> anyhow::Result<Decision> {
        let stored = self.lookup(change.message_id())?;
        let decision = decide(stored.as_ref(), change, self.purged_before_ms);
        if decision != Decision::Write {
            return Ok(decision);
        }
        let f = self.searcher.fields;
        let mut doc = TantivyDocument::default();
        let (message_id, new_state) = match change {
            Change::Upsert {
                doc: message,
                version,
                ..
            } => {
                doc.add_text(f.message_id, &message.message_id);
                doc.add_text(f.conversation_id, &message.conversation_id);
                doc.add_text(f.sender_id, &message.sender_id);
                doc.add_text(f.body, &message.body);
                doc.add_i64(f.created_at, message.created_at_ms);
                doc.add_i64(f.version_ms, version.ms);
                doc.add_u64(f.version_rank, version.rank);
                doc.add_u64(f.version_seq, version.seq);
                doc.add_text(f.state, LIVE);
                (
                    &message.message_id,
                    Stored::Live {
                        version: *version,
                        created_at_ms: message.created_at_ms,
                    },
                )
            }
            Change::Delete {
                message_id,
                conversation_id,
                deleted_at_ms,
            } => {
                // Keep the message's own age when the index knew it, so retention removes the tombstone with it.
                let created_at_ms = match stored {
                    Some(Stored::Live { created_at_ms, .. }) => created_at_ms,
                    _ => *deleted_at_ms,
                };
                doc.add_text(f.message_id, message_id);
                doc.add_text(f.conversation_id, conversation_id);
                doc.add_i64(f.created_at, created_at_ms);
                doc.add_i64(f.version_ms, *deleted_at_ms);
                doc.add_text(f.state, DELETED);
                (message_id, Stored::Deleted { created_at_ms })
            }
        };
        // Delete-then-add in one batch: tantivy applies the delete to documents added before it only.
        self.writer
            .delete_term(Term::from_field_text(f.message_id, message_id));
        self.writer.add_document(doc)?;
        self.pending.insert(message_id.clone(), new_state);
        Ok(Decision::Write)
    }

    /// Makes everything applied so far durable and searchable.
    ///
    /// # Errors
    /// The commit failed; the caller must [`Writer::rollback`].
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let payload = serde_json::to_string(&CommitPayload {
            purged_before_ms: self.purged_before_ms,
        })?;
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.searcher.reader.reload()?;
        self.pending.clear();
        Ok(())
    }

    /// Drops what was applied since the last commit (after a failed commit).
    pub fn rollback(&mut self) {
        if let Err(err) = self.writer.rollback() {
            tracing::error!(error = %err, "index rollback failed");
        }
        self.pending.clear();
    }

    /// Removes every entry (message or tombstone) written before `before_ms`, raises the retention watermark to it,
    /// and commits. Returns how many entries it removed: a second purge with the same cut-off removes none.
    ///
    /// # Errors
    /// An index read, write or commit failure.
    pub fn purge(&mut self, before_ms: i64) -> anyhow::Result<u64> {
        let f = self.searcher.fields;
        let range = || {
            RangeQuery::new(
                Bound::Included(Term::from_field_i64(f.created_at, i64::MIN)),
                Bound::Excluded(Term::from_field_i64(f.created_at, before_ms)),
            )
        };
        let removed = self.searcher.reader.searcher().search(&range(), &Count)?;
        self.writer.delete_query(Box::new(range()))?;
        self.purged_before_ms = self.purged_before_ms.max(before_ms);
        self.commit()?;
        Ok(u64::try_from(removed).unwrap_or(u64::MAX))
    }

    /// The retention watermark.
    pub fn purged_before_ms(&self) -> i64 {
        self.purged_before_ms
    }

    fn lookup(&self, message_id: &str) -> anyhow::Result<Option<Stored>> {
        if let Some(stored) = self.pending.get(message_id) {
            return Ok(Some(stored.clone()));
        }
        let f = self.searcher.fields;
        let searcher = self.searcher.reader.searcher();
        let found: Vec<(f32, DocAddress)> = searcher.search(
            &term_query(f.message_id, message_id),
            &TopDocs::with_limit(1).order_by_score(),
        )?;
        let Some((_, address)) = found.first() else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher.doc(*address)?;
        let created_at_ms = doc_i64(&doc, f.created_at);
        Ok(Some(if doc_str(&doc, f.state) == DELETED {
            Stored::Deleted { created_at_ms }
        } else {
            Stored::Live {
                version: Version {
                    ms: doc_i64(&doc, f.version_ms),
                    rank: doc
                        .get_first(f.version_rank)
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                    seq: doc
                        .get_first(f.version_seq)
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                },
                created_at_ms,
            }
        }))
    }
}

fn term_query(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, text),
        IndexRecordOption::Basic,
    ))
}

fn doc_str(doc: &TantivyDocument, field: Field) -> String {
    doc.get_first(field)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn doc_i64(doc: &TantivyDocument, field: Field) -> i64 {
    doc.get_first(field).and_then(|v| v.as_i64()).unwrap_or(0)
}

/// Unix milliseconds as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(ms: i64, seq: u64, create: bool, body: &str) -> Change {
        Change::Upsert {
            doc: MessageDoc {
                message_id: "m1".into(),
                conversation_id: "c1".into(),
                sender_id: "u1".into(),
                body: body.into(),
                created_at_ms: 1_000,
            },
            version: Version {
                ms,
                rank: u64::from(!create),
                seq,
            },
            create,
        }
    }

    fn delete() -> Change {
        Change::Delete {
            message_id: "m1".into(),
            conversation_id: "c1".into(),
            deleted_at_ms: 9_000,
        }
    }

    fn live(ms: i64, rank: u64, seq: u64) -> Stored {
        Stored::Live {
            version: Version { ms, rank, seq },
            created_at_ms: 1_000,
        }
    }

    #[test]
    fn nothing_brings_a_deleted_message_back() {
        let tomb = Stored::Deleted {
            created_at_ms: 1_000,
        };
        assert!(matches!(
            decide(Some(&tomb), &upsert(1_000, 1, true, "x"), 0),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(Some(&tomb), &upsert(99_000, 9, false, "x"), 0),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(Some(&tomb), &delete(), 0),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn an_older_update_never_overwrites_a_newer_one() {
        let held = live(5_000, 1, 7);
        assert!(matches!(
            decide(Some(&held), &upsert(4_000, 9, false, "old"), 0),
            Decision::Skip(_)
        ));
        assert_eq!(
            decide(Some(&held), &upsert(6_000, 3, false, "new"), 0),
            Decision::Write
        );
        // The same version again (a redelivery) is a no-op.
        assert!(matches!(
            decide(Some(&held), &upsert(5_000, 7, false, "same"), 0),
            Decision::Skip(_)
        ));
        // Same millisecond: an update wins over the create, whatever the sequences.
        assert_eq!(
            decide(
                Some(&live(1_000, 0, 9)),
                &upsert(1_000, 2, false, "edit"),
                0
            ),
            Decision::Write
        );
    }

    #[test]
    fn a_create_only_writes_what_the_index_does_not_hold() {
        assert_eq!(
            decide(None, &upsert(1_000, 1, true, "x"), 0),
            Decision::Write
        );
        assert!(matches!(
            decide(Some(&live(3_000, 1, 2)), &upsert(1_000, 1, true, "x"), 0),
            Decision::Skip(_)
        ));
        // An update that arrives before its create is indexed.
        assert_eq!(
            decide(None, &upsert(3_000, 2, false, "x"), 0),
            Decision::Write
        );
    }

    #[test]
    fn a_delete_before_anything_else_leaves_a_tombstone() {
        assert_eq!(decide(None, &delete(), 0), Decision::Write);
        assert_eq!(decide(Some(&live(1, 0, 1)), &delete(), 0), Decision::Write);
    }

    #[test]
    fn nothing_older_than_the_watermark_comes_back() {
        // Refused, not skipped: the runtime dead-letters it, so a purge set too late loses no event silently.
        assert!(matches!(
            decide(None, &upsert(1_000, 1, true, "x"), 2_000),
            Decision::Refuse(_)
        ));
        assert!(matches!(
            decide(
                Some(&live(1_500, 0, 1)),
                &upsert(1_800, 2, false, "x"),
                2_000
            ),
            Decision::Refuse(_)
        ));
        assert!(matches!(decide(None, &delete(), 10_000), Decision::Skip(_)));
    }

    fn created(id: &str, created_at_ms: i64, seq: u64, body: &str) -> Change {
        Change::Upsert {
            doc: MessageDoc {
                message_id: id.into(),
                conversation_id: "c1".into(),
                sender_id: "u1".into(),
                body: body.into(),
                created_at_ms,
            },
            version: Version {
                ms: created_at_ms,
                rank: 0,
                seq,
            },
            create: true,
        }
    }

    fn search(searcher: &Searcher, q: &str) -> SearchResponse {
        searcher
            .search(&SearchRequest {
                q: q.into(),
                conversation_id: None,
                limit: Some(10),
                offset: 0,
            })
            .unwrap()
    }

    #[test]
    fn writes_commit_search_and_purge_on_disk() {
        let dir = std::env::temp_dir().join(format!(
            "jetfn-index-unit-{}-{}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        let (mut writer, searcher) = open(&dir, 15_000_000).unwrap();
        assert_eq!(
            writer
                .apply(&created("a", 1_000, 1, "old lighthouse"))
                .unwrap(),
            Decision::Write
        );
        assert_eq!(
            writer
                .apply(&created("b", 5_000, 2, "new lighthouse"))
                .unwrap(),
            Decision::Write
        );
        // Pending state is consulted before the commit.
        assert!(matches!(
            writer
                .apply(&created("a", 1_000, 1, "old lighthouse"))
                .unwrap(),
            Decision::Skip(_)
        ));
        assert_eq!(
            search(&searcher, "lighthouse").total,
            0,
            "not committed yet"
        );
        writer.commit().unwrap();
        assert_eq!(search(&searcher, "lighthouse").total, 2);
        assert_eq!(writer.purge(3_000).unwrap(), 1);
        assert_eq!(
            writer.purge(3_000).unwrap(),
            0,
            "a second purge removes nothing"
        );
        let hits = search(&searcher, "lighthouse").hits;
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].message_id, "b");
        drop(writer);
        // The watermark survives a reopen.
        let (mut writer, _searcher) = open(&dir, 15_000_000).unwrap();
        assert_eq!(writer.purged_before_ms(), 3_000);
        assert!(matches!(
            writer
                .apply(&created("a", 1_000, 1, "old lighthouse"))
                .unwrap(),
            Decision::Refuse(_)
        ));
        drop(writer);
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The version rules are order-independent: every order of the same events (redeliveries included) gives the same
/// final index. Checked on the pure rule for many orders, and on a real tantivy index in a temporary directory for
/// fewer (with commits at random points, so lookups hit both pending and committed state).
#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    /// What a reader can observe of one message id.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Observed {
        Live(Version, String),
        Deleted,
    }

    fn doc(id: &str, created_at_ms: i64, body: String) -> MessageDoc {
        MessageDoc {
            message_id: id.to_owned(),
            conversation_id: "c1".to_owned(),
            sender_id: "u1".to_owned(),
            body,
            created_at_ms,
        }
    }

    /// The history of a few messages as a producer writes it: one create each, later updates, deletes no earlier
    /// than the create; each event may be redelivered (the same stream sequence again).
    fn history() -> impl Strategy<Value = Vec<Change>> {
        let message = |id: usize| {
            (
                0i64..10_000,
                proptest::collection::vec(0i64..10_000, 0..4),
                proptest::collection::vec(0i64..10_000, 0..2),
            )
                .prop_map(move |(created, updates, deletes)| {
                    let id = format!("m{id}");
                    let mut changes = vec![Change::Upsert {
                        doc: doc(&id, created, format!("create {id}")),
                        version: Version {
                            ms: created,
                            rank: 0,
                            seq: 0,
                        },
                        create: true,
                    }];
                    for (k, later) in updates.into_iter().enumerate() {
                        changes.push(Change::Upsert {
                            doc: doc(&id, created, format!("update {id} {k}")),
                            version: Version {
                                ms: created + later,
                                rank: 1,
                                seq: 0,
                            },
                            create: false,
                        });
                    }
                    for later in deletes {
                        changes.push(Change::Delete {
                            message_id: id.clone(),
                            conversation_id: "c1".to_owned(),
                            deleted_at_ms: created + later,
                        });
                    }
                    changes
                })
        };
        (
            message(0),
            message(1),
            message(2),
            proptest::collection::vec(any::<bool>(), 16),
        )
            .prop_map(|(a, b, c, redelivered)| {
                let mut all: Vec<Change> = a.into_iter().chain(b).chain(c).collect();
                // Stream sequences in publish order; then the redeliveries, identical to their original.
                for (seq, change) in all.iter_mut().enumerate() {
                    if let Change::Upsert { version, .. } = change {
                        version.seq = seq as u64 + 1;
                    }
                }
                let again: Vec<Change> = all
                    .iter()
                    .zip(redelivered)
                    .filter(|(_, again)| *again)
                    .map(|(change, _)| change.clone())
                    .collect();
                all.extend(again);
                all
            })
    }

    /// The history, and two orders of it.
    fn two_orders() -> impl Strategy<Value = (Vec<Change>, Vec<Change>, i64)> {
        (history(), prop_oneof![Just(0i64), 0i64..12_000]).prop_flat_map(|(changes, watermark)| {
            (
                Just(changes.clone()).prop_shuffle(),
                Just(changes).prop_shuffle(),
                Just(watermark),
            )
        })
    }

    /// `decide` applied in order, holding what `Writer::apply` would store.
    fn replay(changes: &[Change], watermark: i64) -> BTreeMap<String, Observed> {
        let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
        let mut observed = BTreeMap::new();
        for change in changes {
            let held = stored.get(change.message_id()).cloned();
            if decide(held.as_ref(), change, watermark) != Decision::Write {
                continue;
            }
            match change {
                Change::Upsert { doc, version, .. } => {
                    stored.insert(
                        doc.message_id.clone(),
                        Stored::Live {
                            version: *version,
                            created_at_ms: doc.created_at_ms,
                        },
                    );
                    observed.insert(
                        doc.message_id.clone(),
                        Observed::Live(*version, doc.body.clone()),
                    );
                }
                Change::Delete {
                    message_id,
                    deleted_at_ms,
                    ..
                } => {
                    let created_at_ms = match held {
                        Some(Stored::Live { created_at_ms, .. }) => created_at_ms,
                        _ => *deleted_at_ms,
                    };
                    stored.insert(message_id.clone(), Stored::Deleted { created_at_ms });
                    observed.insert(message_id.clone(), Observed::Deleted);
                }
            }
        }
        observed
    }

    fn runner(cases: u32) -> TestRunner {
        TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        })
    }

    #[test]
    fn the_rule_gives_the_same_final_index_for_every_order() {
        runner(2_000)
            .run(&two_orders(), |(first, second, watermark)| {
                prop_assert_eq!(replay(&first, watermark), replay(&second, watermark));
                Ok(())
            })
            .unwrap();
    }

    static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// The same events through the real writer: what the index holds after the last commit.
    fn index_after(
        changes: &[Change],
        watermark: i64,
        commit_every: usize,
    ) -> BTreeMap<String, Observed> {
        let dir = std::env::temp_dir().join(format!(
            "jetfn-index-prop-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let (mut writer, searcher) = open(&dir, 15_000_000).expect("the index opens");
        if watermark > 0 {
            writer.purge(watermark).expect("the purge commits");
        }
        for (n, change) in changes.iter().enumerate() {
            writer.apply(change).expect("applies");
            if (n + 1) % commit_every == 0 {
                writer.commit().expect("commits");
            }
        }
        writer.commit().expect("commits");
        let mut observed = BTreeMap::new();
        for id in ["m0", "m1", "m2"] {
            match writer.lookup(id).expect("reads") {
                Some(Stored::Live { version, .. }) => {
                    let response = searcher
                        .search(&SearchRequest {
                            q: String::new(),
                            conversation_id: None,
                            limit: Some(10),
                            offset: 0,
                        })
                        .expect("searches");
                    let body = response
                        .hits
                        .into_iter()
                        .find(|hit| hit.message_id == id)
                        .map(|hit| hit.body)
                        .expect("a live message is searchable");
                    observed.insert(id.to_owned(), Observed::Live(version, body));
                }
                Some(Stored::Deleted { .. }) => {
                    observed.insert(id.to_owned(), Observed::Deleted);
                }
                None => {}
            }
        }
        assert_eq!(
            searcher.entries() as usize,
            observed.len(),
            "one document per message id"
        );
        drop(writer);
        std::fs::remove_dir_all(&dir).ok();
        observed
    }

    #[test]
    fn a_real_index_ends_the_same_for_two_orders_and_matches_the_rule() {
        runner(12)
            .run(
                &(two_orders(), 1usize..6),
                |((first, second, watermark), commit_every)| {
                    let expected = replay(&first, watermark);
                    prop_assert_eq!(&index_after(&first, watermark, commit_every), &expected);
                    prop_assert_eq!(&index_after(&second, watermark, commit_every), &expected);
                    Ok(())
                },
            )
            .unwrap();
    }
}
