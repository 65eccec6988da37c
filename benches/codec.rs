//! The request codec per priority: parse + validate + encode the wire document, for one
//! notification and for batch bodies of 1 to 1000. No I/O. Run: `cargo bench --bench codec`.

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

criterion_group!(benches, single, batch);
criterion_main!(benches);
