//! Shared harness for the integration tests: a real ingress on port 0 under a prefix of
//! its own (so tests run in parallel against one NATS and leave nothing behind), an HTTP
//! client, a reader for what the stream holds, and a private nats-server process for the
//! tests that stop or pause NATS.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use herald::app::App;
use herald::config::{AuthMode, ServeConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The shared NATS the tests use unless they run their own (scripts/services.sh starts it).
pub fn nats_url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn unique_prefix() -> String {
    format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A configuration for tests: loopback, port 0, a fresh prefix, fast readiness checks.
pub fn test_config(nats_url: &str) -> ServeConfig {
    let prefix = unique_prefix();
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        nats: herald::config::NatsConfig {
            nats_url: nats_url.to_string(),
            readiness_interval: Duration::from_millis(100),
            prefix: prefix.clone(),
            ..Default::default()
        },
        shutdown_timeout: Duration::from_secs(20),
        // Tables and documents live under names derived from the prefix (lowercase already).
        store: test_store(&prefix),
        // Tests of authentication turn it on; the others speak for the anonymous tenant.
        auth: AuthMode::Off,
        // Test receivers listen on loopback, which the default policy refuses.
        egress: herald::config::EgressConfig {
            webhook_allow_nets: herald::egress::Nets(loopback_nets()),
        },
        // A shared 2-core machine running a suite of debug builds is overloaded by
        // admission's standard (5 ms of standing delay), and would shed low and medium in
        // tests about something else; the overload tests turn shedding on.
        admission: herald::config::AdmissionConfig {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Loopback, allow-listed for webhooks so tests can run receivers on 127.0.0.1.
pub fn loopback_nets() -> Vec<ipnet::IpNet> {
    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
}

/// The shared PostgreSQL (scripts/services.sh starts it).
pub fn database_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// The shared MongoDB-protocol server (FerretDB here).
pub fn mongo_url() -> String {
    std::env::var("HERALD_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The operators' port (`--metrics-listen`).
    pub metrics_addr: SocketAddr,
    pub prefix: String,
    pub stream: String,
    pub nats_url: String,
    app: Option<App>,
    pub http: HttpClient,
}

impl TestServer {
    /// Starts an ingress against the shared NATS and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let server = Self::start_unready(&nats_url(), adjust).await;
        server.wait_ready().await;
        server
    }

    /// Starts an ingress without waiting for NATS (which may be down).
    pub async fn start_unready(nats_url: &str, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = test_config(nats_url);
        adjust(&mut config);
        let prefix = config.nats.prefix.clone();
        let app = App::serve(config).await.expect("ingress starts");
        TestServer {
            addr: app.local_addr().expect("the ingress listens"),
            metrics_addr: app.metrics_addr().expect("the operators' port listens"),
            stream: format!("{prefix}NOTIFY"),
            prefix,
            nats_url: nats_url.to_string(),
            app: Some(app),
            http: HttpClient::new(false),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.get("/readyz").await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ingress did not become ready");
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> TestResponse {
        self.post_with(path, &[], body).await
    }

    /// A JSON POST with extra request headers.
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.http
            .request_with(
                "POST",
                &self.url(path),
                Some("application/json"),
                headers,
                body.into(),
            )
            .await
            .expect("request completes")
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.http
            .request("GET", &self.url(path), None, Bytes::new())
            .await
            .expect("request completes")
    }

    /// `/metrics` from the operators' port, as text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let response = self
            .http
            .request("GET", &url, None, Bytes::new())
            .await
            .expect("request completes");
        assert_eq!(response.status, 200, "{url}");
        response
            .body
            .as_str()
            .expect("metrics are text")
            .to_string()
    }

    /// A JSON PUT.
    pub async fn put(&self, path: &str, body: impl Into<Bytes>) -> TestResponse {
        self.http
            .request(
                "PUT",
                &self.url(path),
                Some("application/json"),
                body.into(),
            )
            .await
            .expect("request completes")
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.http
            .request("DELETE", &self.url(path), None, Bytes::new())
            .await
            .expect("request completes")
    }

    /// Every message in this server's stream, in stream order.
    pub async fn stream_messages(&self) -> Vec<StoredMessage> {
        read_stream(&self.nats_url, &self.stream).await
    }

    /// Starts a graceful shutdown and waits for it.
    pub async fn shutdown(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.app
            .as_ref()
            .unwrap()
            .ingress()
            .unwrap()
            .shutdown_token()
    }

    /// Shuts down and deletes the streams of this prefix.
    pub async fn finish(mut self) {
        self.shutdown().await;
        delete_streams(&self.nats_url, &self.prefix).await;
    }
}

impl Drop for TestServer {
    /// A failed test still removes its streams, from a thread of its own because the
    /// test's runtime may be gone.
    fn drop(&mut self) {
        if self.app.is_some() {
            let (url, prefix) = (self.nats_url.clone(), self.prefix.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), delete_streams(&url, &prefix))
                            .await;
                });
            })
            .join();
        }
    }
}

/// Deletes every stream, Redis key, PostgreSQL schema and MongoDB database Herald creates
/// under `prefix` (what `dispatcher purge` does).
pub async fn delete_streams(nats_url: &str, prefix: &str) {
    let nats = herald::config::NatsConfig {
        nats_url: nats_url.to_string(),
        prefix: prefix.to_string(),
        ..Default::default()
    };
    match herald::purge::purge(&nats, &test_store(prefix), false).await {
        Ok(purged) if purged.failures.is_empty() => {}
        Ok(purged) => eprintln!("purging {prefix} left some behind: {:?}", purged.failures),
        Err(err) => eprintln!("purging {prefix} failed: {err}"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a webhook notification to `id` straight into NOTIFY, as the ingress would
/// (for tests that need the stream without a running ingress), and waits for its PubAck.
pub async fn publish_notification(
    js: &jetstream::Context,
    names: &herald::jetstream::Names,
    id: uuid::Uuid,
    priority: herald::model::Priority,
    recipient: &str,
    payload: &str,
) {
    publish_notification_of(
        js,
        names,
        uuid::Uuid::nil(),
        id,
        priority,
        recipient,
        payload,
    )
    .await
}

/// [`publish_notification`] for `tenant`.
pub async fn publish_notification_of(
    js: &jetstream::Context,
    names: &herald::jetstream::Names,
    tenant: uuid::Uuid,
    id: uuid::Uuid,
    priority: herald::model::Priority,
    recipient: &str,
    payload: &str,
) {
    let payload = serde_json::value::RawValue::from_string(payload.to_string()).unwrap();
    let wire = herald::model::WireNotification {
        v: 1,
        id,
        tenant,
        priority,
        channel: herald::model::Channel::Webhook,
        recipient: recipient.into(),
        payload: &payload,
        idempotency_key: None,
        send_at: None,
        expires_at: None,
        metadata: None,
        accepted_at: chrono::Utc::now(),
        event_type: None,
    };
    js.publish(
        names.subject(wire.priority, wire.channel),
        serde_json::to_vec(&wire).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// The shared Redis (scripts/services.sh starts it).
pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Keys under `prefix` in the shared Redis.
pub async fn redis_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[derive(Debug)]
pub struct StoredMessage {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl StoredMessage {
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap().to_string()
    }
}

/// The notification ids a stream holds.
pub async fn stored_ids(nats_url: &str, stream: &str) -> std::collections::HashSet<String> {
    read_stream(nats_url, stream)
        .await
        .iter()
        .map(StoredMessage::id)
        .collect()
}

pub async fn read_stream(nats_url: &str, stream: &str) -> Vec<StoredMessage> {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream
            .get_raw_message(seq)
            .await
            .expect("message by sequence");
        let headers = message
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v[0].to_string()))
            .collect();
        out.push(StoredMessage {
            subject: message.subject.to_string(),
            headers,
            body: serde_json::from_slice(&message.payload).expect("stored body is JSON"),
        });
    }
    out
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl HttpClient {
    pub fn new(h2c: bool) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(h2c);
        HttpClient(builder.build_http())
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<TestResponse, hyper_util::client::legacy::Error> {
        self.request_with(method, url, content_type, &[], body)
            .await
    }

    pub async fn request_with(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<TestResponse, hyper_util::client::legacy::Error> {
        let mut req = http::Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = self.0.request(req.body(Full::new(body)).unwrap()).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(TestResponse {
            status,
            headers,
            body,
        })
    }
}

/// A valid notification body.
pub fn notification(priority: &str, n: usize) -> String {
    format!(
        r#"{{"priority":"{priority}","channel":"webhook","recipient":"http://127.0.0.1:9/hook","payload":{{"n":{n}}}}}"#
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The nats-server binary: $HERALD_NATS_SERVER, else the one scripts/services.sh builds,
/// else whatever is on PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HERALD_NATS_SERVER") {
        return path.into();
    }
    let tools = std::env::var("HERALD_TOOLS").unwrap_or_else(|_| "/opt/herald-tools/bin".into());
    let built = PathBuf::from(tools).join("nats-server");
    if built.exists() {
        built
    } else {
        PathBuf::from("nats-server")
    }
}

/// A nats-server process of a test's own, with JetStream in a temporary directory; killed on
/// drop. Tests use it to take NATS away, or to pause it (SIGSTOP) so that publishes wait.
pub struct NatsProcess {
    pub port: u16,
    child: Option<Child>,
    store: tempfile::TempDir,
}

impl NatsProcess {
    pub async fn start(port: u16) -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut process = NatsProcess {
            port,
            child: None,
            store,
        };
        process.restart().await;
        process
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub async fn restart(&mut self) {
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (run scripts/services.sh to build it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    /// Stops the server and starts it again on an empty store: NATS lost its streams.
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.store = tempfile::tempdir().unwrap();
        self.restart().await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Freezes the server: connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: std::time::Instant,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How a [`Receiver`] answers one request.
pub struct Reply {
    pub status: u16,
    /// How long it takes to answer.
    pub delay: Duration,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    pub body: &'static str,
}

type Answer = Box<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

/// A webhook receiver or provider API: a real HTTP server that records every request and
/// answers with the status (after the delay) that `answer(n)` gives for the n-th request
/// (0-based). [`Receiver::checking`] lets the answer depend on the request, as a provider
/// checks auth and shape.
pub struct Receiver {
    pub addr: SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(
        answer: impl Fn(usize) -> (u16, std::time::Duration) + Send + Sync + 'static,
    ) -> Self {
        Self::checking(move |n, _| answer(n)).await
    }

    pub async fn checking(
        answer: impl Fn(usize, &Received) -> (u16, std::time::Duration) + Send + Sync + 'static,
    ) -> Self {
        Self::replying(move |n, received| {
            let (status, delay) = answer(n, received);
            Reply {
                status,
                delay,
                retry_after: None,
                body: "",
            }
        })
        .await
    }

    /// A receiver whose answers may carry headers.
    pub async fn replying(
        answer: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Self {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        use hyper_util::server::conn::auto;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer: std::sync::Arc<Answer> = std::sync::Arc::new(Box::new(answer));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (log, answer) = (log.clone(), answer.clone());
                    async move {
                        let at = std::time::Instant::now();
                        let uri = req.uri().clone();
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let received = Received {
                            at,
                            uri,
                            headers,
                            body,
                        };
                        let reply = {
                            let mut log = log.lock().unwrap();
                            log.push(received.clone());
                            answer(log.len() - 1, &received)
                        };
                        tokio::time::sleep(reply.delay).await;
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(
                            reply.body.as_bytes(),
                        )));
                        *resp.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
                        if let Some(seconds) = reply.retry_after {
                            resp.headers_mut()
                                .insert(http::header::RETRY_AFTER, seconds.into());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (or panics after `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} requests arrived in {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A notification for the webhook at `url`.
pub fn webhook_to(url: &str, priority: &str, n: usize) -> String {
    format!(
        r#"{{"priority":"{priority}","channel":"webhook","recipient":"{url}","payload":{{"n":{n}}}}}"#
    )
}

/// Ingress and delivery in one process on a fresh prefix, against the shared NATS.
pub struct Stack {
    pub server: TestServer,
    pub delivery: Option<herald::delivery::Delivery>,
    pub delivery_config: herald::config::DeliveryConfig,
    /// What delivery records into.
    pub delivery_metrics: std::sync::Arc<herald::metrics::Metrics>,
    pub recorder: Option<herald::recorder::Recorder>,
    /// Delivery's span export (off unless started with one).
    pub spans: herald::trace::Spans,
}

/// The store configuration of a test prefix (schema and database named after it).
pub fn test_store(prefix: &str) -> herald::config::StoreConfig {
    herald::config::StoreConfig {
        pg: herald::config::PgConfig {
            database_url: database_url(),
            pg_schema: prefix.to_string(),
            secrets_key: Some(sealing_key()),
            ..Default::default()
        },
        mongo_url: mongo_url(),
        mongo_db: prefix.to_string(),
        redis_url: redis_url(),
    }
}

/// A pool on the prefix's schema, migrated.
pub async fn migrated_pool(store: &herald::config::StoreConfig) -> sqlx::PgPool {
    let pool = herald::postgres::pool(&store.pg).unwrap();
    herald::postgres::migrate(&pool, &store.pg.pg_schema)
        .await
        .expect("migrations apply");
    pool
}

/// Starts a recorder on `prefix`'s streams writing into `store` (PostgreSQL with the
/// status cache, and MongoDB), in batches of 100.
pub async fn start_recorder(
    nats_url: &str,
    prefix: &str,
    store: &herald::config::StoreConfig,
) -> herald::recorder::Recorder {
    start_recorder_with(nats_url, prefix, store, Default::default()).await
}

/// `start_recorder` with its consumers laid out as `consumers` says.
pub async fn start_recorder_with(
    nats_url: &str,
    prefix: &str,
    store: &herald::config::StoreConfig,
    consumers: herald::config::RecordConsumers,
) -> herald::recorder::Recorder {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = jetstream::new(client);
    let config = herald::config::RecorderConfig {
        record_batch: 100,
        status_cache_ttl: Duration::from_secs(60),
        message_retention: Duration::from_secs(86_400),
        record_consumers: consumers,
        ..Default::default()
    };
    herald::app::start_recorder(
        &js,
        &herald::jetstream::Names::new(prefix),
        store,
        &config,
        std::sync::Arc::new(herald::metrics::Metrics::new()),
        herald::admission::Yielding::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("recorder starts")
}

/// `--webhook-secret` of the tests' delivery (32 bytes).
/// The key tests seal stored webhook secrets with (`HERALD_SECRETS_KEY` of the binaries
/// they start).
pub const TEST_SEALING_KEY: &str = "dGVzdHMtc2VhbC1zZWNyZXRzLXdpdGgtdGhpcy1rZXk=";

pub fn sealing_key() -> herald::sealing::SealingKey {
    herald::sealing::SealingKey::parse(TEST_SEALING_KEY).unwrap()
}

pub const TEST_SECRET: &str = "whsec_dGVzdHMtb2YtaGVyYWxkLXNpZ24td2l0aC10aGlzLWtleSE=";

pub fn test_delivery_config() -> herald::config::DeliveryConfig {
    // Quick waits, and a horizon longer than any test's holds (a test that needs one to
    // pass sets its own).
    let quick: herald::delivery::retry::RetryPolicy = "100ms:400ms:30s".parse().unwrap();
    herald::config::DeliveryConfig {
        webhook_secret: Some(herald::signing::Secret::parse(TEST_SECRET).unwrap()),
        retry_high: quick,
        retry_medium: quick,
        retry_low: quick,
        webhook_timeout: Duration::from_secs(5),
        ack_wait: Duration::from_secs(5),
        dlq_size_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

impl Stack {
    pub async fn start(adjust: impl FnOnce(&mut herald::config::DeliveryConfig)) -> Self {
        Self::start_with(
            TestServer::start().await,
            herald::trace::Spans::default(),
            adjust,
        )
        .await
    }

    /// A stack whose ingress and delivery export spans to `otlp`.
    pub async fn exporting_spans(otlp: herald::config::OtlpConfig) -> Self {
        let server = TestServer::start_with(|c| c.otlp = Some(otlp.clone())).await;
        let spans = herald::trace::Spans::start(&otlp).expect("span export starts");
        Self::start_with(server, spans, |_| {}).await
    }

    /// Delivery (exporting to `spans`) behind `server`.
    pub async fn start_with(
        server: TestServer,
        spans: herald::trace::Spans,
        adjust: impl FnOnce(&mut herald::config::DeliveryConfig),
    ) -> Self {
        let mut delivery_config = test_delivery_config();
        adjust(&mut delivery_config);
        let mut stack = Stack {
            server,
            delivery: None,
            delivery_config,
            delivery_metrics: Default::default(),
            recorder: None,
            spans,
        };
        stack.start_delivery().await;
        stack
    }

    pub async fn start_delivery(&mut self) {
        self.delivery = Some(self.another_delivery().await);
    }

    /// One more delivery process on the same streams and buckets, as `deliver` scaled out.
    pub async fn another_delivery(&self) -> herald::delivery::Delivery {
        let client = async_nats::connect(&self.server.nats_url).await.unwrap();
        let js = jetstream::new(client);
        let names = herald::jetstream::Names::new(&self.server.prefix);
        let destinations = herald::config::EgressConfig {
            webhook_allow_nets: herald::egress::Nets(loopback_nets()),
        };
        herald::app::start_delivery(
            &js,
            &names,
            &self.delivery_config,
            &destinations,
            &test_store(&self.server.prefix).pg,
            self.delivery_metrics.clone(),
            herald::admission::Yielding::default(),
            self.spans.clone(),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("delivery starts")
    }

    /// Posts one notification and returns its id, asserting the 202.
    pub async fn accept(&self, body: impl Into<Bytes>) -> String {
        let resp = self.server.post("/v1/notifications", body).await;
        assert_eq!(resp.status, 202, "{:?}", resp.body);
        resp.body["id"].as_str().unwrap().to_string()
    }

    /// Migrates the prefix's schema and starts a recorder into PostgreSQL, MongoDB and
    /// the Redis status cache.
    pub async fn start_recording(&mut self) -> sqlx::PgPool {
        let store = test_store(&self.server.prefix);
        let pool = migrated_pool(&store).await;
        self.recorder =
            Some(start_recorder(&self.server.nats_url, &self.server.prefix, &store).await);
        pool
    }

    pub async fn stop_recording(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.shutdown().await;
        }
    }

    pub async fn stop_delivery(&mut self) {
        if let Some(d) = self.delivery.take() {
            d.shutdown().await;
        }
    }

    /// Every outcome event in the EVENTS stream, in order, as (event, id, attempt).
    pub async fn events(&self) -> Vec<(String, String, u64)> {
        read_stream(
            &self.server.nats_url,
            &format!("{}EVENTS", self.server.prefix),
        )
        .await
        .into_iter()
        .filter(|m| !m.subject.ends_with(".destinations"))
        .flat_map(|m| match m.body {
            // A batch of events; a single document is what earlier versions wrote.
            serde_json::Value::Array(events) => events,
            single => vec![single],
        })
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect()
    }

    /// The destination health events in the EVENTS stream, in order.
    pub async fn destination_events(&self) -> Vec<Value> {
        read_stream(
            &self.server.nats_url,
            &format!("{}EVENTS", self.server.prefix),
        )
        .await
        .into_iter()
        .filter(|m| m.subject.ends_with(".destinations"))
        .map(|m| m.body)
        .collect()
    }

    /// Waits until the EVENTS stream holds at least `n` events (10 s at most) and returns
    /// them all.
    pub async fn wait_events(&self, n: usize) -> Vec<(String, String, u64)> {
        for _ in 0..200 {
            let events = self.events().await;
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events().await
    }

    /// The kinds of the first events, once at least `n` are stored.
    pub async fn wait_event_kinds(&self, n: usize) -> Vec<String> {
        self.wait_events(n).await.into_iter().map(|e| e.0).collect()
    }

    /// Stops every part; spans recorded until then are exported.
    pub async fn finish(mut self) {
        self.stop_delivery().await;
        self.spans.shutdown().await;
        self.stop_recording().await;
        self.server.finish().await;
    }
}

/// One message an [`SmtpServer`] accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A real SMTP server on loopback (plain ESMTP, no STARTTLS): it answers RCPT TO with
/// `rcpt(address)` (e.g. `250 OK`, `550 5.1.1 unknown`, `451 4.3.0 later`) and records every
/// message it accepts, as a relay would.
pub struct SmtpServer {
    pub addr: SocketAddr,
    mails: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    pub async fn start(rcpt: impl Fn(&str) -> &'static str + Send + Sync + 'static) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let rcpt = std::sync::Arc::new(rcpt);
        let log = mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, rcpt) = (log.clone(), rcpt.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read);
                    let _ = write.write_all(b"220 herald-test ESMTP\r\n").await;
                    let mut mail = Mail {
                        from: String::new(),
                        to: Vec::new(),
                        data: String::new(),
                    };
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let command = line.trim_end().to_string();
                        let upper = command.to_ascii_uppercase();
                        let reply: String =
                            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                                "250-herald-test\r\n250 8BITMIME".into()
                            } else if upper.starts_with("MAIL FROM:") {
                                mail.from = command[10..].trim().to_string();
                                "250 OK".into()
                            } else if upper.starts_with("RCPT TO:") {
                                let address = command[8..]
                                    .trim()
                                    .trim_matches(|c| c == '<' || c == '>')
                                    .to_string();
                                let answer = rcpt(&address);
                                if answer.starts_with('2') {
                                    mail.to.push(address);
                                }
                                answer.into()
                            } else if upper == "DATA" {
                                let _ = write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await;
                                let mut data = String::new();
                                loop {
                                    line.clear();
                                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                        return;
                                    }
                                    if line == ".\r\n" {
                                        break;
                                    }
                                    data.push_str(&line);
                                }
                                mail.data = data;
                                log.lock().unwrap().push(mail.clone());
                                mail.to.clear();
                                "250 queued".into()
                            } else if upper == "QUIT" {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            } else {
                                "250 OK".into()
                            };
                        if write
                            .write_all(format!("{reply}\r\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        SmtpServer { addr, mails }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

/// A TCP proxy in front of a store, to cut it off (an outage as the client sees it:
/// connections reset, new ones refused) and bring it back without touching the shared
/// server other tests use.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = std::sync::Arc::new(tx);
        let (up2, generation2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = generation2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            up,
            generation,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Value of the first sample of `name` (with its labels) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
