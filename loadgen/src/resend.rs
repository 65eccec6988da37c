//! Idempotency under test: accepted requests sent again, byte for byte, once the load has
//! ended. Each must come back as a replay of its first answer (200 and the same id); one
//! accepted again under a new id is a notification the client would get twice.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::request::accepted_ids;
use crate::scenario::Priority;
use crate::work::LoadConfig;

/// One accepted request kept to send again.
#[derive(Debug, Clone)]
pub struct Kept {
    pub priority: Priority,
    pub body: Bytes,
    /// The id of its first answer.
    pub id: String,
}

/// What sending them again came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resent {
    pub resent: u64,
    /// Answered with the first id: the key held.
    pub replayed: u64,
    /// Accepted under another id: the key was forgotten, the notification duplicated.
    pub accepted_again: u64,
    /// No 2xx even after retries (the key's fate is unknown).
    pub failed: u64,
}

/// Sends every kept request again, a few at a time; a request refused for now (503, 429,
/// a transport error) is tried again up to five times, a second apart.
pub async fn run(config: &LoadConfig, kept: &[Kept]) -> anyhow::Result<Resent> {
    const PARALLEL: usize = 8;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!(
        "{}{}",
        config.target.trim_end_matches('/'),
        config.body.path()
    );
    let mut outcome = Resent::default();
    for chunk in kept.chunks(PARALLEL) {
        let answers =
            futures::future::join_all(chunk.iter().map(|k| again(&client, config, &url, k))).await;
        for (k, answer) in chunk.iter().zip(answers) {
            outcome.resent += 1;
            match answer? {
                Some(id) if id == k.id => outcome.replayed += 1,
                Some(_) => outcome.accepted_again += 1,
                None => outcome.failed += 1,
            }
        }
    }
    Ok(outcome)
}

/// The id a 2xx answer names; `None` when no attempt got a 2xx.
async fn again(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    config: &LoadConfig,
    url: &str,
    kept: &Kept,
) -> anyhow::Result<Option<String>> {
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("Herald-Priority", kept.priority.as_str());
        if let Some(key) = &config.api_key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(kept.body.clone()))
            .context("building a request to send again")?;
        let Ok(Ok(response)) = tokio::time::timeout(config.timeout, client.request(request)).await
        else {
            continue;
        };
        let status = response.status();
        let Ok(body) = response.into_body().collect().await else {
            continue;
        };
        if status.is_success() {
            return Ok(accepted_ids(&body.to_bytes(), false).into_iter().next());
        }
    }
    Ok(None)
}
