//! Order events of a shop: placed, shipped, status changed.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Event, Invalid, Locale, rules};

/// ISO 4217 currencies the shop sells in; each knows its minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum Currency {
    USD,
    EUR,
    GBP,
    CHF,
    JPY,
    CNY,
    KRW,
    VND,
    SGD,
    THB,
    IDR,
    MYR,
    PHP,
    INR,
    AUD,
    NZD,
    CAD,
    SEK,
    NOK,
    DKK,
    PLN,
}

impl Currency {
    /// Digits after the decimal point: amounts are integers in this minor unit (cents for USD, whole đồng for VND).
    pub fn exponent(self) -> u32 {
        match self {
            Self::JPY | Self::KRW | Self::VND | Self::IDR => 0,
            _ => 2,
        }
    }

    /// The ISO code.
    pub fn code(self) -> &'static str {
        match self {
            Self::USD => "USD",
            Self::EUR => "EUR",
            Self::GBP => "GBP",
            Self::CHF => "CHF",
            Self::JPY => "JPY",
            Self::CNY => "CNY",
            Self::KRW => "KRW",
            Self::VND => "VND",
            Self::SGD => "SGD",
            Self::THB => "THB",
            Self::IDR => "IDR",
            Self::MYR => "MYR",
            Self::PHP => "PHP",
            Self::INR => "INR",
            Self::AUD => "AUD",
            Self::NZD => "NZD",
            Self::CAD => "CAD",
            Self::SEK => "SEK",
            Self::NOK => "NOK",
            Self::DKK => "DKK",
            Self::PLN => "PLN",
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Largest amount accepted, in minor units: a guard against overflow and fat fingers, not a business limit.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000_000;

/// The buyer.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Display name, plain text.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: String,
    /// Where customer emails go.
    #[schemars(extend("format" = "idn-email"), length(min = 3, max = 254))]
    pub email: String,
}

impl fmt::Debug for Customer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Customer")
            .field("email", &crate::pii::Masked(&self.email))
            .finish_non_exhaustive()
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Stock keeping unit.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub sku: String,
    /// Product name as shown to the customer.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: String,
    /// Units ordered.
    #[schemars(range(min = 1, max = 10000))]
    pub quantity: u32,
    /// Price of one unit in the currency's minor unit (cents for USD, đồng for VND).
    #[schemars(range(max = 1_000_000_000_000_000u64))]
    pub unit_price: u64,
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Recipient name.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: String,
    /// Street and number.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub line1: String,
    /// Apartment, suite, building.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub line2: Option<String>,
    /// City.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub city: String,
    /// State, province or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub region: Option<String>,
    /// Postal code.
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[A-Za-z0-9 -]+$"))]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    #[schemars(regex(pattern = r"^[A-Z]{2}$"))]
    pub country: String,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Processing,
    OnHold,
    Shipped,
    Delivered,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    /// The wire name, which templates switch on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Processing => "processing",
            Self::OnHold => "on_hold",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }
}

/// A customer placed an order: the confirmation goes to them and a notification to the shop's staff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "OrderPlaced", example = OrderPlaced::example())]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    /// The shop's order id; part of every idempotency key.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub order_id: String,
    /// The number the customer sees.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[A-Za-z0-9#._-]+$"))]
    pub order_number: String,
    /// The buyer.
    pub customer: Customer,
    /// What was ordered; at least one line.
    #[schemars(length(min = 1, max = 100))]
    pub items: Vec<Item>,
    /// The currency of every amount.
    pub currency: Currency,
    /// Sum of quantity × unit price over the items, in minor units.
    #[schemars(range(max = 1_000_000_000_000_000u64))]
    pub subtotal: u64,
    /// Shipping cost, in minor units.
    #[serde(default)]
    #[schemars(range(max = 1_000_000_000_000_000u64))]
    pub shipping: u64,
    /// Tax, in minor units.
    #[serde(default)]
    #[schemars(range(max = 1_000_000_000_000_000u64))]
    pub tax: u64,
    /// Discount, in minor units.
    #[serde(default)]
    #[schemars(range(max = 1_000_000_000_000_000u64))]
    pub discount: u64,
    /// subtotal + shipping + tax − discount, in minor units.
    #[schemars(range(max = 1_000_000_000_000_000u64))]
    pub total: u64,
    /// Where it ships.
    pub shipping_address: Address,
    /// When the order was placed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub placed_at: String,
    /// The customer's language.
    #[serde(default)]
    pub locale: Locale,
    /// Send the customer's confirmation (default true).
    #[serde(default = "yes")]
    pub notify_customer: bool,
    /// Notify the shop's staff (default true).
    #[serde(default = "yes")]
    pub notify_admins: bool,
}

fn yes() -> bool {
    true
}

impl OrderPlaced {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            order_id: "ord_8f14e45f".to_owned(),
            order_number: "A-10042".to_owned(),
            customer: Customer {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            items: vec![
                Item {
                    sku: "TEA-001".to_owned(),
                    name: "Sencha, 100 g".to_owned(),
                    quantity: 2,
                    unit_price: 1250,
                },
                Item {
                    sku: "CUP-004".to_owned(),
                    name: "Glazed cup".to_owned(),
                    quantity: 1,
                    unit_price: 1800,
                },
            ],
            currency: Currency::USD,
            subtotal: 4300,
            shipping: 500,
            tax: 344,
            discount: 0,
            total: 5144,
            shipping_address: Address {
                name: "Ada Lovelace".to_owned(),
                line1: "12 St James's Square".to_owned(),
                line2: None,
                city: "London".to_owned(),
                region: None,
                postal_code: "SW1Y 4JH".to_owned(),
                country: "GB".to_owned(),
            },
            placed_at: "2026-11-25T10:00:00Z".to_owned(),
            locale: Locale::En,
            notify_customer: true,
            notify_admins: true,
        }
    }
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "orders.placed";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::bare_address(&mut invalid, "/data/customer/email", &self.customer.email);
        rules::timestamp(&mut invalid, "/data/placed_at", &self.placed_at);
        let mut subtotal: u64 = 0;
        for (i, item) in self.items.iter().enumerate() {
            match item
                .unit_price
                .checked_mul(u64::from(item.quantity))
                .and_then(|line| subtotal.checked_add(line))
            {
                Some(sum) if sum <= MAX_AMOUNT => subtotal = sum,
                _ => invalid.push(
                    format!("/data/items/{i}"),
                    "quantity × unit_price is too large",
                ),
            }
        }
        if subtotal != self.subtotal {
            invalid.push(
                "/data/subtotal",
                "must equal the sum of quantity × unit_price over the items",
            );
        }
        let gross = self
            .subtotal
            .saturating_add(self.shipping)
            .saturating_add(self.tax);
        if self.discount > gross {
            invalid.push("/data/discount", "cannot exceed subtotal + shipping + tax");
        } else if gross - self.discount != self.total {
            invalid.push(
                "/data/total",
                "must equal subtotal + shipping + tax - discount",
            );
        }
        if !self.notify_customer && !self.notify_admins {
            invalid.push(
                "/data/notify_customer",
                "notify_customer and notify_admins cannot both be false",
            );
        }
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::not_in_future(&mut invalid, "/data/placed_at", &self.placed_at);
        invalid.into_result()
    }
}

/// An order left the warehouse: the customer gets the carrier and tracking link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "OrderShipped", example = OrderShipped::example())]
#[serde(deny_unknown_fields)]
pub struct OrderShipped {
    /// The shop's order id.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub order_id: String,
    /// The number the customer sees.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[A-Za-z0-9#._-]+$"))]
    pub order_number: String,
    /// The buyer.
    pub customer: Customer,
    /// The carrier's name.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub carrier: String,
    /// The carrier's tracking number.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9 -]+$"))]
    pub tracking_number: String,
    /// The carrier's tracking page; must be https.
    #[schemars(length(max = 2048), regex(pattern = r"^https://[^\s]+$"))]
    pub tracking_url: String,
    /// Expected delivery date (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub estimated_delivery: Option<String>,
    /// When it shipped (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub shipped_at: String,
    /// The customer's language.
    #[serde(default)]
    pub locale: Locale,
}

impl OrderShipped {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            order_id: "ord_8f14e45f".to_owned(),
            order_number: "A-10042".to_owned(),
            customer: Customer {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            carrier: "DHL Express".to_owned(),
            tracking_number: "JD014600003828".to_owned(),
            tracking_url: "https://www.dhl.com/track?id=JD014600003828".to_owned(),
            estimated_delivery: Some("2026-11-28".to_owned()),
            shipped_at: "2026-11-25T15:00:00Z".to_owned(),
            locale: Locale::En,
        }
    }
}

impl Event for OrderShipped {
    const TYPE: &'static str = "orders.shipped";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::bare_address(&mut invalid, "/data/customer/email", &self.customer.email);
        rules::timestamp(&mut invalid, "/data/shipped_at", &self.shipped_at);
        if let Some(date) = &self.estimated_delivery
            && time::Date::parse(
                date,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .is_err()
        {
            invalid.push(
                "/data/estimated_delivery",
                "must be a calendar date YYYY-MM-DD",
            );
        }
        invalid.into_result()
    }
}

/// An order's status changed: the customer is told, in words that fit the new status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "OrderStatusChanged", example = OrderStatusChanged::example())]
#[serde(deny_unknown_fields)]
pub struct OrderStatusChanged {
    /// The shop's order id.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub order_id: String,
    /// The number the customer sees.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[A-Za-z0-9#._-]+$"))]
    pub order_number: String,
    /// The buyer.
    pub customer: Customer,
    /// The status before.
    pub previous_status: OrderStatus,
    /// The status now.
    pub new_status: OrderStatus,
    /// When it changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub changed_at: String,
    /// A note for the customer, plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub note: Option<String>,
    /// The customer's language.
    #[serde(default)]
    pub locale: Locale,
}

impl OrderStatusChanged {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            order_id: "ord_8f14e45f".to_owned(),
            order_number: "A-10042".to_owned(),
            customer: Customer {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            previous_status: OrderStatus::Shipped,
            new_status: OrderStatus::Delivered,
            changed_at: "2026-11-28T09:30:00Z".to_owned(),
            note: None,
            locale: Locale::En,
        }
    }
}

impl Event for OrderStatusChanged {
    const TYPE: &'static str = "orders.status_changed";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::bare_address(&mut invalid, "/data/customer/email", &self.customer.email);
        rules::timestamp(&mut invalid, "/data/changed_at", &self.changed_at);
        if self.previous_status == self.new_status {
            invalid.push("/data/new_status", "must differ from previous_status");
        }
        invalid.into_result()
    }
}
