//! `ProductClient`: how the order service prices an order and checks that
//! its products exist, by asking the product service over HTTP (which
//! answers from its Redis cache). Keeping this synchronous lets
//! `POST /orders` refuse an unknown product with a 4xx before anything is
//! written.
//!
//! A product's name and price never change once it is created (only its
//! stock does, and pricing does not read the stock), so the client keeps
//! the products it has seen for [`REMEMBER_FOR`] and asks the product
//! service only about the others: most orders then cost no HTTP round trip
//! to price, which under load was one of the larger costs of an order.
//! An unknown product is never remembered, so it is refused every time.

use crate::product::Product;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a product seen is used without asking again. Names and prices
/// are immutable today; the bound keeps the client honest should that
/// change.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Most products remembered; past it the memory starts over.
const REMEMBER_AT_MOST: usize = 10_000;

/// Why the catalogue could not be read.
#[derive(Debug, thiserror::Error)]
#[error("product service unavailable: {0}")]
pub struct ProductLookupError(pub String);

/// Client of the product service.
#[derive(Clone)]
pub struct ProductClient {
    http: reqwest::Client,
    /// e.g. `http://127.0.0.1:8081`
    base_url: String,
    /// Products seen (shared by clones).
    seen: Arc<Mutex<Remembered>>,
}

/// Products fetched, with when; what [`ProductClient`] answers without
/// asking. Kept apart from the HTTP so its rules can be tested on their own.
#[derive(Default)]
struct Remembered {
    products: HashMap<Uuid, (Instant, Product)>,
}

impl Remembered {
    /// Splits `ids` into products remembered and fresh at `now`, and ids to
    /// ask for.
    fn lookup(&self, ids: &[Uuid], now: Instant) -> (Vec<Product>, Vec<Uuid>) {
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.products.get(id) {
                Some((at, product)) if now.duration_since(*at) < REMEMBER_FOR => {
                    found.push(product.clone())
                }
                _ => missing.push(*id),
            }
        }
        (found, missing)
    }

    /// Remembers `fetched` as of `now`; past [`REMEMBER_AT_MOST`] the
    /// memory starts over rather than growing.
    fn remember(&mut self, fetched: &[Product], now: Instant) {
        if self.products.len() + fetched.len() > REMEMBER_AT_MOST {
            self.products.clear();
        }
        for product in fetched {
            self.products.insert(product.id, (now, product.clone()));
        }
    }
}

impl ProductClient {
    /// A client for the product service at `base_url`.
    pub fn new(base_url: &str) -> Self {
        let (http, base_url) = crate::service::peer_client(base_url);
        Self {
            http,
            base_url,
            seen: Arc::default(),
        }
    }

    /// The products with these ids; unknown ids are absent from the answer.
    /// Names and prices are current; the stock of a remembered product may
    /// not be.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Product>, ProductLookupError> {
        let (mut found, missing) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(ids, Instant::now());
        if missing.is_empty() {
            return Ok(found);
        }
        let fetched = self.fetch(&missing).await?;
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(&fetched, Instant::now());
        found.extend(fetched);
        Ok(found)
    }

    /// Asks the product service.
    async fn fetch(&self, ids: &[Uuid]) -> Result<Vec<Product>, ProductLookupError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let mut request = self
            .http
            .get(format!("{}/products", self.base_url))
            .query(&[("ids", ids.join(","))]);
        // The product service's work for this order joins the order's trace.
        if let Some(trace) = crate::trace::TraceParent::current() {
            request = request.header(crate::trace::HEADER, trace.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProductLookupError(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ProductLookupError(format!("HTTP {}", response.status())));
        }
        response
            .json()
            .await
            .map_err(|e| ProductLookupError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(name: &str) -> Product {
        Product {
            id: Uuid::now_v7(),
            sku: name.to_uppercase(),
            name: name.into(),
            description: String::new(),
            price_cents: 1250,
            currency: "EUR".into(),
            stock: 3,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_fetched_product_is_answered_until_it_is_a_minute_old() {
        let (mug, tote) = (product("mug"), product("tote"));
        let mut memory = Remembered::default();
        let t0 = Instant::now();
        memory.remember(std::slice::from_ref(&mug), t0);
        let (found, missing) = memory.lookup(&[mug.id, tote.id], t0 + Duration::from_secs(59));
        assert_eq!(found, std::slice::from_ref(&mug));
        assert_eq!(missing, [tote.id]);
        let (found, missing) = memory.lookup(&[mug.id], t0 + REMEMBER_FOR);
        assert!(found.is_empty());
        assert_eq!(missing, [mug.id]);
    }

    #[test]
    fn an_unknown_product_is_asked_for_every_time() {
        let mut memory = Remembered::default();
        let unknown = Uuid::now_v7();
        let now = Instant::now();
        // The product service answered without it: nothing to remember.
        memory.remember(&[], now);
        assert_eq!(memory.lookup(&[unknown], now).1, [unknown]);
    }

    #[test]
    fn a_full_memory_starts_over_instead_of_growing() {
        let mut memory = Remembered::default();
        let now = Instant::now();
        let many: Vec<Product> = (0..REMEMBER_AT_MOST).map(|_| product("p")).collect();
        memory.remember(&many, now);
        assert_eq!(memory.products.len(), REMEMBER_AT_MOST);
        let extra = product("extra");
        memory.remember(std::slice::from_ref(&extra), now);
        assert_eq!(memory.products.len(), 1);
        assert_eq!(memory.lookup(&[extra.id], now).0, [extra]);
    }
}
