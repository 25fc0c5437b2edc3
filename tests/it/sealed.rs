//! Sensitive fields sealed end to end (issue 12, item 7), with the real password-reset function: the stream, the
//! DLQ, a replay and a schedule hold ciphertext; the email holds the right token; rotation keeps old events open;
//! `jetfn keys usage` tells whether a key can be retired; a missing, wrong or retired key and a tampered
//! ciphertext dead-letter with a clear reason and nothing in clear in the logs.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use events::PasswordResetRequested;
use publish::sealed::{KEY_ID_HEADER, Keyring, PREFIX};
use runtime::dlq::DeathKind;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{System, TempDir, WAIT};

// Test keys (32 bytes each, base64); never used anywhere else.
pub(super) const K1: &str = "c2VhbGVkLWZpZWxkcy10ZXN0LWtleS1udW1iZXItMDE=";
const K2: &str = "c2VhbGVkLWZpZWxkcy10ZXN0LWtleS1udW1iZXItMDI=";
const K1_IMPOSTOR: &str = "aW1wb3N0b3Ita2V5LWZvci10aGUtaWQtazEtMDAwMDA=";
pub(super) const RESET_SUBJECT: &str = "events.users.password_reset_requested";

pub(super) fn ring_json(current: Option<&str>, keys: &[(&str, &str)]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, key)| format!("\"{id}\":\"{key}\""))
        .collect();
    match current {
        Some(current) => format!(r#"{{"current":"{current}","keys":{{{}}}}}"#, keys.join(",")),
        None => format!(r#"{{"keys":{{{}}}}}"#, keys.join(",")),
    }
}

pub(super) fn keyring(current: &str, keys: &[(&str, &str)]) -> Arc<Keyring> {
    Arc::new(Keyring::parse(&ring_json(Some(current), keys), "test").unwrap())
}

/// A reset request with a token of its own (so every test token is distinct and searchable in the logs).
pub(super) fn reset(user: &str, token: &str) -> PasswordResetRequested {
    let mut request = PasswordResetRequested::example();
    request.user_id = user.to_owned();
    request.email = format!("{user}@example.com");
    request.token = token.to_owned();
    request.expires_at = (OffsetDateTime::now_utc() + time::Duration::minutes(30))
        .format(&Rfc3339)
        .unwrap();
    request
}

fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&#x3d;", "=")
        .replace("&amp;", "&")
}

/// Waits for an email to `to` and returns the token its text part links to.
pub(super) async fn token_mailed_to(system: &System, to: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(mail) = system
            .smtp
            .messages()
            .into_iter()
            .find(|mail| mail.rcpt_to.iter().any(|rcpt| rcpt == to))
        {
            let text = mail.text_part().unwrap();
            let start = text.find("?token=").expect("a reset link") + "?token=".len();
            let token: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            assert!(
                unescape(&mail.html_part().unwrap()).contains(&format!("?token={token}")),
                "the HTML part carries the same link"
            );
            return token;
        }
        assert!(std::time::Instant::now() < deadline, "no email to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(system: &System, sequence: u64) -> (HeaderMap, bytes::Bytes) {
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let message = stream.get_raw_message(sequence).await.unwrap();
    (message.headers, message.payload)
}

pub(super) fn key_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(KEY_ID_HEADER)
        .map(|value| value.as_str().to_owned())
}

#[tokio::test]
async fn a_sealed_token_is_ciphertext_in_the_stream_and_the_right_one_in_the_email() {
    let system = System::start().await;
    let function = system
        .spawn(
            "password-reset",
            &[("JETFN_KEYRING", ring_json(None, &[("k1", K1)]))],
        )
        .await;
    let token = "sealedTokenNumberOne_0123456789abcdef";
    let published = system
        .emails()
        .with_keyring(keyring("k1", &[("k1", K1)]))
        .send_password_reset(reset("ada", token))
        .await
        .expect("published, sealed");
    let (headers, payload) = stored(&system, published.sequence).await;
    assert_eq!(key_id(&headers).as_deref(), Some("k1"));
    let text = String::from_utf8_lossy(&payload);
    assert!(
        !text.contains(token),
        "the stream holds the token in clear: {text}"
    );
    assert!(text.contains(PREFIX), "{text}");
    // The other fields stay readable: routing, masking and `jetfn dlq show` still work.
    assert!(text.contains("ada@example.com"), "{text}");

    assert_eq!(token_mailed_to(&system, "ada@example.com").await, token);
    system.wait_settled("password-reset").await;
    assert!(system.dlq().await.is_empty());
    assert!(
        !function.output().contains(token),
        "the token reached the logs"
    );
    assert!(!function.output().contains(K1), "a key reached the logs");
}

#[tokio::test]
async fn without_the_key_a_function_dead_letters_ciphertext_that_replays_once_the_key_is_deployed()
{
    let system = System::start().await;
    let keyless = system.spawn("password-reset", &[]).await;
    let token = "sealedTokenNumberTwo_0123456789abcdef";
    let published = system
        .emails()
        .with_keyring(keyring("k1", &[("k1", K1)]))
        .send_password_reset(reset("bob", token))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    let (dlq_seq, letter) = &records[0];
    assert_eq!(letter.kind, DeathKind::Permanent, "{}", letter.reason);
    assert!(
        letter.reason.contains("`k1`") && letter.reason.contains("JETFN_KEYRING"),
        "{}",
        letter.reason
    );
    assert_eq!(key_id(&letter.headers).as_deref(), Some("k1"));
    let text = String::from_utf8_lossy(&letter.payload);
    assert!(!text.contains(token) && text.contains(PREFIX), "{text}");
    assert_eq!(system.smtp.count(), 0);
    assert!(!keyless.output().contains(token));
    keyless.sigterm();
    keyless.wait_exit(WAIT).await;

    // `keys usage` finds the key in the stream and in the DLQ: it cannot be retired.
    let usage = system.jetfn(&["keys", "usage", "k1"]).await;
    assert!(
        usage.contains("EVENTS     1") && usage.contains("DLQ        1"),
        "{usage}"
    );
    assert!(usage.contains("keep it"), "{usage}");

    // The key deployed (from a file this time), the record replays; the replay is still ciphertext.
    let dir = TempDir::new("keyring");
    let file = format!("{}/keyring.json", dir.path());
    std::fs::write(&file, ring_json(None, &[("k1", K1)])).unwrap();
    let keyed = system
        .spawn("password-reset", &[("JETFN_KEYRING_FILE", file)])
        .await;
    let replayed = system.jetfn(&["dlq", "replay", &dlq_seq.to_string()]).await;
    assert!(replayed.contains("replayed"), "{replayed}");
    assert_eq!(token_mailed_to(&system, "bob@example.com").await, token);
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(RESET_SUBJECT)
        .await
        .unwrap();
    assert!(
        last.sequence > published.sequence,
        "the replay is a new message"
    );
    assert_eq!(key_id(&last.headers).as_deref(), Some("k1"));
    assert!(!String::from_utf8_lossy(&last.payload).contains(token));
    system.wait_settled("password-reset").await;
    assert!(!keyed.output().contains(token));
}

#[tokio::test]
async fn rotation_keeps_old_events_open_new_ones_use_the_new_key_and_usage_tells_when_to_retire() {
    let system = System::start().await;
    let function = system
        .spawn(
            "password-reset",
            &[(
                "JETFN_KEYRING",
                ring_json(Some("k2"), &[("k1", K1), ("k2", K2)]),
            )],
        )
        .await;
    // Before the rotation: k1. A delayed event sealed with k1 waits in SCHEDULES.
    let before = system.emails().with_keyring(keyring("k1", &[("k1", K1)]));
    let old = before
        .send_password_reset(reset("carol", "oldKeyToken_0123456789abcdefghijklm"))
        .await
        .unwrap();
    let delayed_token = "delayedOldKeyToken_0123456789abcdefgh";
    let scheduled = system
        .publisher
        .clone()
        .with_keyring(keyring("k1", &[("k1", K1)]))
        .publish_at(
            OffsetDateTime::now_utc() + time::Duration::seconds(3),
            reset("dave", delayed_token),
        )
        .await
        .unwrap();
    let usage = system.jetfn(&["keys", "usage", "k1"]).await;
    assert!(
        usage.contains("EVENTS     1") && usage.contains("SCHEDULES  1"),
        "{usage}"
    );
    let schedules = system.js.get_stream("SCHEDULES").await.unwrap();
    let held = schedules
        .direct_get_last_for_subject(format!("schedules.{}", scheduled.name))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&held.payload).contains(delayed_token));

    // After: k2 is current; k1 stays in the keyrings until nothing names it.
    let after = system
        .emails()
        .with_keyring(keyring("k2", &[("k1", K1), ("k2", K2)]));
    let new = after
        .send_password_reset(reset("erin", "newKeyToken_0123456789abcdefghijklm"))
        .await
        .unwrap();
    assert_eq!(
        key_id(&stored(&system, old.sequence).await.0).as_deref(),
        Some("k1")
    );
    assert_eq!(
        key_id(&stored(&system, new.sequence).await.0).as_deref(),
        Some("k2")
    );
    assert_eq!(
        token_mailed_to(&system, "carol@example.com").await,
        "oldKeyToken_0123456789abcdefghijklm"
    );
    assert_eq!(
        token_mailed_to(&system, "erin@example.com").await,
        "newKeyToken_0123456789abcdefghijklm"
    );
    // The schedule fires with its key id (the server copies the header), and opens.
    assert_eq!(
        token_mailed_to(&system, "dave@example.com").await,
        delayed_token
    );
    system.wait_settled("password-reset").await;
    assert!(system.dlq().await.is_empty());

    let usage = system.jetfn(&["keys", "usage", "k2"]).await;
    assert!(usage.contains("EVENTS     1"), "{usage}");
    let usage = system.jetfn(&["keys", "usage", "k9"]).await;
    assert!(usage.contains("can be retired"), "{usage}");
    // Once the stream no longer holds k1's events (here purged; in production EVENTS' max_age), k1 can go.
    let events = system.js.get_stream("EVENTS").await.unwrap();
    events.purge().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let usage = system.jetfn(&["keys", "usage", "k1"]).await;
        if usage.contains("can be retired") {
            break;
        }
        // The fired copy stays in SCHEDULES for its TTL; purge it too.
        if usage.contains("SCHEDULES  1") {
            schedules.purge().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{usage}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for token in ["oldKeyToken", "newKeyToken", "delayedOldKeyToken"] {
        assert!(
            !function.output().contains(token),
            "{token} reached the logs"
        );
    }
}

#[tokio::test]
async fn a_wrong_key_a_retired_key_and_a_tampered_ciphertext_each_dead_letter_with_a_clear_reason()
{
    let system = System::start().await;
    let function = system
        .spawn(
            "password-reset",
            &[("JETFN_KEYRING", ring_json(None, &[("k1", K1), ("k2", K2)]))],
        )
        .await;
    let seal = |id: &str, token: &str, ring: &Keyring| {
        let mut value = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/t", "type": "users.password_reset_requested",
            "data": serde_json::to_value(reset(id, token)).unwrap(),
        });
        let key_id = publish::sealed::seal_event(&mut value, ring)
            .unwrap()
            .unwrap();
        (value, key_id)
    };
    let publish = |value: serde_json::Value, key_id: String| {
        let js = system.js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(KEY_ID_HEADER, key_id.as_str());
            js.publish_with_headers(
                RESET_SUBJECT,
                headers,
                serde_json::to_vec(&value).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    // Sealed with another key that has the same id: authentication fails.
    let impostor = Keyring::parse(&ring_json(Some("k1"), &[("k1", K1_IMPOSTOR)]), "t").unwrap();
    let (value, key_id) = seal(
        "wrong-key",
        "wrongKeyToken_0123456789abcdefghijk",
        &impostor,
    );
    publish(value, key_id).await;
    // Sealed with a key the function's keyring no longer has (retired too early).
    let retired = Keyring::parse(&ring_json(Some("k0"), &[("k0", K1_IMPOSTOR)]), "t").unwrap();
    let (value, key_id) = seal(
        "retired-key",
        "retiredKeyToken_0123456789abcdefghi",
        &retired,
    );
    publish(value, key_id).await;
    // Sealed right, then one bit of the ciphertext flipped.
    let good = Keyring::parse(&ring_json(Some("k1"), &[("k1", K1)]), "t").unwrap();
    let (mut value, key_id) = seal("tampered", "tamperedToken_0123456789abcdefghijk", &good);
    let sealed = value["data"]["token"].as_str().unwrap().to_owned();
    let mut chars: Vec<char> = sealed.chars().collect();
    let last = chars.len() - 3;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    value["data"]["token"] = chars.into_iter().collect::<String>().into();
    publish(value, key_id).await;
    // Moved: a valid ciphertext of one event pasted into another.
    let (first, key_id) = seal("moved-from", "movedToken_0123456789abcdefghijklmno", &good);
    let (mut second, _) = seal("moved-to", "otherToken_0123456789abcdefghijklmno", &good);
    second["data"]["token"] = first["data"]["token"].clone();
    publish(second, key_id).await;

    let records = system.wait_dlq(4).await;
    let reason = |id: &str| {
        records
            .iter()
            .find(|(_, letter)| {
                String::from_utf8_lossy(&letter.payload).contains(&format!("\"id\":\"{id}\""))
            })
            .map(|(_, letter)| (letter.kind, letter.reason.clone()))
            .unwrap_or_else(|| panic!("no record of {id}"))
    };
    let (kind, text) = reason("wrong-key");
    assert_eq!(kind, DeathKind::Invalid, "{text}");
    assert!(
        text.contains("/data/token") && text.contains("`k1`"),
        "{text}"
    );
    let (kind, text) = reason("retired-key");
    assert_eq!(kind, DeathKind::Permanent, "{text}");
    assert!(
        text.contains("`k0`") && text.contains("not in this process's keyring"),
        "{text}"
    );
    let (kind, text) = reason("tampered");
    assert_eq!(kind, DeathKind::Invalid, "{text}");
    assert!(
        text.contains("/data/token") && text.contains("altered"),
        "{text}"
    );
    let (kind, text) = reason("moved-to");
    assert_eq!(kind, DeathKind::Invalid, "{text}");
    assert!(text.contains("moved from another event"), "{text}");
    assert_eq!(system.smtp.count(), 0);
    let output = function.output();
    for token in [
        "wrongKeyToken",
        "retiredKeyToken",
        "tamperedToken",
        "movedToken",
        "otherToken",
    ] {
        assert!(!output.contains(token), "{token} reached the logs");
        for (_, letter) in &records {
            assert!(!String::from_utf8_lossy(&letter.payload).contains(token));
            assert!(!letter.reason.contains(token));
        }
    }
}

#[tokio::test]
async fn a_sealed_contact_message_is_ciphertext_in_the_stream_and_reaches_support_in_clear() {
    let system = System::start().await;
    let function = system
        .spawn(
            "contact",
            &[("JETFN_KEYRING", ring_json(None, &[("k1", K1)]))],
        )
        .await;
    let mut form = events::ContactSubmitted::example();
    form.message = "sealedContactMessage: the cups arrived broken".to_owned();
    form.send_acknowledgement = false;
    let published = system
        .emails()
        .with_keyring(keyring("k1", &[("k1", K1)]))
        .send_contact_form(form)
        .await
        .expect("published, sealed");
    let (headers, payload) = stored(&system, published.sequence).await;
    assert_eq!(key_id(&headers).as_deref(), Some("k1"));
    let text = String::from_utf8_lossy(&payload);
    assert!(!text.contains("sealedContactMessage"), "{text}");
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert!(
        mails[0]
            .text_part()
            .unwrap()
            .contains("sealedContactMessage: the cups arrived broken"),
        "support gets the message in clear"
    );
    system.wait_settled("contact").await;
    assert!(!function.output().contains("sealedContactMessage"));
}

/// `ops::dlq::replay_edited`, where the console's and any other edit of a dead letter goes: a contact message typed
/// anew in clear (its schema takes a sealed one too, so before this the clear text went out under the key id, sat
/// in `EVENTS` and was dead-lettered again as not sealed) is refused without a keyring, changing nothing, and with
/// one is sealed under its current key (here `k2`, after a rotation: nothing else stays sealed under `k1`).
#[tokio::test]
async fn an_edited_contact_message_typed_in_clear_is_refused_without_a_keyring_and_sealed_with_one()
{
    let system = System::start().await;
    let keyless = system.spawn("contact", &[]).await;
    let mut form = events::ContactSubmitted::example();
    form.message = "sealedContactMessage: the first words".to_owned();
    form.send_acknowledgement = false;
    system
        .emails()
        .with_keyring(keyring("k1", &[("k1", K1)]))
        .send_contact_form(form)
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    keyless.sigterm();
    keyless.wait_exit(WAIT).await;
    let (seq, letter) = &records[0];
    assert_eq!(key_id(&letter.headers).as_deref(), Some("k1"));
    let mut event: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    let retyped = "retypedContactMessage: the cups arrived broken";
    event["data"]["message"] = retyped.into();
    let edit = serde_json::to_vec(&event).unwrap();
    let mut events_stream = system.js.get_stream("EVENTS").await.unwrap();
    let before = events_stream.info().await.unwrap().state.last_sequence;

    let err = ops::dlq::replay_edited(&system.js, *seq, &edit, false, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/data/message: a sensitive field must stay sealed"),
        "{err}"
    );
    assert!(!err.contains("retypedContactMessage"), "{err}");
    assert_eq!(
        events_stream.info().await.unwrap().state.last_sequence,
        before
    );
    assert_eq!(system.dlq().await.len(), 1, "the dead letter stays");

    let rotated = ring_json(Some("k2"), &[("k1", K1), ("k2", K2)]);
    let function = system
        .spawn("contact", &[("JETFN_KEYRING", rotated.clone())])
        .await;
    let ring = Keyring::parse(&rotated, "test").unwrap();
    let step = ops::dlq::replay_edited(&system.js, *seq, &edit, false, Some(&ring))
        .await
        .unwrap();
    let ops::dlq::Step::Replayed {
        sequence: Some(sequence),
        ..
    } = step
    else {
        panic!("{step:?}");
    };
    let (headers, payload) = stored(&system, sequence).await;
    assert_eq!(key_id(&headers).as_deref(), Some("k2"));
    let text = String::from_utf8_lossy(&payload);
    assert!(
        !text.contains("retypedContactMessage") && text.contains(PREFIX),
        "{text}"
    );
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert!(
        mails[0].text_part().unwrap().contains(retyped),
        "support gets the edited message in clear"
    );
    system.wait_settled("contact").await;
    assert!(system.dlq().await.is_empty());
    assert!(!function.output().contains("retypedContactMessage"));
}

/// Runs the jetfn CLI with extra variables; returns its output, asserting it exited 0.
async fn jetfn_with(system: &System, args: &[&str], extra: &[(&'static str, String)]) -> String {
    let mut env = system.env();
    env.extend(extra.iter().cloned());
    let process = testkit::FunctionProcess::spawn_with_args("jetfn", args, &env);
    let status = process.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "jetfn {args:?}:\n{}",
        process.output()
    );
    process.output()
}

#[tokio::test]
async fn jetfn_publish_seals_a_verification_code_and_keys_new_and_list_make_and_show_a_keyring() {
    let system = System::start().await;
    // `keys new` prints an entry a keyring accepts; `keys list` shows the ids, never the keys.
    let entry = jetfn_with(&system, &["keys", "new", "2026-12"], &[]).await;
    let entry = entry
        .lines()
        .find(|line| line.starts_with("\"2026-12\""))
        .expect("an entry");
    let ring = format!(r#"{{"current":"2026-12","keys":{{{entry},"k1":"{K1}"}}}}"#);
    assert!(Keyring::parse(&ring, "keys new").is_ok(), "{entry}");
    let listed = jetfn_with(
        &system,
        &["keys", "list"],
        &[("JETFN_KEYRING", ring.clone())],
    )
    .await;
    assert!(
        listed.contains("2026-12  (current)") && listed.contains("k1"),
        "{listed}"
    );
    assert!(!listed.contains(K1), "{listed}");

    let function = system
        .spawn("email-verification", &[("JETFN_KEYRING", ring.clone())])
        .await;
    let expires = (OffsetDateTime::now_utc() + time::Duration::minutes(30))
        .format(&Rfc3339)
        .unwrap();
    let data = format!(
        r#"{{"user_id":"u-9","email":"frank@example.com","code":"804913","expires_at":"{expires}"}}"#
    );
    let published = jetfn_with(
        &system,
        &[
            "publish",
            "users.email_verification_requested",
            "--data",
            &data,
        ],
        &[("JETFN_KEYRING", ring)],
    )
    .await;
    assert!(published.contains("published"), "{published}");
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let stored = stream
        .get_last_raw_message_by_subject("events.users.email_verification_requested")
        .await
        .unwrap();
    assert_eq!(key_id(&stored.headers).as_deref(), Some("2026-12"));
    assert!(!String::from_utf8_lossy(&stored.payload).contains("804913"));
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert!(mails[0].text_part().unwrap().contains("804913"));
    system.wait_settled("email-verification").await;
    // As the suite's scan reads it: the code as a whole number, not a timestamp's microseconds that happen to match.
    let output = function.output();
    assert!(
        integration_tests::scan::find(&output, &["804913"]).is_none(),
        "the code is in the function's output"
    );
}

/// `keys usage` counts a stream that does not exist as holding nothing, but a stream it cannot read is an error,
/// never the zero that says "it can be retired": here an account without JetStream, whose every stream request is
/// refused.
#[tokio::test]
async fn keys_usage_counts_a_missing_stream_as_none_and_an_unreadable_one_as_an_error() {
    let nats = testkit::NatsServer::start_with(
        "accounts {\n  JS: { jetstream: enabled, users: [{user: js, password: js}] }\n  \
         NOJS: { users: [{user: nojs, password: nojs}] }\n}\n",
    );
    let usage = |user: &str| {
        let url = format!("nats://{user}:{user}@127.0.0.1:{}", nats.port());
        testkit::FunctionProcess::spawn_with_args(
            "jetfn",
            &["keys", "usage", "k1"],
            &[("NATS_URL", url)],
        )
    };

    let missing = usage("js");
    let status = missing.wait_exit(WAIT).await;
    let output = missing.output();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("EVENTS     0")
            && output.contains("DLQ        0")
            && output.contains("can be retired"),
        "no stream: nothing names the key: {output}"
    );

    let unreadable = usage("nojs");
    let status = unreadable.wait_exit(WAIT).await;
    let output = unreadable.output();
    assert_ne!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("EVENTS: cannot read the stream") && !output.contains("can be retired"),
        "an unreadable stream is an error: {output}"
    );
}
