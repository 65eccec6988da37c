//! Push through the FCM HTTP v1 API: `POST {base}/v1/projects/{project}/messages:send` with
//! `Authorization: Bearer <token>` and
//! `{"message":{"token":<recipient>,"notification":{"title","body"},"data":{...}}}` built from
//! the payload's `title`, `body` and `data` (an object of strings). 2xx is delivered; 429
//! and 5xx are retried; 400, 401, 403 and 404 (`UNREGISTERED`) are permanent.
//!
//! The bearer token is taken as configured: minting it from a service account (OAuth2 JWT
//! exchange) is not built yet.

use bytes::Bytes;
use http_body_util::Full;
use serde_json::value::RawValue;

use super::client::{exchange, Bounds, HttpClient};
use super::{Attempt, SendFuture, SendOutcome, Sender};

pub struct PushSender {
    client: HttpClient,
    url: String,
    authorization: String,
    bounds: Bounds,
}

impl PushSender {
    pub fn new(
        client: HttpClient,
        base_url: &str,
        project: &str,
        token: &str,
        bounds: Bounds,
    ) -> Self {
        PushSender {
            client,
            url: format!(
                "{}/v1/projects/{project}/messages:send",
                base_url.trim_end_matches('/')
            ),
            authorization: format!("Bearer {token}"),
            bounds,
        }
    }
}

#[derive(serde::Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    title: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(serde::Serialize)]
struct Message<'a> {
    message: Inner<'a>,
}

#[derive(serde::Serialize)]
struct Inner<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notification<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

#[derive(serde::Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

impl Sender for PushSender {
    fn send<'a>(&'a self, attempt: &'a Attempt<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let content: Content<'_> =
                match serde_json::from_str(attempt.notification.payload.get()) {
                    Ok(c) => c,
                    Err(e) => return SendOutcome::permanent(format!("push payload: {e}")),
                };
            if content.title.is_none() && content.body.is_none() && content.data.is_none() {
                return SendOutcome::permanent(String::from(
                    "push payload has none of title, body, data",
                ));
            }
            let notification =
                (content.title.is_some() || content.body.is_some()).then_some(Notification {
                    title: content.title.as_deref(),
                    body: content.body.as_deref(),
                });
            let message = Message {
                message: Inner {
                    token: &attempt.notification.recipient,
                    notification,
                    data: content.data.filter(|d| d.get().starts_with('{')),
                },
            };
            let body = serde_json::to_vec(&message).expect("serializing strings cannot fail");
            let request = http::Request::post(self.url.as_str())
                .header(http::header::AUTHORIZATION, self.authorization.as_str())
                .header(crate::trace::HEADER, attempt.trace.to_header())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)));
            match request {
                Ok(request) => exchange(&self.client, request, self.bounds, "push provider").await,
                Err(e) => SendOutcome::permanent(format!("invalid push request: {e}")),
            }
        })
    }
}
