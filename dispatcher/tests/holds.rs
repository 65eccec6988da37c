//! Waiting messages leave the work window: thousands of scheduled notifications and a dead
//! receiver's backlog, each many times `--max-ack-pending`, do not hold up a deliverable
//! notification of the same priority; a held message comes back with its attempts, and
//! the recorder does not take its return for a new acceptance.

mod common;

use std::time::Duration;

use futures::StreamExt;

use common::{eventually, free_port, webhook_to, Receiver, Stack};

/// The window of each priority's consumer in these tests: what waits is many times it.
const WINDOW: usize = 16;

/// `n` low webhooks to `url` in one batch body, each due at `send_at` when given.
fn batch(url: &str, n: usize, send_at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let send_at = send_at.map_or(String::new(), |at| {
        format!(r#","send_at":"{}""#, at.to_rfc3339())
    });
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"priority":"low","channel":"webhook","recipient":"{url}","payload":{{"n":{i}}}{send_at}}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

async fn accept_batch(stack: &Stack, body: String) {
    let r = stack.server.post("/v1/notifications/batch", body).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

/// Messages in the HOLD stream's schedules (`<prefix>hold.>`).
async fn scheduled_in_hold(stack: &Stack) -> u64 {
    let client = async_nats::connect(&stack.server.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}HOLD", stack.server.prefix))
        .await
        .expect("HOLD exists");
    let subjects = stream
        .info_with_subjects(format!("{}hold.>", stack.server.prefix))
        .await
        .unwrap();
    // One schedule per subject (per notification).
    subjects.count().await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_held_backlogs_do_not_block_their_priority() {
    let healthy = Receiver::start(|_| (200, Duration::ZERO)).await;
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let stack = Stack::start(|c| {
        c.max_ack_pending = WINDOW;
        c.fetch_batch = WINDOW;
    })
    .await;

    // 10x the window scheduled ten minutes ahead, and 10x the window to a receiver that
    // is down (connection refused: retries, then an open circuit).
    let later = chrono::Utc::now() + chrono::Duration::minutes(10);
    for _ in 0..2 {
        accept_batch(&stack, batch(&healthy.url(), 5 * WINDOW, Some(later))).await;
        accept_batch(&stack, batch(&dead, 5 * WINDOW, None)).await;
    }
    // Deliverable low notifications still go through, one after another.
    for n in 0..3 {
        let id = stack.accept(webhook_to(&healthy.url(), "low", n)).await;
        let got = eventually(Duration::from_secs(10), || async {
            healthy
                .received()
                .iter()
                .any(|r| r.header("webhook-id") == id)
                .then_some(())
        })
        .await;
        assert!(
            got.is_some(),
            "low notification {n} held up behind waiting ones"
        );
    }
    // Nothing scheduled came early: it waits in HOLD, out of the window.
    assert_eq!(healthy.received().len(), 3);
    let waiting = 10 * WINDOW as u64;
    eventually(Duration::from_secs(20), || async {
        (scheduled_in_hold(&stack).await >= waiting).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the scheduled backlog did not reach HOLD"));
    stack.server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_comes_back_with_its_attempts_and_is_recorded_once() {
    // Fails twice (retryable), then takes it.
    let receiver = Receiver::start(|n| (if n < 2 { 503 } else { 200 }, Duration::ZERO)).await;
    let mut stack = Stack::start(|c| {
        c.max_ack_pending = WINDOW;
        // Every wait is held, however short, and retries wait about a second.
        c.hold_after = Duration::ZERO;
        c.retry_low = "500ms:1s:30s".parse().unwrap();
    })
    .await;
    stack.start_recording().await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(2);
    // The same moment on the monotonic clock: the wall clock may be slewed or stepped.
    let due_at = std::time::Instant::now() + Duration::from_secs(2);
    let body = format!(
        r#"{{"priority":"low","channel":"webhook","recipient":"{}","payload":{{}},"send_at":"{}"}}"#,
        receiver.url(),
        due.to_rfc3339()
    );
    let id = stack.accept(body).await;

    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    let attempts: Vec<String> = got.iter().map(|r| r.header("herald-attempt")).collect();
    // The wait for send_at spent nothing; each retry came back from HOLD counting on.
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(got.iter().all(|r| r.header("webhook-id") == id));
    let first = got[0].at;
    // Sent early it would arrive about two seconds early; 100 ms is the clocks' slack.
    assert!(
        first + Duration::from_millis(100) >= due_at,
        "sent {:?} before it was due",
        due_at.saturating_duration_since(first)
    );

    // Recorded as accepted once, and delivered at attempt 3.
    let path = format!("/v1/notifications/{id}");
    let status = eventually(Duration::from_secs(10), || async {
        let r = stack.server.get(&path).await;
        (r.status == 200 && r.body["status"] == "delivered").then_some(r.body)
    })
    .await
    .expect("recorded as delivered");
    assert_eq!(status["attempts"], 3, "{status}");
    let client = async_nats::connect(&stack.server.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(format!("{}NOTIFY", stack.server.prefix))
        .await
        .unwrap()
        .get_consumer(&format!("{}record-postgres-notify", stack.server.prefix))
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.delivered.stream_sequence, 1,
        "the recorder read only the acceptance: {info:?}"
    );
    // The returns went through NOTIFY (the original and three comebacks).
    let notify = js
        .get_stream(format!("{}NOTIFY", stack.server.prefix))
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert!(notify >= 4, "NOTIFY holds {notify} messages");
    stack.stop_recording().await;
    stack.server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_at_beyond_what_herald_keeps_is_refused_naming_the_limit() {
    let server = common::TestServer::start().await;
    let at = |days| {
        let send_at = chrono::Utc::now() + chrono::Duration::days(days);
        format!(
            r#"{{"priority":"low","channel":"webhook","recipient":"http://127.0.0.1:9/hook","payload":{{}},"send_at":"{}"}}"#,
            send_at.to_rfc3339()
        )
    };
    // The default retention is 7 days; a week and a day ahead would age out unseen.
    let far = server.post("/v1/notifications", at(8)).await;
    assert_eq!(far.status, 422, "{:?}", far.body);
    assert_eq!(far.body["error"]["field"], "send_at");
    let message = far.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("6days 23h"), "{message}");
    // The same inside a batch names the item.
    let batch = server
        .post("/v1/notifications/batch", format!("[{}]", at(8)))
        .await;
    assert_eq!(batch.status, 422, "{:?}", batch.body);
    assert!(
        batch.body.to_string().contains("send_at"),
        "{:?}",
        batch.body
    );
    let near = server.post("/v1/notifications", at(6)).await;
    assert_eq!(near.status, 202, "{:?}", near.body);
    server.finish().await;
}

/// Starts delivery on `prefix` whose PostgreSQL (tenants' webhook secrets) is `pg`.
async fn delivery_with(prefix: &str, pg: &herald::config::PgConfig) -> herald::delivery::Delivery {
    let client = async_nats::connect(common::nats_url()).await.unwrap();
    herald::app::start_delivery(
        &async_nats::jetstream::new(client),
        &herald::jetstream::Names::new(prefix),
        &common::test_delivery_config(),
        &herald::config::EgressConfig {
            webhook_allow_nets: herald::egress::Nets(common::loopback_nets()),
        },
        pg,
        Default::default(),
        herald::admission::Yielding::default(),
        herald::trace::Spans::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("delivery starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_herald_needs_being_down_makes_messages_wait_without_attempts() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let server = common::TestServer::start().await;
    let prefix = server.prefix.clone();
    let store = common::test_store(&prefix);
    let pool = common::migrated_pool(&store).await;
    let limits = herald::tenants::TenantLimits {
        rate_per_sec: None,
        burst: None,
        max_payload: None,
    };
    let tenant = herald::tenants::create_tenant(&pool, &common::sealing_key(), "acme", limits)
        .await
        .unwrap();
    // A notification of that tenant, straight into NOTIFY.
    let client = async_nats::connect(common::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names = herald::jetstream::Names::new(&prefix);
    let id = uuid::Uuid::now_v7();
    let high = herald::model::Priority::High;
    common::publish_notification_of(&js, &names, tenant.id, id, high, &receiver.url(), "{}").await;

    // Its webhook secret cannot be read: PostgreSQL is unreachable for this delivery. The
    // test retries (4 within a second) would all be spent by now if they counted.
    let down = herald::config::PgConfig {
        database_url: String::from("postgres://root@127.0.0.1:1/test"),
        ..store.pg.clone()
    };
    let blind = delivery_with(&prefix, &down).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(receiver.received().is_empty());
    blind.shutdown().await;
    let events = common::read_stream(&common::nats_url(), &format!("{prefix}EVENTS")).await;
    assert!(events.is_empty(), "attempts were recorded: {events:?}");

    // With the store back, it goes at its first attempt.
    let seeing = delivery_with(&prefix, &store.pg).await;
    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].header("webhook-id"), id.to_string());
    assert_eq!(got[0].header("herald-attempt"), "1");
    seeing.shutdown().await;
    server.finish().await;
}
