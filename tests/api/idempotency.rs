//! `Idempotency-Key` on `POST /orders`: a retry gets the first answer and no
//! second order; the key cannot be reused for another body; a duplicate of a
//! request still running gets 409; a failed request leaves its key usable;
//! keys expire.

use crate::helpers::{spawn_app, spawn_app_with, Options, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;

/// The demo catalogue's mug (120 in stock).
const MUG: &str = "00000000-0000-4000-8000-000000000001";

fn mugs(quantity: i64) -> Value {
    json!({"customer_id": "alice", "items": [{"product_id": MUG, "quantity": quantity}]})
}

async fn place_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}/orders", app.order_url))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("order service answers")
}

/// Asserts a 202 and returns the order id, the Location and whether the
/// answer was marked as replayed.
async fn accepted(response: reqwest::Response) -> (Uuid, String, bool) {
    assert_eq!(response.status(), 202, "place order");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let location = header("location").expect("a location");
    let replayed = match header("idempotent-replayed").as_deref() {
        None => false,
        Some("true") => true,
        Some(other) => panic!("Idempotent-Replayed: {other}"),
    };
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "PENDING", "{body}");
    let id = body["order_id"].as_str().unwrap().parse().unwrap();
    (id, location, replayed)
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// How `key`, sent by the tests' admin `ops`, is stored: in its sender's
/// namespace.
fn stored(key: &str) -> String {
    format!("ops {key}")
}

/// The key's row as `(status, response_body)`, if there is one.
async fn key_row(app: &TestApp, key: &str) -> Option<(String, Option<Value>)> {
    let key = stored(key);
    app.db
        .query_opt(
            "SELECT status, response_body FROM orders.idempotency_keys WHERE key = $1",
            &[&key],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

/// Stores `key` as claimed by a request with `body`, as a running (or dead)
/// first request would have left it.
async fn claimed_elsewhere(app: &TestApp, key: &str, body: &Value, lock: &str) {
    let key = stored(key);
    app.db
        .execute(
            &format!(
                "INSERT INTO orders.idempotency_keys (key, request, status, locked_until, expires_at)
                 VALUES ($1, $2, 'IN_PROGRESS', now() + interval '{lock}', now() + interval '1 day')"
            ),
            &[&key, body],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_body_gets_the_same_order() {
    let app = spawn_app().await;
    let (first, location, replayed) =
        accepted(place_with_key(&app, "retry-1", &mugs(1)).await).await;
    assert_eq!(location, format!("/orders/{first}"));
    assert!(!replayed, "a first answer is not a replay");
    // The same JSON with its keys in another order and other spacing.
    let retry = app
        .http
        .post(format!("{}/orders", app.order_url))
        .header("idempotency-key", "retry-1")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{ "items": [ {{ "quantity": 1, "product_id": "{MUG}" }} ], "customer_id": "alice" }}"#
        ))
        .send()
        .await
        .unwrap();
    let (second, location, replayed) = accepted(retry).await;
    assert_eq!(second, first, "the same order");
    assert_eq!(location, format!("/orders/{first}"));
    assert!(replayed, "Idempotent-Replayed: true on the retry");
    assert_eq!(app.count("orders.orders").await, 1, "no second order");
    let (status, response) = key_row(&app, "retry-1").await.expect("key stored");
    assert_eq!(status, "DONE");
    assert_eq!(response.unwrap()["order_id"], json!(first));
    app.teardown().await;
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let app = spawn_app().await;
    accepted(place_with_key(&app, "reused", &mugs(1)).await).await;
    assert_error(
        place_with_key(&app, "reused", &mugs(2)).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.count("orders.orders").await, 1, "no second order");
    app.teardown().await;
}

#[tokio::test]
async fn a_duplicate_of_a_request_in_progress_gets_409() {
    let app = spawn_app().await;
    claimed_elsewhere(&app, "running", &mugs(1), "1 minute").await;
    assert_error(
        place_with_key(&app, "running", &mugs(1)).await,
        409,
        "request_in_progress",
    )
    .await;
    assert_eq!(app.count("orders.orders").await, 0, "no order");
    let (status, _) = key_row(&app, "running").await.expect("claim kept");
    assert_eq!(status, "IN_PROGRESS", "the running request keeps its claim");
    // A different body is still a reuse of the key, running or not.
    assert_error(
        place_with_key(&app, "running", &mugs(3)).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn a_claim_whose_lock_lapsed_is_taken_over() {
    let app = spawn_app().await;
    claimed_elsewhere(&app, "abandoned", &mugs(1), "-1 second").await;
    let (order_id, _, replayed) = accepted(place_with_key(&app, "abandoned", &mugs(1)).await).await;
    assert!(!replayed);
    assert_eq!(app.count("orders.orders").await, 1, "the order is placed");
    let (status, response) = key_row(&app, "abandoned").await.expect("key stored");
    assert_eq!(status, "DONE");
    assert_eq!(response.unwrap()["order_id"], json!(order_id));
    app.teardown().await;
}

#[tokio::test]
async fn an_expired_key_places_a_new_order() {
    // A TTL no default has, so the stored expiry can only come from it.
    let app = spawn_app_with(Options {
        configure: Some(|settings| settings.idempotency_ttl_seconds = 4321),
        ..Options::default()
    })
    .await;
    let clock = || async {
        let now: chrono::DateTime<chrono::Utc> =
            app.db.query_one("SELECT now()", &[]).await.unwrap().get(0);
        now
    };
    let before = clock().await;
    let (first, _, _) = accepted(place_with_key(&app, "old", &mugs(1)).await).await;
    let after = clock().await;
    let expires: chrono::DateTime<chrono::Utc> = app
        .db
        .query_one(
            "SELECT expires_at FROM orders.idempotency_keys WHERE key = $1",
            &[&stored("old")],
        )
        .await
        .unwrap()
        .get(0);
    let ttl = chrono::Duration::seconds(4321);
    let slack = chrono::Duration::seconds(1);
    assert!(
        before + ttl - slack <= expires && expires <= after + ttl + slack,
        "stored expiry {expires} is not the request's time plus IDEMPOTENCY_TTL_SECONDS (between {before} and {after}, plus {ttl})"
    );
    // Past that expiry (moved, rather than waited for), the key is free.
    app.db
        .execute(
            "UPDATE orders.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1",
            &[&stored("old")],
        )
        .await
        .unwrap();
    let (second, _, replayed) = accepted(place_with_key(&app, "old", &mugs(1)).await).await;
    assert_ne!(second, first, "a new order");
    assert!(!replayed);
    assert_eq!(app.count("orders.orders").await, 2);
    // The key now stands for the new order.
    let (third, _, replayed) = accepted(place_with_key(&app, "old", &mugs(1)).await).await;
    assert_eq!(third, second);
    assert!(replayed);
    app.teardown().await;
}

#[tokio::test]
async fn a_refused_request_leaves_its_key_usable() {
    let app = spawn_app().await;
    assert_error(
        place_with_key(&app, "fix-me", &mugs(0)).await,
        422,
        "validation_failed",
    )
    .await;
    let unknown =
        json!({"customer_id": "alice", "items": [{"product_id": Uuid::new_v4(), "quantity": 1}]});
    assert_error(
        place_with_key(&app, "fix-me", &unknown).await,
        422,
        "unknown_product",
    )
    .await;
    assert_eq!(key_row(&app, "fix-me").await, None, "claim released");
    let (order_id, _, replayed) = accepted(place_with_key(&app, "fix-me", &mugs(1)).await).await;
    assert!(!replayed);
    assert_eq!(app.count("orders.orders").await, 1);
    let (again, _, replayed) = accepted(place_with_key(&app, "fix-me", &mugs(1)).await).await;
    assert_eq!(again, order_id);
    assert!(replayed);
    app.teardown().await;
}

#[tokio::test]
async fn malformed_keys_are_bad_requests_and_quoted_keys_are_unquoted() {
    let app = spawn_app().await;
    let too_long = "k".repeat(300);
    for key in ["", too_long.as_str(), "two words", "\"unterminated"] {
        assert_error(
            place_with_key(&app, key, &mugs(1)).await,
            400,
            "bad_request",
        )
        .await;
    }
    assert_eq!(app.count("orders.orders").await, 0, "no order");
    assert_eq!(app.count("orders.idempotency_keys").await, 0, "no key");
    // The draft sends the key as a structured-field string; it names the
    // same key as the bare form.
    let (first, _, _) = accepted(place_with_key(&app, "\"quoted-1\"", &mugs(1)).await).await;
    let (second, _, replayed) = accepted(place_with_key(&app, "quoted-1", &mugs(1)).await).await;
    assert_eq!(second, first);
    assert!(replayed);
    let (third, _, _) = accepted(place_with_key(&app, &"k".repeat(255), &mugs(1)).await).await;
    assert_ne!(third, first, "a 255-character key is accepted");
    app.teardown().await;
}

#[tokio::test]
async fn concurrent_duplicates_place_exactly_one_order() {
    let app = spawn_app().await;
    let body = mugs(1);
    let responses =
        futures::future::join_all((0..10).map(|_| place_with_key(&app, "stampede", &body))).await;
    let mut placed = Vec::new();
    let mut in_progress = 0;
    for response in responses {
        match response.status().as_u16() {
            202 => placed.push(accepted(response).await.0),
            409 => {
                assert_error(response, 409, "request_in_progress").await;
                in_progress += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(!placed.is_empty(), "one request places the order");
    assert!(
        placed.iter().all(|id| *id == placed[0]),
        "every 202 names the same order: {placed:?}"
    );
    assert_eq!(placed.len() + in_progress, 10);
    assert_eq!(app.count("orders.orders").await, 1, "exactly one order");
    app.teardown().await;
}

#[tokio::test]
async fn keys_belong_to_their_customer() {
    let app = spawn_app().await;
    let body = json!({"items": [{"product_id": MUG, "quantity": 1}]});
    let place_as = |customer: &str| {
        reqwest::Client::new()
            .post(format!("{}/orders", app.order_url))
            .bearer_auth(crate::helpers::token(customer, shop::auth::Role::Customer))
            .header("idempotency-key", "checkout-1")
            .json(&body)
            .send()
    };
    let (alices, _, _) = accepted(place_as("alice").await.unwrap()).await;
    // Bob picked the same key: he gets his own order, not a replay of hers.
    let (bobs, _, replayed) = accepted(place_as("bob").await.unwrap()).await;
    assert_ne!(alices, bobs);
    assert!(!replayed);
    // Alice's retry is still a replay of her own.
    let (again, _, replayed) = accepted(place_as("alice").await.unwrap()).await;
    assert_eq!((again, replayed), (alices, true));
    assert_eq!(app.count("orders.orders").await, 2);
    app.teardown().await;
}
