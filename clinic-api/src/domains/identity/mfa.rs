//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of skew, 160-bit secrets) and recovery
//! codes. A code's time step must be newer than the last one accepted for the user, so a used
//! code cannot be replayed. Recovery codes carry 80 bits, are stored as argon2id hashes (salted
//! by the user) and are used once.

use totp_rs::{Algorithm, TOTP};

use crate::platform::keys::ct_eq;

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

/// Crockford's base32 alphabet (no i, l, o, u: nothing to misread when typed from paper).
const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Fresh recovery codes to show once: 16 Crockford base32 characters each (80 bits, every
/// character 5 unbiased bits of the random bytes), shown as `xxxx-xxxx-xxxx-xxxx`.
pub fn new_recovery_codes(random: impl Fn(&mut [u8])) -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 10];
            random(&mut bytes);
            let bits = bytes
                .iter()
                .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
            let chars: Vec<char> = (0..16)
                .map(|i| CROCKFORD[((bits >> (75 - 5 * i)) & 31) as usize] as char)
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// A typed recovery code as its 16 characters: case, spaces and dashes ignored, and the letters
/// Crockford's alphabet leaves out read as the digits they look like (o → 0, i and l → 1).
pub fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        })
        .collect()
}

/// The stored form of a recovery code: argon2id (the password parameters) of the normalized
/// code, salted by the user's id, so a stolen table costs an argon2 run per guess per user while
/// a sign-in still finds the code with one equality lookup. Slow: run it on the blocking pool.
pub fn recovery_hash(user_id: &str, code: &str) -> String {
    let salt = format!("clinic-recovery-v2:{user_id}");
    let mut out = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19 * 1024, 2, 1, Some(32)).expect("valid params"),
    )
    .hash_password_into(
        normalize_recovery(code).as_bytes(),
        salt.as_bytes(),
        &mut out,
    )
    .expect("argon2 with a salt of at least 8 bytes");
    format!("argon2id:{}", hex::encode(out))
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
    fn recovery_codes_carry_80_bits_and_normalize() {
        let codes =
            new_recovery_codes(|b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8 * 7));
        assert_eq!(codes.len(), RECOVERY_CODES);
        for code in &codes {
            let chars = normalize_recovery(code);
            // 16 characters of a 32-letter alphabet: 80 bits.
            assert_eq!(chars.len(), 16, "{code}");
            assert!(chars.bytes().all(|c| CROCKFORD.contains(&c)), "{code}");
            assert_eq!(code.len(), 19, "four groups of four: {code}");
        }
        // Every bit of the random bytes shows: all-ones bytes give the alphabet's last letter.
        let ones = new_recovery_codes(|b| b.fill(0xff));
        assert_eq!(ones[0], "zzzz-zzzz-zzzz-zzzz");
        let zeros = new_recovery_codes(|b| b.fill(0));
        assert_eq!(zeros[0], "0000-0000-0000-0000");
        assert_eq!(
            recovery_hash("u1", "ABCD-efgh-0123-4567"),
            recovery_hash("u1", "abcd efgh Ol23 4567")
        );
        assert_ne!(
            recovery_hash("u1", "abcd-efgh-0123-4567"),
            recovery_hash("u2", "abcd-efgh-0123-4567"),
            "salted by the user"
        );
        assert!(recovery_hash("u1", "x").starts_with("argon2id:"));
    }
}
