//! SMS through a Twilio-shaped provider API: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`,
//! form-encoded `To`, `From`, `Body`, HTTP Basic auth `sid:token`. The text is the
//! payload's `text` (or `body`). 2xx (Twilio answers 201) is delivered; 429 and 5xx are
//! retried; other statuses (bad number, unauthorised) are permanent.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;

use super::client::{exchange, Bounds, HttpClient};
use super::{Attempt, SendFuture, SendOutcome, Sender};

pub struct SmsSender {
    client: HttpClient,
    url: String,
    authorization: String,
    from: String,
    bounds: Bounds,
}

impl SmsSender {
    pub fn new(
        client: HttpClient,
        base_url: &str,
        account_sid: &str,
        auth_token: &str,
        from: &str,
        bounds: Bounds,
    ) -> Self {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{auth_token}"));
        SmsSender {
            client,
            url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                base_url.trim_end_matches('/')
            ),
            authorization: format!("Basic {credentials}"),
            from: from.to_string(),
            bounds,
        }
    }
}

#[derive(serde::Deserialize)]
struct Text<'a> {
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
}

impl Sender for SmsSender {
    fn send<'a>(&'a self, attempt: &'a Attempt<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let text = serde_json::from_str::<Text<'_>>(attempt.notification.payload.get())
                .ok()
                .and_then(|t| t.text.or(t.body));
            let Some(text) = text else {
                return SendOutcome::permanent(String::from("sms payload has no text"));
            };
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("To", &attempt.notification.recipient)
                .append_pair("From", &self.from)
                .append_pair("Body", &text)
                .finish();
            let request = http::Request::post(self.url.as_str())
                .header(http::header::AUTHORIZATION, self.authorization.as_str())
                .header(crate::trace::HEADER, attempt.trace.to_header())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header("Idempotency-Key", attempt.notification.id.to_string())
                .body(Full::new(Bytes::from(form)));
            match request {
                Ok(request) => exchange(&self.client, request, self.bounds, "sms provider").await,
                Err(e) => SendOutcome::permanent(format!("invalid sms request: {e}")),
            }
        })
    }
}
