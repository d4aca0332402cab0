//! The type of an upload, decided by its first bytes (magic numbers), never by a file name or a
//! Content-Type header.

use crate::ImagingError;

/// An accepted image type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    Heic,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Heic => "heic",
        }
    }

    /// The media type the stored original is served with.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
            Format::Heic => "image/heic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Format::Jpeg, Format::Png, Format::WebP, Format::Heic]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// Bytes needed to decide (a HEIF `ftyp` box with its major brand).
pub const SNIFF_LEN: usize = 12;

/// Decides the type from the first bytes. HEIC is recognised (so the refusal can say so) and
/// refused unless the build has a HEIC decoder.
pub fn sniff(head: &[u8]) -> Result<Format, ImagingError> {
    if head.is_empty() {
        return Err(ImagingError::Empty);
    }
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return Ok(Format::Jpeg);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Ok(Format::WebP);
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        let brand = &head[8..12];
        if [
            b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
        ]
        .iter()
        .any(|b| brand == *b)
        {
            return if cfg!(feature = "heic") {
                Ok(Format::Heic)
            } else {
                Err(ImagingError::HeicUnsupported)
            };
        }
    }
    Err(ImagingError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_by_content() {
        assert_eq!(
            sniff(&[0xff, 0xd8, 0xff, 0xe0, 0, 0]).unwrap(),
            Format::Jpeg
        );
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap(),
            Format::Png
        );
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 ").unwrap(), Format::WebP);
        let heic = sniff(b"\0\0\0\x18ftypheic\0\0\0\0");
        if cfg!(feature = "heic") {
            assert_eq!(heic.unwrap(), Format::Heic);
        } else {
            assert!(matches!(heic, Err(ImagingError::HeicUnsupported)));
        }
        assert!(matches!(sniff(b""), Err(ImagingError::Empty)));
        assert!(matches!(
            sniff(b"%PDF-1.7\n"),
            Err(ImagingError::Unsupported)
        ));
        assert!(matches!(
            sniff(b"GIF89a\x01\0\x01\0"),
            Err(ImagingError::Unsupported)
        ));
        assert!(matches!(
            sniff(b"<svg xmlns="),
            Err(ImagingError::Unsupported)
        ));
    }
}
