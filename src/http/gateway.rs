//! Routes of the gateway: `GET /ws` follows every order, `GET
//! /ws?order_id=` follows one. Each upgraded socket becomes a
//! `WsConnection` actor.

use super::error::ApiError;
use shop_actors::gateway::{Follow, Gateway};
use std::collections::HashMap;
use uuid::Uuid;
use warp::{Filter, Rejection, Reply};

/// Largest frame a client may send (clients only listen).
const MAX_FRAME: usize = 64 * 1024;

/// Every gateway route.
pub fn routes(
    gateway: Gateway,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(|query: HashMap<String, String>| async move {
            match query.get("order_id") {
                None => Ok(Follow::All),
                Some(raw) => Uuid::parse_str(raw.trim()).map(Follow::Order).map_err(|_| {
                    Rejection::from(ApiError::BadRequest(format!(
                        "order_id: {raw:?} is not a UUID"
                    )))
                }),
            }
        })
        .and(warp::ws())
        .and(warp::any().map(move || gateway.clone()))
        .map(|follow: Follow, ws: warp::ws::Ws, gateway: Gateway| {
            ws.max_frame_size(MAX_FRAME)
                .max_message_size(MAX_FRAME)
                .on_upgrade(move |socket| async move { gateway.open(socket, follow) })
                .into_response()
        })
}
