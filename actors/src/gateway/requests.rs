//! What a [`WsConnection`] does with its client's requests: subscribing to
//! one order (a snapshot or a catch-up from the lookup, then live updates
//! in order, each at most once) or to a scope, and unsubscribing.
//!
//! [`WsConnection`]: super::connection::WsConnection

use super::connection::{
    arm_expiry, send, ConnectionHandle, ConnectionMsg, ConnectionState, LOOKUPS_AT_ONCE,
    MAX_REMEMBERED, MAX_SUBSCRIPTIONS,
};
use super::hub::{HubMsg, StatusUpdate, Topic};
use super::orders::{Known, LookupError};
use super::protocol::{ClientMessage, Scope, ServerMessage};
use crate::auth::Principal;
use ractor::ActorRef;
use tracing::Instrument;
use uuid::Uuid;

fn handle_of(myself: &ActorRef<ConnectionMsg>, state: &ConnectionState) -> ConnectionHandle {
    ConnectionHandle {
        actor: myself.clone(),
        queue: state.queue.clone(),
    }
}

pub(super) async fn request_received(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    request: ClientMessage,
) {
    let reply = match request {
        ClientMessage::Subscribe {
            order_id: Some(order_id),
            last_seq: Some(after),
            scope: None,
        } if after < 0 => ServerMessage::error(
            "bad_request",
            // As `/ws?last_seq=` answers: sequence numbers start at 1.
            format!("last_seq: {after} is not a number >= 0"),
            Some(order_id),
        ),
        ClientMessage::Subscribe {
            order_id: Some(order_id),
            last_seq,
            scope: None,
        } => {
            if state.last_seq.contains_key(&order_id) || state.pending.contains_key(&order_id) {
                ServerMessage::Subscribed {
                    order_id: Some(order_id),
                    scope: None,
                    seq: state.last_seq.get(&order_id).copied(),
                }
            } else if state.last_seq.len() + state.pending.len() >= MAX_SUBSCRIPTIONS {
                ServerMessage::error(
                    "too_many_subscriptions",
                    format!("at most {MAX_SUBSCRIPTIONS} orders per connection"),
                    Some(order_id),
                )
            } else {
                // Follow first, look up second: an update that lands in
                // between waits in `pending` instead of being lost.
                state.pending.insert(order_id, Vec::new());
                let _ = state.args.hub.send_message(HubMsg::Subscribe {
                    connection: handle_of(myself, state),
                    topic: Topic::Order(order_id),
                });
                if state.lookups.len() >= MAX_SUBSCRIPTIONS {
                    // Entries of orders unsubscribed meanwhile: without this,
                    // subscribing and unsubscribing in a loop would grow it.
                    let pending = &state.pending;
                    state.lookups.retain(|(id, _)| pending.contains_key(id));
                }
                state.lookups.push_back((order_id, last_seq));
                start_lookups(myself, state);
                return;
            }
        }
        ClientMessage::Refresh { token } => refresh(myself, state, &token.0),
        ClientMessage::Subscribe {
            order_id: None,
            last_seq: None,
            scope: Some(scope),
        } => match scope_topic(&state.args.principal, scope) {
            Ok(topic) => {
                let _ = state.args.hub.send_message(HubMsg::Subscribe {
                    connection: handle_of(myself, state),
                    topic,
                });
                ServerMessage::Subscribed {
                    order_id: None,
                    scope: Some(scope),
                    seq: None,
                }
            }
            Err(refusal) => refusal,
        },
        ClientMessage::Unsubscribe {
            order_id: Some(order_id),
            scope: None,
        } => {
            state.last_seq.remove(&order_id);
            state.pending.remove(&order_id);
            let _ = state.args.hub.send_message(HubMsg::Unsubscribe {
                connection: myself.get_id(),
                topic: Topic::Order(order_id),
            });
            ServerMessage::Unsubscribed {
                order_id: Some(order_id),
                scope: None,
            }
        }
        ClientMessage::Unsubscribe {
            order_id: None,
            scope: Some(scope),
        } => match scope_topic(&state.args.principal, scope) {
            Ok(topic) => {
                let _ = state.args.hub.send_message(HubMsg::Unsubscribe {
                    connection: myself.get_id(),
                    topic,
                });
                ServerMessage::Unsubscribed {
                    order_id: None,
                    scope: Some(scope),
                }
            }
            Err(refusal) => refusal,
        },
        _ => ServerMessage::error(
            "bad_request",
            "name either an order_id (with an optional last_seq) or a scope",
            None,
        ),
    };
    send(myself, state, &reply).await;
}

/// Starts waiting lookups while fewer than [`LOOKUPS_AT_ONCE`] run; each
/// answers with [`ConnectionMsg::Looked`].
pub(super) fn start_lookups(myself: &ActorRef<ConnectionMsg>, state: &mut ConnectionState) {
    while state.looking < LOOKUPS_AT_ONCE {
        let Some((order_id, last_seq)) = state.lookups.pop_front() else {
            return;
        };
        if !state.pending.contains_key(&order_id) {
            continue; // unsubscribed meanwhile
        }
        state.looking += 1;
        let (lookup, principal, token, me) = (
            state.args.lookup.clone(),
            state.args.principal.clone(),
            state.args.token.clone(),
            myself.clone(),
        );
        tokio::spawn(async move {
            let result = lookup.get(order_id, &principal, &token, last_seq).await;
            let _ = me.send_message(ConnectionMsg::Looked {
                order_id,
                last_seq,
                result,
            });
        });
    }
}

/// A fresh token extends the session, if it is valid and of the same
/// subject and role; otherwise the session keeps its end.
fn refresh(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    token: &str,
) -> ServerMessage {
    let fresh = match state.args.verifier.verify(token) {
        Ok(fresh) => fresh,
        Err(reason) => return ServerMessage::error("unauthorized", reason, None),
    };
    if fresh.principal != state.args.principal {
        return ServerMessage::error(
            "forbidden",
            "a fresh token must be of the connection's subject and role",
            None,
        );
    }
    state.session_end = tokio::time::Instant::now() + fresh.remaining();
    state.args.token = fresh.token;
    arm_expiry(myself, state);
    ServerMessage::Refreshed {
        ends_at: fresh.ends_at.into(),
    }
}

/// The hub topic of a scope, if the caller may follow it.
fn scope_topic(principal: &Principal, scope: Scope) -> Result<Topic, ServerMessage> {
    match scope {
        Scope::Mine => Ok(Topic::Customer(principal.subject.clone())),
        Scope::Stock => Ok(Topic::Stock),
        Scope::All if principal.is_admin() => Ok(Topic::All),
        Scope::All => Err(ServerMessage::error(
            "forbidden",
            "only admins may follow every order",
            None,
        )),
    }
}

/// The lookup answered a subscription: send the snapshot (or the
/// missed updates), then whatever arrived meanwhile.
pub(super) async fn looked(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    order_id: Uuid,
    last_seq: Option<i32>,
    result: Result<Option<Known>, LookupError>,
) {
    let Some(waiting) = state.pending.remove(&order_id) else {
        return; // unsubscribed meanwhile
    };
    let refusal = match result {
        // The lookup checked the order is the client's.
        Ok(Some(order)) => {
            let current = order.current.seq;
            match last_seq {
                Some(after) => {
                    for entry in order.history.iter().filter(|h| h.seq > after) {
                        let update = StatusUpdate {
                            order_id,
                            status: entry.status,
                            reason: entry.reason,
                            at: entry.at,
                            seq: entry.seq,
                            customer_id: None,
                            trace: None,
                        };
                        send(myself, state, &ServerMessage::Update(update)).await;
                    }
                }
                None => {
                    let snapshot = ServerMessage::Snapshot {
                        order_id,
                        status: order.current.status,
                        reason: order.current.reason,
                        at: order.current.at,
                        seq: current,
                    };
                    send(myself, state, &snapshot).await;
                }
            }
            state
                .last_seq
                .insert(order_id, current.max(last_seq.unwrap_or(0)));
            let subscribed = ServerMessage::Subscribed {
                order_id: Some(order_id),
                scope: None,
                seq: Some(current),
            };
            send(myself, state, &subscribed).await;
            for update in waiting {
                deliver(myself, state, update).await;
            }
            return;
        }
        Ok(None) => ServerMessage::error(
            "not_found",
            format!("order {order_id} does not exist"),
            Some(order_id),
        ),
        Err(LookupError::Unauthorized(reason)) => {
            ServerMessage::error("unauthorized", reason, Some(order_id))
        }
        Err(LookupError::Unavailable(reason)) => {
            ServerMessage::error("unavailable", reason, Some(order_id))
        }
    };
    let _ = state.args.hub.send_message(HubMsg::Unsubscribe {
        connection: myself.get_id(),
        topic: Topic::Order(order_id),
    });
    send(myself, state, &refusal).await;
}

/// Sends a live update unless the client already has it.
pub(super) async fn deliver(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    update: StatusUpdate,
) {
    let sent = if state.last_seq.contains_key(&update.order_id) {
        &mut state.last_seq
    } else {
        &mut state.seen
    };
    if update.seq <= sent.get(&update.order_id).copied().unwrap_or(0) {
        return; // already sent: a redelivered event, or part of the snapshot
    }
    if sent.len() >= MAX_REMEMBERED && !sent.contains_key(&update.order_id) {
        sent.clear();
    }
    sent.insert(update.order_id, update.seq);
    let span = push_span(&update);
    send(myself, state, &ServerMessage::Update(update))
        .instrument(span)
        .await;
}

/// The span of pushing `update` to one client: the last step of its
/// order's trace.
fn push_span(update: &StatusUpdate) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "websocket push",
        otel.kind = "producer",
        service = "gateway",
        order_id = %update.order_id,
        status = %update.status,
        trace_id = tracing::field::Empty,
    );
    crate::trace::adopt(&span, update.trace.as_ref());
    span
}
