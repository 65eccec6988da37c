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

use common::{migrated_pool, test_store, HttpClient, Stack, TestServer, TEST_SECRET};
use herald::signing::Secret;
use serde_json::Value;

const VERIFIERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verifiers");

/// A receiver process and the lines it printed, one per request.
struct Verifier {
    child: Child,
    url: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Verifier {
    /// `python` or `node`, verifying with `secret`.
    fn start(runtime: &str, secret: &str) -> Verifier {
        let (program, script) = match runtime {
            "python" => (format!("{VERIFIERS}/.venv/bin/python"), "receiver.py"),
            _ => (String::from("node"), "receiver.mjs"),
        };
        let mut child = Command::new(&program)
            .arg(format!("{VERIFIERS}/{script}"))
            .env("WEBHOOK_SECRET", secret)
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
    let both = herald::signing::signature_header(&[other, secret], id, at, signed.as_bytes());
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
    let tenant = herald::tenants::create_tenant(&pool, "rotating", Default::default())
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
    herald::tenants::rotate_secret(&pool, tenant.id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let directory = herald::tenants::Directory::new(pool.clone(), Duration::ZERO);
    let read = directory.get(tenant.id).await.unwrap().unwrap();
    assert_eq!(read.signing_secrets().count(), 1);
    assert_ne!(read.webhook_secret, new);
    pool.close().await;
    stack.finish().await;
}
