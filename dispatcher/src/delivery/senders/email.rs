//! Email over SMTP (lettre) to the configured relay. The relay URL carries the security and
//! credentials: `smtps://user:pass@host:465` (implicit TLS), `smtp://user:pass@host:587?tls=required`
//! (STARTTLS), `smtp://host:25` (plain, for a local relay only). Subject is the payload's
//! `subject`, the text part `text`, an optional HTML part `html`; the Message-ID carries the
//! notification id so receivers can de-duplicate. SMTP 4xx replies and connection
//! failures are retried, 5xx replies (unknown mailbox, refused) are permanent.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Attempt, SendFuture, SendOutcome, Sender};

pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailSender {
    pub fn new(relay_url: &str, from: &str, timeout: std::time::Duration) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(relay_url)
            .map_err(|e| format!("--smtp-url: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("--smtp-from {from:?}: {e}"))?;
        Ok(EmailSender { transport, from })
    }
}

#[derive(serde::Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    subject: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    html: Option<std::borrow::Cow<'a, str>>,
}

impl Sender for EmailSender {
    fn send<'a>(&'a self, attempt: &'a Attempt<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let n = attempt.notification;
            let content: Content<'_> = match serde_json::from_str(n.payload.get()) {
                Ok(c) => c,
                Err(e) => return SendOutcome::permanent(format!("email payload: {e}")),
            };
            let to: Mailbox = match n.recipient.parse() {
                Ok(m) => m,
                Err(e) => return SendOutcome::permanent(format!("email recipient: {e}")),
            };
            let text = content.text.as_deref().unwrap_or_default().to_string();
            let builder = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(content.subject.as_deref().unwrap_or_default())
                .message_id(Some(format!("<{}@herald>", n.id)));
            let message = match content.html {
                Some(html) => {
                    builder.multipart(MultiPart::alternative_plain_html(text, html.into_owned()))
                }
                None => builder.singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                ),
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => return SendOutcome::permanent(format!("email message: {e}")),
            };
            match self.transport.send(message).await {
                Ok(_) => SendOutcome::DELIVERED,
                Err(e) => {
                    let status = e.status().map(u16::from);
                    if e.is_permanent() {
                        SendOutcome::Permanent {
                            error: format!("smtp: {e}"),
                            status,
                            response: None,
                        }
                    } else {
                        SendOutcome::Retryable {
                            error: format!("smtp: {e}"),
                            status,
                            retry_after: None,
                            response: None,
                        }
                    }
                }
            }
        })
    }
}
