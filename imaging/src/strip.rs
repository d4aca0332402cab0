//! Metadata removal without re-encoding: what remains decodes to exactly the same pixels.
//!
//! - JPEG: APP1 (EXIF, XMP), APP2 other than ICC profiles (MPF, FlashPix), APP3–APP13 (IPTC,
//!   Photoshop), APP15, comments, JFXX thumbnails and anything after the end-of-image marker
//!   (phones append secondary images there, with EXIF of their own) are dropped. JFIF, ICC
//!   profiles and Adobe's APP14 (it says how to read CMYK) are kept.
//! - PNG: only the chunks that define pixels and colour are kept (IHDR, PLTE, IDAT, IEND, tRNS,
//!   cHRM, gAMA, iCCP, sBIT, sRGB, cICP, bKGD, pHYs); text, eXIf, time and unknown chunks go.
//! - WebP: EXIF, XMP and unknown chunks go, and VP8X's EXIF/XMP flags are cleared.
//!
//! The EXIF block found on the way is returned for reading orientation and capture time; it is
//! never stored.

use crate::{Format, ImagingError};

/// The image without metadata, and the EXIF (TIFF structure) it carried.
#[derive(Debug)]
pub struct Stripped {
    pub bytes: Vec<u8>,
    pub exif: Option<Vec<u8>>,
}

/// What the EXIF block says that we keep as data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExifFacts {
    /// EXIF orientation 1–8 (1 when absent or invalid).
    pub orientation: u8,
    /// DateTimeOriginal as `YYYY-MM-DDTHH:MM:SS`, with the offset (`+02:00`) when the camera
    /// recorded one; the camera's local time otherwise.
    pub captured_at: Option<String>,
}

fn corrupt(why: &str) -> ImagingError {
    ImagingError::Corrupt(why.to_string())
}

/// Strips `bytes`, which [`crate::sniff`] found to be `format`.
pub fn strip(format: Format, bytes: &[u8]) -> Result<Stripped, ImagingError> {
    match format {
        Format::Jpeg => strip_jpeg(bytes),
        Format::Png => strip_png(bytes),
        Format::WebP => strip_webp(bytes),
        #[cfg(feature = "heic")]
        Format::Heic => strip_heic(bytes),
        #[cfg(not(feature = "heic"))]
        Format::Heic => Err(ImagingError::HeicUnsupported),
    }
}

/// HEIC: every metadata item (EXIF, XMP, `uri `; the primary image's, thumbnails', any) is
/// blanked in place at the offsets its `iloc` entry records ([`crate::bmff`]), so no offset moves
/// and the image items stay bit-exact. Malformed, overlapping or out-of-range locations are
/// refused rather than stored.
#[cfg(feature = "heic")]
fn strip_heic(b: &[u8]) -> Result<Stripped, ImagingError> {
    let blanked = crate::bmff::blank_metadata(b)?;
    Ok(Stripped {
        bytes: blanked.bytes,
        exif: blanked.exif,
    })
}

fn strip_jpeg(b: &[u8]) -> Result<Stripped, ImagingError> {
    if !b.starts_with(&[0xff, 0xd8]) {
        return Err(corrupt("not a JPEG stream"));
    }
    let n = b.len();
    let mut out = Vec::with_capacity(n);
    out.extend_from_slice(&[0xff, 0xd8]);
    let mut exif = None;
    let mut saw_frame = false;
    let mut saw_scan = false;
    let mut i = 2;
    loop {
        if i >= n {
            return Err(corrupt("the JPEG ends before its end-of-image marker"));
        }
        if b[i] != 0xff {
            return Err(corrupt("unexpected bytes between JPEG segments"));
        }
        while i < n && b[i] == 0xff {
            i += 1;
        }
        if i >= n {
            return Err(corrupt("the JPEG ends before its end-of-image marker"));
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xd9 => {
                if !saw_frame || !saw_scan {
                    return Err(corrupt("the JPEG has no image data"));
                }
                out.extend_from_slice(&[0xff, 0xd9]);
                break;
            }
            0xd8 => return Err(corrupt("a JPEG start marker inside the image")),
            0x01 | 0xd0..=0xd7 => {
                out.extend_from_slice(&[0xff, marker]);
                continue;
            }
            _ => {}
        }
        if i + 2 > n {
            return Err(corrupt("a JPEG segment is cut off"));
        }
        let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        if len < 2 || i + len > n {
            return Err(corrupt("a JPEG segment is cut off"));
        }
        let seg = &b[i + 2..i + len];
        let keep = match marker {
            0xe0 => seg.starts_with(b"JFIF\0"),
            0xe1 => {
                if exif.is_none() && seg.starts_with(b"Exif\0\0") {
                    exif = Some(seg[6..].to_vec());
                }
                false
            }
            0xe2 => seg.starts_with(b"ICC_PROFILE\0"),
            0xe3..=0xed | 0xef | 0xfe => false,
            0xee => seg.starts_with(b"Adobe"),
            0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => {
                saw_frame = true;
                true
            }
            _ => true,
        };
        if keep {
            out.extend_from_slice(&b[i - 2..i + len]);
        }
        i += len;
        if marker == 0xda {
            if !saw_frame {
                return Err(corrupt("JPEG image data before its frame header"));
            }
            saw_scan = true;
            // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or a
            // restart marker.
            let start = i;
            loop {
                if i + 1 >= n {
                    return Err(corrupt("the JPEG image data is cut off"));
                }
                if b[i] == 0xff {
                    let m = b[i + 1];
                    if m == 0x00 || (0xd0..=0xd7).contains(&m) {
                        i += 2;
                        continue;
                    }
                    if m != 0xff {
                        break;
                    }
                }
                i += 1;
            }
            out.extend_from_slice(&b[start..i]);
        }
    }
    Ok(Stripped { bytes: out, exif })
}

/// The EXIF block (TIFF structure) of an exported original: IFD0 with the Orientation tag and
/// nothing else (no camera, time, GPS or thumbnail), big-endian, 26 bytes.
pub fn orientation_tiff(orientation: u8) -> Vec<u8> {
    let mut t = b"MM\0*".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    t.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_be_bytes()); // one value, held in the entry
    t.extend_from_slice(&(orientation as u16).to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_be_bytes()); // no next IFD (no thumbnail)
    t
}

/// A stripped JPEG with its orientation written back as a minimal EXIF APP1
/// ([`orientation_tiff`]), so that viewers show the exported original upright while its pixels
/// (every other segment and the entropy-coded data) stay byte for byte as shot. Orientation 1
/// (or an invalid one) needs no tag and returns the input unchanged. The segment goes right after
/// SOI, or after a JFIF APP0 there, which JFIF requires to come first.
pub fn jpeg_with_orientation(stripped: &[u8], orientation: u8) -> Vec<u8> {
    if !(2..=8).contains(&orientation) || !stripped.starts_with(&[0xff, 0xd8]) {
        return stripped.to_vec();
    }
    let mut at = 2;
    if stripped.get(2..4) == Some(&[0xff, 0xe0]) && stripped.len() >= 6 {
        let len = u16::from_be_bytes([stripped[4], stripped[5]]) as usize;
        if stripped.len() >= 4 + len {
            at = 4 + len;
        }
    }
    let mut body = b"Exif\0\0".to_vec();
    body.extend_from_slice(&orientation_tiff(orientation));
    let mut out = Vec::with_capacity(stripped.len() + body.len() + 4);
    out.extend_from_slice(&stripped[..at]);
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&stripped[at..]);
    out
}

/// The ICC profile of a JPEG, reassembled from its APP2 `ICC_PROFILE` chunks (in their sequence
/// order), read from the segments before the first scan without decoding anything. `None` when
/// there is none or its chunks do not add up.
pub fn jpeg_icc(b: &[u8]) -> Option<Vec<u8>> {
    let mut chunks: Vec<(u8, &[u8])> = Vec::new();
    let mut total = 0u8;
    let mut i = 2;
    while i + 4 <= b.len() && b[i] == 0xff {
        let marker = b[i + 1];
        if marker == 0xda || marker == 0xd9 {
            break;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let seg = b.get(i + 4..i + 2 + len)?;
        if marker == 0xe2 && seg.len() > 14 && seg.starts_with(b"ICC_PROFILE\0") {
            total = seg[13];
            chunks.push((seg[12], &seg[14..]));
        }
        i += 2 + len;
    }
    if chunks.is_empty() || chunks.len() != total as usize {
        return None;
    }
    chunks.sort_by_key(|c| c.0);
    if chunks
        .iter()
        .enumerate()
        .any(|(k, c)| c.0 as usize != k + 1)
    {
        return None;
    }
    Some(chunks.iter().flat_map(|c| c.1.iter().copied()).collect())
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
const PNG_KEEP: [&[u8; 4]; 13] = [
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB",
    b"cICP", b"bKGD", b"pHYs",
];

fn strip_png(b: &[u8]) -> Result<Stripped, ImagingError> {
    if !b.starts_with(PNG_SIGNATURE) {
        return Err(corrupt("not a PNG stream"));
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(PNG_SIGNATURE);
    let mut exif = None;
    let mut i = 8;
    let mut first = true;
    loop {
        if i + 8 > b.len() {
            return Err(corrupt("the PNG ends before its IEND chunk"));
        }
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let kind: [u8; 4] = [b[i + 4], b[i + 5], b[i + 6], b[i + 7]];
        let end = i
            .checked_add(12)
            .and_then(|x| x.checked_add(len))
            .filter(|&e| e <= b.len())
            .ok_or_else(|| corrupt("a PNG chunk is cut off"))?;
        if first && &kind != b"IHDR" {
            return Err(corrupt("the PNG does not start with IHDR"));
        }
        first = false;
        if &kind == b"eXIf" && exif.is_none() {
            exif = Some(b[i + 8..i + 8 + len].to_vec());
        }
        if PNG_KEEP.iter().any(|k| **k == kind) {
            out.extend_from_slice(&b[i..end]);
        }
        i = end;
        if &kind == b"IEND" {
            break;
        }
    }
    Ok(Stripped { bytes: out, exif })
}

fn strip_webp(b: &[u8]) -> Result<Stripped, ImagingError> {
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WEBP" {
        return Err(corrupt("not a WebP stream"));
    }
    let size = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let riff_end = size
        .checked_add(8)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| corrupt("the WebP file is cut off"))?;
    let mut out = Vec::with_capacity(riff_end);
    out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
    let mut exif = None;
    let mut image_data = false;
    let mut i = 12;
    while i < riff_end {
        if i + 8 > riff_end {
            return Err(corrupt("a WebP chunk is cut off"));
        }
        let fourcc: [u8; 4] = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let len = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        let data_end = (i + 8)
            .checked_add(len)
            .filter(|&e| e <= riff_end)
            .ok_or_else(|| corrupt("a WebP chunk is cut off"))?;
        let data = &b[i + 8..data_end];
        let next = (data_end + (len & 1)).min(riff_end);
        match &fourcc {
            b"EXIF" if exif.is_none() => {
                exif = Some(data.strip_prefix(b"Exif\0\0").unwrap_or(data).to_vec());
            }
            b"VP8X" => {
                if data.is_empty() {
                    return Err(corrupt("an empty WebP VP8X chunk"));
                }
                out.extend_from_slice(&b[i..i + 8]);
                out.push(data[0] & !(0x08 | 0x04));
                out.extend_from_slice(&data[1..]);
                if len & 1 == 1 {
                    out.push(0);
                }
            }
            b"VP8 " | b"VP8L" | b"ALPH" | b"ANIM" | b"ANMF" | b"ICCP" => {
                if matches!(&fourcc, b"VP8 " | b"VP8L" | b"ANMF") {
                    image_data = true;
                }
                out.extend_from_slice(&b[i..data_end]);
                if len & 1 == 1 {
                    out.push(0);
                }
            }
            _ => {}
        }
        i = next;
    }
    if !image_data {
        return Err(corrupt("the WebP file has no image data"));
    }
    let riff_size = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff_size.to_le_bytes());
    Ok(Stripped { bytes: out, exif })
}

/// Reads orientation and capture time from an EXIF block (TIFF structure), keeping whatever is
/// valid: one quirk elsewhere in the block (a next-IFD pointer where none belongs, as piexif
/// writes; a tag whose values lie past the end) must not cost the orientation, or a photo comes
/// out sideways or mirrored, and a mirrored wound photo swaps left and right. Unreadable fields
/// yield the defaults: the block is dropped anyway.
pub fn read_exif(tiff: &[u8]) -> ExifFacts {
    use exif::{In, Tag, Value};
    // kamadak-exif's continue-on-error mode skips broken entries and child IFDs and hands back
    // the rest as `Error::PartialResult`. Errors in IFD0's own structure (an entry count running
    // past the block, a next-IFD pointer out of range) are still fatal there, so the orientation
    // then comes from `ifd0_orientation`, which reads IFD0's entries as far as they go.
    let parsed = match exif::Reader::new()
        .continue_on_error(true)
        .read_raw(tiff.to_vec())
    {
        Ok(exif) => Some(exif),
        Err(exif::Error::PartialResult(partial)) => Some(partial.into_inner().0),
        Err(_) => None,
    };
    let orientation = parsed
        .as_ref()
        .and_then(|exif| exif.get_field(Tag::Orientation, In::PRIMARY))
        .and_then(|f| f.value.get_uint(0))
        .filter(|o| (1..=8).contains(o))
        .map(|o| o as u8)
        .or_else(|| ifd0_orientation(tiff))
        .unwrap_or(1);
    let Some(exif) = parsed else {
        return ExifFacts {
            orientation,
            captured_at: None,
        };
    };
    let ascii = |tag| match exif.get_field(tag, In::PRIMARY).map(|f| &f.value) {
        Some(Value::Ascii(v)) => v
            .first()
            .map(|s| String::from_utf8_lossy(s).trim().to_string()),
        _ => None,
    };
    let captured_at = ascii(Tag::DateTimeOriginal).and_then(|dt| {
        // "YYYY:MM:DD HH:MM:SS"
        let b = dt.as_bytes();
        let shape_ok = b.len() == 19
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b':',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            });
        if !shape_ok || dt.starts_with("0000") {
            return None;
        }
        let mut s = format!("{}-{}-{}T{}", &dt[0..4], &dt[5..7], &dt[8..10], &dt[11..19]);
        if let Some(off) = ascii(Tag::OffsetTimeOriginal) {
            let o = off.as_bytes();
            if o.len() == 6
                && (o[0] == b'+' || o[0] == b'-')
                && o[3] == b':'
                && [1, 2, 4, 5].iter().all(|&k| o[k].is_ascii_digit())
            {
                s.push_str(&off);
            }
        }
        Some(s)
    });
    ExifFacts {
        orientation,
        captured_at,
    }
}

/// The Orientation tag (0x0112, one SHORT, 1–8) of IFD0, read from the entries that lie inside
/// the block and nothing else: no next-IFD pointer, no child IFD, no value offset is followed, so
/// it cannot be led astray by them and examines at most the block once.
fn ifd0_orientation(tiff: &[u8]) -> Option<u8> {
    let le = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |at: usize| {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd0 = u32_at(4)? as usize;
    let count = u16_at(ifd0)? as usize;
    (0..count)
        .map_while(|k| {
            let at = ifd0 + 2 + 12 * k;
            // An entry cut off by the end of the block ends the reading.
            tiff.get(at..at + 12)?;
            Some(at)
        })
        .find(|&at| u16_at(at) == Some(0x0112))
        .and_then(|at| {
            // SHORT, at least one value: the first sits in the entry's value field.
            if u16_at(at + 2)? != 3 || u32_at(at + 4)? == 0 {
                return None;
            }
            u16_at(at + 8)
        })
        .filter(|o| (1..=8).contains(o))
        .map(|o| o as u8)
}
