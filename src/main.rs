//! `shop`: runs one service or all four; see `shop --help`.

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(shop::cli::run());
    // A call into librdkafka left blocking a thread (a final offset commit
    // to a broker that is gone) must not keep the process alive once the
    // shutdown is done: give such threads a moment, then exit without them.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
