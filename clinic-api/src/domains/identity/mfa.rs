//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of skew, 160-bit secrets) and recovery
//! codes. A code's time step must be newer than the last one accepted for the user, so a used
//! code cannot be replayed. Recovery codes are stored as SHA-256 hashes and used once.

use totp_rs::{Algorithm, TOTP};

use crate::platform::keys::{ct_eq, sha256_hex};

pub const STEP_SECS: i64 = 30;
pub const SECRET_BYTES: usize = 20;
pub const RECOVERY_CODES: usize = 10;

#[derive(Debug, PartialEq, Eq)]
pub enum CodeError {
    /// Not the current code (nor the one before or after).
    Invalid,
    /// The right code, but already used.
    Replayed,
}

fn totp(secret: &[u8]) -> TOTP {
    TOTP::new_unchecked(Algorithm::SHA1, 6, 1, STEP_SECS as u64, secret.to_vec())
}

/// The code for a time step (used by tests and by nothing else in the server).
pub fn code_at(secret: &[u8], unix_secs: i64) -> String {
    totp(secret).generate(unix_secs.max(0) as u64)
}

/// Checks `code` at `now_ms`; on success returns the matched step, which the caller stores as the
/// user's last used step.
pub fn check(
    secret: &[u8],
    code: &str,
    now_ms: i64,
    last_step: Option<i64>,
) -> Result<i64, CodeError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodeError::Invalid);
    }
    let now_step = now_ms.div_euclid(1000) / STEP_SECS;
    let t = totp(secret);
    let matched = (now_step - 1..=now_step + 1).find(|step| {
        ct_eq(
            t.generate((step * STEP_SECS).max(0) as u64).as_bytes(),
            code.as_bytes(),
        )
    });
    match matched {
        None => Err(CodeError::Invalid),
        Some(step) if last_step.is_some_and(|last| step <= last) => Err(CodeError::Replayed),
        Some(step) => Ok(step),
    }
}

/// Base32 (RFC 4648, no padding) for authenticator apps.
pub fn base32(secret: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in secret {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(A[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

/// Fresh recovery codes (`xxxxx-xxxxx`, 50 bits each) to show once.
pub fn new_recovery_codes(random: impl Fn(&mut [u8])) -> Vec<String> {
    const A: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 10];
            random(&mut bytes);
            let s: String = bytes
                .iter()
                .map(|b| A[*b as usize % A.len()] as char)
                .collect();
            format!("{}-{}", &s[..5], &s[5..])
        })
        .collect()
}

/// The stored form of a recovery code (normalized: lowercase, no spaces or dashes).
pub fn recovery_hash(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect();
    sha256_hex(format!("clinic-recovery-v1:{norm}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1, truncated to 6 digits.
        assert_eq!(code_at(SECRET, 59), "287082");
        assert_eq!(code_at(SECRET, 1111111109), "081804");
        assert_eq!(code_at(SECRET, 2000000000), "279037");
    }

    #[test]
    fn skew_window_and_replay() {
        let now_ms = 1_111_111_109_000;
        let code = code_at(SECRET, 1_111_111_109);
        let step = check(SECRET, &code, now_ms, None).unwrap();
        assert_eq!(
            check(SECRET, &code, now_ms, Some(step)),
            Err(CodeError::Replayed)
        );
        // One step late still works; two steps late does not.
        assert!(check(SECRET, &code, now_ms + 30_000, None).is_ok());
        assert_eq!(
            check(SECRET, &code, now_ms + 61_000, None),
            Err(CodeError::Invalid)
        );
        assert_eq!(
            check(SECRET, "12345", now_ms, None),
            Err(CodeError::Invalid)
        );
        assert_eq!(
            check(SECRET, "abcdef", now_ms, None),
            Err(CodeError::Invalid)
        );
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(SECRET), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn recovery_codes_normalize() {
        let codes =
            new_recovery_codes(|b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8 * 7));
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(recovery_hash("ABCDE-fghij"), recovery_hash("abcde fghij"));
    }
}
