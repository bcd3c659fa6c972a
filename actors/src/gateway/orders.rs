//! `OrderLookup`: how the gateway reads an order's current status and
//! history when a client subscribes — from the order service over HTTP,
//! with the client's own bearer token, so Postgres stays the source of
//! truth and the order service alone decides who may see an order (a
//! customer asking for another's order gets 404, exactly like a missing one).

use crate::order::model::OrderView;
use uuid::Uuid;

/// Why an order could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The token was refused (expired since the connection opened).
    #[error("the token was refused: {0}")]
    Unauthorized(String),
    /// The order service is unreachable or failing.
    #[error("order service unavailable: {0}")]
    Unavailable(String),
}

/// Client of the order service.
#[derive(Clone)]
pub struct OrderLookup {
    http: reqwest::Client,
    /// e.g. `http://127.0.0.1:8080`
    base_url: String,
}

impl OrderLookup {
    /// A client for the order service at `base_url`.
    pub fn new(base_url: &str) -> Self {
        let (http, base_url) = crate::service::peer_client(base_url);
        Self { http, base_url }
    }

    /// The order as `token`'s holder may see it; `None` if it does not
    /// exist or is not theirs.
    pub async fn get(&self, order_id: Uuid, token: &str) -> Result<Option<OrderView>, LookupError> {
        let response = self
            .http
            .get(format!("{}/orders/{order_id}", self.base_url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| LookupError::Unavailable(e.to_string()))?;
        match response.status().as_u16() {
            200 => response
                .json()
                .await
                .map(Some)
                .map_err(|e| LookupError::Unavailable(e.to_string())),
            404 => Ok(None),
            401 | 403 => Err(LookupError::Unauthorized(format!(
                "HTTP {}",
                response.status()
            ))),
            _ => Err(LookupError::Unavailable(format!(
                "HTTP {}",
                response.status()
            ))),
        }
    }
}
