//! Secrets at rest: each secret value of a function is sealed with XChaCha20-Poly1305 (the
//! `chacha20poly1305` crate, RustCrypto) under the key in `COLORFAAS_SECRETS_KEY`, with a random
//! 192-bit nonce, and bound to its user, function and name (associated data), so a sealed value
//! copied to another function or name does not open. The portal seals what users send; the
//! worker opens them when it loads the function into a container. Nothing else needs the key.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use sha2::Digest as _;

use crate::config::{ConfigError, Env};

/// The variable holding the key: 64 hex digits (32 bytes), the same for portal and workers.
pub const KEY_VAR: &str = "COLORFAAS_SECRETS_KEY";
/// Prefix of a sealed value (its format's version).
const SEALED_PREFIX: &str = "v1:";
const NONCE_BYTES: usize = 24;

/// The key secrets are sealed with. Its `Debug` and `Display` show only a fingerprint.
#[derive(Clone)]
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
}

/// A sealed value that did not open (wrong key, tampered, or moved to another function).
#[derive(Debug, thiserror::Error)]
#[error("a secret could not be opened (wrong COLORFAAS_SECRETS_KEY, or a tampered value)")]
pub struct OpenError;

impl SecretsKey {
    /// Reads [`KEY_VAR`]; `Ok(None)` when it is not set.
    pub fn from_env(env: &Env) -> Result<Option<SecretsKey>, ConfigError> {
        match env.get(KEY_VAR).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(hex_key) => SecretsKey::from_hex(hex_key)
                .map(Some)
                .ok_or_else(|| ConfigError::new(KEY_VAR, "must be 64 hex digits (32 bytes)")),
        }
    }

    /// A key from 64 hex digits.
    pub fn from_hex(hex_key: &str) -> Option<SecretsKey> {
        let bytes = hex::decode(hex_key).ok()?;
        if bytes.len() != 32 {
            return None;
        }
        let digest = sha2::Sha256::digest(&bytes);
        Some(SecretsKey {
            cipher: XChaCha20Poly1305::new_from_slice(&bytes).ok()?,
            fingerprint: hex::encode(&digest[..4]),
        })
    }

    /// Seals `value` for one secret of one function.
    pub fn seal(&self, user_id: &str, function_id: &str, name: &str, value: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated(user_id, function_id, name);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a bounded message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Opens what [`SecretsKey::seal`] sealed for the same user, function and name.
    pub fn open(
        &self,
        user_id: &str,
        function_id: &str,
        name: &str,
        sealed: &str,
    ) -> Result<String, OpenError> {
        let b64 = sealed.strip_prefix(SEALED_PREFIX).ok_or(OpenError)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| OpenError)?;
        if raw.len() < NONCE_BYTES {
            return Err(OpenError);
        }
        let (nonce, ct) = raw.split_at(NONCE_BYTES);
        let aad = associated(user_id, function_id, name);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| OpenError)?;
        String::from_utf8(plain).map_err(|_| OpenError)
    }
}

/// Bytes of the value a sealed secret holds (known without the key: the ciphertext is the
/// value's length plus the nonce and the 16-byte tag); 0 for anything malformed.
pub fn sealed_len(sealed: &str) -> usize {
    sealed
        .strip_prefix(SEALED_PREFIX)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map_or(0, |raw| raw.len().saturating_sub(NONCE_BYTES + 16))
}

fn associated(user_id: &str, function_id: &str, name: &str) -> String {
    format!("colorfaas-secret/v1\0{user_id}\0{function_id}\0{name}")
}

impl fmt::Display for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "set (fingerprint {})", self.fingerprint)
    }
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey({})", self.fingerprint)
    }
}

/// How a possibly missing key is logged.
pub fn describe(key: Option<&SecretsKey>) -> String {
    key.map_or_else(|| "not set".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const K2: &str = "ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn seals_and_opens_bound_to_function_and_name() {
        let k = SecretsKey::from_hex(K1).unwrap();
        let sealed = k.seal("u", "f", "DB_PASSWORD", "s3cr3t");
        assert!(!sealed.contains("s3cr3t"));
        assert_ne!(
            sealed,
            k.seal("u", "f", "DB_PASSWORD", "s3cr3t"),
            "random nonces"
        );
        assert_eq!(k.open("u", "f", "DB_PASSWORD", &sealed).unwrap(), "s3cr3t");
        assert_eq!(sealed_len(&sealed), 6);
        assert!(k.open("u", "f", "OTHER", &sealed).is_err());
        assert!(k.open("u", "g", "DB_PASSWORD", &sealed).is_err());
        assert!(k.open("v", "f", "DB_PASSWORD", &sealed).is_err());
        let other = SecretsKey::from_hex(K2).unwrap();
        assert!(other.open("u", "f", "DB_PASSWORD", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(k.open("u", "f", "DB_PASSWORD", &tampered).is_err());
        assert!(k.open("u", "f", "DB_PASSWORD", "v1:").is_err());
        assert!(k.open("u", "f", "DB_PASSWORD", "s3cr3t").is_err());
    }

    #[test]
    fn the_key_is_read_and_never_shown() {
        let env: Env = [(KEY_VAR.to_owned(), K1.to_owned())].into();
        let k = SecretsKey::from_env(&env).unwrap().unwrap();
        assert!(!format!("{k} {k:?}").contains("00112233"));
        assert!(SecretsKey::from_env(&Env::new()).unwrap().is_none());
        let bad: Env = [(KEY_VAR.to_owned(), "abcd".to_owned())].into();
        assert_eq!(SecretsKey::from_env(&bad).unwrap_err().key, KEY_VAR);
        assert_eq!(describe(None), "not set");
    }
}
