//! heimdall's own tokens: PASETO v4 (`local` and `public`) key ring, minting and strict verification.
//!
//! Keys are identified by their PASERK id (`k4.lid.…` for local keys, `k4.pid.…` for public keys),
//! which minted tokens carry in their footer as `kid`, so keys rotate without downtime: add the new
//! key, let old tokens expire, remove the old key. Tokens without a `kid` (as the service heimdall
//! replaces minted them) are tried against every key of their purpose.

use std::fmt;

use pasetors::keys::{AsymmetricKeyPair, Generate, SymmetricKey};
use pasetors::paserk::Id;
use pasetors::version4::{LocalToken, PublicToken, V4};
use serde::{Deserialize, Serialize};

use keyring::paserk_string;

mod claims;
pub mod jwt;
mod keyring;
mod v4_public;

pub use claims::{Audience, Claims, MAX_TTL, ValidTimes, Validation, random_id as random_token_id};
pub use jwt::{JwtAlgorithm, JwtKeys};
pub use keyring::Keyring;

/// The two PASETO v4 purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// `v4.local`: encrypted and authenticated with a 32-byte symmetric key.
    Local,
    /// `v4.public`: signed with Ed25519; verifiers hold only the public key.
    Public,
}

impl Purpose {
    /// The token prefix of this purpose.
    pub const fn header(self) -> &'static str {
        match self {
            Self::Local => LocalToken::HEADER,
            Self::Public => PublicToken::HEADER,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Public => "public",
        })
    }
}

/// Why a token was refused. The messages name the problem, never the token or a key. Text
/// taken from the token (a `kid`, a version, a claim) is escaped and cut short where the
/// error is made, so the message is safe to print and to log as is.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported token version `{0}`: only PASETO v4 is accepted")]
    UnsupportedVersion(String),
    #[error("not a PASETO token")]
    Malformed,
    #[error("`v4.{got}` token where only `v4.{allowed}` tokens are accepted")]
    WrongPurpose { got: Purpose, allowed: Purpose },
    #[error("token footer is not a valid JSON object with a string `kid`")]
    BadFooter,
    #[error("unknown key id `{0}`")]
    UnknownKey(String),
    #[error("no {0} key is configured")]
    NoKey(Purpose),
    #[error("signature or authentication tag does not verify")]
    BadSignature,
    #[error("claims are not a valid JSON object: {0}")]
    BadClaims(String),
    /// The claim's name (a configured one for `required_claims`, so it is safe to log).
    #[error("claim `{0}` is missing")]
    MissingClaim(Box<str>),
    #[error("claim `{0}` is not an RFC 3339 time")]
    BadTime(&'static str),
    /// The validation's leeway moves `now` out of the representable time range.
    #[error("the leeway is out of range")]
    LeewayOutOfRange,
    #[error("token expired at {0}")]
    Expired(String),
    #[error("token is not valid before {0}")]
    NotYetValid(String),
    #[error("token issued in the future ({0})")]
    IssuedInFuture(String),
    #[error("issuer `{0}` is not accepted")]
    WrongIssuer(String),
    #[error("audience does not include `{0}`")]
    WrongAudience(String),
    #[error("token has no expiry and non-expiring tokens are not accepted")]
    NoExpiry,
}

/// Errors building or using the key ring. Messages say which key (its position in
/// `tokens.keys`) and what is wrong with it, never the key text.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("PASETO_SYMMETRIC_KEY must be exactly 32 bytes, got {0}")]
    SymmetricKeyLength(usize),
    #[error("PASETO_SYMMETRIC_KEY must not be all zero bytes")]
    SymmetricKeyZero,
    #[error(
        "key {index} is not a PASERK v4 key (expected `k4.local.`, `k4.secret.` or `k4.public.`)"
    )]
    UnknownPaserk { index: usize },
    #[error(
        "key {index} is a version {version} PASERK (`k{version}.`): heimdall accepts only version 4 (`k4.`) keys"
    )]
    PaserkVersion { index: usize, version: char },
    #[error("key {index}: invalid {kind} PASERK: {reason}")]
    InvalidPaserk {
        index: usize,
        kind: &'static str,
        reason: &'static str,
    },
    #[error("key {index}: a {kind} PASERK holds {expected} bytes, this one holds {got}")]
    PaserkLength {
        index: usize,
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("key {index}: the k4.local key is all zero bytes")]
    ZeroKey { index: usize },
    #[error("key {index}: the k4.secret key has an all-zero Ed25519 seed")]
    ZeroSeed { index: usize },
    #[error(
        "key {index}: the public half of the k4.secret key does not match its seed (a corrupted or spliced key)"
    )]
    KeyPairMismatch { index: usize },
    #[error(
        "key {index}: the {kind} key is not a usable Ed25519 public key (not a curve point, or of small order)"
    )]
    WeakPublicKey { index: usize, kind: &'static str },
    #[error(
        "key {index}: the {kind} key is published in the {vector} test vectors, so anyone can forge tokens with it; generate a key with `heimdall keys generate`"
    )]
    PublishedTestKey {
        index: usize,
        kind: &'static str,
        vector: &'static str,
    },
    #[error(
        "no signing key for v4.{0} tokens is configured: set PASETO_SYMMETRIC_KEY for local tokens or add a `k4.secret.` key under `tokens.keys`"
    )]
    NoSigningKey(Purpose),
    #[error("JWT key {index}: {reason}")]
    InvalidJwtKey { index: usize, reason: &'static str },
    #[error("JWT key {index} is configured as `{expected}` but is an {found} key")]
    JwtAlgorithmMismatch {
        index: usize,
        expected: JwtAlgorithm,
        found: JwtAlgorithm,
    },
    #[error("no JWT signing key is configured: add a PKCS#8 private key under `tokens.jwt_keys`")]
    NoJwtSigningKey,
    #[error("key generation failed")]
    Generate,
    #[error("token could not be built: {0}")]
    Mint(String),
}

/// Token text for an error message: escaped and at most 64 characters. The token is
/// untrusted (a footer `kid` is read before anything is verified), and the message reaches
/// logs and terminals.
fn shown(text: &str) -> String {
    crate::redact::untrusted(text, 64)
}

/// The purpose of a token from its header, refusing other versions by name.
pub fn token_purpose(token: &str) -> Result<Purpose, TokenError> {
    if token.starts_with(LocalToken::HEADER) {
        Ok(Purpose::Local)
    } else if token.starts_with(PublicToken::HEADER) {
        Ok(Purpose::Public)
    } else {
        match token.split_once('.') {
            Some((version @ ("v1" | "v2" | "v3" | "v4"), _)) => {
                Err(TokenError::UnsupportedVersion(format!(
                    "{version}.{}",
                    crate::redact::untrusted(token.split('.').nth(1).unwrap_or(""), 16)
                )))
            }
            _ => Err(TokenError::Malformed),
        }
    }
}

/// Which purposes an authenticator accepts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Accept {
    /// Both `v4.local` and `v4.public`.
    #[default]
    Any,
    Local,
    Public,
}

impl Accept {
    fn allows(self, purpose: Purpose) -> bool {
        matches!(
            (self, purpose),
            (Self::Any, _) | (Self::Local, Purpose::Local) | (Self::Public, Purpose::Public)
        )
    }
}

/// The claims heimdall reads and writes. Unknown claims are kept in `extra`.
/// Generates a fresh key of `purpose`, returned as `(secret PASERK, public PASERK if any, kid)`.
pub fn generate_key(purpose: Purpose) -> Result<(String, Option<String>, String), KeyError> {
    match purpose {
        Purpose::Local => {
            let key = SymmetricKey::<V4>::generate().map_err(|_| KeyError::Generate)?;
            Ok((paserk_string(&key), None, paserk_string(&Id::from(&key))))
        }
        Purpose::Public => {
            let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| KeyError::Generate)?;
            Ok((
                paserk_string(&pair.secret),
                Some(paserk_string(&pair.public)),
                paserk_string(&Id::from(&pair.public)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::v4_public::PublicParts;
    use super::*;

    fn ring() -> Keyring {
        let mut ring = Keyring::default();
        ring.add_raw_symmetric(b"0123456789abcdef0123456789abcdef")
            .unwrap();
        ring.add_ephemeral_signing_key().unwrap();
        ring
    }

    #[test]
    fn a_missing_required_claim_is_named() {
        let claims = Claims::new("alice", "heimdall", Duration::from_secs(60));
        let strict = Validation {
            required: Box::new(["tenant".into()]),
            ..validation()
        };
        let err = strict
            .check(&claims, OffsetDateTime::now_utc())
            .unwrap_err();
        assert_eq!(err, TokenError::MissingClaim("tenant".into()));
        assert_eq!(err.to_string(), "claim `tenant` is missing");
    }

    fn validation() -> Validation {
        Validation {
            issuers: vec!["heimdall".into()].into(),
            audience: None,
            leeway: Duration::from_secs(0),
            required: Box::new([]),
            allow_non_expiring: false,
        }
    }

    #[test]
    fn symmetric_key_length_is_exact() {
        let mut ring = Keyring::default();
        let err = ring
            .add_raw_symmetric(b"change-this-to-32-byte-secret!!")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PASETO_SYMMETRIC_KEY must be exactly 32 bytes, got 31"
        );
        assert!(ring.add_raw_symmetric(&[7u8; 33]).is_err());
        assert!(ring.add_raw_symmetric(&[7u8; 32]).is_ok());
    }

    #[test]
    fn round_trip_both_purposes() {
        let ring = ring();
        for purpose in [Purpose::Local, Purpose::Public] {
            let mut claims = Claims::new("alice", "heimdall", Duration::from_secs(60));
            claims.roles = vec!["user".into()];
            let token = ring.mint(purpose, &claims).unwrap();
            assert!(token.starts_with(purpose.header()));
            let opened = ring.open(&token, Accept::Any, 8192).unwrap();
            assert_eq!(opened, claims);
            validation()
                .check(&opened, OffsetDateTime::now_utc())
                .unwrap();
        }
    }

    #[test]
    fn refuses_wrong_purpose_version_and_size() {
        let ring = ring();
        let claims = Claims::new("alice", "heimdall", Duration::from_secs(60));
        let local = ring.mint(Purpose::Local, &claims).unwrap();
        assert!(matches!(
            ring.open(&local, Accept::Public, 8192),
            Err(TokenError::WrongPurpose { .. })
        ));
        assert!(
            matches!(ring.open("v3.public.abc", Accept::Any, 8192), Err(TokenError::UnsupportedVersion(v)) if v == "v3.public")
        );
        assert!(matches!(
            ring.open("garbage", Accept::Any, 8192),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            ring.open(&local, Accept::Any, 10),
            Err(TokenError::TooLarge { .. })
        ));
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let claims = Claims::new("alice", "heimdall", Duration::from_secs(60));
        let later = OffsetDateTime::now_utc() + Duration::from_secs(120);
        assert!(matches!(
            validation().check(&claims, later),
            Err(TokenError::Expired(_))
        ));
        let earlier = OffsetDateTime::now_utc() - Duration::from_secs(120);
        assert!(matches!(
            validation().check(&claims, earlier),
            Err(TokenError::NotYetValid(_))
        ));
        let mut lenient = validation();
        lenient.leeway = Duration::from_secs(300);
        assert!(lenient.check(&claims, later).is_ok());
        // 20,000 years: refused, not a panic in the date arithmetic.
        let mut huge = validation();
        huge.leeway = Duration::from_secs(20_000 * 366 * 24 * 3600);
        assert_eq!(
            huge.check(&claims, later).map(|_| ()),
            Err(TokenError::LeewayOutOfRange)
        );
        huge.leeway = Duration::MAX;
        assert_eq!(
            huge.check(&claims, later).map(|_| ()),
            Err(TokenError::LeewayOutOfRange)
        );
    }

    /// The official PASETO v4.public test vectors (4-S-1, 4-S-2, 4-S-3).
    #[test]
    fn public_verification_matches_the_paseto_test_vectors() {
        let key_hex = "1eb9dbbbbc047c03fd70604e0071f0987e16b28b757225c11f00415d0e20b1a2";
        let key_bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes.try_into().unwrap()).unwrap();
        let payload = r#"{"data":"this is a signed message","exp":"2022-01-01T00:00:00+00:00"}"#;
        let footer = r#"{"kid":"zVhMiPBP9fRf2snEcT7gFTioeA9COcNy9DfgL1W60haN"}"#;
        let vectors = [
            (
                "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9bg_XBBzds8lTZShVlwwKSgeKpLT3yukTw6JUz3W4h_ExsQV-P0V54zemZDcAxFaSeef1QlXEFtkqxT1ciiQEDA",
                "",
                "",
            ),
            (
                "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9v3Jt8mx_TdM2ceTGoqwrh4yDFn0XsHvvV_D0DtwQxVrJEBMl0F2caAdgnpKlt4p7xBnx1HcO-SPo8FPp214HDw.eyJraWQiOiJ6VmhNaVBCUDlmUmYyc25FY1Q3Z0ZUaW9lQTlDT2NOeTlEZmdMMVc2MGhhTiJ9",
                footer,
                "",
            ),
            (
                "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9NPWciuD3d0o5eXJXG5pJy-DiVEoyPYWs1YSTwWHNJq6DZD3je5gf-0M4JR9ipdUSJbIovzmBECeaWmaqcaP0DQ.eyJraWQiOiJ6VmhNaVBCUDlmUmYyc25FY1Q3Z0ZUaW9lQTlDT2NOeTlEZmdMMVc2MGhhTiJ9",
                footer,
                r#"{"test-vector":"4-S-3"}"#,
            ),
        ];
        for (token, want_footer, implicit) in vectors {
            let parts = PublicParts::parse(token).unwrap();
            assert_eq!(parts.message, payload.as_bytes());
            assert_eq!(parts.footer, want_footer.as_bytes());
            assert!(parts.verify(&key, implicit.as_bytes()), "{token}");
            // The same token with another implicit assertion, or altered, does not verify.
            assert!(!parts.verify(&key, b"other"));
        }
        assert!(
            PublicParts::parse("v4.public.AAAA").is_err(),
            "shorter than a signature"
        );
        assert!(
            PublicParts::parse(&format!("{}.", vectors[0].0)).is_err(),
            "empty footer after a dot"
        );
        assert!(
            PublicParts::parse(&format!("{}=", vectors[0].0)).is_err(),
            "padding"
        );
    }

    /// Mutated tokens (flipped, dropped and inserted characters, truncations, extra dots) are
    /// refused with an error, never a panic and never an accepted token.
    #[test]
    fn mutated_tokens_are_refused_without_panicking() {
        use rand::{Rng, SeedableRng};
        let ring = ring();
        let claims = Claims::new("alice", "heimdall", Duration::from_secs(60));
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for purpose in [Purpose::Local, Purpose::Public] {
            let token = ring.mint(purpose, &claims).unwrap();
            for _ in 0..3000 {
                let mut bytes = token.clone().into_bytes();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    let c = alphabet[rng.random_range(0..alphabet.len())];
                    match rng.random_range(0..4) {
                        0 => bytes[at] = c,
                        1 => {
                            bytes.remove(at);
                        }
                        2 => bytes.insert(at, c),
                        _ => bytes.truncate(at.max(1)),
                    }
                }
                let mutated = String::from_utf8(bytes).unwrap();
                if mutated != token {
                    assert!(
                        ring.open(&mutated, Accept::Any, 8192).is_err(),
                        "accepted a mutated token: {mutated}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_keys_do_not_verify() {
        let claims = Claims::new("alice", "heimdall", Duration::from_secs(60));
        let token = ring().mint(Purpose::Public, &claims).unwrap();
        let other = ring();
        // The kid names a key the other ring does not hold.
        assert!(matches!(
            other.open(&token, Accept::Any, 8192),
            Err(TokenError::UnknownKey(_))
        ));
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Every official PASERK k4.local / k4.secret / k4.public vector (paseto-standard/
    /// test-vectors, PASERK/k4.*.json), the expect-fail ones included, is refused by name and
    /// without a panic: the valid ones because their keys are public knowledge. Vectors without
    /// a PASERK string are given as `k4.<type>.` + base64url of their key bytes.
    pub(crate) fn official_vectors() -> Vec<(&'static str, String)> {
        include_str!("../../tests/fixtures/paserk-k4-vectors.txt")
            .lines()
            .filter_map(|line| line.split_once(' ').filter(|_| !line.starts_with('#')))
            .map(|(name, paserk)| (name, paserk.to_owned()))
            .collect()
    }

    #[test]
    fn official_paserk_vectors_are_refused_by_name_without_panicking() {
        for (name, paserk) in official_vectors() {
            let mut ring = Keyring::default();
            let err = ring.add_paserk(&paserk, 3).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("key 3"), "{name}: {message}");
            // The key text is never part of the message.
            let body = paserk.rsplit('.').next().unwrap();
            assert!(!message.contains(body), "{name}: {message}");
            let expected = match name {
                "k4.local-1" => matches!(err, KeyError::ZeroKey { .. }),
                "k4.secret-1" => matches!(err, KeyError::ZeroSeed { .. }),
                "k4.public-1" => matches!(err, KeyError::WeakPublicKey { .. }),
                "k4.local-fail-2" => matches!(err, KeyError::PaserkVersion { version: '3', .. }),
                n if n.contains("fail") => matches!(
                    err,
                    KeyError::PaserkLength { .. } | KeyError::InvalidPaserk { .. }
                ),
                _ => matches!(err, KeyError::PublishedTestKey { .. }),
            };
            assert!(expected, "{name}: {err:?}");
            assert!(!ring.can_verify(Purpose::Local) && !ring.can_verify(Purpose::Public));
        }
    }

    #[test]
    fn generated_keys_load_and_malformed_ones_do_not() {
        let (local, _, local_id) = generate_key(Purpose::Local).unwrap();
        let (secret, public, public_id) = generate_key(Purpose::Public).unwrap();
        let public = public.unwrap();
        let mut ring = Keyring::default();
        ring.add_paserk(&local, 0).unwrap();
        ring.add_paserk(&secret, 1).unwrap();
        ring.add_paserk(&public, 2).unwrap();
        assert_eq!(ring.local.first().map(|k| &*k.id), Some(local_id.as_str()));
        assert_eq!(
            ring.public_keys().map(|(id, _)| id).collect::<Vec<_>>(),
            [public_id.as_str()]
        );
        assert!(ring.can_mint(Purpose::Public) && ring.can_mint(Purpose::Local));

        // A secret key whose public half belongs to another key.
        let (other, _, _) = generate_key(Purpose::Public).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mine = b64.decode(secret.trim_start_matches("k4.secret.")).unwrap();
        let theirs = b64.decode(other.trim_start_matches("k4.secret.")).unwrap();
        let spliced = [&mine[..32], &theirs[32..]].concat();
        let err = Keyring::default()
            .add_paserk(&format!("k4.secret.{}", b64.encode(spliced)), 0)
            .unwrap_err();
        assert!(
            matches!(err, KeyError::KeyPairMismatch { index: 0 }),
            "{err:?}"
        );

        for bad in [
            "k4.local.",
            "k4.local.a.b",
            "k4.local.cHFyc3R1dnd4eXp7fH1-f4CBgoOEhYaHiImKi4yNjo8=",
            "k4.local.cHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo8",
            "k4.public.!!!!",
            "k2.public.cHFyc3R1dnd4eXp7fH1-f4CBgoOEhYaHiImKi4yNjo8",
            "v4.local.x",
            "",
        ] {
            let err = Keyring::default().add_paserk(bad, 0).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("key 0"), "{bad}: {message}");
        }
    }

    #[test]
    fn all_zero_symmetric_key_is_refused() {
        let err = Keyring::default()
            .add_raw_symmetric(&[0u8; 32])
            .unwrap_err();
        assert!(matches!(err, KeyError::SymmetricKeyZero));
    }

    /// A footer `kid` is read before anything is verified: whatever it holds, the error that
    /// quotes it is one escaped line of bounded length.
    #[test]
    fn untrusted_kid_is_escaped_and_bounded_in_errors() {
        let ring = ring();
        let kid = format!(
            "x\n2025-01-01T00:00:00Z  INFO forged\r\u{1b}[2J{}",
            "a".repeat(500)
        );
        let footer = serde_json::json!({ "kid": kid }).to_string();
        let token = format!("v4.public.{}.{}", b64(&[7u8; 100]), b64(footer.as_bytes()));
        let err = ring.open(&token, Accept::Any, 8192).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, TokenError::UnknownKey(_)), "{err:?}");
        assert!(
            !message.chars().any(crate::redact::needs_escape),
            "{message:?}"
        );
        assert!(
            message.contains("x\\n2025-01-01T00:00:00Z  INFO forged\\r\\u{1b}[2J"),
            "{message}"
        );
        assert!(message.len() < 120, "{message}");
        let err = token_purpose("v3.\nforged").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
    }
}
