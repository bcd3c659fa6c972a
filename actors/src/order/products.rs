//! `ProductClient`: how the order service prices an order and checks that
//! its products exist, by asking the product service over HTTP (which
//! answers from its Redis cache). Keeping this synchronous lets
//! `POST /orders` refuse an unknown product with a 4xx before anything is
//! written.

use crate::product::Product;
use uuid::Uuid;

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
}

impl ProductClient {
    /// A client for the product service at `base_url`.
    pub fn new(base_url: &str) -> Self {
        let (http, base_url) = crate::service::peer_client(base_url);
        Self { http, base_url }
    }

    /// The products with these ids; unknown ids are absent from the answer.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Product>, ProductLookupError> {
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
