//! Bearer tokens: a customer sees only their own orders, over REST and over
//! WebSocket; bad tokens get 401; customers cannot write products.

use crate::helpers::{admin_token, spawn_app, token, websocket_upgrade, JWT_SECRET};
use serde_json::{json, Value};
use shop::auth::{Authenticator, Role};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

fn customer(name: &str) -> String {
    token(name, Role::Customer)
}

/// An admin token of ours that expired an hour ago.
fn expired_token() -> String {
    Authenticator::from_secret(JWT_SECRET.as_bytes())
        .unwrap()
        .mint_expiring(
            "alice",
            Role::Admin,
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap()
}

/// A valid-looking admin token signed with another secret.
fn foreign_token() -> String {
    Authenticator::from_secret(b"some-other-issuer-some-other-issuer!!")
        .unwrap()
        .mint("alice", Role::Admin, Duration::from_secs(60))
        .unwrap()
}

#[tokio::test]
async fn customers_see_only_their_own_orders() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let product = app.create_product(10).await;
    let (alice, bob) = (customer("alice"), customer("bob"));

    // The customer comes from the token; the body need not name one.
    let placed = http
        .post(format!("{}/orders", app.order_url))
        .bearer_auth(&alice)
        .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let order_id: Uuid = placed.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let get = |token: String| {
        http.get(format!("{}/orders/{order_id}", app.order_url))
            .bearer_auth(token)
            .send()
    };
    let own = get(alice.clone()).await.unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(own.json::<Value>().await.unwrap()["customer_id"], "alice");
    // Another customer is told it does not exist, exactly as for a missing id.
    let foreign = get(bob.clone()).await.unwrap();
    assert_eq!(foreign.status(), 404);
    let foreign: Value = foreign.json().await.unwrap();
    let missing: Value = http
        .get(format!("{}/orders/{}", app.order_url, Uuid::now_v7()))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(foreign["error"], missing["error"]);
    assert_eq!(get(admin_token()).await.unwrap().status(), 200);

    // Lists: one's own by default; another customer's is forbidden.
    let list = |token: &str, query: &str| {
        http.get(format!("{}/orders{query}", app.order_url))
            .bearer_auth(token)
            .send()
    };
    let bobs: Value = list(&bob, "").await.unwrap().json().await.unwrap();
    assert_eq!(bobs, json!([]));
    let alices: Value = list(&alice, "").await.unwrap().json().await.unwrap();
    assert_eq!(alices[0]["order_id"], json!(order_id));
    assert_eq!(
        list(&bob, "?customer_id=alice").await.unwrap().status(),
        403
    );
    assert_eq!(
        list(&admin_token(), "?customer_id=alice")
            .await
            .unwrap()
            .status(),
        200
    );

    // Naming someone else in the body is refused, and writes nothing.
    let before = app.count("orders.orders").await;
    let impersonation = http
        .post(format!("{}/orders", app.order_url))
        .bearer_auth(&alice)
        .json(&json!({"customer_id": "bob", "items": [{"product_id": product, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(impersonation.status(), 403);
    assert_eq!(app.count("orders.orders").await, before);

    // Over WebSocket: bob is refused alice's order, and "all" is for admins.
    let mut ws = app.websocket_as("/ws", &bob).await;
    ws.send_json(&json!({"type": "subscribe", "order_id": order_id}))
        .await;
    let refused = ws.wait_for("error").await;
    assert_eq!(refused["error"], "not_found");
    assert_eq!(refused["order_id"], json!(order_id));
    ws.send_json(&json!({"type": "subscribe", "scope": "all"}))
        .await;
    assert_eq!(ws.wait_for("error").await["error"], "forbidden");
    // Alice, on the other hand, gets her order.
    let mut ws = app
        .websocket_as(&format!("/ws?order_id={order_id}"), &alice)
        .await;
    let snapshot = ws.wait_for("snapshot").await;
    assert_eq!(snapshot["order_id"], json!(order_id));
    app.teardown().await;
}

#[tokio::test]
async fn missing_expired_malformed_and_foreign_tokens_get_401() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let (expired, foreign) = (expired_token(), foreign_token());
    let bad_tokens: [(&str, Option<&str>); 4] = [
        ("missing", None),
        ("expired", Some(&expired)),
        ("malformed", Some("not-a-jwt")),
        ("wrongly signed", Some(&foreign)),
    ];
    let routes = [
        ("POST", format!("{}/orders", app.order_url)),
        (
            "GET",
            format!("{}/orders/{}", app.order_url, Uuid::now_v7()),
        ),
        ("GET", format!("{}/orders", app.order_url)),
        ("POST", format!("{}/products", app.product_url)),
        ("GET", format!("{}/admin/sagas/stuck", app.order_url)),
        (
            "GET",
            format!("{}/ws", app.ws_url.replace("ws://", "http://")),
        ),
    ];
    for (what, bad) in bad_tokens {
        for (method, url) in &routes {
            let mut request = http
                .request(method.parse().unwrap(), url)
                .header("content-type", "application/json")
                .body("{}");
            if let Some(bad) = bad {
                request = request.bearer_auth(bad);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{what} token, {method} {url}");
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{what} token, {method} {url}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{what}: {body}");
        }
    }
    // Health, readiness and metrics stay open to probes and scrapers.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http
            .get(format!("{}{path}", app.order_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn bad_tokens_offered_as_the_bearer_subprotocol_get_401() {
    // What a browser sends: it cannot set `Authorization` on a WebSocket,
    // so the token travels as the subprotocol `bearer.<token>`, offered
    // beside `shop.v1`. A bad one is refused before the upgrade, exactly as
    // over `Authorization`.
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let url = format!("{}/ws", app.ws_url.replace("ws://", "http://"));
    let (expired, foreign) = (expired_token(), foreign_token());
    let offers = [
        ("no", "shop.v1".to_owned()),
        ("an empty", "shop.v1, bearer.".to_owned()),
        ("a malformed", "shop.v1, bearer.not-a-jwt".to_owned()),
        ("an expired", format!("shop.v1, bearer.{expired}")),
        ("a wrongly signed", format!("shop.v1, bearer.{foreign}")),
    ];
    for (what, offer) in offers {
        let response = websocket_upgrade(&http, &url)
            .header("sec-websocket-protocol", offer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{what} token in the subprotocol");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{what} token in the subprotocol"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{what} token: {body}");
    }
    // The same handshake with a good token is upgraded, and its session
    // answers: the refusals above were the tokens'.
    let good = format!("shop.v1, bearer.{}", customer("alice"));
    let upgraded = websocket_upgrade(&http, &url)
        .header("sec-websocket-protocol", good)
        .send()
        .await
        .unwrap();
    assert_eq!(upgraded.status(), 101);
    let mut ws = app.websocket_as("/ws", &customer("alice")).await;
    assert_eq!(ws.until_barrier().await, Vec::<Value>::new());
    app.teardown().await;
}

#[tokio::test]
async fn a_customer_token_cannot_write_products() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let product = app.create_product(5).await;
    let alice = customer("alice");
    let create = http
        .post(format!("{}/products", app.product_url))
        .bearer_auth(&alice)
        .json(&json!({"sku": "HACK-1", "name": "Free stuff", "price_cents": 1, "stock": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 403);
    assert_eq!(create.json::<Value>().await.unwrap()["error"], "forbidden");
    let restock = http
        .put(format!("{}/products/{product}/stock", app.product_url))
        .bearer_auth(&alice)
        .json(&json!({"stock": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(restock.status(), 403);
    assert_eq!(app.stock(product).await, 5);
    assert_eq!(app.count("product.products WHERE sku = 'HACK-1'").await, 0);
    // Anyone may read the catalogue.
    let read = http
        .get(format!("{}/products/{product}", app.product_url))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    // And admin routes are for admins.
    let stuck = http
        .get(format!("{}/admin/sagas/stuck", app.order_url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stuck.status(), 403);
    app.teardown().await;
}
