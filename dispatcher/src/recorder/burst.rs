//! A recorder consumer's messages in bursts. A long-lived pull would have the server send
//! each message the moment it is stored, one write and one wake-up per message on both
//! sides, while the recorder only writes once per linger anyway. So: one waiting pull for a
//! single message wakes the recorder; the server keeps what follows until the linger has
//! passed; then one no-wait pull on the same inbox takes what gathered, up to a batch.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, consumer, Message};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::batch::Limits;

/// How long a waiting pull for the first message lasts on the server.
const WAIT: Duration = Duration::from_secs(30);
/// The server's heartbeat on a waiting pull: without one for twice this, the pull is taken
/// for lost (NATS reconnected, the server restarted) and made again.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a no-wait pull's answer may take to end before the batch closes without it.
const FETCH_WAIT: Duration = Duration::from_secs(5);

pub struct Burst {
    consumer: consumer::PullConsumer,
    js: jetstream::Context,
    stop: CancellationToken,
    /// Names the consumer in log lines.
    label: String,
    /// One inbox for every pull. A late answer to an earlier pull is a message delivered
    /// to this consumer all the same, so whichever read finds it takes it.
    inbox: Option<(Subject, Subscriber)>,
}

/// What the inbox gave.
enum Got {
    Message(Box<Message>),
    /// The pull being read has ended (expired, no messages, or refused).
    Ended,
    /// Nothing within the wait: the pull is taken for lost.
    Silent,
    Stopped,
}

impl Burst {
    pub fn new(
        consumer: consumer::PullConsumer,
        js: jetstream::Context,
        stop: CancellationToken,
    ) -> Self {
        let label = consumer.cached_info().name.clone();
        Burst {
            consumer,
            js,
            stop,
            label,
            inbox: None,
        }
    }

    /// The first message of the next batch; `None` once `stop` is cancelled.
    pub async fn first(&mut self) -> Option<Message> {
        while !self.stop.is_cancelled() {
            let asked = BatchConfig {
                batch: 1,
                expires: Some(WAIT),
                idle_heartbeat: HEARTBEAT,
                ..Default::default()
            };
            if !self.ask(asked).await {
                self.pause().await;
                continue;
            }
            match self.receive(HEARTBEAT * 2).await {
                Got::Message(message) => return Some(*message),
                Got::Ended | Got::Silent => {}
                Got::Stopped => return None,
            }
        }
        None
    }

    /// The batch that `first` opens: after the linger (none when the backlog behind `first`
    /// fills a batch, or on stop), what one no-wait pull gives, within the limits.
    pub async fn rest(
        &mut self,
        first: Message,
        opened: tokio::time::Instant,
        limits: Limits,
    ) -> Vec<Message> {
        let backlog = first.info().map_or(0, |info| info.pending as usize);
        let bytes = first.payload.len();
        let mut batch = vec![first];
        if backlog + 1 < limits.max {
            tokio::select! {
                () = self.stop.cancelled() => return batch,
                () = tokio::time::sleep_until(opened + limits.linger) => {}
            }
        }
        let wanted = limits.max - 1;
        let room = limits.max_bytes.saturating_sub(bytes);
        if wanted == 0 || room == 0 || self.stop.is_cancelled() {
            return batch;
        }
        let asked = BatchConfig {
            batch: wanted,
            max_bytes: room,
            no_wait: true,
            ..Default::default()
        };
        if !self.ask(asked).await {
            return batch;
        }
        while batch.len() <= wanted {
            match self.receive(FETCH_WAIT).await {
                Got::Message(message) => batch.push(*message),
                Got::Ended | Got::Silent | Got::Stopped => break,
            }
        }
        batch
    }

    /// Sends a pull request for `asked` to this consumer's inbox (subscribing first if
    /// needed); false, logged, if it could not be sent.
    async fn ask(&mut self, asked: BatchConfig) -> bool {
        let inbox = match &self.inbox {
            Some((inbox, _)) => inbox.clone(),
            None => {
                let client = self.js.client();
                let inbox = Subject::from(client.new_inbox());
                match client.subscribe(inbox.clone()).await {
                    Ok(subscriber) => {
                        self.inbox = Some((inbox.clone(), subscriber));
                        inbox
                    }
                    Err(err) => {
                        tracing::warn!(consumer = %self.label, error = %err, "cannot subscribe to pull; retrying");
                        return false;
                    }
                }
            }
        };
        match self.consumer.request_batch(asked, inbox).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(consumer = %self.label, error = %err, "cannot pull; retrying");
                false
            }
        }
    }

    /// The inbox's next message within `wait`, heartbeats passed over.
    async fn receive(&mut self, wait: Duration) -> Got {
        let Some((_, subscriber)) = &mut self.inbox else {
            return Got::Ended;
        };
        loop {
            let next = tokio::select! {
                () = self.stop.cancelled() => return Got::Stopped,
                next = tokio::time::timeout(wait, subscriber.next()) => next,
            };
            let message = match next {
                Err(_) => return Got::Silent,
                Ok(None) => {
                    self.inbox = None;
                    return Got::Ended;
                }
                Ok(Some(message)) => message,
            };
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    return Got::Message(Box::new(Message {
                        message,
                        context: self.js.clone(),
                    }))
                }
                StatusCode::IDLE_HEARTBEAT => continue,
                // Expired, or a no-wait pull has given what there was.
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND => return Got::Ended,
                // The next message would pass the batch's bytes: it opens the next batch.
                StatusCode::REQUEST_TERMINATED
                    if message
                        .description
                        .as_deref()
                        .is_some_and(|d| d.starts_with("Message Size Exceeds")) =>
                {
                    return Got::Ended
                }
                status => {
                    // A refusal (the consumer deleted, a limit reached): said, and asked
                    // again after a pause.
                    tracing::warn!(consumer = %self.label, %status, description = ?message.description, "pull refused");
                    self.pause().await;
                    return Got::Ended;
                }
            }
        }
    }

    async fn pause(&self) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
