//! The requests loadgen sends and how it reads Herald's answers.
//!
//! Every notification's payload carries `{"loadgen":{"run","seq","sent_ns"}}`: the run it
//! belongs to and the intended send time (Unix nanoseconds), so the sink can measure
//! end-to-end latency and tell this run's deliveries from anything else.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::Deserialize;

use crate::scenario::Priority;

/// Channels Herald accepts; loadgen addresses each with a plausible recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Channel {
    Webhook,
    Email,
    Sms,
    Push,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }
}

/// Builds request bodies.
#[derive(Debug, Clone)]
pub struct BodyBuilder {
    pub run: String,
    pub channel: Channel,
    /// The webhook recipient (the sink's URL when a sink runs).
    pub webhook_url: String,
    /// Approximate size of each notification's payload in bytes.
    pub payload_bytes: usize,
    /// Notifications per request; 0 means the single endpoint.
    pub batch: usize,
    /// Give every notification its own `idempotency_key` (`<run>-<priority>-<seq>`: each
    /// priority numbers its own requests), so the
    /// dispatcher's Redis claim runs for each (and never finds a repeat).
    pub idempotency_keys: bool,
}

impl BodyBuilder {
    pub fn path(&self) -> &'static str {
        if self.batch == 0 {
            "/v1/notifications"
        } else {
            "/v1/notifications/batch"
        }
    }

    /// The body of request `seq` (its notifications are numbered from `seq * batch`).
    pub fn body(&self, priority: Priority, seq: u64, sent_ns: u128) -> Bytes {
        let mut out = String::with_capacity((self.payload_bytes + 200) * self.batch.max(1));
        if self.batch == 0 {
            self.write_one(&mut out, priority, seq, sent_ns);
        } else {
            out.push('[');
            for i in 0..self.batch as u64 {
                if i > 0 {
                    out.push(',');
                }
                self.write_one(&mut out, priority, seq * self.batch as u64 + i, sent_ns);
            }
            out.push(']');
        }
        Bytes::from(out)
    }

    fn write_one(&self, out: &mut String, priority: Priority, seq: u64, sent_ns: u128) {
        let recipient = match self.channel {
            Channel::Webhook => self.webhook_url.as_str(),
            Channel::Email => "loadgen@example.com",
            Channel::Sms => "+4915112345678",
            Channel::Push => "loadgen-device-token",
        };
        if self.idempotency_keys {
            let _ = write!(
                out,
                r#"{{"idempotency_key":"{}-{priority}-{seq}","#,
                self.run
            );
        } else {
            out.push('{');
        }
        let _ = write!(
            out,
            r#""priority":"{priority}","channel":"{}","recipient":"{recipient}","payload":{{"loadgen":{{"run":"{}","seq":{seq},"sent_ns":{sent_ns}}},"pad":""#,
            self.channel.as_str(),
            self.run,
        );
        // Pad to roughly the requested payload size; the fixed part is about 60 bytes.
        let pad = self.payload_bytes.saturating_sub(60 + self.run.len());
        out.extend(std::iter::repeat_n('x', pad));
        out.push_str("\"}}");
    }
}

#[derive(Deserialize)]
struct Single {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    status: u16,
    id: Option<String>,
}

/// The ids of the notifications a 2xx answer accepted.
pub fn accepted_ids(body: &[u8], batch: bool) -> Vec<String> {
    if batch {
        serde_json::from_slice::<Batch>(body)
            .map(|b| {
                b.results
                    .into_iter()
                    .filter(|r| r.status == 202)
                    .filter_map(|r| r.id)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        serde_json::from_slice::<Single>(body)
            .ok()
            .and_then(|s| s.id)
            .into_iter()
            .collect()
    }
}

/// How many notifications a 2xx answer accepted, without keeping the ids.
pub fn accepted_count(body: &[u8], batch: bool) -> u64 {
    if !batch {
        return 1;
    }
    #[derive(Deserialize)]
    struct Count {
        accepted: u64,
    }
    serde_json::from_slice::<Count>(body)
        .map(|c| c.accepted)
        .unwrap_or(0)
}

/// `error.code` of an error answer (`{"error":{"code":"overloaded",...}}`), if it has one.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Answer {
        error: Code,
    }
    #[derive(Deserialize)]
    struct Code {
        code: String,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()
        .map(|a| a.error.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(batch: usize) -> BodyBuilder {
        BodyBuilder {
            run: "r1".into(),
            channel: Channel::Webhook,
            webhook_url: "http://127.0.0.1:9/hook".into(),
            payload_bytes: 256,
            batch,
            idempotency_keys: false,
        }
    }

    #[test]
    fn single_body_is_a_valid_notification_of_about_the_asked_size() {
        let body = builder(0).body(Priority::High, 7, 123);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["priority"], "high");
        assert_eq!(v["payload"]["loadgen"]["seq"], 7);
        assert_eq!(v["payload"]["loadgen"]["sent_ns"], 123);
        let payload = serde_json::to_string(&v["payload"]).unwrap();
        assert!((230..=290).contains(&payload.len()), "{}", payload.len());
    }

    #[test]
    fn batch_body_numbers_its_items() {
        let body = builder(3).body(Priority::Low, 2, 1);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let seqs: Vec<u64> = v
            .iter()
            .map(|n| n["payload"]["loadgen"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![6, 7, 8]);
    }

    #[test]
    fn idempotency_keys_are_unique_per_notification() {
        let mut b = builder(2);
        b.idempotency_keys = true;
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&b.body(Priority::Medium, 5, 1)).unwrap();
        assert_eq!(v[0]["idempotency_key"], "r1-medium-10");
        assert_eq!(v[1]["idempotency_key"], "r1-medium-11");
        assert_eq!(v[1]["priority"], "medium");
    }

    #[test]
    fn reads_accepted_ids() {
        assert_eq!(
            accepted_ids(br#"{"id":"a","status":"accepted"}"#, false),
            vec!["a"]
        );
        let batch = br#"{"accepted":1,"results":[{"index":0,"status":202,"id":"a"},{"index":1,"status":422,"error":{}}]}"#;
        assert_eq!(accepted_ids(batch, true), vec!["a"]);
        assert_eq!(accepted_count(batch, true), 1);
    }

    #[test]
    fn reads_the_error_code() {
        let body = br#"{"error":{"code":"overloaded","message":"shedding low"}}"#;
        assert_eq!(error_code(body).as_deref(), Some("overloaded"));
        assert_eq!(error_code(b"Service Unavailable"), None);
    }
}
