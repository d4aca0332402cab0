//! The local key file: named 256-bit root keys (so keys can rotate: new material gets a new id and
//! becomes `active`, old ids stay to open what they sealed). Purpose keys are derived with
//! HKDF-SHA256, so one root key never serves two purposes. Created with mode 0600 on first run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("unknown key id {0}")]
    UnknownKey(String),
    #[error("sealed value is malformed or was not sealed with this key and context")]
    Open,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    active: String,
    /// key id → base64 of 32 random bytes
    keys: BTreeMap<String, String>,
}

/// What a derived key is for. Each purpose gets its own HKDF output.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// Wrapping TOTP secrets at rest.
    MfaSecret,
    /// Signing audit checkpoints (Ed25519 seed).
    AuditCheckpoint,
    /// Signing consult join tokens (HMAC-SHA256), verifiable by every node with the key file.
    ConsultToken,
    /// Wrapping image data keys (the local key provider's key encryption keys).
    ImageKek,
    /// Signing short-lived image URLs (HMAC-SHA256).
    ImageUrl,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::MfaSecret => b"clinic/v1/mfa-secret",
            Purpose::AuditCheckpoint => b"clinic/v1/audit-checkpoint-ed25519",
            Purpose::ConsultToken => b"clinic/v1/consult-token-hmac",
            Purpose::ImageKek => b"clinic/v1/image-kek",
            Purpose::ImageUrl => b"clinic/v1/image-url-hmac",
        }
    }
}

/// The loaded key ring.
pub struct KeyRing {
    active: String,
    roots: BTreeMap<String, [u8; 32]>,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("ids", &self.roots.keys())
            .finish()
    }
}

struct Len32;
impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl KeyRing {
    /// Opens the key file, creating it (mode 0600, one fresh key) if it does not exist.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let ring = Self::generate();
            let file = KeyFile {
                version: 1,
                active: ring.active.clone(),
                keys: ring
                    .roots
                    .iter()
                    .map(|(id, k)| (id.clone(), B64.encode(k)))
                    .collect(),
            };
            let text = serde_json::to_string_pretty(&file).map_err(|e| err(e.to_string()))?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            return Ok(ring);
        }
        Self::load(path)
    }

    /// Opens an existing key file (refusing one others may read); never creates one.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            return Err(err("does not exist".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "mode {:o} lets others read it; chmod 600",
                    mode & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut roots = BTreeMap::new();
        for (id, b64) in file.keys {
            let bytes = B64.decode(b64).map_err(|e| err(format!("key {id}: {e}")))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| err(format!("key {id} is not 32 bytes")))?;
            roots.insert(id, key);
        }
        if !roots.contains_key(&file.active) {
            return Err(err(format!(
                "active key {} is not in the file",
                file.active
            )));
        }
        Ok(Self {
            active: file.active,
            roots,
            rng: SystemRandom::new(),
        })
    }

    /// A fresh in-memory ring with one random key (tests, and the first run).
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let mut key = [0u8; 32];
        rng.fill(&mut key).expect("system random source");
        let id = format!("k{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
        Self {
            active: id.clone(),
            roots: BTreeMap::from([(id, key)]),
            rng,
        }
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    fn derive(&self, key_id: &str, purpose: Purpose) -> Result<[u8; 32], KeyError> {
        let root = self
            .roots
            .get(key_id)
            .ok_or_else(|| KeyError::UnknownKey(key_id.to_string()))?;
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"clinic-keyring-v1");
        let prk = salt.extract(root);
        let info = [purpose.info()];
        let okm = prk.expand(&info, Len32).map_err(|_| KeyError::Open)?;
        let mut out = [0u8; 32];
        okm.fill(&mut out).map_err(|_| KeyError::Open)?;
        Ok(out)
    }

    /// The active key's subkey for `purpose`, for callers that hold key material themselves
    /// (the consult token signer).
    pub fn purpose_key(&self, purpose: Purpose) -> [u8; 32] {
        self.derive(&self.active, purpose)
            .expect("active key exists")
    }

    /// The `purpose` subkey of every key in the ring, by key id, and the active id: for
    /// wrapping with the active key while still unwrapping with rotated-out ones.
    pub fn purpose_keys(&self, purpose: Purpose) -> (String, BTreeMap<String, [u8; 32]>) {
        let keys = self
            .roots
            .keys()
            .map(|id| (id.clone(), self.derive(id, purpose).expect("key exists")))
            .collect();
        (self.active.clone(), keys)
    }

    /// Fills `buf` from the system's secure random source.
    pub fn random(&self, buf: &mut [u8]) {
        self.rng.fill(buf).expect("system random source");
    }

    /// AES-256-GCM with the active key's `purpose` subkey; `context` is bound as associated data.
    /// Output: `v1.<key id>.<base64(nonce ‖ ciphertext ‖ tag)>`.
    pub fn seal(&self, purpose: Purpose, context: &[u8], plaintext: &[u8]) -> String {
        let key = self
            .derive(&self.active, purpose)
            .expect("active key exists");
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte key"));
        let mut nonce = [0u8; NONCE_LEN];
        self.random(&mut nonce);
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut buf,
        )
        .expect("seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("v1.{}.{}", self.active, B64.encode(out))
    }

    /// Opens what [`KeyRing::seal`] produced, with any key id still in the ring.
    pub fn open(
        &self,
        purpose: Purpose,
        context: &[u8],
        sealed: &str,
    ) -> Result<Vec<u8>, KeyError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::Open);
        };
        let key = self.derive(id, purpose)?;
        let key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|_| KeyError::Open)?);
        let raw = B64.decode(body).map_err(|_| KeyError::Open)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(KeyError::Open);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Open)?;
        let mut buf = ct.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| KeyError::Open)?;
        Ok(plain.to_vec())
    }

    /// The Ed25519 key pair derived from root key `key_id` for signing audit checkpoints.
    fn checkpoint_keypair(&self, key_id: &str) -> Result<Ed25519KeyPair, KeyError> {
        let seed = self.derive(key_id, Purpose::AuditCheckpoint)?;
        Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::Open)
    }

    /// Signs `message` with the active checkpoint key: (key id, public key, signature).
    pub fn sign_checkpoint(&self, message: &[u8]) -> (String, Vec<u8>, Vec<u8>) {
        let pair = self
            .checkpoint_keypair(&self.active)
            .expect("active key exists");
        let sig = pair.sign(message);
        (
            self.active.clone(),
            pair.public_key().as_ref().to_vec(),
            sig.as_ref().to_vec(),
        )
    }

    /// Checks a checkpoint signature against the key the ring derives for `key_id` (not against
    /// a public key stored beside the checkpoint, which a forger could replace).
    pub fn verify_checkpoint(
        &self,
        key_id: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), KeyError> {
        let pair = self.checkpoint_keypair(key_id)?;
        UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref())
            .verify(message, signature)
            .map_err(|_| KeyError::Open)
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Constant-time equality for secrets.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Fold every byte: the time taken does not depend on where the first difference is.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_0600_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/keys.json");
        let ring = KeyRing::open_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let sealed = ring.seal(Purpose::MfaSecret, b"user-1", b"secret");
        let again = KeyRing::open_or_create(&path).unwrap();
        assert_eq!(
            again.open(Purpose::MfaSecret, b"user-1", &sealed).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        KeyRing::open_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = KeyRing::open_or_create(&path).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn seal_binds_context_and_purpose() {
        let ring = KeyRing::generate();
        let sealed = ring.seal(Purpose::MfaSecret, b"user-1", b"secret");
        assert!(ring.open(Purpose::MfaSecret, b"user-2", &sealed).is_err());
        assert!(
            ring.open(Purpose::AuditCheckpoint, b"user-1", &sealed)
                .is_err()
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            ring.open(
                Purpose::MfaSecret,
                b"user-1",
                std::str::from_utf8(&tampered).unwrap()
            )
            .is_err()
        );
        assert!(ring.open(Purpose::MfaSecret, b"user-1", "garbage").is_err());
    }

    #[test]
    fn checkpoint_signatures_verify_only_unchanged() {
        let ring = KeyRing::generate();
        let (id, _pk, sig) = ring.sign_checkpoint(b"clinic|5|abc");
        ring.verify_checkpoint(&id, b"clinic|5|abc", &sig).unwrap();
        assert!(ring.verify_checkpoint(&id, b"clinic|6|abc", &sig).is_err());
        let other = KeyRing::generate();
        assert!(other.verify_checkpoint(&id, b"clinic|5|abc", &sig).is_err());
    }
}
