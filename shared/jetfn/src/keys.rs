//! `jetfn keys`: the keyring of sealed fields. `usage` tells whether a key can be retired: it counts the stored
//! messages that name it (`Jetfn-Key-Id`) in the event stream, the dead-letter stream and the schedules, the
//! three places a sealed event can wait to be opened (a fired schedule's copy on its way to EVENTS included).

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use publish::sealed::{KEY_ID_HEADER, Keyring, valid_key_id};

/// The streams a sealed event can be stored in, in the order they are reported.
const STREAMS: [&str; 3] = ["EVENTS", "DLQ", publish::schedule::STREAM];

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// How many stored messages name this key, per stream (EVENTS, DLQ, SCHEDULES): none means it can be retired.
    Usage {
        /// The key id.
        id: String,
    },
    /// A new random key as a keyring entry, to add to JETFN_KEYRING (and make `current` once every function has it).
    New {
        /// The new key's id, e.g. 2026-12.
        id: String,
    },
    /// The key ids of JETFN_KEYRING / JETFN_KEYRING_FILE and the current one (never the keys).
    List,
}

pub(crate) fn needs_nats(command: &KeysCommand) -> bool {
    matches!(command, KeysCommand::Usage { .. })
}

pub(crate) async fn run(
    client: Option<async_nats::Client>,
    command: KeysCommand,
) -> anyhow::Result<()> {
    match command {
        KeysCommand::Usage { id } => {
            anyhow::ensure!(
                valid_key_id(&id),
                "a key id is 1 to 64 letters, digits, '.', '_' or '-'"
            );
            let client = client.context("a NATS connection")?;
            let js = jetstream::new(client);
            let mut total = 0;
            for name in STREAMS {
                let (count, sequences) = usage(&js, name, &id).await?;
                total += count;
                match sequences {
                    Some((first, last)) => {
                        println!("{name:<10} {count} (sequences {first} to {last})");
                    }
                    None => println!("{name:<10} {count}"),
                }
            }
            if total == 0 {
                println!(
                    "nothing stored names key {id}: it can be retired (remove it from every keyring)"
                );
            } else {
                println!(
                    "{total} stored message(s) name key {id}: keep it in the keyrings of the functions that \
                     consume them (or replay, purge or let them age out first)"
                );
            }
            Ok(())
        }
        KeysCommand::New { id } => {
            anyhow::ensure!(
                valid_key_id(&id),
                "a key id is 1 to 64 letters, digits, '.', '_' or '-'"
            );
            use base64::Engine as _;
            use ring::rand::SecureRandom as _;
            let mut key = [0u8; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(key);
            // The key is the command's output, written nowhere else.
            println!("\"{id}\": \"{encoded}\"");
            Ok(())
        }
        KeysCommand::List => {
            match Keyring::from_env()? {
                None => println!("no keyring: JETFN_KEYRING and JETFN_KEYRING_FILE are unset"),
                Some(keyring) => {
                    for id in keyring.ids() {
                        let current = if keyring.current() == Some(id) {
                            "  (current)"
                        } else {
                            ""
                        };
                        println!("{id}{current}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// Counts the messages of `stream` whose `Jetfn-Key-Id` is `id`, reading headers only (an ordered consumer with
/// `headers_only`: the bodies never cross the wire). A stream that does not exist counts none; any other failure to
/// read it is an error, since a zero here tells the operator the key can be retired.
async fn usage(
    js: &jetstream::Context,
    stream: &str,
    id: &str,
) -> anyhow::Result<(u64, Option<(u64, u64)>)> {
    let mut handle = match js.get_stream(stream).await {
        Ok(handle) => handle,
        // Only the server's own "stream not found" means it holds nothing; a timeout or an election says nothing.
        Err(err) if provision::stream_not_found(&err) => return Ok((0, None)),
        Err(err) => {
            return Err(err).with_context(|| {
                format!("{stream}: cannot read the stream, so the key's use there is unknown")
            });
        }
    };
    let state = handle
        .info()
        .await
        .with_context(|| format!("{stream}: stream info"))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok((0, None));
    }
    let mut consumer = handle
        .create_consumer(consumer::pull::OrderedConfig {
            headers_only: true,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("{stream}: an ordered consumer"))?;
    let mut pending = consumer
        .info()
        .await
        .with_context(|| format!("{stream}: an ordered consumer's info"))?
        .num_pending;
    if pending == 0 {
        return Ok((0, None));
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("{stream}: reading"))?;
    let (mut count, mut first, mut last) = (0u64, None, 0u64);
    loop {
        // A stall with messages still to read is an error, never a smaller count: the count decides whether a key
        // can be retired.
        let Some(message) = ops::ordered::next(&mut messages).await else {
            anyhow::bail!(
                "{stream}: the stream stopped answering with {pending} message(s) still to read, so the key's \
                 use there is unknown; try again"
            );
        };
        let message = message.with_context(|| format!("{stream}: reading"))?;
        let info = message
            .info()
            .map_err(|err| anyhow::anyhow!("{stream}: {err}"))?;
        let sequence = info.stream_sequence;
        pending = info.pending;
        let names = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(KEY_ID_HEADER))
            .is_some_and(|value| value.as_str() == id);
        if names {
            count += 1;
            first.get_or_insert(sequence);
            last = sequence;
        }
        if pending == 0 || sequence >= state.last_sequence {
            break;
        }
    }
    Ok((count, first.map(|first| (first, last))))
}
