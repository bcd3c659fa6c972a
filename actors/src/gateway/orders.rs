//! `OrderLookup`: how the gateway reads an order's current status and
//! history when a client subscribes. First from the gateway's own copy in
//! Redis ([`History`]), when it holds what the client needs and says whose
//! order it is; otherwise from the order service over HTTP, with the
//! client's own bearer token, so Postgres stays the source of truth and the
//! order service decides who may see an order (a customer asking for
//! another's order gets 404, exactly like a missing one).

use super::history::{covers, Entry, History};
use crate::auth::Principal;
use crate::order::model::{OrderView, StatusEntry};
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

/// What a subscriber is told about an order.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// Its current status.
    pub current: StatusEntry,
    /// Its status changes, oldest first: all of them, or (from Redis) at
    /// least every one after the subscriber's `last_seq`.
    pub history: Vec<StatusEntry>,
}

/// Reads orders for subscribers: from Redis when it can, else from the
/// order service.
#[derive(Clone)]
pub struct OrderLookup {
    http: reqwest::Client,
    /// e.g. `http://127.0.0.1:8080`
    base_url: String,
    history: History,
}

impl OrderLookup {
    /// Reads from `history`, else from the order service at `base_url`.
    pub fn new(base_url: &str, history: History) -> Self {
        let (http, base_url) = crate::service::peer_client(base_url);
        Self {
            http,
            base_url,
            history,
        }
    }

    /// The order as `principal` may see it, with what a client that has
    /// seen up to `last_seq` needs; `None` if it does not exist or is not
    /// theirs.
    pub async fn get(
        &self,
        order_id: Uuid,
        principal: &Principal,
        token: &str,
        last_seq: Option<i32>,
    ) -> Result<Option<Known>, LookupError> {
        let lookups = &crate::metrics::metrics().order_lookups;
        if let Some(entries) = self.history.read(order_id).await {
            let owner = entries.iter().find_map(|e| e.customer_id.as_deref());
            match owner {
                Some(owner) if owner != principal.subject && !principal.is_admin() => {
                    lookups.get_or_create(&source("redis")).inc();
                    return Ok(None);
                }
                Some(_) if covers(&entries, last_seq) => {
                    if let Some(known) = known_from(&entries) {
                        lookups.get_or_create(&source("redis")).inc();
                        return Ok(Some(known));
                    }
                }
                // Whose it is, or part of what is needed, is not stored.
                _ => {}
            }
        }
        lookups.get_or_create(&source("order_service")).inc();
        Ok(self.ask_order_service(order_id, token).await?.map(|order| {
            let seq = order.history.iter().map(|h| h.seq).max().unwrap_or(0);
            Known {
                current: StatusEntry {
                    seq,
                    status: order.status,
                    reason: order.reason,
                    at: order.updated_at,
                },
                history: order.history,
            }
        }))
    }

    /// The order as `token`'s holder may see it; `None` if it does not
    /// exist or is not theirs.
    async fn ask_order_service(
        &self,
        order_id: Uuid,
        token: &str,
    ) -> Result<Option<OrderView>, LookupError> {
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

fn source(name: &str) -> crate::metrics::SourceLabels {
    crate::metrics::SourceLabels {
        source: name.to_owned(),
    }
}

/// What stored entries (oldest first) tell a subscriber.
fn known_from(entries: &[Entry]) -> Option<Known> {
    let history: Vec<StatusEntry> = entries
        .iter()
        .map(|e| StatusEntry {
            seq: e.seq,
            status: e.status,
            reason: e.reason,
            at: e.at,
        })
        .collect();
    Some(Known {
        current: history.last()?.clone(),
        history,
    })
}
