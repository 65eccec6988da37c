//! Connection to NATS, the names Herald uses in it, the NOTIFY stream's definition, and
//! readiness: connected *and* the stream verified.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, Message};
use async_nats::Subject;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::model::{Channel, Priority};

/// Header carrying the priority class of a published notification.
pub const HEADER_PRIORITY: &str = "Herald-Priority";
/// Header carrying the channel of a published notification.
pub const HEADER_CHANNEL: &str = "Herald-Channel";

/// Stream, subject and consumer names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub notify_stream: String,
    pub notify_filter: String,
    /// Dead letters: `<prefix>dlq.<tenant>.<priority>.<channel>.<id>`.
    pub dlq_stream: String,
    /// Outcome events: `<prefix>events.outcomes`; destination health:
    /// `<prefix>events.destinations`.
    pub events_stream: String,
    /// Messages waiting outside the work window (see `delivery::hold`): one schedule per
    /// notification at `<prefix>hold.<id>`, fired when due into `<prefix>due.<priority>.<channel>`,
    /// which NOTIFY sources back as `<prefix>notify.<priority>.<channel>.due`.
    pub hold_stream: String,
    /// Key-value bucket of Herald's attempt counts (see `delivery::ledger`).
    pub attempts_bucket: String,
    /// Key-value bucket of destination health and operator controls (see
    /// `delivery::health`).
    pub destinations_bucket: String,
    /// Key-value bucket of canceled notifications, `<tenant>.<id>` (see
    /// `delivery::cancels`).
    pub cancels_bucket: String,
    /// `subjects[priority][channel]`, built once so publishing never formats a subject.
    subjects: [[Subject; Channel::COUNT]; Priority::COUNT],
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        let subjects = Priority::ALL
            .map(|p| Channel::ALL.map(|c| Subject::from(format!("{prefix}notify.{p}.{c}"))));
        Names {
            prefix: prefix.to_string(),
            notify_stream: format!("{prefix}NOTIFY"),
            notify_filter: format!("{prefix}notify.>"),
            dlq_stream: format!("{prefix}DLQ"),
            events_stream: format!("{prefix}EVENTS"),
            hold_stream: format!("{prefix}HOLD"),
            attempts_bucket: format!("{prefix}ATTEMPTS"),
            destinations_bucket: format!("{prefix}DESTINATIONS"),
            cancels_bucket: format!("{prefix}CANCELS"),
            subjects,
        }
    }

    pub fn subject(&self, priority: Priority, channel: Channel) -> Subject {
        self.subjects[priority.index()][channel.index()].clone()
    }

    /// What the recorder reads of NOTIFY: accepted notifications only, not the copies that
    /// come back from HOLD (`notify.<priority>.<channel>.due`), which were recorded once.
    pub fn notify_accepted_filter(&self) -> String {
        format!("{}notify.*.*", self.prefix)
    }

    /// The schedule of one held notification: one subject per id, so a newer hold of the
    /// same notification replaces the older (schedules roll up per subject).
    pub fn hold_subject(&self, id: &uuid::Uuid) -> String {
        format!("{}hold.{id}", self.prefix)
    }

    /// Where a held notification's schedule fires into, inside HOLD.
    pub fn due_subject(&self, priority: Priority, channel: Channel) -> String {
        format!("{}due.{priority}.{channel}", self.prefix)
    }

    /// What one priority's delivery consumer reads.
    pub fn notify_priority_filter(&self, priority: Priority) -> String {
        format!("{}notify.{priority}.>", self.prefix)
    }

    /// The durable consumer delivering one priority.
    pub fn delivery_consumer(&self, priority: Priority) -> String {
        format!("{}deliver-{priority}", self.prefix)
    }

    /// The tenant is a subject token so that a tenant's dead letters are found by subject
    /// filter, never by reading and skipping another tenant's.
    pub fn dlq_subject(
        &self,
        tenant: &uuid::Uuid,
        priority: Priority,
        channel: Channel,
        id: &uuid::Uuid,
    ) -> String {
        format!(
            "{}dlq.{}.{priority}.{channel}.{id}",
            self.prefix,
            tenant.simple()
        )
    }

    /// A tenant's dead letters matching the optional filters (any id).
    pub fn dlq_filter(
        &self,
        tenant: &uuid::Uuid,
        priority: Option<Priority>,
        channel: Option<Channel>,
    ) -> String {
        format!(
            "{}dlq.{}.{}.{}.*",
            self.prefix,
            tenant.simple(),
            priority.map_or("*", Priority::as_str),
            channel.map_or("*", Channel::as_str)
        )
    }

    pub fn dlq_by_id(&self, tenant: &uuid::Uuid, id: &uuid::Uuid) -> String {
        format!("{}dlq.{}.*.*.{id}", self.prefix, tenant.simple())
    }

    /// The subject of every batch of outcome events.
    pub fn event_subject(&self) -> String {
        format!("{}events.outcomes", self.prefix)
    }

    /// The subject of destination health events (`destination.failing`, `.recovered`).
    pub fn destination_event_subject(&self) -> String {
        format!("{}events.destinations", self.prefix)
    }

    /// Every key-value bucket under this prefix, with the stream behind each.
    pub fn buckets(&self) -> [&str; 3] {
        [
            &self.attempts_bucket,
            &self.destinations_bucket,
            &self.cancels_bucket,
        ]
    }
}

/// Connects to NATS. Returns at once even when the server is down: the client keeps
/// reconnecting in the background and readiness reports the state meanwhile.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = crate::dependencies::mask(&config.nats_url);
    let last = Arc::new(std::sync::Mutex::new(String::new()));
    async_nats::ConnectOptions::new()
        .name("herald-dispatcher")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((50u64 << attempt.min(5) as u32).min(1_000))
        })
        .event_callback(move |event| {
            let (servers, last) = (servers.clone(), last.clone());
            async move { log_event(&servers, &last, event) }
        })
        .connect(server_list(&config.nats_url))
        .await
}

/// The client's events in Herald's log, one line per change (async-nats's own event log
/// is quietened by the default `--log`): a reconnect loop that fails the same way every
/// second logs once, and the dependency watch names its cause and repeats it.
fn log_event(servers: &str, last: &std::sync::Mutex<String>, event: async_nats::Event) {
    use async_nats::Event;
    let text = event.to_string();
    {
        let mut last = last.lock().expect("never poisoned");
        if *last == text {
            return;
        }
        last.clone_from(&text);
    }
    match event {
        Event::Connected => tracing::info!(flag = "--nats-url", servers, "NATS connected"),
        Event::Disconnected => {
            tracing::warn!(
                flag = "--nats-url",
                servers,
                "NATS disconnected; reconnecting"
            )
        }
        Event::Closed => tracing::info!(flag = "--nats-url", servers, "NATS connection closed"),
        Event::ClientError(_) => {
            tracing::debug!(flag = "--nats-url", servers, event = %text, "NATS client error")
        }
        _ => tracing::warn!(flag = "--nats-url", servers, event = %text, "NATS event"),
    }
}

/// `--nats-url` as a list: servers separated by commas (a cluster's nodes), blanks ignored.
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The NOTIFY stream: file storage, a duplicate window for `Nats-Msg-Id`, and `discard:
/// new` so that a full stream refuses new messages instead of dropping accepted ones.
pub fn notify_stream_config(names: &Names, config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: names.notify_stream.clone(),
        description: Some(String::from("Herald: accepted notifications")),
        subjects: vec![names.notify_filter.clone()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        duplicate_window: config.duplicate_window,
        max_age: config.stream_max_age,
        max_bytes: config.stream_max_bytes,
        num_replicas: config.stream_replicas,
        // Due messages come back from HOLD on a subject of their own, which delivery reads
        // and the recorder does not.
        sources: Some(vec![stream::Source {
            name: names.hold_stream.clone(),
            subject_transforms: vec![stream::SubjectTransform {
                source: format!("{}due.*.*", names.prefix),
                destination: format!(
                    "{}notify.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.due",
                    names.prefix
                ),
            }],
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The HOLD stream: messages that wait (a `send_at` ahead, a destination that cannot take
/// them, a retry backoff) as JetStream message schedules, outside every work consumer.
/// Schedules need `discard: old`; with no size bound nothing is discarded but by age, and
/// the age bound is NOTIFY's, which also bounds how far ahead `send_at` may be.
pub fn hold_stream_config(names: &Names, config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: names.hold_stream.clone(),
        description: Some(String::from("Herald: notifications waiting to be due")),
        subjects: vec![
            format!("{}hold.>", names.prefix),
            format!("{}due.>", names.prefix),
        ],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: config.stream_max_age,
        num_replicas: config.stream_replicas,
        allow_message_schedules: true,
        allow_rollup: true,
        ..Default::default()
    }
}

/// The DLQ stream: kept until replayed or deleted (bounded by age), direct gets enabled so
/// the API can read a dead letter by id without a consumer.
pub fn dlq_stream_config(names: &Names, config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: names.dlq_stream.clone(),
        description: Some(String::from("Herald: dead letters")),
        subjects: vec![format!("{}dlq.>", names.prefix)],
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: config.duplicate_window,
        max_age: config.dlq_max_age,
        num_replicas: config.stream_replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// The EVENTS stream: delivery outcomes for the recorder.
pub fn events_stream_config(names: &Names, config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: names.events_stream.clone(),
        description: Some(String::from("Herald: delivery outcome events")),
        subjects: vec![format!("{}events.>", names.prefix)],
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: config.duplicate_window,
        max_age: config.stream_max_age,
        num_replicas: config.stream_replicas,
        ..Default::default()
    }
}

/// Creates Herald's streams, or brings existing ones to the configured definitions.
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    config: &NatsConfig,
) -> Result<(), async_nats::Error> {
    for stream in [
        hold_stream_config(names, config),
        notify_stream_config(names, config),
        dlq_stream_config(names, config),
        events_stream_config(names, config),
    ] {
        js.create_or_update_stream(stream).await?;
    }
    for bucket in bucket_configs(names, config) {
        js.create_or_update_key_value(bucket).await?;
    }
    Ok(())
}

/// The key-value buckets: one value per key, file storage, replicated like the streams.
/// Attempt counts live as long as a notification can (NOTIFY's age); destination state is
/// kept until an operator or a delivery process changes it; a cancel as long as the
/// notification it stops could wait.
pub fn bucket_configs(
    names: &Names,
    config: &NatsConfig,
) -> [async_nats::jetstream::kv::Config; 3] {
    let bucket = |name: &str, description: &str, max_age| async_nats::jetstream::kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: config.stream_replicas,
        ..Default::default()
    };
    [
        bucket(
            &names.attempts_bucket,
            "Herald: deliveries that waited, per notification",
            config.stream_max_age,
        ),
        bucket(
            &names.destinations_bucket,
            "Herald: destination health and operator controls",
            Duration::ZERO,
        ),
        bucket(
            &names.cancels_bucket,
            "Herald: notifications canceled before they were sent",
            config.stream_max_age,
        ),
    ]
}

/// Follows a key-value bucket until `stop`: hands each entry of `watch` to `entry`. When
/// the watch fails or ends (NATS went away and came back), it waits a second and watches
/// again with `rewatch`, given the last revision seen. `what` names it in log lines.
pub async fn follow_bucket<R, Fut>(
    mut watch: jetstream::kv::Watch,
    rewatch: R,
    mut entry: impl FnMut(jetstream::kv::Entry),
    what: &'static str,
    stop: CancellationToken,
) where
    R: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<jetstream::kv::Watch, jetstream::kv::WatchError>>,
{
    let mut seen = 0;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = watch.next() => next,
        };
        match next {
            Some(Ok(e)) => {
                seen = e.revision;
                entry(e);
                continue;
            }
            Some(Err(err)) => tracing::warn!(what, error = %err, "watch failed; watching again"),
            None => tracing::debug!(what, "watch ended; watching again"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match rewatch(seen).await {
            Ok(w) => watch = w,
            Err(err) => tracing::warn!(what, error = %err, "cannot watch"),
        }
    }
}

/// A durable pull consumer's messages, one at a time, until `stop`: subscribes with
/// heartbeats, and when a pull fails waits a moment and subscribes again. Delivery and the
/// recorder read their consumers through it.
pub struct Pull {
    consumer: consumer::PullConsumer,
    batch: usize,
    stop: CancellationToken,
    /// Names the consumer in log lines.
    label: String,
    messages: Option<consumer::pull::Stream>,
}

impl Pull {
    pub fn new(
        consumer: consumer::PullConsumer,
        batch: usize,
        stop: CancellationToken,
        label: String,
    ) -> Self {
        Pull {
            consumer,
            batch,
            stop,
            label,
            messages: None,
        }
    }

    /// The next message; `None` once `stop` is cancelled.
    pub async fn next(&mut self) -> Option<Message> {
        while !self.stop.is_cancelled() {
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    let subscribed = self
                        .consumer
                        .stream()
                        .max_messages_per_batch(self.batch)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await;
                    match subscribed {
                        Ok(m) => self.messages.insert(m),
                        Err(err) => {
                            tracing::warn!(consumer = %self.label, error = %err, "cannot pull; retrying");
                            tokio::select! {
                                () = self.stop.cancelled() => return None,
                                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            }
                        }
                    }
                }
            };
            let next = tokio::select! {
                () = self.stop.cancelled() => return None,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => return Some(message),
                Some(Err(err)) => {
                    tracing::warn!(consumer = %self.label, error = %err, "pull failed; re-subscribing");
                    self.messages = None;
                }
                None => self.messages = None,
            }
        }
        None
    }
}

impl crate::batch::Source for Pull {
    type Item = Message;
    fn next(&mut self) -> impl std::future::Future<Output = Option<Message>> + Send {
        Pull::next(self)
    }
}

/// Readiness asks NATS for the stream every this many looks at the connection.
pub const VERIFY_EVERY: u32 = 5;

/// Whether this instance can take notifications: NATS connected and the stream verified.
#[derive(Debug, Default)]
pub struct Readiness {
    stream_ok: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self, client: &async_nats::Client) -> bool {
        self.stream_ok.load(Ordering::Acquire)
            && client.connection_state() == async_nats::connection::State::Connected
    }

    /// Keeps the streams in place and the flag current until `stop`. Every `interval` it
    /// looks at the connection without asking NATS: its state, and the client's count of
    /// connections, which shows a reconnection even when the outage fell between two
    /// looks. At the start, after every reconnection and after any failed check, the
    /// streams and buckets are created or updated; in between, every
    /// [`VERIFY_EVERY`]th look, one STREAM.INFO of NOTIFY checks that it is still there. A
    /// failure marks the instance unready until the next success. (An update of
    /// everything each second cost 14 NATS messages a second at idle, a STREAM.INFO each
    /// second 4: the request, its reply, the API advisory and an internal hop.)
    pub async fn supervise(
        self: Arc<Self>,
        client: async_nats::Client,
        js: jetstream::Context,
        names: Names,
        config: NatsConfig,
        stop: CancellationToken,
    ) {
        let mut was_ok = None;
        let statistics = client.statistics();
        // The connection count the streams were last ensured on: another number is a
        // reconnection since.
        let mut ensured_on = None;
        let mut looks_since_verified = 0;
        loop {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            let connects = statistics.connects.load(Ordering::Relaxed);
            looks_since_verified += 1;
            // Disconnected: unready, and `ensured_on` is cleared below, so the streams are
            // ensured again on the next connection.
            let checked = if !connected {
                Ok(())
            } else if ensured_on != Some(connects) {
                looks_since_verified = 0;
                ensure_streams(&js, &names, &config).await
            } else if looks_since_verified >= VERIFY_EVERY {
                looks_since_verified = 0;
                js.get_stream(&names.notify_stream)
                    .await
                    .map(drop)
                    .map_err(async_nats::Error::from)
            } else {
                Ok(())
            };
            let ok = connected
                && match checked {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::warn!(stream = %names.notify_stream, error = %err, "stream check failed");
                        false
                    }
                };
            ensured_on = ok.then_some(connects);
            self.stream_ok.store(ok, Ordering::Release);
            if was_ok != Some(ok) {
                tracing::info!(ready = ok, stream = %names.notify_stream, "readiness changed");
                was_ok = Some(ok);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(config.readiness_interval) => {}
            }
        }
    }
}

/// How Herald reaches NATS and shapes its streams.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub nats_url: String,
    /// Namespace of stream, subject and consumer names ([`check_prefix`]).
    pub prefix: String,
    /// Window in which JetStream drops a re-sent message with the same id.
    pub duplicate_window: Duration,
    /// How long the NOTIFY stream keeps messages.
    pub stream_max_age: Duration,
    /// Size bound of the NOTIFY stream in bytes (-1: none); when reached, publishes fail.
    pub stream_max_bytes: i64,
    /// How long a dead letter is kept.
    pub dlq_max_age: Duration,
    pub stream_replicas: usize,
    /// How often readiness looks at the connection (and, every [`VERIFY_EVERY`]th time,
    /// asks NATS for the stream).
    pub readiness_interval: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            nats_url: String::from("nats://127.0.0.1:4222"),
            prefix: String::new(),
            duplicate_window: Duration::from_secs(120),
            stream_max_age: Duration::from_secs(7 * 24 * 3600),
            stream_max_bytes: -1,
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            stream_replicas: 1,
            readiness_interval: Duration::from_secs(1),
        }
    }
}

/// Deletes every stream of `names` (with their consumers and key-value buckets): the
/// names deleted, and one line per stream NATS refused to delete. A stream that is not
/// there is neither.
/// Per priority, the messages its delivery consumer has not handed to any worker yet: due
/// work. A scheduled or held message was handed out already (it waits NAKed or in HOLD), so
/// it never counts. `None` for a priority whose consumer does not exist yet.
pub async fn due_backlog(js: &jetstream::Context, names: &Names) -> [Option<u64>; 3] {
    let Ok(stream) = js.get_stream_no_info(&names.notify_stream).await else {
        return [None; 3];
    };
    let mut due = [None; 3];
    for priority in Priority::ALL {
        if let Ok(info) = stream
            .consumer_info(names.delivery_consumer(priority))
            .await
        {
            due[priority.index()] = Some(info.num_pending);
        }
    }
    due
}

pub async fn delete_streams(js: &jetstream::Context, names: &Names) -> (Vec<String>, Vec<String>) {
    let buckets = names.buckets().map(|b| format!("KV_{b}"));
    let streams = [
        &names.notify_stream,
        &names.hold_stream,
        &names.dlq_stream,
        &names.events_stream,
    ];
    let (mut deleted, mut failures) = (Vec::new(), Vec::new());
    for stream in streams.into_iter().chain(&buckets).cloned() {
        match js.delete_stream(&stream).await {
            Ok(_) => deleted.push(stream),
            Err(err) if stream_not_found(&err) => {}
            Err(err) => failures.push(format!("NATS stream {stream}: {err}")),
        }
    }
    (deleted, failures)
}

fn stream_not_found(err: &jetstream::context::DeleteStreamError) -> bool {
    use jetstream::context::DeleteStreamErrorKind;
    use jetstream::ErrorCode;
    matches!(err.kind(), DeleteStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_split_into_servers() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,,nats://c:4222"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        let servers: Vec<async_nats::ServerAddr> = server_list("nats://a:1,nats://b:2")
            .iter()
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(servers.len(), 2);
    }
}
