//! Ed25519 signing keys in the formats plugin authors and operators already
//! have.
//!
//! | file | formats read | format written by `capsule keygen` |
//! |------|--------------|-------------------------------------|
//! | public key (`.pub`) | wasmsign2 raw (`0x01` ‖ 32-byte key), PEM `PUBLIC KEY` (SPKI), OpenSSH `ssh-ed25519 …` | wasmsign2 raw |
//! | secret key (`.key`) | wasmsign2 raw (`0x81` ‖ 32-byte seed ‖ 32-byte public key), PEM `PRIVATE KEY` (PKCS#8) | wasmsign2 raw |
//!
//! A key's id is wasmsign2's default: the first 12 bytes of
//! HMAC-SHA-256(key = public key, message = `"key_id"`), shown as hex.
//!
//! Weak public keys (points of small order, such as the identity) are
//! refused in every format: a signature "by" such a key can be forged
//! without any secret, so trusting one would trust everything.

use std::fmt;
use std::path::Path;

use base64ct::{Base64, Encoding};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::input::{self, MAX_KEY_FILE_BYTES};

/// wasmsign2's type byte for an Ed25519 public key.
pub const PUBLIC_KEY_TYPE: u8 = 0x01;
/// wasmsign2's type byte for an Ed25519 secret key.
pub const SECRET_KEY_TYPE: u8 = 0x81;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a key in any supported format.
    #[error("{0}")]
    Format(String),
}

/// The 12-byte identifier of a public key (wasmsign2's default key id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 12]);

impl KeyId {
    /// The id as lowercase hex.
    pub fn to_hex(&self) -> String {
        super::hex(&self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// A public key that may verify plugin signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Reads a public key in any supported format (see the module docs).
    pub fn from_any(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        if bytes.len() == 33 && bytes[0] == PUBLIC_KEY_TYPE {
            let raw: [u8; 32] = bytes[1..].try_into().expect("length checked");
            return Self::from_raw(&raw);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| {
                KeyError::Format("not an Ed25519 public key: unknown binary format".into())
            })?
            .trim();
        if text.starts_with("-----BEGIN PUBLIC KEY-----") {
            let key = VerifyingKey::from_public_key_pem(text)
                .map_err(|err| KeyError::Format(format!("invalid PEM public key: {err}")))?;
            return Self::checked(key);
        }
        if let Some(rest) = text.strip_prefix("ssh-ed25519 ") {
            return Self::from_openssh(rest);
        }
        Err(KeyError::Format(
            "not an Ed25519 public key (expected wasmsign2 raw, PEM or OpenSSH ssh-ed25519)".into(),
        ))
    }

    /// Reads a public key file in any supported format. The file must be a
    /// regular file of at most [`MAX_KEY_FILE_BYTES`].
    pub fn from_file(path: &Path) -> Result<PublicKey, KeyError> {
        let bytes = read(path)?;
        Self::from_any(&bytes).map_err(|err| in_file(path, err))
    }

    fn from_raw(raw: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let key = VerifyingKey::from_bytes(raw)
            .map_err(|err| KeyError::Format(format!("invalid Ed25519 public key: {err}")))?;
        Self::checked(key)
    }

    /// Every decoded public key passes through here: a weak (small-order)
    /// key is refused.
    fn checked(key: VerifyingKey) -> Result<PublicKey, KeyError> {
        if key.is_weak() {
            return Err(KeyError::Format(
                "weak Ed25519 public key (a point of small order): signatures by it can be \
                 forged without the secret key, so it cannot be trusted"
                    .into(),
            ));
        }
        Ok(PublicKey { key })
    }

    fn from_openssh(rest: &str) -> Result<PublicKey, KeyError> {
        let blob = rest.split_whitespace().next().unwrap_or_default();
        let blob = Base64::decode_vec(blob)
            .map_err(|_| KeyError::Format("invalid base64 in OpenSSH public key".into()))?;
        // string "ssh-ed25519", then string key (each u32-BE length-prefixed).
        let mut reader = blob.as_slice();
        let mut field = || -> Option<Vec<u8>> {
            let len = u32::from_be_bytes(reader.get(..4)?.try_into().ok()?) as usize;
            let value = reader.get(4..4 + len)?.to_vec();
            reader = &reader[4 + len..];
            Some(value)
        };
        let (Some(kind), Some(key)) = (field(), field()) else {
            return Err(KeyError::Format("truncated OpenSSH public key".into()));
        };
        if kind != b"ssh-ed25519" || key.len() != 32 {
            return Err(KeyError::Format("not an ssh-ed25519 key".into()));
        }
        Self::from_raw(key.as_slice().try_into().expect("length checked"))
    }

    /// The wasmsign2 raw encoding: `0x01` followed by the 32-byte key.
    pub fn to_raw(&self) -> Vec<u8> {
        let mut out = vec![PUBLIC_KEY_TYPE];
        out.extend_from_slice(self.key.as_bytes());
        out
    }

    /// The key as a PEM `PUBLIC KEY` (SPKI) document.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(Default::default())
            .expect("an Ed25519 key always encodes as SPKI")
    }

    /// This key's id.
    pub fn key_id(&self) -> KeyId {
        // wasmsign2 computes `HMAC::mac(b"key_id", pk)`, whose arguments are
        // (message, key): the public key is the HMAC key.
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(self.key.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"key_id");
        let tag = mac.finalize().into_bytes();
        KeyId(tag[..12].try_into().expect("SHA-256 is 32 bytes"))
    }

    /// Whether `signature` is this key's signature of `message`. Verified
    /// strictly: a signature whose `R` is a point of small order is refused,
    /// which closes the forgeries and malleability the lax equation allows.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        #[cfg(test)]
        tests::VERIFICATIONS.with(|count| count.set(count.get() + 1));
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(message, &signature).is_ok()
    }
}

/// A secret key that signs plugins.
pub struct SecretKey {
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public key id {})", self.public_key().key_id())
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|err| KeyError::Format(format!("no randomness for a new key: {err}")))?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a secret key: wasmsign2 raw or PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_any(bytes: &[u8]) -> Result<SecretKey, KeyError> {
        if bytes.len() == 65 && bytes[0] == SECRET_KEY_TYPE {
            let seed: [u8; 32] = bytes[1..33].try_into().expect("length checked");
            let key = SigningKey::from_bytes(&seed);
            if key.verifying_key().as_bytes() != &bytes[33..] {
                return Err(KeyError::Format(
                    "corrupt secret key: its public half does not match".into(),
                ));
            }
            return Ok(SecretKey { key });
        }
        let text = std::str::from_utf8(bytes).unwrap_or_default().trim();
        if text.starts_with("-----BEGIN PRIVATE KEY-----") {
            let key = SigningKey::from_pkcs8_pem(text)
                .map_err(|err| KeyError::Format(format!("invalid PEM secret key: {err}")))?;
            return Ok(SecretKey { key });
        }
        Err(KeyError::Format(
            "not an Ed25519 secret key (expected wasmsign2 raw or PEM PKCS#8)".into(),
        ))
    }

    /// Reads a secret key file. The file must be a regular file of at most
    /// [`MAX_KEY_FILE_BYTES`].
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyError> {
        let bytes = read(path)?;
        Self::from_any(&bytes).map_err(|err| in_file(path, err))
    }

    /// The wasmsign2 raw encoding: `0x81`, the 32-byte seed, the 32-byte
    /// public key.
    pub fn to_raw(&self) -> Vec<u8> {
        let mut out = vec![SECRET_KEY_TYPE];
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.key.verifying_key().as_bytes());
        out
    }

    /// The key as a PEM `PRIVATE KEY` (PKCS#8) document.
    pub fn to_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(Default::default())
            .expect("an Ed25519 key always encodes as PKCS#8")
            .to_string()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    input::read_file(path, MAX_KEY_FILE_BYTES).map_err(|err| KeyError::Io {
        path: err.path().display().to_string(),
        source: err.into_io_error(),
    })
}

fn in_file(path: &Path, err: KeyError) -> KeyError {
    match err {
        KeyError::Format(msg) => KeyError::Format(format!("{}: {msg}", path.display())),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Signature verifications attempted on this thread, so tests can
        /// prove that some signatures are never even looked at.
        pub(crate) static VERIFICATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The encodings of small-order points: the identity `(0, 1)`, the
    /// point of order 2 `(0, -1)` and one of order 4 `(√-1, 0)`.
    const WEAK_KEYS: [[u8; 32]; 3] = {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        [identity, minus_one, [0u8; 32]]
    };

    #[test]
    fn weak_keys_are_refused_in_every_format() {
        for raw in WEAK_KEYS {
            let decoded = VerifyingKey::from_bytes(&raw).expect("a valid curve point");
            assert!(decoded.is_weak());
            let mut wasmsign2 = vec![PUBLIC_KEY_TYPE];
            wasmsign2.extend_from_slice(&raw);
            let pem = decoded.to_public_key_pem(Default::default()).unwrap();
            let mut blob = Vec::new();
            for field in [&b"ssh-ed25519"[..], &raw[..]] {
                blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
                blob.extend_from_slice(field);
            }
            let openssh = format!("ssh-ed25519 {}", Base64::encode_string(&blob));
            for bytes in [&wasmsign2[..], pem.as_bytes(), openssh.as_bytes()] {
                let err = PublicKey::from_any(bytes).unwrap_err();
                assert!(
                    matches!(&err, KeyError::Format(msg) if msg.contains("weak")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn a_weak_key_file_is_refused_naming_the_file() {
        let path = std::env::temp_dir().join(format!("capsule-weak-{}.pub", std::process::id()));
        let mut raw = vec![PUBLIC_KEY_TYPE];
        raw.extend_from_slice(&WEAK_KEYS[0]);
        std::fs::write(&path, raw).unwrap();
        let err = PublicKey::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("weak"), "{err}");
        assert!(err.to_string().contains("capsule-weak"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_read_safely() {
        let err = PublicKey::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, KeyError::Io { .. }), "{err}");
        assert!(err.to_string().contains("character device"), "{err}");
        let path = std::env::temp_dir().join(format!("capsule-big-{}.key", std::process::id()));
        std::fs::write(&path, vec![b' '; MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        let err = SecretKey::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn verification_is_strict() {
        // With a weak key, the identity R and s = 0 satisfy the lax
        // equation [s]B = R + [k]A for every message: `verify` accepts
        // this forgery, `verify_strict` does not.
        let key = PublicKey {
            key: VerifyingKey::from_bytes(&WEAK_KEYS[0]).unwrap(),
        };
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let signature = ed25519_dalek::Signature::from_bytes(&forged);
        use ed25519_dalek::Verifier;
        assert!(key.key.verify(b"anything", &signature).is_ok());
        assert!(!key.verifies(b"anything", &forged));
    }

    #[test]
    fn raw_and_pem_round_trip() {
        let secret = SecretKey::generate().unwrap();
        let public = secret.public_key();
        let from_raw = SecretKey::from_any(&secret.to_raw()).unwrap();
        assert_eq!(from_raw.public_key(), public);
        let from_pem = SecretKey::from_any(secret.to_pem().as_bytes()).unwrap();
        assert_eq!(from_pem.public_key(), public);
        assert_eq!(PublicKey::from_any(&public.to_raw()).unwrap(), public);
        assert_eq!(
            PublicKey::from_any(public.to_pem().as_bytes()).unwrap(),
            public
        );
    }

    #[test]
    fn openssh_public_keys_are_read() {
        let secret = SecretKey::generate().unwrap();
        let public = secret.public_key();
        let mut blob = Vec::new();
        for field in [&b"ssh-ed25519"[..], &public.to_raw()[1..]] {
            blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
            blob.extend_from_slice(field);
        }
        let line = format!(
            "ssh-ed25519 {} someone@example",
            Base64::encode_string(&blob)
        );
        assert_eq!(PublicKey::from_any(line.as_bytes()).unwrap(), public);
    }

    #[test]
    fn corrupt_keys_are_refused() {
        let secret = SecretKey::generate().unwrap();
        let mut raw = secret.to_raw();
        raw[40] ^= 1;
        assert!(SecretKey::from_any(&raw).is_err());
        assert!(PublicKey::from_any(b"not a key").is_err());
        assert!(PublicKey::from_any(&[]).is_err());
    }

    #[test]
    fn signatures_verify_only_with_the_matching_key() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let sig = a.sign(b"message");
        assert!(a.public_key().verifies(b"message", &sig));
        assert!(!a.public_key().verifies(b"other", &sig));
        assert!(!b.public_key().verifies(b"message", &sig));
        assert_ne!(a.public_key().key_id(), b.public_key().key_id());
    }
}
