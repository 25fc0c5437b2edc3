//! Reading a stream to its end with an ordered consumer (`dlq list`, the audit trail, `jetfn event`'s scan,
//! `jetfn keys usage`).

use std::time::Duration;

use futures::{Stream, StreamExt as _};

/// How long a read waits for the next message the server said it has.
pub const STALL: Duration = Duration::from_secs(5);

/// The next message of an ordered read, or `None` when none came within [`STALL`] or the read ended. Callers ask
/// only while the server says more are pending, so `None` is an error they name, never the end of the data: a
/// listing, scan or count cut short reads as "nothing more", and people act on it.
pub async fn next<S: Stream + Unpin>(messages: &mut S) -> Option<S::Item> {
    tokio::time::timeout(STALL, messages.next())
        .await
        .ok()
        .flatten()
}
