//! Cancel before send, against a real receiver, NATS and the recorder's stores: a
//! scheduled notification and one waiting for a retry are never sent once canceled; a
//! delivered one answers 409; canceling is idempotent and works by idempotency key.

mod common;

use std::time::Duration;

use common::{eventually, webhook_to, Receiver, Reply, Stack};

/// A webhook to `url` due at `send_at`, with an idempotency key when given.
fn scheduled(url: &str, send_at: chrono::DateTime<chrono::Utc>, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!(r#","idempotency_key":"{k}""#));
    format!(
        r#"{{"priority":"high","channel":"webhook","recipient":"{url}","payload":{{}},"send_at":"{}"{key}}}"#,
        send_at.to_rfc3339()
    )
}

/// The ids `receiver` got, read a moment after `due` has passed.
async fn sent_once_due(receiver: &Receiver, due: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1500)).await;
    receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect()
}

/// Waits until the notification's recorded status is `status`.
async fn status_becomes(stack: &Stack, id: &str, status: &str) {
    let path = format!("/v1/notifications/{id}");
    eventually(Duration::from_secs(10), || async {
        let r = stack.server.get(&path).await;
        (r.status == 200 && r.body["status"] == status).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{id} did not become {status}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_scheduled_notification_is_never_sent() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    stack.start_recording().await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(3);
    let by_id = stack.accept(scheduled(&receiver.url(), due, None)).await;
    let by_key = stack
        .accept(scheduled(&receiver.url(), due, Some("order-7-reminder")))
        .await;
    let now = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    status_becomes(&stack, &by_id, "accepted").await;
    status_becomes(&stack, &by_key, "accepted").await;

    let cancel = format!("/v1/notifications/{by_id}/cancel");
    let r = stack.server.post(&cancel, "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "canceled");
    assert_eq!(r.body["id"], by_id.as_str());
    let again = stack.server.post(&cancel, "").await;
    assert_eq!(again.status, 200, "canceling twice: {:?}", again.body);
    let r = stack
        .server
        .post(
            "/v1/notifications/cancel",
            r#"{"idempotency_key":"order-7-reminder"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["id"], by_key.as_str());
    status_becomes(&stack, &by_id, "canceled").await;
    status_becomes(&stack, &by_key, "canceled").await;

    // The delivered one is past canceling.
    status_becomes(&stack, &now, "delivered").await;
    let late = stack
        .server
        .post(&format!("/v1/notifications/{now}/cancel"), "")
        .await;
    assert_eq!(late.status, 409);
    assert_eq!(late.body["error"]["code"], "already_delivered");

    // Past the due time, only the immediate one was ever sent.
    assert_eq!(sent_once_due(&receiver, due).await, vec![now.clone()]);
    let listed = stack.server.get("/v1/notifications?status=canceled").await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(2));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_waiting_for_a_retry_is_canceled_and_bad_cancels_are_named() {
    // The first answer asks for a 3 s wait; anything later would be accepted.
    let receiver = Receiver::replying(|n, _| Reply {
        status: if n == 0 { 503 } else { 200 },
        delay: Duration::ZERO,
        retry_after: (n == 0).then_some(3),
        body: "",
    })
    .await;
    let mut stack = Stack::start(|_| {}).await;
    stack.start_recording().await;
    let id = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    status_becomes(&stack, &id, "retrying").await;
    let r = stack
        .server
        .post(&format!("/v1/notifications/{id}/cancel"), "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    status_becomes(&stack, &id, "canceled").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.received().len(), 1, "a canceled retry was sent");

    let unknown = stack
        .server
        .post(
            &format!("/v1/notifications/{}/cancel", uuid::Uuid::now_v7()),
            "",
        )
        .await;
    assert_eq!(unknown.status, 404);
    let not_uuid = stack.server.post("/v1/notifications/nope/cancel", "").await;
    assert_eq!(not_uuid.status, 422);
    assert_eq!(not_uuid.body["error"]["field"], "id");
    for body in [r#"{}"#, r#"{"idempotency_key":""}"#, r#"{"key":"x"}"#] {
        let r = stack.server.post("/v1/notifications/cancel", body).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["field"], "idempotency_key");
    }
    let never = stack
        .server
        .post(
            "/v1/notifications/cancel",
            r#"{"idempotency_key":"never-sent"}"#,
        )
        .await;
    assert_eq!(never.status, 404);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reads_and_cancels_the_moment_its_202_arrives() {
    // No recorder runs (its tables exist): what answers is what the ingress wrote after
    // the PubAck.
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    common::migrated_pool(&common::test_store(&stack.server.prefix)).await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(3);
    let id = stack.accept(scheduled(&receiver.url(), due, None)).await;
    let r = stack.server.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "accepted");
    assert_eq!(r.body["priority"], "high");
    assert_eq!(r.body["recipient"], receiver.url().as_str());
    let r = stack
        .server
        .post(&format!("/v1/notifications/{id}/cancel"), "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Every item of a batch reads at once too.
    let batch = format!(
        "[{},{}]",
        webhook_to(&receiver.url(), "low", 1),
        scheduled(&receiver.url(), due, Some("batch-key"))
    );
    let r = stack.server.post("/v1/notifications/batch", batch).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    for item in r.body["results"].as_array().unwrap() {
        let path = format!("/v1/notifications/{}", item["id"].as_str().unwrap());
        let read = stack.server.get(&path).await;
        assert_eq!(read.status, 200, "{:?}", read.body);
    }
    // Another tenant's id, or an unknown one, is still a 404.
    let unknown = stack
        .server
        .get(&format!("/v1/notifications/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, 404);

    let sent = sent_once_due(&receiver, due).await;
    assert!(!sent.contains(&id), "the canceled notification was sent");
    stack.finish().await;
}
