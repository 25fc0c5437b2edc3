//! `ops::schedules` against a real nats-server: the next run times it predicts are the ones the server fires at,
//! the default schedules are marked as defined in infra/nats, and every add and cancel is in the audit trail.

use std::time::Duration;

use ops::audit::{Action, Auditor, Filter, Outcome};
use ops::schedules::{NewSchedule, When};
use time::OffsetDateTime;

use crate::support::System;

const TYPE: &str = "messages.created";

fn data() -> serde_json::Value {
    serde_json::json!({"message_id": "m-o", "conversation_id": "c-1", "sender_id": "u-1",
        "body": "scheduled", "created_at": "2026-11-25T10:00:00Z"})
}

fn auditor(system: &System) -> Auditor {
    Auditor::new(system.js.clone(), "tester", Some("sched-test"), "it")
}

fn new(name: &str, when: When) -> NewSchedule {
    NewSchedule {
        event_type: TYPE.to_owned(),
        data: data(),
        when,
        name: Some(name.to_owned()),
        replace: false,
        source: "/it".to_owned(),
    }
}

/// The times the server stored the copies `name` fired, in SCHEDULES (`scheduled.<type>`, `Nats-Scheduler`).
async fn fired(system: &System, name: &str) -> Vec<OffsetDateTime> {
    use futures::StreamExt as _;
    let stream = system.js.get_stream("SCHEDULES").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("scheduled.{TYPE}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap().take(pending);
    let mut times = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let by = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Scheduler"))
            .map(|value| value.as_str().to_owned());
        if by.as_deref() == Some(&format!("schedules.{name}")) {
            times.push(message.info().unwrap().published);
        }
    }
    times
}

/// Pins the server's `@every` rule: runs at the stored time rounded to the second plus the interval, then every
/// interval from the previous planned run. `list` predicts them; the fired copies' times match within a tolerance
/// (the server's timer wheel and the store's clock: well under a second).
#[tokio::test]
async fn list_predicts_when_the_server_fires_an_every_schedule() {
    let system = System::start().await;
    let audit = auditor(&system);
    let added = ops::schedules::add(
        &system.js,
        &audit,
        new("tick", When::Every(Duration::from_secs(2))),
    )
    .await
    .expect("added");
    assert_eq!(added.spec, "@every 2s");
    let listed = ops::schedules::list(&system.js, 4).await.unwrap();
    let tick = listed.iter().find(|s| s.name == "tick").expect("listed");
    assert_eq!(tick.target, format!("scheduled.{TYPE}"));
    assert_eq!(tick.event_type.as_deref(), Some(TYPE));
    assert_eq!(tick.defined_in, None);
    let predicted = tick.next_runs.clone();
    assert_eq!(predicted.len(), 4, "{tick:?}");
    for pair in predicted.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            time::Duration::seconds(2),
            "{predicted:?}"
        );
    }

    // Wait past the third predicted run, then compare.
    let wait = predicted[2] - OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
    let times = fired(&system, "tick").await;
    let tolerance = time::Duration::milliseconds(900);
    for (k, due) in predicted[..3].iter().enumerate() {
        assert!(
            times.iter().any(|at| (*at - *due).abs() < tolerance),
            "run {k} due {due} not fired within {tolerance}: fired {times:?}, predicted {predicted:?}"
        );
    }
    // Once it has fired, the anchor is the server's own next time, and it agrees with the prediction.
    let again = ops::schedules::list(&system.js, 2).await.unwrap();
    let next = again.iter().find(|s| s.name == "tick").unwrap().next_runs[0];
    assert!(
        next > predicted[1] && (next - predicted[0]).whole_nanoseconds() % 2_000_000_000 == 0,
        "next {next} is not on the 2 s grid of {predicted:?}"
    );
    ops::schedules::cancel(&system.js, &audit, "tick")
        .await
        .unwrap();
}

/// `list` against a real server: a cron with its zone, a one-off, the committed default schedule, and the CLI's
/// table and JSON.
#[tokio::test]
async fn list_shows_next_runs_and_where_a_schedule_is_defined() {
    let system = System::start().await;
    let audit = auditor(&system);
    let at = (OffsetDateTime::now_utc() + time::Duration::hours(2))
        .replace_nanosecond(0)
        .unwrap();
    ops::schedules::add(&system.js, &audit, new("later", When::At(at)))
        .await
        .unwrap();
    ops::schedules::add(
        &system.js,
        &audit,
        new(
            "nine",
            When::Cron {
                expr: "0 0 9 * * *".to_owned(),
                time_zone: Some("Asia/Kolkata".to_owned()),
            },
        ),
    )
    .await
    .unwrap();
    // The committed default schedule, as `jetfn infra apply` writes it (the harness leaves schedules out).
    let definitions =
        provision::Definitions::load(&testkit::workspace_root().join("infra/nats")).unwrap();
    let daily = definitions
        .schedules
        .iter()
        .find(|s| s.name == "cleanup-daily")
        .unwrap();
    provision::schedule::put(&system.js, daily, false)
        .await
        .unwrap();
    let listed = ops::schedules::list(&system.js, 3).await.unwrap();
    let find = |name: &str| {
        listed
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name}: {listed:?}"))
    };
    assert_eq!(find("later").next_runs, [at]);
    let nine = find("nine");
    assert_eq!(nine.time_zone.as_deref(), Some("Asia/Kolkata"));
    assert_eq!(nine.next_runs.len(), 3);
    for run in &nine.next_runs {
        // 09:00 in Kolkata is 03:30 UTC.
        assert_eq!(
            (run.hour(), run.minute(), run.second()),
            (3, 30, 0),
            "{run}"
        );
    }
    let daily = find("cleanup-daily");
    assert_eq!(
        daily.defined_in.as_deref(),
        Some("infra/nats/schedules/cleanup-daily.json")
    );
    assert_eq!(daily.next_runs.len(), 3);

    let table = system.jetfn(&["schedule", "list"]).await;
    assert!(
        table.contains("next run") && table.contains(&ops::rfc3339(at)),
        "{table}"
    );
    let json =
        crate::pause::cli_json(&system, &["schedule", "list", "--json", "--next", "2"]).await;
    let nine = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "nine")
        .unwrap();
    assert_eq!(nine["next_runs"].as_array().unwrap().len(), 2, "{nine}");
    assert!(
        nine["next_runs"][0]
            .as_str()
            .unwrap()
            .ends_with("T03:30:00Z"),
        "{nine}"
    );
}

/// Every add and cancel is in the trail, failures too, with the field named for bad input.
#[tokio::test]
async fn add_and_cancel_are_audited_success_or_failure() {
    let system = System::start().await;
    let audit = auditor(&system);
    ops::schedules::add(
        &system.js,
        &audit,
        new("audited", When::In(Duration::from_secs(3600))),
    )
    .await
    .unwrap();
    let exists = ops::schedules::add(
        &system.js,
        &audit,
        new("audited", When::In(Duration::from_secs(60))),
    )
    .await
    .unwrap_err();
    assert!(format!("{exists:#}").contains("exists"), "{exists:#}");
    let mut invalid = new("invalid", When::Every(Duration::from_secs(60)));
    invalid.data = serde_json::json!({"message_id": "m"});
    let err = ops::schedules::add(&system.js, &audit, invalid)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("conversation_id"),
        "names the field: {err:#}"
    );
    let err = ops::schedules::add(
        &system.js,
        &audit,
        new(
            "badzone",
            When::Cron {
                expr: "0 0 9 * * *".to_owned(),
                time_zone: Some("Nowhere/Else".to_owned()),
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("time_zone"), "{err:#}");
    ops::schedules::cancel(&system.js, &audit, "audited")
        .await
        .unwrap();
    let err = ops::schedules::cancel(&system.js, &audit, "audited")
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no schedule named audited"),
        "{err:#}"
    );

    let entries = ops::audit::list(&system.js, &Filter::default())
        .await
        .unwrap();
    let seen: Vec<(Action, String, Outcome)> = entries
        .iter()
        .map(|stored| {
            (
                stored.entry.action,
                stored.entry.target.clone(),
                stored.entry.result,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Action::ScheduleAdd, "audited".to_owned(), Outcome::Ok),
            (Action::ScheduleAdd, "audited".to_owned(), Outcome::Error),
            (Action::ScheduleAdd, "invalid".to_owned(), Outcome::Error),
            (Action::ScheduleAdd, "badzone".to_owned(), Outcome::Error),
            (Action::ScheduleCancel, "audited".to_owned(), Outcome::Ok),
            (Action::ScheduleCancel, "audited".to_owned(), Outcome::Error),
        ]
    );
    assert!(
        entries
            .iter()
            .all(|stored| stored.entry.actor == "sched-test")
    );
    assert!(
        entries[0].entry.detail.contains("@at "),
        "{:?}",
        entries[0].entry
    );
    assert!(
        !entries
            .iter()
            .any(|stored| stored.entry.detail.contains("scheduled")),
        "no payload in the trail"
    );
}
