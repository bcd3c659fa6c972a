//! Operator routes of the order service: the sagas that need a human.

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
pub fn routes(
    orders: Orders,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("admin" / "sagas" / "stuck")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::any().map(move || orders.clone()))
        .and_then(stuck)
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
