//! Each service's `GET /openapi.json`: an OpenAPI 3.1 document that lists
//! exactly the routes the service answers — every route below is called,
//! must be answered by a route (not warp's "no such resource"), must be in
//! the document with the status it answered, and the document must list
//! nothing else.

use crate::helpers::{spawn_app, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// One route: its method and templated path as documented, the concrete
/// path called, and the JSON body sent, if any.
struct Route {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Value>,
    /// Development mode only: with a configured secret no route answers,
    /// which must then be a 404.
    dev_only: bool,
}

fn route(method: &'static str, template: &'static str, path: impl Into<String>) -> Route {
    Route {
        method,
        template,
        path: path.into(),
        body: None,
        dev_only: false,
    }
}

/// What every service answers.
fn common() -> Vec<Route> {
    ["/healthz", "/readyz", "/metrics", "/openapi.json"]
        .into_iter()
        .map(|path| route("get", path, path))
        .collect()
}

/// Fetches `base`'s document, calls every route on it, and checks that the
/// document lists exactly those routes, each with the status it answered.
async fn check_service(app: &TestApp, name: &str, base: &str, routes: Vec<Route>) {
    let doc: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "{name}: openapi {version:?}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["bearerFormat"], "JWT",
        "{name}"
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let exercised: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_owned(), r.template.to_owned()))
        .collect();
    assert_eq!(documented, exercised, "{name}: documented vs. answered");

    for r in routes {
        let url = format!("{base}{}", r.path);
        let request = match r.method {
            "get" => app.http.get(&url),
            "post" => app.http.post(&url),
            "put" => app.http.put(&url),
            other => panic!("no client for {other}"),
        };
        let request = match &r.body {
            Some(body) => request.json(body),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if r.dev_only {
            assert_eq!(status, 404, "{name}: {} {}: {text}", r.method, r.path);
        } else {
            assert!(
                !text.contains("no such resource"),
                "{name}: {} {} is not answered by any route: {status} {text}",
                r.method,
                r.path
            );
        }
        let operation = &doc["paths"][r.template][r.method];
        assert!(
            operation["responses"][status.to_string()].is_object(),
            "{name}: {} {} answered {status}, which is not documented: {text}",
            r.method,
            r.template
        );
    }
}

#[tokio::test]
async fn every_service_documents_exactly_the_routes_it_answers() {
    let app = spawn_app().await;
    let product_id = app.create_product(10).await;
    let order_id = app.order(product_id, 1, "tok_visa").await;

    let mut product = common();
    product.extend([
        route("get", "/products", "/products"),
        route("get", "/products/{id}", format!("/products/{product_id}")),
        Route {
            body: Some(json!({
                "sku": format!("DOC-{}", uuid::Uuid::new_v4().simple()),
                "name": "Documented", "price_cents": 100, "stock": 1,
            })),
            ..route("post", "/products", "/products")
        },
        Route {
            body: Some(json!({"stock": 12})),
            ..route(
                "put",
                "/products/{id}/stock",
                format!("/products/{product_id}/stock"),
            )
        },
    ]);
    check_service(&app, "product", &app.product_url, product).await;

    let mut order = common();
    order.extend([
        route("get", "/orders", "/orders"),
        route("get", "/orders/{id}", format!("/orders/{order_id}")),
        Route {
            body: Some(json!({"items": [{"product_id": product_id, "quantity": 1}]})),
            ..route("post", "/orders", "/orders")
        },
        route("get", "/admin/sagas/stuck", "/admin/sagas/stuck"),
        route("get", "/admin/sagas/running", "/admin/sagas/running"),
    ]);
    check_service(&app, "order", &app.order_url, order).await;

    let addresses = app.platform.as_ref().unwrap().addresses.clone();
    let payment = format!("http://{}", addresses.payment.unwrap());
    check_service(&app, "payment", &payment, common()).await;

    // `GET /ws` (the WebSocket) is left out on purpose: it is a protocol of
    // its own, in the README ("WebSocket protocol"). `POST /dev/token`
    // exists only in development mode; spawn_app configures a secret, so
    // here it answers the documented 404 (.ci/schemathesis.sh runs the
    // platform in development mode and fuzzes it there).
    let gateway = format!("http://{}", addresses.gateway.unwrap());
    let mut storefront = common();
    storefront.extend([
        route("get", "/", "/"),
        route(
            "get",
            "/assets/{version}/{name}",
            "/assets/any-version/app.css",
        ),
        route("get", "/config.json", "/config.json"),
        Route {
            body: Some(json!({"customer": "alice"})),
            dev_only: true,
            ..route("post", "/dev/token", "/dev/token")
        },
    ]);
    check_service(&app, "gateway", &gateway, storefront).await;
    app.teardown().await;
}
