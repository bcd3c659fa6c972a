//! Abuse suite: the platform in-process, driven through its public ports as
//! a hostile or careless client would (floods, slow readers, idle sockets,
//! forged or expiring tokens, malformed requests). Each test asserts a bound
//! the platform documents in `docs/guarantees.md` ("Under abuse"): memory
//! growth, descriptors, closed connections, error answers. None asserts a
//! timing.

#![allow(clippy::unwrap_used)]

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod http;
mod logs;
mod websocket;
