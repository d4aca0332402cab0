//! HEIF (ISO-BMFF) metadata items, found by their recorded locations and blanked in place.
//!
//! The file-level `meta` box lists every item (`iinf`/`infe`: id and type) and where its bytes
//! lie (`iloc`: extents in the file, or in the `meta` box's `idat`). Every EXIF, XMP (`mime`) and
//! `uri ` item (of the primary image, of thumbnails, of anything) is zeroed at those offsets, so
//! no offset moves and the image items stay bit-exact. Searching for the item's bytes instead (as
//! before) was quadratic in the file size and could blank the wrong copy.
//!
//! Hostile files: the parser reads box headers and the `iinf`/`iloc` tables only, each byte at
//! most once (`examined` counts them), with caps on boxes, items and extents checked as they are
//! read; malformed, out-of-range or overlapping locations are refused, never guessed at. The
//! pipeline runs this before libheif sees the file, so a file that would have libheif walk
//! millions of items or boxes is refused first.

use std::cell::Cell;

use crate::ImagingError;

/// Most boxes read, at every level together (phones write a few dozen).
pub const MAX_BOXES: usize = 4096;
/// Most items in `iinf` or `iloc` (a 48-tile grid photo with thumbnail and metadata has ~60).
pub const MAX_ITEMS: usize = 1024;
/// Most extents in `iloc`, over all items.
pub const MAX_EXTENTS: usize = 4096;

/// The file with its metadata items zeroed, the first EXIF item's TIFF structure, and how many
/// bytes the parser examined.
#[derive(Debug)]
pub struct Blanked {
    pub bytes: Vec<u8>,
    pub exif: Option<Vec<u8>>,
    pub examined: usize,
}

fn bad(why: &str) -> ImagingError {
    ImagingError::Corrupt(format!("HEIC: {why}"))
}

struct Parser<'a> {
    b: &'a [u8],
    examined: Cell<usize>,
    boxes: Cell<usize>,
}

#[derive(Clone, Copy)]
struct Bx {
    kind: [u8; 4],
    /// Payload start and end (after the header).
    start: usize,
    end: usize,
}

impl<'a> Parser<'a> {
    fn bytes(&self, at: usize, n: usize, end: usize) -> Result<&'a [u8], ImagingError> {
        let stop = at
            .checked_add(n)
            .filter(|&s| s <= end && end <= self.b.len())
            .ok_or_else(|| bad("a box is cut off"))?;
        self.examined.set(self.examined.get() + n);
        Ok(&self.b[at..stop])
    }

    /// A big-endian unsigned number of `n` bytes (0, 2, 4 or 8) at `*at`, advancing it.
    fn uint(&self, at: &mut usize, n: usize, end: usize) -> Result<u64, ImagingError> {
        let v = self
            .bytes(*at, n, end)?
            .iter()
            .fold(0u64, |v, &x| (v << 8) | x as u64);
        *at += n;
        Ok(v)
    }

    /// The boxes that fill `start..end` exactly.
    fn children(&self, mut at: usize, end: usize) -> Result<Vec<Bx>, ImagingError> {
        let mut out = Vec::new();
        while at < end {
            let n = self.boxes.get() + 1;
            if n > MAX_BOXES {
                return Err(bad("too many boxes"));
            }
            self.boxes.set(n);
            let box_start = at;
            let size = self.uint(&mut at, 4, end)?;
            let kind: [u8; 4] = self.bytes(at, 4, end)?.try_into().expect("4 bytes");
            at += 4;
            let box_end = match size {
                0 => end,
                1 => {
                    let large = self.uint(&mut at, 8, end)?;
                    usize::try_from(large)
                        .ok()
                        .and_then(|l| box_start.checked_add(l))
                        .ok_or_else(|| bad("a box is cut off"))?
                }
                s => box_start
                    .checked_add(s as usize)
                    .ok_or_else(|| bad("a box is cut off"))?,
            };
            if box_end < at || box_end > end {
                return Err(bad("a box is cut off"));
            }
            out.push(Bx {
                kind,
                start: at,
                end: box_end,
            });
            at = box_end;
        }
        Ok(out)
    }
}

fn one<'x>(boxes: &'x [Bx], kind: &[u8; 4]) -> Result<Option<&'x Bx>, ImagingError> {
    let mut found = boxes.iter().filter(|b| &b.kind == kind);
    let first = found.next();
    if found.next().is_some() {
        return Err(bad(&format!(
            "more than one {} box",
            String::from_utf8_lossy(kind)
        )));
    }
    Ok(first)
}

/// Item types that are metadata, not pictures: blanked wherever they describe.
fn is_metadata(kind: &[u8; 4]) -> bool {
    matches!(kind, b"Exif" | b"mime" | b"uri ")
}

/// Finds and blanks every metadata item of a HEIF file.
pub fn blank_metadata(b: &[u8]) -> Result<Blanked, ImagingError> {
    let p = Parser {
        b,
        examined: Cell::new(0),
        boxes: Cell::new(0),
    };
    let top = p.children(0, b.len())?;
    let meta = one(&top, b"meta")?.ok_or_else(|| bad("no meta box"))?;
    // meta is a FullBox: version and flags first.
    p.bytes(meta.start, 4, meta.end)?;
    let inner = p.children(meta.start + 4, meta.end)?;
    let iinf = one(&inner, b"iinf")?.ok_or_else(|| bad("no item list (iinf)"))?;
    let iloc = one(&inner, b"iloc")?.ok_or_else(|| bad("no item locations (iloc)"))?;
    let idat = one(&inner, b"idat")?.copied();

    // iinf: (id, type) of every item, in order.
    let mut at = iinf.start;
    let version = p.uint(&mut at, 1, iinf.end)?;
    at += 3;
    let count = p.uint(&mut at, if version == 0 { 2 } else { 4 }, iinf.end)? as usize;
    if count > MAX_ITEMS {
        return Err(bad("too many items"));
    }
    let entries = p.children(at, iinf.end)?;
    if entries.len() != count || entries.iter().any(|e| &e.kind != b"infe") {
        return Err(bad("the item list does not match its count"));
    }
    let mut items: Vec<(u32, [u8; 4])> = Vec::with_capacity(count);
    for e in &entries {
        let mut at = e.start;
        let v = p.uint(&mut at, 1, e.end)?;
        at += 3;
        let id = p.uint(&mut at, if v == 3 { 4 } else { 2 }, e.end)? as u32;
        at += 2; // item_protection_index
        // Versions 0 and 1 have no item type and cannot describe a coded picture: they are
        // treated as metadata.
        let kind = if v >= 2 {
            p.bytes(at, 4, e.end)?.try_into().expect("4 bytes")
        } else {
            *b"mime"
        };
        items.push((id, kind));
    }
    let mut ids: Vec<u32> = items.iter().map(|i| i.0).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("two items with one id"));
    }
    let kind_of = |id: u32| items.iter().find(|i| i.0 == id).map(|i| i.1);

    // iloc: where each item's bytes lie.
    let mut at = iloc.start;
    let end = iloc.end;
    let version = p.uint(&mut at, 1, end)?;
    if version > 2 {
        return Err(bad("an unknown item location version"));
    }
    at += 3;
    let sizes = p.uint(&mut at, 2, end)?;
    let (off_size, len_size, base_size, index_size) = (
        (sizes >> 12) as usize,
        ((sizes >> 8) & 15) as usize,
        ((sizes >> 4) & 15) as usize,
        if version >= 1 {
            (sizes & 15) as usize
        } else {
            0
        },
    );
    if [off_size, len_size, base_size, index_size]
        .iter()
        .any(|s| !matches!(s, 0 | 4 | 8))
    {
        return Err(bad("an invalid field size in the item locations"));
    }
    let item_count = p.uint(&mut at, if version < 2 { 2 } else { 4 }, end)? as usize;
    if item_count > MAX_ITEMS {
        return Err(bad("too many item locations"));
    }
    // (start, end, metadata?, item id) in the file.
    let mut ranges: Vec<(usize, usize, bool, u32)> = Vec::new();
    let mut located: Vec<u32> = Vec::with_capacity(item_count);
    let mut extents = 0usize;
    for _ in 0..item_count {
        let id = p.uint(&mut at, if version < 2 { 2 } else { 4 }, end)? as u32;
        let method = if version >= 1 {
            p.uint(&mut at, 2, end)? & 15
        } else {
            0
        };
        let data_ref = p.uint(&mut at, 2, end)?;
        let base = p.uint(&mut at, base_size, end)?;
        let n = p.uint(&mut at, 2, end)? as usize;
        extents += n;
        if extents > MAX_EXTENTS {
            return Err(bad("too many extents"));
        }
        located.push(id);
        let meta_item = kind_of(id).is_some_and(|k| is_metadata(&k));
        if meta_item && (data_ref != 0 || method == 2) {
            // Data elsewhere (another file, or made from other items): nothing here to blank,
            // and nothing we could vouch for.
            return Err(bad("a metadata item stored by reference"));
        }
        for _ in 0..n {
            p.uint(&mut at, index_size, end)?;
            let off = p.uint(&mut at, off_size, end)?;
            let len = p.uint(&mut at, len_size, end)?;
            if data_ref != 0 || method == 2 {
                continue;
            }
            let (area_start, area_end) = match method {
                0 => (0, b.len()),
                1 => {
                    let d = idat.ok_or_else(|| bad("an item in a missing idat box"))?;
                    (d.start, d.end)
                }
                _ => return Err(bad("an unknown construction method")),
            };
            let start = base
                .checked_add(off)
                .and_then(|s| usize::try_from(s).ok())
                .and_then(|s| s.checked_add(area_start))
                .filter(|&s| s <= area_end)
                .ok_or_else(|| bad("an item lies outside the file"))?;
            let stop = if len == 0 {
                // Length 0: to the end of the data. Fine for a picture, never for metadata.
                if meta_item {
                    return Err(bad("a metadata item without a length"));
                }
                area_end
            } else {
                usize::try_from(len)
                    .ok()
                    .and_then(|l| start.checked_add(l))
                    .filter(|&s| s <= area_end)
                    .ok_or_else(|| bad("an item lies outside the file"))?
            };
            ranges.push((start, stop, meta_item, id));
        }
    }
    located.sort_unstable();
    if located.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("two locations for one item"));
    }
    // Overlapping extents: blanking one would corrupt the other (or a picture).
    let mut sorted: Vec<_> = ranges.iter().filter(|r| r.1 > r.0).collect();
    sorted.sort_unstable_by_key(|r| r.0);
    if sorted.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(bad("items overlap"));
    }

    // The first EXIF item in item-list order (the primary image's, as writers list it first):
    // a 4-byte offset to the TIFF header, then the TIFF structure.
    let exif_id = items.iter().find(|i| &i.1 == b"Exif").map(|i| i.0);
    let exif = exif_id.and_then(|id| {
        let data: Vec<u8> = ranges
            .iter()
            .filter(|r| r.3 == id)
            .flat_map(|r| b[r.0..r.1].iter().copied())
            .collect();
        let skip = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        data.get(4usize.checked_add(skip)?..).map(<[u8]>::to_vec)
    });
    let mut out = b.to_vec();
    for r in ranges.iter().filter(|r| r.2) {
        out[r.0..r.1].fill(0);
    }
    Ok(Blanked {
        bytes: out,
        exif,
        examined: p.examined.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn full(kind: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![version, 0, 0, 0];
        p.extend_from_slice(payload);
        bx(kind, &p)
    }

    fn infe(id: u16, kind: &[u8; 4]) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(kind);
        p.push(0); // empty name
        if kind == b"mime" {
            p.extend_from_slice(b"application/rdf+xml\0");
        }
        full(b"infe", 2, &p)
    }

    /// item → (construction method, [(offset, length)]), offsets relative to the file (method
    /// 0) or to idat's payload (method 1); iloc version 1, 4-byte offsets and lengths.
    type Located<'a> = (u16, u16, &'a [(u32, u32)]);

    fn iloc(items: &[Located]) -> Vec<u8> {
        let mut p = vec![0x44, 0x00];
        p.extend_from_slice(&(items.len() as u16).to_be_bytes());
        for (id, method, extents) in items {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&method.to_be_bytes());
            p.extend_from_slice(&0u16.to_be_bytes()); // this file
            p.extend_from_slice(&(extents.len() as u16).to_be_bytes());
            for (o, l) in extents.iter() {
                p.extend_from_slice(&o.to_be_bytes());
                p.extend_from_slice(&l.to_be_bytes());
            }
        }
        full(b"iloc", 1, &p)
    }

    fn exif_item() -> Vec<u8> {
        let mut e = 0u32.to_be_bytes().to_vec();
        e.extend_from_slice(&crate::strip::orientation_tiff(6));
        e.extend_from_slice(b"GPS and camera");
        e
    }

    /// A HEIF file: a primary picture (item 1, two extents), its EXIF (2), an XMP item kept in
    /// idat (3), a thumbnail (4) and the thumbnail's own EXIF (5). The picture bytes are
    /// patterned, the metadata recognisable. Returns the file and the metadata ranges.
    fn heif(mdat_pad: usize) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
        let ftyp = bx(b"ftyp", b"heic\0\0\0\0mif1heic");
        let picture: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8 + 1).collect();
        let thumb: Vec<u8> = (0..40u32).map(|i| (i * 3 % 97) as u8 + 1).collect();
        let exif = exif_item();
        let xmp = b"<x:xmpmeta>GPSLatitude 39,57.6N</x:xmpmeta>".to_vec();
        let mut mdat_body = vec![0xaa; mdat_pad];
        let at = |body: &Vec<u8>| body.len() as u32;
        let p1 = at(&mdat_body);
        mdat_body.extend_from_slice(&picture[..100]);
        let e1 = at(&mdat_body);
        mdat_body.extend_from_slice(&exif);
        let p2 = at(&mdat_body);
        mdat_body.extend_from_slice(&picture[100..]);
        let t = at(&mdat_body);
        mdat_body.extend_from_slice(&thumb);
        let e2 = at(&mdat_body);
        mdat_body.extend_from_slice(&exif);
        let build = |mdat_start: u32| {
            let m = |o: u32| mdat_start + o;
            let mut meta = full(b"hdlr", 0, b"\0\0\0\0pict\0\0\0\0\0\0\0\0\0\0\0\0\0");
            let mut list = 5u16.to_be_bytes().to_vec();
            for (id, k) in [
                (1, b"hvc1"),
                (2, b"Exif"),
                (3, b"mime"),
                (4, b"hvc1"),
                (5, b"Exif"),
            ] {
                list.extend(infe(id, k));
            }
            meta.extend(full(b"iinf", 0, &list));
            meta.extend(iloc(&[
                (1, 0, &[(m(p1), 100), (m(p2), 200)]),
                (2, 0, &[(m(e1), exif.len() as u32)]),
                (3, 1, &[(4, xmp.len() as u32)]),
                (4, 0, &[(m(t), thumb.len() as u32)]),
                (5, 0, &[(m(e2), exif.len() as u32)]),
            ]));
            let mut idat = b"kept".to_vec();
            idat.extend_from_slice(&xmp);
            meta.extend(bx(b"idat", &idat));
            let mut file = ftyp.clone();
            file.extend(full(b"meta", 0, &meta));
            file
        };
        // The mdat's payload starts after ftyp, meta and its own 8-byte header.
        let head = build(0).len() as u32 + 8;
        let mut file = build(head);
        let idat_payload = file.len() - xmp.len() - 4;
        file.extend(bx(b"mdat", &mdat_body));
        let h = head as usize;
        let ranges = vec![
            h + e1 as usize..h + e1 as usize + exif.len(),
            idat_payload + 4..idat_payload + 4 + xmp.len(),
            h + e2 as usize..h + e2 as usize + exif.len(),
        ];
        (file, ranges)
    }

    #[test]
    fn every_metadata_item_is_zeroed_at_its_location_and_nothing_else_changes() {
        let (file, ranges) = heif(0);
        for r in &ranges {
            assert!(file[r.clone()].iter().any(|&b| b != 0));
        }
        let out = blank_metadata(&file).unwrap();
        assert_eq!(out.bytes.len(), file.len());
        for (i, (a, b)) in file.iter().zip(&out.bytes).enumerate() {
            if ranges.iter().any(|r| r.contains(&i)) {
                assert_eq!(*b, 0, "metadata byte {i} zeroed");
            } else {
                assert_eq!(a, b, "byte {i} untouched");
            }
        }
        for needle in [&b"GPS"[..], b"xmpmeta", b"MM\0*"] {
            assert!(!out.bytes.windows(needle.len()).any(|w| w == needle));
        }
        let tiff = out.exif.expect("the primary EXIF");
        assert!(tiff.starts_with(&crate::strip::orientation_tiff(6)));
    }

    /// The iPhone-like fixture (made by heif-enc): its EXIF and XMP items are found by location.
    #[test]
    fn the_phone_fixture_is_blanked_by_location() {
        let heic = include_bytes!("../tests/fixtures/phone.heic");
        let out = blank_metadata(heic).unwrap();
        for needle in [&b"II*\0"[..], b"xmpmeta", b"GPS"] {
            assert!(heic.windows(needle.len()).any(|w| w == needle));
            assert!(!out.bytes.windows(needle.len()).any(|w| w == needle));
        }
        assert_eq!(out.bytes.len(), heic.len());
        assert!(out.exif.is_some());
        let changed = heic.iter().zip(&out.bytes).filter(|(a, b)| a != b).count();
        assert!(
            changed < 4096,
            "only the metadata items change: {changed} bytes"
        );
    }

    /// A 16 MiB file whose metadata is megabytes long: the parser examines the box headers and
    /// tables only (a fixed few hundred bytes), however large the file or its items. The byte
    /// search it replaces compared every window of the file with the item.
    #[test]
    fn work_does_not_grow_with_the_file_or_its_items() {
        let (small, _) = heif(0);
        let (big, _) = heif(16 << 20);
        let (a, b) = (
            blank_metadata(&small).unwrap().examined,
            blank_metadata(&big).unwrap().examined,
        );
        assert_eq!(a, b, "the same structure costs the same");
        assert!(b < 1024, "{b} bytes examined");
    }

    /// Many boxes, many items or many extents are refused once the cap is reached, after
    /// examining at most a few bytes per box or entry.
    #[test]
    fn hostile_counts_are_refused_after_linear_work() {
        // 1 million empty boxes inside meta.
        let mut inner = Vec::new();
        for _ in 0..1_000_000 {
            inner.extend(bx(b"free", b""));
        }
        let mut file = bx(b"ftyp", b"heic\0\0\0\0");
        file.extend(full(b"meta", 0, &inner));
        let err = blank_metadata(&file).unwrap_err();
        assert!(err.to_string().contains("too many boxes"), "{err}");
        // Refused after reading MAX_BOXES headers of 8 bytes, not the million.
        let p = Parser {
            b: &file,
            examined: Cell::new(0),
            boxes: Cell::new(0),
        };
        let meta_payload = bx(b"ftyp", b"heic\0\0\0\0").len() + 12;
        assert!(p.children(meta_payload, file.len()).is_err());
        assert!(
            p.examined.get() <= 8 * MAX_BOXES,
            "{} bytes examined",
            p.examined.get()
        );
        // Items: an iloc claiming 65535 items, each with 65535 extents, in a few bytes.
        let mut list = 1u16.to_be_bytes().to_vec();
        list.extend(infe(1, b"hvc1"));
        let mut table = vec![0x44, 0x00, 0xff, 0xff];
        for id in 0..100u16 {
            table.extend_from_slice(&id.to_be_bytes());
            table.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff]);
        }
        let mut meta = full(b"iinf", 0, &list);
        meta.extend(full(b"iloc", 1, &table));
        let mut file = bx(b"ftyp", b"heic\0\0\0\0");
        file.extend(full(b"meta", 0, &meta));
        let err = blank_metadata(&file).unwrap_err();
        assert!(err.to_string().contains("too many"), "{err}");
    }

    #[test]
    fn malformed_locations_are_refused_without_panicking() {
        let (file, ranges) = heif(0);
        let exif_at = ranges[0].start as u32;
        let n = file.len() as u32;
        // Rebuild the file's iloc with one bad entry; same length, so offsets stay put.
        let iloc_at = file.windows(4).position(|w| w == b"iloc").unwrap() - 4;
        let iloc_len = u32::from_be_bytes(file[iloc_at..iloc_at + 4].try_into().unwrap()) as usize;
        let original = file[iloc_at..iloc_at + iloc_len].to_vec();
        let with = |entry: [(u32, u32); 1]| {
            let mut f = file.clone();
            // Item 2's extent: after header(12) sizes(2) count(2), item 1 (8 + 16), item 2's
            // id, method, ref, count (8).
            let at = iloc_at + 12 + 4 + 24 + 8;
            f[at..at + 4].copy_from_slice(&entry[0].0.to_be_bytes());
            f[at + 4..at + 8].copy_from_slice(&entry[0].1.to_be_bytes());
            assert_eq!(f[iloc_at..iloc_at + iloc_len].len(), original.len());
            f
        };
        assert!(blank_metadata(&with([(exif_at, ranges[0].len() as u32)])).is_ok());
        for (what, entry, why) in [
            ("past the end", (n - 4, 40), "outside the file"),
            ("offset overflow", (u32::MAX, u32::MAX), "outside the file"),
            ("over the picture", (exif_at - 10, 30), "overlap"),
            ("no length", (exif_at, 0), "without a length"),
        ] {
            let err = blank_metadata(&with([entry])).unwrap_err().to_string();
            assert!(err.contains(why), "{what}: {err}");
        }
        // Cut anywhere: refused, never a panic.
        for cut in (0..file.len()).step_by(7) {
            let _ = blank_metadata(&file[..cut]);
        }
    }
}
