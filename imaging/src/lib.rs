//! The wound-imaging pipeline: upload → validate → orient → strip metadata → thumbnails →
//! envelope-encrypt → store → tier and retain.
//!
//! Empty until the imaging issue builds it; nothing here is used yet. It must never write
//! plaintext image bytes to disk, and object keys never carry patient information.
