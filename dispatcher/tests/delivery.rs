//! Delivery against the real NATS and a real HTTP receiver: signatures, retries with
//! backoff, dead letters and their replay, redelivery after a crash, priority weights, and
//! shutdown.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{eventually, webhook_to, Receiver, Stack, TEST_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_on_first_try_signed_and_recorded() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let id = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(r.header("webhook-id"), id);
    assert_eq!(r.header("herald-attempt"), "1");
    assert_eq!(r.header("herald-priority"), "high");
    assert_eq!(r.header("content-type"), "application/json");
    let timestamp: u64 = r.header("webhook-timestamp").parse().unwrap();
    let secret = herald::signing::Secret::parse(TEST_SECRET).unwrap();
    assert_eq!(
        r.header("webhook-signature"),
        secret.sign(&id, timestamp, &r.body)
    );
    assert!(r.header("herald-signature").is_empty());
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(r.json()["priority"], "high");
    assert_eq!(r.json()["data"]["n"], 1);
    // Nothing of Herald's own goes to the receiver.
    let body = r.json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["id", "timestamp", "priority", "data"],
        "{}",
        r.json()
    );

    let events = stack.wait_events(1).await;
    // Nothing else comes: no second delivery, no second event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "delivered more than once");
    assert_eq!(stack.events().await, events);
    assert_eq!(events, vec![("delivered".to_string(), id, 1)]);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_after_a_backoff_within_bounds() {
    let receiver = Receiver::start(|n| (if n == 0 { 500 } else { 200 }, Duration::ZERO)).await;
    let stack = Stack::start(|c| c.retry_medium = "300ms:2s:30s".parse().unwrap()).await;
    let id = stack.accept(webhook_to(&receiver.url(), "medium", 1)).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("herald-attempt"), "1");
    assert_eq!(got[1].header("herald-attempt"), "2");
    assert_eq!(got[1].header("webhook-id"), id);
    // Full jitter: the wait is between 0 and the base (300 ms), plus scheduling slack.
    let gap = got[1].at - got[0].at;
    assert!(
        gap <= Duration::from_millis(300 + 400),
        "retried after {gap:?}"
    );
    let kinds = stack.wait_event_kinds(2).await;
    assert_eq!(kinds, vec!["retrying", "delivered"]);
    stack.finish().await;
}

/// Resumes the destination of `receiver`, which also enables its endpoints a 410 disabled,
/// and waits until delivery has followed (the bucket's watch); the destination as the
/// resume answered it.
async fn resume(stack: &Stack, receiver: &Receiver) -> serde_json::Value {
    let path = format!(
        "/v1/destinations/webhook%3A127.0.0.1%3A{}/resume",
        receiver.addr.port()
    );
    let resumed = stack.server.post(&path, "").await;
    assert_eq!(resumed.status, 200, "{:?}", resumed.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    resumed.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_goes_to_the_dlq_at_once_and_replay_delivers_it() {
    let receiver = Receiver::start(|n| (if n == 0 { 410 } else { 200 }, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let id = stack.accept(webhook_to(&receiver.url(), "low", 7)).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let mut items = serde_json::Value::Null;
    for _ in 0..100 {
        let list = stack.server.get("/v1/dlq").await;
        assert_eq!(list.status, 200, "{:?}", list.body);
        if list.body["items"].as_array().is_some_and(|a| !a.is_empty()) {
            items = list.body["items"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = &items[0];
    assert_eq!(dead["id"], id.as_str());
    // The DLQ's size is a gauge for dashboards and alerts.
    let gauge = eventually(Duration::from_secs(5), || async {
        let text = String::from_utf8(stack.delivery_metrics.render(|_| 0)).unwrap();
        text.contains("herald_dlq_messages 1\n").then_some(())
    })
    .await;
    assert!(gauge.is_some(), "herald_dlq_messages shows the dead letter");
    assert_eq!(dead["status"], 410);
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["priority"], "low");
    assert_eq!(dead["channel"], "webhook");
    assert_eq!(dead["notification"]["payload"]["n"], 7);
    // Filters apply.
    let none = stack.server.get("/v1/dlq?priority=high").await;
    assert_eq!(none.body["items"].as_array().unwrap().len(), 0);
    let bad = stack.server.get("/v1/dlq?priority=urgent").await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["error"]["field"], "priority");

    // A 410 disabled the endpoint, as its destination shows; resuming the destination
    // enables it again.
    let destination = format!(
        "/v1/destinations/webhook%3A127.0.0.1%3A{}",
        receiver.addr.port()
    );
    let shown = stack.server.get(&destination).await;
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    let disabled = shown.body["disabled"].as_array().unwrap();
    assert_eq!(disabled.len(), 1, "{:?}", shown.body);
    assert_eq!(disabled[0]["url"], receiver.url());
    assert_eq!(disabled[0]["reason"], "it answered 410 Gone");
    let listed = stack.server.get("/v1/destinations").await;
    assert_eq!(
        listed.body["destinations"][0]["disabled"][0]["url"],
        receiver.url()
    );
    let resumed = resume(&stack, &receiver).await;
    assert_eq!(resumed["disabled"], serde_json::json!([]));
    let replay = stack.server.post(&format!("/v1/dlq/{id}/replay"), "").await;
    assert_eq!(replay.status, 202, "{:?}", replay.body);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), id);
    assert_eq!(
        got[1].header("herald-attempt"),
        "1",
        "replay starts a fresh budget"
    );
    let after = stack.server.get("/v1/dlq").await;
    assert!(after.body["items"].as_array().unwrap().is_empty());
    let again = stack.server.post(&format!("/v1/dlq/{id}/replay"), "").await;
    assert_eq!(again.status, 404);
    let emptied = eventually(Duration::from_secs(5), || async {
        let text = String::from_utf8(stack.delivery_metrics.render(|_| 0)).unwrap();
        text.contains("herald_dlq_messages 0\n").then_some(())
    })
    .await;
    assert!(emptied.is_some(), "herald_dlq_messages follows the replay");
    let kinds = stack.wait_event_kinds(2).await;
    assert_eq!(kinds, vec!["dead", "delivered"]);
    stack.finish().await;
}

/// As Standard Webhooks recommends, a receiver's 401 (a secret rotation under way) or 404
/// (a deploy) is retried, not final: the notification is delivered once the receiver
/// takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_and_a_404_are_retried_and_then_delivered() {
    let answers = |n| match n {
        0 => 401,
        1 => 404,
        _ => 204,
    };
    let receiver = Receiver::start(move |n| (answers(n), Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let id = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let attempts: Vec<String> = got.iter().map(|r| r.header("herald-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(got.iter().all(|r| r.header("webhook-id") == id));
    let kinds = stack.wait_event_kinds(3).await;
    assert_eq!(kinds, ["retrying", "retrying", "delivered"]);
    stack.finish().await;
}

/// `expires_at` is a deadline: a notification whose receiver keeps failing until then ends
/// as `expired` (an event and a recorded status of its own), is never dead-lettered, and
/// no attempt is made after its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_past_its_deadline_expires_and_is_not_dead_lettered() {
    let receiver = Receiver::start(|_| (503, Duration::ZERO)).await;
    let mut stack = Stack::start(|c| {
        c.retry_high = "200ms:300ms:1h".parse().unwrap();
        c.health.failures = 1_000;
    })
    .await;
    stack.start_recording().await;
    let deadline = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    // The same deadline on the monotonic clock: the wall clock may be slewed or stepped.
    let deadline_at = Instant::now() + Duration::from_millis(1500);
    let body = format!(
        r#"{{"priority":"high","channel":"webhook","recipient":"{}","payload":{{}},"expires_at":"{}"}}"#,
        receiver.url(),
        deadline.to_rfc3339()
    );
    let id = stack.accept(body).await;
    let events = eventually(Duration::from_secs(10), || async {
        let events = stack.events().await;
        events
            .iter()
            .any(|(kind, i, _)| kind == "expired" && *i == id)
            .then_some(events)
    })
    .await
    .expect("an expired event");
    assert!(
        events.iter().all(|(kind, _, _)| kind != "dead"),
        "{events:?}"
    );
    let dlq = stack.server.get("/v1/dlq").await;
    assert_eq!(dlq.body["items"], serde_json::json!([]));
    let got = receiver.received();
    assert!(!got.is_empty());
    // The receiver stamps an attempt when it arrives: one started just before the deadline
    // lands a moment after it. The next try would come a backoff (≥ 200 ms) later.
    let last_arrival = got.last().unwrap().at;
    assert!(
        last_arrival < deadline_at + Duration::from_millis(100),
        "an attempt {:?} after the deadline",
        last_arrival.saturating_duration_since(deadline_at)
    );
    // Recorded as a status of its own.
    let path = format!("/v1/notifications/{id}");
    let status = eventually(Duration::from_secs(10), || async {
        let r = stack.server.get(&path).await;
        (r.body["status"] == "expired").then_some(r.body)
    })
    .await;
    assert!(status.is_some(), "the status API says expired");
    stack.finish().await;
}

/// The trace of the request that sent a notification reaches its receiver: every attempt
/// is a child span of the same trace (a retry included), and a replay from the DLQ
/// continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_trace_reaches_the_webhook_on_every_attempt() {
    use herald::trace::TraceParent;
    let receiver = Receiver::start(|n| (if n == 0 { 503 } else { 200 }, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = stack
        .server
        .post_with(
            "/v1/notifications",
            &[("traceparent", sent)],
            webhook_to(&receiver.url(), "high", 1),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let caller = TraceParent::parse(sent).unwrap();
    let attempts: Vec<TraceParent> = got
        .iter()
        .map(|req| TraceParent::parse(&req.header("traceparent")).expect("a valid traceparent"))
        .collect();
    for attempt in &attempts {
        assert_eq!(attempt.trace_id, caller.trace_id, "one trace");
        assert_eq!(
            attempt.flags, caller.flags,
            "the caller's sampling decision"
        );
        assert_ne!(attempt.span_id, caller.span_id, "a span of its own");
    }
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    // Without a traceparent the door starts a trace; the stream holds it as a header.
    let receiver = Receiver::start(|_| (410, Duration::ZERO)).await;
    let id = stack.accept(webhook_to(&receiver.url(), "low", 2)).await;
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    let started = TraceParent::parse(&first[0].header("traceparent")).unwrap();
    assert_ne!(started.trace_id, caller.trace_id);
    assert_eq!(started.flags, 0, "a trace Herald starts is not sampled");
    let dead = eventually(Duration::from_secs(5), || async {
        let r = stack.server.get("/v1/dlq").await;
        r.body["items"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(())
    })
    .await;
    assert!(dead.is_some(), "dead-lettered");
    resume(&stack, &receiver).await;
    let replay = eventually(Duration::from_secs(5), || async {
        let r = stack.server.post(&format!("/v1/dlq/{id}/replay"), "").await;
        (r.status == 202).then_some(r)
    })
    .await;
    assert!(replay.is_some(), "the dead letter is replayed");
    let again = receiver.wait_for(2, Duration::from_secs(10)).await;
    let replayed = TraceParent::parse(&again[1].header("traceparent")).unwrap();
    assert_eq!(
        replayed.trace_id, started.trace_id,
        "the replay continues the trace"
    );
    stack.finish().await;
}

/// Retries are bounded by time: a receiver that always answers 503 is tried until the
/// priority's horizon (here 400 ms), the last attempt no later than it, then the
/// notification is dead-lettered naming the horizon and the last answer; nothing follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_503_is_dead_lettered_at_its_horizon_and_can_be_deleted() {
    let receiver = Receiver::start(|_| (503, Duration::ZERO)).await;
    let stack = Stack::start(|c| {
        c.retry_high = "20ms:50ms:400ms".parse().unwrap();
        // The breaker stays closed: every attempt reaches the receiver.
        c.health.failures = 1_000;
    })
    .await;
    let id = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    let mut dead = serde_json::Value::Null;
    for _ in 0..200 {
        let list = stack
            .server
            .get("/v1/dlq?priority=high&channel=webhook")
            .await;
        if let Some(first) = list.body["items"].as_array().and_then(|a| a.first()) {
            dead = first.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead["status"], 503, "{dead}");
    let error = dead["error"].as_str().unwrap();
    assert!(error.contains("400ms retry horizon"), "{error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.received();
    // Waits of at most 50 ms over 400 ms: many attempts, numbered on, the last in the count.
    assert!(got.len() >= 5, "{} attempts", got.len());
    let attempts: Vec<String> = got.iter().map(|r| r.header("herald-attempt")).collect();
    let expected: Vec<String> = (1..=got.len()).map(|n| n.to_string()).collect();
    assert_eq!(attempts, expected);
    assert_eq!(dead["attempts"], got.len());
    let span = got.last().unwrap().at - got[0].at;
    assert!(
        span <= Duration::from_millis(400 + 300),
        "last attempt {span:?} after the first"
    );

    let deleted = stack.server.delete(&format!("/v1/dlq/{id}")).await;
    assert_eq!(deleted.status, 204);
    assert!(stack.server.get("/v1/dlq").await.body["items"]
        .as_array()
        .unwrap()
        .is_empty());
    stack.finish().await;
}

/// With an OTLP endpoint, one trace spans the request, the publish, each delivery attempt
/// and the webhook: every span a child of the one before, across NATS, and the webhook's
/// `traceparent` names the attempt's span. A trace Herald starts is sampled and exported
/// as a root; a caller's unsampled trace exports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_trace_are_exported_over_otlp() {
    use herald::trace::TraceParent;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;
    // The collector: a real HTTP server taking OTLP/HTTP protobuf, as a collector does.
    let collector = Receiver::start(|_| (200, Duration::ZERO)).await;
    let receiver = Receiver::start(|n| (if n == 0 { 503 } else { 200 }, Duration::ZERO)).await;
    let otlp = herald::config::OtlpConfig {
        endpoint: format!("{}/v1/traces", collector.url()),
        service_name: "herald-test".into(),
    };
    let stack = Stack::exporting_spans(otlp).await;
    let send = |traceparent: Option<&'static str>, n: usize| {
        let headers: Vec<(&str, &str)> = traceparent
            .map(|t| ("traceparent", t))
            .into_iter()
            .collect();
        let (server, body) = (&stack.server, webhook_to(&receiver.url(), "high", n));
        async move {
            let r = server.post_with("/v1/notifications", &headers, body).await;
            assert_eq!(r.status, 202, "{:?}", r.body);
        }
    };
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    send(Some(sampled), 1).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    send(Some(unsampled), 2).await;
    send(None, 3).await;
    let got_all = receiver.wait_for(4, Duration::from_secs(10)).await;
    stack.finish().await;

    let spans: Vec<Span> = collector
        .received()
        .iter()
        .flat_map(|r| {
            assert_eq!(r.header("content-type"), "application/x-protobuf");
            ExportTraceServiceRequest::decode(r.body.clone())
                .expect("OTLP protobuf")
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let one = |trace: &str, name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace && s.name == name)
            .collect()
    };
    let caller = TraceParent::parse(sampled).unwrap();
    let trace = caller.trace_id_hex();
    let ingest = one(&trace, "herald.ingest");
    assert_eq!(ingest.len(), 1, "{spans:?}");
    assert_eq!(
        hex(&ingest[0].parent_span_id),
        format!("{:016x}", caller.span_id)
    );
    let publish = one(&trace, "herald.publish");
    assert_eq!(publish.len(), 1);
    assert_eq!(publish[0].parent_span_id, ingest[0].span_id);
    let deliver = one(&trace, "herald.deliver");
    assert_eq!(deliver.len(), 2, "one span per attempt, the retry included");
    for (attempt, webhook) in deliver.iter().zip(&got) {
        assert_eq!(attempt.parent_span_id, publish[0].span_id, "across NATS");
        let received = TraceParent::parse(&webhook.header("traceparent")).unwrap();
        assert_eq!(
            hex(&attempt.span_id),
            format!("{:016x}", received.span_id),
            "the webhook's parent"
        );
        assert!(attempt.start_time_unix_nano <= attempt.end_time_unix_nano);
    }
    assert!(ingest[0].start_time_unix_nano <= publish[0].start_time_unix_nano);

    let unsampled_trace = TraceParent::parse(unsampled).unwrap().trace_id_hex();
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) != unsampled_trace),
        "an unsampled trace records nothing"
    );
    let started = TraceParent::parse(&got_all[3].header("traceparent")).unwrap();
    assert_eq!(
        started.flags, 1,
        "a trace Herald starts is sampled while it exports"
    );
    let root = one(&started.trace_id_hex(), "herald.ingest");
    assert_eq!(root.len(), 1);
    assert!(root[0].parent_span_id.is_empty(), "a root span");
}

/// The bulk routes take one page of the dead letters matching a filter: a delete by
/// priority removes those and only those, and a replay pages on with its cursor.
/// Recover by time: `dead_after` and `dead_before` pick the dead letters of a window (an
/// outage), for a list and a bulk replay alike; a bad time is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_a_time_window_are_listed_and_replayed() {
    let receiver = Receiver::start(|n| (if n < 4 { 410 } else { 204 }, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let count = |path: String| {
        let stack = &stack;
        async move {
            stack.server.get(&path).await.body["items"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    let mut early = HashSet::new();
    // An endpoint of its own each: a 410 disables the URL that answered it.
    let url = |n| format!("{}/{n}", receiver.url());
    for n in 0..2 {
        early.insert(stack.accept(webhook_to(&url(n), "low", n)).await);
    }
    let dead = eventually(Duration::from_secs(10), || async {
        (count("/v1/dlq".into()).await == 2).then_some(())
    })
    .await;
    assert!(dead.is_some(), "two early dead letters");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 2..4 {
        stack.accept(webhook_to(&url(n), "low", n)).await;
    }
    let dead = eventually(Duration::from_secs(10), || async {
        (count("/v1/dlq".into()).await == 4).then_some(())
    })
    .await;
    assert!(dead.is_some(), "four dead letters");
    let at = form_urlencoded::byte_serialize(between.to_rfc3339().as_bytes()).collect::<String>();
    assert_eq!(count(format!("/v1/dlq?dead_after={at}")).await, 2);
    assert_eq!(count(format!("/v1/dlq?dead_before={at}")).await, 2);
    let bad = stack.server.get("/v1/dlq?dead_after=yesterday").await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["error"]["field"], "dead_after");

    resume(&stack, &receiver).await;
    let replayed = stack
        .server
        .post(&format!("/v1/dlq/replay?dead_before={at}"), "")
        .await;
    assert_eq!(replayed.status, 202, "{:?}", replayed.body);
    assert_eq!(replayed.body["replayed"], 2);
    // The receiver takes them now (its fifth answer on): the early two are delivered.
    let got = receiver.wait_for(6, Duration::from_secs(10)).await;
    let redelivered: HashSet<String> = got[4..].iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(redelivered, early);
    assert_eq!(count("/v1/dlq".into()).await, 2);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_deleted_and_replayed_by_filter() {
    let receiver = Receiver::start(|_| (410, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let mut low = HashSet::new();
    for n in 0..3 {
        // An endpoint of its own each: a 410 disables the URL that answered it.
        let url = |class| format!("{}/{class}{n}", receiver.url());
        low.insert(stack.accept(webhook_to(&url("low"), "low", n)).await);
        stack.accept(webhook_to(&url("high"), "high", n)).await;
    }
    let dead_ids = |page: &serde_json::Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all_dead = eventually(Duration::from_secs(10), || async {
        (dead_ids(&stack.server.get("/v1/dlq").await.body).len() == 6).then_some(())
    })
    .await;
    assert!(all_dead.is_some(), "six dead letters");

    let deleted = stack.server.delete("/v1/dlq?priority=low").await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["deleted"], 3);
    assert_eq!(deleted.body["failed"], 0);
    assert!(
        deleted.body["next_cursor"].is_null(),
        "one page held them all"
    );
    let left = dead_ids(&stack.server.get("/v1/dlq").await.body);
    assert_eq!(left.len(), 3);
    assert!(
        left.iter().all(|id| !low.contains(id)),
        "only the low ones went"
    );

    let first = stack
        .server
        .post("/v1/dlq/replay?priority=high&limit=2", "")
        .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(first.body["replayed"], 2);
    let cursor = first.body["next_cursor"].as_u64().expect("a next page");
    let until = first.body["until"].as_u64().unwrap();
    // The first two die again at once (their endpoints are disabled since their 410)
    // with newer sequences; `until` keeps the paging to the three that were there when it
    // began.
    let redead = eventually(Duration::from_secs(10), || async {
        let page = stack.server.get(&format!("/v1/dlq?cursor={until}")).await;
        (dead_ids(&page.body).len() >= 2).then_some(())
    })
    .await;
    assert!(redead.is_some(), "the first page's replays died again");
    let rest = stack
        .server
        .post(
            &format!("/v1/dlq/replay?priority=high&cursor={cursor}&until={until}"),
            "",
        )
        .await;
    assert_eq!(rest.body["replayed"], 1, "{:?}", rest.body);
    assert!(rest.body["next_cursor"].is_null());
    // Their endpoints said 410 (stop): the replayed three die again without a request,
    // naming why, until the destination is resumed.
    let again = eventually(Duration::from_secs(10), || async {
        let page = stack.server.get("/v1/dlq").await.body;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 3).then_some(items)
    })
    .await
    .expect("the replayed died again");
    for item in &again {
        let error = item["error"].as_str().unwrap();
        assert!(error.contains("endpoint disabled since"), "{error}");
    }
    assert_eq!(receiver.received().len(), 6, "six first attempts, no more");

    for (query, field) in [("priority=urgent", "priority"), ("until=-1", "until")] {
        let bad = stack.server.delete(&format!("/v1/dlq?{query}")).await;
        assert_eq!(bad.status, 422, "{query}");
        assert_eq!(bad.body["error"]["field"], field);
    }
    stack.finish().await;
}

/// A worker that dies mid-send never acks; JetStream redelivers after the ack wait and
/// another worker delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_lost_in_a_crash_is_redelivered() {
    // The first request hangs past the crash; later ones succeed.
    let receiver = Receiver::start(|n| {
        if n == 0 {
            (200, Duration::from_secs(30))
        } else {
            (200, Duration::ZERO)
        }
    })
    .await;
    let mut stack = Stack::start(|c| c.ack_wait = Duration::from_secs(1)).await;
    let id = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // Crash: tasks gone, nothing acked, nothing NAKed.
    stack.delivery.take().unwrap().abort();
    stack.start_delivery().await;
    let got = receiver.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got[1].header("webhook-id"), id);
    assert_eq!(got[1].header("herald-attempt"), "2");
    stack.finish().await;
}

/// With all three priorities backlogged and one webhook worker, deliveries follow the
/// weights 8:4:1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_priorities_are_delivered_by_weight() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|c| c.channel_concurrency = "1:1:1:1".parse().unwrap()).await;
    stack.stop_delivery().await;
    for p in ["high", "medium", "low"] {
        let items: Vec<String> = (0..200)
            .map(|n| webhook_to(&receiver.url(), p, n))
            .collect();
        let resp = stack
            .server
            .post("/v1/notifications/batch", format!("[{}]", items.join(",")))
            .await;
        assert_eq!(resp.body["accepted"], 200);
    }
    stack.start_delivery().await;
    let got = receiver.wait_for(260, Duration::from_secs(30)).await;
    // Skip the first few, delivered while the three consumers were still filling.
    let window: Vec<String> = got[13..13 + 13 * 18]
        .iter()
        .map(|r| r.header("herald-priority"))
        .collect();
    let count = |p: &str| window.iter().filter(|q| q.as_str() == p).count();
    let (h, m, l) = (count("high"), count("medium"), count("low"));
    assert!((140..=148).contains(&h), "high {h} medium {m} low {l}");
    assert!((68..=76).contains(&m), "high {h} medium {m} low {l}");
    assert!((14..=22).contains(&l), "high {h} medium {m} low {l}");
    stack.finish().await;
}

/// Shutdown mid-load: sends in flight finish, queued work is handed back, and a new
/// delivery instance delivers the rest: every accepted notification arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_loses_nothing() {
    let receiver = Receiver::start(|_| (200, Duration::from_millis(50))).await;
    let mut stack = Stack::start(|c| c.channel_concurrency = "4:1:1:1".parse().unwrap()).await;
    let items: Vec<String> = (0..100)
        .map(|n| webhook_to(&receiver.url(), "medium", n))
        .collect();
    let resp = stack
        .server
        .post("/v1/notifications/batch", format!("[{}]", items.join(",")))
        .await;
    let accepted: HashSet<String> = resp.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.body_id())
        .collect();
    receiver.wait_for(10, Duration::from_secs(10)).await;
    stack.stop_delivery().await;
    let during = receiver.received().len();
    assert!(during < 100, "everything was delivered before shutdown");
    stack.start_delivery().await;
    // Every accepted notification arrives. Counting receipts is not enough: a send that
    // finished while delivery shut down may come again (at least once).
    let delivered = eventually(Duration::from_secs(30), || async {
        let ids: HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("webhook-id"))
            .collect();
        (ids.len() >= accepted.len()).then_some(ids)
    })
    .await
    .expect("every accepted notification is delivered");
    assert_eq!(delivered, accepted);
    // No more duplicates than sends that can be in flight at the shutdown: one per worker.
    let duplicates = receiver.received().len() - delivered.len();
    assert!(duplicates <= 4, "{duplicates} duplicates");
    stack.finish().await;
}

trait BodyId {
    fn body_id(&self) -> String;
}

impl BodyId for serde_json::Value {
    fn body_id(&self) -> String {
        self["id"].as_str().unwrap().to_string()
    }
}

/// SMS through a provider API shaped like Twilio's; the local provider checks the path,
/// Basic auth and form fields as the real one would, and refuses what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_to_the_provider_in_its_shape_and_its_refusal_is_permanent() {
    use base64::Engine as _;
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("AC123:secret-token")
    );
    let provider = Receiver::checking(move |_, r| {
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&r.body).into_owned().collect();
        let ok = r.uri.path() == "/2010-04-01/Accounts/AC123/Messages.json"
            && r.header("authorization") == expected_auth
            && r.header("content-type") == "application/x-www-form-urlencoded"
            && form.get("From").map(String::as_str) == Some("+15005550006")
            && form.get("Body").is_some_and(|b| !b.is_empty());
        let valid_number = form.get("To").is_some_and(|t| t != "+4900000000");
        let status = match (ok, valid_number) {
            (false, _) => 401,
            (true, false) => 400,
            (true, true) => 201,
        };
        (status, Duration::ZERO)
    })
    .await;
    let base = format!("http://{}", provider.addr);
    let stack = Stack::start(move |c| {
        c.sms_url = Some(base);
        c.sms_account_sid = "AC123".into();
        c.sms_auth_token = "secret-token".into();
        c.sms_from = "+15005550006".into();
    })
    .await;
    let good = stack.accept(r#"{"priority":"high","channel":"sms","recipient":"+4915112345678","payload":{"text":"Your code: 492811 & more"}}"#).await;
    let got = provider.wait_for(1, Duration::from_secs(10)).await;
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&got[0].body).into_owned().collect();
    assert_eq!(form["To"], "+4915112345678");
    assert_eq!(form["Body"], "Your code: 492811 & more");
    assert_eq!(got[0].header("idempotency-key"), good);

    let bad = stack.accept(r#"{"priority":"high","channel":"sms","recipient":"+4900000000","payload":{"text":"x"}}"#).await;
    provider.wait_for(2, Duration::from_secs(10)).await;
    let events = stack.wait_events(2).await;
    assert!(
        events.contains(&("delivered".into(), good, 1)),
        "{events:?}"
    );
    assert!(events.contains(&("dead".into(), bad, 1)), "{events:?}");
    assert_eq!(provider.received().len(), 2, "a 400 is not retried");
    stack.finish().await;
}

/// Push through an FCM-v1-shaped API; the local provider checks the path, bearer token and
/// message shape, and answers 404 UNREGISTERED for an unknown device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_goes_to_fcm_v1_in_its_shape_and_unregistered_is_dead() {
    let provider = Receiver::checking(|_, r| {
        let body = r.json();
        let ok = r.uri.path() == "/v1/projects/herald-test/messages:send"
            && r.header("authorization") == "Bearer ya29.test"
            && body["message"]["token"].is_string();
        let status = if !ok {
            401
        } else if body["message"]["token"] == "gone-device" {
            404
        } else {
            200
        };
        (status, Duration::ZERO)
    })
    .await;
    let base = format!("http://{}", provider.addr);
    let stack = Stack::start(move |c| {
        c.push_url = Some(base);
        c.push_project = "herald-test".into();
        c.push_token = "ya29.test".into();
    })
    .await;
    let good = stack.accept(r#"{"priority":"medium","channel":"push","recipient":"device-1","payload":{"title":"Shipped","body":"Order A-1 is on its way","data":{"order":"A-1"}}}"#).await;
    let got = provider.wait_for(1, Duration::from_secs(10)).await;
    let message = &got[0].json()["message"];
    assert_eq!(message["token"], "device-1");
    assert_eq!(message["notification"]["title"], "Shipped");
    assert_eq!(message["notification"]["body"], "Order A-1 is on its way");
    assert_eq!(message["data"]["order"], "A-1");

    let gone = stack.accept(r#"{"priority":"medium","channel":"push","recipient":"gone-device","payload":{"title":"x"}}"#).await;
    provider.wait_for(2, Duration::from_secs(10)).await;
    let events = stack.wait_events(2).await;
    assert!(
        events.contains(&("delivered".into(), good, 1)),
        "{events:?}"
    );
    assert!(events.contains(&("dead".into(), gone, 1)), "{events:?}");
    stack.finish().await;
}

/// Email through a real SMTP relay the test runs: delivered with subject, text and HTML and
/// the id in the Message-ID; a 550 for the mailbox is permanent, a 451 is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_smtp_and_5xx_is_permanent_4xx_retried() {
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = tries.clone();
    let smtp = common::SmtpServer::start(move |address| match address {
        "nobody@example.com" => "550 5.1.1 no such user",
        "busy@example.com" if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            "451 4.3.0 try again later"
        }
        _ => "250 OK",
    })
    .await;
    let url = smtp.url();
    let stack = Stack::start(move |c| {
        c.smtp_url = Some(url);
        c.smtp_from = "Herald <herald@example.com>".into();
    })
    .await;
    let post = |recipient: &str| {
        format!(
            r#"{{"priority":"high","channel":"email","recipient":"{recipient}","payload":{{"subject":"Your code","text":"Code 492811","html":"<p>Code <b>492811</b></p>"}}}}"#
        )
    };
    let good = stack.accept(post("ana@example.com")).await;
    let dead = stack.accept(post("nobody@example.com")).await;
    let retried = stack.accept(post("busy@example.com")).await;
    let mut events = Vec::new();
    for _ in 0..200 {
        events = stack.events().await;
        if events.iter().filter(|e| e.0 != "retrying").count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        events.contains(&("delivered".into(), good.clone(), 1)),
        "{events:?}"
    );
    assert!(events.contains(&("dead".into(), dead, 1)), "{events:?}");
    assert!(
        events.contains(&("retrying".into(), retried.clone(), 1)),
        "{events:?}"
    );
    assert!(
        events.contains(&("delivered".into(), retried, 2)),
        "{events:?}"
    );
    let mails = smtp.mails();
    let mail = mails
        .iter()
        .find(|m| m.to == ["ana@example.com"])
        .expect("mail to ana");
    assert_eq!(mail.from, "<herald@example.com>");
    assert!(mail.data.contains("Subject: Your code"), "{}", mail.data);
    assert!(mail.data.contains("Code 492811"), "{}", mail.data);
    assert!(mail.data.contains("text/html"), "{}", mail.data);
    assert!(
        mail.data.contains(&format!("<{good}@herald>")),
        "{}",
        mail.data
    );
    stack.finish().await;
}

/// SSRF policy, against a real receiver on loopback: a host name resolving to loopback,
/// an IPv4 literal and an IPv4-mapped IPv6 literal are all refused as permanent failures
/// without a connection; allow-listing loopback delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_internal_addresses_are_refused_unless_allow_listed() {
    use herald::delivery::senders::{client::client, webhook::WebhookSender};
    use herald::delivery::senders::{Attempt, SendOutcome, Sender};
    use herald::egress::EgressPolicy;
    use std::sync::Arc;

    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let port = receiver.addr.port();
    let send = |policy: EgressPolicy, url: String| async move {
        let policy = Arc::new(policy);
        let timeout = Duration::from_secs(5);
        let sender = WebhookSender::new(
            client(timeout, 4, Some(policy)),
            Some(herald::signing::Secret::parse(TEST_SECRET).unwrap()),
            None,
            herald::delivery::senders::client::Bounds {
                timeout,
                body_prefix: 1024,
                answers: herald::delivery::senders::Answers::Receiver,
            },
        );
        let body = webhook_to(&url, "high", 1);
        // The ingress would refuse the literals at the door; delivery must not rely on it.
        let anywhere = EgressPolicy::new(vec!["0.0.0.0/0".parse().unwrap()]);
        let limits = herald::model::Limits {
            egress: &anywhere,
            ..herald::model::Limits::public(64 * 1024)
        };
        let validated =
            herald::model::parse_notification(body.as_bytes(), &limits, chrono::Utc::now())
                .unwrap();
        let raw = validated.encode(
            herald::model::new_id(),
            uuid::Uuid::nil(),
            chrono::Utc::now(),
        );
        let notification: herald::model::WireNotification<'_> =
            serde_json::from_slice(&raw).unwrap();
        let attempt = Attempt {
            notification: &notification,
            raw: &raw,
            number: 1,
            trace: herald::trace::TraceParent::root(),
        };
        sender.send(&attempt).await
    };

    for url in [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        match send(EgressPolicy::default(), url.clone()).await {
            SendOutcome::Permanent {
                error,
                status: None,
                response: None,
            } => {
                assert!(error.contains("loopback"), "{url}: {error}");
                assert!(error.contains("refused by the webhook destination policy"));
            }
            other => panic!("{url}: expected a permanent refusal, got {other:?}"),
        }
    }
    assert!(
        receiver.received().is_empty(),
        "a refused destination was contacted"
    );

    let loopback = EgressPolicy::new(common::loopback_nets());
    let outcome = send(loopback, format!("http://localhost:{port}/hook")).await;
    assert!(
        matches!(
            outcome,
            SendOutcome::Delivered {
                status: Some(200),
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(receiver.wait_for(1, Duration::from_secs(5)).await.len(), 1);
}

/// A delivered message is acked only once its outcome event is stored. With the EVENTS
/// stream gone, the message stays unacknowledged (kept in progress past the ack wait, so it
/// is not sent again); once the stream is back, the event is stored and the message acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_is_acked_only_after_its_event_is_stored() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let mut stack = Stack::start(|_| {}).await;
    let nats_url = stack.server.nats_url.clone();
    let prefix = stack.server.prefix.clone();
    // The ingress would put the stream back at its next readiness check: stop it, and
    // publish the notification the way it does.
    stack.server.shutdown().await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let names = herald::jetstream::Names::new(&prefix);
    js.delete_stream(&names.events_stream).await.unwrap();
    let id = uuid::Uuid::now_v7();
    common::publish_notification(
        &js,
        &names,
        id,
        herald::model::Priority::High,
        &receiver.url(),
        r#"{"n":1}"#,
    )
    .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;

    let unacked = || async {
        let stream = js.get_stream(&names.notify_stream).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(&names.delivery_consumer(herald::model::Priority::High))
            .await
            .unwrap();
        consumer.info().await.unwrap().num_ack_pending
    };
    // Longer than the tests' 5 s ack wait: in-progress acks keep it with its worker.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(unacked().await, 1, "acked without its event");
    assert_eq!(
        receiver.received().len(),
        1,
        "sent again while its event waited"
    );

    herald::jetstream::ensure_streams(
        &js,
        &names,
        &herald::config::NatsConfig {
            nats_url: nats_url.clone(),
            prefix: prefix.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let events = stack.wait_events(1).await;
    assert_eq!(events, vec![("delivered".to_string(), id.to_string(), 1)]);
    eventually(Duration::from_secs(5), || async {
        (unacked().await == 0).then_some(())
    })
    .await
    .expect("not acked after its event was stored");
    assert_eq!(receiver.received().len(), 1);
    stack.finish().await;
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A receiver that answers `status` at once, then streams `body_mib` MiB of body (the
/// first chunk says `reason`) and keeps the connection open without ending the body.
async fn streaming_receiver(status: u16, reason: &'static str, body_mib: usize) -> String {
    use futures::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_req| async move {
                let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                let first = futures::stream::once(async move {
                    Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(reason)))
                });
                let rest = futures::stream::repeat(chunk)
                    .take(body_mib * 16)
                    .map(|c| Ok(Frame::data(c)));
                let endless = first.chain(rest).chain(futures::stream::pending());
                let mut resp = http::Response::new(StreamBody::new(endless));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_read_only_to_its_limit_and_its_status_decides() {
    // 200, then 512 MiB and a body that never ends: delivered once, memory flat.
    let endless_ok = streaming_receiver(200, "ok", 512).await;
    // 503 with a reason: retried, the reason recorded (cut at the limit) in the event.
    let failing = streaming_receiver(503, "database down; ", 1).await;
    let stack = Stack::start(|c| {
        c.response_body_limit = 64;
        c.retry_high = "100ms:200ms:300ms".parse().unwrap();
        // The breaker stays closed: the last attempt's answer is what the dead letter says.
        c.health.failures = 1_000;
    })
    .await;
    let before = peak_rss();
    let delivered = stack.accept(webhook_to(&endless_ok, "high", 1)).await;
    let dead = stack.accept(webhook_to(&failing, "high", 2)).await;
    let events = eventually(Duration::from_secs(20), || async {
        let events = stack.events().await;
        let settled = |id: &str, kind: &str| events.iter().any(|(e, i, _)| e == kind && i == id);
        (settled(&delivered, "delivered") && settled(&dead, "dead")).then_some(events)
    })
    .await
    .expect("both settled");
    // Delivered at the first attempt, not timed out reading the body and sent again.
    let of_delivered: Vec<_> = events.iter().filter(|(_, i, _)| *i == delivered).collect();
    assert_eq!(
        of_delivered,
        [&("delivered".to_string(), delivered.clone(), 1)]
    );
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "peak memory grew by {} MiB reading answers",
        grew >> 20
    );
    let raw = common::read_stream(
        &stack.server.nats_url,
        &format!("{}EVENTS", stack.server.prefix),
    )
    .await;
    let event = |id: &str, kind: &str| {
        raw.iter()
            .flat_map(|m| m.body.as_array().cloned().unwrap_or_default())
            .find(|e| e["id"] == id && e["event"] == kind)
            .unwrap()
    };
    let text =
        |e: &serde_json::Value, field: &str| e[field].as_str().unwrap_or_default().to_string();
    // The answer is recorded apart from the error, cut at the limit.
    let died = event(&dead, "dead");
    assert_eq!(
        text(&died, "error"),
        "webhook answered 503 (not delivered within its 300ms retry horizon)"
    );
    assert_eq!(died["status"], 503);
    let response = text(&died, "response");
    assert!(response.starts_with("database down; xxx"), "{response}");
    assert!(response.len() <= 64, "{response}");
    let ok = event(&delivered, "delivered");
    assert_eq!(ok["status"], 200);
    assert!(text(&ok, "response").starts_with("ok"), "{ok}");
    assert!(text(&ok, "response").len() <= 64, "{ok}");
    stack.finish().await;
}
