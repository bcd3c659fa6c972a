//! Routes of the order service: place an order (optionally with an
//! `Idempotency-Key`), read one, list a customer's orders. Every route needs
//! a bearer token: the customer is the token's subject, and a customer sees
//! only their own orders (another's answers 404, as if it did not exist);
//! an admin sees every order.

use super::error::{ApiError, ErrorBody};
use super::json_body;
use crate::auth::{Authenticator, Principal};
use serde::Deserialize;
use serde_json::Value;
use shop_actors::order::idempotency::{IdempotencyKey, IdempotentRequest};
use shop_actors::order::model::{OrderSummary, OrderView, PlaceOrder, PlacedOrder};
use shop_actors::order::Orders;
use std::collections::HashMap;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Default and largest page of `GET /orders`.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// The order service's part of its OpenAPI document (`GET /openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(place, get, list))]
pub struct OrderApi;

/// Every order-service route.
pub fn routes(
    orders: Orders,
    auth: Authenticator,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_orders = warp::any().map(move || orders.clone());
    let caller = crate::auth::caller(auth);
    // The body is taken as JSON first: an idempotency key is bound to the
    // body as JSON, not to its bytes, so a retry may reorder keys or spacing.
    let place = warp::path!("orders")
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body::<Value>())
        .and(with_orders.clone())
        .and_then(place);
    let get = warp::path!("orders" / Uuid)
        .and(warp::get())
        .and(caller.clone())
        .and(with_orders.clone())
        .and_then(get);
    let list = warp::path!("orders")
        .and(warp::get())
        .and(caller)
        .and(warp::query::<HashMap<String, String>>())
        .and(with_orders)
        .and_then(list);
    place.or(get).unify().or(list).unify()
}

/// Place an order.
///
/// The order is accepted at once (`PENDING`) and confirmed or rejected
/// asynchronously by its saga; follow it with `GET /orders/{id}` or the
/// gateway's WebSocket. The customer is the token's subject: a body may
/// repeat it but not name someone else, unless the caller is an admin
/// ordering on a customer's behalf.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "placeOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
         description = "Makes a retry safe: 1 to 255 visible ASCII characters, bare or \
                        quoted as `\"key\"`. A repeat with the same JSON body gets the first \
                        answer again (with `Idempotent-Replayed: true`) and no second order."),
    ),
    request_body = PlaceOrder,
    responses(
        (status = 202, description = "Accepted: the order exists and its saga has started.",
         body = PlacedOrder,
         headers(
             ("location" = String, description = "`/orders/{order_id}`"),
             ("idempotent-replayed" = String,
              description = "`true` when this is the stored answer to an earlier request with the same key"),
         ),
         links(("getOrder" = (operation_id = "getOrder",
                              parameters(("id" = "$response.body#/order_id")))))),
        (status = 400, description = "Malformed JSON, a body of the wrong shape, or a malformed `Idempotency-Key`.", body = ErrorBody),
        (status = 403, description = "`customer_id` names someone other than the caller.", body = ErrorBody),
        (status = 409, description = "`request_in_progress`: the first request with this key is still running.", body = ErrorBody),
        (status = 422, description = "`validation_failed` (empty items, a quantity out of range, an unknown payment token, a bad customer id), \
                                      `unknown_product`, or `idempotency_key_reused` (the key was used with another body).", body = ErrorBody),
        (status = 503, description = "Postgres or the product service is unavailable; nothing was written.", body = ErrorBody),
    )
)]
async fn place(
    caller: Principal,
    key: Option<String>,
    body: Value,
    orders: Orders,
) -> Result<warp::reply::Response, Rejection> {
    let key = key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?
        .map(|key| key.scoped(&caller.subject));
    let mut request = PlaceOrder::deserialize(&body)
        .map_err(|e| ApiError::MalformedJson(format!("request body is not valid: {e}")))?;
    // A customer orders for themself; an admin (support staff) may order
    // on behalf of the customer the body names.
    match request.customer_id.as_deref().map(str::trim) {
        // Blank is invalid input, refused as such by validation.
        Some(named) if named.is_empty() || caller.is_admin() => {}
        Some(named) if named != caller.subject => {
            return Err(ApiError::Forbidden(
                "customer_id must be the token's subject (it can be left out)".into(),
            )
            .into())
        }
        _ => request.customer_id = Some(caller.subject.clone()),
    }
    let idempotent = key.map(|key| IdempotentRequest { key, body });
    let placement = orders
        .place(request, idempotent)
        .await
        .map_err(ApiError::from)?;
    let location = format!("/orders/{}", placement.order.order_id);
    // A stored status is one this route answered before.
    let status = StatusCode::from_u16(placement.status).unwrap_or(StatusCode::ACCEPTED);
    let reply = warp::reply::with_status(warp::reply::json(&placement.order), status);
    let mut response = warp::reply::with_header(reply, "location", location).into_response();
    if placement.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            warp::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// One order: status, reason, items, total and status history.
///
/// A customer sees only their own orders: another customer's order is
/// answered exactly like one that does not exist.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "getOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order id.")),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 404, description = "No such order, or not the caller's.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable.", body = ErrorBody),
    )
)]
async fn get(
    order_id: Uuid,
    caller: Principal,
    orders: Orders,
) -> Result<warp::reply::Response, Rejection> {
    match orders.get(order_id).await.map_err(ApiError::from)? {
        // Someone else's order is reported exactly like a missing one.
        Some(order) if caller.may_see(&order.customer_id) => {
            Ok(warp::reply::json(&order).into_response())
        }
        _ => Err(ApiError::NotFound(format!("order {order_id} does not exist")).into()),
    }
}

/// The caller's orders, newest first.
#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "listOrders",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("customer_id" = Option<String>, Query, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$",
         description = "Whose orders: the caller's by default; naming another customer is for admins."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500,
         description = "At most this many (default 50)."),
    ),
    responses(
        (status = 200, description = "The orders, newest first.", body = Vec<OrderSummary>),
        (status = 400, description = "`limit` is not 1 to 500, or `customer_id` holds control characters.", body = ErrorBody),
        (status = 403, description = "A customer named another customer.", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable.", body = ErrorBody),
    )
)]
async fn list(
    caller: Principal,
    query: HashMap<String, String>,
    orders: Orders,
) -> Result<warp::reply::Response, Rejection> {
    // The caller's own orders unless an admin names a customer.
    let customer_id = match query.get("customer_id").map(|c| c.trim()) {
        None | Some("") => caller.subject.clone(),
        // No stored id has control characters (orders refuse them), and
        // Postgres refuses NUL outright: answered 503 before.
        Some(named) if named.chars().any(char::is_control) => {
            return Err(ApiError::BadRequest(
                "customer_id must not contain control characters".into(),
            )
            .into())
        }
        Some(named) if caller.may_see(named) => named.to_owned(),
        Some(_) => {
            return Err(
                ApiError::Forbidden("customers may list only their own orders".into()).into(),
            )
        }
    };
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
