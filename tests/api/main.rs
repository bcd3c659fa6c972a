//! Integration tests: the whole platform in-process, against real Postgres,
//! real Redis and the embedded Kafka-protocol broker. Each test gets its
//! own database, Redis key prefix and broker, so tests run in parallel.

#![allow(clippy::unwrap_used)]

mod bad_requests;
mod helpers;
mod redelivery;
mod saga;
mod websocket;
