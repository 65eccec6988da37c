//! The properties the fuzz targets (dispatcher/fuzz) check, here so that unit tests run the
//! same checks on the inputs the fuzzer found (`dispatcher/fuzz/regressions/`).

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{parse_batch, parse_notification, Limits, WireNotification};

const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_BATCH: usize = 1000;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0)
        .single()
        .expect("a valid fixed time")
}

/// A refused request is a client error with a JSON body that says why; an invalid field
/// names the field.
fn check_error(err: &ApiError) {
    assert!(
        matches!(err.status.as_u16(), 400 | 413 | 422),
        "status {} for a bad body",
        err.status
    );
    let body: serde_json::Value =
        serde_json::from_slice(&err.body()).expect("error bodies are JSON");
    assert_eq!(body["error"]["code"], err.code);
    if err.code == "invalid_field" {
        // An empty name is right only for a field whose name is empty (`{"":1}`, found by
        // the fuzzer): the client sent exactly that unknown field.
        let field = err.field.as_deref().expect("invalid_field names its field");
        assert!(
            !field.is_empty() || err.message.starts_with("unknown field ``"),
            "invalid_field without a field: {err:?}"
        );
    }
}

/// One body as `POST /v1/notifications` gets it.
pub fn check_request(body: &[u8]) {
    let limits = Limits::public(MAX_PAYLOAD);
    match parse_notification(body, &limits, now()) {
        Ok(v) => {
            let id = Uuid::from_u128(7);
            let tenant = Uuid::from_u128(9);
            let wire = v.encode(id, tenant, now());
            let back: WireNotification<'_> =
                serde_json::from_slice(&wire).expect("the wire document decodes");
            assert_eq!((back.id, back.tenant), (id, tenant));
            assert_eq!(back.priority, v.priority);
            assert_eq!(back.channel, v.channel);
            assert_eq!(back.recipient, v.recipient);
            assert_eq!(back.payload.get(), v.payload.get(), "payload bytes changed");
            assert_eq!(back.idempotency_key, v.idempotency_key);
            assert_eq!(back.send_at, v.send_at);
            assert_eq!(back.expires_at, v.expires_at);
            assert_eq!(
                back.metadata.map(|m| m.get()),
                v.metadata.map(|m| m.get()),
                "metadata bytes changed"
            );
        }
        Err(err) => check_error(&ApiError::from(err)),
    }
}

/// One body as `POST /v1/notifications/batch` gets it.
pub fn check_batch(body: &[u8]) {
    match parse_batch(body, MAX_BATCH) {
        Ok(items) => {
            assert!(!items.is_empty() && items.len() <= MAX_BATCH);
            for item in items {
                check_request(item.get().as_bytes());
            }
        }
        Err(err) => check_error(&ApiError::from(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input the fuzzer ever failed on (and the seed corpus) passes the checks now.
    #[test]
    fn fuzz_regressions_and_seeds_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut seen = 0;
        for dir in ["regressions/request", "regressions/batch", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let body = std::fs::read(entry.unwrap().path()).unwrap();
                check_request(&body);
                check_batch(&body);
                seen += 1;
            }
        }
        assert!(seen > 0, "no seeds found under {}", root.display());
    }
}
