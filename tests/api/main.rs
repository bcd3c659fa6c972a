//! Integration tests: the whole platform in-process, against real Postgres,
//! real Redis and the embedded Kafka-protocol broker, or Apache Kafka when
//! `TEST_KAFKA_BROKERS` names one (`scripts/kafka.sh start`). Each test gets
//! its own database, Redis key prefix, and broker or topic and group prefix
//! on the shared one, so tests run in parallel.

#![allow(clippy::unwrap_used)]

mod auth;
mod bad_requests;
mod dead_letters;
mod deadlines;
mod fuzz_findings;
mod group_commit;
mod helpers;
mod idempotency;
mod loadgen;
mod migrations;
mod openapi;
mod order_history;
mod outbox;
mod payment;
mod placement;
mod redelivery;
mod redis_outage;
mod saga;
mod storefront;
mod subscriptions;
mod trace_propagation;
mod websocket;
mod wsbench;
