//! The typed publisher backend services use to send email through jetfn: one method per email, the interface the
//! old `EmailService` offered, each validating before it publishes.
//!
//! Each method derives the event id from what makes the email unique (the order, the user, the tracking number),
//! so calling it twice for the same thing (a retried HTTP request, a double click) is absorbed: by the stream's
//! duplicate window within minutes, and by the functions' idempotency ledger after that. Only the contact form,
//! which has no natural key, gets a fresh id per call.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let emails = sdk::EmailEvents::new(client, "/shop-api");
//! let published = emails.send_order_confirmation(events::OrderPlaced::example()).await?;
//! println!("{} #{}", published.stream, published.sequence);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub use events::Priority;
use events::{
    CloudEvent, ContactSubmitted, EmailVerificationRequested, Event, OrderPlaced, OrderShipped,
    OrderStatusChanged, PasswordResetRequested, SubscriptionCancelled, SubscriptionCreated,
    SubscriptionStatusChanged, UserRegistered,
};
pub use publish::batch::{
    BatchError, BatchStatus, Submitted, cancel as cancel_batch, status as batch_status,
};
pub use publish::progress::read as read_progress;
pub use publish::schedule::{Delay, DelayError};
pub use publish::sealed::{Keyring, KeyringError};
pub use publish::{PublishError, Published, Scheduled};

/// Publishes email events. Cheap to clone; build one per process.
#[derive(Debug, Clone)]
pub struct EmailEvents {
    publisher: publish::Publisher,
    source: String,
}

impl EmailEvents {
    /// A publisher whose events name `source` (a URI reference such as `/shop-api`).
    pub fn new(client: async_nats::Client, source: impl Into<String>) -> Self {
        let source = source.into();
        Self {
            publisher: publish::Publisher::new(client, source.clone()),
            source,
        }
    }

    /// Seals the sensitive fields (the reset token, the verification code, the contact message) with the
    /// keyring's current key, so they are ciphertext in the stream, the DLQ and any replay and only the function
    /// that sends the email opens them. `Keyring::from_env()` reads `JETFN_KEYRING` or `JETFN_KEYRING_FILE`.
    ///
    /// ```no_run
    /// # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let emails = sdk::EmailEvents::new(client, "/accounts-api");
    /// let emails = match sdk::Keyring::from_env()? {
    ///     Some(keyring) => emails.with_keyring(std::sync::Arc::new(keyring)),
    ///     None => emails,
    /// };
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_keyring(mut self, keyring: std::sync::Arc<Keyring>) -> Self {
        self.publisher = self.publisher.with_keyring(keyring);
        self
    }

    /// Sends at `priority` (`Priority::High` for a password reset a customer waits for, `Priority::Low` for a bulk
    /// mailing), so a function with a backlog serves it before (or after) its normal events. A function whose
    /// consumers do not serve the class leaves such events waiting: the README's "Priorities" lists which do.
    ///
    /// ```no_run
    /// # async fn run(emails: sdk::EmailEvents) -> Result<(), sdk::PublishError> {
    /// let urgent = emails.clone().with_priority(sdk::Priority::High);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.publisher = self.publisher.with_priority(priority);
        self
    }

    /// The customer's order confirmation, and the staff notification (`orders.placed`).
    ///
    /// # Errors
    /// [`PublishError::Invalid`] names the field (nothing is sent); [`PublishError::Nats`] when the stream did not
    /// confirm (call again: the id is the same).
    pub async fn send_order_confirmation(
        &self,
        order: OrderPlaced,
    ) -> Result<Published, PublishError> {
        let id = format!("order-confirmation:{}", order.order_id);
        self.publish(id, order).await
    }

    /// The staff notification of an order alone, without the customer's confirmation.
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`].
    pub async fn send_admin_order_notification(
        &self,
        mut order: OrderPlaced,
    ) -> Result<Published, PublishError> {
        order.notify_customer = false;
        order.notify_admins = true;
        let id = format!("order-admin-notification:{}", order.order_id);
        self.publish(id, order).await
    }

    /// The shipping notification with the tracking link (`orders.shipped`).
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`].
    pub async fn send_shipping_notification(
        &self,
        shipment: OrderShipped,
    ) -> Result<Published, PublishError> {
        let id = format!(
            "order-shipped:{}:{}",
            shipment.order_id, shipment.tracking_number
        );
        self.publish(id, shipment).await
    }

    /// The order status update (`orders.status_changed`).
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`].
    pub async fn send_order_status_update(
        &self,
        change: OrderStatusChanged,
    ) -> Result<Published, PublishError> {
        let id = format!(
            "order-status:{}:{}:{}",
            change.order_id,
            change.new_status.as_str(),
            change.changed_at
        );
        self.publish(id, change).await
    }

    /// The subscription confirmation (`subscription.created`). The id is the subscription's own key
    /// (`SubscriptionCreated::idempotency_key`), the one the function's ledger uses too.
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`]; ids that are not UUIDs, a trial without its end, a trial end
    /// before the creation are invalid.
    pub async fn send_subscription_created(
        &self,
        created: SubscriptionCreated,
    ) -> Result<Published, PublishError> {
        let id = created.idempotency_key();
        self.publish(id, created).await
    }

    /// The cancellation notice (`subscription.cancelled`), once per cancellation (subscription and instant).
    ///
    /// # Errors
    /// As [`EmailEvents::send_subscription_created`]; a cancellation before the creation, or an access end before
    /// the cancellation, is invalid.
    pub async fn send_subscription_cancelled(
        &self,
        cancelled: SubscriptionCancelled,
    ) -> Result<Published, PublishError> {
        let id = cancelled.idempotency_key();
        self.publish(id, cancelled).await
    }

    /// The status update (`subscription.status_changed`), once per change (subscription, transition, instant).
    ///
    /// # Errors
    /// As [`EmailEvents::send_subscription_created`]; a change to the same status, to `cancelled` (a
    /// cancellation is [`EmailEvents::send_subscription_cancelled`]) or before the creation is invalid.
    pub async fn send_subscription_status_update(
        &self,
        change: SubscriptionStatusChanged,
    ) -> Result<Published, PublishError> {
        let id = change.idempotency_key();
        self.publish(id, change).await
    }

    /// The welcome email (`users.registered`).
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`].
    pub async fn send_welcome_email(
        &self,
        user: UserRegistered,
    ) -> Result<Published, PublishError> {
        let id = format!("welcome:{}", user.user_id);
        self.publish(id, user).await
    }

    /// The password reset link (`users.password_reset_requested`). The id holds a hash of the token, never the
    /// token: ids are logged.
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`]; an expiry already past is invalid.
    pub async fn send_password_reset(
        &self,
        request: PasswordResetRequested,
    ) -> Result<Published, PublishError> {
        let id = format!(
            "password-reset:{}:{}",
            request.user_id,
            digest(&request.token)
        );
        self.publish(id, request).await
    }

    /// The email verification code (`users.email_verification_requested`).
    ///
    /// # Errors
    /// As [`EmailEvents::send_password_reset`].
    pub async fn send_email_verification(
        &self,
        request: EmailVerificationRequested,
    ) -> Result<Published, PublishError> {
        let id = format!(
            "email-verification:{}:{}",
            request.user_id,
            digest(&format!("{}:{}", request.code, request.expires_at))
        );
        self.publish(id, request).await
    }

    /// The contact form: support is notified, the sender optionally acknowledged (`contact.submitted`).
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`].
    pub async fn send_contact_form(
        &self,
        form: ContactSubmitted,
    ) -> Result<Published, PublishError> {
        self.publisher.publish(form).await
    }

    /// The same emails, sent later: each method puts its event on a one-off schedule NATS holds, fired `delay`
    /// from now (or at the time given), rounded up to the whole second, never early. A time in the past is refused
    /// ([`PublishError::Delay`], naming the field), and nothing is stored.
    ///
    /// ```no_run
    /// # async fn run(emails: sdk::EmailEvents) -> Result<(), sdk::PublishError> {
    /// use std::time::Duration;
    /// let later = emails.delayed(sdk::Delay::In(Duration::from_secs(3600)));
    /// let scheduled = later.send_welcome_email(events::UserRegistered::example()).await?;
    /// emails.cancel_delayed(&scheduled.id).await?; // changed our mind: it never fires
    /// # Ok(())
    /// # }
    /// ```
    pub fn delayed(&self, delay: Delay) -> DelayedEmailEvents<'_> {
        DelayedEmailEvents {
            emails: self,
            delay,
        }
    }

    /// Cancels a delayed email by its event id ([`Scheduled::id`]). Returns `false` when it already fired (or was
    /// never scheduled): an email that went out cannot be called back.
    ///
    /// # Errors
    /// [`PublishError::Schedule`] when the server did not answer.
    pub async fn cancel_delayed(&self, event_id: &str) -> Result<bool, PublishError> {
        self.publisher.cancel_delayed(event_id).await
    }

    /// Submits many emails of one kind (one bulk notification to many recipients) as batch `batch_id`, all or
    /// none: each item is an ordinary event of `T`'s type, handled by its function; progress is
    /// [`batch_status`], a `batch.completed` event says when the last one is finished, [`cancel_batch`] skips
    /// those not yet started. Submitting the same id again is absorbed (`duplicate`).
    ///
    /// # Errors
    /// [`BatchError::Invalid`] naming the first invalid item's index and field (nothing is stored), or as
    /// [`publish::Publisher::submit_batch`].
    pub async fn submit_batch<T: Event>(
        &self,
        batch_id: &str,
        items: &[T],
    ) -> Result<Submitted, BatchError> {
        let items = items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                serde_json::to_value(item)
                    .map_err(|err| BatchError::Invalid(format!("item {index}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher.submit_batch(batch_id, T::TYPE, &items).await
    }

    fn envelope<T: Event>(&self, id: &str, data: T) -> CloudEvent<T> {
        let mut event = CloudEvent::new(self.source.clone(), data);
        event.id = event_id(id);
        event
    }

    async fn publish<T: Event>(&self, id: String, data: T) -> Result<Published, PublishError> {
        self.publisher
            .publish_event(&self.envelope(&id, data))
            .await
    }
}

/// [`EmailEvents`] that send later; made by [`EmailEvents::delayed`]. The event ids are the ones the immediate
/// methods derive, so an email scheduled twice is scheduled once, and one both scheduled and sent is sent once.
#[derive(Debug, Clone, Copy)]
pub struct DelayedEmailEvents<'a> {
    emails: &'a EmailEvents,
    delay: Delay,
}

impl DelayedEmailEvents<'_> {
    /// [`EmailEvents::send_order_confirmation`], later.
    ///
    /// # Errors
    /// As [`EmailEvents::send_order_confirmation`], and [`PublishError::Delay`] for a time in the past.
    pub async fn send_order_confirmation(
        &self,
        order: OrderPlaced,
    ) -> Result<Scheduled, PublishError> {
        let id = format!("order-confirmation:{}", order.order_id);
        self.schedule(id, order).await
    }

    /// [`EmailEvents::send_shipping_notification`], later.
    ///
    /// # Errors
    /// As [`DelayedEmailEvents::send_order_confirmation`].
    pub async fn send_shipping_notification(
        &self,
        shipment: OrderShipped,
    ) -> Result<Scheduled, PublishError> {
        let id = format!(
            "order-shipped:{}:{}",
            shipment.order_id, shipment.tracking_number
        );
        self.schedule(id, shipment).await
    }

    /// [`EmailEvents::send_welcome_email`], later.
    ///
    /// # Errors
    /// As [`DelayedEmailEvents::send_order_confirmation`].
    pub async fn send_welcome_email(
        &self,
        user: UserRegistered,
    ) -> Result<Scheduled, PublishError> {
        let id = format!("welcome:{}", user.user_id);
        self.schedule(id, user).await
    }

    /// [`EmailEvents::send_contact_form`], later.
    ///
    /// # Errors
    /// As [`DelayedEmailEvents::send_order_confirmation`].
    pub async fn send_contact_form(
        &self,
        form: ContactSubmitted,
    ) -> Result<Scheduled, PublishError> {
        let event = CloudEvent::new(self.emails.source.clone(), form);
        self.emails
            .publisher
            .publish_delayed(&event, self.delay)
            .await
    }

    async fn schedule<T: Event>(&self, id: String, data: T) -> Result<Scheduled, PublishError> {
        self.emails
            .publisher
            .publish_delayed(&self.emails.envelope(&id, data), self.delay)
            .await
    }
}

/// Event ids allow `[A-Za-z0-9._:-]`, up to 256 characters; anything else becomes `_`, and a long id is cut and
/// suffixed with a digest of the whole, so two long ids stay apart.
fn event_id(natural: &str) -> String {
    let cleaned: String = natural
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.len() <= 256 {
        cleaned
    } else {
        format!("{}:{}", &cleaned[..200], digest(natural))
    }
}

fn digest(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    events::hex::lower(&digest.as_ref()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_stable() {
        assert_eq!(
            event_id("order-status:o1:shipped:2026-11-25T10:00:00+07:00"),
            "order-status:o1:shipped:2026-11-25T10:00:00_07:00"
        );
        let long = "x".repeat(400);
        assert!(event_id(&long).len() <= 256);
        assert_eq!(event_id(&long), event_id(&long));
        assert_ne!(digest("a"), digest("b"));
    }
}
