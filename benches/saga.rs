//! Micro-benchmarks of the saga's hot paths that need no I/O: encoding and
//! decoding the Kafka envelope, and one saga transition (decide + apply,
//! which builds the lifecycle event and the next command).
//!
//! Run with `cargo bench --bench saga`; figures go in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use shop_actors::events::{
    Envelope, Event, InventoryReserved, OrderLine, OrderStatus, ReserveInventory, StockLevel,
};
use shop_actors::order::machine::{SagaPolicy, SagaState};
use std::hint::black_box;
use uuid::Uuid;

fn lines(n: usize) -> Vec<OrderLine> {
    (0..n)
        .map(|i| OrderLine {
            product_id: Uuid::new_v4(),
            quantity: i as i32 + 1,
        })
        .collect()
}

fn envelope(c: &mut Criterion) {
    let command = Envelope::new(
        Uuid::now_v7(),
        Uuid::new_v4(),
        Event::ReserveInventory(ReserveInventory { items: lines(3) }),
    );
    let bytes = command.encode();
    c.bench_function("envelope_encode_reserve_3_lines", |b| {
        b.iter(|| black_box(&command).encode())
    });
    c.bench_function("envelope_decode_reserve_3_lines", |b| {
        b.iter(|| Envelope::decode(black_box(&bytes)).expect("decodes"))
    });
}

fn transition(c: &mut Criterion) {
    let state = SagaState {
        order_id: Uuid::now_v7(),
        customer_id: "alice".into(),
        correlation_id: Uuid::new_v4(),
        status: OrderStatus::Pending,
        reason: None,
        seq: 1,
        items: lines(3),
        total_cents: 12_345,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        deadline_at: None,
        attempts: 0,
    };
    let policy = SagaPolicy::default();
    let reply = Event::InventoryReserved(InventoryReserved {
        items: state
            .items
            .iter()
            .map(|l| StockLevel {
                product_id: l.product_id,
                quantity: l.quantity,
                stock: 10,
            })
            .collect(),
    });
    let now = chrono::Utc::now();
    c.bench_function("saga_transition_pending_to_reserved", |b| {
        b.iter(|| {
            let transition = black_box(&state)
                .next(black_box(&reply), &policy)
                .expect("a step");
            state.apply(&transition, now)
        })
    });
}

criterion_group!(benches, envelope, transition);
criterion_main!(benches);
