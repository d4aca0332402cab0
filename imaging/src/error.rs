//! One error type for the crate; the API maps each kind to a status and a stable code.

/// What went wrong with an image or its storage.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("the upload is empty")]
    Empty,
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("this is not a JPEG, PNG or WebP image")]
    Unsupported,
    #[error("HEIC images are not supported by this server's build")]
    HeicUnsupported,
    #[error(
        "the image is {width}×{height} pixels; at most {max_pixels} pixels and {max_side} per side are accepted"
    )]
    Dimensions {
        width: u64,
        height: u64,
        max_pixels: u64,
        max_side: u32,
    },
    #[error("the image is damaged or incomplete: {0}")]
    Corrupt(String),
    #[error("the image would need more memory to decode than allowed")]
    Memory,
    #[error("the encrypted object is malformed, was altered, or does not belong here")]
    Decrypt,
    #[error("key provider: {0}")]
    Keys(String),
    #[error("object store: {0}")]
    Store(String),
    #[error("object not found")]
    NotFound,
}

impl ImagingError {
    /// True for problems with the uploaded bytes (a 4xx), false for server-side failures.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::Empty
                | Self::TooLarge { .. }
                | Self::Unsupported
                | Self::HeicUnsupported
                | Self::Dimensions { .. }
                | Self::Corrupt(_)
                | Self::Memory
        )
    }
}
