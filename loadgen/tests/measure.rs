//! loadgen measured against small servers whose behaviour is known: a fixed delay, a
//! single stall (the coordinated-omission test), a sink fed by hand, and bad arguments.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use loadgen::report::{summarize, RunInfo, Summary};
use loadgen::request::{BodyBuilder, Channel};
use loadgen::scenario::{Mix, Phase};
use loadgen::sink::Sink;
use loadgen::stats::Stats;
use loadgen::work::{run, LoadConfig, LoadModel};
use tokio::net::TcpListener;

/// These tests time a server's delay and a load's schedule on shared cores: one at a time,
/// so no test measures another's load (their bounds hold for a run alone).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server that answers 202 like Herald after `delay(now)`.
async fn server(delay: impl Fn(Instant) -> Duration + Send + Sync + 'static) -> SocketAddr {
    server_reading(move |arrived, _| delay(arrived)).await
}

/// As [`server`], with the request body too: `answer(arrival time, body)` gives the delay.
async fn server_reading(
    answer: impl Fn(Instant, &[u8]) -> Duration + Send + Sync + 'static,
) -> SocketAddr {
    server_answering(move |arrived, body| {
        (
            answer(arrived, body),
            StatusCode::ACCEPTED,
            br#"{"id":"x","status":"accepted","priority":"high"}"#,
        )
    })
    .await
}

/// A server whose `answer(arrival time, body)` gives the delay, the status and the body.
async fn server_answering(
    answer: impl Fn(Instant, &[u8]) -> (Duration, StatusCode, &'static [u8]) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let arrived = Instant::now();
                    let answer = answer.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (delay, status, body) = answer(arrived, &body);
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(Full::new(Bytes::from_static(body)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn config(addr: SocketAddr, model: LoadModel, connections: usize) -> LoadConfig {
    LoadConfig {
        target: format!("http://{addr}"),
        model,
        connections,
        threads: 2,
        warmup: Duration::from_millis(300),
        timeout: Duration::from_secs(10),
        h2: false,
        api_key: None,
        priority_header: false,
        honor_retry_after: false,
        body: BodyBuilder {
            run: "test".into(),
            channel: Channel::Webhook,
            webhook_url: "http://127.0.0.1:9/hook".into(),
            payload_bytes: 64,
            batch: 0,
            idempotency_keys: false,
        },
        track_ids: false,
        resend_every: 0,
    }
}

fn open(rate: f64, secs: u64) -> LoadModel {
    LoadModel::Open {
        phases: vec![Phase {
            duration: Duration::from_secs(secs),
            rates: [rate * 0.2, rate * 0.3, rate * 0.5],
        }],
    }
}

async fn measure(config: LoadConfig) -> Summary {
    let stats = Arc::new(Stats::default());
    let open_loop = matches!(config.model, LoadModel::Open { .. });
    let result = run(config.clone(), stats.clone()).await.unwrap();
    summarize(
        &RunInfo {
            target: &config.target,
            open_loop,
            connections: config.connections,
            batch: 0,
            warmup_seconds: config.warmup.as_secs_f64(),
            measured_seconds: result.measured.as_secs_f64(),
            offered_requests_per_sec: None,
        },
        &stats,
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_delay_shows_as_the_median_and_the_rate_is_kept() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    // 50 ms, not 5: the bound must leave room for a shared core's scheduling noise (CI saw
    // a 5 ms server measured at 7.9 ms) while still catching a mis-measured delay.
    let addr = server(|_| Duration::from_millis(50)).await;
    let s = measure(config(addr, open(200.0, 3), 32)).await;
    let p50 = s.total.ingest.p50_ms;
    assert!(
        (49.9..=60.0).contains(&p50),
        "p50 {p50} ms for a 50 ms server"
    );
    // The schedule is kept: 200/s for 3 s, each priority its share.
    assert!(
        (570..=630).contains(&s.total.requests),
        "{}",
        s.total.requests
    );
    let high = s.priorities["high"].requests as f64 / s.total.requests as f64;
    assert!((0.17..=0.23).contains(&high), "high share {high}");
    assert_eq!(s.total.errors, 0);
}

/// One 200 ms stall of every request that arrives in it. The open loop keeps its schedule,
/// so the requests due during the stall carry the wait: p99 shows it. The closed loop sends
/// nothing while its few connections wait, so only those few samples are slow and p99
/// hides the stall: the coordinated omission loadgen's open loop corrects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status_and_by_the_code_in_their_body() {
    let _one = ONE_AT_A_TIME.lock().await;
    let addr = server_answering(|_, body| {
        let body = std::str::from_utf8(body).unwrap();
        if body.contains(r#""priority":"low""#) {
            (
                Duration::ZERO,
                StatusCode::TOO_MANY_REQUESTS,
                br#"{"error":{"code":"overloaded","message":"shedding low"}}"#,
            )
        } else if body.contains(r#""priority":"medium""#) {
            (
                Duration::ZERO,
                StatusCode::SERVICE_UNAVAILABLE,
                b"upstream gone",
            )
        } else {
            (Duration::ZERO, StatusCode::ACCEPTED, br#"{"id":"x"}"#)
        }
    })
    .await;
    let s = measure(config(addr, open(200.0, 1), 4)).await;
    let low = &s.priorities["low"];
    assert!(low.errors > 0);
    assert_eq!(low.errors_by_status["429"], low.errors);
    assert_eq!(low.errors_by_code["429 overloaded"], low.errors);
    let medium = &s.priorities["medium"];
    assert!(medium.errors > 0);
    // A body that is not Herald's error shape leaves the bare status.
    assert_eq!(medium.errors_by_code["503"], medium.errors);
    assert_eq!(s.priorities["high"].errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_open_loop_percentiles_and_hides_in_closed_loop() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let stall_at = Instant::now() + Duration::from_millis(1500);
    let stall = move |now: Instant| {
        let until = stall_at + Duration::from_millis(200);
        if now >= stall_at && now < until {
            until - now
        } else {
            Duration::from_micros(200)
        }
    };
    let addr = server(stall).await;
    let open_run = measure(config(addr, open(500.0, 3), 64)).await;
    let stall_at_2 = Instant::now() + Duration::from_millis(1500);
    let addr = server(move |now: Instant| {
        let until = stall_at_2 + Duration::from_millis(200);
        if now >= stall_at_2 && now < until {
            until - now
        } else {
            Duration::from_micros(200)
        }
    })
    .await;
    let closed_run = measure(config(
        addr,
        LoadModel::Closed {
            duration: Duration::from_secs(3),
            mix: Mix::default(),
        },
        4,
    ))
    .await;

    let open_p99 = open_run.total.ingest.p99_ms;
    let closed_p99 = closed_run.total.ingest.p99_ms;
    assert!(
        open_p99 >= 100.0,
        "open-loop p99 {open_p99} ms hides the stall"
    );
    assert!(closed_p99 < 20.0, "closed-loop p99 {closed_p99} ms");
    // Both saw the stall at its worst; only the open loop weighs it right.
    assert!(open_run.total.ingest.max_ms >= 150.0);
    assert!(closed_run.total.ingest.max_ms >= 150.0);
}

#[tokio::test]
async fn sink_counts_lost_duplicated_and_unexpected_exactly() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), "run-1".into(), None)
        .await
        .unwrap();
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let deliver = |id: &str, run: &str, via_header: bool| {
        let body = if via_header {
            format!(r#"{{"payload":{{"loadgen":{{"run":"{run}","sent_ns":1}}}}}}"#)
        } else {
            format!(
                r#"{{"id":"{id}","priority":"high","payload":{{"loadgen":{{"run":"{run}","sent_ns":1}}}}}}"#
            )
        };
        let mut req = hyper::Request::post(sink.url()).body(Full::new(Bytes::from(body)));
        if via_header {
            req = hyper::Request::post(sink.url())
                .header("Herald-Id", id)
                .header("Herald-Priority", "low")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"payload":{{"loadgen":{{"run":"{run}","sent_ns":1}}}}}}"#
                ))));
        }
        let req = req.unwrap();
        let http = http.clone();
        async move {
            let r = http.request(req).await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    deliver("a", "run-1", false).await;
    deliver("b", "run-1", true).await;
    deliver("b", "run-1", false).await; // duplicate
    deliver("c", "run-1", false).await;
    deliver("d", "run-1", false).await; // never accepted
    deliver("a", "run-0", false).await; // another run's
    let accepted: HashSet<String> = ["a", "b", "c", "e"].iter().map(|s| s.to_string()).collect();
    let a = sink.account(&accepted);
    assert_eq!(a.accepted, 4);
    assert_eq!(a.delivered, 3);
    assert_eq!(a.lost, 1);
    assert_eq!(a.duplicated, 1);
    assert_eq!(a.unexpected, 2);
    assert_eq!(a.lost_ids, ["e"]);
    assert_eq!(a.unexpected_ids, ["d"]);
    // The drain waits on accepted ids only: "d" arrived but was never answered 202.
    assert_eq!(sink.delivered_of(&accepted), 3);
    assert_eq!(sink.latency(loadgen::scenario::Priority::High).len(), 3);
    assert_eq!(sink.latency(loadgen::scenario::Priority::Low).len(), 1);
}

/// Sink faults as fault-injection runs use them: inside the window a reset drops the
/// connection unanswered and a hang never answers (neither counts as delivered); a slow
/// sink answers late and counts; after the window, deliveries count again.
#[tokio::test]
async fn sink_faults_refuse_or_delay_only_inside_their_window() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    use loadgen::sink::{FaultKind, SinkFault};
    use std::time::{Duration, Instant};
    let post = |url: String, id: &'static str| async move {
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let body = format!(
            r#"{{"id":"{id}","priority":"high","payload":{{"loadgen":{{"run":"r","sent_ns":1}}}}}}"#
        );
        let req = hyper::Request::post(url).body(Full::new(Bytes::from(body)));
        tokio::time::timeout(Duration::from_millis(700), http.request(req.unwrap()))
            .await
            .map(|r| r.map(|r| r.status().as_u16()))
    };
    let accepted: HashSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    for (fault, refused) in [
        ("reset:0s:1s", "connection dropped"),
        ("hang:0s:1s", "no answer"),
    ] {
        let fault: SinkFault = fault.parse().unwrap();
        let sink = Sink::start("127.0.0.1:0".parse().unwrap(), "r".into(), Some(fault))
            .await
            .unwrap();
        match post(sink.url(), "a").await {
            Ok(Ok(status)) => panic!("{fault:?}: answered {status} inside the window"),
            Ok(Err(_)) => assert_eq!(refused, "connection dropped", "{fault:?}"),
            Err(_) => assert_eq!(refused, "no answer", "{fault:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(post(sink.url(), "b").await.unwrap().unwrap(), 200);
        let a = sink.account(&accepted);
        assert_eq!((a.delivered, a.lost), (1, 1), "{fault:?}");
        assert_eq!(a.lost_ids, ["a"]);
    }
    let slow: SinkFault = "slow=300ms:0s:10s".parse().unwrap();
    assert_eq!(slow.kind, FaultKind::Slow(Duration::from_millis(300)));
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), "r".into(), Some(slow))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(post(sink.url(), "a").await.unwrap().unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sink.account(&accepted).delivered, 1);
    for bad in [
        "hang:2s",
        "slow:0s:1s",
        "reset:2s:1s",
        "drop:0s:1s",
        "slow=x:0s:1s",
    ] {
        assert!(bad.parse::<SinkFault>().is_err(), "{bad}");
    }
}

fn loadgen(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_arguments_exit_2_and_name_the_problem() {
    let cases: [(&[&str], &str); 5] = [
        (&["--rate", "0"], "--rate"),
        (&["--mix", "urgent=5"], "urgent"),
        (&["--scenario", "overload"], "--capacity"),
        (&["--slo", "high.p99"], "operator"),
        (&["--connections", "many"], "--connections"),
    ];
    for (args, needle) in cases {
        let out = loadgen(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Against a target that accepts but never delivers, loadgen says so and fails, and it
/// writes every output file it promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_delivered_is_reported_plainly_and_fails_the_run() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let addr = server(|_| Duration::from_micros(100)).await;
    let out_dir = tempfile::tempdir().unwrap();
    let target = format!("http://{addr}");
    let out_path = out_dir.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        loadgen(&[
            "--target",
            &target,
            "--rate",
            "100",
            "-d",
            "1s",
            "--warmup",
            "0s",
            "--sink",
            "127.0.0.1:0",
            "--drain-timeout",
            "200ms",
            "--out",
            &out_path,
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("NOTHING ARRIVED at the sink"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["end_to_end"]["delivered"], 0);
    assert!(summary["end_to_end"]["lost"].as_u64().unwrap() > 0);
    assert!(summary["total"]["requests_per_sec"].as_f64().unwrap() > 50.0);
    assert!(summary["priorities"]["high"]["ingest"]["p99_ms"].is_number());
    for file in ["high.ingest.hgrm", "low.e2e.hgrm", "latency.svg"] {
        assert!(out_dir.path().join(file).exists(), "{file}");
    }
    let hgrm = std::fs::read_to_string(out_dir.path().join("low.ingest.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm.contains("#[Max     ="));
}

/// With `--idempotency-keys` every request carries a key of its own, from every thread and
/// connection (a prebuilt request would repeat one key, and Herald would answer replays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_unique_across_threads_and_connections() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = keys.clone();
    let addr = server_reading(move |_, body| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        seen.lock()
            .unwrap()
            .push(v["idempotency_key"].as_str().unwrap_or("").to_string());
        Duration::ZERO
    })
    .await;
    let mut c = config(
        addr,
        LoadModel::Closed {
            duration: Duration::from_millis(500),
            mix: Mix([30.0, 30.0, 40.0]),
        },
        8,
    );
    c.body.idempotency_keys = true;
    c.warmup = Duration::ZERO;
    measure(c).await;
    let keys = keys.lock().unwrap().clone();
    assert!(keys.len() > 100, "{}", keys.len());
    assert!(keys.iter().all(|k| !k.is_empty()));
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "a key was sent twice");
}

/// A server that answers one request per connection and then closes it without saying so
/// (no `Connection: close`), as a server retiring an idle keep-alive connection does.
async fn one_answer_per_connection() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = br#"{"id":"x","status":"accepted","priority":"high"}"#;
                let answer = format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(body).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            });
        }
    });
    addr
}

/// A request that finds its reused connection closed is counted as a stale connection,
/// apart from other io errors; the next request reconnects and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_found_closed_is_reported_as_stale() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let addr = one_answer_per_connection().await;
    let mut c = config(addr, open(40.0, 2), 1);
    c.threads = 1;
    c.warmup = Duration::ZERO;
    let s = measure(c).await;
    let mut transport = std::collections::BTreeMap::<String, u64>::new();
    for class in s.priorities.values() {
        for (kind, n) in &class.errors_by_transport {
            *transport.entry(kind.clone()).or_default() += n;
        }
    }
    let stale = transport.get("stale_connection").copied().unwrap_or(0);
    assert!(stale >= 10, "{transport:?}");
    assert_eq!(transport.get("io"), None, "{transport:?}");
    assert!(s.total.ok >= 10, "{}", s.total.ok);
}
