//! The request codec per priority: parse + validate + encode the wire document, for one
//! notification and for batch bodies of 1 to 1000; and what a webhook delivery adds: the
//! receiver's body from the wire document, and its Standard Webhooks signature. No I/O.
//! Run: `cargo bench --bench codec`.

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::model::{new_id, parse_notification, Limits, Priority};
use serde_json::value::RawValue;

fn limits() -> Limits<'static> {
    Limits::public(64 * 1024)
}

fn notification(priority: Priority, n: usize) -> String {
    format!(
        r#"{{"priority":"{priority}","channel":"webhook","recipient":"https://hooks.example.com/orders","payload":{{"order":"A-{n}","status":"shipped","items":[{{"sku":"X1","qty":2}}],"eta":"2026-11-27"}},"metadata":{{"tenant":"acme"}}}}"#
    )
}

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_single");
    group.throughput(Throughput::Elements(1));
    for p in Priority::ALL {
        let body = notification(p, 1);
        group.bench_with_input(BenchmarkId::from_parameter(p), &body, |b, body| {
            b.iter(|| {
                let v = parse_notification(body.as_bytes(), &limits(), Utc::now()).unwrap();
                black_box(v.encode(new_id(), uuid::Uuid::nil(), Utc::now()))
            })
        });
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_batch");
    for p in Priority::ALL {
        for size in [1usize, 10, 100, 1000] {
            let body = format!(
                "[{}]",
                (0..size)
                    .map(|n| notification(p, n))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::new(p.as_str(), size), &body, |b, body| {
                b.iter(|| {
                    let items: Vec<&RawValue> = serde_json::from_str(body).unwrap();
                    let now = Utc::now();
                    for item in items {
                        let v = parse_notification(item.get().as_bytes(), &limits(), now).unwrap();
                        black_box(v.encode(new_id(), uuid::Uuid::nil(), now));
                    }
                })
            });
        }
    }
    group.finish();
}

/// Per delivery attempt: decode the wire document, write the receiver's body and sign it
/// with the keys the tenant directory holds already opened (what the webhook sender does
/// before its request): `v1` alone (HMAC-SHA256), and `v1` with an ed25519 `v1a` beside it.
fn webhook(c: &mut Criterion) {
    use herald::signing::{KeyPair, Secret, SigningKeys};
    let request = notification(Priority::High, 1);
    let v = parse_notification(request.as_bytes(), &limits(), Utc::now()).unwrap();
    let wire = v.encode(new_id(), uuid::Uuid::nil(), Utc::now());
    let hmac = SigningKeys {
        secrets: vec![Secret::parse(&Secret::generate()).unwrap()],
        pairs: Vec::new(),
    };
    let both = SigningKeys {
        pairs: vec![KeyPair::parse(&KeyPair::generate()).unwrap()],
        ..hmac.clone()
    };
    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Elements(1));
    for (name, keys) in [("body_and_signature", &hmac), ("body_and_v1_v1a", &both)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let n: herald::model::WireNotification<'_> = serde_json::from_slice(&wire).unwrap();
                let body = herald::delivery::senders::webhook::body(&n);
                black_box(keys.clone().header(&n.id.to_string(), 1_700_000_000, &body))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, single, batch, webhook);
criterion_main!(benches);
