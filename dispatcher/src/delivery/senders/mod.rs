//! Channel senders: one small trait, one file per channel. A sender turns one notification
//! into one attempt at its provider and classifies the result; it never retries itself
//! (retries belong to JetStream, see `retry.rs`).

pub mod client;
pub mod email;
pub mod push;
pub mod sms;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{health, DeliveryConfig};
use crate::model::{Channel, WireNotification};

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered {
        status: Option<u16>,
        /// The start of what the receiver answered (see [`SendOutcome::answered`]).
        response: Option<String>,
    },
    /// Worth trying again later (timeouts, connection errors, 408, 429, 5xx).
    Retryable {
        error: String,
        status: Option<u16>,
        /// The provider's own wish (`Retry-After`), honoured over the backoff.
        retry_after: Option<Duration>,
        response: Option<String>,
    },
    /// Will fail the same way every time (other 4xx, invalid recipient).
    Permanent {
        error: String,
        status: Option<u16>,
        response: Option<String>,
    },
    /// Nothing was sent: Herald itself lacks what it needs (a store it reads is down). The
    /// message waits without spending an attempt, and the destination is not judged.
    Unsent { error: String },
}

impl SendOutcome {
    /// Delivered, with no answer to record (SMTP's is its status line, not a body).
    pub const DELIVERED: SendOutcome = SendOutcome::Delivered {
        status: None,
        response: None,
    };

    /// A retryable failure that got no answer (a timeout, a connection error).
    pub fn retryable(error: String) -> Self {
        SendOutcome::Retryable {
            error,
            status: None,
            retry_after: None,
            response: None,
        }
    }

    /// A permanent failure that got no answer (Herald refused to send it).
    pub fn permanent(error: String) -> Self {
        SendOutcome::Permanent {
            error,
            status: None,
            response: None,
        }
    }

    /// The `outcome` label of the attempts metric.
    pub fn label(&self) -> &'static str {
        match self {
            SendOutcome::Delivered { .. } => "delivered",
            SendOutcome::Retryable { .. } => "retryable",
            SendOutcome::Permanent { .. } => "permanent",
            SendOutcome::Unsent { .. } => "unsent",
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            SendOutcome::Delivered { .. } => None,
            SendOutcome::Retryable { error, .. }
            | SendOutcome::Permanent { error, .. }
            | SendOutcome::Unsent { error } => Some(error),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            SendOutcome::Unsent { .. } => None,
            SendOutcome::Delivered { status, .. }
            | SendOutcome::Retryable { status, .. }
            | SendOutcome::Permanent { status, .. } => *status,
        }
    }

    /// The start of the answer's body, as the receiver or provider sent it.
    pub fn response(&self) -> Option<&str> {
        match self {
            SendOutcome::Unsent { .. } => None,
            SendOutcome::Delivered { response, .. }
            | SendOutcome::Retryable { response, .. }
            | SendOutcome::Permanent { response, .. } => response.as_deref(),
        }
    }

    /// The outcome recording the start of the answer's `body` (already cut at the bound),
    /// as UTF-8 text with invalid bytes replaced; an empty body records nothing.
    pub fn answered(mut self, body: &[u8]) -> Self {
        if let SendOutcome::Delivered { response, .. }
        | SendOutcome::Retryable { response, .. }
        | SendOutcome::Permanent { response, .. } = &mut self
        {
            *response = (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned());
        }
        self
    }

    /// Classifies an HTTP status by who answered it (see [`Answers`]).
    pub fn from_http_status(
        status: u16,
        retry_after: Option<Duration>,
        what: &str,
        answers: Answers,
    ) -> Self {
        let retried = match answers {
            Answers::Receiver => status != 410,
            Answers::Provider => matches!(status, 408 | 425 | 429 | 500..=599),
        };
        match status {
            200..=299 => SendOutcome::Delivered {
                status: Some(status),
                response: None,
            },
            _ if retried => SendOutcome::Retryable {
                error: format!("{what} answered {status}"),
                status: Some(status),
                retry_after,
                response: None,
            },
            _ => SendOutcome::Permanent {
                error: format!("{what} answered {status}"),
                status: Some(status),
                response: None,
            },
        }
    }
}

/// Which HTTP answers are worth another attempt. Timeouts and connection errors are
/// retried either way; 2xx is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// A webhook receiver, as Standard Webhooks recommends: every other answer is retried
    /// (a 401 during a secret rotation, a 404 during a deploy, a 3xx: redirects are not
    /// followed) except 410 Gone, which means "stop".
    Receiver,
    /// A provider's API (SMS, push): 408, 425, 429 and 5xx are retried; any other answer
    /// says the request itself (a number, a token) is wrong, and will stay wrong.
    Provider,
}

/// One attempt to deliver `notification`; `raw` is its wire document as stored.
pub struct Attempt<'a> {
    pub notification: &'a WireNotification<'a>,
    pub raw: &'a [u8],
    /// 1 for the first attempt.
    pub number: u32,
    /// This attempt's place in the notification's trace: HTTP senders pass it on as
    /// `traceparent`.
    pub trace: crate::trace::TraceParent,
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = SendOutcome> + Send + 'a>>;

/// Delivers over one channel.
pub trait Sender: Send + Sync {
    fn send<'a>(&'a self, attempt: &'a Attempt<'a>) -> SendFuture<'a>;
}

/// The sender of a channel this deployment cannot deliver to: every attempt is permanent,
/// so the notification goes to the DLQ with the reason instead of waiting forever.
pub struct Unavailable(pub crate::model::Channel);

impl Sender for Unavailable {
    fn send<'a>(&'a self, _attempt: &'a Attempt<'a>) -> SendFuture<'a> {
        Box::pin(async move { SendOutcome::permanent(format!("no {} sender configured", self.0)) })
    }
}

/// `Retry-After` as seconds (dates are rare from APIs and treated as absent).
pub fn parse_retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// One provider of a channel: its sender and the destination name its health is kept
/// under (`None` for webhooks, named by their URL, and for a channel without a sender).
pub struct Provider {
    pub name: Option<String>,
    pub sender: Arc<dyn Sender>,
}

/// Each channel's providers, in the order they are tried: on a retryable failure of one
/// (or while its circuit is open) the next takes the same attempt.
pub struct Senders(pub [Vec<Provider>; Channel::COUNT]);

/// Builds the sender of a channel's `i`-th provider, at its URL.
type MakeSender<'a> = dyn Fn(usize, &str) -> Result<Arc<dyn Sender>, String> + 'a;

/// The comma-separated values of a setting (several providers).
fn list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The `i`-th value of a per-provider setting; a single value serves every provider.
fn nth(values: &str, i: usize) -> &str {
    let values = list(values);
    values.get(i).or(values.last()).copied().unwrap_or_default()
}

impl Senders {
    /// The senders the configuration enables. A channel without one (no SMTP relay, SMS or
    /// push provider URL) dead-letters with that reason, so nothing waits forever and a
    /// replay delivers once it is configured. `--smtp-url`, `--sms-url` and `--push-url`
    /// may list several providers (commas), with their credentials listed in the same
    /// order (one value serves all).
    /// `tenants` gives each tenant's webhook secret; without it every webhook is signed
    /// with `--webhook-secret`. `egress`: where webhooks may go.
    pub fn from_config(
        config: &DeliveryConfig,
        tenants: Option<Arc<crate::tenants::Directory>>,
        egress: Arc<crate::egress::EgressPolicy>,
    ) -> Result<Self, String> {
        let caps = config.channel_concurrency.0;
        let webhook = webhook::WebhookSender::new(
            client::client(
                config.webhook_timeout,
                caps[Channel::Webhook.index()],
                Some(egress),
            ),
            config.webhook_secret.clone(),
            tenants,
            client::Bounds {
                timeout: config.webhook_timeout,
                body_prefix: config.response_body_limit,
                answers: Answers::Receiver,
            },
        );
        let timeout = config.provider_timeout;
        let bounds = client::Bounds {
            timeout,
            body_prefix: config.response_body_limit,
            answers: Answers::Provider,
        };
        let providers = |channel: Channel,
                         urls: &Option<String>,
                         make: &MakeSender|
         -> Result<Vec<Provider>, String> {
            let urls = urls.as_deref().map(list).unwrap_or_default();
            if urls.is_empty() {
                return Ok(vec![Provider {
                    name: None,
                    sender: Arc::new(Unavailable(channel)),
                }]);
            }
            urls.iter()
                .enumerate()
                .map(|(i, url)| {
                    Ok(Provider {
                        name: health::destination_name(channel, url),
                        sender: make(i, url)?,
                    })
                })
                .collect()
        };
        let sms_client = client::client(timeout, caps[Channel::Sms.index()], None);
        let sms = providers(Channel::Sms, &config.sms_url, &|i, url| {
            Ok(Arc::new(sms::SmsSender::new(
                sms_client.clone(),
                url,
                nth(&config.sms_account_sid, i),
                nth(&config.sms_auth_token, i),
                nth(&config.sms_from, i),
                bounds,
            )))
        })?;
        let push_client = client::client(timeout, caps[Channel::Push.index()], None);
        let push = providers(Channel::Push, &config.push_url, &|i, url| {
            Ok(Arc::new(push::PushSender::new(
                push_client.clone(),
                url,
                nth(&config.push_project, i),
                nth(&config.push_token, i),
                bounds,
            )))
        })?;
        let email = providers(Channel::Email, &config.smtp_url, &|_, url| {
            Ok(Arc::new(email::EmailSender::new(
                url,
                &config.smtp_from,
                timeout,
            )?))
        })?;
        let webhook = vec![Provider {
            name: None,
            sender: Arc::new(webhook),
        }];
        Ok(Senders([webhook, email, sms, push]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_are_retried_on_every_answer_but_410_and_providers_on_transient_ones() {
        let classify = |s, answers| SendOutcome::from_http_status(s, None, "x", answers);
        for answers in [Answers::Receiver, Answers::Provider] {
            assert_eq!(
                classify(204, answers),
                SendOutcome::Delivered {
                    status: Some(204),
                    response: None
                }
            );
            for s in [408, 429, 500, 502, 503] {
                assert!(matches!(
                    classify(s, answers),
                    SendOutcome::Retryable { .. }
                ));
            }
            assert!(matches!(
                classify(410, answers),
                SendOutcome::Permanent { .. }
            ));
        }
        for s in [301, 400, 401, 403, 404, 422] {
            let receiver = classify(s, Answers::Receiver);
            assert!(matches!(receiver, SendOutcome::Retryable { .. }), "{s}");
            let provider = classify(s, Answers::Provider);
            assert!(matches!(provider, SendOutcome::Permanent { .. }), "{s}");
        }
        assert_eq!(
            parse_retry_after(Some(&http::HeaderValue::from_static("7"))),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn an_answer_is_recorded_as_lossy_text_apart_from_the_error() {
        let answered = |s, body: &[u8]| {
            SendOutcome::from_http_status(s, None, "webhook", Answers::Receiver).answered(body)
        };
        let failed = answered(503, b"db down \xff");
        assert_eq!(failed.error(), Some("webhook answered 503"));
        assert_eq!(failed.status(), Some(503));
        assert_eq!(failed.response(), Some("db down \u{fffd}"));
        let delivered = answered(200, b"{\"ok\":true}");
        assert_eq!(delivered.response(), Some("{\"ok\":true}"));
        assert_eq!(answered(204, b"").response(), None);
        assert_eq!(SendOutcome::retryable("timed out".into()).response(), None);
    }
}
