//! Where sealed objects live: the local filesystem (default) or S3. Stores only ever see sealed
//! bytes and random keys.
//!
//! - [`LocalStore`]: `root/<tenant>/<tier>/<2 hex>/<key>`. A write goes to a temporary file in
//!   the same directory, is fsynced, renamed into place, and the directory fsynced, so a crash
//!   leaves either the whole object or no object (temporary files are swept at start). Tiers are
//!   directories, so tiering runs the same logic without S3.
//! - [`S3Store`]: `<prefix><tenant>/<key>` in one bucket, the tier as the storage class
//!   (STANDARD, STANDARD_IA, GLACIER_IR), optional SSE-KMS on top of our own encryption. A
//!   PutObject is atomic: no partial object is ever visible.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};

use crate::ImagingError;

/// A storage tier. Originals move hot → warm → cold with age; derivatives stay hot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Hot, Tier::Warm, Tier::Cold];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The S3 storage class of this tier.
    pub fn storage_class(self) -> aws_sdk_s3::types::StorageClass {
        use aws_sdk_s3::types::StorageClass;
        match self {
            Tier::Hot => StorageClass::Standard,
            Tier::Warm => StorageClass::StandardIa,
            Tier::Cold => StorageClass::GlacierIr,
        }
    }
}

/// A random object key: 128 bits as 32 lowercase hex digits. Nothing else is accepted, so a key
/// can never name a path outside the store or carry patient information.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        SystemRandom::new()
            .fill(&mut b)
            .expect("system random source");
        Self(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
        .then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tenant's directory or prefix name: the tenant's opaque id, restricted to safe characters.
fn tenant_segment(tenant: &str) -> Result<&str, ImagingError> {
    if tenant.is_empty()
        || tenant.len() > 64
        || !tenant
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(ImagingError::Store("invalid tenant id".into()));
    }
    Ok(tenant)
}

/// One of the stores.
pub enum BlobStore {
    Local(LocalStore),
    S3(S3Store),
}

impl BlobStore {
    pub fn kind(&self) -> &'static str {
        match self {
            BlobStore::Local(_) => "local",
            BlobStore::S3(_) => "s3",
        }
    }

    /// Stores a sealed object whole, or not at all.
    pub async fn put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        sealed: Vec<u8>,
        tier: Tier,
    ) -> Result<(), ImagingError> {
        match self {
            BlobStore::Local(s) => s.put(tenant, key, sealed, tier).await,
            BlobStore::S3(s) => s.put(tenant, key, sealed, tier).await,
        }
    }

    /// Reads a sealed object (`tier` is where it is expected; the local store looks in the
    /// others too, so an interrupted tier move never loses an object).
    pub async fn get(
        &self,
        tenant: &str,
        key: &ObjectKey,
        tier: Tier,
    ) -> Result<Vec<u8>, ImagingError> {
        match self {
            BlobStore::Local(s) => s.get(tenant, key, tier).await,
            BlobStore::S3(s) => s.get(tenant, key).await,
        }
    }

    pub async fn delete(&self, tenant: &str, key: &ObjectKey) -> Result<(), ImagingError> {
        match self {
            BlobStore::Local(s) => s.delete(tenant, key).await,
            BlobStore::S3(s) => s.delete(tenant, key).await,
        }
    }

    /// Moves an object to another tier; moving to where it already is succeeds.
    pub async fn set_tier(
        &self,
        tenant: &str,
        key: &ObjectKey,
        from: Tier,
        to: Tier,
    ) -> Result<(), ImagingError> {
        match self {
            BlobStore::Local(s) => s.set_tier(tenant, key, from, to).await,
            BlobStore::S3(s) => s.set_tier(tenant, key, to).await,
        }
    }

    /// The tier the store itself reports for an object.
    pub async fn tier_of(&self, tenant: &str, key: &ObjectKey) -> Result<Tier, ImagingError> {
        match self {
            BlobStore::Local(s) => s.tier_of(tenant, key).await,
            BlobStore::S3(s) => s.tier_of(tenant, key).await,
        }
    }

    /// Every object key of a tenant.
    pub async fn list(&self, tenant: &str) -> Result<Vec<ObjectKey>, ImagingError> {
        Ok(self
            .list_modified(tenant)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Every object key of a tenant with when it was last written (for the orphan sweep).
    pub async fn list_modified(
        &self,
        tenant: &str,
    ) -> Result<Vec<(ObjectKey, SystemTime)>, ImagingError> {
        match self {
            BlobStore::Local(s) => s.list(tenant).await,
            BlobStore::S3(s) => s.list(tenant).await,
        }
    }
}

fn io(e: std::io::Error) -> ImagingError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ImagingError::NotFound
    } else {
        ImagingError::Store(e.kind().to_string())
    }
}

/// Objects on the local filesystem.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating) the store at `root` and removes temporary files a crash left behind.
    pub fn open(root: &Path) -> Result<Self, ImagingError> {
        std::fs::create_dir_all(root).map_err(io)?;
        let store = Self {
            root: root.to_path_buf(),
        };
        store.sweep_temporary()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, tenant: &str, key: &ObjectKey, tier: Tier) -> Result<PathBuf, ImagingError> {
        Ok(self
            .root
            .join(tenant_segment(tenant)?)
            .join(tier.as_str())
            .join(&key.as_str()[..2]))
    }

    fn sweep_temporary(&self) -> Result<(), ImagingError> {
        fn walk(dir: &Path, removed: &mut usize) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, removed);
                } else if p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".tmp"))
                    && std::fs::remove_file(&p).is_ok()
                {
                    *removed += 1;
                }
            }
        }
        let mut removed = 0;
        walk(&self.root, &mut removed);
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed temporary files left by an interrupted write"
            );
        }
        Ok(())
    }

    async fn put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        sealed: Vec<u8>,
        tier: Tier,
    ) -> Result<(), ImagingError> {
        let dir = self.dir(tenant, key, tier)?;
        let key = key.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, key.as_str(), &sealed))
            .await
            .map_err(|_| ImagingError::Store("write task failed".into()))?
    }

    async fn get(
        &self,
        tenant: &str,
        key: &ObjectKey,
        tier: Tier,
    ) -> Result<Vec<u8>, ImagingError> {
        let mut order = vec![tier];
        order.extend(Tier::ALL.into_iter().filter(|t| *t != tier));
        for t in order {
            let path = self.dir(tenant, key, t)?.join(key.as_str());
            match tokio::fs::read(&path).await {
                Ok(b) => return Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            }
        }
        Err(ImagingError::NotFound)
    }

    async fn delete(&self, tenant: &str, key: &ObjectKey) -> Result<(), ImagingError> {
        for t in Tier::ALL {
            let dir = self.dir(tenant, key, t)?;
            match tokio::fs::remove_file(dir.join(key.as_str())).await {
                Ok(()) => {
                    let _ = sync_dir(&dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }

    async fn set_tier(
        &self,
        tenant: &str,
        key: &ObjectKey,
        from: Tier,
        to: Tier,
    ) -> Result<(), ImagingError> {
        if from == to {
            return Ok(());
        }
        let (src_dir, dst_dir) = (self.dir(tenant, key, from)?, self.dir(tenant, key, to)?);
        let name = key.as_str().to_string();
        tokio::task::spawn_blocking(move || {
            let (src, dst) = (src_dir.join(&name), dst_dir.join(&name));
            if !src.exists() && dst.exists() {
                return Ok(());
            }
            std::fs::create_dir_all(&dst_dir).map_err(io)?;
            std::fs::rename(&src, &dst).map_err(io)?;
            sync_dir(&dst_dir).map_err(io)?;
            sync_dir(&src_dir).map_err(io)
        })
        .await
        .map_err(|_| ImagingError::Store("tier task failed".into()))?
    }

    async fn tier_of(&self, tenant: &str, key: &ObjectKey) -> Result<Tier, ImagingError> {
        for t in Tier::ALL {
            if tokio::fs::try_exists(self.dir(tenant, key, t)?.join(key.as_str()))
                .await
                .map_err(io)?
            {
                return Ok(t);
            }
        }
        Err(ImagingError::NotFound)
    }

    async fn list(&self, tenant: &str) -> Result<Vec<(ObjectKey, SystemTime)>, ImagingError> {
        let base = self.root.join(tenant_segment(tenant)?);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for t in Tier::ALL {
                let Ok(shards) = std::fs::read_dir(base.join(t.as_str())) else {
                    continue;
                };
                for shard in shards.flatten() {
                    let Ok(files) = std::fs::read_dir(shard.path()) else {
                        continue;
                    };
                    for f in files.flatten() {
                        if let Some(k) = f.file_name().to_str().and_then(ObjectKey::parse) {
                            let modified = f
                                .metadata()
                                .and_then(|m| m.modified())
                                .unwrap_or(SystemTime::UNIX_EPOCH);
                            out.push((k, modified));
                        }
                    }
                }
            }
            out
        })
        .await
        .map_err(|_| ImagingError::Store("list task failed".into()))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Temporary file in the same directory → write → fsync → rename → fsync the directory.
fn write_durably(dir: &Path, name: &str, data: &[u8]) -> Result<(), ImagingError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| ImagingError::Store("no random source".into()))?;
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Objects in an S3 bucket.
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    sse_kms_key: Option<String>,
    /// Whether the server accepts storage classes (some S3-compatible servers refuse them).
    storage_classes: bool,
}

impl S3Store {
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        sse_kms_key: Option<String>,
        storage_classes: bool,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
            sse_kms_key,
            storage_classes,
        }
    }

    fn key(&self, tenant: &str, key: &ObjectKey) -> Result<String, ImagingError> {
        Ok(format!(
            "{}{}/{}",
            self.prefix,
            tenant_segment(tenant)?,
            key.as_str()
        ))
    }

    fn err<E: std::error::Error + 'static>(
        op: &str,
        e: aws_sdk_s3::error::SdkError<E>,
    ) -> ImagingError {
        if let aws_sdk_s3::error::SdkError::ServiceError(s) = &e
            && s.raw().status().as_u16() == 404
        {
            return ImagingError::NotFound;
        }
        ImagingError::Store(format!(
            "{op}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        ))
    }

    async fn put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        sealed: Vec<u8>,
        tier: Tier,
    ) -> Result<(), ImagingError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(tenant, key)?)
            .content_type("application/octet-stream")
            .body(aws_sdk_s3::primitives::ByteStream::from(sealed));
        if self.storage_classes && tier != Tier::Hot {
            req = req.storage_class(tier.storage_class());
        }
        if let Some(k) = &self.sse_kms_key {
            req = req
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        req.send().await.map_err(|e| Self::err("PutObject", e))?;
        Ok(())
    }

    async fn get(&self, tenant: &str, key: &ObjectKey) -> Result<Vec<u8>, ImagingError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(tenant, key)?)
            .send()
            .await
            .map_err(|e| Self::err("GetObject", e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ImagingError::Store(format!("GetObject body: {e}")))?;
        Ok(body.into_bytes().to_vec())
    }

    async fn delete(&self, tenant: &str, key: &ObjectKey) -> Result<(), ImagingError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(tenant, key)?)
            .send()
            .await
            .map_err(|e| Self::err("DeleteObject", e))?;
        Ok(())
    }

    async fn set_tier(&self, tenant: &str, key: &ObjectKey, to: Tier) -> Result<(), ImagingError> {
        if !self.storage_classes {
            return Err(ImagingError::Store(
                "this S3 server does not support storage classes; tiering is off".into(),
            ));
        }
        if self.tier_of(tenant, key).await? == to {
            return Ok(());
        }
        let k = self.key(tenant, key)?;
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&k)
            .copy_source(format!("{}/{}", self.bucket, k))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Copy)
            .storage_class(to.storage_class());
        if let Some(kms) = &self.sse_kms_key {
            req = req
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        req.send().await.map_err(|e| Self::err("CopyObject", e))?;
        Ok(())
    }

    async fn tier_of(&self, tenant: &str, key: &ObjectKey) -> Result<Tier, ImagingError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(tenant, key)?)
            .send()
            .await
            .map_err(|e| Self::err("HeadObject", e))?;
        use aws_sdk_s3::types::StorageClass as C;
        Ok(match out.storage_class() {
            None | Some(C::Standard) => Tier::Hot,
            Some(C::StandardIa) => Tier::Warm,
            Some(C::GlacierIr) => Tier::Cold,
            Some(other) => {
                return Err(ImagingError::Store(format!(
                    "unexpected storage class {other}"
                )));
            }
        })
    }

    async fn list(&self, tenant: &str) -> Result<Vec<(ObjectKey, SystemTime)>, ImagingError> {
        let prefix = format!("{}{}/", self.prefix, tenant_segment(tenant)?);
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| Self::err("ListObjectsV2", e))?;
            for o in page.contents() {
                if let Some(k) = o
                    .key()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(ObjectKey::parse)
                {
                    let modified = o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((k, modified));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_writes_whole_objects_and_moves_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::Local(LocalStore::open(dir.path()).unwrap());
        let key = ObjectKey::random();
        store
            .put("t1", &key, b"sealed".to_vec(), Tier::Hot)
            .await
            .unwrap();
        assert_eq!(store.get("t1", &key, Tier::Hot).await.unwrap(), b"sealed");
        assert_eq!(store.tier_of("t1", &key).await.unwrap(), Tier::Hot);
        store
            .set_tier("t1", &key, Tier::Hot, Tier::Warm)
            .await
            .unwrap();
        assert_eq!(store.tier_of("t1", &key).await.unwrap(), Tier::Warm);
        // A reader that still thinks it is hot finds it; a repeated move is a no-op.
        assert_eq!(store.get("t1", &key, Tier::Hot).await.unwrap(), b"sealed");
        store
            .set_tier("t1", &key, Tier::Hot, Tier::Warm)
            .await
            .unwrap();
        assert_eq!(store.list("t1").await.unwrap(), vec![key.clone()]);
        assert!(
            store.list("t2").await.unwrap().is_empty(),
            "tenants are separate trees"
        );
        store.delete("t1", &key).await.unwrap();
        assert!(matches!(
            store.get("t1", &key, Tier::Hot).await,
            Err(ImagingError::NotFound)
        ));
    }

    #[tokio::test]
    async fn a_crash_mid_write_leaves_no_visible_object() {
        let dir = tempfile::tempdir().unwrap();
        let key = ObjectKey::random();
        // What a crash between write and rename leaves: a temporary file only.
        let shard = dir.path().join("t1").join("hot").join(&key.as_str()[..2]);
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(
            shard.join(format!(".{}.0011223344556677.tmp", key.as_str())),
            b"half",
        )
        .unwrap();
        let store = BlobStore::Local(LocalStore::open(dir.path()).unwrap());
        assert!(matches!(
            store.get("t1", &key, Tier::Hot).await,
            Err(ImagingError::NotFound)
        ));
        assert!(store.list("t1").await.unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(&shard).unwrap().count(),
            0,
            "the sweep removed the temporary file"
        );
    }

    #[test]
    fn keys_and_tenants_cannot_escape_the_store() {
        assert!(ObjectKey::parse("../../etc/passwd").is_none());
        assert!(ObjectKey::parse("0123456789abcdef0123456789ABCDEF").is_none());
        assert!(ObjectKey::parse(ObjectKey::random().as_str()).is_some());
        assert!(tenant_segment("../x").is_err());
        assert!(tenant_segment("c_01").is_ok());
    }
}
