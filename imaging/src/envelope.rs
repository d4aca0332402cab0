//! Envelope encryption of stored objects: AES-256-GCM in 64 KiB segments under a fresh data key
//! per object.
//!
//! Layout: a header, then segments. Each segment is up to [`SEGMENT`] bytes of ciphertext plus a
//! 16-byte tag; the nonce is the header's 7-byte prefix, a 32-bit big-endian segment counter and
//! a last-segment flag byte (the STREAM construction), so segments cannot be reordered, dropped,
//! or the stream truncated or extended without failing. Every segment's associated data is a
//! SHA-256 over the whole header and the encryption context (tenant, object, variant): changing
//! the wrapped key, the key id or the nonce prefix, or opening under another context, fails.
//!
//! Header: `CIE1` | version 1 | log2 segment size (16) | key id length (1 byte) | key id |
//! wrapped key length (2 bytes, BE) | wrapped key | nonce prefix (7 bytes).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::ImagingError;

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
const TAG: usize = 16;
const MAGIC: &[u8; 4] = b"CIE1";
const VERSION: u8 = 1;
const SEGMENT_LOG2: u8 = 16;

/// What an object is, bound into its encryption (and into KMS's encryption context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub tenant: String,
    pub object: String,
    pub variant: String,
}

impl Context {
    pub fn new(tenant: &str, object: &str, variant: &str) -> Self {
        Self {
            tenant: tenant.into(),
            object: object.into(),
            variant: variant.into(),
        }
    }

    /// A canonical, unambiguous encoding (length-prefixed fields).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in [&self.tenant, &self.object, &self.variant] {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f.as_bytes());
        }
        out
    }
}

/// The parsed header of a sealed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub nonce_prefix: [u8; 7],
}

impl Header {
    fn encode(&self) -> Result<Vec<u8>, ImagingError> {
        if self.key_id.len() > 255 || self.wrapped_key.len() > u16::MAX as usize {
            return Err(ImagingError::Keys("key id or wrapped key too long".into()));
        }
        let mut out = Vec::with_capacity(16 + self.key_id.len() + self.wrapped_key.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(SEGMENT_LOG2);
        out.push(self.key_id.len() as u8);
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&(self.wrapped_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(&self.nonce_prefix);
        Ok(out)
    }

    /// Parses the header at the start of `sealed`; returns it and its length.
    pub fn parse(sealed: &[u8]) -> Result<(Header, usize), ImagingError> {
        let bad = || ImagingError::Decrypt;
        if sealed.len() < 7
            || &sealed[..4] != MAGIC
            || sealed[4] != VERSION
            || sealed[5] != SEGMENT_LOG2
        {
            return Err(bad());
        }
        let mut i = 6;
        let id_len = sealed[i] as usize;
        i += 1;
        let key_id = sealed.get(i..i + id_len).ok_or_else(bad)?;
        let key_id = std::str::from_utf8(key_id).map_err(|_| bad())?.to_string();
        i += id_len;
        let wl = sealed.get(i..i + 2).ok_or_else(bad)?;
        let wl = u16::from_be_bytes([wl[0], wl[1]]) as usize;
        i += 2;
        let wrapped_key = sealed.get(i..i + wl).ok_or_else(bad)?.to_vec();
        i += wl;
        let prefix = sealed.get(i..i + 7).ok_or_else(bad)?;
        i += 7;
        Ok((
            Header {
                key_id,
                wrapped_key,
                nonce_prefix: prefix.try_into().expect("7 bytes"),
            },
            i,
        ))
    }
}

fn aad(header: &[u8], ctx: &Context) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(b"clinic-image-envelope-v1");
    h.update(&(header.len() as u32).to_be_bytes());
    h.update(header);
    h.update(&ctx.canonical());
    h.finish().as_ref().try_into().expect("32 bytes")
}

fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn key(dek: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, dek).expect("32-byte key"))
}

/// Seals `plaintext` under the data key `dek` (whose wrapped form and key id go in `header`).
/// The nonce prefix must be fresh random bytes; the data key must never seal anything else.
pub fn seal(
    dek: &[u8; 32],
    header: &Header,
    ctx: &Context,
    plaintext: &[u8],
) -> Result<Vec<u8>, ImagingError> {
    let head = header.encode()?;
    let aad = aad(&head, ctx);
    let k = key(dek);
    let segments = plaintext.len().div_ceil(SEGMENT).max(1);
    if segments > u32::MAX as usize {
        return Err(ImagingError::Keys("object too large".into()));
    }
    let mut out = Vec::with_capacity(head.len() + plaintext.len() + segments * TAG);
    out.extend_from_slice(&head);
    for s in 0..segments {
        let chunk = &plaintext
            [(s * SEGMENT).min(plaintext.len())..((s + 1) * SEGMENT).min(plaintext.len())];
        let start = out.len();
        out.extend_from_slice(chunk);
        let tag = k
            .seal_in_place_separate_tag(
                nonce(&header.nonce_prefix, s as u32, s + 1 == segments),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| ImagingError::Decrypt)?;
        out.extend_from_slice(tag.as_ref());
    }
    Ok(out)
}

/// Opens a sealed object, segment by segment, with the data key its header's wrapped key
/// unwraps to. Any change to the header, a segment, their order or the length fails.
pub struct Opener {
    key: LessSafeKey,
    aad: [u8; 32],
    prefix: [u8; 7],
}

impl Opener {
    pub fn new(
        dek: &[u8; 32],
        sealed: &[u8],
        ctx: &Context,
    ) -> Result<(Opener, usize), ImagingError> {
        let (header, len) = Header::parse(sealed)?;
        Ok((
            Opener {
                key: key(dek),
                aad: aad(&sealed[..len], ctx),
                prefix: header.nonce_prefix,
            },
            len,
        ))
    }

    /// Opens segment `index` (with its tag) in place; returns the plaintext length.
    pub fn open_segment(
        &self,
        index: u32,
        last: bool,
        segment: &mut [u8],
    ) -> Result<usize, ImagingError> {
        let plain = self
            .key
            .open_in_place(
                nonce(&self.prefix, index, last),
                Aad::from(self.aad),
                segment,
            )
            .map_err(|_| ImagingError::Decrypt)?;
        Ok(plain.len())
    }
}

/// Opens a whole sealed object in memory.
pub fn open(dek: &[u8; 32], sealed: &[u8], ctx: &Context) -> Result<Vec<u8>, ImagingError> {
    let (opener, start) = Opener::new(dek, sealed, ctx)?;
    let body = &sealed[start..];
    if body.len() < TAG {
        return Err(ImagingError::Decrypt);
    }
    let segments = body.len().div_ceil(SEGMENT + TAG);
    let mut out = Vec::with_capacity(body.len());
    for s in 0..segments {
        let mut seg =
            body[s * (SEGMENT + TAG)..((s + 1) * (SEGMENT + TAG)).min(body.len())].to_vec();
        if seg.len() < TAG {
            return Err(ImagingError::Decrypt);
        }
        let n = opener.open_segment(s as u32, s + 1 == segments, &mut seg)?;
        out.extend_from_slice(&seg[..n]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            key_id: "k1".into(),
            wrapped_key: vec![7; 60],
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let dek = [9u8; 32];
        let ctx = Context::new("t1", "img1", "original");
        for n in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            3 * SEGMENT + 17,
        ] {
            let p = data(n);
            let s = seal(&dek, &header(), &ctx, &p).unwrap();
            assert_eq!(open(&dek, &s, &ctx).unwrap(), p, "{n} bytes");
        }
    }

    #[test]
    fn any_change_fails() {
        let dek = [9u8; 32];
        let ctx = Context::new("t1", "img1", "original");
        let p = data(3 * SEGMENT + 100);
        let sealed = seal(&dek, &header(), &ctx, &p).unwrap();
        let (_, hl) = Header::parse(&sealed).unwrap();
        // A flipped bit anywhere (header, ciphertext, tags).
        for pos in (0..sealed.len())
            .step_by(997)
            .chain([4, 7, hl - 1, hl, sealed.len() - 1])
        {
            let mut t = sealed.clone();
            t[pos] ^= 0x10;
            assert!(open(&dek, &t, &ctx).is_err(), "bit flip at {pos}");
        }
        // Two segments swapped.
        let seg = SEGMENT + TAG;
        let mut swapped = sealed.clone();
        let (a, b) = (hl, hl + seg);
        let first = sealed[a..a + seg].to_vec();
        swapped.copy_within(b..b + seg, a);
        swapped[b..b + seg].copy_from_slice(&first);
        assert!(open(&dek, &swapped, &ctx).is_err(), "swapped segments");
        // Truncated: at a segment boundary (the last-segment flag catches it) and mid-segment.
        assert!(
            open(&dek, &sealed[..hl + 2 * seg], &ctx).is_err(),
            "dropped tail segments"
        );
        assert!(
            open(&dek, &sealed[..sealed.len() - 5], &ctx).is_err(),
            "cut mid-segment"
        );
        assert!(open(&dek, &sealed[..hl], &ctx).is_err(), "header only");
        // Extended.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert!(open(&dek, &longer, &ctx).is_err(), "extra bytes");
        // Wrong context, wrong key.
        for other in [
            Context::new("t2", "img1", "original"),
            Context::new("t1", "img2", "original"),
            Context::new("t1", "img1", "preview"),
        ] {
            assert!(open(&dek, &sealed, &other).is_err(), "{other:?}");
        }
        assert!(open(&[8u8; 32], &sealed, &ctx).is_err(), "wrong key");
        // The header's key id and wrapped key are authenticated too.
        let mut h = header();
        h.key_id = "k2".into();
        let resealed_header = seal(&dek, &h, &ctx, &p).unwrap();
        let (_, hl2) = Header::parse(&resealed_header).unwrap();
        let mut spliced = sealed[..hl].to_vec();
        spliced.extend_from_slice(&resealed_header[hl2..]);
        assert!(
            open(&dek, &spliced, &ctx).is_err(),
            "body under another header"
        );
        assert!(open(&dek, &sealed, &ctx).is_ok());
    }

    #[test]
    fn same_plaintext_seals_differently_under_fresh_prefixes() {
        let dek = [9u8; 32];
        let ctx = Context::new("t1", "img1", "original");
        let mut h2 = header();
        h2.nonce_prefix = [9; 7];
        let a = seal(&dek, &header(), &ctx, b"same").unwrap();
        let b = seal(&dek, &h2, &ctx, b"same").unwrap();
        assert_ne!(a[a.len() - 20..], b[b.len() - 20..]);
    }
}
