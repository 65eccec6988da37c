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
use std::time::Duration;

use crate::model::WireNotification;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// Worth trying again later (timeouts, connection errors, 408, 429, 5xx).
    Retryable {
        error: String,
        status: Option<u16>,
        /// The provider's own wish (`Retry-After`), honoured over the backoff.
        retry_after: Option<Duration>,
    },
    /// Will fail the same way every time (other 4xx, invalid recipient).
    Permanent {
        error: String,
        status: Option<u16>,
    },
    /// Nothing was sent: Herald itself lacks what it needs (a store it reads is down). The
    /// message waits without spending an attempt, and the destination is not judged.
    Unsent {
        error: String,
    },
}

impl SendOutcome {
    /// The `outcome` label of the attempts metric.
    pub fn label(&self) -> &'static str {
        match self {
            SendOutcome::Delivered => "delivered",
            SendOutcome::Retryable { .. } => "retryable",
            SendOutcome::Permanent { .. } => "permanent",
            SendOutcome::Unsent { .. } => "unsent",
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            SendOutcome::Delivered => None,
            SendOutcome::Retryable { error, .. }
            | SendOutcome::Permanent { error, .. }
            | SendOutcome::Unsent { error } => Some(error),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            SendOutcome::Delivered | SendOutcome::Unsent { .. } => None,
            SendOutcome::Retryable { status, .. } | SendOutcome::Permanent { status, .. } => {
                *status
            }
        }
    }

    /// Classifies an HTTP status the way most providers mean it.
    /// A failure's error quoting the start of the answer's body (the receiver's reason),
    /// as text; a delivery is left as it is.
    pub fn quoting(mut self, body: &[u8]) -> Self {
        if let SendOutcome::Retryable { error, .. } | SendOutcome::Permanent { error, .. } =
            &mut self
        {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if !text.is_empty() {
                error.push_str(": ");
                error.push_str(text);
            }
        }
        self
    }

    pub fn from_http_status(status: u16, retry_after: Option<Duration>, what: &str) -> Self {
        match status {
            200..=299 => SendOutcome::Delivered,
            408 | 425 | 429 | 500..=599 => SendOutcome::Retryable {
                error: format!("{what} answered {status}"),
                status: Some(status),
                retry_after,
            },
            _ => SendOutcome::Permanent {
                error: format!("{what} answered {status}"),
                status: Some(status),
            },
        }
    }
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
        Box::pin(async move {
            SendOutcome::Permanent {
                error: format!("no {} sender configured", self.0),
                status: None,
            }
        })
    }
}

/// `Retry-After` as seconds (dates are rare from APIs and treated as absent).
pub fn parse_retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified_like_providers_mean_them() {
        assert_eq!(
            SendOutcome::from_http_status(204, None, "x"),
            SendOutcome::Delivered
        );
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(
                SendOutcome::from_http_status(s, None, "x"),
                SendOutcome::Retryable { .. }
            ));
        }
        for s in [301, 400, 401, 403, 404, 410, 422] {
            assert!(matches!(
                SendOutcome::from_http_status(s, None, "x"),
                SendOutcome::Permanent { .. }
            ));
        }
        assert_eq!(
            parse_retry_after(Some(&http::HeaderValue::from_static("7"))),
            Some(Duration::from_secs(7))
        );
    }
}
