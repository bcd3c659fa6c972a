//! Bad input gets a clear 4xx as `{"error", "message"}`, and nothing is written.

use crate::helpers::{spawn_app, TestApp};
use serde_json::{json, Value};

async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

async fn nothing_written(app: &TestApp, products_before: i64) {
    assert_eq!(app.count("orders.orders").await, 0, "no order written");
    assert_eq!(app.count("orders.outbox").await, 0, "no event written");
    assert_eq!(
        app.count("product.products").await,
        products_before,
        "no product written"
    );
}

#[tokio::test]
async fn bad_orders_get_4xx_and_write_nothing() {
    let app = spawn_app().await;
    let products = app.count("product.products").await;
    let mug = "00000000-0000-4000-8000-000000000001";
    let cases = [
        (
            json!({"customer_id": "a", "items": [{"product_id": uuid::Uuid::new_v4(), "quantity": 1}]}),
            422,
            "unknown_product",
        ),
        (
            json!({"customer_id": "a", "items": [{"product_id": mug, "quantity": 0}]}),
            422,
            "validation_failed",
        ),
        (
            json!({"customer_id": "a", "items": [{"product_id": mug, "quantity": -2}]}),
            422,
            "validation_failed",
        ),
        (
            json!({"customer_id": "a", "items": []}),
            422,
            "validation_failed",
        ),
        (
            json!({"customer_id": "", "items": [{"product_id": mug, "quantity": 1}]}),
            422,
            "validation_failed",
        ),
        (
            json!({"customer_id": "a", "items": [{"product_id": mug, "quantity": 1}], "payment_token": "tok_bogus"}),
            422,
            "validation_failed",
        ),
        (
            json!({"customer_id": "a", "items": [{"product_id": "not-a-uuid", "quantity": 1}]}),
            400,
            "malformed_json",
        ),
        (
            json!({"items": [{"product_id": mug, "quantity": 1}], "discount": 100}),
            400,
            "malformed_json",
        ),
    ];
    for (body, status, code) in cases {
        assert_error(app.place_order(&body).await, status, code).await;
    }
    let url = format!("{}/orders", app.order_url);
    let malformed = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "malformed_json").await;
    let wrong_type = app
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_error(wrong_type, 415, "unsupported_media_type").await;
    let huge = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(huge, 413, "payload_too_large").await;
    nothing_written(&app, products).await;
    app.teardown().await;
}

#[tokio::test]
async fn bad_product_writes_get_4xx_and_write_nothing() {
    let app = spawn_app().await;
    let products = app.count("product.products").await;
    let url = format!("{}/products", app.product_url);
    let cases = [
        (
            json!({"sku": "X", "name": "", "price_cents": 1, "stock": 1}),
            422,
            "validation_failed",
        ),
        (
            json!({"sku": "X", "name": "n", "price_cents": -1, "stock": 1}),
            422,
            "validation_failed",
        ),
        (
            json!({"sku": "X", "name": "n", "price_cents": 1, "stock": -1}),
            422,
            "validation_failed",
        ),
        (
            json!({"sku": "MUG-001", "name": "n", "price_cents": 1, "stock": 1}),
            409,
            "conflict",
        ),
        (
            json!({"sku": "X", "name": "n", "price_cents": 1, "stock": 1, "colour": "red"}),
            400,
            "malformed_json",
        ),
    ];
    for (body, status, code) in cases {
        assert_error(
            app.http.post(&url).json(&body).send().await.unwrap(),
            status,
            code,
        )
        .await;
    }
    let mug = "00000000-0000-4000-8000-000000000001";
    let stock_url = format!("{}/products/{mug}/stock", app.product_url);
    assert_error(
        app.http
            .put(&stock_url)
            .json(&json!({"stock": -5}))
            .send()
            .await
            .unwrap(),
        422,
        "validation_failed",
    )
    .await;
    let missing = format!(
        "{}/products/{}/stock",
        app.product_url,
        uuid::Uuid::new_v4()
    );
    assert_error(
        app.http
            .put(&missing)
            .json(&json!({"stock": 5}))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    nothing_written(&app, products).await;
    let mug_stock: i32 = app
        .db
        .query_one(
            "SELECT stock FROM product.products WHERE sku = 'MUG-001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mug_stock, 120, "seeded stock untouched");
    app.teardown().await;
}

#[tokio::test]
async fn unknown_resources_and_bad_queries_are_json_errors() {
    let app = spawn_app().await;
    let get = |url: String| app.http.get(url).send();
    assert_error(
        get(format!("{}/orders/{}", app.order_url, uuid::Uuid::new_v4()))
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        get(format!("{}/orders?customer_id=a&limit=0", app.order_url))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_error(
        get(format!(
            "{}/products/{}",
            app.product_url,
            uuid::Uuid::new_v4()
        ))
        .await
        .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        get(format!("{}/products?ids=zzz", app.product_url))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_error(
        get(format!("{}/nowhere", app.order_url)).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    app.teardown().await;
}

/// Reads `product` until Redis holds a copy with `want` units; every read
/// must answer `want`.
async fn until_cached(app: &TestApp, product: uuid::Uuid, want: i64) {
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert_eq!(
            app.api_stock(product).await,
            want,
            "a read after the change"
        );
        if crate::helpers::cached_stock(&redis, &app.db_name, product).await == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads never cached stock {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn products_are_served_and_restocked_through_the_cache() {
    let app = spawn_app().await;
    let listed: Value = app.get_json(format!("{}/products", app.product_url)).await;
    assert!(
        listed.as_array().unwrap().len() >= 8,
        "demo catalogue seeded"
    );
    let id = app.create_product(3).await;
    let url = format!("{}/products/{id}", app.product_url);
    let first: Value = app.get_json(&url).await;
    assert_eq!(first["stock"], 3);
    // Through the cache, not around it: the read left its copy in Redis.
    until_cached(&app, id, 3).await;
    let restocked = app
        .http
        .put(format!("{url}/stock"))
        .json(&json!({"stock": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(restocked.status(), 200);
    let after: Value = app.get_json(&url).await;
    assert_eq!(after["stock"], 40, "cache invalidated on restock");
    until_cached(&app, id, 40).await;
    // An order moves stock; the cached copy follows.
    let order_id = app.order(id, 4, "tok_visa").await;
    app.wait_terminal(order_id).await;
    let after_order: Value = app.get_json(&url).await;
    assert_eq!(
        after_order["stock"], 36,
        "cache invalidated when stock changes"
    );
    until_cached(&app, id, 36).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_wrong_method_on_a_known_route_gets_a_json_405() {
    let app = spawn_app().await;
    for (method, url) in [
        ("DELETE", format!("{}/orders", app.order_url)),
        ("PATCH", format!("{}/products", app.product_url)),
        (
            "POST",
            format!("{}/products/{}", app.product_url, uuid::Uuid::new_v4()),
        ),
    ] {
        let response = app
            .http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        assert_error(response, 405, "method_not_allowed").await;
    }
    app.teardown().await;
}

#[tokio::test]
async fn health_and_readiness_answer_on_every_service() {
    let app = spawn_app().await;
    let platform = app.platform.as_ref().unwrap();
    let addresses = platform.addresses.clone();
    for addr in [
        addresses.order,
        addresses.product,
        addresses.payment,
        addresses.gateway,
    ] {
        let base = format!("http://{}", addr.unwrap());
        assert_eq!(
            app.http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let ready = app.http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["checks"]["postgres"], "ok");
        assert_eq!(body["checks"]["kafka"], "ok");
        assert_eq!(body["checks"]["redis"], "ok");
    }
    app.teardown().await;
}
