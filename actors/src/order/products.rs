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
    /// Products seen, with when they were fetched (shared by clones).
    seen: Arc<Mutex<HashMap<Uuid, (Instant, Product)>>>,
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
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match seen.get(id) {
                    Some((at, product)) if at.elapsed() < REMEMBER_FOR => {
                        found.push(product.clone())
                    }
                    _ => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let fetched = self.fetch(&missing).await?;
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() + fetched.len() > REMEMBER_AT_MOST {
            seen.clear();
        }
        for product in &fetched {
            seen.insert(product.id, (now, product.clone()));
        }
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
