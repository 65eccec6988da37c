//! State against the real PostgreSQL, Redis and MongoDB-protocol server (FerretDB here):
//! migrations, what the recorder writes (exactly, and once), the status API, tenants and
//! API keys, rate limits, and a recorder that outlives a store outage.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use common::{
    eventually, migrated_pool, start_recorder, start_recorder_with, test_store, webhook_to,
    Receiver, Reply, Stack, TcpProxy, TestServer,
};
use futures::StreamExt;
use herald::config::AuthMode;
use mongodb::bson::{doc, Document};
use sqlx::PgPool;

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn collection(prefix: &str, name: &str) -> mongodb::Collection<Document> {
    let client = herald::recorder::mongo::client(&common::mongo_url())
        .await
        .unwrap();
    client.database(prefix).collection(name)
}

async fn messages(prefix: &str) -> mongodb::Collection<Document> {
    collection(prefix, herald::recorder::mongo::COLLECTION).await
}

/// Documents of `messages` by `_id`.
async fn mongo_docs(prefix: &str) -> HashMap<String, Document> {
    all(messages(prefix).await).await
}

/// The delivery log: entries per notification id, in stream order.
async fn deliveries(prefix: &str) -> HashMap<String, Vec<Document>> {
    let coll = collection(prefix, herald::recorder::mongo::DELIVERIES).await;
    let mut by_id: HashMap<String, Vec<Document>> = HashMap::new();
    for (_, d) in all(coll).await {
        by_id
            .entry(d.get_str("notification_id").unwrap().to_string())
            .or_default()
            .push(d);
    }
    for entries in by_id.values_mut() {
        entries.sort_by_key(|e| e.get_i64("seq").unwrap());
    }
    by_id
}

async fn all(coll: mongodb::Collection<Document>) -> HashMap<String, Document> {
    use futures::TryStreamExt;
    coll.find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.get_str("_id").unwrap().to_string(), d))
        .collect()
}

#[tokio::test]
async fn migrations_apply_on_an_empty_schema_and_again_change_nothing() {
    let prefix = common::unique_prefix();
    let store = test_store(&prefix);
    let pool = migrated_pool(&store).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&prefix)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "api_keys",
            "dead_letters",
            "delivery_attempts",
            "endpoint_secrets",
            "notifications",
            "tenants"
        ]
    );
    let applied = count(&pool, "SELECT count(*) FROM _sqlx_migrations").await;
    assert_eq!(applied, herald::postgres::MIGRATOR.iter().count() as i64);
    // A second run (another instance starting with --migrate) is a no-op.
    herald::postgres::migrate(&pool, &prefix).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM _sqlx_migrations").await,
        applied
    );
    pool.close().await;
    common::delete_streams(&common::nats_url(), &prefix).await;
}

/// Ten notifications delivered at once, ten after one 503, ten refused for good: rows,
/// attempts, dead letters, documents and the status API all say exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_rows_and_documents_match_what_happened() {
    let receiver = Receiver::replying(|_, req| {
        let (status, body) = match req.uri.path() {
            "/flaky" if req.header("herald-attempt") == "1" => (503, "busy"),
            // An endpoint of its own each: a 410 disables the URL that answered it.
            bad if bad.starts_with("/bad") => (410, "gone"),
            _ => (200, "{\"ok\":true}"),
        };
        Reply {
            status,
            delay: Duration::ZERO,
            retry_after: None,
            body,
        }
    })
    .await;
    let mut stack = Stack::start(|_| {}).await;
    let pool = stack.start_recording().await;
    let base = format!("http://{}", receiver.addr);
    let mut expected: HashMap<String, (&str, i64, &str, usize)> = HashMap::new();
    let priorities = ["high", "medium", "low"];
    for i in 0..30 {
        let (path, status, attempts) = match i % 3 {
            0 => ("/ok", "delivered", 1),
            1 => ("/flaky", "delivered", 2),
            _ => ("/bad", "dead", 1),
        };
        let priority = priorities[(i / 3) % 3];
        let path = if path == "/bad" {
            format!("/bad/{i}")
        } else {
            path.to_string()
        };
        let id = stack
            .accept(webhook_to(&format!("{base}{path}"), priority, i))
            .await;
        expected.insert(id, (status, attempts, priority, i));
    }
    // 10 delivered + 10 (retrying, delivered) + 10 dead.
    let events = stack.wait_events(40).await;
    assert_eq!(events.len(), 40, "{events:?}");
    let recorded = eventually(Duration::from_secs(20), || async {
        let attempts = count(&pool, "SELECT count(*) FROM delivery_attempts").await;
        let final_rows = count(
            &pool,
            "SELECT count(*) FROM notifications WHERE status IN ('delivered', 'dead') AND recipient IS NOT NULL",
        )
        .await;
        (attempts == 40 && final_rows == 30).then_some(())
    })
    .await;
    assert!(recorded.is_some(), "the recorder did not catch up");

    type Row = (String, String, i32, String, Option<i32>, bool, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id::text, status, attempts, priority, last_status, delivered_at IS NOT NULL, recipient
         FROM notifications",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 30);
    // Each row names the trace its webhooks carried.
    let traces: HashMap<String, Option<String>> =
        sqlx::query_as("SELECT id::text, trace_id FROM notifications")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for delivery in receiver.received() {
        let sent = herald::trace::TraceParent::parse(&delivery.header("traceparent")).unwrap();
        let recorded = traces[&delivery.header("webhook-id")].as_deref();
        assert_eq!(recorded, Some(sent.trace_id_hex().as_str()));
    }
    for (id, status, attempts, priority, last_status, has_delivered_at, recipient) in &rows {
        let (want_status, want_attempts, want_priority, _) = expected[id];
        assert_eq!(status, want_status, "{id}");
        assert_eq!(i64::from(*attempts), want_attempts, "{id}");
        assert_eq!(priority, want_priority, "{id}");
        assert_eq!(*has_delivered_at, want_status == "delivered", "{id}");
        assert!(recipient.starts_with(&base));
        if recipient.ends_with("/flaky") {
            assert_eq!(*last_status, Some(503), "the retry's status is kept");
        }
        if recipient.contains("/bad/") {
            assert_eq!(*last_status, Some(410));
        }
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 10);
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM delivery_attempts GROUP BY outcome ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        [
            ("dead".to_string(), 10),
            ("delivered".to_string(), 20),
            ("retrying".to_string(), 10)
        ]
    );

    // MongoDB: one document per notification, payload as sent, one log entry per event.
    let (docs, log) = eventually(Duration::from_secs(20), || async {
        let docs = mongo_docs(&stack.server.prefix).await;
        let log = deliveries(&stack.server.prefix).await;
        let logged: usize = log.values().map(Vec::len).sum();
        (docs.len() == 30 && logged == 40).then_some((docs, log))
    })
    .await
    .expect("documents recorded");
    for (id, (status, attempts, priority, n)) in &expected {
        let d = &docs[id];
        assert_eq!(d.get_str("priority").unwrap(), *priority);
        assert_eq!(d.get_document("payload").unwrap(), &doc! { "n": *n as i32 });
        let entries = &log[id];
        assert_eq!(entries.len() as i64, *attempts, "{id}");
        let last = entries.last().unwrap();
        assert_eq!(last.get_str("event").unwrap(), *status);
        assert_eq!(last.get_i64("attempt").unwrap(), *attempts);
        let answer = if *status == "delivered" {
            "{\"ok\":true}"
        } else {
            "gone"
        };
        assert_eq!(last.get_str("response"), Ok(answer), "{id}");
    }

    // The status API, by id and as pages.
    for (id, (status, attempts, _, _)) in &expected {
        let r = stack.server.get(&format!("/v1/notifications/{id}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["status"], *status);
        assert_eq!(r.body["attempts"], *attempts);
    }
    let mut seen = Vec::new();
    let mut path = String::from("/v1/notifications?limit=7");
    loop {
        let page = stack.server.get(&path).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/notifications?limit=7&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30, "every notification exactly once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 30);
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first, "pages run newest first");
    let dead = stack
        .server
        .get("/v1/notifications?status=dead&priority=high&limit=100")
        .await;
    let want_dead_high = expected
        .values()
        .filter(|(s, _, p, _)| *s == "dead" && *p == "high")
        .count();
    assert_eq!(dead.body["items"].as_array().unwrap().len(), want_dead_high);
    let bad = stack.server.get("/v1/notifications?status=lost").await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["error"]["field"], "status");
    let unknown = stack
        .server
        .get(&format!("/v1/notifications/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, 404);

    // The attempt history, oldest first: what was sent, how it ended, how long it took,
    // and for a retry when the next attempt was due.
    for (id, (_, _, _, n)) in &expected {
        let r = stack
            .server
            .get(&format!("/v1/notifications/{id}/attempts"))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["id"], id.as_str());
        let attempts = r.body["attempts"].as_array().unwrap();
        // Each attempt's answer: its status code and body, apart from the error.
        let summary: Vec<(i64, &str, Option<i64>, Option<&str>)> = attempts
            .iter()
            .map(|a| {
                (
                    a["attempt"].as_i64().unwrap(),
                    a["outcome"].as_str().unwrap(),
                    a["status_code"].as_i64(),
                    a["response"].as_str(),
                )
            })
            .collect();
        let ok = Some("{\"ok\":true}");
        let want: &[(i64, &str, Option<i64>, Option<&str>)] = match n % 3 {
            0 => &[(1, "delivered", Some(200), ok)],
            1 => &[
                (1, "retrying", Some(503), Some("busy")),
                (2, "delivered", Some(200), ok),
            ],
            _ => &[(1, "dead", Some(410), Some("gone"))],
        };
        assert_eq!(summary, want, "{id}");
        for a in attempts {
            assert!(a["duration_ms"].as_i64().is_some_and(|ms| ms >= 0), "{a}");
            let retrying = a["outcome"] == "retrying";
            assert_eq!(a["next_attempt_at"].is_string(), retrying, "{a}");
            assert_eq!(a["error"].is_string(), a["outcome"] != "delivered", "{a}");
            if retrying {
                let at: chrono::DateTime<chrono::Utc> = a["at"].as_str().unwrap().parse().unwrap();
                let next: chrono::DateTime<chrono::Utc> =
                    a["next_attempt_at"].as_str().unwrap().parse().unwrap();
                // Full jitter: the wait before attempt 2 is anywhere in [0, 100 ms) under
                // the tests' policy (100ms:400ms:30s), so it can round to 0 ms.
                let wait = next - at;
                assert!(
                    wait >= chrono::Duration::zero() && wait < chrono::Duration::milliseconds(100),
                    "{a}"
                );
            }
        }
        let entries = &log[id];
        assert!(
            entries.iter().all(|e| e.get_i64("duration_ms").is_ok()),
            "{entries:?}"
        );
    }
    let none = stack
        .server
        .get(&format!(
            "/v1/notifications/{}/attempts",
            uuid::Uuid::now_v7()
        ))
        .await;
    assert_eq!(none.status, 404);
    assert_eq!(none.body["error"]["code"], "not_found");
    let malformed = stack.server.get("/v1/notifications/nope/attempts").await;
    assert_eq!(
        malformed.body["error"]["field"], "id",
        "{:?}",
        malformed.body
    );

    pool.close().await;
    stack.finish().await;
}

/// A recorder that starts over from the first message (new consumers: every batch is
/// delivered again) leaves rows, attempts and documents exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_batch_changes_nothing_twice() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    let pool = stack.start_recording().await;
    for i in 0..25 {
        stack.accept(webhook_to(&receiver.url(), "medium", i)).await;
    }
    stack.wait_events(25).await;
    let prefix = stack.server.prefix.clone();
    let snapshot = || async {
        let rows: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT id::text, status, attempts FROM notifications ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let attempts = count(&pool, "SELECT count(*) FROM delivery_attempts").await;
        let docs = mongo_docs(&prefix).await;
        let logs: usize = deliveries(&prefix).await.values().map(Vec::len).sum();
        (rows, attempts, docs.len(), logs)
    };
    let first = eventually(Duration::from_secs(20), || async {
        let s = snapshot().await;
        (s.0.len() == 25
            && s.0.iter().all(|r| r.1 == "delivered")
            && s.1 == 25
            && s.2 == 25
            && s.3 == 25)
            .then_some(s)
    })
    .await
    .expect("recorded once");

    stack.stop_recording().await;
    let js = async_nats::jetstream::new(async_nats::connect(&stack.server.nats_url).await.unwrap());
    for (stream, source) in [("NOTIFY", "notify"), ("EVENTS", "events")] {
        let stream = js.get_stream(format!("{prefix}{stream}")).await.unwrap();
        for store in ["postgres", "mongo"] {
            stream
                .delete_consumer(&format!("{prefix}record-{store}-{source}"))
                .await
                .unwrap();
        }
    }
    let store = test_store(&prefix);
    stack.recorder = Some(start_recorder(&stack.server.nats_url, &prefix, &store).await);
    // Wait until the new consumers have written and acknowledged everything again.
    let caught_up = eventually(Duration::from_secs(20), || async {
        for (stream, source) in [("NOTIFY", "notify"), ("EVENTS", "events")] {
            let stream = js.get_stream(format!("{prefix}{stream}")).await.ok()?;
            for store in ["postgres", "mongo"] {
                let mut c: async_nats::jetstream::consumer::PullConsumer = stream
                    .get_consumer(&format!("{prefix}record-{store}-{source}"))
                    .await
                    .ok()?;
                let info = c.info().await.ok()?;
                if info.num_pending > 0
                    || info.num_ack_pending > 0
                    || info.delivered.stream_sequence == 0
                {
                    return None;
                }
            }
        }
        Some(())
    })
    .await;
    assert!(caught_up.is_some(), "the second recorder did not finish");
    assert_eq!(snapshot().await, first);
    pool.close().await;
    stack.finish().await;
}

/// Creates a tenant with one key on the server's schema; returns (tenant id, key).
async fn tenant(pool: &PgPool, name: &str, rate: Option<u32>) -> (uuid::Uuid, String) {
    let limits = herald::tenants::TenantLimits {
        rate_per_sec: rate,
        burst: rate,
        max_payload: None,
    };
    let t = herald::tenants::create_tenant(pool, &common::sealing_key(), name, limits)
        .await
        .unwrap();
    let key = herald::tenants::create_key(pool, name).await.unwrap();
    (t.id, key.key)
}

async fn as_tenant(
    server: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> common::TestResponse {
    let bearer = format!("Bearer {key}");
    server
        .http
        .request_with(
            method,
            &server.url(path),
            body.as_ref().map(|_| "application/json"),
            &[("authorization", bearer.as_str())],
            body.unwrap_or_default().into(),
        )
        .await
        .unwrap()
}

async fn auth_server(
    adjust: impl FnOnce(&mut herald::config::ServeConfig),
) -> (TestServer, PgPool) {
    let server = TestServer::start_with(|c| {
        c.auth = AuthMode::Required;
        c.key_cache_ttl = Duration::from_millis(200);
        adjust(c);
    })
    .await;
    let pool = migrated_pool(&test_store(&server.prefix)).await;
    (server, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_notifications_and_dead_letters() {
    let receiver = Receiver::start(|_| (410, Duration::ZERO)).await;
    let (server, pool) = auth_server(|_| {}).await;
    let (a_id, a) = tenant(&pool, "acme", None).await;
    let (_, b) = tenant(&pool, "globex", None).await;
    let mut stack = Stack::start_with(server, Default::default(), |_| {}).await;
    stack.start_recording().await;
    let server = &stack.server;

    // The same idempotency key in two tenants: two notifications.
    let body = |n: usize| {
        Some(format!(
            r#"{{"priority":"high","channel":"webhook","recipient":"{}","payload":{{"n":{n}}},"idempotency_key":"k1"}}"#,
            receiver.url()
        ))
    };
    let ra = as_tenant(server, &a, "POST", "/v1/notifications", body(1)).await;
    let rb = as_tenant(server, &b, "POST", "/v1/notifications", body(1)).await;
    assert_eq!(
        (ra.status, rb.status),
        (202, 202),
        "{:?} {:?}",
        ra.body,
        rb.body
    );
    assert_ne!(ra.body["id"], rb.body["id"]);
    let id_a = ra.body["id"].as_str().unwrap().to_string();
    let stored = server.stream_messages().await;
    assert_eq!(stored[0].body["tenant"], a_id.to_string());

    // 410 is permanent: both die; each tenant sees its own only.
    let dead = eventually(Duration::from_secs(20), || async {
        let r = as_tenant(
            server,
            &a,
            "GET",
            &format!("/v1/notifications/{id_a}"),
            None,
        )
        .await;
        (r.status == 200 && r.body["status"] == "dead").then_some(r)
    })
    .await;
    assert!(dead.is_some(), "tenant A sees its dead notification");
    let own = as_tenant(
        server,
        &a,
        "GET",
        &format!("/v1/notifications/{id_a}/attempts"),
        None,
    )
    .await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    assert_eq!(own.body["attempts"][0]["outcome"], "dead");
    for (method, path) in [
        ("GET", format!("/v1/notifications/{id_a}")),
        ("GET", format!("/v1/notifications/{id_a}/attempts")),
        ("POST", format!("/v1/dlq/{id_a}/replay")),
        ("DELETE", format!("/v1/dlq/{id_a}")),
    ] {
        let r = as_tenant(server, &b, method, &path, None).await;
        assert_eq!(r.status, 404, "{method} {path} as B: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "not_found");
    }
    // The list trails ingest by the recorder's lag: A's row being dead says nothing of B's.
    let b_list = eventually(Duration::from_secs(10), || async {
        let r = as_tenant(server, &b, "GET", "/v1/notifications", None).await;
        (r.body["items"].as_array().map_or(0, Vec::len) > 0).then_some(r)
    })
    .await
    .expect("B's notification is recorded");
    let b_ids: Vec<&str> = b_list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(b_ids, [rb.body["id"].as_str().unwrap()]);
    let b_dlq = eventually(Duration::from_secs(10), || async {
        let r = as_tenant(server, &b, "GET", "/v1/dlq", None).await;
        (r.body["items"].as_array().map_or(0, Vec::len) == 1).then_some(r)
    })
    .await
    .expect("B's dead letter listed");
    assert_eq!(b_dlq.body["items"][0]["id"], rb.body["id"]);
    let a_dlq = as_tenant(server, &a, "GET", "/v1/dlq", None).await;
    assert_eq!(a_dlq.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(a_dlq.body["items"][0]["id"], id_a.as_str());
    // Each tenant's summary counts its own traffic only.
    for key in [&a, &b] {
        let summary = as_tenant(server, key, "GET", "/v1/summary?window=300", None).await;
        assert_eq!(summary.status, 200, "{:?}", summary.body);
        assert_eq!(summary.body["window_seconds"], 300);
        let high = &summary.body["priorities"][0];
        assert_eq!(high["priority"], "high", "{:?}", summary.body);
        assert_eq!((&high["accepted"], &high["dead"]), (&1.into(), &1.into()));
        assert_eq!(summary.body["priorities"][2]["accepted"], 0);
        assert_eq!(summary.body["dead_letters"], 1);
    }
    let bad = as_tenant(server, &a, "GET", "/v1/summary?window=0", None).await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["error"]["field"], "window");
    // A can delete its own; its summary says so, and B's is unchanged.
    let del = as_tenant(server, &a, "DELETE", &format!("/v1/dlq/{id_a}"), None).await;
    assert_eq!(del.status, 204);
    let dead_letters = |key: &String| {
        let key = key.clone();
        async move {
            as_tenant(server, &key, "GET", "/v1/summary", None)
                .await
                .body["dead_letters"]
                .clone()
        }
    };
    assert_eq!(dead_letters(&a).await, 0);
    assert_eq!(dead_letters(&b).await, 1);
    stack.finish().await;
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_get_401() {
    let (server, pool) = auth_server(|_| {}).await;
    let (_, key) = tenant(&pool, "initech", None).await;
    let body = Some(common::notification("high", 1));
    let none = server
        .post("/v1/notifications", common::notification("high", 1))
        .await;
    assert_eq!(none.status, 401);
    assert_eq!(none.body["error"]["code"], "unauthorized");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"herald\"")
    );
    let wrong = as_tenant(
        &server,
        "hk_not-a-key",
        "POST",
        "/v1/notifications",
        body.clone(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let list = server.get("/v1/notifications").await;
    assert_eq!(list.status, 401, "reads need a key too");
    // The probes stay open. The metrics count every tenant's traffic: the API port does
    // not serve them, the operators' port does.
    assert_eq!(server.get("/healthz").await.status, 200);
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 404, "{:?}", metrics.body);
    assert_eq!(metrics.body["error"]["code"], "not_found");
    assert!(server
        .metrics()
        .await
        .contains("herald_ingest_rejected_total"));

    let ok = as_tenant(&server, &key, "POST", "/v1/notifications", body.clone()).await;
    assert_eq!(ok.status, 202, "{:?}", ok.body);
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    herald::tenants::revoke_key(&pool, key_id).await.unwrap();
    // Revocation reaches the ingress within --key-cache-ttl (200 ms here).
    let accepted = std::cell::Cell::new(1);
    let refused = eventually(Duration::from_secs(5), || {
        let r = as_tenant(&server, &key, "POST", "/v1/notifications", body.clone());
        let accepted = &accepted;
        async move {
            let r = r.await;
            match r.status {
                401 => Some(r),
                202 => {
                    accepted.set(accepted.get() + 1);
                    None
                }
                other => panic!("unexpected {other}: {:?}", r.body),
            }
        }
    })
    .await;
    assert!(refused.is_some(), "a revoked key stops working");
    assert_eq!(
        server.stream_messages().await.len(),
        accepted.get(),
        "what was stored is exactly what was answered 202"
    );
    server.finish().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_its_headers() {
    let (server, pool) = auth_server(|_| {}).await;
    let (_, key) = tenant(&pool, "hooli", Some(5)).await;
    let body = Some(common::notification("low", 1));
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = as_tenant(&server, &key, "POST", "/v1/notifications", body.clone()).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        assert_eq!(r.header("ratelimit-limit"), Some("5"));
        remaining.push(
            r.header("ratelimit-remaining")
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    // Refill is 5/s, so a slow run may have regained a token; never more than taken.
    assert!(
        remaining.windows(2).all(|w| w[1] <= w[0] + 1),
        "{remaining:?}"
    );
    assert!(remaining[4] <= 1, "{remaining:?}");
    let limited = eventually(Duration::from_secs(2), || async {
        let r = as_tenant(&server, &key, "POST", "/v1/notifications", body.clone()).await;
        (r.status == 429).then_some(r)
    })
    .await
    .expect("the bucket runs dry");
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    // A batch larger than the burst can never pass: 429 that says so.
    let batch = format!("[{}]", vec![common::notification("low", 1); 6].join(","));
    let big = as_tenant(
        &server,
        &key,
        "POST",
        "/v1/notifications/batch",
        Some(batch),
    )
    .await;
    assert_eq!(big.status, 429);
    assert!(big.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("burst"));
    // Everything stored was answered 202.
    let stored = server.stream_messages().await.len();
    assert!((5..=6).contains(&stored), "{stored}");
    server.finish().await;
}

/// A tenant's own payload limit applies to it alone, in single requests and batch items;
/// tenants without one get the server's `--max-payload`.
#[tokio::test]
async fn a_tenant_payload_limit_applies_to_that_tenant_only() {
    let (server, pool) = auth_server(|c| c.max_payload = 1024).await;
    let small = herald::tenants::TenantLimits {
        max_payload: Some(64),
        ..Default::default()
    };
    herald::tenants::create_tenant(&pool, &common::sealing_key(), "tiny", small)
        .await
        .unwrap();
    let tiny = herald::tenants::create_key(&pool, "tiny")
        .await
        .unwrap()
        .key;
    let (_, roomy) = tenant(&pool, "roomy", None).await;
    let sized = |bytes: usize| {
        format!(
            r#"{{"channel":"sms","recipient":"+4915112345678","payload":{{"x":"{}"}}}}"#,
            "y".repeat(bytes - 8)
        )
    };
    let r = as_tenant(&server, &tiny, "POST", "/v1/notifications", Some(sized(64))).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = as_tenant(&server, &tiny, "POST", "/v1/notifications", Some(sized(65))).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["error"]["field"], "payload");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit of 64 bytes"));
    let batch = format!("[{},{}]", sized(10), sized(200));
    let r = as_tenant(
        &server,
        &tiny,
        "POST",
        "/v1/notifications/batch",
        Some(batch),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["status"], 202, "{:?}", r.body);
    assert_eq!(r.body["results"][1]["error"]["field"], "payload");
    // The other tenant has the server's limit: 200 passes, 1025 does not.
    let r = as_tenant(
        &server,
        &roomy,
        "POST",
        "/v1/notifications",
        Some(sized(200)),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = as_tenant(
        &server,
        &roomy,
        "POST",
        "/v1/notifications",
        Some(sized(1025)),
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(server.stream_messages().await.len(), 3);
    pool.close().await;
    server.finish().await;
}

/// PostgreSQL and MongoDB cut off while notifications arrive: nothing is recorded, nothing
/// is lost; once they are back, the recorder catches up by itself.
/// A payload the store refuses (FerretDB takes no nested arrays; MongoDB does) does not
/// stall recording: its document is kept with the payload as JSON text, and the
/// notifications after it are recorded as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_the_store_refuses_does_not_stall_recording() {
    let server = TestServer::start().await;
    let prefix = server.prefix.clone();
    let store = test_store(&prefix);
    let pool = migrated_pool(&store).await;
    let recorder = start_recorder(&server.nats_url, &prefix, &store).await;
    let nested = r#"{"priority":"low","channel":"webhook","recipient":"http://127.0.0.1:9/x","payload":{"grid":[[1,2],[3,[4]]],"ok":true},"metadata":{"m":[[0]]}}"#;
    let refused = server.post("/v1/notifications", nested).await;
    assert_eq!(refused.status, 202, "{:?}", refused.body);
    let refused = refused.body["id"].as_str().unwrap().to_string();
    let mut later = Vec::new();
    for i in 0..5 {
        let r = server
            .post(
                "/v1/notifications",
                webhook_to("http://127.0.0.1:9/x", "low", i),
            )
            .await;
        later.push(r.body["id"].as_str().unwrap().to_string());
    }
    let docs = eventually(Duration::from_secs(20), || async {
        let docs = mongo_docs(&prefix).await;
        (docs.len() == 6).then_some(docs)
    })
    .await
    .expect("every notification recorded in MongoDB");
    assert!(later.iter().all(|id| docs.contains_key(id)));
    let d = &docs[&refused];
    match d.get("payload") {
        // A server that takes nested arrays (MongoDB) stores the payload as it is.
        Some(payload) => assert_eq!(
            payload
                .as_document()
                .unwrap()
                .get_array("grid")
                .unwrap()
                .len(),
            2
        ),
        // FerretDB refuses it: the payload is kept as the JSON that was sent.
        None => {
            let text = d.get_str("payload_json").unwrap();
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(value["grid"][1][1][0], 4);
            assert_eq!(d.get_str("metadata_json").unwrap(), r#"{"m":[[0]]}"#);
        }
    }
    recorder.shutdown().await;
    pool.close().await;
    server.finish().await;
}

/// Waits until PostgreSQL's rows and MongoDB's documents are exactly `ids`.
async fn both_stores_caught_up(pool: &PgPool, prefix: &str, ids: &HashSet<String>) {
    let rows = eventually(Duration::from_secs(30), || async {
        let rows: Vec<String> = sqlx::query_scalar("SELECT id::text FROM notifications")
            .fetch_all(pool)
            .await
            .unwrap();
        (rows.len() == ids.len()).then_some(rows)
    })
    .await
    .expect("PostgreSQL caught up");
    assert_eq!(&rows.into_iter().collect::<HashSet<_>>(), ids);
    let docs = eventually(Duration::from_secs(30), || async {
        let docs = mongo_docs(prefix).await;
        (docs.len() == ids.len()).then_some(docs)
    })
    .await
    .expect("MongoDB caught up");
    assert_eq!(&docs.keys().cloned().collect::<HashSet<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_catches_up_after_a_store_outage() {
    let pg_proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mongo_proxy = TcpProxy::start("127.0.0.1:27017".parse().unwrap()).await;
    let server = TestServer::start().await;
    let prefix = server.prefix.clone();
    let direct = test_store(&prefix);
    let pool = migrated_pool(&direct).await;
    let mut through = direct.clone();
    through.pg.database_url = format!("postgres://root@{}/test", pg_proxy.addr);
    through.mongo_url = format!("mongodb://{}/?directConnection=true", mongo_proxy.addr);
    let recorder = start_recorder(&server.nats_url, &prefix, &through).await;

    pg_proxy.cut();
    mongo_proxy.cut();
    let mut ids = HashSet::new();
    for i in 0..40 {
        let r = server
            .post(
                "/v1/notifications",
                webhook_to("http://127.0.0.1:9/x", "high", i),
            )
            .await;
        assert_eq!(r.status, 202, "ingest does not depend on the stores");
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM notifications").await, 0);
    pg_proxy.restore();
    mongo_proxy.restore();
    both_stores_caught_up(&pool, &prefix, &ids).await;
    recorder.shutdown().await;
    pool.close().await;
    server.finish().await;
}

/// `--record-consumers shared`: one consumer per stream feeds both stores, so a store that
/// is down holds back the other (the trade for one delivery and ack per message fewer),
/// a batch is written again only into the store that failed, and both catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_recorder_consumers_hold_both_stores_back_and_catch_up() {
    let mongo_proxy = TcpProxy::start("127.0.0.1:27017".parse().unwrap()).await;
    let server = TestServer::start().await;
    let prefix = server.prefix.clone();
    let direct = test_store(&prefix);
    let pool = migrated_pool(&direct).await;
    let mut through = direct.clone();
    through.mongo_url = format!("mongodb://{}/?directConnection=true", mongo_proxy.addr);
    let recorder = start_recorder_with(
        &server.nats_url,
        &prefix,
        &through,
        herald::config::RecordConsumers::Shared,
    )
    .await;
    let js = jetstream::new(async_nats::connect(&server.nats_url).await.unwrap());
    let mut consumers = Vec::new();
    for stream in ["NOTIFY", "EVENTS"] {
        let mut names = js
            .get_stream(format!("{prefix}{stream}"))
            .await
            .unwrap()
            .consumer_names();
        while let Some(name) = names.next().await {
            consumers.push(name.unwrap());
        }
    }
    assert!(
        consumers.contains(&format!("{prefix}record-shared-notify"))
            && consumers.contains(&format!("{prefix}record-shared-events"))
            && !consumers.iter().any(|c| c.contains("record-postgres")),
        "{consumers:?}"
    );

    mongo_proxy.cut();
    let post = |i| {
        let server = &server;
        async move {
            let r = server
                .post(
                    "/v1/notifications",
                    webhook_to("http://127.0.0.1:9/x", "high", i),
                )
                .await;
            assert_eq!(r.status, 202, "ingest does not depend on the stores");
            r.body["id"].as_str().unwrap().to_string()
        }
    };
    let mut ids = HashSet::from([post(0).await]);
    // The first batch commits into PostgreSQL while MongoDB's write is retried ...
    eventually(Duration::from_secs(20), || async {
        (count(&pool, "SELECT count(*) FROM notifications").await == 1).then_some(())
    })
    .await
    .expect("PostgreSQL wrote the first batch");
    for i in 1..40 {
        ids.insert(post(i).await);
    }
    // ... and nothing after it is recorded anywhere while MongoDB is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM notifications").await, 1);
    mongo_proxy.restore();
    both_stores_caught_up(&pool, &prefix, &ids).await;
    recorder.shutdown().await;
    pool.close().await;
    server.finish().await;
}

/// The TTL index that expires message documents (`--message-retention`). MongoDB takes it;
/// FerretDB v1 refuses `expireAfterSeconds` (a documented difference: the recorder logs
/// it and goes on, and expiry must then be done outside Herald). The test asserts
/// whichever behaviour the server in front of it must have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_have_a_retention_index_where_the_server_supports_one() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    stack.start_recording().await;
    stack.accept(webhook_to(&receiver.url(), "low", 1)).await;
    let prefix = stack.server.prefix.clone();
    let indexes = eventually(Duration::from_secs(20), || async {
        use futures::TryStreamExt;
        let coll = messages(&prefix).await;
        let list: Vec<mongodb::IndexModel> =
            coll.list_indexes().await.ok()?.try_collect().await.ok()?;
        (list.len() >= 2).then_some(list)
    })
    .await
    .expect("indexes created");
    let name_of = |i: &mongodb::IndexModel| i.options.as_ref().and_then(|o| o.name.clone());
    let names: Vec<String> = indexes.iter().filter_map(name_of).collect();
    assert!(names.contains(&"tenant_id".to_string()), "{names:?}");
    let retention = indexes
        .iter()
        .find(|i| name_of(i).as_deref() == Some("retention"));
    let client = herald::recorder::mongo::client(&common::mongo_url())
        .await
        .unwrap();
    let build = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .unwrap();
    let ferretdb = build.contains_key("ferretdbVersion") || build.contains_key("ferretdbFeatures");
    match retention {
        Some(index) => {
            let ttl = index.options.as_ref().and_then(|o| o.expire_after);
            assert_eq!(ttl, Some(Duration::from_secs(86_400)), "{index:?}");
        }
        None if ferretdb => {
            let refused = client
                .database(&prefix)
                .run_command(doc! {
                    "createIndexes": herald::recorder::mongo::COLLECTION,
                    "indexes": [{ "key": { "accepted_at": 1 }, "name": "retention", "expireAfterSeconds": 60 }],
                })
                .await;
            let err = refused.expect_err("FerretDB refused the TTL index once, so again");
            eprintln!("FerretDB difference (expected): TTL index refused: {err}");
        }
        None => panic!("a MongoDB server without the retention index: {names:?}"),
    }
    stack.finish().await;
}

/// At-least-once delivery means a duplicate can fail after the first copy arrived (the
/// receiver went away meanwhile). The attempt is recorded; the status stays `delivered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_duplicate_does_not_undo_a_delivery() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    let pool = stack.start_recording().await;
    let id = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    stack.wait_events(1).await;
    // The duplicate's outcome, as a worker that got the message again would publish it.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.server.nats_url).await.unwrap());
    let names = herald::jetstream::Names::new(&stack.server.prefix);
    let dead = herald::events::Event {
        id: id.parse().unwrap(),
        tenant: uuid::Uuid::nil(),
        event: herald::events::EventKind::Dead,
        priority: herald::model::Priority::High,
        channel: herald::model::Channel::Webhook,
        attempt: 2,
        at: chrono::Utc::now() + chrono::Duration::seconds(1),
        error: Some("webhook request failed: connection refused".into()),
        status: None,
        retry_in_ms: None,
        duration_ms: None,
        provider: None,
        response: None,
    };
    herald::events::publish(&js, &names, &[dead], "duplicate-dead")
        .await
        .unwrap();
    let attempts = eventually(Duration::from_secs(20), || async {
        let n = count(&pool, "SELECT count(*) FROM delivery_attempts").await;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(attempts, Some(2), "both attempts recorded");
    let status: String = sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "delivered");
    pool.close().await;
    stack.finish().await;
}

/// `purge` (the tests' own cleanup, and `dispatcher purge` in the scripts) leaves nothing
/// of a namespace that recorded: no stream, no Redis key, no schema, no MongoDB database.
/// `--keep-schema` keeps the stores for a look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_everything_of_a_namespace() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    let pool = stack.start_recording().await;
    let prefix = stack.server.prefix.clone();
    stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let recorded = eventually(Duration::from_secs(20), || async {
        let keys = common::redis_keys(&prefix).await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
            .fetch_one(&pool)
            .await
            .ok()?;
        (rows > 0 && !keys.is_empty()).then_some(())
    })
    .await;
    assert!(
        recorded.is_some(),
        "the namespace holds state before the purge"
    );
    stack.stop_recording().await;
    stack.stop_delivery().await;
    // A running ingress would make its stream again.
    stack.server.shutdown().await;
    let nats = herald::config::NatsConfig {
        nats_url: stack.server.nats_url.clone(),
        prefix: prefix.clone(),
        ..Default::default()
    };
    let store = test_store(&prefix);

    let kept = herald::purge::purge(&nats, &store, true).await.unwrap();
    assert_eq!(kept.failures, Vec::<String>::new());
    // NOTIFY, HOLD, DLQ and EVENTS, and the streams behind the ATTEMPTS, DESTINATIONS
    // and CANCELS buckets.
    assert_eq!(kept.streams.len(), 7, "{kept:?}");
    assert!(kept.streams.contains(&format!("{prefix}HOLD")), "{kept:?}");
    assert!(
        kept.streams.contains(&format!("KV_{prefix}CANCELS")),
        "{kept:?}"
    );
    assert_eq!(kept.pg_schema, None);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(rows > 0, "--keep-schema keeps the tables");

    let purged = herald::purge::purge(&nats, &store, false).await.unwrap();
    assert_eq!(purged.failures, Vec::<String>::new());
    assert!(purged.streams.is_empty(), "already gone: {purged:?}");
    assert_eq!(purged.pg_schema.as_deref(), Some(prefix.as_str()));
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(&prefix)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0);
    assert!(common::redis_keys(&prefix).await.is_empty());
    let mongo = herald::recorder::mongo::client(&common::mongo_url())
        .await
        .unwrap();
    let databases = mongo.list_database_names().await.unwrap();
    assert!(!databases.contains(&prefix), "{databases:?}");
    let js = async_nats::jetstream::new(async_nats::connect(&stack.server.nats_url).await.unwrap());
    assert!(js.get_stream(format!("{prefix}NOTIFY")).await.is_err());
    assert!(
        herald::purge::purge(&herald::config::NatsConfig::default(), &store, false)
            .await
            .is_err(),
        "the empty prefix is refused"
    );
    pool.close().await;
    stack.server.finish().await;
}

/// The recorder's statements on `notifications` (a NOTIFY batch's insert, an EVENTS batch's
/// upsert) run at once on the same rows, from two consumers or two recorders. Each takes
/// its rows in id order, so they wait for each other but cannot deadlock. Stream order is
/// not id order; here the worst case: the NOTIFY batch holds the ids newest first and the
/// events message oldest first. Every write must commit at its first try (a deadlock is an
/// error the recorder would retry, so it is counted here, not hidden).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_recorder_statements_do_not_deadlock() {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    use herald::recorder::{postgres::PostgresSink, Sink, Source};

    const ROUNDS: usize = 15;
    const ROWS: usize = 300;
    let prefix = common::unique_prefix();
    let nats_url = common::nats_url();
    let store = test_store(&prefix);
    let pool = migrated_pool(&store).await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let names = herald::jetstream::Names::new(&prefix);
    let nats = herald::config::NatsConfig {
        nats_url: nats_url.clone(),
        prefix: prefix.clone(),
        ..Default::default()
    };
    herald::jetstream::ensure_streams(&js, &names, &nats)
        .await
        .unwrap();

    for _ in 0..ROUNDS {
        let ids: Vec<uuid::Uuid> = (0..ROWS).map(|_| uuid::Uuid::now_v7()).collect();
        for id in ids.iter().rev() {
            common::publish_notification(
                &js,
                &names,
                *id,
                herald::model::Priority::Low,
                "http://127.0.0.1:9/",
                "{}",
            )
            .await;
        }
        let events: Vec<herald::events::Event<'static>> = ids
            .iter()
            .map(|id| herald::events::Event {
                id: *id,
                tenant: uuid::Uuid::nil(),
                event: herald::events::EventKind::Delivered,
                priority: herald::model::Priority::Low,
                channel: herald::model::Channel::Webhook,
                attempt: 1,
                at: chrono::Utc::now(),
                error: None,
                status: Some(200),
                retry_in_ms: None,
                duration_ms: None,
                provider: None,
                response: None,
            })
            .collect();
        herald::events::publish(&js, &names, &events, &uuid::Uuid::now_v7().to_string())
            .await
            .unwrap();
    }

    // The stored messages as the recorder receives them.
    async fn fetch_all(
        js: &async_nats::jetstream::Context,
        stream: &str,
        n: usize,
    ) -> Vec<async_nats::jetstream::Message> {
        let consumer: consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap().take(n);
        let mut out = Vec::with_capacity(n);
        while let Some(message) = messages.next().await {
            out.push(message.unwrap());
        }
        out
    }
    let notify = fetch_all(&js, &names.notify_stream, ROUNDS * ROWS).await;
    let events = fetch_all(&js, &names.events_stream, ROUNDS).await;

    let sink = PostgresSink::new(pool.clone(), None);
    let mut failures = Vec::new();
    for (round, batch) in notify.chunks(ROWS).enumerate() {
        let (a, b) = tokio::join!(
            sink.write(Source::Notify, batch),
            sink.write(Source::Events, &events[round..=round]),
        );
        failures.extend(a.err());
        failures.extend(b.err());
    }
    assert!(
        failures.is_empty(),
        "{} writes failed: {:?}",
        failures.len(),
        failures.first()
    );
    let delivered = count(
        &pool,
        "SELECT count(*) FROM notifications WHERE status = 'delivered' AND recipient IS NOT NULL",
    )
    .await;
    assert_eq!(delivered, (ROUNDS * ROWS) as i64);
    pool.close().await;
    common::delete_streams(&nats_url, &prefix).await;
}

/// The status cache holds outcomes, and acceptances only briefly: a notification scheduled
/// for later has the ingress's `accepted` entry (read-your-writes) with a TTL of a minute
/// at most, and is answered from PostgreSQL once recorded; a delivered one is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_cache_holds_outcomes_and_acceptances_only_briefly() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    let pool = stack.start_recording().await;
    let prefix = stack.server.prefix.clone();
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = stack
        .accept(format!(
            r#"{{"priority":"low","channel":"webhook","recipient":"{}","payload":{{}},"send_at":"{later}"}}"#,
            receiver.url()
        ))
        .await;
    let delivered = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let cached = |id: &str| format!("{prefix}status:{id}");
    let recorded = eventually(Duration::from_secs(20), || async {
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE recipient IS NOT NULL
             AND status IN ('accepted', 'delivered')",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        let keys = common::redis_keys(&prefix).await;
        (rows == 2 && keys.contains(&cached(&delivered))).then_some(keys)
    })
    .await
    .expect("both recorded, the delivered one cached");
    assert!(recorded.contains(&cached(&scheduled)), "{recorded:?}");
    let mut redis = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(cached(&scheduled))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (1..=herald::status::ACCEPTED_TTL.as_millis() as i64).contains(&ttl_ms),
        "the accepted entry lives {ttl_ms} ms"
    );
    let value: String = redis::cmd("GET")
        .arg(cached(&scheduled))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(value.starts_with("0|"), "{value}");
    let status = stack
        .server
        .get(&format!("/v1/notifications/{scheduled}"))
        .await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["status"], "accepted");
    pool.close().await;
    stack.finish().await;
}

/// The migration to Standard Webhooks secrets re-encodes a secret written before it
/// (base64url without padding) as standard base64 of the same key: receivers' keys do not
/// change, and the libraries can read it. It leaves new secrets as they are.
#[tokio::test]
async fn older_webhook_secrets_are_re_encoded_with_the_same_key() {
    use base64::Engine;
    let prefix = common::unique_prefix();
    let store = test_store(&prefix);
    let pool = migrated_pool(&store).await;
    let key: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(37).wrapping_add(250))
        .collect();
    let older = format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key)
    );
    assert!(older.contains('-') || older.contains('_'), "{older}");
    let newer = herald::signing::Secret::generate();
    for (name, secret) in [("older", &older), ("newer", &newer)] {
        sqlx::query("INSERT INTO tenants (id, name, webhook_secret) VALUES ($1, $2, $3)")
            .bind(uuid::Uuid::now_v7())
            .bind(name)
            .bind(secret)
            .execute(&pool)
            .await
            .unwrap();
    }
    let migration = include_str!("../../migrations/20261203000009_standard_webhook_secrets.sql");
    sqlx::raw_sql(migration).execute(&pool).await.unwrap();
    let secret_of = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT webhook_secret FROM tenants WHERE name = $1")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let migrated = secret_of("older").await;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(migrated.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert_eq!(decoded, key, "{migrated}");
    assert!(herald::signing::Secret::parse(&migrated).is_ok());
    assert_eq!(secret_of("newer").await, newer);
    common::delete_streams(&common::nats_url(), &prefix).await;
}

/// Webhook secrets are stored sealed (AES-256-GCM under HERALD_SECRETS_KEY): the row does
/// not hold the secret. A plaintext secret an older release stored is sealed by the
/// migrate step and still signs as the same key; a migrate with another key, or with none,
/// refuses and names HERALD_SECRETS_KEY.
#[tokio::test]
async fn webhook_secrets_are_stored_sealed_and_open_with_their_key_only() {
    use herald::sealing::SealingKey;
    use herald::signing::Secret;
    let prefix = common::unique_prefix();
    let store = test_store(&prefix);
    let pool = migrated_pool(&store).await;
    let key = common::sealing_key();
    let created = herald::tenants::create_tenant(&pool, &key, "sealed", Default::default())
        .await
        .unwrap();
    let stored_of = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT webhook_secret FROM tenants WHERE name = $1")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let stored = stored_of("sealed").await;
    assert!(stored.starts_with("sealed1:"), "{stored}");
    assert!(!stored.contains(&created.webhook_secret["whsec_".len()..]));

    let plain = Secret::generate();
    let plain_id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name, webhook_secret) VALUES ($1, 'plain', $2)")
        .bind(plain_id)
        .bind(&plain)
        .execute(&pool)
        .await
        .unwrap();
    herald::app::migrate(&store.pg).await.unwrap();
    let sealed = stored_of("plain").await;
    assert!(sealed.starts_with("sealed1:"), "{sealed}");
    assert_eq!(key.open(&sealed).unwrap(), plain);
    let directory = herald::tenants::Directory::new(pool.clone(), Duration::ZERO, key);
    let read = directory.get(plain_id).await.unwrap().unwrap();
    assert_eq!(read.keys.secrets, vec![Secret::parse(&plain).unwrap()]);

    let mut wrong = store.pg.clone();
    wrong.secrets_key = Some(SealingKey::parse(&SealingKey::generate()).unwrap());
    let refused = herald::app::migrate(&wrong).await.unwrap_err().to_string();
    assert!(
        refused.contains("HERALD_SECRETS_KEY is not the key"),
        "{refused}"
    );
    wrong.secrets_key = None;
    let refused = herald::app::migrate(&wrong).await.unwrap_err().to_string();
    assert!(
        refused.contains("HERALD_SECRETS_KEY (--secrets-key) is not set"),
        "{refused}"
    );
    pool.close().await;
    common::delete_streams(&common::nats_url(), &prefix).await;
}

/// The status cache writes a batch in few script calls and still never goes back: within
/// one batch and across batches, a row older than the cached state of its key is skipped,
/// a newer one replaces it, and a batch larger than one call's rows is written whole.
#[tokio::test]
async fn the_status_cache_keeps_the_newest_state_of_each_row_of_a_batch() {
    use herald::status::{NotificationStatus, StatusCache};
    let prefix = common::unique_prefix();
    let redis = std::sync::Arc::new(
        herald::redis_store::RedisStore::new(&common::redis_url(), &prefix).unwrap(),
    );
    let cache = StatusCache::new(redis.clone());
    let row = |id: uuid::Uuid, status: &str, version: i64| NotificationStatus {
        id,
        tenant: uuid::Uuid::nil(),
        priority: "high".into(),
        channel: "webhook".into(),
        recipient: Some("https://example.test/hook".into()),
        status: status.into(),
        attempts: version as i32,
        accepted_at: None,
        updated_at: chrono::Utc::now(),
        delivered_at: None,
        last_error: None,
        last_status: None,
        next_attempt_at: None,
        trace_id: None,
        version,
    };
    let ttl = Duration::from_secs(60);
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    // Within one batch: a's newer state first, its older one after it.
    cache
        .write(
            &[
                row(a, "delivered", 3),
                row(b, "accepted", 1),
                row(a, "retrying", 2),
            ],
            ttl,
        )
        .await
        .unwrap();
    cache
        .write(&[row(b, "delivered", 2), row(a, "failed", 1)], ttl)
        .await
        .unwrap();
    let read = |id| {
        let cache = &cache;
        async move { cache.read(id).await.map(|s| (s.status, s.version)) }
    };
    assert_eq!(read(a).await, Some(("delivered".to_string(), 3)));
    assert_eq!(read(b).await, Some(("delivered".to_string(), 2)));

    let many: Vec<_> = (0..300).map(|_| uuid::Uuid::now_v7()).collect();
    let rows: Vec<_> = many.iter().map(|&id| row(id, "delivered", 1)).collect();
    cache.write(&rows, ttl).await.unwrap();
    for &id in [many[0], many[127], many[128], many[299]].iter() {
        assert_eq!(read(id).await, Some(("delivered".to_string(), 1)), "{id}");
    }
    assert_eq!(common::redis_keys(&prefix).await.len(), 302);
    assert_eq!(redis.delete_prefixed().await.unwrap(), 302);
}
