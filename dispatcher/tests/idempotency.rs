//! Idempotency keys against the real Redis and NATS: a repeat gets the first id and stores
//! nothing new, a key reused for another body is refused, and without Redis only requests
//! with a key are refused.

mod common;

use common::{notification, redis_keys, TestServer};

fn with_key(priority: &str, n: usize, key: &str) -> String {
    format!(
        r#"{{"priority":"{priority}","channel":"webhook","recipient":"http://127.0.0.1:9/hook","payload":{{"n":{n}}},"idempotency_key":"{key}"}}"#
    )
}

#[tokio::test]
async fn a_repeat_gets_the_first_id_and_stores_nothing_new() {
    let server = TestServer::start().await;
    let first = server
        .post("/v1/notifications", with_key("high", 1, "otp-42"))
        .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert!(first.header("idempotent-replayed").is_none());
    let again = server
        .post("/v1/notifications", with_key("high", 1, "otp-42"))
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], first.body["id"]);

    let other = server
        .post("/v1/notifications", with_key("high", 2, "otp-42"))
        .await;
    assert_eq!(other.status, 422, "{:?}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(other.body["error"]["field"], "idempotency_key");

    let stored = server.stream_messages().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body["idempotency_key"], "otp-42");
    assert_eq!(stored[0].id(), first.body["id"].as_str().unwrap());
    let (keys, others): (Vec<String>, Vec<String>) = redis_keys(&server.prefix)
        .await
        .into_iter()
        .partition(|k| k.contains(":otp-42"));
    // Beside the key, only the notification's status (read-your-writes).
    assert_eq!(
        others,
        [format!(
            "{}status:{}",
            server.prefix,
            first.body["id"].as_str().unwrap()
        )]
    );
    // Keys are scoped by tenant (here the anonymous one, the nil UUID).
    assert_eq!(
        keys,
        vec![format!(
            "{}idem:{}:otp-42",
            server.prefix,
            uuid::Uuid::nil().simple()
        )]
    );
    server.finish().await;
    assert!(
        redis_keys(&keys[0]).await.is_empty(),
        "test left its key behind"
    );
}

#[tokio::test]
async fn the_header_is_a_key_too_and_must_agree_with_the_field() {
    let server = TestServer::start().await;
    let send = |body: String, key: &'static str| {
        let server = &server;
        async move {
            let r = server
                .post_with("/v1/notifications", &[("idempotency-key", key)], body)
                .await;
            let replayed = r.header("idempotent-replayed").is_some();
            (r.status, replayed, r.body)
        }
    };
    let (s1, r1, b1) = send(notification("low", 1), "order-7-shipped").await;
    assert_eq!((s1, r1), (202, false), "{b1:?}");
    let (s2, r2, b2) = send(notification("low", 1), "order-7-shipped").await;
    assert_eq!((s2, r2), (200, true), "{b2:?}");
    assert_eq!(b1["id"], b2["id"]);
    let (s3, _, b3) = send(with_key("low", 1, "something-else"), "order-7-shipped").await;
    assert_eq!(s3, 422, "{b3:?}");
    assert_eq!(b3["error"]["field"], "idempotency_key");
    assert_eq!(server.stream_messages().await.len(), 1);
    server.finish().await;
}

#[tokio::test]
async fn without_redis_only_requests_with_a_key_are_refused() {
    let port = common::free_port();
    let server =
        TestServer::start_with(|c| c.store.redis_url = format!("redis://127.0.0.1:{port}")).await;
    let keyed = server
        .post("/v1/notifications", with_key("high", 1, "k"))
        .await;
    assert_eq!(keyed.status, 503, "{:?}", keyed.body);
    assert_eq!(keyed.body["error"]["code"], "unavailable");
    let plain = server
        .post("/v1/notifications", notification("high", 1))
        .await;
    assert_eq!(plain.status, 202, "{:?}", plain.body);
    assert_eq!(server.stream_messages().await.len(), 1);
    server.finish().await;
}

#[tokio::test]
async fn a_batch_claims_its_keys_together_and_replays_per_item() {
    let server = TestServer::start().await;
    let batch = format!(
        "[{},{},{}]",
        with_key("high", 1, "b-1"),
        with_key("low", 2, "b-2"),
        notification("medium", 3)
    );
    let first = server.post("/v1/notifications/batch", batch.clone()).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(first.body["accepted"], 3);
    let again = server.post("/v1/notifications/batch", batch).await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    let (a, b) = (&first.body["results"], &again.body["results"]);
    for i in 0..2 {
        assert_eq!(b[i]["status"], 200, "{b:?}");
        assert_eq!(b[i]["replayed"], true);
        assert_eq!(b[i]["id"], a[i]["id"]);
    }
    // Without a key, a repeat is a new notification.
    assert_eq!(b[2]["status"], 202);
    assert_ne!(b[2]["id"], a[2]["id"]);

    let changed = server
        .post(
            "/v1/notifications/batch",
            format!("[{}]", with_key("high", 99, "b-1")),
        )
        .await;
    assert_eq!(changed.status, 422, "{:?}", changed.body);
    assert_eq!(
        changed.body["results"][0]["error"]["code"],
        "idempotency_key_reused"
    );
    assert_eq!(server.stream_messages().await.len(), 4);
    server.finish().await;
}

#[tokio::test]
async fn a_broken_redis_connection_is_made_again_without_failing_a_request() {
    // A Redis user of this test's own, so that killing its connections touches no other
    // test's.
    let user = format!("herald-{}", uuid::Uuid::now_v7().simple());
    let mut admin = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", ">secret", "~*", "&*", "+@all"][..])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://{user}:secret@127.0.0.1:6379");
    let server = TestServer::start_with(|c| c.store.redis_url = url).await;
    let first = server
        .post("/v1/notifications", with_key("high", 1, "reset-7"))
        .await;
    assert_eq!(first.status, 202, "{:?}", first.body);

    // Its connection breaks, as when Redis restarts or a proxy drops it.
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", &user][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1, "no connection of {user} to kill");
    let again = server
        .post("/v1/notifications", with_key("high", 1, "reset-7"))
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    server.finish().await;
    redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
}
