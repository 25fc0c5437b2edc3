//! In-process handler tests for email functions (feature `testing`): a [`Harness`] that wires a handler to a stub
//! mailer and an in-memory ledger as `main` wires it, and the [`Contract`] every email function keeps whatever it
//! sends, run as separate tests by [`email_contract!`](crate::email_contract).
//!
//! ```text
//! use mailer::testing::{Harness, Settled};
//!
//! fn harness() -> Harness<UserRegistered> {
//!     // The same closure `main` gives `mailer::serve`.
//!     Harness::new(EMAILS, |mailer, templates| {
//!         move |job| send_welcome(job, mailer.clone(), templates.clone())
//!     })
//! }
//!
//! mailer::email_contract! {
//!     harness: harness,
//!     event: CloudEvent::new("test", UserRegistered::example()),
//!     emails: 1,
//! }
//!
//! #[tokio::test]
//! async fn something_only_welcome_does() {
//!     let h = harness();
//!     assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
//!     assert_eq!(h.smtp.recipients(), ["ada@example.com"]);
//! }
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use events::{CloudEvent, Event};
use runtime::{Job, JobError};

pub use crate::stub::{Reply, Sent, Stub};
pub use runtime::dlq::DeathKind;
pub use runtime::testing::{MemoryLedger, Settled};

use crate::{EmailTemplate, Mailer, Templates};

/// The consumer's `max_deliver` in every harness job, so attempt 5 is the last.
pub const MAX_DELIVER: u32 = 5;

type Handler<T> = Box<dyn Fn(Job<T>) -> Pin<Box<dyn Future<Output = Result<(), JobError>>>>>;

/// One email function in process: its handler, a stub SMTP server, its templates and an idempotency ledger that
/// every delivery shares, so a second delivery of an event is a redelivery.
///
/// The handler is boxed so a test helper can name the harness by its event type alone (`Harness<OrderPlaced>`),
/// whatever state the handler's closure captures.
pub struct Harness<T> {
    /// The stub mailer the handler sends through (clones share the stub).
    pub mailer: Mailer,
    /// The test's side of the stub: script replies, read what was sent.
    pub smtp: Stub,
    /// The function's emails with the shared layouts.
    pub templates: Arc<Templates>,
    /// The ledger every delivery goes through.
    pub ledger: MemoryLedger,
    handler: Handler<T>,
}

impl<T> std::fmt::Debug for Harness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("smtp", &self.smtp)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl<T: Event + Clone> Harness<T> {
    /// Parses `emails` and builds the handler with `make` from the stub mailer and the templates: the same shape as
    /// [`serve`](crate::serve)'s, so a test wires the handler as `main` does. State the handler needs besides
    /// (a configuration, a rate limiter, a staff list) is captured by `make`.
    ///
    /// # Panics
    /// When a template does not parse.
    pub fn new<H, Fut>(
        emails: &[EmailTemplate],
        make: impl FnOnce(Mailer, Arc<Templates>) -> H,
    ) -> Self
    where
        H: Fn(Job<T>) -> Fut + 'static,
        Fut: Future<Output = Result<(), JobError>> + 'static,
    {
        let (mailer, smtp) = Mailer::stub();
        let templates = Arc::new(Templates::new(emails).expect("the templates parse"));
        let handler = make(mailer.clone(), templates.clone());
        Self {
            mailer,
            smtp,
            templates,
            ledger: MemoryLedger::new(),
            handler: Box::new(move |job| Box::pin(handler(job))),
        }
    }

    /// A job of `event` at delivery `attempt` of [`MAX_DELIVER`], on the harness's ledger.
    pub fn job(&self, event: &CloudEvent<T>, attempt: u32) -> Job<T> {
        runtime::testing::job(event.clone())
            .attempt(attempt)
            .max_deliver(MAX_DELIVER)
            .ledger(&self.ledger)
            .build()
    }

    /// The handler's own result for `event` at delivery `attempt`, for a test that reads the error.
    pub async fn handle(&self, event: &CloudEvent<T>, attempt: u32) -> Result<(), JobError> {
        (self.handler)(self.job(event, attempt)).await
    }

    /// What the runtime does with `event` at delivery `attempt`.
    pub async fn deliver(&self, event: &CloudEvent<T>, attempt: u32) -> Settled {
        runtime::testing::run(self.job(event, attempt), &self.handler).await
    }
}

/// The decisions every email function takes the same way, whatever it sends: each email once per event, a
/// redelivery sends nothing, a 4xx reply is retried (and the retry sends what was missing, once), a 4xx on the last
/// attempt and a 5xx reply are dead-lettered, a downed server feeds the circuit breaker.
///
/// Each case runs on fresh harnesses from `harness`, so the function's state (a rate limit, a staff list) starts
/// over. [`email_contract!`](crate::email_contract) makes one test of each case.
pub struct Contract<T, F> {
    harness: F,
    event: CloudEvent<T>,
    emails: usize,
}

impl<T, F> std::fmt::Debug for Contract<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("event", &self.event.id)
            .field("emails", &self.emails)
            .finish_non_exhaustive()
    }
}

impl<T, F> Contract<T, F>
where
    T: Event + Clone,
    F: Fn() -> Harness<T>,
{
    /// The contract for `event`, which makes the function send `emails` emails on a harness from `harness`.
    ///
    /// # Panics
    /// When `emails` is 0: an event that sends nothing cannot show a send decision.
    pub fn new(harness: F, event: CloudEvent<T>, emails: usize) -> Self {
        assert!(
            emails > 0,
            "the contract's event must send at least one email"
        );
        Self {
            harness,
            event,
            emails,
        }
    }

    /// Acked, each email sent once at one attempt each, each its own message (`Message-ID`).
    pub async fn sends_each_email_once(&self) {
        let h = (self.harness)();
        assert_eq!(h.deliver(&self.event, 1).await, Settled::Acked);
        let sent = h.smtp.sent();
        assert_eq!(
            (sent.len(), h.smtp.attempts()),
            (self.emails, self.emails),
            "{sent:?}"
        );
        let ids: BTreeSet<_> = sent.iter().map(|sent| sent.header("Message-ID")).collect();
        assert_eq!(ids.len(), self.emails, "each email is its own effect");
    }

    /// A second delivery of a sent event is acked and tries nothing.
    pub async fn a_redelivery_of_a_sent_event_sends_nothing(&self) {
        let h = (self.harness)();
        assert_eq!(h.deliver(&self.event, 1).await, Settled::Acked);
        assert_eq!(h.deliver(&self.event, 2).await, Settled::Acked);
        assert_eq!(
            (h.smtp.sent().len(), h.smtp.attempts()),
            (self.emails, self.emails)
        );
    }

    /// A 4xx on the first send is retried on the consumer's backoff; the retry sends every email once (so the
    /// refused one was not recorded as done).
    pub async fn a_4xx_reply_is_retried_and_the_retry_sends_once(&self) {
        for code in [450, 451, 452] {
            let h = (self.harness)();
            h.smtp.reply(Reply::Reject(code));
            assert_eq!(
                h.deliver(&self.event, 1).await,
                Settled::Retry(None),
                "{code}"
            );
            assert!(h.smtp.sent().is_empty(), "{code}");
            assert_eq!(h.deliver(&self.event, 2).await, Settled::Acked, "{code}");
            assert_eq!(
                (h.smtp.sent().len(), h.smtp.attempts()),
                (self.emails, self.emails + 1),
                "{code}"
            );
        }
    }

    /// A 4xx on the last attempt is dead-lettered as exhausted.
    pub async fn a_4xx_reply_on_the_last_attempt_is_dead_lettered_as_exhausted(&self) {
        let h = (self.harness)();
        h.smtp.always(Reply::Reject(451));
        assert_eq!(
            h.deliver(&self.event, MAX_DELIVER).await,
            Settled::Dead(DeathKind::Exhausted)
        );
        assert!(h.smtp.sent().is_empty());
    }

    /// A 5xx is dead-lettered at the first attempt: the refused email is tried once and never again, and an event
    /// with several emails still sends each of the others once (each recipient is its own effect).
    pub async fn a_5xx_reply_is_dead_lettered_at_once(&self) {
        for code in [550, 554] {
            let h = (self.harness)();
            h.smtp.reply(Reply::Reject(code));
            assert_eq!(
                h.deliver(&self.event, 1).await,
                Settled::Dead(DeathKind::Permanent),
                "{code}"
            );
            assert_eq!(
                (h.smtp.sent().len(), h.smtp.attempts()),
                (self.emails - 1, self.emails),
                "{code}"
            );
        }
    }

    /// A refused connection, a timeout or a `421` is the server being unavailable: it feeds the circuit breaker
    /// and nothing more is tried.
    pub async fn a_downed_smtp_server_is_unavailable(&self) {
        for reply in [Reply::Down, Reply::Timeout, Reply::Reject(421)] {
            let h = (self.harness)();
            h.smtp.reply(reply);
            assert_eq!(
                h.deliver(&self.event, 1).await,
                Settled::Unavailable,
                "{reply:?}"
            );
            assert_eq!(
                (h.smtp.sent().len(), h.smtp.attempts()),
                (0, 1),
                "{reply:?}"
            );
        }
    }
}

/// One `#[tokio::test]` per case of the [`Contract`](crate::testing::Contract), in a module `email_contract`, so
/// each case passes or fails under its own name. Invoke it in a function's handler test module:
///
/// ```text
/// mailer::email_contract! {
///     harness: || harness(&["ops@shop.example"]), // anything `Fn() -> Harness<E>`
///     event: event(),                             // a `CloudEvent<E>` that sends `emails` emails
///     emails: 2,
/// }
/// ```
///
/// The expressions are read in the new module, which sees the invoking module's items (`use super::*`); the crate
/// needs `tokio` with its `macros` feature.
#[macro_export]
macro_rules! email_contract {
    (harness: $harness:expr, event: $event:expr, emails: $emails:expr $(,)?) => {
        mod email_contract {
            #[allow(unused_imports)]
            use super::*;

            $crate::email_contract!(@cases ($harness, $event, $emails)
                sends_each_email_once
                a_redelivery_of_a_sent_event_sends_nothing
                a_4xx_reply_is_retried_and_the_retry_sends_once
                a_4xx_reply_on_the_last_attempt_is_dead_lettered_as_exhausted
                a_5xx_reply_is_dead_lettered_at_once
                a_downed_smtp_server_is_unavailable
            );
        }
    };
    (@cases $args:tt $($case:ident)+) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::email_contract!(@contract $args).$case().await;
            }
        )+
    };
    (@contract ($harness:expr, $event:expr, $emails:expr)) => {
        $crate::testing::Contract::new($harness, $event, $emails)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Email, Rendered, send_once};
    use events::{Locale, UserRegistered};

    /// A minimal email function: one email per event, once, through the ledger.
    async fn greet(job: Job<UserRegistered>, mailer: Mailer) -> Result<(), JobError> {
        let rendered = Rendered {
            subject: "Hi".to_owned(),
            html: "<p>Hi</p>".to_owned(),
            text: "Hi".to_owned(),
        };
        let to = job.event.data.email.parse().map_err(JobError::permanent)?;
        let email = Email {
            to: &to,
            reply_to: None,
            rendered: &rendered,
            locale: Locale::En,
        };
        send_once(&job, &mailer, "greeting", email).await
    }

    fn harness() -> Harness<UserRegistered> {
        Harness::new(&[], |mailer, _| move |job| greet(job, mailer.clone()))
    }

    fn event() -> CloudEvent<UserRegistered> {
        CloudEvent::new("test", UserRegistered::example())
    }

    crate::email_contract! {
        harness: harness,
        event: event(),
        emails: 1,
    }

    #[tokio::test]
    async fn the_harness_shares_its_ledger_and_reports_the_handlers_result() {
        let h = harness();
        let event = event();
        h.ledger.mark_done(&event.id, "greeting");
        assert_eq!(h.handle(&event, 1).await.ok(), Some(()));
        assert_eq!(h.smtp.attempts(), 0, "the ledger said done");
        assert!(h.job(&event, MAX_DELIVER).is_last_attempt());
        assert!(!h.job(&event, MAX_DELIVER - 1).is_last_attempt());
    }

    /// The contract catches a handler that sends without the ledger.
    #[tokio::test]
    async fn a_handler_that_resends_on_redelivery_fails_the_contract() {
        let forgetful = || {
            Harness::new(&[], |mailer, _| {
                move |job: Job<UserRegistered>| {
                    let mailer = mailer.clone();
                    async move {
                        let job = runtime::testing::job(job.event).build(); // a fresh ledger each time
                        greet(job, mailer).await
                    }
                }
            })
        };
        let failure = contract_failure(async move {
            Contract::new(forgetful, event(), 1)
                .a_redelivery_of_a_sent_event_sends_nothing()
                .await;
        })
        .await;
        assert!(failure.contains("left: (2, 2)"), "{failure}");
    }

    /// The contract catches a handler that dead-letters what it should retry.
    #[tokio::test]
    async fn a_handler_that_gives_up_on_a_4xx_fails_the_contract() {
        let hasty = || {
            Harness::new(&[], |mailer, _| {
                move |job| {
                    let mailer = mailer.clone();
                    async move {
                        greet(job, mailer)
                            .await
                            .map_err(|err| JobError::permanent(anyhow::anyhow!("{err}")))
                    }
                }
            })
        };
        let failure = contract_failure(async move {
            Contract::new(hasty, event(), 1)
                .a_4xx_reply_is_retried_and_the_retry_sends_once()
                .await;
        })
        .await;
        assert!(failure.contains("Dead(Permanent)"), "{failure}");
    }

    /// Runs a contract case that must fail on its own task and returns its panic message: a case that passes
    /// fails this test.
    async fn contract_failure(case: impl Future<Output = ()> + 'static) -> String {
        let tasks = tokio::task::LocalSet::new();
        let case = tasks.spawn_local(case);
        let panic = tasks
            .run_until(case)
            .await
            .expect_err("the contract accepted a broken handler")
            .into_panic();
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_default()
    }
}
