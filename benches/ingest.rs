//! The in-process ingest path per priority: a request handed to the ingress handler
//! (parse → validate → schedule → publish to the live JetStream → ack → response), no HTTP
//! connection in between. One request in flight, so the time is the durable path's latency
//! and the throughput is batch size / latency. Needs NATS on 127.0.0.1:4222
//! (scripts/services.sh); without it the suite says so and measures nothing.
//! Run: `cargo bench --bench ingest`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::app::App;
use herald::config::ServeConfig;
use herald::ingress::handle;
use herald::model::Priority;
use http_body_util::Full;

fn notification(priority: Priority, n: usize) -> String {
    format!(
        r#"{{"priority":"{priority}","channel":"webhook","recipient":"https://hooks.example.com/orders","payload":{{"order":"A-{n}","status":"shipped","eta":"2026-11-27"}}}}"#
    )
}

fn request(path: &str, body: &Bytes) -> http::Request<Full<Bytes>> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap()
}

fn ingest(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let prefix = format!("bench{}_", std::process::id());
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        nats: herald::config::NatsConfig {
            prefix: prefix.clone(),
            readiness_interval: Duration::from_millis(100),
            ..Default::default()
        },
        // The durable path alone; scripts/bench-state.sh measures auth and rate limiting.
        auth: herald::config::AuthMode::Off,
        ..Default::default()
    };
    let app = runtime.block_on(App::serve(config)).unwrap();
    let state = app.ingress().expect("serve runs the ingress").state();
    let ready = runtime.block_on(async {
        for _ in 0..50 {
            if state.readiness.is_ready(&state.client) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    if !ready {
        eprintln!("ingest bench skipped: NATS JetStream on 127.0.0.1:4222 is not reachable (run scripts/services.sh)");
        return;
    }

    let mut group = c.benchmark_group("ingest_inprocess");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for p in Priority::ALL {
        for size in [1usize, 10, 100, 1000] {
            let (path, body) = if size == 1 {
                ("/v1/notifications", Bytes::from(notification(p, 0)))
            } else {
                let items: Vec<String> = (0..size).map(|n| notification(p, n)).collect();
                (
                    "/v1/notifications/batch",
                    Bytes::from(format!("[{}]", items.join(","))),
                )
            };
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::new(p.as_str(), size), &body, |b, body| {
                b.to_async(&runtime).iter(|| async {
                    let response = handle(state.clone(), request(path, body)).await;
                    assert_eq!(response.status(), 202);
                })
            });
        }
    }
    group.finish();
    runtime.block_on(async {
        app.shutdown().await;
        if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(format!("{prefix}NOTIFY"))
                .await;
        }
    });
}

criterion_group!(benches, ingest);
criterion_main!(benches);
