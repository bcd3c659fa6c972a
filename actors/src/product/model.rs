//! The catalogue's data: products as stored and served, and validated input
//! for creating one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A product with its current stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    /// Stable identifier.
    pub id: Uuid,
    /// Merchant's stock-keeping unit, unique.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// Unit price in minor units (cents).
    pub price_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Units available to order.
    pub stock: i32,
    /// Last change to the row, stock included.
    pub updated_at: DateTime<Utc>,
}

/// Body of `POST /products`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Unique stock-keeping unit.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$",
        example = "MUG-001"
    )]
    pub sku: String,
    /// Display name.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$",
        example = "Espresso mug"
    )]
    pub name: String,
    /// Display description.
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = "^[^\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F-\\x9F]*$"
    )]
    pub description: String,
    /// Unit price in cents.
    #[schema(minimum = 0, maximum = 100_000_000, example = 1200)]
    pub price_cents: i64,
    /// ISO 4217 code; the shop sells in one currency, EUR.
    #[serde(default = "default_currency")]
    #[schema(pattern = "^EUR$", example = "EUR")]
    pub currency: String,
    /// Initial stock.
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 120)]
    pub stock: i32,
}

fn default_currency() -> String {
    "EUR".to_owned()
}

/// Largest stock one product may hold: far beyond any real shelf, and well
/// inside `integer` arithmetic.
pub const MAX_STOCK: i32 = 1_000_000_000;

impl NewProduct {
    /// Checks the fields a client controls; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        // Control characters are refused (line breaks only in the
        // description): Postgres refuses NUL in text, which answered 503
        // instead of 422 before.
        let sku = self.sku.trim();
        if sku.is_empty() || sku.len() > 64 || sku.chars().any(char::is_control) {
            return Err("sku must be 1 to 64 characters, none of them control characters".into());
        }
        if self.name.trim().is_empty()
            || self.name.len() > 200
            || self.name.chars().any(char::is_control)
        {
            return Err("name must be 1 to 200 characters, none of them control characters".into());
        }
        if self.description.len() > 2000
            || self
                .description
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(
                "description must be at most 2000 characters, with no control characters \
                 but line breaks and tabs"
                    .into(),
            );
        }
        if !(0..=100_000_000).contains(&self.price_cents) {
            return Err("price_cents must be between 0 and 100000000".into());
        }
        if self.currency != "EUR" {
            return Err("currency must be EUR".into());
        }
        validate_stock(self.stock)
    }
}

/// Checks a stock level.
pub fn validate_stock(stock: i32) -> Result<(), String> {
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(format!("stock must be between 0 and {MAX_STOCK}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewProduct {
        NewProduct {
            sku: "SKU-1".into(),
            name: "Thing".into(),
            description: String::new(),
            price_cents: 100,
            currency: "EUR".into(),
            stock: 5,
        }
    }

    #[test]
    fn a_plain_product_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn bad_fields_are_named() {
        type Breakage = fn(&mut NewProduct);
        let cases: [(Breakage, &str); 8] = [
            (|p| p.sku = " ".into(), "sku"),
            (|p| p.sku = "A\u{0}B".into(), "sku"),
            (|p| p.name = "Mug\u{7}".into(), "name"),
            (|p| p.description = "nul\u{0}".into(), "description"),
            (|p| p.name = String::new(), "name"),
            (|p| p.price_cents = -1, "price_cents"),
            (|p| p.stock = -3, "stock"),
            (|p| p.currency = "USD".into(), "currency"),
        ];
        for (break_it, field) in cases {
            let mut product = valid();
            break_it(&mut product);
            let message = product.validate().unwrap_err();
            assert!(message.starts_with(field), "{message}");
        }
    }
}
