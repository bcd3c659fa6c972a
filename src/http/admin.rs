//! Operator routes of the order service (admin tokens only): the sagas that
//! need a human, and which sagas run in this process.

use super::error::{ApiError, ErrorBody};
use serde::Serialize;
use shop_actors::order::repo::StuckSaga;
use shop_actors::order::Orders;
use std::collections::HashMap;
use uuid::Uuid;
use warp::{Filter, Rejection, Reply};

/// How long past its deadline an in-flight saga must be to count as stuck,
/// unless the query says otherwise.
const DEFAULT_GRACE_SECONDS: f64 = 60.0;
/// Longest grace period asked for: ten years. Postgres cannot subtract a
/// much longer interval from now (schemathesis found `1e308` answered 503,
/// "timestamp out of range").
pub(crate) const MAX_GRACE_SECONDS: f64 = 315_360_000.0;

/// The operator routes' part of the order service's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(stuck, running))]
pub struct AdminApi;

/// Answer of `GET /admin/sagas/running`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RunningSagas {
    /// The topic whose partition assignment decides which process runs a saga.
    topic: String,
    /// Its partition count (0: not known yet).
    partitions: i32,
    /// The partitions this process owns.
    owned_partitions: Vec<i32>,
    /// How many saga actors run here.
    count: usize,
    /// The orders whose saga actors run here.
    order_ids: Vec<Uuid>,
}

/// Answer of `GET /admin/sagas/stuck`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StuckSagas {
    /// How many sagas need an operator.
    count: usize,
    /// Those sagas, least recently changed first.
    sagas: Vec<StuckSaga>,
}

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

/// The partitions this process owns and the orders whose sagas run here.
///
/// An order's saga runs in the process assigned its partition of
/// `inventory-events`/`payment-events`, and moves (resumed from Postgres)
/// when a rebalance moves the partition.
#[utoipa::path(
    get,
    path = "/admin/sagas/running",
    operation_id = "runningSagas",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What runs in this process.", body = RunningSagas),
        (status = 403, description = "The token is not an admin's.", body = ErrorBody),
        (status = 503, description = "The saga supervisor did not answer.", body = ErrorBody),
    )
)]
async fn running(orders: Orders) -> Result<warp::reply::Response, Rejection> {
    let (ownership, order_ids) = orders.running_sagas().await.map_err(ApiError::from)?;
    Ok(warp::reply::json(&RunningSagas {
        topic: ownership.topic.to_owned(),
        partitions: ownership.partitions,
        owned_partitions: ownership.owned,
        count: order_ids.len(),
        order_ids,
    })
    .into_response())
}

/// Sagas that need an operator: `FAILED`, or in flight and overdue by more
/// than the grace period.
#[utoipa::path(
    get,
    path = "/admin/sagas/stuck",
    operation_id = "stuckSagas",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("grace_seconds" = Option<f64>, Query, minimum = 0, maximum = 315_360_000,
         description = "How far past its deadline an in-flight saga must be (default 60)."),
    ),
    responses(
        (status = 200, description = "The sagas.", body = StuckSagas),
        (status = 400, description = "`grace_seconds` is not a number in range.", body = ErrorBody),
        (status = 403, description = "The token is not an admin's.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable.", body = ErrorBody),
    )
)]
async fn stuck(
    query: HashMap<String, String>,
    orders: Orders,
) -> Result<warp::reply::Response, Rejection> {
    let grace = match query.get("grace_seconds") {
        None => DEFAULT_GRACE_SECONDS,
        Some(raw) => raw
            .parse::<f64>()
            .ok()
            .filter(|g| (0.0..=MAX_GRACE_SECONDS).contains(g))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "grace_seconds must be a number from 0 to {MAX_GRACE_SECONDS}"
                ))
            })?,
    };
    let sagas = orders.stuck(grace).await.map_err(ApiError::from)?;
    Ok(warp::reply::json(&StuckSagas {
        count: sagas.len(),
        sagas,
    })
    .into_response())
}
