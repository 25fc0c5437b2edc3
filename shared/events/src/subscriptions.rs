//! Subscription events of a billing system (seed 004's subscription domain): created, cancelled, status changed.
//!
//! Each carries the subscription's and the customer's UUIDs, the plan's name as the customer sees it, where the
//! email goes and in which language. The timestamps must tell one consistent story (nothing happens to a
//! subscription before it was created, a trial ends after it starts), which `validate` holds at both ends: the
//! publisher refuses such an event, and a function dead-letters one forced in over plain NATS, naming the field.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Customer, Event, Invalid, Locale, rules};

/// A hyphenated UUID, as `format: uuid` means it; the pattern says the same to validators that treat formats as
/// annotations only.
const UUID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Where a subscription is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SubscriptionStatus {
    Trialing,
    Active,
    PastDue,
    Paused,
    Cancelled,
    Expired,
}

impl SubscriptionStatus {
    /// Every status, in a plausible order of a subscription's life.
    pub const ALL: [Self; 6] = [
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Paused,
        Self::Cancelled,
        Self::Expired,
    ];

    /// The wire name, which templates switch on and idempotency keys hold.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Whether the subscription has ended (nothing more can be cancelled).
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Cancelled | Self::Expired)
    }
}

/// A UUID field: the schema's format and pattern, checked again here so the error is the field's own.
fn uuid(invalid: &mut Invalid, field: &str, value: &str) {
    if value.len() != 36 || uuid::Uuid::try_parse(value).is_err() {
        invalid.push(
            field,
            "must be a UUID such as 7c9e6679-7425-40de-944b-e07fc1f90ae7",
        );
    }
}

/// `later` must not lie before `earlier` (both already parsed; an unparsable one was reported on its own).
fn not_before(
    invalid: &mut Invalid,
    field: &str,
    later: Option<OffsetDateTime>,
    earlier_field: &str,
    earlier: Option<OffsetDateTime>,
) {
    if let (Some(later), Some(earlier)) = (later, earlier)
        && later < earlier
    {
        invalid.push(
            field,
            format!(
                "must not be before {}",
                earlier_field.trim_start_matches("/data/")
            ),
        );
    }
}

/// A timestamp in one canonical form (UTC, Unix nanoseconds), so the same instant written with two offsets is
/// one change for an idempotency key; the raw text when it does not parse (validation refused it already).
pub fn instant_key(value: &str) -> String {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|at| at.unix_timestamp_nanos().to_string())
        .unwrap_or_else(|_| value.to_owned())
}

/// A customer subscribed to a plan: the confirmation (with the trial's end, when there is a trial) goes out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "SubscriptionCreated", example = SubscriptionCreated::example())]
#[serde(deny_unknown_fields)]
pub struct SubscriptionCreated {
    /// The billing system's id of the subscription (a UUID); with the event kind, the idempotency key.
    #[schemars(extend("format" = "uuid"), regex(pattern = UUID_PATTERN))]
    pub subscription_id: String,
    /// The billing system's id of the customer (a UUID).
    #[schemars(extend("format" = "uuid"), regex(pattern = UUID_PATTERN))]
    pub customer_id: String,
    /// Who the email goes to.
    pub customer: Customer,
    /// The plan's name as the customer sees it, plain text.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub plan_name: String,
    /// The status it starts in: `trialing` or `active`.
    pub status: SubscriptionStatus,
    /// When it was created (RFC 3339); not in the future at publish time.
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    /// When the trial ends (RFC 3339): required with `trialing`, refused otherwise; after `created_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub trial_end: Option<String>,
    /// The customer's language.
    #[serde(default)]
    pub locale: Locale,
}

impl SubscriptionCreated {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            subscription_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned(),
            customer_id: "3f2b8c1e-5d4a-4e6f-9a8b-1c2d3e4f5a6b".to_owned(),
            customer: Customer {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            plan_name: "Pro (monthly)".to_owned(),
            status: SubscriptionStatus::Trialing,
            created_at: "2026-11-25T10:00:00Z".to_owned(),
            trial_end: Some("2026-12-09T10:00:00Z".to_owned()),
            locale: Locale::En,
        }
    }
}

impl SubscriptionCreated {
    /// What makes this email unique: the subscription (a subscription is created once), whatever the event id.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}",
            Self::TYPE,
            self.subscription_id.to_ascii_lowercase()
        )
    }
}

impl Event for SubscriptionCreated {
    const TYPE: &'static str = "subscription.created";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        uuid(&mut invalid, "/data/subscription_id", &self.subscription_id);
        uuid(&mut invalid, "/data/customer_id", &self.customer_id);
        rules::bare_address(&mut invalid, "/data/customer/email", &self.customer.email);
        let created = rules::timestamp(&mut invalid, "/data/created_at", &self.created_at);
        if !matches!(
            self.status,
            SubscriptionStatus::Trialing | SubscriptionStatus::Active
        ) {
            invalid.push("/data/status", "a new subscription is trialing or active");
        }
        match (&self.trial_end, self.status) {
            (None, SubscriptionStatus::Trialing) => {
                invalid.push("/data/trial_end", "is required when status is trialing");
            }
            (Some(_), status) if status != SubscriptionStatus::Trialing => {
                invalid.push("/data/trial_end", "is only for status trialing");
            }
            (Some(end), _) => {
                let end = rules::timestamp(&mut invalid, "/data/trial_end", end);
                if let (Some(end), Some(created)) = (end, created)
                    && end <= created
                {
                    invalid.push("/data/trial_end", "must be after created_at");
                }
            }
            (None, _) => {}
        }
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::not_in_future(&mut invalid, "/data/created_at", &self.created_at);
        invalid.into_result()
    }
}

/// A subscription was cancelled: the customer is told until when they keep access, and why if a reason is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "SubscriptionCancelled", example = SubscriptionCancelled::example())]
#[serde(deny_unknown_fields)]
pub struct SubscriptionCancelled {
    /// The billing system's id of the subscription (a UUID).
    #[schemars(extend("format" = "uuid"), regex(pattern = UUID_PATTERN))]
    pub subscription_id: String,
    /// The billing system's id of the customer (a UUID).
    #[schemars(extend("format" = "uuid"), regex(pattern = UUID_PATTERN))]
    pub customer_id: String,
    /// Who the email goes to.
    pub customer: Customer,
    /// The plan's name as the customer sees it, plain text.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub plan_name: String,
    /// The status before the cancellation; not `cancelled` or `expired` (an ended subscription cannot be cancelled).
    pub previous_status: SubscriptionStatus,
    /// When the subscription was created (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    /// When it was cancelled (RFC 3339); not before `created_at`, not in the future at publish time.
    #[schemars(extend("format" = "date-time"))]
    pub cancelled_at: String,
    /// Until when the customer keeps access (RFC 3339), when not at once; not before `cancelled_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub effective_until: Option<String>,
    /// Why, in words for the customer, plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub reason: Option<String>,
    /// The customer's language.
    #[serde(default)]
    pub locale: Locale,
}

impl SubscriptionCancelled {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            subscription_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned(),
            customer_id: "3f2b8c1e-5d4a-4e6f-9a8b-1c2d3e4f5a6b".to_owned(),
            customer: Customer {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            plan_name: "Pro (monthly)".to_owned(),
            previous_status: SubscriptionStatus::Active,
            created_at: "2026-11-25T10:00:00Z".to_owned(),
            cancelled_at: "2026-11-27T08:00:00Z".to_owned(),
            effective_until: Some("2026-12-25T10:00:00Z".to_owned()),
            reason: Some("Cancelled at your request.".to_owned()),
            locale: Locale::En,
        }
    }
}

impl SubscriptionCancelled {
    /// What makes this email unique: the subscription and the instant of the cancellation (a subscription that was
    /// reactivated and cancelled again is told again), whatever the event id.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}",
            Self::TYPE,
            self.subscription_id.to_ascii_lowercase(),
            instant_key(&self.cancelled_at)
        )
    }
}

impl Event for SubscriptionCancelled {
    const TYPE: &'static str = "subscription.cancelled";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        uuid(&mut invalid, "/data/subscription_id", &self.subscription_id);
        uuid(&mut invalid, "/data/customer_id", &self.customer_id);
        rules::bare_address(&mut invalid, "/data/customer/email", &self.customer.email);
        if self.previous_status.is_ended() {
            invalid.push(
                "/data/previous_status",
                "an ended subscription (cancelled or expired) cannot be cancelled",
            );
        }
        let created = rules::timestamp(&mut invalid, "/data/created_at", &self.created_at);
        let cancelled = rules::timestamp(&mut invalid, "/data/cancelled_at", &self.cancelled_at);
        not_before(
            &mut invalid,
            "/data/cancelled_at",
            cancelled,
            "/data/created_at",
            created,
        );
        if let Some(until) = &self.effective_until {
            let until = rules::timestamp(&mut invalid, "/data/effective_until", until);
            not_before(
                &mut invalid,
                "/data/effective_until",
                until,
                "/data/cancelled_at",
                cancelled,
            );
        }
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::not_in_future(&mut invalid, "/data/cancelled_at", &self.cancelled_at);
        invalid.into_result()
    }
}

/// A subscription moved from one status to another (a trial converted, a payment failed, a pause, a renewal): the
/// customer is told in words for the new status. A cancellation is its own event, `subscription.cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "SubscriptionStatusChanged", example = SubscriptionStatusChanged::example())]
#[serde(deny_unknown_fields)]
pub struct SubscriptionStatusChanged {
    /// The billing system's id of the subscription (a UUID).
    #[schemars(extend("format" = "uuid"), regex(pattern = UUID_PATTERN))]
    pub subscription_id: String,
    /// The billing system's id of the customer (a UUID).
    #[schemars(extend("format" = "uuid"), regex(pattern = UUID_PATTERN))]
    pub customer_id: String,
    /// Who the email goes to.
    pub customer: Customer,
    /// The plan's name as the customer sees it, plain text.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub plan_name: String,
    /// The status before.
    pub previous_status: SubscriptionStatus,
    /// The status now; differs from `previous_status`, and is never `cancelled` (see `subscription.cancelled`).
    pub new_status: SubscriptionStatus,
    /// When the subscription was created (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    /// When the status changed (RFC 3339); not before `created_at`, not in the future at publish time.
    #[schemars(extend("format" = "date-time"))]
    pub changed_at: String,
    /// Why, in words for the customer, plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub reason: Option<String>,
    /// The customer's language.
    #[serde(default)]
    pub locale: Locale,
}

impl SubscriptionStatusChanged {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            subscription_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned(),
            customer_id: "3f2b8c1e-5d4a-4e6f-9a8b-1c2d3e4f5a6b".to_owned(),
            customer: Customer {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            plan_name: "Pro (monthly)".to_owned(),
            previous_status: SubscriptionStatus::Trialing,
            new_status: SubscriptionStatus::Active,
            created_at: "2026-11-25T10:00:00Z".to_owned(),
            changed_at: "2026-11-26T10:00:00Z".to_owned(),
            reason: None,
            locale: Locale::En,
        }
    }
}

impl SubscriptionStatusChanged {
    /// What makes this email unique: the subscription, the transition and its instant, whatever the event id. The
    /// same transition at another time (a second failed payment next month) is another change, and another email.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            Self::TYPE,
            self.subscription_id.to_ascii_lowercase(),
            self.previous_status.as_str(),
            self.new_status.as_str(),
            instant_key(&self.changed_at)
        )
    }
}

impl Event for SubscriptionStatusChanged {
    const TYPE: &'static str = "subscription.status_changed";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        uuid(&mut invalid, "/data/subscription_id", &self.subscription_id);
        uuid(&mut invalid, "/data/customer_id", &self.customer_id);
        rules::bare_address(&mut invalid, "/data/customer/email", &self.customer.email);
        if self.previous_status == self.new_status {
            invalid.push("/data/new_status", "must differ from previous_status");
        }
        if self.new_status == SubscriptionStatus::Cancelled {
            invalid.push(
                "/data/new_status",
                "a cancellation is a subscription.cancelled event",
            );
        }
        let created = rules::timestamp(&mut invalid, "/data/created_at", &self.created_at);
        let changed = rules::timestamp(&mut invalid, "/data/changed_at", &self.changed_at);
        not_before(
            &mut invalid,
            "/data/changed_at",
            changed,
            "/data/created_at",
            created,
        );
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::not_in_future(&mut invalid, "/data/changed_at", &self.changed_at);
        invalid.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(result: Result<(), Invalid>) -> Vec<String> {
        result
            .expect_err("refused")
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn examples_are_valid() {
        SubscriptionCreated::example().validate().unwrap();
        SubscriptionCancelled::example().validate().unwrap();
        SubscriptionStatusChanged::example().validate().unwrap();
    }

    #[test]
    fn timestamps_out_of_order_are_refused_naming_the_field() {
        let mut cancelled = SubscriptionCancelled::example();
        cancelled.cancelled_at = "2026-11-24T10:00:00Z".to_owned();
        assert_eq!(fields(cancelled.validate()), ["/data/cancelled_at"]);
        let mut cancelled = SubscriptionCancelled::example();
        cancelled.effective_until = Some("2026-11-27T07:59:59Z".to_owned());
        assert_eq!(fields(cancelled.validate()), ["/data/effective_until"]);
        let mut changed = SubscriptionStatusChanged::example();
        // The same instant in another offset is not before it; a second earlier is.
        changed.changed_at = "2026-11-25T17:00:00+07:00".to_owned();
        changed.validate().unwrap();
        changed.changed_at = "2026-11-25T16:59:59+07:00".to_owned();
        assert_eq!(fields(changed.validate()), ["/data/changed_at"]);
        let mut created = SubscriptionCreated::example();
        created.trial_end = Some(created.created_at.clone());
        assert_eq!(fields(created.validate()), ["/data/trial_end"]);
    }

    #[test]
    fn statuses_that_tell_no_story_are_refused() {
        let mut changed = SubscriptionStatusChanged::example();
        changed.new_status = changed.previous_status;
        assert_eq!(fields(changed.validate()), ["/data/new_status"]);
        changed.new_status = SubscriptionStatus::Cancelled;
        assert_eq!(fields(changed.validate()), ["/data/new_status"]);
        let mut cancelled = SubscriptionCancelled::example();
        cancelled.previous_status = SubscriptionStatus::Expired;
        assert_eq!(fields(cancelled.validate()), ["/data/previous_status"]);
        let mut created = SubscriptionCreated::example();
        created.status = SubscriptionStatus::PastDue;
        assert_eq!(
            fields(created.validate()),
            ["/data/status", "/data/trial_end"]
        );
        created.status = SubscriptionStatus::Active;
        assert_eq!(fields(created.validate()), ["/data/trial_end"]);
        created.trial_end = None;
        created.validate().unwrap();
    }

    #[test]
    fn ids_must_be_uuids() {
        let mut created = SubscriptionCreated::example();
        created.subscription_id = "sub_123".to_owned();
        created.customer_id = "7c9e6679742540de944be07fc1f90ae7".to_owned();
        assert_eq!(
            fields(created.validate()),
            ["/data/subscription_id", "/data/customer_id"]
        );
    }

    #[test]
    fn a_change_has_one_key_and_another_change_another() {
        let change = SubscriptionStatusChanged::example();
        let mut same = change.clone();
        same.subscription_id = same.subscription_id.to_ascii_uppercase();
        same.changed_at = "2026-11-26T17:00:00+07:00".to_owned();
        same.reason = Some("Thank you!".to_owned());
        assert_eq!(change.idempotency_key(), same.idempotency_key());
        let mut later = change.clone();
        later.changed_at = "2026-12-26T10:00:00Z".to_owned();
        let mut other = change.clone();
        other.new_status = SubscriptionStatus::PastDue;
        let keys: std::collections::HashSet<_> = [&change, &later, &other]
            .iter()
            .map(|c| c.idempotency_key())
            .collect();
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn one_instant_has_one_key_whatever_its_offset() {
        assert_eq!(
            instant_key("2026-11-25T17:00:00+07:00"),
            instant_key("2026-11-25T10:00:00Z")
        );
        assert_ne!(
            instant_key("2026-11-25T10:00:01Z"),
            instant_key("2026-11-25T10:00:00Z")
        );
    }
}
