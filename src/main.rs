//! `shop`: runs one service or all four; see `shop --help`.

use std::time::Duration;

/// mimalloc, not glibc's malloc: under load the services allocate and free
/// many small, short-lived buffers (messages, JSON, rows) from several
/// threads, and profiles at 700–1,000 orders/s showed glibc's allocator
/// (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`, `free`) taking a
/// quarter to a third of the process's CPU (BENCHMARKS.md, "On Apache Kafka").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
