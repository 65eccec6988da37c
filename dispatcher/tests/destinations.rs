//! Failing destinations against real receivers on loopback: the circuit breaker, operator
//! pauses, `Retry-After` holds and rates, and Herald's own attempt count (waiting spends
//! no attempts).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, webhook_to, Receiver, Reply, Stack};
use serde_json::Value;

/// The API path of the webhook destination behind `receiver`, percent-encoded.
fn destination_path(receiver: &Receiver, rest: &str) -> String {
    format!(
        "/v1/destinations/webhook%3A127.0.0.1%3A{}{rest}",
        receiver.addr.port()
    )
}

/// The distinct notification ids a receiver answered 2xx, with each one's attempt header.
fn delivered(receiver: &Receiver, ok: impl Fn(usize) -> bool) -> Vec<(String, u32)> {
    let mut seen = HashSet::new();
    receiver
        .received()
        .iter()
        .enumerate()
        .filter(|(n, _)| ok(*n))
        .filter(|(_, r)| seen.insert(r.header("webhook-id")))
        .map(|(_, r)| {
            (
                r.header("webhook-id"),
                r.header("herald-attempt").parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_opens_its_circuit_and_its_messages_wait_with_attempts_left() {
    let down = Arc::new(AtomicBool::new(true));
    // The n-th request's answer, kept so the test knows which requests succeeded.
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failing = {
        let (down, answers) = (down.clone(), answers.clone());
        Receiver::start(move |_| {
            let status = if down.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            answers.lock().unwrap().push(status);
            (status, Duration::ZERO)
        })
        .await
    };
    let healthy = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|c| {
        // Retries 50-200 ms apart: without the breaker each message would spend an
        // attempt every few hundred milliseconds while the receiver is down.
        let quick = "50ms:200ms:1m".parse().unwrap();
        c.retry_high = quick;
        c.health.failures = 3;
        c.health.open_base = Duration::from_millis(500);
        c.health.open_cap = Duration::from_secs(1);
    })
    .await;
    let mut ids = HashSet::new();
    for n in 0..8 {
        ids.insert(stack.accept(webhook_to(&failing.url(), "high", n)).await);
        stack.accept(webhook_to(&healthy.url(), "high", n)).await;
    }
    // The healthy destination is not held up by the failing one.
    healthy.wait_for(8, Duration::from_secs(10)).await;

    let open = eventually(Duration::from_secs(10), || async {
        let r = stack.server.get(&destination_path(&failing, "")).await;
        (r.status == 200 && r.body["state"] == "open").then_some(r.body)
    })
    .await
    .expect("the circuit opens");
    assert_eq!(open["health"]["consecutive_failures"].as_u64().unwrap(), 3);
    assert!(open["health"]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    let listed = stack.server.get("/v1/destinations").await;
    assert_eq!(listed.status, 200);
    let names: Vec<&str> = listed.body["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["destination"].as_str().unwrap())
        .collect();
    let name = format!("webhook:127.0.0.1:{}", failing.addr.port());
    assert!(names.contains(&name.as_str()), "{names:?}");

    // Down for a while longer: only probes reach it, one at a time.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let while_down = failing.received().len();
    assert!(
        while_down <= 8 + 4,
        "{while_down} requests reached a destination whose circuit was open"
    );
    down.store(false, Ordering::SeqCst);

    let ok = |answers: &Arc<std::sync::Mutex<Vec<u16>>>| {
        let answers = answers.lock().unwrap().clone();
        move |n: usize| answers.get(n) == Some(&200)
    };
    let done = eventually(Duration::from_secs(20), || async {
        let got = delivered(&failing, ok(&answers));
        (got.len() == ids.len()).then_some(got)
    })
    .await
    .expect("every message to the failing destination is delivered after it recovers");
    for (id, attempt) in &done {
        assert!(ids.contains(id));
        assert!(*attempt <= 4, "{id} was delivered at attempt {attempt}");
    }
    let events = stack.wait_events(16).await;
    assert!(
        events.iter().all(|(kind, _, _)| kind != "dead"),
        "nothing is dead-lettered: {events:?}"
    );
    let health = eventually(Duration::from_secs(10), || async {
        let kinds: Vec<String> = stack
            .destination_events()
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        (kinds.len() >= 2).then_some(kinds)
    })
    .await
    .expect("destination events are stored");
    assert_eq!(health, vec!["destination.failing", "destination.recovered"]);
    let recovered = stack.server.get(&destination_path(&failing, "")).await;
    assert_eq!(recovered.body["state"], "closed");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_destination_holds_its_messages_and_they_go_at_attempt_one() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|c| {
        c.health.paused_wait = Duration::from_millis(200);
        // Longer than the pause: waiting must not use the horizon up here.
        c.retry_medium = "100ms:400ms:1m".parse().unwrap();
    })
    .await;
    let paused = stack
        .server
        .post(&destination_path(&receiver, "/pause"), "")
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    assert_eq!(paused.body["paused"], true);
    // Idempotent.
    let again = stack
        .server
        .post(&destination_path(&receiver, "/pause"), "")
        .await;
    assert_eq!(again.body["paused"], true);
    // Delivery follows the control through the bucket.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ids = HashSet::new();
    for n in 0..3 {
        ids.insert(stack.accept(webhook_to(&receiver.url(), "medium", n)).await);
    }
    // Each message comes back every ~200 ms and waits again: several deliveries each.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receiver.received().is_empty(),
        "a paused destination got a request"
    );

    let resumed = stack
        .server
        .post(&destination_path(&receiver, "/resume"), "")
        .await;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.body["paused"], false);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    for r in &got {
        assert!(ids.contains(&r.header("webhook-id")));
        // Waiting spent no attempts, though JetStream delivered each message many times.
        assert_eq!(r.header("herald-attempt"), "1");
    }
    let events = stack.wait_events(3).await;
    assert!(events
        .iter()
        .all(|(kind, _, attempt)| kind == "delivered" && *attempt == 1));
    stack.finish().await;
}

/// A destination that fails without a break for `--disable-after` has its endpoints
/// disabled: the waiting message is dead-lettered naming why, and a new one to the same
/// URL goes straight to the DLQ without a request; resuming enables it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_failing_for_disable_after_has_its_endpoint_disabled() {
    let down = Arc::new(AtomicBool::new(true));
    let receiver = {
        let down = down.clone();
        Receiver::start(move |_| {
            let status = if down.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            (status, Duration::ZERO)
        })
        .await
    };
    let stack = Stack::start(|c| {
        c.retry_high = "50ms:100ms:1m".parse().unwrap();
        c.health.failures = 1;
        c.health.open_base = Duration::from_millis(100);
        c.health.open_cap = Duration::from_millis(200);
        c.health.disable_after = Duration::from_secs(1);
    })
    .await;
    let first = stack.accept(webhook_to(&receiver.url(), "high", 1)).await;
    let dead = eventually(Duration::from_secs(10), || async {
        let list = stack.server.get("/v1/dlq").await;
        list.body["items"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .await
    .expect("dead-lettered once its destination failed for a second");
    assert_eq!(dead["id"], first.as_str());
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.contains("endpoint disabled: its destination failed without a break"),
        "{error}"
    );
    let requests = receiver.received().len();
    let second = stack.accept(webhook_to(&receiver.url(), "high", 2)).await;
    let both = eventually(Duration::from_secs(10), || async {
        let list = stack.server.get("/v1/dlq").await;
        (list.body["items"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "a new one to the disabled endpoint goes to the DLQ"
    );
    assert_eq!(
        receiver.received().len(),
        requests,
        "no request to a disabled endpoint"
    );

    down.store(false, Ordering::SeqCst);
    let resumed = stack
        .server
        .post(&destination_path(&receiver, "/resume"), "")
        .await;
    assert_eq!(resumed.status, 200, "{:?}", resumed.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replay = stack
        .server
        .post(&format!("/v1/dlq/{second}/replay"), "")
        .await;
    assert_eq!(replay.status, 202, "{:?}", replay.body);
    let got = eventually(Duration::from_secs(10), || async {
        let got = receiver.received();
        got.iter()
            .any(|r| r.header("webhook-id") == second)
            .then_some(())
    })
    .await;
    assert!(got.is_some(), "enabled again by the resume");
    stack.finish().await;
}

/// Circuits are shared through the bucket: once one delivery process saw a destination's
/// circuit open, another (here one started afterwards, with no failures of its own)
/// holds that destination's messages too, instead of failing them again one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_by_one_delivery_process_holds_the_messages_of_another() {
    let receiver = Receiver::start(|_| (503, Duration::ZERO)).await;
    let mut stack = Stack::start(|c| {
        c.retry_high = "50ms:100ms:1m".parse().unwrap();
        c.health.failures = 2;
        c.health.open_base = Duration::from_secs(5);
        c.health.open_cap = Duration::from_secs(10);
    })
    .await;
    for n in 0..2 {
        stack.accept(webhook_to(&receiver.url(), "high", n)).await;
    }
    let open = eventually(Duration::from_secs(10), || async {
        let r = stack.server.get(&destination_path(&receiver, "")).await;
        (r.body["state"] == "open").then_some(())
    })
    .await;
    assert!(open.is_some(), "the first process opens the circuit");
    stack.stop_delivery().await;
    let before = receiver.received().len();
    // A fresh process: it has counted nothing itself.
    stack.start_delivery().await;
    for n in 2..8 {
        stack.accept(webhook_to(&receiver.url(), "high", n)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.received().len(),
        before,
        "the second process sent to a destination whose circuit the first had opened"
    );
    stack.finish().await;
}

/// A pause is bounded by the retry horizon: a message its destination keeps waiting past
/// the horizon is dead-lettered, with the reason, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_paused_past_its_horizon_is_dead_lettered_with_the_reason() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|c| {
        c.health.paused_wait = Duration::from_millis(200);
        c.retry_low = "100ms:400ms:1s".parse().unwrap();
    })
    .await;
    let paused = stack
        .server
        .post(&destination_path(&receiver, "/pause"), "")
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = stack.accept(webhook_to(&receiver.url(), "low", 1)).await;
    let dead = eventually(Duration::from_secs(10), || async {
        let list = stack.server.get("/v1/dlq").await;
        list.body["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
    })
    .await
    .expect("dead-lettered");
    assert_eq!(dead["id"], id.as_str());
    let error = dead["error"].as_str().unwrap();
    assert!(error.contains("kept it waiting (paused)"), "{error}");
    assert!(error.contains("1s retry horizon"), "{error}");
    assert!(
        receiver.received().is_empty(),
        "a paused destination got a request"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_every_message_to_that_destination() {
    let receiver = Receiver::replying(|n, _| Reply {
        status: if n == 0 { 429 } else { 200 },
        delay: Duration::ZERO,
        retry_after: (n == 0).then_some(2),
        body: "",
    })
    .await;
    let stack = Stack::start(|_| {}).await;
    let first = stack.accept(webhook_to(&receiver.url(), "high", 0)).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let throttled_at = got[0].at;
    for n in 1..5 {
        stack.accept(webhook_to(&receiver.url(), "high", n)).await;
    }
    let all = receiver.wait_for(6, Duration::from_secs(15)).await;
    for r in &all[1..] {
        let after = r.at - throttled_at;
        assert!(
            after >= Duration::from_millis(1900),
            "{} went {after:?} after a Retry-After of 2 s",
            r.header("webhook-id")
        );
        let expected = if r.header("webhook-id") == first {
            "2"
        } else {
            "1"
        };
        assert_eq!(r.header("herald-attempt"), expected);
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_rate_and_the_tenant_default_spread_sends() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let set = stack
        .server
        .put(&destination_path(&receiver, ""), r#"{"rate_per_sec": 4}"#)
        .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["rate_per_sec"], 4.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..12 {
        stack.accept(webhook_to(&receiver.url(), "low", n)).await;
    }
    let got = receiver.wait_for(12, Duration::from_secs(20)).await;
    // A second's worth (4) at once, then 4 per second: the last is 2 s after the first.
    let span = got[11].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1500),
        "12 sends at 4/s took {span:?}"
    );
    assert!(got.iter().all(|r| r.header("herald-attempt") == "1"));

    let cleared = stack
        .server
        .put(
            &destination_path(&receiver, ""),
            r#"{"rate_per_sec": null}"#,
        )
        .await;
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.body["rate_per_sec"], Value::Null);

    // The tenant's default rate holds a destination without a rate of its own.
    let other = Receiver::start(|_| (200, Duration::ZERO)).await;
    let set = stack
        .server
        .put("/v1/destinations/defaults", r#"{"rate_per_sec": 4}"#)
        .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let read = stack.server.get("/v1/destinations/defaults").await;
    assert_eq!(read.body["rate_per_sec"], 4.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..12 {
        stack.accept(webhook_to(&other.url(), "low", n)).await;
    }
    let got = other.wait_for(12, Duration::from_secs(20)).await;
    let span = got[11].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1500),
        "12 sends at a default of 4/s took {span:?}"
    );
    let unset = stack
        .server
        .put("/v1/destinations/defaults", r#"{"rate_per_sec": null}"#)
        .await;
    assert_eq!(unset.status, 200);
    assert_eq!(unset.body, serde_json::json!({}));
    stack.finish().await;
}

/// A destination's rate is split between the delivery processes that are alive: two of
/// them together send at its rate, not twice it; once one stops, the other takes it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_rate_is_shared_by_every_delivery_process() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|_| {}).await;
    let second = stack.another_delivery().await;
    let set = stack
        .server
        .put(&destination_path(&receiver, ""), r#"{"rate_per_sec": 4}"#)
        .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    // Each process beats at once when it starts; the other follows within moments.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..20 {
        stack.accept(webhook_to(&receiver.url(), "low", n)).await;
    }
    let got = receiver.wait_for(20, Duration::from_secs(30)).await;
    // 4/s in all, with a second's burst: the 20th about 4 s after the first. Each process
    // at the whole rate would have sent them all within 1.5 s.
    let span = got[19].at - got[0].at;
    assert!(
        span >= Duration::from_millis(3000),
        "20 sends at 4/s from two processes took {span:?}"
    );

    // The second leaves (its key goes): the first sends at the whole rate again, 12 in
    // about 2 s where half the rate would take 5 s.
    second.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 20..32 {
        stack.accept(webhook_to(&receiver.url(), "low", n)).await;
    }
    let got = receiver.wait_for(32, Duration::from_secs(30)).await;
    let span = got[31].at - got[20].at;
    assert!(
        span >= Duration::from_millis(1500) && span < Duration::from_millis(4500),
        "12 sends at 4/s from one process took {span:?}"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destinations_api_names_what_is_wrong() {
    let stack = Stack::start(|_| {}).await;
    for bad in [
        "nope",
        "fax%3Ahost%3A80",
        "webhook%3Ahost%3Aport",
        "webhook%3A%3A80",
    ] {
        let r = stack.server.get(&format!("/v1/destinations/{bad}")).await;
        assert_eq!(r.status, 422, "{bad}: {:?}", r.body);
        assert_eq!(r.body["error"]["field"], "destination");
    }
    let unknown = stack
        .server
        .get("/v1/destinations/webhook%3Anowhere.example%3A443")
        .await;
    assert_eq!(unknown.status, 404);
    for body in [
        r#"{"rate_per_sec": 0}"#,
        r#"{"rate_per_sec": -1}"#,
        r#"{"rate": 1}"#,
    ] {
        let r = stack
            .server
            .put("/v1/destinations/webhook%3Ahost.example%3A443", body)
            .await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["field"], "rate_per_sec");
    }
    let listed = stack.server.get("/v1/destinations").await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["destinations"], serde_json::json!([]));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_destination_cannot_take_every_worker() {
    let hanging = Receiver::start(|_| (200, Duration::from_secs(4))).await;
    let healthy = Receiver::start(|_| (200, Duration::ZERO)).await;
    let stack = Stack::start(|c| {
        // Four webhook workers, at most two of them on one destination.
        c.channel_concurrency.0[0] = 4;
        c.health.max_in_flight = 2;
    })
    .await;
    for n in 0..6 {
        stack.accept(webhook_to(&hanging.url(), "high", n)).await;
    }
    hanging.wait_for(2, Duration::from_secs(10)).await;
    let sent = std::time::Instant::now();
    for n in 0..5 {
        stack.accept(webhook_to(&healthy.url(), "high", n)).await;
    }
    // Without the cap, all four workers would sit on the hanging receiver for 4 s.
    healthy.wait_for(5, Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the healthy destination waited {took:?} behind a hanging one"
    );
    assert_eq!(
        hanging.received().len(),
        2,
        "more than two sends in flight to one destination"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sms_provider_fails_over_to_the_next_and_the_attempt_names_it() {
    let first = Receiver::start(|_| (503, Duration::ZERO)).await;
    let second = Receiver::start(|_| (201, Duration::ZERO)).await;
    let urls = format!("http://{},http://{}", first.addr, second.addr);
    let mut stack = Stack::start(move |c| {
        c.sms_url = Some(urls);
        // One account for the first provider, another for the second.
        c.sms_account_sid = "AC1,AC2".into();
        c.sms_auth_token = "token".into();
        c.sms_from = "+15005550006".into();
        c.health.failures = 2;
    })
    .await;
    stack.start_recording().await;
    let mut ids = Vec::new();
    for n in 1..=4 {
        let body = format!(
            r#"{{"priority":"high","channel":"sms","recipient":"+4915112345678","payload":{{"text":"code {n}"}}}}"#
        );
        ids.push(stack.accept(body).await);
        second.wait_for(n, Duration::from_secs(10)).await;
    }
    // Two failures opened the first provider's circuit: later messages skip it.
    assert_eq!(
        first.received().len(),
        2,
        "the first provider was tried past its circuit"
    );
    let got = second.received();
    assert!(got
        .iter()
        .all(|r| r.uri.path() == "/2010-04-01/Accounts/AC2/Messages.json"));
    let second_name = format!("sms:127.0.0.1:{}", second.addr.port());
    let path = format!("/v1/notifications/{}/attempts", ids[0]);
    let attempts = eventually(Duration::from_secs(10), || async {
        let r = stack.server.get(&path).await;
        (r.status == 200 && !r.body["attempts"].as_array()?.is_empty()).then_some(r.body)
    })
    .await
    .expect("the attempt is recorded");
    let attempt = &attempts["attempts"][0];
    assert_eq!(attempt["outcome"], "delivered");
    assert_eq!(
        attempt["attempt"], 1,
        "failing over spends no extra attempt"
    );
    assert_eq!(attempt["provider"], second_name.as_str());
    let events = stack.wait_events(4).await;
    assert!(
        events
            .iter()
            .all(|(kind, _, n)| kind == "delivered" && *n == 1),
        "{events:?}"
    );
    stack.finish().await;
}
