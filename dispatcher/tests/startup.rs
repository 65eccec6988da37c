//! A misconfigured deployment says what is wrong, and stops when asked (issue 28): the
//! real binary, one wrong URL at a time, against the real services for everything else.
//! Each test checks the log line (flag, masked address, cause), `/readyz`, and how the
//! process ends: on a signal, or by `--startup-timeout`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{delete_streams, free_port, nats_url, unique_prefix, HttpClient};
use serde_json::Value;

/// A port nothing listens on: connecting to it is refused.
fn closed_port() -> u16 {
    free_port()
}

/// The binary, running with JSON logs collected line by line.
struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<String>>,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        Self::start_as("json", args)
    }

    /// With `--log-format format`; the lines `line` waits for are only the JSON ones.
    fn start_as(format: &str, args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
            .args(["--log-format", format])
            .args(args)
            .env("HERALD_SECRETS_KEY", common::TEST_SEALING_KEY)
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the dispatcher starts");
        let stderr = child.stderr.take().unwrap();
        let (lines, raw) = (Arc::default(), Arc::default());
        let (into, into_raw): (Arc<Mutex<Vec<Value>>>, Arc<Mutex<String>>) =
            (Arc::clone(&lines), Arc::clone(&raw));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                into_raw.lock().unwrap().push_str(&line);
                into_raw.lock().unwrap().push('\n');
                if let Ok(v) = serde_json::from_str(&line) {
                    into.lock().unwrap().push(v);
                }
            }
        });
        Process { child, lines, raw }
    }

    /// The first log line `matches` accepts, waiting up to `within`.
    async fn line(&self, within: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return found.clone();
            }
            assert!(
                start.elapsed() < within,
                "no such line within {within:?}; the log:\n{}",
                self.raw.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// How the process ended and how long it took, waiting up to `within`.
    async fn ended(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!(
                    "still running after {within:?}; the log:\n{}",
                    self.raw.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        self.raw.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WARN or ERROR line naming `flag` and `address` (as `/readyz` does too).
fn names(line: &Value, flag: &str, address: &str) -> bool {
    let text = line.to_string();
    matches!(line["level"].as_str(), Some("WARN" | "ERROR"))
        && text.contains(flag)
        && text.contains(address)
}

/// `/readyz` of the operators' port, once it answers.
async fn readyz(port: u16) -> (u16, Value) {
    let http = HttpClient::new(false);
    let url = format!("http://127.0.0.1:{port}/readyz");
    for _ in 0..100 {
        if let Ok(r) = http.request("GET", &url, None, bytes::Bytes::new()).await {
            return (r.status, r.body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

fn dependency<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["dependencies"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("{name} not listed in {body}"))
}

/// `dispatcher serve` logging as `format` with NATS at a closed port: the process, the
/// NATS address and the operators' port.
fn serve_without_nats(format: &str) -> (Process, String, u16) {
    let (nats_port, metrics) = (closed_port(), free_port());
    let address = format!("nats://127.0.0.1:{nats_port}");
    let serve = Process::start_as(
        format,
        &[
            "serve",
            "--nats-url",
            &address,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--prefix",
            &unique_prefix(),
            "--shutdown-timeout",
            "5s",
        ],
    );
    (serve, address, metrics)
}

#[tokio::test]
async fn serve_without_nats_names_it_stays_unready_and_stops_on_sigterm() {
    let (mut serve, address, metrics) = serve_without_nats("json");
    let line = serve
        .line(Duration::from_secs(5), |l| names(l, "--nats-url", &address))
        .await;
    assert!(line.to_string().contains("connection refused"), "{line}");
    let (status, body) = readyz(metrics).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(dependency(&body, "nats")["state"], "down", "{body}");
    assert!(dependency(&body, "nats")["cause"]
        .as_str()
        .unwrap()
        .starts_with("connection refused"));

    // The drain of a connection that never came up ends in time, and cleanly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    serve.signal("TERM");
    let (exit, took) = serve.ended(Duration::from_secs(8)).await;
    assert!(exit.success(), "{exit:?}\n{}", serve.log());
    assert!(took < Duration::from_secs(6), "{took:?}");
    // async-nats's own line for every reconnect attempt is quietened by default.
    assert!(
        !serve.log().contains("event: client error"),
        "{}",
        serve.log()
    );
}

#[tokio::test]
async fn deliver_waiting_for_an_unknown_nats_host_stops_on_sigint() {
    let metrics = free_port();
    let address = "nats://no-such-host.invalid:4222";
    let mut deliver = Process::start(&[
        "deliver",
        "--nats-url",
        address,
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--prefix",
        &unique_prefix(),
    ]);
    let line = deliver
        .line(Duration::from_secs(5), |l| names(l, "--nats-url", address))
        .await;
    assert!(line.to_string().contains("unknown host"), "{line}");
    let (status, body) = readyz(metrics).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(dependency(&body, "nats")["state"], "down", "{body}");
    deliver.signal("INT");
    let (exit, took) = deliver.ended(Duration::from_secs(5)).await;
    assert!(exit.success(), "{exit:?}\n{}", deliver.log());
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn record_with_a_wrong_database_url_exits_at_the_startup_timeout() {
    let (pg_port, metrics, prefix) = (closed_port(), free_port(), unique_prefix());
    let url = format!("postgres://root:hunter2@127.0.0.1:{pg_port}/test");
    let masked = format!("postgres://root:***@127.0.0.1:{pg_port}/test");
    let mut record = Process::start(&[
        "record",
        "--nats-url",
        &nats_url(),
        "--database-url",
        &url,
        "--pg-schema",
        &prefix,
        "--mongo-db",
        &prefix,
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--prefix",
        &prefix,
        "--startup-timeout",
        "4s",
    ]);
    record
        .line(Duration::from_secs(3), |l| {
            names(l, "--database-url", &masked)
        })
        .await;
    let (status, body) = readyz(metrics).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(dependency(&body, "postgres")["state"], "down", "{body}");
    assert_eq!(dependency(&body, "nats")["state"], "up", "{body}");

    let (exit, took) = record.ended(Duration::from_secs(15)).await;
    assert!(!exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let last = record
        .line(Duration::ZERO, |l| {
            l["level"] == "ERROR" && l.to_string().contains("--startup-timeout")
        })
        .await;
    assert!(names(&last, "--database-url", &masked), "{last}");
    assert!(!record.log().contains("hunter2"), "{}", record.log());
    delete_streams(&nats_url(), &prefix).await;
}

#[tokio::test]
async fn record_with_a_wrong_mongo_url_is_unready_naming_it() {
    let (mongo_port, metrics, prefix) = (closed_port(), free_port(), unique_prefix());
    let url = format!("mongodb://127.0.0.1:{mongo_port}");
    let mut record = Process::start(&[
        "record",
        "--nats-url",
        &nats_url(),
        "--mongo-url",
        &url,
        "--pg-schema",
        &prefix,
        "--mongo-db",
        &prefix,
        "--migrate",
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--prefix",
        &prefix,
    ]);
    record
        .line(Duration::from_secs(8), |l| names(l, "--mongo-url", &url))
        .await;
    let (status, body) = readyz(metrics).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(dependency(&body, "mongodb")["state"], "down", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("--mongo-url"),
        "{body}"
    );
    record.signal("TERM");
    let (exit, _) = record.ended(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}\n{}", record.log());
    delete_streams(&nats_url(), &prefix).await;
}

#[tokio::test]
async fn serve_with_a_wrong_redis_url_stays_ready_and_says_it_is_degraded() {
    let (redis_port, metrics, prefix) = (closed_port(), free_port(), unique_prefix());
    let url = format!("redis://127.0.0.1:{redis_port}");
    let mut serve = Process::start(&[
        "serve",
        "--nats-url",
        &nats_url(),
        "--redis-url",
        &url,
        "--pg-schema",
        &prefix,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--prefix",
        &prefix,
    ]);
    serve
        .line(Duration::from_secs(5), |l| names(l, "--redis-url", &url))
        .await;
    // Ready once NATS and the streams are: cached keys still serve while Redis is away.
    let mut body = Value::Null;
    for _ in 0..50 {
        let (status, b) = readyz(metrics).await;
        body = b;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["degraded"], true, "{body}");
    assert_eq!(dependency(&body, "redis")["state"], "down", "{body}");
    serve.signal("TERM");
    let (exit, _) = serve.ended(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}\n{}", serve.log());
    delete_streams(&nats_url(), &prefix).await;
}

#[tokio::test]
async fn commands_name_the_database_url_and_exit_non_zero_within_their_wait() {
    let port = closed_port();
    let masked = format!("postgres://u:***@127.0.0.1:{port}/db");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args([
            "--log-format",
            "json",
            "tenant",
            "create",
            "x",
            "--database-url",
        ])
        .arg(format!("postgres://u:pw@127.0.0.1:{port}/db"))
        .env("HERALD_SECRETS_KEY", common::TEST_SEALING_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains("--database-url") && lines[0].contains(&masked),
        "{stderr}"
    );
    assert!(lines[0].contains("connection refused"), "{stderr}");
}

/// A log read from a pipe (a file, a collector) is plain text: no ANSI colour codes.
#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour() {
    let (mut serve, _, _) = serve_without_nats("text");
    let started = Instant::now();
    while !serve.log().contains("--nats-url") && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serve.signal("TERM");
    let (exit, _) = serve.ended(Duration::from_secs(10)).await;
    let log = serve.log();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("WARN") && log.contains("--nats-url"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log:\n{log:?}"
    );
}

/// `dispatcher purge` with Redis away names it by flag and address with its real cause
/// (the connection manager's own retries would say only "timed out"), and still purges
/// the stores it can reach.
#[tokio::test]
async fn purge_names_an_unreachable_redis_with_its_cause_and_purges_the_rest() {
    let (port, prefix) = (closed_port(), unique_prefix());
    // Something to purge: the namespace's streams.
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("{prefix}NOTIFY"),
        subjects: vec![format!("{prefix}notify.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args([
            "--log-format",
            "json",
            "purge",
            "--keep-schema",
            "--nats-url",
        ])
        .arg(nats_url())
        .args(["--prefix", &prefix, "--redis-url", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let purged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        purged["streams"],
        serde_json::json!([format!("{prefix}NOTIFY")])
    );
    let failures = purged["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{purged}");
    let failure = failures[0].as_str().unwrap();
    assert!(failure.contains(&format!("--redis-url {url}")), "{failure}");
    assert!(failure.contains("connection refused"), "{failure}");
}

/// `run --auth off` signs tenant-less webhooks with `--webhook-secret`, which has no
/// default: without it the process says so and exits at once, before it accepts anything.
#[tokio::test]
async fn run_without_authentication_needs_a_webhook_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(["--log-format", "json", "run", "--auth", "off", "--listen"])
        .arg("127.0.0.1:0")
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--prefix",
            &unique_prefix(),
        ])
        .env_remove("HERALD_WEBHOOK_SECRET")
        .env("HERALD_SECRETS_KEY", common::TEST_SEALING_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--webhook-secret"), "{stderr}");
    assert!(stderr.contains("whsec_"), "{stderr}");
}

/// The webhook secrets in PostgreSQL are sealed with HERALD_SECRETS_KEY, which has no
/// default: a role that reads or writes them says so and exits at once without it, and a
/// key that is not 32 bytes of base64 is refused by the parser.
#[tokio::test]
async fn roles_need_the_key_that_seals_stored_secrets() {
    let serve = |key: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatcher"));
        command
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--prefix",
                &unique_prefix(),
            ])
            .env_remove("HERALD_SECRETS_KEY");
        if let Some(key) = key {
            command.env("HERALD_SECRETS_KEY", key);
        }
        command.output().unwrap()
    };
    let out = serve(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HERALD_SECRETS_KEY (--secrets-key) is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("openssl rand -base64 32"), "{stderr}");
    let out = serve(Some("c2hvcnQ="));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("base64 of 32 bytes"), "{stderr}");
    assert!(
        !stderr.contains("c2hvcnQ="),
        "the key is not echoed: {stderr}"
    );
}
