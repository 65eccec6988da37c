//! Herald's real webhooks, verified by receivers that use the Standard Webhooks libraries
//! from their registries (`standardwebhooks` from PyPI and from npm, installed by
//! scripts/lib/verifiers.sh), never Herald's own code: a first delivery, a retried one
//! (signed afresh), and the refusals those libraries must make (a tampered body, an old
//! timestamp, another secret).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{migrated_pool, sealing_key, test_store, HttpClient, Stack, TestServer, TEST_SECRET};
use herald::signing::{KeyPair, Secret, SigningKeys};
use serde_json::Value;

const VERIFIERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verifiers");

/// A receiver process and the lines it printed, one per request.
struct Verifier {
    child: Child,
    url: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Verifier {
    /// `python` or `node`, verifying with `secret` (a `whsec_` secret, or for `python` a
    /// `whpk_` public key: then the `v1a` signature is verified).
    fn start(runtime: &str, secret: &str) -> Verifier {
        Verifier::start_on(runtime, secret, 0)
    }

    /// As [`Verifier::start`], on `port` (0: any).
    fn start_on(runtime: &str, secret: &str, port: u16) -> Verifier {
        let (program, script) = match runtime {
            "python" => (format!("{VERIFIERS}/.venv/bin/python"), "receiver.py"),
            _ => (String::from("node"), "receiver.mjs"),
        };
        let mut child = Command::new(&program)
            .arg(format!("{VERIFIERS}/{script}"))
            .env("PORT", port.to_string())
            .env(
                if secret.starts_with("whpk_") {
                    "WEBHOOK_PUBLIC_KEY"
                } else {
                    "WEBHOOK_SECRET"
                },
                secret,
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} {script}: {e} (scripts/lib/verifiers.sh installs the verifiers)")
            });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut port = String::new();
        stdout.read_line(&mut port).unwrap();
        let port: u16 = port.trim().parse().unwrap_or_else(|_| {
            panic!("{runtime} receiver did not start (scripts/lib/verifiers.sh installs it)")
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = lines.clone();
        std::thread::spawn(move || read_lines(stdout, into));
        Verifier {
            child,
            url: format!("http://127.0.0.1:{port}"),
            lines,
        }
    }

    /// The first `n` lines, waiting up to 20 s.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if lines.len() >= n || start.elapsed() > Duration::from_secs(20) {
                assert!(lines.len() >= n, "{n} requests expected, got {lines:?}");
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn read_lines(stdout: BufReader<ChildStdout>, into: Arc<Mutex<Vec<Value>>>) {
    for line in stdout.lines().map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str(&line) {
            into.lock().unwrap().push(v);
        }
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` to `url` with Standard Webhooks headers; the receiver's status.
async fn post(url: &str, id: &str, timestamp: u64, signature: &str, body: &str) -> u16 {
    let timestamp = timestamp.to_string();
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature),
    ];
    let response = HttpClient::new(false)
        .request_with(
            "POST",
            url,
            Some("application/json"),
            &headers,
            body.to_string().into(),
        )
        .await
        .unwrap();
    response.status
}

async fn herald_s_deliveries_verify(runtime: &str) {
    let verifier = Verifier::start(runtime, TEST_SECRET);
    let stack = Stack::start(|_| {}).await;
    let body = |path: &str, n: usize| {
        format!(
            r#"{{"priority":"high","channel":"webhook","recipient":"{}{path}","type":"invoice.paid","payload":{{"n":{n}}}}}"#,
            verifier.url
        )
    };
    let first = stack.accept(body("/ok", 1)).await;
    let retried = stack.accept(body("/flaky", 2)).await;
    // /ok once; /flaky twice (503, then 204), each attempt verified on its own.
    let lines = verifier.wait_for(3).await;
    stack.wait_events(2).await;
    let of = |id: &str| -> Vec<&Value> { lines.iter().filter(|l| l["id"] == id).collect() };
    assert_eq!(of(&first).len(), 1, "{lines:?}");
    assert_eq!(of(&retried).len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(
            line["verified"], true,
            "{runtime} refused Herald's webhook: {line}"
        );
    }
    stack.finish().await;

    // What the library must refuse: a body changed after signing, a valid signature on a
    // timestamp an hour old, and a signature made with another secret.
    let secret = Secret::parse(TEST_SECRET).unwrap();
    let (id, signed) = ("msg_1", r#"{"id":"msg_1","data":{"n":1}}"#);
    let at = now();
    let ok = format!("{}/ok", verifier.url);
    assert_eq!(
        post(&ok, id, at, &secret.sign(id, at, signed.as_bytes()), signed).await,
        204
    );
    let tampered = r#"{"id":"msg_1","data":{"n":2}}"#;
    let signature = secret.sign(id, at, signed.as_bytes());
    assert_eq!(post(&ok, id, at, &signature, tampered).await, 401);
    let old = at - 3600;
    let signature = secret.sign(id, old, signed.as_bytes());
    assert_eq!(post(&ok, id, old, &signature, signed).await, 401);
    let other = Secret::parse(&Secret::generate()).unwrap();
    let signature = other.sign(id, at, signed.as_bytes());
    assert_eq!(post(&ok, id, at, &signature, signed).await, 401);
    // During a rotation a request carries one signature per secret: either verifies.
    let both = SigningKeys {
        secrets: vec![other, secret],
        pairs: Vec::new(),
    }
    .header(id, at, signed.as_bytes());
    assert_eq!(post(&ok, id, at, &both, signed).await, 204);
    let lines = verifier.wait_for(lines.len() + 5).await;
    let refusals: Vec<&Value> = lines.iter().filter(|l| l["verified"] == false).collect();
    assert_eq!(refusals.len(), 3, "{lines:?}");
}

#[tokio::test]
async fn python_standardwebhooks_verifies_herald_s_webhooks() {
    herald_s_deliveries_verify("python").await;
}

#[tokio::test]
async fn npm_standardwebhooks_verifies_herald_s_webhooks() {
    herald_s_deliveries_verify("node").await;
}

/// A secret Herald generates is one the libraries read as Herald does: the same key, so
/// the same signature.
#[test]
fn generated_secrets_give_the_python_library_s_signature() {
    let text = Secret::generate();
    let script = "import sys, datetime\n\
        from standardwebhooks.webhooks import Webhook\n\
        at = datetime.datetime.fromtimestamp(1700000000, datetime.timezone.utc)\n\
        print(Webhook(sys.argv[1]).sign('msg_2', at, '{\"a\":1}'))";
    let out = Command::new(format!("{VERIFIERS}/.venv/bin/python"))
        .args(["-c", script, &text])
        .output()
        .expect("scripts/lib/verifiers.sh installs the verifiers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = String::from_utf8(out.stdout).unwrap();
    let ours = Secret::parse(&text)
        .unwrap()
        .sign("msg_2", 1_700_000_000, br#"{"a":1}"#);
    assert_eq!(theirs.trim(), ours);
}

/// A rotation through the API: the new secret is returned once, and while the overlap
/// lasts every webhook carries a signature per secret, so a receiver still holding the
/// old one and a receiver given the new one both verify, each with its own library.
/// Once the overlap ends only the new secret signs.
#[tokio::test]
async fn during_a_rotation_the_old_and_the_new_secret_each_verify() {
    let server = TestServer::start_with(|c| c.auth = herald::config::AuthMode::Required).await;
    let pool = migrated_pool(&test_store(&server.prefix)).await;
    let tenant =
        herald::tenants::create_tenant(&pool, &sealing_key(), "rotating", Default::default())
            .await
            .unwrap();
    let key = herald::tenants::create_key(&pool, "rotating")
        .await
        .unwrap()
        .key;
    let stack = Stack::start_with(server, Default::default(), |_| {}).await;
    let bearer = format!("Bearer {key}");
    let call = |path: &str, body: String| {
        let (url, bearer) = (stack.server.url(path), bearer.clone());
        async move {
            let headers = [("authorization", bearer.as_str())];
            HttpClient::new(false)
                .request_with(
                    "POST",
                    &url,
                    Some("application/json"),
                    &headers,
                    body.into(),
                )
                .await
                .unwrap()
        }
    };
    let refused = call(
        "/v1/webhook-secret/rotate?overlap_seconds=9999999",
        String::new(),
    )
    .await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["field"], "overlap_seconds");
    let rotated = call(
        "/v1/webhook-secret/rotate?overlap_seconds=3600",
        String::new(),
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let new = rotated.body["secret"].as_str().unwrap().to_string();
    assert_ne!(new, tenant.webhook_secret);
    assert!(Secret::parse(&new).is_ok());
    assert!(rotated.body["previous_expires_at"].is_string());

    let holds_old = Verifier::start("python", &tenant.webhook_secret);
    let holds_new = Verifier::start("node", &new);
    for (n, verifier) in [&holds_old, &holds_new].into_iter().enumerate() {
        let body = format!(
            r#"{{"priority":"high","channel":"webhook","recipient":"{}/ok","payload":{{"n":{n}}}}}"#,
            verifier.url
        );
        let accepted = call("/v1/notifications", body).await;
        assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    }
    for verifier in [&holds_old, &holds_new] {
        let lines = verifier.wait_for(1).await;
        assert_eq!(lines[0]["verified"], true, "{lines:?}");
    }

    // Ended overlap: only the current secret is read back for signing.
    let key = sealing_key();
    let secret = herald::tenants::KeyKind::Secret;
    herald::tenants::rotate_key(&pool, &key, tenant.id, secret, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let directory = herald::tenants::Directory::new(pool.clone(), Duration::ZERO, key);
    let read = directory.get(tenant.id).await.unwrap().unwrap();
    assert_eq!(read.keys.secrets.len(), 1);
    assert_ne!(read.keys.secrets[0], Secret::parse(&new).unwrap());
    pool.close().await;
    stack.finish().await;
}

/// A tenant on an authenticated stack, with a key: (stack, pool, tenant's secret, a POST
/// with the tenant's key, a GET with it).
async fn tenant_stack(name: &str) -> (Stack, sqlx::PgPool, String, String) {
    let server = TestServer::start_with(|c| c.auth = herald::config::AuthMode::Required).await;
    let pool = migrated_pool(&test_store(&server.prefix)).await;
    let tenant = herald::tenants::create_tenant(&pool, &sealing_key(), name, Default::default())
        .await
        .unwrap();
    let key = herald::tenants::create_key(&pool, name).await.unwrap().key;
    let stack = Stack::start_with(server, Default::default(), |_| {}).await;
    (stack, pool, tenant.webhook_secret, format!("Bearer {key}"))
}

/// `method` on `path` as the tenant whose `Authorization` is `bearer`.
async fn call(
    stack: &Stack,
    bearer: &str,
    method: &str,
    path: &str,
    body: String,
) -> common::TestResponse {
    let headers = [("authorization", bearer)];
    HttpClient::new(false)
        .request_with(
            method,
            &stack.server.url(path),
            Some("application/json"),
            &headers,
            body.into(),
        )
        .await
        .unwrap()
}

fn webhook(url: &str, n: usize) -> String {
    format!(
        r#"{{"priority":"high","channel":"webhook","recipient":"{url}","payload":{{"n":{n}}}}}"#
    )
}

/// An endpoint with a secret of its own is signed with it alone: its receiver verifies
/// with the endpoint's secret, another endpoint of the tenant is still signed with the
/// tenant's, and another URL on the same host and port is not signed with the endpoint's
/// secret (a receiver sharing that host cannot use its signatures to forge). Dropping the
/// endpoint's secret gives it back to the tenant's.
#[tokio::test]
async fn an_endpoint_with_its_own_secret_is_signed_with_it_alone() {
    let (stack, pool, tenant_secret, bearer) = tenant_stack("endpoints").await;
    let port = common::free_port();
    let endpoint = format!("http://127.0.0.1:{port}/ok");
    let url_query = |url: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("url", url)
            .finish()
    };
    let bad = "/v1/webhook-secret/rotate?url=ftp%3A%2F%2Fx";
    let bad = call(&stack, &bearer, "POST", bad, String::new()).await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    assert_eq!(bad.body["error"]["field"], "url");
    let path = format!(
        "/v1/webhook-secret/rotate?overlap_seconds=0&{}",
        url_query(&endpoint)
    );
    let rotated = call(&stack, &bearer, "POST", &path, String::new()).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let endpoint_secret = rotated.body["secret"].as_str().unwrap();
    assert_ne!(endpoint_secret, tenant_secret);
    assert!(Secret::parse(endpoint_secret).is_ok());

    let holds_endpoint = Verifier::start_on("python", endpoint_secret, port);
    let holds_tenant = Verifier::start("node", &tenant_secret);
    let other_tenant_endpoint = format!("{}/ok", holds_tenant.url);
    let same_host_other_url = format!("{endpoint}?other=1");
    for (n, url) in [&endpoint, &other_tenant_endpoint, &same_host_other_url]
        .into_iter()
        .enumerate()
    {
        let accepted = call(
            &stack,
            &bearer,
            "POST",
            "/v1/notifications",
            webhook(url, n),
        )
        .await;
        assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    }
    let lines = holds_endpoint.wait_for(2).await;
    let on = |path: &str| lines.iter().find(|l| l["path"] == path).cloned();
    assert_eq!(on("/ok").unwrap()["verified"], true, "{lines:?}");
    assert_eq!(on("/ok?other=1").unwrap()["verified"], false, "{lines:?}");
    assert_eq!(holds_tenant.wait_for(1).await[0]["verified"], true);

    let drop_path = format!("/v1/webhook-secret?{}", url_query(&endpoint));
    let dropped = call(&stack, &bearer, "DELETE", &drop_path, String::new()).await;
    assert_eq!(dropped.status, 204, "{:?}", dropped.body);
    let again = call(&stack, &bearer, "DELETE", &drop_path, String::new()).await;
    assert_eq!(again.status, 404, "{:?}", again.body);
    pool.close().await;
    stack.finish().await;
}

/// With an ed25519 key every webhook carries a `v1a` signature beside `v1`: a receiver
/// holding only the `whpk_` public key verifies it (with PyPI's `cryptography`), a
/// receiver using the npm `standardwebhooks` library with the tenant's secret still
/// verifies the same requests, and a signature by another key is refused.
#[tokio::test]
async fn an_ed25519_public_key_verifies_herald_s_webhooks() {
    let (stack, pool, tenant_secret, bearer) = tenant_stack("asymmetric").await;
    let none = call(&stack, &bearer, "GET", "/v1/webhook-keys", String::new()).await;
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert_eq!(none.body["keys"], serde_json::json!([]));
    let rotated = call(
        &stack,
        &bearer,
        "POST",
        "/v1/webhook-keys/rotate",
        String::new(),
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let public = rotated.body["secret"].as_str().unwrap().to_string();
    assert!(public.starts_with("whpk_"), "{public}");
    let listed = call(&stack, &bearer, "GET", "/v1/webhook-keys", String::new()).await;
    assert_eq!(listed.body["keys"][0]["public_key"], public.as_str());

    let holds_public = Verifier::start("python", &public);
    let holds_secret = Verifier::start("node", &tenant_secret);
    for (n, verifier) in [&holds_public, &holds_secret].into_iter().enumerate() {
        let url = format!("{}/ok", verifier.url);
        let accepted = call(
            &stack,
            &bearer,
            "POST",
            "/v1/notifications",
            webhook(&url, n),
        )
        .await;
        assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    }
    for verifier in [&holds_public, &holds_secret] {
        let lines = verifier.wait_for(1).await;
        assert_eq!(lines[0]["verified"], true, "{lines:?}");
    }
    let (id, body, at) = ("msg_1", r#"{"data":{}}"#, now());
    let other = KeyPair::parse(&KeyPair::generate()).unwrap();
    let forged = other.sign(id, at, body.as_bytes());
    let ok = format!("{}/ok", holds_public.url);
    assert_eq!(post(&ok, id, at, &forged, body).await, 401);
    let lines = holds_public.wait_for(2).await;
    assert_eq!(lines[1]["verified"], false, "{lines:?}");

    // A second rotation keeps the first key listed (and signing) for its overlap.
    let again = call(
        &stack,
        &bearer,
        "POST",
        "/v1/webhook-keys/rotate",
        String::new(),
    )
    .await;
    assert!(
        again.body["previous_expires_at"].is_string(),
        "{:?}",
        again.body
    );
    let listed = call(&stack, &bearer, "GET", "/v1/webhook-keys", String::new()).await;
    assert_eq!(listed.body["keys"][1]["public_key"], public.as_str());
    assert!(listed.body["keys"][1]["expires_at"].is_string());
    pool.close().await;
    stack.finish().await;
}
