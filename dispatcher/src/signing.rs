//! Webhook signatures, as Standard Webhooks defines them (standardwebhooks.com), so that a
//! receiver verifies Herald's webhooks with any of that spec's libraries:
//!
//! - a secret is `whsec_` followed by the standard base64 of its key (24 to 64 random
//!   bytes); the key is the decoded bytes, never the text;
//! - `webhook-signature` is `v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`,
//!   several of them separated by spaces while a secret is rotated.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix every secret carries.
pub const PREFIX: &str = "whsec_";

/// Key lengths a secret may have, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The key of a fresh secret, in bytes.
const NEW_KEY_BYTES: usize = 32;

/// Why a text is not a signing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with {PREFIX}")]
    Prefix,
    #[error("a webhook secret is {PREFIX} and standard base64 (A-Z a-z 0-9 + / =)")]
    Base64,
    #[error("a webhook secret's key is 24 to 64 bytes, this one {0}")]
    Length(usize),
}

/// A signing key, decoded from its `whsec_` text. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The key of a `whsec_…` text.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret(key))
    }

    /// A fresh secret's text: 32 random bytes.
    pub fn generate() -> String {
        let mut key = [0u8; NEW_KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        format!("{PREFIX}{}", STANDARD.encode(key))
    }

    /// `v1,<base64 HMAC-SHA256>` of `"<id>.<timestamp>.<body>"`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated (a receiver
/// holding any one of them verifies).
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of Svix's documentation).
    #[test]
    fn signs_the_specification_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_secrets_give_space_separated_signatures() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let secrets = [Secret::parse(&a).unwrap(), Secret::parse(&b).unwrap()];
        let header = signature_header(&secrets, "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], secrets[0].sign("id", 1, b"{}"));
        assert_eq!(parts[1], secrets[1].sign("id", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn fresh_secrets_are_standard_base64_of_32_bytes() {
        let text = Secret::generate();
        let encoded = text.strip_prefix(PREFIX).unwrap();
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 32);
        assert!(Secret::parse(&text).is_ok());
    }

    #[test]
    fn texts_that_are_not_secrets_are_refused_with_the_reason() {
        assert_eq!(
            Secret::parse("herald-development-secret"),
            Err(SecretError::Prefix)
        );
        assert_eq!(Secret::parse("whsec_not base64!"), Err(SecretError::Base64));
        let short = format!("{PREFIX}{}", STANDARD.encode([0u8; 16]));
        assert_eq!(Secret::parse(&short), Err(SecretError::Length(16)));
        assert!(format!("{:?}", Secret::parse(&Secret::generate()).unwrap()).contains("redacted"));
    }
}
