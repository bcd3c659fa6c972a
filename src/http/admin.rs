//! Operator routes of the order service (admin tokens only): the sagas that
//! need a human, and which sagas run in this process.

use super::error::ApiError;
use serde_json::json;
use shop_actors::order::Orders;
use std::collections::HashMap;
use warp::{Filter, Rejection, Reply};

/// How long past its deadline an in-flight saga must be to count as stuck,
/// unless the query says otherwise.
const DEFAULT_GRACE_SECONDS: f64 = 60.0;

/// `GET /admin/sagas/stuck[?grace_seconds=N]`: FAILED sagas, and in-flight
/// ones overdue by more than the grace period.
///
/// `GET /admin/sagas/running`: the partitions this process owns and the
/// orders whose saga actors run here.
pub fn routes(
    orders: Orders,
    auth: crate::auth::Authenticator,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let running_orders = orders.clone();
    let admin = crate::auth::admin(auth).map(|_| ()).untuple_one();
    let stuck_route = warp::path!("admin" / "sagas" / "stuck")
        .and(warp::get())
        .and(admin.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::any().map(move || orders.clone()))
        .and_then(stuck);
    let running_route = warp::path!("admin" / "sagas" / "running")
        .and(warp::get())
        .and(admin)
        .and(warp::any().map(move || running_orders.clone()))
        .and_then(running);
    stuck_route.or(running_route).unify()
}

async fn running(orders: Orders) -> Result<warp::reply::Response, Rejection> {
    let (ownership, order_ids) = orders.running_sagas().await.map_err(ApiError::from)?;
    Ok(warp::reply::json(&json!({
        "topic": ownership.topic,
        "partitions": ownership.partitions,
        "owned_partitions": ownership.owned,
        "count": order_ids.len(),
        "order_ids": order_ids,
    }))
    .into_response())
}

async fn stuck(
    query: HashMap<String, String>,
    orders: Orders,
) -> Result<warp::reply::Response, Rejection> {
    let grace = match query.get("grace_seconds") {
        None => DEFAULT_GRACE_SECONDS,
        Some(raw) => raw
            .parse::<f64>()
            .ok()
            .filter(|g| g.is_finite() && *g >= 0.0)
            .ok_or_else(|| ApiError::BadRequest("grace_seconds must be a number >= 0".into()))?,
    };
    let sagas = orders.stuck(grace).await.map_err(ApiError::from)?;
    Ok(warp::reply::json(&json!({ "count": sagas.len(), "sagas": sagas })).into_response())
}
