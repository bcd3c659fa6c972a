//! What fuzzing the API (.ci/schemathesis.sh) found, kept as regression
//! tests: each input used to reach Postgres and come back as a 503 (a
//! server error) instead of a clear 4xx, and none may write anything.

use crate::helpers::spawn_app;
use serde_json::{json, Value};

const MUG: &str = "00000000-0000-4000-8000-000000000001";

async fn assert_client_error(response: reqwest::Response, status: u16, what: &str) {
    let got = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(got, status, "{what}: {body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn text_with_control_characters_is_refused_not_a_server_error() {
    let app = spawn_app().await;
    let products = app.count("product.products").await;

    // Postgres refuses NUL in text, and in jsonb.
    let product = json!({"sku": "A\u{0}B", "name": "Mug", "price_cents": 100, "stock": 1});
    let response = app
        .http
        .post(format!("{}/products", app.product_url))
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_client_error(response, 422, "NUL in a SKU").await;

    let order = json!({
        "customer_id": "ali\u{0}ce",
        "items": [{"product_id": MUG, "quantity": 1}],
    });
    let response = app.place_order(&order).await;
    assert_client_error(response, 422, "NUL in a customer id").await;
    // With a key the body used to be stored with the claim before it was
    // validated: it must be refused before, and leave the key unused.
    for _ in 0..2 {
        let response = app
            .http
            .post(format!("{}/orders", app.order_url))
            .header("idempotency-key", "nul-body")
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_client_error(response, 422, "NUL in a customer id, with a key").await;
    }
    assert_eq!(app.count("orders.idempotency_keys").await, 0);

    let response = app
        .http
        .get(format!("{}/orders?customer_id=a%00b", app.order_url))
        .send()
        .await
        .unwrap();
    assert_client_error(response, 400, "NUL in a listed customer id").await;

    assert_eq!(app.count("orders.orders").await, 0, "no order written");
    assert_eq!(
        app.count("product.products").await,
        products,
        "no product written"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_grace_period_postgres_cannot_subtract_is_refused() {
    let app = spawn_app().await;
    for grace in ["1.2589532144477713e308", "315360001", "-1", "NaN", "inf"] {
        let response = app
            .http
            .get(format!(
                "{}/admin/sagas/stuck?grace_seconds={grace}",
                app.order_url
            ))
            .send()
            .await
            .unwrap();
        assert_client_error(response, 400, grace).await;
    }
    let longest = app
        .get_json(format!(
            "{}/admin/sagas/stuck?grace_seconds=315360000",
            app.order_url
        ))
        .await;
    assert_eq!(longest["count"], 0, "{longest}");
    app.teardown().await;
}
