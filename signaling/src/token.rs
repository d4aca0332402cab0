//! Consult join tokens: `v1.<base64url(claims JSON)>.<base64url(HMAC-SHA256)>`.
//!
//! Any node holding the signing key verifies a token with no database call. Tokens live minutes,
//! not hours; leaving a consult spends a participant's token (the room refuses it afterwards), and
//! reconnecting uses the room's resume token instead.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Who a participant is in a consult.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsultRole {
    /// The consult's provider: admits, removes, ends.
    Provider,
    /// A provider covering for or joining the primary one: may also admit and remove.
    CoveringProvider,
    Patient,
    /// A caregiver or family member with the patient.
    Caregiver,
    Interpreter,
}

impl ConsultRole {
    /// Providers enter directly and run the waiting room; everyone else waits to be admitted.
    pub fn is_host(self) -> bool {
        matches!(self, ConsultRole::Provider | ConsultRole::CoveringProvider)
    }
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Tenant id (opaque here).
    pub clinic: String,
    pub consult: String,
    pub participant: String,
    pub role: ConsultRole,
    /// Name shown to the others (a display name chosen at link time; may be PHI, so it travels
    /// only to the consult's participants and is never logged).
    pub display: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is malformed")]
    Malformed,
    #[error("the join token's signature is not valid")]
    Forged,
    #[error("the join token has expired; ask for a new link")]
    Expired,
    #[error("the join token is not valid yet")]
    NotYetValid,
}

impl TokenError {
    /// The stable error code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Forged => "token_invalid",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
        }
    }
}

/// Signs and verifies tokens with one HMAC-SHA256 key.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    /// From 32 key bytes (the server derives them from its key ring).
    pub fn new(secret: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("v1.{body}");
        let tag = hmac::sign(&self.0, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// Checks signature and time window (`now` in Unix seconds, with `skew` seconds of tolerance).
    pub fn verify(&self, token: &str, now: i64, skew: i64) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let body = signed.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| TokenError::Forged)?;
        let claims: Claims = B64
            .decode(body)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(TokenError::Malformed)?;
        if now > claims.exp + skew {
            return Err(TokenError::Expired);
        }
        if now + skew < claims.iat {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            clinic: "c".into(),
            consult: "k1".into(),
            participant: "p1".into(),
            role: ConsultRole::Patient,
            display: "Pat".into(),
            iat: 1000,
            exp: 1600,
        }
    }

    #[test]
    fn round_trip_and_time_window() {
        let key = TokenKey::new(&[7; 32]);
        let t = key.sign(&claims());
        assert_eq!(key.verify(&t, 1200, 5).unwrap(), claims());
        assert_eq!(key.verify(&t, 1606, 5), Err(TokenError::Expired));
        assert_eq!(key.verify(&t, 990, 5), Err(TokenError::NotYetValid));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let key = TokenKey::new(&[7; 32]);
        let other = TokenKey::new(&[8; 32]);
        let t = other.sign(&claims());
        assert_eq!(key.verify(&t, 1200, 5), Err(TokenError::Forged));
        // Changing the claims (here: the role) breaks the signature.
        let good = key.sign(&claims());
        let (_, tag) = good.rsplit_once('.').unwrap();
        let mut c = claims();
        c.role = ConsultRole::Provider;
        let body = B64.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            key.verify(&format!("v1.{body}.{tag}"), 1200, 5),
            Err(TokenError::Forged)
        );
        for junk in [
            "",
            "v1.",
            "v1..",
            "v2.abc.def",
            "no dots",
            "v1.!!!.###",
            &"a".repeat(5000),
        ] {
            assert!(key.verify(junk, 1200, 5).is_err(), "{junk}");
        }
    }
}
