//! What clients send to and get from the order service: validated order
//! input and the order views.

use crate::events::{OrderStatus, RejectReason};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most distinct products in one order.
pub const MAX_LINES: usize = 50;
/// Most units of one product in one order.
pub const MAX_QUANTITY: i64 = 1000;
/// Longest customer id, in bytes (a token's `sub` longer than this is
/// refused at authentication, as it could never own an order).
pub const MAX_CUSTOMER_ID_LEN: usize = 128;

/// Whether `id` (already trimmed) can be a customer id: 1 to
/// [`MAX_CUSTOMER_ID_LEN`] bytes and no control characters. Control
/// characters have no place in an id, and Postgres refuses NUL in text
/// (without this check a NUL was a 503).
pub fn is_valid_customer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CUSTOMER_ID_LEN && !id.chars().any(char::is_control)
}

/// Body of `POST /orders`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "items": [{"product_id": "00000000-0000-4000-8000-000000000001", "quantity": 2}],
    "payment_token": "tok_visa"
}))]
pub struct PlaceOrder {
    /// Who is ordering. Over HTTP it comes from the bearer token; a body
    /// may repeat it, but not name someone else.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub customer_id: Option<String>,
    /// What, and how many (at most 50 distinct products).
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<ItemInput>,
    /// Stripe-style test token choosing the simulated payment outcome;
    /// `tok_visa` when absent. Approve: `tok_visa`, `tok_visa_debit`,
    /// `tok_mastercard`, `tok_amex`; decline: `tok_chargeDeclined`,
    /// `tok_chargeDeclinedInsufficientFunds`, `tok_chargeDeclinedFraudulent`,
    /// `tok_chargeDeclinedExpiredCard`.
    #[serde(default)]
    #[schema(example = "tok_visa")]
    pub payment_token: Option<String>,
}

/// One requested line, before validation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    /// The product.
    pub product_id: Uuid,
    /// Units, 1 to 1000; parsed wide so that a negative or huge number gets
    /// a clear message.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

/// A validated order request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    /// Trimmed customer id.
    pub customer_id: String,
    /// Lines with distinct products (repeated products are merged).
    pub lines: Vec<(Uuid, i32)>,
    /// A known test token.
    pub payment_token: String,
}

impl PlaceOrder {
    /// Checks everything that can be checked without other services.
    pub fn validate(self) -> Result<ValidOrder, String> {
        let customer_id = self
            .customer_id
            .as_deref()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !is_valid_customer_id(&customer_id) {
            return Err(
                format!(
                    "customer_id must be 1 to {MAX_CUSTOMER_ID_LEN} bytes, none of them control characters"
                ),
            );
        }
        if self.items.is_empty() {
            return Err("items must not be empty".into());
        }
        let mut lines: Vec<(Uuid, i64)> = Vec::new();
        for item in &self.items {
            if item.quantity < 1 {
                return Err(format!(
                    "quantity for product {} must be at least 1, got {}",
                    item.product_id, item.quantity
                ));
            }
            match lines.iter_mut().find(|(id, _)| *id == item.product_id) {
                Some((_, quantity)) => *quantity = quantity.saturating_add(item.quantity),
                None => lines.push((item.product_id, item.quantity)),
            }
        }
        if lines.len() > MAX_LINES {
            return Err(format!("an order may hold at most {MAX_LINES} products"));
        }
        if let Some((id, quantity)) = lines.iter().find(|(_, q)| *q > MAX_QUANTITY) {
            return Err(format!(
                "quantity for product {id} must be at most {MAX_QUANTITY}, got {quantity}"
            ));
        }
        let payment_token = self
            .payment_token
            .unwrap_or_else(|| crate::payment::tokens::DEFAULT.to_owned());
        if crate::payment::tokens::outcome(&payment_token).is_none() {
            return Err(format!(
                "unknown payment_token {payment_token:?}; use one of {}",
                crate::payment::tokens::KNOWN.join(", ")
            ));
        }
        Ok(ValidOrder {
            customer_id,
            // Fits: every quantity is at most MAX_QUANTITY.
            lines: lines.into_iter().map(|(id, q)| (id, q as i32)).collect(),
            payment_token,
        })
    }
}

/// The answer to `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacedOrder {
    /// The new order's id.
    pub order_id: Uuid,
    /// Always PENDING: the saga runs asynchronously.
    pub status: OrderStatus,
}

/// One line of an order as stored, with the price it was sold at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OrderItem {
    /// The product.
    pub product_id: Uuid,
    /// Its name when ordered.
    pub name: String,
    /// Units.
    pub quantity: i32,
    /// Unit price when ordered, in cents.
    pub unit_price_cents: i64,
}

/// One entry of an order's status history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StatusEntry {
    /// Per-order sequence number.
    pub seq: i32,
    /// Status entered.
    pub status: OrderStatus,
    /// Why, when rejected or compensating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The answer to `GET /orders/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// Current status.
    pub status: OrderStatus,
    /// Why it was rejected, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// What was ordered.
    pub items: Vec<OrderItem>,
    /// Total in cents.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Every status it went through, oldest first.
    pub history: Vec<StatusEntry>,
}

/// One row of `GET /orders?customer_id=`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderSummary {
    /// The order.
    pub order_id: Uuid,
    /// Current status.
    pub status: OrderStatus,
    /// Why it was rejected, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// Total in cents.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(items: Vec<(Uuid, i64)>) -> PlaceOrder {
        PlaceOrder {
            customer_id: Some("alice".into()),
            items: items
                .into_iter()
                .map(|(product_id, quantity)| ItemInput {
                    product_id,
                    quantity,
                })
                .collect(),
            payment_token: None,
        }
    }

    #[test]
    fn repeated_products_are_merged_and_default_token_applies() {
        let id = Uuid::new_v4();
        let valid = order(vec![(id, 2), (id, 3)]).validate().unwrap();
        assert_eq!(valid.lines, vec![(id, 5)]);
        assert_eq!(valid.payment_token, "tok_visa");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let id = Uuid::new_v4();
        assert!(order(vec![]).validate().unwrap_err().contains("items"));
        assert!(order(vec![(id, 0)])
            .validate()
            .unwrap_err()
            .contains("at least 1"));
        assert!(order(vec![(id, -4)])
            .validate()
            .unwrap_err()
            .contains("at least 1"));
        assert!(order(vec![(id, 5000)])
            .validate()
            .unwrap_err()
            .contains("at most"));
        let mut blank = order(vec![(id, 1)]);
        blank.customer_id = Some("  ".into());
        assert!(blank.validate().unwrap_err().contains("customer_id"));
        let mut nul = order(vec![(id, 1)]);
        nul.customer_id = Some("ali\u{0}ce".into());
        assert!(nul.validate().unwrap_err().contains("customer_id"));
        let mut token = order(vec![(id, 1)]);
        token.payment_token = Some("tok_bogus".into());
        assert!(token.validate().unwrap_err().contains("payment_token"));
    }
}
