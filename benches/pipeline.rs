//! Micro-benchmarks of one hop's two transactions against the real
//! Postgres and the embedded Kafka-protocol broker:
//!
//! - `outbox_relay_batch/N`: one relay round publishing N committed outbox
//!   rows (lock, select, send and wait for every acknowledgement, delete,
//!   commit), what [`shop_actors::outbox::OutboxRelay`] does per wake-up.
//! - `consumer_dedupe_effect/...`: one consumer batch's transaction:
//!   record the event ids, apply the effect, append the replies to the
//!   outbox, commit (payment authorizations and stock reservations).
//!
//! Each run creates a fresh database `shop_bench_<uuid>` on `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432`) and drops it at the end.
//! Run with `cargo bench --bench pipeline`; under `cargo test` criterion
//! runs each benchmark once, which proves it works without timing it.
//! Figures go in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deadpool_postgres::Pool;
use shop_actors::events::{topics, AuthorizePayment, Envelope, Event, OrderLine, ReserveInventory};
use shop_actors::kafka::{EmbeddedBroker, KafkaSettings};
use shop_actors::outbox::{self, Publisher};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use uuid::Uuid;

/// A database of this run's own, dropped when the run ends.
struct BenchDb {
    url: String,
    pool: Pool,
}

impl BenchDb {
    fn create(rt: &Runtime) -> Self {
        let server = std::env::var("DATABASE_URL")
            .ok()
            .and_then(|url| url.rsplit_once('/').map(|(server, _)| server.to_owned()))
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned());
        let url = format!("{server}/shop_bench_{}", Uuid::new_v4().simple());
        rt.block_on(async {
            shop_actors::db::ensure_database(&url)
                .await
                .expect("create the bench database");
            shop_actors::db::migrate(&url, &shop_actors::db::ALL_SCHEMAS)
                .await
                .expect("migrate the bench database");
        });
        let pool = shop_actors::db::pool(&url, 4).expect("pool");
        Self { url, pool }
    }

    fn drop_in(self, rt: &Runtime) {
        let Self { url, pool } = self;
        pool.close();
        rt.block_on(async {
            if let Err(error) = shop_actors::db::drop_database(&url).await {
                eprintln!("could not drop {url}: {error}");
            }
        });
    }
}

fn authorize(token: &str) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        Uuid::new_v4(),
        Event::AuthorizePayment(AuthorizePayment {
            customer_id: "bench".into(),
            amount_cents: 1_999,
            currency: "EUR".into(),
            payment_token: token.into(),
        }),
    )
}

/// Commits `n` rows to the payment outbox, as a consumer batch would.
async fn fill_outbox(pool: &Pool, n: usize) {
    let envelopes: Vec<Envelope> = (0..n).map(|_| authorize("tok_visa")).collect();
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox::append(&tx, "payment", &envelopes)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
}

fn relay(c: &mut Criterion, rt: &Runtime, db: &BenchDb, broker: &EmbeddedBroker) {
    let settings = KafkaSettings::new(broker.bootstrap_servers());
    let producer = settings.producer().expect("producer");
    let publisher = Publisher {
        pool: &db.pool,
        producer: &producer,
        schema: "payment",
        topic_prefix: &settings.topic_prefix,
        lock_key: Publisher::lock_key("payment"),
    };
    let mut group = c.benchmark_group("outbox_relay_batch");
    for rows in [1usize, 100] {
        group.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, &rows| {
            // Only the round is timed; filling the outbox is not.
            b.iter_custom(|iters| {
                timed(
                    rt,
                    iters,
                    async || fill_outbox(&db.pool, rows).await,
                    async |()| {
                        let (published, _) = publisher.publish_batch().await.expect("publish");
                        assert_eq!(published, Some(rows));
                    },
                )
            })
        });
    }
    group.finish();
}

fn consumer(c: &mut Criterion, rt: &Runtime, db: &BenchDb) {
    let product = Uuid::new_v4();
    rt.block_on(async {
        let client = db.pool.get().await.expect("connection");
        client
            .execute(
                "INSERT INTO product.products (id, sku, name, price_cents, stock)
                 VALUES ($1, 'bench', 'Bench', 100, 2000000000)",
                &[&product],
            )
            .await
            .expect("seed a product");
    });
    let mut group = c.benchmark_group("consumer_dedupe_effect");
    for size in [1usize, 64] {
        group.bench_with_input(
            BenchmarkId::new("payment_authorize", size),
            &size,
            |b, &size| {
                b.iter_custom(|iters| {
                    timed(
                        rt,
                        iters,
                        async || (0..size).map(|_| authorize("tok_visa")).collect(),
                        async |batch| {
                            shop_actors::payment::repo::apply_commands(db.pool.clone(), batch)
                                .await
                                .expect("apply");
                        },
                    )
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("inventory_reserve", size),
            &size,
            |b, &size| {
                b.iter_custom(|iters| {
                    timed(
                        rt,
                        iters,
                        async || {
                            (0..size)
                                .map(|_| {
                                    Envelope::new(
                                        Uuid::now_v7(),
                                        Uuid::new_v4(),
                                        Event::ReserveInventory(ReserveInventory {
                                            items: vec![OrderLine {
                                                product_id: product,
                                                quantity: 1,
                                            }],
                                        }),
                                    )
                                })
                                .collect()
                        },
                        async |batch| {
                            shop_actors::product::repo::apply_commands(db.pool.clone(), batch)
                                .await
                                .expect("apply");
                        },
                    )
                })
            },
        );
    }
    group.finish();
}

/// Times `iters` runs of `measured`, each given what an untimed `prepare`
/// made (a filled outbox, a batch of commands).
fn timed<T>(
    rt: &Runtime,
    iters: u64,
    prepare: impl AsyncFn() -> T,
    measured: impl AsyncFn(T),
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let input = prepare().await;
            let start = Instant::now();
            measured(input).await;
            total += start.elapsed();
        }
        total
    })
}

fn pipeline(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let db = BenchDb::create(&rt);
    let broker = EmbeddedBroker::start(&topics::ALL, 6).expect("embedded broker");
    relay(c, &rt, &db, &broker);
    consumer(c, &rt, &db);
    drop(broker);
    db.drop_in(&rt);
}

criterion_group! {
    name = benches;
    // Each iteration commits to disk: fewer samples keep a run short.
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = pipeline
}
criterion_main!(benches);
