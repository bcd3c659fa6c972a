//! The load the faults land on: a small catalogue with limited stock, and
//! clients that keep placing orders — approved, declined, and impossible
//! to satisfy — against either order process until told to stop.
//!
//! Every order the platform accepted (202) is recorded with what it was
//! meant to test. A request that fails because a service is down is retried
//! on the other order process when it surely changed nothing (connection
//! refused, 5xx); a request whose outcome is unknown (reset or timeout after
//! it was sent) is only counted, because the order may or may not exist —
//! the invariants cover every order in the database, recorded or not.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Units an impossible order asks for: more than any test product holds,
/// within the API's limit of 1000 per line.
pub const IMPOSSIBLE_QUANTITY: i32 = 500;

/// A product of the test catalogue.
#[derive(Debug, Clone)]
pub struct Product {
    /// Its id.
    pub id: Uuid,
    /// Stock when created.
    pub initial_stock: i32,
}

/// Creates `count` products with `stock` units each.
pub async fn create_catalogue(product_url: &str, count: usize, stock: i32) -> Vec<Product> {
    let http = crate::admin_client(Duration::from_secs(10));
    let mut products = Vec::with_capacity(count);
    for n in 0..count {
        let response = http
            .post(format!("{product_url}/products"))
            .json(&json!({
                "sku": format!("FAULTS-{n}-{}", Uuid::new_v4().simple()),
                "name": format!("Fault-injection product {n}"),
                "price_cents": 500 + 100 * n as i64,
                "stock": stock,
            }))
            .send()
            .await
            .expect("product service answers");
        assert_eq!(response.status(), 201, "create product {n}");
        let body: Value = response.json().await.expect("product JSON");
        let id = body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("product id");
        products.push(Product {
            id,
            initial_stock: stock,
        });
    }
    products
}

/// What an order was placed to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Intent {
    /// `tok_visa`: confirmed, unless stock has run out.
    Approve,
    /// `tok_chargeDeclined`: reserved, declined, released, rejected.
    Decline,
    /// More than any product ever has (but a valid quantity): rejected
    /// out of stock.
    Impossible,
}

/// An order the platform accepted.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Its id.
    pub order_id: Uuid,
    /// What it exercises.
    pub intent: Intent,
    /// The order process that accepted it.
    pub via: &'static str,
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests sent, retries included.
    pub requests: usize,
    /// Answers other than 202, by status.
    pub refused: BTreeMap<u16, usize>,
    /// Requests that could not reach an order process at all.
    pub unreachable: usize,
    /// Requests whose outcome is unknown (connection lost after sending).
    pub unknown: usize,
    /// Orders given up on after every retry.
    pub abandoned: usize,
}

/// One attempt to place an order, and what came of it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the request was sent.
    pub sent: tokio::time::Instant,
    /// The order process it went to.
    pub via: &'static str,
    /// What came back.
    pub outcome: Outcome,
}

/// What an attempt to place an order got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 202 with this order id.
    Accepted(Uuid),
    /// Another status, with the `error` code of its JSON body if it had one.
    Refused {
        /// The HTTP status.
        status: u16,
        /// `error` of the JSON body; `None` if the body was not the API's
        /// JSON error.
        error: Option<String>,
    },
    /// The order process could not be reached at all.
    Unreachable,
    /// Sent, but no usable answer (reset, timeout, a 202 without an id).
    Unknown(String),
}

#[derive(Default)]
struct Shared {
    placed: Vec<Placed>,
    stats: Stats,
    answers: Vec<Answer>,
}

/// Clients placing orders in the background.
pub struct Workload {
    stop: watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
}

/// A small, seeded random source (SplitMix64): the mix is reproducible.
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % below
    }
}

impl Workload {
    /// Starts `clients` clients, each placing an order every `pause`,
    /// alternating between the two order processes.
    pub fn start(
        order_urls: [(&'static str, String); 2],
        products: &[Product],
        clients: usize,
        pause: Duration,
        seed: u64,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let http = crate::admin_client(Duration::from_secs(5));
        let handles = (0..clients)
            .map(|client| {
                let http = http.clone();
                let urls = order_urls.clone();
                let products: Vec<Uuid> = products.iter().map(|p| p.id).collect();
                let shared = shared.clone();
                let mut stopped = stopped.clone();
                let mut dice = Dice(seed ^ (client as u64 + 1).wrapping_mul(0x2545_f491));
                tokio::spawn(async move {
                    let mut turn = client;
                    while !*stopped.borrow() {
                        let (intent, body) = random_order(&mut dice, &products);
                        place(&http, &urls, turn, intent, &body, &shared).await;
                        turn += 1;
                        tokio::select! {
                            _ = stopped.changed() => {}
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            clients: handles,
            shared,
        }
    }

    /// Orders accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().expect("workload lock").placed.len()
    }

    /// Every attempt sent from `from` to `to`, with what it got.
    pub fn answers_sent_between(
        &self,
        from: tokio::time::Instant,
        to: tokio::time::Instant,
    ) -> Vec<Answer> {
        let shared = self.shared.lock().expect("workload lock");
        shared
            .answers
            .iter()
            .filter(|a| (from..to).contains(&a.sent))
            .cloned()
            .collect()
    }

    /// Stops the clients (each finishes its request in hand) and returns
    /// every accepted order and the clients' counts.
    pub async fn stop(self) -> (Vec<Placed>, Stats) {
        let _ = self.stop.send(true);
        for client in self.clients {
            let _ = client.await;
        }
        let shared = self.shared.lock().expect("workload lock");
        (shared.placed.clone(), shared.stats.clone())
    }
}

fn random_order(dice: &mut Dice, products: &[Uuid]) -> (Intent, Value) {
    let intent = match dice.next(20) {
        0..=11 => Intent::Approve,
        12..=16 => Intent::Decline,
        _ => Intent::Impossible,
    };
    let first = dice.next(products.len() as u64) as usize;
    let quantity = match intent {
        Intent::Impossible => IMPOSSIBLE_QUANTITY,
        _ => 1 + dice.next(3) as i32,
    };
    let mut items = vec![json!({"product_id": products[first], "quantity": quantity})];
    if dice.next(3) == 0 {
        // A second line: reservations are all or nothing across products.
        let second = (first + 1 + dice.next(products.len() as u64 - 1) as usize) % products.len();
        items.push(json!({"product_id": products[second], "quantity": 1 + dice.next(2) as i32}));
    }
    let token = match intent {
        Intent::Decline => "tok_chargeDeclined",
        _ => "tok_visa",
    };
    let body = json!({
        "customer_id": format!("faults-{}", dice.next(50)),
        "items": items,
        "payment_token": token,
    });
    (intent, body)
}

/// Places one order, retrying on the other order process when the attempt
/// surely wrote nothing.
async fn place(
    http: &reqwest::Client,
    urls: &[(&'static str, String); 2],
    turn: usize,
    intent: Intent,
    body: &Value,
    shared: &Mutex<Shared>,
) {
    const ATTEMPTS: usize = 4;
    for attempt in 0..ATTEMPTS {
        let (via, url) = &urls[(turn + attempt) % 2];
        let sent_at = tokio::time::Instant::now();
        let sent = http.post(format!("{url}/orders")).json(body).send().await;
        let outcome = match sent {
            Ok(response) if response.status().as_u16() == 202 => {
                let answer: Option<Value> = response.json().await.ok();
                match answer
                    .as_ref()
                    .and_then(|a| a["order_id"].as_str())
                    .and_then(|id| id.parse::<Uuid>().ok())
                {
                    Some(order_id) => Ok(Placed {
                        order_id,
                        intent,
                        via,
                    }),
                    None => Err(Retry::No(Failure::Unknown(
                        "a 202 without an order id".into(),
                    ))),
                }
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let error = response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|body| body["error"].as_str().map(str::to_owned));
                Err(if status >= 500 {
                    Retry::Yes(Failure::Refused(status, error))
                } else {
                    Retry::No(Failure::Refused(status, error))
                })
            }
            Err(error) if error.is_connect() => Err(Retry::Yes(Failure::Unreachable)),
            Err(error) => Err(Retry::No(Failure::Unknown(error.to_string()))),
        };
        let retry = {
            let mut shared = shared.lock().expect("workload lock");
            shared.stats.requests += 1;
            let answered = match &outcome {
                Ok(placed) => Outcome::Accepted(placed.order_id),
                Err(Retry::Yes(failure) | Retry::No(failure)) => match failure {
                    Failure::Refused(status, error) => Outcome::Refused {
                        status: *status,
                        error: error.clone(),
                    },
                    Failure::Unreachable => Outcome::Unreachable,
                    Failure::Unknown(why) => Outcome::Unknown(why.clone()),
                },
            };
            shared.answers.push(Answer {
                sent: sent_at,
                via,
                outcome: answered,
            });
            match outcome {
                Ok(placed) => {
                    shared.placed.push(placed);
                    return;
                }
                Err(Retry::Yes(failure)) => {
                    shared.stats.count(failure);
                    true
                }
                Err(Retry::No(failure)) => {
                    shared.stats.count(failure);
                    false
                }
            }
        };
        if !retry {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shared.lock().expect("workload lock").stats.abandoned += 1;
}

enum Failure {
    Refused(u16, Option<String>),
    Unreachable,
    Unknown(String),
}

enum Retry {
    Yes(Failure),
    No(Failure),
}

impl Stats {
    fn count(&mut self, failure: Failure) {
        match failure {
            Failure::Refused(status, _) => *self.refused.entry(status).or_default() += 1,
            Failure::Unreachable => self.unreachable += 1,
            Failure::Unknown(_) => self.unknown += 1,
        }
    }
}
