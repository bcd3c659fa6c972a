//! The saga's three outcomes, and concurrency against one product.

use crate::helpers::{spawn_app, statuses};
use futures::future::join_all;
use serde_json::json;

#[tokio::test]
async fn confirmed_order_takes_stock_and_records_one_payment() {
    let app = spawn_app().await;
    let product = app.create_product(10).await;
    let order_id = app.order(product, 3, "tok_visa").await;
    let order = app.wait_terminal(order_id).await;
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(order["total_cents"], 3000);
    let history: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "PENDING",
            "INVENTORY_RESERVED",
            "PAYMENT_AUTHORIZED",
            "CONFIRMED"
        ]
    );
    assert_eq!(app.stock(product).await, 7);
    let payments = app
        .db
        .query(
            "SELECT status, amount_cents FROM payment.authorizations WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].get::<_, &str>(0), "AUTHORIZED");
    assert_eq!(payments[0].get::<_, i64>(1), 3000);
    // The order is listed for its customer.
    let listed: serde_json::Value = app
        .get_json(format!("{}/orders?customer_id=alice", app.order_url))
        .await;
    assert_eq!(listed[0]["order_id"], json!(order_id));
    app.teardown().await;
}

#[tokio::test]
async fn out_of_stock_order_is_rejected_and_stock_is_unchanged() {
    let app = spawn_app().await;
    let product = app.create_product(2).await;
    let order_id = app.order(product, 3, "tok_visa").await;
    let order = app.wait_terminal(order_id).await;
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(order["reason"], "OUT_OF_STOCK");
    assert_eq!(app.stock(product).await, 2);
    assert_eq!(
        app.count("payment.authorizations").await,
        0,
        "no payment attempted"
    );
    app.teardown().await;
}

#[tokio::test]
async fn payment_decline_releases_reserved_stock() {
    let app = spawn_app().await;
    let product = app.create_product(5).await;
    let order_id = app.order(product, 2, "tok_chargeDeclined").await;
    let order = app.wait_terminal(order_id).await;
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(order["reason"], "PAYMENT_DECLINED");
    let history: Vec<serde_json::Value> = order["history"].as_array().unwrap().clone();
    assert_eq!(
        statuses(&history),
        ["PENDING", "INVENTORY_RESERVED", "COMPENSATING", "REJECTED"]
    );
    assert_eq!(app.stock(product).await, 5, "reserved stock came back");
    let released: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM product.reservations WHERE order_id = $1 AND status = 'RELEASED'",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(released, 1);
    let declined: String = app
        .db
        .query_one(
            "SELECT status FROM payment.authorizations WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(declined, "DECLINED");
    app.teardown().await;
}

#[tokio::test]
async fn concurrent_orders_never_oversell() {
    let app = spawn_app().await;
    let product = app.create_product(50).await;
    let ids = join_all((0..200).map(|_| app.order(product, 1, "tok_visa"))).await;
    let orders = join_all(ids.iter().map(|id| app.wait_terminal(*id))).await;
    let confirmed = orders.iter().filter(|o| o["status"] == "CONFIRMED").count();
    let rejected: Vec<_> = orders
        .iter()
        .filter(|o| o["status"] == "REJECTED")
        .collect();
    assert_eq!(confirmed, 50);
    assert_eq!(rejected.len(), 150);
    assert!(rejected.iter().all(|o| o["reason"] == "OUT_OF_STOCK"));
    assert_eq!(app.stock(product).await, 0);
    let reserved: i64 = app
        .db
        .query_one(
            "SELECT coalesce(sum(quantity), 0) FROM product.reservations WHERE product_id = $1 AND status = 'RESERVED'",
            &[&product],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        reserved, 50,
        "every confirmed unit is held by exactly one reservation"
    );
    assert_eq!(app.count("payment.authorizations").await, 50);
    app.teardown().await;
}
