//! The harness's HTTP side: the products it creates so that the outcome mix
//! is under its control, the simulated customers and their tokens, and
//! placing one order.

use super::mix::Outcome;
use super::LoadgenError;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// A simulated customer.
#[derive(Debug, Clone)]
pub struct Customer {
    /// The customer id, named in each order's body too.
    pub id: String,
    /// The bearer token its orders are sent with (its own, or the admin's
    /// when the harness was given only an admin token).
    pub token: String,
}

/// The products the harness ordered from.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Products with stock far beyond any run; confirm and decline orders
    /// are spread over them so they do not all queue on one row lock.
    pub stocked: Vec<Uuid>,
    /// A product with no stock: out-of-stock orders buy one unit of it.
    pub empty: Uuid,
}

/// Stock of each product that confirm and decline orders buy from.
const STOCK: i64 = 100_000_000;

/// Creates `stocked` products with plenty of stock and one with none, SKUs
/// prefixed with `run` so runs never collide.
pub async fn create_catalogue(
    http: &reqwest::Client,
    product_url: &str,
    admin_token: &str,
    stocked: usize,
    run: &str,
) -> Result<Catalogue, LoadgenError> {
    let create = |i: usize, stock: i64| {
        let body = json!({
            "sku": format!("LOADGEN-{run}-{i}"),
            "name": format!("Load test product {i}"),
            "description": "created by shop loadgen",
            "price_cents": 1000,
            "stock": stock,
        });
        async move {
            let response = http
                .post(format!("{product_url}/products"))
                .bearer_auth(admin_token)
                .json(&body)
                .send()
                .await
                .map_err(|e| LoadgenError::Setup(format!("creating a product: {e}")))?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            if status != reqwest::StatusCode::CREATED {
                return Err(LoadgenError::Setup(format!(
                    "POST {product_url}/products answered {status}: {body}"
                )));
            }
            body["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| LoadgenError::Setup(format!("no product id in {body}")))
        }
    };
    let mut ids = Vec::with_capacity(stocked);
    for i in 0..stocked.max(1) {
        ids.push(create(i, STOCK).await?);
    }
    let empty = create(stocked.max(1), 0).await?;
    Ok(Catalogue {
        stocked: ids,
        empty,
    })
}

/// Places orders.
#[derive(Debug, Clone)]
pub struct OrderClient {
    /// Pooled HTTP client with the request timeout.
    pub http: reqwest::Client,
    /// The order service's base URL.
    pub order_url: String,
    /// Who orders (round-robin).
    pub customers: Vec<Customer>,
    /// What they order.
    pub catalogue: Catalogue,
}

impl OrderClient {
    /// An HTTP client whose requests give up after `timeout`.
    pub fn http(timeout: Duration) -> Result<reqwest::Client, LoadgenError> {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Under the servers' idle timeout, so no request races a close.
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .map_err(|e| LoadgenError::Setup(format!("HTTP client: {e}")))
    }

    /// The body of order `n` built to end as `outcome`, and who sends it.
    pub fn order(&self, outcome: Outcome, n: u64) -> (&Customer, Value) {
        let pick = |len: usize| usize::try_from(n % len.max(1) as u64).unwrap_or(0);
        let customer = &self.customers[pick(self.customers.len())];
        let product = match outcome {
            Outcome::OutOfStock => self.catalogue.empty,
            Outcome::Confirm | Outcome::Decline => {
                self.catalogue.stocked[pick(self.catalogue.stocked.len())]
            }
        };
        let payment_token = match outcome {
            Outcome::Decline => "tok_chargeDeclined",
            Outcome::Confirm | Outcome::OutOfStock => "tok_visa",
        };
        let body = json!({
            "customer_id": customer.id,
            "items": [{"product_id": product, "quantity": 1}],
            "payment_token": payment_token,
        });
        (customer, body)
    }

    /// Places order `n`; its id, or the kind of error (`http_<status>`,
    /// `timeout`, `connect`, `request`, `bad_response`).
    pub async fn place(&self, outcome: Outcome, n: u64) -> Result<Uuid, String> {
        let (customer, body) = self.order(outcome, n);
        let response = self
            .http
            .post(format!("{}/orders", self.order_url))
            .bearer_auth(&customer.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| error_kind(&e))?;
        let status = response.status();
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(format!("http_{}", status.as_u16()));
        }
        let body: Value = response.json().await.map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "bad_response".to_owned()
            }
        })?;
        body["order_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| "bad_response".to_owned())
    }
}

/// The error kind a failed request is counted under.
fn error_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OrderClient {
        OrderClient {
            http: reqwest::Client::new(),
            order_url: "http://127.0.0.1:1".into(),
            customers: (0..3)
                .map(|i| Customer {
                    id: format!("c{i}"),
                    token: format!("t{i}"),
                })
                .collect(),
            catalogue: Catalogue {
                stocked: vec![Uuid::new_v4(), Uuid::new_v4()],
                empty: Uuid::new_v4(),
            },
        }
    }

    #[test]
    fn orders_are_built_for_their_outcome() {
        let client = client();
        let (customer, body) = client.order(Outcome::Decline, 4);
        assert_eq!(customer.id, "c1");
        assert_eq!(body["payment_token"], "tok_chargeDeclined");
        assert_eq!(body["customer_id"], "c1");
        assert_eq!(
            body["items"][0]["product_id"],
            json!(client.catalogue.stocked[0])
        );
        let (_, body) = client.order(Outcome::OutOfStock, 1);
        assert_eq!(
            body["items"][0]["product_id"],
            json!(client.catalogue.empty)
        );
        assert_eq!(body["payment_token"], "tok_visa");
    }
}
