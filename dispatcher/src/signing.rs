//! Webhook signatures, as Standard Webhooks defines them (standardwebhooks.com), so that a
//! receiver verifies Herald's webhooks with any of that spec's libraries:
//!
//! - a secret is `whsec_` followed by the standard base64 of its key (24 to 64 random
//!   bytes); the key is the decoded bytes, never the text;
//! - `webhook-signature` is `v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`,
//!   several of them separated by spaces while a secret is rotated;
//! - optionally, `v1a,<base64 ed25519 signature>` of the same content beside it, verified
//!   with a `whpk_` public key.

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

/// The prefix of an ed25519 signing key (kept by Herald, sealed at rest).
pub const PRIVATE_PREFIX: &str = "whsk_";

/// The prefix of an ed25519 public key (given to receivers).
pub const PUBLIC_PREFIX: &str = "whpk_";

/// An ed25519 signing key, for `v1a` signatures: a receiver verifies with the public key
/// alone, so whoever can verify cannot forge. Its `Debug` shows only the public key.
#[derive(Clone)]
pub struct KeyPair(ed25519_dalek::SigningKey);

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.public())
    }
}

impl KeyPair {
    /// The key of a `whsk_…` text: the standard base64 of its 32-byte seed.
    pub fn parse(text: &str) -> Result<KeyPair, SecretError> {
        let encoded = text
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let seed = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        let len = seed.len();
        let seed: [u8; 32] = seed.try_into().map_err(|_| SecretError::Length(len))?;
        Ok(KeyPair(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A fresh key's `whsk_…` text.
    pub fn generate() -> String {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        format!("{PRIVATE_PREFIX}{}", STANDARD.encode(seed))
    }

    /// `whpk_` and the standard base64 of the 32-byte public key.
    pub fn public(&self) -> String {
        format!(
            "{PUBLIC_PREFIX}{}",
            STANDARD.encode(self.0.verifying_key().as_bytes())
        )
    }

    /// `v1a,<base64 ed25519 signature>` of `"<id>.<timestamp>.<body>"`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let mut content = Vec::with_capacity(id.len() + body.len() + 24);
        content.extend_from_slice(id.as_bytes());
        content.push(b'.');
        content.extend_from_slice(timestamp.to_string().as_bytes());
        content.push(b'.');
        content.extend_from_slice(body);
        format!("v1a,{}", STANDARD.encode(self.0.sign(&content).to_bytes()))
    }
}

/// Every key a webhook is signed with: HMAC secrets (`v1`) and ed25519 keys (`v1a`), the
/// current ones first and, during a rotation, the ones they replace.
#[derive(Debug, Clone, Default)]
pub struct SigningKeys {
    pub secrets: Vec<Secret>,
    pub pairs: Vec<KeyPair>,
}

impl SigningKeys {
    /// The `webhook-signature` header: one signature per key, space-separated (a receiver
    /// holding any one of the keys verifies).
    pub fn header(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let hmac = self.secrets.iter().map(|s| s.sign(id, timestamp, body));
        let ed25519 = self.pairs.iter().map(|p| p.sign(id, timestamp, body));
        hmac.chain(ed25519).collect::<Vec<_>>().join(" ")
    }
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
    fn several_keys_give_space_separated_signatures() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let keys = SigningKeys {
            secrets: vec![Secret::parse(&a).unwrap(), Secret::parse(&b).unwrap()],
            pairs: vec![KeyPair::parse(&KeyPair::generate()).unwrap()],
        };
        let header = keys.header("id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], keys.secrets[0].sign("id", 1, b"{}"));
        assert_eq!(parts[1], keys.secrets[1].sign("id", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
        assert!(parts[2].starts_with("v1a,"));
    }

    /// RFC 8032's first ed25519 test vector (empty message), through `whsk_`/`whpk_`.
    #[test]
    fn ed25519_keys_follow_rfc_8032() {
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let pair = KeyPair::parse(&format!("{PRIVATE_PREFIX}{}", STANDARD.encode(&seed))).unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        assert_eq!(
            pair.public(),
            format!("{PUBLIC_PREFIX}{}", STANDARD.encode(public))
        );
        use ed25519_dalek::Signer;
        let signature = hex::encode(pair.0.sign(b"").to_bytes());
        assert_eq!(
            signature,
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(format!("{pair:?}").contains(PUBLIC_PREFIX));
        assert!(matches!(
            KeyPair::parse("whsec_x"),
            Err(SecretError::Prefix)
        ));
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
