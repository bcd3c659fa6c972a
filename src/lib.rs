//! The `shop` binary's library: command line, configuration, telemetry,
//! HTTP and WebSocket routes, and start-up. The services themselves — their
//! actor trees, events and repositories — live in the `shop-actors` crate.
//!
//! - [`cli`]: subcommands (`all`, `product`, `order`, `payment`, `gateway`,
//!   `migrate`, `broker`).
//! - [`config`]: [`config::Settings`], from flags and environment variables.
//! - [`telemetry`]: logs, and OpenTelemetry tracing with optional OTLP export.
//! - [`http`]: routes per service, JSON errors, health and readiness.
//! - [`loadgen`]: `shop loadgen`, the load harness.
//! - [`startup`]: [`startup::Platform`], which wires it all together.

pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod loadgen;
pub mod startup;
pub mod telemetry;
pub mod wsbench;

pub use config::Settings;
pub use startup::{Platform, Role};
