//! How notifications are delivered: the delivery role's settings, which the command line
//! fills (`dispatcher deliver`, `run`).

use std::time::Duration;

use super::health::HealthConfig;
use super::retry::RetryPolicy;
use crate::model::Channel;
use crate::scheduler::{PerClass, SchedulerConfig};
use crate::signing::Secret;

/// How notifications are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Shares of high, medium and low while all are backlogged.
    pub delivery_weights: PerClass,
    /// Concurrent sends per channel; each channel has its own workers.
    pub channel_concurrency: PerChannel,
    /// Messages each priority's consumer may hold unacknowledged.
    pub max_ack_pending: usize,
    /// Messages per pull request.
    pub fetch_batch: usize,
    /// Most outcome events per EVENTS message.
    pub event_batch: usize,
    /// How long a batch of outcome events waits for more after its first, at least ...
    pub event_linger: Duration,
    /// ... and at most: at low rates the linger grows toward this (see `events`).
    pub event_linger_max: Duration,
    /// JetStream redelivers a message not acknowledged in this time.
    pub ack_wait: Duration,
    /// Waits at least this long go to the HOLD stream, out of the ack-pending window;
    /// shorter ones are NAKs with a delay.
    pub hold_after: Duration,
    /// How often `herald_dlq_messages` is brought up to date.
    pub dlq_size_interval: Duration,
    /// Circuit breaking, throttling and concurrency per destination.
    pub health: HealthConfig,
    pub retry_high: RetryPolicy,
    pub retry_medium: RetryPolicy,
    pub retry_low: RetryPolicy,
    /// Signs the webhooks of notifications accepted without authentication (tenants have
    /// their own secrets). No default: every delivery process must share it.
    pub webhook_secret: Option<Secret>,
    pub webhook_timeout: Duration,
    /// SMTP relay; without it email is dead-lettered as undeliverable here.
    pub smtp_url: Option<String>,
    pub smtp_from: String,
    /// Twilio-shaped SMS API; without it SMS is dead-lettered as undeliverable here.
    pub sms_url: Option<String>,
    pub sms_account_sid: String,
    pub sms_auth_token: String,
    pub sms_from: String,
    /// FCM HTTP v1 API; without it push is dead-lettered as undeliverable here.
    pub push_url: Option<String>,
    pub push_project: String,
    pub push_token: String,
    /// Timeout of one SMS or push provider request.
    pub provider_timeout: Duration,
    /// Bytes of a receiver's or provider's answer read at most (a failure's error quotes
    /// them); past it the connection is dropped, never buffered.
    pub response_body_limit: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let policy = |base_ms, cap_s, horizon_h: u64| RetryPolicy {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_secs(cap_s),
            horizon: Duration::from_secs(horizon_h * 3600),
        };
        DeliveryConfig {
            delivery_weights: SchedulerConfig::default().weights,
            channel_concurrency: PerChannel([256, 16, 64, 64]),
            max_ack_pending: 2048,
            fetch_batch: 256,
            event_batch: 256,
            event_linger: Duration::from_millis(10),
            event_linger_max: Duration::from_millis(50),
            ack_wait: Duration::from_secs(30),
            hold_after: Duration::from_secs(1),
            dlq_size_interval: Duration::from_secs(15),
            health: HealthConfig::default(),
            // Horizons: an OTP is worthless after an hour; a marketing blast keeps for days.
            retry_high: policy(200, 300, 1),
            retry_medium: policy(1000, 3600, 24),
            retry_low: policy(5000, 3600, 72),
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(10),
            smtp_url: None,
            smtp_from: String::from("Herald <herald@localhost>"),
            sms_url: None,
            sms_account_sid: String::new(),
            sms_auth_token: String::new(),
            sms_from: String::new(),
            push_url: None,
            push_project: String::new(),
            push_token: String::new(),
            provider_timeout: Duration::from_secs(10),
            response_body_limit: 1024,
        }
    }
}

impl DeliveryConfig {
    /// Refuses retry policies whose waits cannot fit where messages wait: a long wait sits
    /// in the HOLD stream, which keeps a message `stream_max_age` (`--stream-max-age`)
    /// from when it was held, so a longer cap would let it age out unseen. Each wait is
    /// held afresh, so the horizon itself may be longer than the retention.
    pub fn check_retention(&self, stream_max_age: Duration) -> Result<(), String> {
        let policies = [
            ("--retry-high", self.retry_high),
            ("--retry-medium", self.retry_medium),
            ("--retry-low", self.retry_low),
        ];
        for (flag, policy) in policies {
            if policy.cap >= stream_max_age {
                return Err(format!(
                    "{flag} {policy}: its cap must be below --stream-max-age ({}), which is how long a waiting message is kept",
                    humantime::format_duration(stream_max_age)
                ));
            }
        }
        Ok(())
    }
}

/// A value per channel, written `webhook:email:sms:push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerChannel(pub [usize; Channel::COUNT]);

impl std::str::FromStr for PerChannel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = Channel::ALL.map(Channel::as_str).join(":");
        crate::scheduler::parse_positive_list(s, &shape).map(PerChannel)
    }
}

impl std::fmt::Display for PerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values = self.0.map(|v| v.to_string());
        f.write_str(&values.join(":"))
    }
}
