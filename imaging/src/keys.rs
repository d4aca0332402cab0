//! Key providers for envelope encryption: a fresh 256-bit data key per object, wrapped by a key
//! encryption key that never leaves its home.
//!
//! - [`LocalKeys`]: key encryption keys from the local key file (named, so they rotate: the
//!   active one wraps, every one still unwraps). Data keys are wrapped with AES-256-GCM bound to
//!   the encryption context.
//! - [`KmsKeys`]: AWS KMS `GenerateDataKey` and `Decrypt` with the encryption context (tenant,
//!   object, variant), and a bounded, expiring cache of unwrapped data keys so that viewing a
//!   thumbnail many times does not call KMS each time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::ImagingError;
use crate::envelope::{self, Context, Header};

/// A data key: its plaintext (used once, for one object), and how to recover it.
pub struct DataKey {
    pub plaintext: [u8; 32],
    pub key_id: String,
    pub wrapped: Vec<u8>,
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.plaintext = [0; 32];
    }
}

/// Where data keys come from.
pub enum KeyProvider {
    Local(LocalKeys),
    Kms(KmsKeys),
}

impl KeyProvider {
    /// `local` or `kms`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyProvider::Local(_) => "local",
            KeyProvider::Kms(_) => "kms",
        }
    }

    pub async fn data_key(&self, ctx: &Context) -> Result<DataKey, ImagingError> {
        match self {
            KeyProvider::Local(k) => k.data_key(ctx),
            KeyProvider::Kms(k) => k.data_key(ctx).await,
        }
    }

    pub async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &Context,
    ) -> Result<[u8; 32], ImagingError> {
        match self {
            KeyProvider::Local(k) => k.unwrap(key_id, wrapped, ctx),
            KeyProvider::Kms(k) => k.unwrap(key_id, wrapped, ctx).await,
        }
    }

    /// Seals `plaintext` under a fresh data key.
    pub async fn seal(&self, ctx: &Context, plaintext: &[u8]) -> Result<Vec<u8>, ImagingError> {
        let dk = self.data_key(ctx).await?;
        let mut nonce_prefix = [0u8; 7];
        SystemRandom::new()
            .fill(&mut nonce_prefix)
            .map_err(|_| ImagingError::Keys("no random source".into()))?;
        let header = Header {
            key_id: dk.key_id.clone(),
            wrapped_key: dk.wrapped.clone(),
            nonce_prefix,
        };
        envelope::seal(&dk.plaintext, &header, ctx, plaintext)
    }

    /// Opens a sealed object.
    pub async fn open(&self, ctx: &Context, sealed: &[u8]) -> Result<Vec<u8>, ImagingError> {
        let (header, _) = Header::parse(sealed)?;
        let mut dek = self
            .unwrap(&header.key_id, &header.wrapped_key, ctx)
            .await?;
        let out = envelope::open(&dek, sealed, ctx);
        dek = [0; 32];
        let _ = dek;
        out
    }
}

fn random_key() -> Result<[u8; 32], ImagingError> {
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| ImagingError::Keys("no random source".into()))?;
    Ok(k)
}

fn wrap_aad(ctx: &Context) -> Vec<u8> {
    let mut a = b"clinic-image-dek-v1".to_vec();
    a.extend_from_slice(&ctx.canonical());
    a
}

/// Key encryption keys held locally (derived from the key file by the caller).
pub struct LocalKeys {
    active: String,
    keks: BTreeMap<String, [u8; 32]>,
}

impl LocalKeys {
    /// `keks`: key id → key encryption key; `active` wraps new data keys.
    pub fn new(active: &str, keks: BTreeMap<String, [u8; 32]>) -> Result<Self, ImagingError> {
        if !keks.contains_key(active) {
            return Err(ImagingError::Keys(format!(
                "active key {active} is missing"
            )));
        }
        Ok(Self {
            active: active.into(),
            keks,
        })
    }

    fn data_key(&self, ctx: &Context) -> Result<DataKey, ImagingError> {
        let plaintext = random_key()?;
        let kek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.keks[&self.active]).expect("32 bytes"),
        );
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ImagingError::Keys("no random source".into()))?;
        let mut buf = plaintext.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(ctx)),
            &mut buf,
        )
        .map_err(|_| ImagingError::Keys("wrap failed".into()))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&buf);
        Ok(DataKey {
            plaintext,
            key_id: self.active.clone(),
            wrapped,
        })
    }

    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &Context,
    ) -> Result<[u8; 32], ImagingError> {
        let kek = self.keks.get(key_id).ok_or(ImagingError::Decrypt)?;
        if wrapped.len() != NONCE_LEN + 32 + 16 {
            return Err(ImagingError::Decrypt);
        }
        let kek = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("32 bytes"));
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN])
            .map_err(|_| ImagingError::Decrypt)?;
        let mut buf = wrapped[NONCE_LEN..].to_vec();
        let plain = kek
            .open_in_place(nonce, Aad::from(wrap_aad(ctx)), &mut buf)
            .map_err(|_| ImagingError::Decrypt)?;
        plain.try_into().map_err(|_| ImagingError::Decrypt)
    }
}

/// How many unwrapped data keys the KMS provider keeps, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub entries: usize,
    pub ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            entries: 4096,
            ttl: Duration::from_secs(300),
        }
    }
}

/// A bounded, expiring map from (wrapped key, context) to the data key: oldest out first.
struct DekCache {
    limits: CacheLimits,
    map: HashMap<[u8; 32], ([u8; 32], Instant)>,
    order: VecDeque<[u8; 32]>,
}

impl DekCache {
    fn id(wrapped: &[u8], ctx: &Context) -> [u8; 32] {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(&(wrapped.len() as u32).to_be_bytes());
        h.update(wrapped);
        h.update(&ctx.canonical());
        h.finish().as_ref().try_into().expect("32 bytes")
    }

    fn get(&mut self, id: &[u8; 32], now: Instant) -> Option<[u8; 32]> {
        match self.map.get(id) {
            Some((k, at)) if now.duration_since(*at) < self.limits.ttl => Some(*k),
            Some(_) => {
                self.map.remove(id);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, id: [u8; 32], key: [u8; 32], now: Instant) {
        if self.limits.entries == 0 {
            return;
        }
        if self.map.insert(id, (key, now)).is_none() {
            self.order.push_back(id);
        }
        while self.map.len() > self.limits.entries || self.order.len() > 2 * self.limits.entries {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.map.len() > self.limits.entries {
                self.map.remove(&old);
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// AWS KMS as the key provider.
pub struct KmsKeys {
    client: aws_sdk_kms::Client,
    key_id: String,
    cache: Mutex<DekCache>,
    calls: std::sync::atomic::AtomicU64,
}

impl KmsKeys {
    pub fn new(client: aws_sdk_kms::Client, key_id: &str, cache: CacheLimits) -> Self {
        Self {
            client,
            key_id: key_id.into(),
            cache: Mutex::new(DekCache {
                limits: cache,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            calls: Default::default(),
        }
    }

    /// KMS calls made so far (GenerateDataKey and Decrypt).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Data keys held in the cache now.
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("cache lock").len()
    }

    fn context_map(ctx: &Context) -> HashMap<String, String> {
        HashMap::from([
            ("tenant".to_string(), ctx.tenant.clone()),
            ("object".to_string(), ctx.object.clone()),
            ("variant".to_string(), ctx.variant.clone()),
        ])
    }

    async fn data_key(&self, ctx: &Context) -> Result<DataKey, ImagingError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .set_encryption_context(Some(Self::context_map(ctx)))
            .send()
            .await
            .map_err(|e| {
                ImagingError::Keys(format!(
                    "GenerateDataKey: {}",
                    aws_sdk_kms::error::DisplayErrorContext(&e)
                ))
            })?;
        let plaintext: [u8; 32] = out
            .plaintext()
            .map(|b| b.as_ref())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ImagingError::Keys("GenerateDataKey returned no 32-byte key".into()))?;
        let wrapped = out
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| ImagingError::Keys("GenerateDataKey returned no ciphertext".into()))?;
        let key_id = out.key_id().unwrap_or(&self.key_id).to_string();
        self.cache.lock().expect("cache lock").put(
            DekCache::id(&wrapped, ctx),
            plaintext,
            Instant::now(),
        );
        Ok(DataKey {
            plaintext,
            key_id,
            wrapped,
        })
    }

    async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &Context,
    ) -> Result<[u8; 32], ImagingError> {
        let id = DekCache::id(wrapped, ctx);
        if let Some(k) = self
            .cache
            .lock()
            .expect("cache lock")
            .get(&id, Instant::now())
        {
            return Ok(k);
        }
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(Self::context_map(ctx)))
            .send()
            .await
            .map_err(|e| {
                let text = aws_sdk_kms::error::DisplayErrorContext(&e).to_string();
                if text.contains("InvalidCiphertext") || text.contains("IncorrectKey") {
                    ImagingError::Decrypt
                } else {
                    ImagingError::Keys(format!("Decrypt: {text}"))
                }
            })?;
        let key: [u8; 32] = out
            .plaintext()
            .map(|b| b.as_ref())
            .and_then(|b| b.try_into().ok())
            .ok_or(ImagingError::Decrypt)?;
        self.cache
            .lock()
            .expect("cache lock")
            .put(id, key, Instant::now());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> KeyProvider {
        KeyProvider::Local(
            LocalKeys::new(
                "k2",
                BTreeMap::from([("k1".to_string(), [1u8; 32]), ("k2".to_string(), [2u8; 32])]),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn local_keys_seal_and_open_with_context() {
        let keys = local();
        let ctx = Context::new("t", "o", "thumbnail");
        let sealed = keys.seal(&ctx, b"pixels").await.unwrap();
        assert_eq!(keys.open(&ctx, &sealed).await.unwrap(), b"pixels");
        assert!(
            keys.open(&Context::new("t", "o", "preview"), &sealed)
                .await
                .is_err()
        );
        // Each object gets its own data key: the wrapped keys differ.
        let again = keys.seal(&ctx, b"pixels").await.unwrap();
        let (h1, _) = Header::parse(&sealed).unwrap();
        let (h2, _) = Header::parse(&again).unwrap();
        assert_ne!(h1.wrapped_key, h2.wrapped_key);
        assert_eq!(h1.key_id, "k2");
    }

    #[tokio::test]
    async fn rotated_keys_still_open_old_objects() {
        let old = KeyProvider::Local(
            LocalKeys::new("k1", BTreeMap::from([("k1".to_string(), [1u8; 32])])).unwrap(),
        );
        let ctx = Context::new("t", "o", "original");
        let sealed = old.seal(&ctx, b"before rotation").await.unwrap();
        let rotated = local();
        assert_eq!(
            rotated.open(&ctx, &sealed).await.unwrap(),
            b"before rotation"
        );
        let without = KeyProvider::Local(
            LocalKeys::new("k2", BTreeMap::from([("k2".to_string(), [2u8; 32])])).unwrap(),
        );
        assert!(without.open(&ctx, &sealed).await.is_err());
    }

    #[test]
    fn dek_cache_is_bounded_and_expires() {
        let mut c = DekCache {
            limits: CacheLimits {
                entries: 3,
                ttl: Duration::from_secs(10),
            },
            map: HashMap::new(),
            order: VecDeque::new(),
        };
        let t0 = Instant::now();
        for i in 0..10u8 {
            c.put([i; 32], [i; 32], t0);
            assert!(c.len() <= 3);
        }
        assert_eq!(c.get(&[9; 32], t0), Some([9; 32]));
        assert_eq!(c.get(&[0; 32], t0), None, "the oldest went first");
        assert_eq!(
            c.get(&[9; 32], t0 + Duration::from_secs(11)),
            None,
            "expired"
        );
    }
}
