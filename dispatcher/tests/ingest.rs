//! The ingest spine end to end against a real NATS JetStream: what a client is answered and
//! what the stream then holds.

mod common;

use std::collections::HashSet;

use common::{notification, TestServer};
use serde_json::Value;

#[tokio::test]
async fn single_request_is_stored_with_subject_and_headers() {
    let server = TestServer::start().await;
    let body = r#"{"priority":"high","channel":"email","recipient":"a@example.com","payload":{"subject":"Your code","code":"123456"},"metadata":{"flow":"otp"},"idempotency_key":"k1"}"#;
    let resp = server.post("/v1/notifications", body).await;
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    assert_eq!(resp.body["status"], "accepted");
    assert_eq!(resp.body["priority"], "high");
    let id = resp.body["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let stored = server.stream_messages().await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(m.subject, format!("{}notify.high.email", server.prefix));
    assert_eq!(m.headers["Nats-Msg-Id"], id);
    assert_eq!(m.headers["Herald-Priority"], "high");
    assert_eq!(m.headers["Herald-Channel"], "email");
    assert_eq!(m.body["id"], id.as_str());
    assert_eq!(m.body["v"], 1);
    assert_eq!(m.body["recipient"], "a@example.com");
    assert_eq!(m.body["payload"]["code"], "123456");
    assert_eq!(m.body["metadata"]["flow"], "otp");
    assert_eq!(m.body["idempotency_key"], "k1");
    assert!(m.body["accepted_at"].is_string());
    server.finish().await;
}

#[tokio::test]
async fn batch_accepts_the_good_items_and_reports_each_bad_one() {
    let server = TestServer::start().await;
    let body = format!(
        "[{},{},{},{}]",
        notification("low", 0),
        r#"{"priority":"urgent","channel":"sms","recipient":"+4915112345678","payload":{}}"#,
        notification("high", 2),
        r#"{"channel":"sms","recipient":"","payload":{}}"#,
    );
    let resp = server.post("/v1/notifications/batch", body).await;
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    assert_eq!(resp.body["accepted"], 2);
    assert_eq!(resp.body["rejected"], 2);
    let results = resp.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[0]["priority"], "low");
    assert_eq!(results[1]["status"], 422);
    assert_eq!(results[1]["error"]["field"], "priority");
    assert_eq!(results[2]["status"], 202);
    assert_eq!(results[3]["status"], 422);
    assert_eq!(results[3]["error"]["field"], "recipient");

    let accepted: HashSet<String> = [0, 2]
        .iter()
        .map(|&i| results[i]["id"].as_str().unwrap().to_string())
        .collect();
    let stored = server.stream_messages().await;
    let stored_ids: HashSet<String> = stored.iter().map(|m| m.id()).collect();
    assert_eq!(stored_ids, accepted);
    assert_eq!(stored.len(), 2);
    server.finish().await;
}

#[tokio::test]
async fn a_full_batch_of_a_thousand_is_stored_exactly() {
    let server = TestServer::start().await;
    let priorities = ["high", "medium", "low"];
    let items: Vec<String> = (0..1000)
        .map(|i| notification(priorities[i % 3], i))
        .collect();
    let resp = server
        .post("/v1/notifications/batch", format!("[{}]", items.join(",")))
        .await;
    assert_eq!(resp.status, 202);
    assert_eq!(resp.body["accepted"], 1000);
    let ids: HashSet<String> = resp.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let stored = server.stream_messages().await;
    assert_eq!(stored.len(), 1000);
    assert_eq!(stored.iter().map(|m| m.id()).collect::<HashSet<_>>(), ids);
    for m in &stored {
        let p = m.body["priority"].as_str().unwrap();
        assert_eq!(m.subject, format!("{}notify.{p}.webhook", server.prefix));
    }
    server.finish().await;
}

/// Every kind of bad input: its status, its error body, and nothing published.
#[tokio::test]
async fn bad_input_gets_its_status_and_error_and_publishes_nothing() {
    let server = TestServer::start_with(|c| {
        c.max_body = 4096;
        c.max_payload = 256;
        c.max_batch = 3;
    })
    .await;
    let big_payload = format!(
        r#"{{"channel":"sms","recipient":"+4915112345678","payload":{{"x":"{}"}}}}"#,
        "y".repeat(300)
    );
    // method, path, content type, body, expected status, error code, error field
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        String,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let mut cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            r#"{"channel":"#.into(),
            400,
            "malformed_json",
            None,
        ),
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            r#"{"priority":"urgent","channel":"sms","recipient":"+4915112345678","payload":{}}"#
                .into(),
            422,
            "invalid_field",
            Some("priority"),
        ),
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            r#"{"channel":"pigeon","recipient":"x","payload":{}}"#.into(),
            422,
            "invalid_field",
            Some("channel"),
        ),
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            r#"{"channel":"sms","recipient":" ","payload":{}}"#.into(),
            422,
            "invalid_field",
            Some("recipient"),
        ),
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            r#"{"channel":"sms","recipient":"+4915112345678","payload":"hi"}"#.into(),
            422,
            "invalid_field",
            Some("payload"),
        ),
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            big_payload,
            422,
            "invalid_field",
            Some("payload"),
        ),
        (
            "POST",
            "/v1/notifications",
            Some("application/json"),
            format!(
                r#"{{"channel":"sms","recipient":"+4915112345678","payload":{{"x":"{}"}}}}"#,
                "z".repeat(5000)
            ),
            413,
            "body_too_large",
            None,
        ),
        (
            "POST",
            "/v1/notifications",
            Some("text/plain"),
            notification("high", 1),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "POST",
            "/v1/notifications",
            None,
            notification("high", 1),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "POST",
            "/v1/nope",
            Some("application/json"),
            notification("high", 1),
            404,
            "not_found",
            None,
        ),
        (
            "PUT",
            "/v1/notifications",
            None,
            String::new(),
            405,
            "method_not_allowed",
            None,
        ),
        (
            "POST",
            "/healthz",
            Some("application/json"),
            String::new(),
            405,
            "method_not_allowed",
            None,
        ),
        (
            "POST",
            "/v1/notifications/batch",
            Some("application/json"),
            "[]".into(),
            422,
            "invalid_body",
            None,
        ),
        (
            "POST",
            "/v1/notifications/batch",
            Some("application/json"),
            notification("high", 1),
            422,
            "invalid_body",
            None,
        ),
        (
            "POST",
            "/v1/notifications/batch",
            Some("application/json"),
            "[1,".into(),
            400,
            "malformed_json",
            None,
        ),
        (
            "POST",
            "/v1/notifications/batch",
            Some("application/json"),
            format!("[{0},{0},{0},{0}]", notification("low", 1)),
            413,
            "batch_too_large",
            None,
        ),
    ];
    // SSRF policy: internal IP literals are refused at the door (loopback is allow-listed
    // in test_config, these ranges are not).
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1:8080/admin",
        "http://[fd00::1]/x",
    ] {
        cases.push((
            "POST",
            "/v1/notifications",
            Some("application/json"),
            format!(r#"{{"channel":"webhook","recipient":"{url}","payload":{{}}}}"#),
            422,
            "invalid_field",
            Some("recipient"),
        ));
    }
    for (method, path, ct, body, status, code, field) in cases {
        let resp = server
            .http
            .request(method, &server.url(path), ct, body.clone().into())
            .await
            .unwrap();
        let what = format!("{method} {path} {ct:?} {body:.60}: {:?}", resp.body);
        assert_eq!(resp.status, status, "{what}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(resp.body["error"]["code"], code, "{what}");
        assert!(
            resp.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        match field {
            Some(f) => assert_eq!(resp.body["error"]["field"], f, "{what}"),
            None if status != 413 => assert!(resp.body["error"].get("field").is_none(), "{what}"),
            None => {}
        }
        if status == 405 {
            assert!(resp.header("allow").is_some(), "{what}");
        }
        if status == 400 {
            let message = resp.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("line 1 column"), "{what}");
        }
    }
    // A batch where every item is invalid: 422, each item reported.
    let resp = server
        .post(
            "/v1/notifications/batch",
            r#"[{"channel":"sms"},{"channel":"x"}]"#,
        )
        .await;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.body["accepted"], 0);
    assert_eq!(resp.body["results"][1]["error"]["field"], "channel");

    assert!(server.stream_messages().await.is_empty());
    let text = server.metrics().await;
    assert!(
        text.contains(
            r#"herald_ingest_rejected_total{priority="unknown",reason="malformed_json"} 2"#
        ),
        "{text}"
    );
    server.finish().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_h2c() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/readyz").await.body["status"], "ready");

    // The same port speaks HTTP/2 with prior knowledge.
    let h2 = common::HttpClient::new(true);
    let resp = h2
        .request(
            "POST",
            &server.url("/v1/notifications"),
            Some("application/json"),
            notification("low", 1).into(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    let resp = server
        .post("/v1/notifications", notification("high", 2))
        .await;
    assert_eq!(resp.status, 202);

    let text = server.metrics().await;
    for needle in [
        r#"herald_ingest_accepted_total{priority="high"} 1"#,
        r#"herald_ingest_accepted_total{priority="low"} 1"#,
        r#"herald_queue_depth{priority="medium"} 0"#,
        "herald_publish_batch_size_count",
        r#"herald_publish_latency_seconds_count{priority="high"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert_eq!(server.stream_messages().await.len(), 2);
    server.finish().await;
}

#[tokio::test]
async fn concurrent_clients_get_exactly_their_messages_stored() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let http = server.http.clone();
        let url = server.url("/v1/notifications");
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let p = ["high", "medium", "low"][(c + i) % 3];
                let r = http
                    .request(
                        "POST",
                        &url,
                        Some("application/json"),
                        notification(p, i).into(),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status, 202);
                ids.push(r.body["id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut accepted = HashSet::new();
    for t in tasks {
        accepted.extend(t.await.unwrap());
    }
    assert_eq!(accepted.len(), 800);
    let stored: Vec<Value> = server
        .stream_messages()
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(stored.len(), 800);
    let stored_ids: HashSet<String> = stored
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored_ids, accepted);
    server.finish().await;
}

/// Slow clients are cut off: a body that stops arriving gets 408, headers that never
/// finish get the connection closed.
#[tokio::test]
async fn slow_clients_hit_the_read_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| {
        c.body_timeout = std::time::Duration::from_millis(300);
        c.header_timeout = std::time::Duration::from_millis(300);
    })
    .await;

    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(
        b"POST /v1/notifications HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"chan",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut response),
    )
    .await
    .expect("the server answers within the body timeout")
    .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"body_timeout""#), "{text}");

    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"POST /v1/notifications HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "connection with unfinished headers was not closed"
    );

    assert!(server.stream_messages().await.is_empty());
    server.finish().await;
}

/// Sends raw bytes on a new connection and reads until the server closes it (or 5 s).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut response),
    )
    .await
    .expect("the server answers and closes");
    String::from_utf8_lossy(&response).into_owned()
}

/// Slow-loris: headers dripped a byte at a time never finish a request; the connection is
/// closed at the header timeout although bytes keep coming, and an idle connection is
/// closed too. Oversized heads get 431. The server keeps serving through all of it.
#[tokio::test]
async fn slow_loris_idle_and_oversized_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = std::time::Duration::from_millis(500);
    let server = TestServer::start_with(|c| {
        c.header_timeout = timeout;
        c.max_header_bytes = 16 * 1024;
    })
    .await;

    let mut loris = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = b"POST /v1/notifications HTTP/1.1\r\nhost: x\r\nx-drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = std::time::Instant::now();
    let mut cut_after = None;
    for byte in head {
        if loris.write_all(&[*byte]).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(std::time::Duration::from_millis(50), loris.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(started.elapsed());
                break;
            }
            _ => {}
        }
    }
    let cut_after = cut_after.expect("the dripping connection was never closed");
    assert!(
        cut_after >= timeout && cut_after < timeout * 4,
        "closed after {cut_after:?}"
    );

    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(timeout * 4, idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed: {closed:?}"
    );

    let big = format!(
        "POST /v1/notifications HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    let answer = raw_exchange(server.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let ok = server
        .post("/v1/notifications", notification("high", 1))
        .await;
    assert_eq!(ok.status, 202, "{:?}", ok.body);
    assert_eq!(server.stream_messages().await.len(), 1);
    server.finish().await;
}

/// Over --max-connections, a new connection gets a complete 503 (JSON, Retry-After) and is
/// closed; once connections close, new ones are served again.
#[tokio::test]
async fn connections_over_the_limit_get_503_and_service_resumes() {
    let server = TestServer::start_with(|c| {
        c.max_connections = 4;
        c.header_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The accept loop takes the four before the fifth (one listener, in order).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let body = notification("high", 1);
    let request = format!(
        "POST /v1/notifications HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(server.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );

    drop(held);
    let mut served = None;
    for _ in 0..50 {
        let r = server.post("/v1/notifications", body.clone()).await;
        if r.status == 202 {
            served = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(served.is_some(), "service did not resume");
    let text = server.metrics().await;
    let refused_line = text
        .lines()
        .find(|l| l.starts_with("herald_http_connections_refused_total"))
        .expect("refusal counter exported");
    let refused: u64 = refused_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(refused >= 2, "{refused_line}");
    // Only the accepted requests were stored: never one from a refused connection.
    assert_eq!(server.stream_messages().await.len(), 1);
    server.finish().await;
}

/// One request through a pooled client of its own; answers the status, the `Keep-Alive`
/// header and the local address of the connection it went over (same address = reused).
async fn pooled_post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    server: &TestServer,
) -> (u16, Option<String>, std::net::SocketAddr) {
    use hyper_util::client::legacy::connect::HttpInfo;
    let request = http::Request::post(server.url("/v1/notifications"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(notification(
            "high", 1,
        ))))
        .unwrap();
    let response = client.request(request).await.expect("request completes");
    let local = response
        .extensions()
        .get::<HttpInfo>()
        .expect("the connector reports the connection")
        .local_addr();
    let keep_alive = response
        .headers()
        .get("keep-alive")
        .map(|v| v.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    (status, keep_alive, local)
}

fn pooled_client(
    h2c: bool,
) -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    // Pools keep idle connections for 90 s, like hyper's and Go's defaults.
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(h2c)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build_http()
}

/// A pooled client that sits idle past the old 5 s limit and past the header timeout
/// reuses its connection, over HTTP/1.1 and h2, and every request succeeds. HTTP/1.1
/// answers announce the idle timeout.
#[tokio::test]
async fn pooled_clients_reuse_connections_idle_past_the_header_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_timeout = std::time::Duration::from_millis(500);
        c.idle_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    for h2c in [false, true] {
        let client = pooled_client(h2c);
        let (status, keep_alive, first) = pooled_post(&client, &server).await;
        assert_eq!(status, 202);
        let expected = (!h2c).then(|| "timeout=60".to_string());
        assert_eq!(keep_alive, expected, "h2c {h2c}");
        tokio::time::sleep(std::time::Duration::from_millis(5_500)).await;
        let (status, _, second) = pooled_post(&client, &server).await;
        assert_eq!(status, 202, "h2c {h2c}");
        assert_eq!(first, second, "h2c {h2c}: the idle connection was reused");
    }
    assert_eq!(server.stream_messages().await.len(), 4);
    server.finish().await;
}

/// Past the idle timeout the server closes the connection gracefully: an HTTP/1.1 client
/// reads a clean end of stream (FIN, not a reset), and a pooled client (HTTP/1.1 or h2,
/// GOAWAY) notices and opens a new connection, so its next request succeeds too.
#[tokio::test]
async fn idle_connections_close_cleanly_and_pooled_clients_reconnect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = std::time::Duration::from_millis(700);
    let server = TestServer::start_with(|c| c.idle_timeout = idle).await;

    let body = notification("high", 1);
    let request = format!(
        "POST /v1/notifications HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let end = tokio::time::timeout(idle * 5, raw.read_to_end(&mut answer)).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(
        matches!(end, Ok(Ok(_))),
        "the idle close is a clean FIN: {end:?}"
    );
    assert!(
        waited >= idle,
        "closed after {waited:?}, before the idle timeout"
    );

    for h2c in [false, true] {
        let client = pooled_client(h2c);
        let (status, _, first) = pooled_post(&client, &server).await;
        assert_eq!(status, 202);
        tokio::time::sleep(idle * 3).await;
        let (status, _, second) = pooled_post(&client, &server).await;
        assert_eq!(status, 202, "h2c {h2c}");
        assert_ne!(
            first, second,
            "h2c {h2c}: a new connection after the idle close"
        );
    }
    let text = server.metrics().await;
    let closed: u64 = text
        .lines()
        .find(|l| l.starts_with(r#"herald_http_connections_closed_total{reason="idle"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("idle closes are counted");
    assert!(closed >= 3, "{closed}");
    assert_eq!(server.stream_messages().await.len(), 5);
    server.finish().await;
}

/// Low floods the door from many connections while high trickles in: high is accepted
/// every time, low is refused with a complete 429 `overloaded` (Retry-After, JSON), a
/// `Herald-Priority: low` request is refused before its body is read, and once the flood
/// stops low is admitted again. Every 202 is in the stream. The target delay is 1 ms, which
/// 32 closed-loop clients of a debug build exceed on any machine: this checks the wiring,
/// not the machine's speed (admission.rs tests the control law).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_flood_is_shed_while_high_is_accepted() {
    let server = TestServer::start_with(|c| {
        c.admission.enabled = true;
        c.admission.target = std::time::Duration::from_millis(1);
    })
    .await;
    let url = server.url("/v1/notifications");
    let flood_until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..32 {
        let http = common::HttpClient::new(false);
        let url = url.clone();
        flood.spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while std::time::Instant::now() < flood_until {
                n += 1;
                let body = notification("low", worker * 1_000_000 + n);
                let r = http
                    .request("POST", &url, Some("application/json"), body.into())
                    .await
                    .expect("request completes");
                if r.status == 429 {
                    assert_eq!(r.body["error"]["code"], "overloaded", "{:?}", r.body);
                    assert_eq!(r.header("retry-after"), Some("1"));
                }
                statuses.push(r.status);
            }
            statuses
        });
    }
    let mut high = Vec::new();
    let mut refused_unread = None;
    while std::time::Instant::now() < flood_until {
        let r = server
            .post("/v1/notifications", notification("high", 1))
            .await;
        high.push(r.status);
        if refused_unread.is_none() {
            // Not JSON at all: a 429 (not 400) shows the body was never parsed.
            let r = server
                .post_with(
                    "/v1/notifications",
                    &[("herald-priority", "low")],
                    bytes::Bytes::from_static(b"not json"),
                )
                .await;
            if r.status == 429 {
                refused_unread = Some(r.body.clone());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut low = Vec::new();
    while let Some(statuses) = flood.join_next().await {
        low.extend(statuses.unwrap());
    }
    assert!(high.len() > 20, "{}", high.len());
    assert!(high.iter().all(|&s| s == 202), "high refused: {high:?}");
    let low_refused = low.iter().filter(|&&s| s == 429).count();
    let low_accepted = low.iter().filter(|&&s| s == 202).count();
    assert!(
        low_refused > 0,
        "no low request was shed ({} sent)",
        low.len()
    );
    assert_eq!(low_refused + low_accepted, low.len(), "only 202 or 429");
    let unread = refused_unread.expect("a Herald-Priority: low request was shed unread");
    assert_eq!(unread["error"]["code"], "overloaded");

    // Calm again: low comes back within a few intervals.
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let page = server.metrics().await;
        if common::metric(&page, r#"herald_admission_fraction{priority="low"}"#) == Some(1.0) {
            let shed = common::metric(
                &page,
                r#"herald_ingest_rejected_total{priority="low",reason="overloaded"}"#,
            )
            .expect("shed requests are counted by priority and reason");
            assert!(shed >= low_refused as f64, "{shed} < {low_refused}");
            recovered = true;
            break;
        }
    }
    assert!(recovered, "low was not admitted again after the flood");
    let r = server
        .post("/v1/notifications", notification("low", 7))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    let stored = server.stream_messages().await.len();
    assert_eq!(stored, high.len() + low_accepted + 1, "every 202 is stored");
    server.finish().await;
}

/// With a zero target every interval counts as overloaded: low is shed wholly, then
/// medium, never high. A batch mixing the three then gets 202 for its high item and a
/// per-item 429 `overloaded` for the others, and nothing but the high item is stored.
#[tokio::test]
async fn a_batch_is_shed_item_by_item_by_class() {
    let server = TestServer::start_with(|c| {
        c.admission.enabled = true;
        c.admission.target = std::time::Duration::ZERO;
    })
    .await;
    let mut both_shed = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let page = server.metrics().await;
        let fraction = |p: &str| {
            common::metric(
                &page,
                &format!(r#"herald_admission_fraction{{priority="{p}"}}"#),
            )
        };
        if fraction("medium") == Some(0.0) {
            assert_eq!(fraction("low"), Some(0.0), "medium shed before low");
            assert_eq!(fraction("high"), Some(1.0));
            both_shed = true;
            break;
        }
    }
    assert!(
        both_shed,
        "medium and low were not shed under a zero target"
    );
    let batch = format!(
        "[{},{},{}]",
        notification("high", 1),
        notification("medium", 2),
        notification("low", 3)
    );
    let r = server.post("/v1/notifications/batch", batch).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 202);
    for item in &results[1..] {
        assert_eq!(item["status"], 429, "{item}");
        assert_eq!(item["error"]["code"], "overloaded", "{item}");
    }
    let stored = server.stream_messages().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body["priority"], "high");
    server.finish().await;
}
