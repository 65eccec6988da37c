//! Operational webhooks: a tenant's operations endpoint is told when one of its
//! notifications dies and when an endpoint is disabled (a 410), by signed webhooks Herald
//! delivers itself; the endpoint is never told about its own failures.

mod common;

use std::time::Duration;

use common::{
    migrated_pool, sealing_key, test_store, HttpClient, Receiver, Stack, TestResponse, TestServer,
};

/// An authenticated stack with two tenants: (stack, each one's `Authorization` value).
async fn tenant_stack() -> (Stack, [String; 2]) {
    let server = TestServer::start_with(|c| c.auth = herald::config::AuthMode::Required).await;
    let pool = migrated_pool(&test_store(&server.prefix)).await;
    let mut bearers = Vec::new();
    for name in ["told", "itself"] {
        herald::tenants::create_tenant(&pool, &sealing_key(), name, Default::default())
            .await
            .unwrap();
        let key = herald::tenants::create_key(&pool, name).await.unwrap().key;
        bearers.push(format!("Bearer {key}"));
    }
    pool.close().await;
    let stack = Stack::start_with(server, Default::default(), |_| {}).await;
    (stack, bearers.try_into().unwrap())
}

async fn call(stack: &Stack, bearer: &str, method: &str, path: &str, body: String) -> TestResponse {
    HttpClient::new(false)
        .request_with(
            method,
            &stack.server.url(path),
            Some("application/json"),
            &[("authorization", bearer)],
            body.into(),
        )
        .await
        .unwrap()
}

fn webhook(url: &str) -> String {
    format!(r#"{{"priority":"low","channel":"webhook","recipient":"{url}","payload":{{"n":1}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_endpoint_is_told_when_a_notification_dies_but_not_about_itself() {
    let (stack, [bearer, other]) = tenant_stack().await;
    let ops = Receiver::start(|_| (204, Duration::ZERO)).await;
    let gone = Receiver::start(|_| (410, Duration::ZERO)).await;

    let none = call(
        &stack,
        &bearer,
        "GET",
        "/v1/operations-endpoint",
        String::new(),
    )
    .await;
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert!(none.body["url"].is_null());
    let bad = r#"{"url":"ftp://x"}"#.to_string();
    let bad = call(&stack, &bearer, "PUT", "/v1/operations-endpoint", bad).await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    assert_eq!(bad.body["error"]["field"], "url");
    // One tenant is told at `ops`; the other's endpoint is the receiver that answers 410.
    for (bearer, endpoint) in [(&bearer, &ops), (&other, &gone)] {
        let set = format!(r#"{{"url":"{}"}}"#, endpoint.url());
        let set = call(&stack, bearer, "PUT", "/v1/operations-endpoint", set).await;
        assert_eq!(set.status, 200, "{:?}", set.body);
    }
    let read = call(
        &stack,
        &bearer,
        "GET",
        "/v1/operations-endpoint",
        String::new(),
    )
    .await;
    assert_eq!(read.body["url"], ops.url().as_str());

    let accepted = call(
        &stack,
        &bearer,
        "POST",
        "/v1/notifications",
        webhook(&gone.url()),
    )
    .await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let id = accepted.body["id"].as_str().unwrap().to_string();
    // The 410 kills the notification and disables its endpoint: two events.
    let told = ops.wait_for(2, Duration::from_secs(20)).await;
    let events: Vec<serde_json::Value> = told
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let of = |kind: &str| events.iter().find(|e| e["type"] == kind).cloned();
    let dead = of("notification.dead").expect("a notification.dead event");
    assert_eq!(dead["priority"], "high");
    assert_eq!(dead["data"]["id"], id.as_str());
    assert_eq!(dead["data"]["status"], 410);
    assert_eq!(dead["data"]["recipient"], gone.url().as_str());
    let disabled = of("destination.disabled").expect("a destination.disabled event");
    assert_eq!(disabled["data"]["url"], gone.url().as_str());
    let signed = told
        .iter()
        .all(|r| !r.header("webhook-signature").is_empty());
    assert!(signed, "signed like every webhook");

    // The other tenant's notification to its own endpoint dies, and the endpoint is not
    // told about its own failure.
    let accepted = call(
        &stack,
        &other,
        "POST",
        "/v1/notifications",
        webhook(&gone.url()),
    )
    .await;
    assert_eq!(accepted.status, 202);
    let dead = common::eventually(Duration::from_secs(10), || async {
        let list = call(&stack, &other, "GET", "/v1/dlq", String::new()).await;
        (list.body["items"].as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;
    assert!(dead.is_some(), "its notification is a dead letter");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two requests reached `gone`: one of each tenant, no event about itself.
    assert_eq!(
        gone.received().len(),
        2,
        "the endpoint was told about itself"
    );
    assert_eq!(ops.received().len(), 2);
    stack.finish().await;
}
