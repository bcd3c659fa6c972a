//! `shop`: runs one service or all four; see `shop --help`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop::cli::run().await
}
