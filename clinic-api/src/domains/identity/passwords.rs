//! Password hashing with argon2id at OWASP's minimum parameters (m = 19 MiB, t = 2, p = 1).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::platform::error::{ApiError, ErrorCode};

pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 256;

fn hasher() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid params"),
    )
}

/// Hashes a password (PHC string with salt and parameters).
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing")
        .to_string()
}

/// Verifies a password against a stored PHC string.
pub fn verify(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
}

/// Burns the same time as a real check, so unknown usernames cannot be told apart by timing.
pub fn verify_dummy(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("dummy-password-for-timing"));
    let _ = verify(stored, password);
}

/// At most as many argon2 runs at once as the machine has cores.
fn argon2_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// Checks `password` against `stored` (or, for an unknown account, burns the same time) on the
/// blocking pool, at most as many at once as the machine has cores: a flood of sign-ins queues
/// here instead of starving the async workers that answer everyone else.
pub async fn check(stored: Option<String>, password: String) -> Result<bool, ApiError> {
    let _permit = argon2_slots()
        .acquire()
        .await
        .map_err(|_| ApiError::internal())?;
    tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify(&stored, &password),
        None => {
            verify_dummy(&password);
            false
        }
    })
    .await
    .map_err(|_| ApiError::internal())
}

/// [`hash`] on the blocking pool under the same limit as [`check`], for routes open to anyone
/// (an enrollment link): call it before opening a transaction.
pub async fn hash_off_thread(password: String) -> Result<String, ApiError> {
    let _permit = argon2_slots()
        .acquire()
        .await
        .map_err(|_| ApiError::internal())?;
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|_| ApiError::internal())
}

/// Checks a new password's length (NIST 800-63B: length over composition rules).
pub fn validate_new(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(ApiError::unprocessable(
            ErrorCode::WeakPassword,
            format!("passwords must be {MIN_LEN} to {MAX_LEN} characters long"),
        ));
    }
    Ok(())
}

/// A random password for new accounts (printed once, to be changed).
pub fn generate(random: impl Fn(&mut [u8])) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    random(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_at_owasp_minimum() {
        let h = hash("correct horse battery");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(&h, "correct horse battery"));
        assert!(!verify(&h, "correct horse batterY"));
        assert!(!verify("not a hash", "x"));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(validate_new("short").is_err());
        assert!(validate_new("long enough pass").is_ok());
    }
}
