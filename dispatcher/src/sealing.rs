//! Secrets at rest: every webhook signing secret (HMAC or ed25519) is stored sealed with
//! AES-256-GCM under a key that lives only in the environment (`HERALD_SECRETS_KEY`), so a
//! dump or a backup of PostgreSQL gives no one the power to forge Herald's webhooks.
//!
//! A sealed value is `sealed1:` and the standard base64 of a 12-byte random nonce followed
//! by the ciphertext and its tag. The tag authenticates the value, so a wrong key is an
//! error, never a wrong secret. Values stored before sealing existed (`whsec_…`) are read
//! as they are and sealed at start ([`crate::tenants::seal_stored_secrets`]).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

/// The prefix of a sealed value.
pub const SEALED: &str = "sealed1:";

const NONCE_BYTES: usize = 12;

/// The environment variable that holds the key.
pub const KEY_ENV: &str = "HERALD_SECRETS_KEY";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "{KEY_ENV} is the standard base64 of 32 bytes (make one with: openssl rand -base64 32)"
    )]
    Key,
    #[error("a stored secret is damaged (not {SEALED} and base64)")]
    Damaged,
    #[error("a stored secret was sealed with another key: {KEY_ENV} is not the key this database's secrets were sealed with")]
    WrongKey,
}

/// The key secrets are sealed with. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SealingKey(Aes256Gcm);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// The key of its base64 text.
    pub fn parse(text: &str) -> Result<SealingKey, SealError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| SealError::Key)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::Key)?;
        Ok(SealingKey(Aes256Gcm::new(&key.into())))
    }

    /// A fresh random key, as its base64 text.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("AES-GCM seals any text shorter than 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!("{SEALED}{}", STANDARD.encode(out))
    }

    /// The plaintext of a stored value; one stored before sealing is returned as it is.
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(encoded) = stored.strip_prefix(SEALED) else {
            return Ok(stored.to_string());
        };
        let bytes = STANDARD.decode(encoded).map_err(|_| SealError::Damaged)?;
        if bytes.len() < NONCE_BYTES {
            return Err(SealError::Damaged);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plaintext = self
            .0
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plaintext).map_err(|_| SealError::Damaged)
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let key = SealingKey::parse(&SealingKey::generate()).unwrap();
        let sealed = key.seal("whsec_abc");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(key.open(&sealed).unwrap(), "whsec_abc");
        // Fresh nonces: the same secret never seals to the same text.
        assert_ne!(key.seal("whsec_abc"), sealed);
        let other = SealingKey::parse(&SealingKey::generate()).unwrap();
        assert_eq!(other.open(&sealed), Err(SealError::WrongKey));
    }

    #[test]
    fn tampering_and_bad_keys_are_refused_with_the_reason() {
        let key = SealingKey::parse(&SealingKey::generate()).unwrap();
        let sealed = key.seal("whsec_abc");
        let mut bytes = STANDARD.decode(&sealed[SEALED.len()..]).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        let tampered = format!("{SEALED}{}", STANDARD.encode(bytes));
        assert_eq!(key.open(&tampered), Err(SealError::WrongKey));
        assert_eq!(key.open("sealed1:!!"), Err(SealError::Damaged));
        assert_eq!(key.open("whsec_plain").unwrap(), "whsec_plain");
        assert_eq!(SealingKey::parse("c2hvcnQ=").unwrap_err(), SealError::Key);
        assert_eq!(
            SealingKey::parse("not base64!").unwrap_err(),
            SealError::Key
        );
        assert!(format!("{key:?}").contains("redacted"));
    }
}
