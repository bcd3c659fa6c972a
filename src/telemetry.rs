//! Logging, set up once per process: `RUST_LOG` filters, `LOG_FORMAT`
//! picks human-readable or JSON lines. librdkafka's own logs arrive through
//! the `log` bridge and are quiet unless they matter.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls are no-ops (tests call it
/// once per test).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,rdkafka=warn,librdkafka=warn,warp=warn,hyper=warn")
    });
    // Logs go to stderr, so command output on stdout (`shop broker`,
    // `shop dlq list --json`) stays machine-readable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
