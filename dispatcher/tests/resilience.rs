//! The promise under stress: a 202 only for what JetStream stored, 429 when a queue is
//! full, 503 while NATS is away, and nothing accepted lost at shutdown. These tests run a
//! nats-server of their own so they can stop or freeze it.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    eventually, free_port, notification, read_stream, stored_ids, NatsProcess, TestResponse,
    TestServer,
};

fn id_of(r: &TestResponse) -> String {
    r.body["id"].as_str().unwrap().to_string()
}

/// Sends `n` single requests at once, returning the tasks' responses (or transport errors).
fn spawn_requests(
    server: &TestServer,
    priority: &'static str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Option<TestResponse>>> {
    (0..n)
        .map(|i| {
            let http = server.http.clone();
            let url = server.url("/v1/notifications");
            tokio::spawn(async move {
                http.request(
                    "POST",
                    &url,
                    Some("application/json"),
                    notification(priority, i).into(),
                )
                .await
                .ok()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_everything_accepted_is_stored() {
    let nats = NatsProcess::start(free_port()).await;
    let server = TestServer::start_unready(&nats.url(), |c| {
        c.scheduler.capacities = "2:2:2".parse().unwrap();
        c.publisher.max_inflight = 1;
        c.publisher.batch_max = 1;
        c.publisher.publishers = 1;
    })
    .await;
    server.wait_ready().await;

    // Frozen NATS: one publish waits for its ack, holding the only in-flight slot, and
    // the low queue fills behind it.
    nats.pause();
    let waiting = spawn_requests(&server, "low", 4);
    let full = r#"herald_queue_depth{priority="low"} 2"#;
    let mut seen = String::new();
    for _ in 0..100 {
        seen = server.metrics().await;
        if seen.contains(full) && seen.contains("herald_publish_acks_inflight 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains(full), "{seen}");
    let rejected = server
        .post("/v1/notifications", notification("low", 99))
        .await;
    assert_eq!(rejected.status, 429, "{:?}", rejected.body);
    assert_eq!(rejected.body["error"]["code"], "queue_full");
    assert_eq!(rejected.header("retry-after"), Some("1"));
    // Another class still has room.
    let high = spawn_requests(&server, "high", 1);

    nats.resume();
    let mut accepted = HashSet::new();
    let mut refused = 1;
    for t in waiting.into_iter().chain(high) {
        let r = t.await.unwrap().expect("response");
        match r.status {
            202 => assert!(accepted.insert(id_of(&r))),
            429 => refused += 1,
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    // In flight + queue capacity + the high one.
    assert_eq!(accepted.len(), 4);
    assert_eq!(stored_ids(&nats.url(), &server.stream).await, accepted);

    let text = server.metrics().await;
    let line =
        format!(r#"herald_ingest_rejected_total{{priority="low",reason="queue_full"}} {refused}"#);
    assert!(text.contains(&line), "{line} not in {text}");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_door_publishes_from_the_request_and_a_busy_one_queues() {
    let nats = NatsProcess::start(free_port()).await;
    let server = TestServer::start_unready(&nats.url(), |c| c.publisher.direct_max = 2).await;
    server.wait_ready().await;

    // One at a time, each request finds the door idle and publishes itself.
    let mut accepted = HashSet::new();
    for i in 0..3 {
        let r = server
            .post("/v1/notifications", notification("high", i))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        accepted.insert(id_of(&r));
    }
    let direct = |page: String| common::metric(&page, "herald_publish_direct_total");
    assert_eq!(direct(server.metrics().await), Some(3.0));

    // Frozen NATS: two requests hold the direct slots awaiting their acks, the rest go
    // through the scheduler and its publishers.
    nats.pause();
    let waiting = spawn_requests(&server, "low", 6);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = server.metrics().await;
        if seen.contains("herald_publish_acks_inflight 6") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains("herald_publish_acks_inflight 6"), "{seen}");
    nats.resume();
    for t in waiting {
        let r = t.await.unwrap().expect("response");
        assert_eq!(r.status, 202, "{:?}", r.body);
        assert!(accepted.insert(id_of(&r)));
    }
    assert_eq!(direct(server.metrics().await), Some(3.0 + 2.0));
    assert_eq!(stored_ids(&nats.url(), &server.stream).await, accepted);
    server.finish().await;
}

#[tokio::test]
async fn nats_unreachable_gives_503_and_recovery_follows_its_return() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = TestServer::start_unready(&url, |_| {}).await;

    // No NATS at all: alive, not ready, nothing accepted.
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/readyz").await.status, 503);
    let r = server
        .post("/v1/notifications", notification("high", 1))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = server
        .post(
            "/v1/notifications/batch",
            format!("[{}]", notification("low", 1)),
        )
        .await;
    assert_eq!(r.status, 503);

    // NATS arrives: the ingress connects, creates its stream and accepts.
    let mut nats = NatsProcess::start(port).await;
    server.wait_ready().await;
    let r = server
        .post("/v1/notifications", notification("high", 2))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let first = id_of(&r);

    // NATS goes away again: unready and 503 within moments.
    nats.kill();
    let unready = eventually(Duration::from_secs(5), || async {
        (server.get("/readyz").await.status == 503).then_some(())
    })
    .await;
    assert!(unready.is_some(), "readyz stayed 200 with NATS down");
    let r = server
        .post("/v1/notifications", notification("high", 3))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);

    // Back on the same store: ready again, and the message accepted before is still there.
    nats.restart().await;
    server.wait_ready().await;
    let r = server
        .post("/v1/notifications", notification("medium", 4))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let stored: Vec<String> = read_stream(&nats.url(), &server.stream)
        .await
        .iter()
        .map(|m| m.id())
        .collect();
    assert_eq!(stored, vec![first, id_of(&r)]);
    server.finish().await;
}

/// Readiness makes again the streams NATS lost: deleted under a live connection (found by
/// the STREAM.INFO of every fifth look) and gone with a restart on empty storage (found
/// by the reconnection). Meanwhile nothing is accepted that could not be stored.
#[tokio::test]
async fn streams_nats_lost_are_made_again() {
    let mut nats = NatsProcess::start(free_port()).await;
    let server = TestServer::start_unready(&nats.url(), |_| {}).await;
    server.wait_ready().await;
    for (n, lose) in ["deleted", "restarted empty"].into_iter().enumerate() {
        match lose {
            "deleted" => common::delete_streams(&nats.url(), &server.prefix).await,
            _ => nats.restart_empty().await,
        }
        let r = eventually(Duration::from_secs(10), || async {
            let r = server
                .post("/v1/notifications", notification("high", n))
                .await;
            match r.status {
                202 => Some(r),
                503 => None,
                other => panic!("{lose}: {other} {:?}", r.body),
            }
        })
        .await
        .unwrap_or_else(|| panic!("{lose}: nothing accepted within 10 s"));
        assert_eq!(server.get("/readyz").await.status, 200, "{lose}");
        // The stream made again holds what was accepted since, and that is stored.
        let stored = stored_ids(&nats.url(), &server.stream).await;
        assert_eq!(stored, HashSet::from([id_of(&r)]), "{lose}");
    }
    server.finish().await;
}

#[tokio::test]
async fn shutdown_answers_every_in_flight_request_and_loses_nothing_accepted() {
    let nats = NatsProcess::start(free_port()).await;
    let mut server = TestServer::start_unready(&nats.url(), |_| {}).await;
    server.wait_ready().await;

    // Freeze NATS so that every request is in flight when shutdown starts.
    nats.pause();
    let mut requests = spawn_requests(&server, "high", 40);
    requests.extend(spawn_requests(&server, "low", 40));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = server.shutdown_token();
    token.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    nats.resume();
    server.shutdown().await;

    let mut accepted = HashSet::new();
    for t in requests {
        let r = t
            .await
            .unwrap()
            .expect("every in-flight request is answered");
        assert_eq!(r.status, 202, "{:?}", r.body);
        accepted.insert(id_of(&r));
    }
    assert_eq!(accepted.len(), 80);
    assert_eq!(stored_ids(&nats.url(), &server.stream).await, accepted);
    server.finish().await;
}

/// Starts the real binary in `role` against `nats_url`; returns it and its base URL once
/// /readyz answers 200.
async fn spawn_dispatcher(
    role: &str,
    nats_url: &str,
    prefix: &str,
) -> (std::process::Child, String) {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args([role, "--listen", &format!("127.0.0.1:{port}")])
        // Its own operators' port: two binaries of parallel tests on the default collide.
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--nats-url", nats_url, "--prefix", prefix])
        .env("HERALD_SECRETS_KEY", common::TEST_SEALING_KEY)
        .args([
            "--readiness-interval",
            "100ms",
            "--auth",
            "off",
            "--migrate",
        ])
        .args(["--pg-schema", prefix])
        // Only `run` records and delivers, so only `run` takes MongoDB's flags and the
        // webhook secret (which `--auth off` requires).
        .args(if role == "run" {
            vec![
                "--mongo-db",
                prefix,
                "--webhook-secret",
                common::TEST_SECRET,
            ]
        } else {
            vec![]
        })
        .args(["--webhook-allow-nets", "127.0.0.0/8,::1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = common::HttpClient::new(false);
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if let Ok(r) = http
            .request("GET", &format!("{base}/readyz"), None, Default::default())
            .await
        {
            if r.status == 200 {
                return (child, base);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the dispatcher did not become ready");
}

/// Sends SIGTERM and returns the exit status.
async fn terminate(child: std::process::Child) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

async fn post(base: &str, body: String) -> TestResponse {
    common::HttpClient::new(false)
        .request(
            "POST",
            &format!("{base}/v1/notifications"),
            Some("application/json"),
            body.into(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn the_binary_exits_zero_on_sigterm_after_answering() {
    let nats = NatsProcess::start(free_port()).await;
    let prefix = common::unique_prefix();
    let (child, base) = spawn_dispatcher("serve", &nats.url(), &prefix).await;
    let r = post(&base, notification("medium", 1)).await;
    assert_eq!(r.status, 202);
    let exit = terminate(child).await;
    assert!(exit.success(), "exit status {exit:?}");
    let stored = read_stream(&nats.url(), &format!("{prefix}NOTIFY")).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id(), id_of(&r));
    common::delete_streams(&nats.url(), &prefix).await;
}

/// `dispatcher run`: the binary accepts and delivers in one process, then stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_binary_accepts_and_delivers() {
    let nats = NatsProcess::start(free_port()).await;
    let receiver = common::Receiver::start(|_| (200, Duration::ZERO)).await;
    let prefix = common::unique_prefix();
    let (child, base) = spawn_dispatcher("run", &nats.url(), &prefix).await;
    let r = post(&base, common::webhook_to(&receiver.url(), "high", 1)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].header("webhook-id"), id_of(&r));
    // The recorder runs in the same process: the status API comes to say delivered.
    let http = common::HttpClient::new(false);
    let url = format!("{base}/v1/notifications/{}", id_of(&r));
    let last = eventually(Duration::from_secs(10), || async {
        let s = http
            .request("GET", &url, None, Default::default())
            .await
            .unwrap();
        (s.status == 200 && s.body["status"] == "delivered").then_some(s)
    })
    .await;
    let last = last.expect("status reaches delivered");
    assert_eq!(last.body["attempts"], 1);
    assert_eq!(last.body["priority"], "high");
    let exit = terminate(child).await;
    assert!(exit.success(), "exit status {exit:?}");
    common::delete_streams(&nats.url(), &prefix).await;
}

/// `deliver` alone, through the same root as the binary: its /readyz follows its NATS
/// connection (unready while NATS is away, ready again after), it answers JSON like the
/// ingress, its /metrics holds delivery's families and not the ingress's, and it stops
/// within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_readiness_follows_nats_and_its_health_matches_the_ingress() {
    let nats_port = free_port();
    let health_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prefix = common::unique_prefix();
    let config = herald::config::DeliverConfig {
        nats: herald::config::NatsConfig {
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            prefix: prefix.clone(),
            ..Default::default()
        },
        pg: common::test_store(&prefix).pg,
        metrics_listen: health_addr,
        ..Default::default()
    };
    // No NATS yet: the role waits for it, alive and saying why it is not ready.
    let starting = tokio::spawn(herald::app::App::deliver(config));
    let base = format!("http://{health_addr}");
    let http = common::HttpClient::new(false);
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            for _ in 0..100 {
                if let Ok(r) = http.request("GET", &url, None, Default::default()).await {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{url} does not answer");
        }
    };
    assert_eq!(get("/healthz").await.status, 200);
    let waiting = get("/readyz").await;
    assert_eq!(waiting.status, 503);
    assert!(
        waiting.body["reason"]
            .as_str()
            .unwrap()
            .contains("starting"),
        "{:?}",
        waiting.body
    );
    let mut nats = NatsProcess::start(nats_port).await;
    let app = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("deliver starts once NATS is there")
        .unwrap()
        .expect("deliver starts");
    assert_eq!(app.local_addr(), Some(health_addr));
    let ready = get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(get("/healthz").await.body["status"], "ok");
    let metrics = get("/metrics").await;
    let text = metrics.body.as_str().expect("metrics are text");
    assert!(text.contains("herald_consumer_lag{"), "{text}");
    assert!(!text.contains("herald_ingest_accepted_total"), "{text}");
    assert_eq!(get("/nothing").await.status, 404);

    nats.kill();
    let unready = eventually(Duration::from_secs(5), || async {
        let r = get("/readyz").await;
        (r.status == 503).then_some(r)
    })
    .await;
    let unready = unready.expect("unready once NATS is gone");
    assert_eq!(unready.body["status"], "unready");
    assert!(unready.body["reason"].as_str().unwrap().contains("NATS"));
    assert_eq!(get("/healthz").await.status, 200, "alive all the same");

    nats.restart().await;
    let back = eventually(Duration::from_secs(10), || async {
        (get("/readyz").await.status == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "ready again once NATS is back");
    tokio::time::timeout(Duration::from_secs(35), app.shutdown())
        .await
        .expect("deliver stops within its deadline");
    common::delete_streams(&nats.url(), &prefix).await;
}
