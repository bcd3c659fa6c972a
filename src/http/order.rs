//! Routes of the order service: place an order, read one, list a
//! customer's orders.

use super::error::ApiError;
use super::json_body;
use shop_actors::order::model::PlaceOrder;
use shop_actors::order::Orders;
use std::collections::HashMap;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Default and largest page of `GET /orders`.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// Every order-service route.
pub fn routes(
    orders: Orders,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_orders = warp::any().map(move || orders.clone());
    let place = warp::path!("orders")
        .and(warp::post())
        .and(json_body::<PlaceOrder>())
        .and(with_orders.clone())
        .and_then(place);
    let get = warp::path!("orders" / Uuid)
        .and(warp::get())
        .and(with_orders.clone())
        .and_then(get);
    let list = warp::path!("orders")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_orders)
        .and_then(list);
    place.or(get).unify().or(list).unify()
}

async fn place(request: PlaceOrder, orders: Orders) -> Result<warp::reply::Response, Rejection> {
    let placed = orders.place(request).await.map_err(ApiError::from)?;
    let location = format!("/orders/{}", placed.order_id);
    let reply = warp::reply::with_status(warp::reply::json(&placed), StatusCode::ACCEPTED);
    Ok(warp::reply::with_header(reply, "location", location).into_response())
}

async fn get(order_id: Uuid, orders: Orders) -> Result<warp::reply::Response, Rejection> {
    match orders.get(order_id).await.map_err(ApiError::from)? {
        Some(order) => Ok(warp::reply::json(&order).into_response()),
        None => Err(ApiError::NotFound(format!("order {order_id} does not exist")).into()),
    }
}

async fn list(
    query: HashMap<String, String>,
    orders: Orders,
) -> Result<warp::reply::Response, Rejection> {
    let customer_id = query
        .get("customer_id")
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::BadRequest("customer_id query parameter is required".into()))?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")))?,
    };
    let found = orders
        .list(customer_id, limit)
        .await
        .map_err(ApiError::from)?;
    Ok(warp::reply::json(&found).into_response())
}
