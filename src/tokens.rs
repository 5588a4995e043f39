//! heimdall's own tokens: PASETO v4 (`local` and `public`) key ring, minting and strict verification.
//!
//! Keys are identified by their PASERK id (`k4.lid.…` for local keys, `k4.pid.…` for public keys),
//! which minted tokens carry in their footer as `kid`, so keys rotate without downtime: add the new
//! key, let old tokens expire, remove the old key. Tokens without a `kid` (as the service heimdall
//! replaces minted them) are tried against every key of their purpose.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pasetors::Local;
use pasetors::keys::{
    AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate, SymmetricKey,
};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, PublicToken, V4};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    #[error("key generation failed")]
    Generate,
    #[error("token could not be built: {0}")]
    Mint(String),
}

/// A verification or encryption key with its PASERK id.
struct LocalKey {
    id: Arc<str>,
    key: SymmetricKey<V4>,
}

struct PublicKey {
    id: Arc<str>,
    /// Verification goes through ed25519-dalek's strict verify: faster than pasetors' backend
    /// on the cold path, and it refuses non-canonical signatures and weak keys.
    verifier: ed25519_dalek::VerifyingKey,
    paserk: String,
}

struct SigningKey {
    /// The id of the matching public key: verifiers look that up.
    id: Arc<str>,
    secret: AsymmetricSecretKey<V4>,
}

/// Every key heimdall knows. The first local key and the first secret key mint new tokens;
/// all keys verify.
#[derive(Default)]
pub struct Keyring {
    local: Vec<LocalKey>,
    public: Vec<PublicKey>,
    signing: Option<SigningKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: key material never reaches a log.
        f.debug_struct("Keyring")
            .field(
                "local",
                &self.local.iter().map(|k| &*k.id).collect::<Vec<_>>(),
            )
            .field(
                "public",
                &self.public.iter().map(|k| &*k.id).collect::<Vec<_>>(),
            )
            .field("signing", &self.signing.as_ref().map(|k| &*k.id))
            .finish()
    }
}

fn paserk_string(key: &dyn FormatAsPaserk) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = key.fmt(&mut out);
    out
}

fn key_id(id: Id) -> Arc<str> {
    Arc::from(paserk_string(&id))
}

/// Decoded key bytes, wiped when dropped (pasetors keeps and wipes its own copy).
struct KeyBytes(Vec<u8>);

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// The bytes of a PASERK body (the part after `k4.<type>.`): canonical unpadded base64url of
/// exactly `expected` bytes.
fn decode_paserk(
    body: &str,
    index: usize,
    kind: &'static str,
    expected: usize,
) -> Result<KeyBytes, KeyError> {
    use base64::Engine as _;
    if body.is_empty() {
        return Err(KeyError::InvalidPaserk {
            index,
            kind,
            reason: "the key data is missing",
        });
    }
    if body.contains('.') {
        return Err(KeyError::InvalidPaserk {
            index,
            kind,
            reason: "a PASERK has exactly three `.`-separated parts",
        });
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map(KeyBytes)
        .map_err(|_| KeyError::InvalidPaserk {
            index,
            kind,
            reason: "the key data is not canonical unpadded base64url",
        })?;
    if bytes.0.len() != expected {
        return Err(KeyError::PaserkLength {
            index,
            kind,
            expected,
            got: bytes.0.len(),
        });
    }
    Ok(bytes)
}

/// An Ed25519 verifying key that is a valid curve point and not of small order.
fn verifying_key(
    bytes: &[u8],
    index: usize,
    kind: &'static str,
) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
    let weak = || KeyError::WeakPublicKey { index, kind };
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| weak())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| weak())?;
    if key.is_weak() {
        return Err(weak());
    }
    Ok(key)
}

/// Key material published in the PASETO v4 and PASERK k4 test vectors (hex): symmetric keys,
/// Ed25519 seeds and public keys. Anyone can mint tokens with these, so they are refused
/// whatever their role; the all-zero keys are refused separately.
const PUBLISHED_KEYS: [(&str, &str); 6] = [
    (
        "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f",
        "PASERK (k4.local-2, k4.secret-2, k4.public-2) and PASETO v4 (4-E)",
    ),
    (
        "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e90",
        "PASERK (k4.local-3, k4.secret-3, k4.public-3)",
    ),
    (
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
        "PASERK (k4.secret-1)",
    ),
    (
        "1ce56a48c82ff99162a14bc544612674e5d61fb9317e65d4055780fdbcb4dc35",
        "PASERK (k4.secret-2)",
    ),
    (
        "60fe37571a5d6e7d30b15154ce4a9fb92c70c870848f4ccdf1626588097f73f7",
        "PASERK (k4.secret-3)",
    ),
    (
        "b4cbfb43df4ce210727d953e4a713307fa19bb7d9f85041438d9e11b942a3774",
        "PASETO v4 (4-S)",
    ),
];

/// The public key of the PASETO v4 `4-S` vectors (its seed is in [`PUBLISHED_KEYS`]).
const PUBLISHED_4S_PUBLIC: &str =
    "1eb9dbbbbc047c03fd70604e0071f0987e16b28b757225c11f00415d0e20b1a2";

fn refuse_published(bytes: &[u8], index: usize, kind: &'static str) -> Result<(), KeyError> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if hex == PUBLISHED_4S_PUBLIC {
        return Err(KeyError::PublishedTestKey {
            index,
            kind,
            vector: "PASETO v4 (4-S)",
        });
    }
    match PUBLISHED_KEYS
        .iter()
        .find(|(published, _)| *published == hex)
    {
        Some((_, vector)) => Err(KeyError::PublishedTestKey {
            index,
            kind,
            vector,
        }),
        None => Ok(()),
    }
}

/// The version digit of a PASERK of another version (`k3.local.…`), to name it in the error.
fn other_paserk_version(text: &str) -> Option<char> {
    let mut chars = text.chars();
    match (chars.next(), chars.next(), chars.next()) {
        (Some('k'), Some(version @ '0'..='9'), Some('.')) if version != '4' => Some(version),
        _ => None,
    }
}

impl Keyring {
    /// Adds a raw 32-byte symmetric key (the `PASETO_SYMMETRIC_KEY` contract).
    pub fn add_raw_symmetric(&mut self, raw: &[u8]) -> Result<(), KeyError> {
        if raw.len() != 32 {
            return Err(KeyError::SymmetricKeyLength(raw.len()));
        }
        if raw.iter().all(|&b| b == 0) {
            return Err(KeyError::SymmetricKeyZero);
        }
        let key =
            SymmetricKey::<V4>::from(raw).map_err(|_| KeyError::SymmetricKeyLength(raw.len()))?;
        self.push_local(key);
        Ok(())
    }

    fn push_local(&mut self, key: SymmetricKey<V4>) {
        let id = key_id(Id::from(&key));
        if !self.local.iter().any(|k| k.id == id) {
            self.local.push(LocalKey { id, key });
        }
    }

    fn push_public(&mut self, key: AsymmetricPublicKey<V4>, index: usize) -> Result<(), KeyError> {
        let id = key_id(Id::from(&key));
        if !self.public.iter().any(|k| k.id == id) {
            let verifier = verifying_key(key.as_bytes(), index, "k4.public")?;
            let paserk = paserk_string(&key);
            self.public.push(PublicKey {
                id,
                verifier,
                paserk,
            });
        }
        Ok(())
    }

    /// Adds a key given as PASERK: `k4.local.` (encrypt + decrypt), `k4.secret.` (sign, and
    /// verify through its public half) or `k4.public.` (verify only). `index` locates it in errors.
    ///
    /// The PASERK is decoded and checked here before pasetors sees it: pasetors panics on an
    /// all-zero Ed25519 seed (the official `k4.secret-1` vector), and a key published in the
    /// PASETO/PASERK test vectors, a secret key whose halves disagree or a small-order public
    /// key must be refused by name, not discovered later.
    pub fn add_paserk(&mut self, paserk: &str, index: usize) -> Result<(), KeyError> {
        let paserk = paserk.trim();
        if let Some(body) = paserk.strip_prefix("k4.local.") {
            let bytes = decode_paserk(body, index, "k4.local", 32)?;
            if bytes.0.iter().all(|&b| b == 0) {
                return Err(KeyError::ZeroKey { index });
            }
            refuse_published(&bytes.0, index, "k4.local")?;
            let key = SymmetricKey::<V4>::from(&bytes.0).map_err(|_| KeyError::PaserkLength {
                index,
                kind: "k4.local",
                expected: 32,
                got: bytes.0.len(),
            })?;
            self.push_local(key);
        } else if let Some(body) = paserk.strip_prefix("k4.secret.") {
            let bytes = decode_paserk(body, index, "k4.secret", 64)?;
            let (seed, public_half) = bytes.0.split_at(32);
            if seed.iter().all(|&b| b == 0) {
                return Err(KeyError::ZeroSeed { index });
            }
            refuse_published(seed, index, "k4.secret")?;
            refuse_published(public_half, index, "k4.secret")?;
            let seed: [u8; 32] = seed.try_into().map_err(|_| KeyError::PaserkLength {
                index,
                kind: "k4.secret",
                expected: 64,
                got: bytes.0.len(),
            })?;
            let derived = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            if derived.as_bytes() != public_half {
                return Err(KeyError::KeyPairMismatch { index });
            }
            // Checked above: the seed is non-zero and matches the public half, the two
            // conditions under which pasetors would panic or refuse.
            let secret = AsymmetricSecretKey::<V4>::from(&bytes.0)
                .map_err(|_| KeyError::KeyPairMismatch { index })?;
            let public = AsymmetricPublicKey::<V4>::from(public_half).map_err(|_| {
                KeyError::WeakPublicKey {
                    index,
                    kind: "k4.secret",
                }
            })?;
            verifying_key(public_half, index, "k4.secret")?;
            let id = key_id(Id::from(&public));
            self.push_public(public, index)?;
            if self.signing.is_none() {
                self.signing = Some(SigningKey { id, secret });
            }
        } else if let Some(body) = paserk.strip_prefix("k4.public.") {
            let bytes = decode_paserk(body, index, "k4.public", 32)?;
            refuse_published(&bytes.0, index, "k4.public")?;
            verifying_key(&bytes.0, index, "k4.public")?;
            let key =
                AsymmetricPublicKey::<V4>::from(&bytes.0).map_err(|_| KeyError::WeakPublicKey {
                    index,
                    kind: "k4.public",
                })?;
            self.push_public(key, index)?;
        } else if let Some(version) = other_paserk_version(paserk) {
            return Err(KeyError::PaserkVersion { index, version });
        } else {
            // The text is not echoed: a mistyped secret must not reach the log.
            return Err(KeyError::UnknownPaserk { index });
        }
        Ok(())
    }

    /// Generates an Ed25519 key pair that lives only in this process (development mode).
    pub fn add_ephemeral_signing_key(&mut self) -> Result<(), KeyError> {
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| KeyError::Generate)?;
        let id = key_id(Id::from(&pair.public));
        self.push_public(pair.public, 0)?;
        self.signing = Some(SigningKey {
            id,
            secret: pair.secret,
        });
        Ok(())
    }

    /// Whether any key can verify tokens of `purpose`.
    pub fn can_verify(&self, purpose: Purpose) -> bool {
        match purpose {
            Purpose::Local => !self.local.is_empty(),
            Purpose::Public => !self.public.is_empty(),
        }
    }

    /// Whether tokens of `purpose` can be minted.
    pub fn can_mint(&self, purpose: Purpose) -> bool {
        match purpose {
            Purpose::Local => !self.local.is_empty(),
            Purpose::Public => self.signing.is_some(),
        }
    }

    /// The purpose `token mint` uses when none is asked for: public when a signing key exists.
    pub fn default_mint_purpose(&self) -> Option<Purpose> {
        if self.signing.is_some() {
            Some(Purpose::Public)
        } else if !self.local.is_empty() {
            Some(Purpose::Local)
        } else {
            None
        }
    }

    /// Public verification keys as `(kid, k4.public PASERK)`, for `/.well-known/paseto-keys`.
    pub fn public_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.public.iter().map(|k| (&*k.id, k.paserk.as_str()))
    }

    /// Mints a token of `purpose` for `claims`, with the key id in the footer.
    pub fn mint(&self, purpose: Purpose, claims: &Claims) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Mint(e.to_string()))?;
        match purpose {
            Purpose::Local => {
                let key = self.local.first().ok_or(KeyError::NoSigningKey(purpose))?;
                let footer = footer_json(&key.id);
                LocalToken::encrypt(&key.key, &payload, Some(footer.as_bytes()), None)
                    .map_err(|e| KeyError::Mint(e.to_string()))
            }
            Purpose::Public => {
                let key = self
                    .signing
                    .as_ref()
                    .ok_or(KeyError::NoSigningKey(purpose))?;
                let footer = footer_json(&key.id);
                PublicToken::sign(&key.secret, &payload, Some(footer.as_bytes()), None)
                    .map_err(|e| KeyError::Mint(e.to_string()))
            }
        }
    }

    /// Checks a token's format, selects the key by footer `kid` (or tries each key of the token's
    /// purpose when there is none) and verifies or decrypts it. Claims are parsed but their
    /// times, issuer and audience are checked by [`Validation::check`].
    pub fn open(
        &self,
        token: &str,
        accept: Accept,
        max_bytes: usize,
    ) -> Result<Claims, TokenError> {
        if token.len() > max_bytes {
            return Err(TokenError::TooLarge {
                size: token.len(),
                limit: max_bytes,
            });
        }
        let purpose = token_purpose(token)?;
        if !accept.allows(purpose) {
            let allowed = match purpose {
                Purpose::Local => Purpose::Public,
                Purpose::Public => Purpose::Local,
            };
            return Err(TokenError::WrongPurpose {
                got: purpose,
                allowed,
            });
        }
        let payload = match purpose {
            Purpose::Local => self.open_local(token)?,
            Purpose::Public => self.open_public(token)?,
        };
        serde_json::from_str::<Claims>(&payload)
            .map_err(|e| TokenError::BadClaims(shown(&e.to_string())))
    }

    fn open_local(&self, token: &str) -> Result<String, TokenError> {
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let kid = footer_kid(untrusted.untrusted_footer())?;
        if self.local.is_empty() {
            return Err(TokenError::NoKey(Purpose::Local));
        }
        let candidates = self
            .local
            .iter()
            .filter(|k| kid.as_deref().is_none_or(|kid| *k.id == *kid));
        let mut tried = false;
        for key in candidates {
            tried = true;
            if let Ok(trusted) = LocalToken::decrypt(&key.key, &untrusted, None, None) {
                return Ok(trusted.payload().to_owned());
            }
        }
        match (tried, kid) {
            (false, Some(kid)) => Err(TokenError::UnknownKey(shown(&kid))),
            _ => Err(TokenError::BadSignature),
        }
    }

    fn open_public(&self, token: &str) -> Result<String, TokenError> {
        let parts = PublicParts::parse(token)?;
        let kid = footer_kid(&parts.footer)?;
        if self.public.is_empty() {
            return Err(TokenError::NoKey(Purpose::Public));
        }
        let mut tried = false;
        for key in self
            .public
            .iter()
            .filter(|k| kid.as_deref().is_none_or(|kid| *k.id == *kid))
        {
            tried = true;
            if parts.verify(&key.verifier, b"") {
                return String::from_utf8(parts.message)
                    .map_err(|_| TokenError::BadClaims("payload is not UTF-8".into()));
            }
        }
        match (tried, kid) {
            (false, Some(kid)) => Err(TokenError::UnknownKey(shown(&kid))),
            _ => Err(TokenError::BadSignature),
        }
    }
}

/// A decoded, not yet verified `v4.public` token.
struct PublicParts {
    message: Vec<u8>,
    signature: ed25519_dalek::Signature,
    footer: Vec<u8>,
}

impl PublicParts {
    /// `v4.public.` base64url(message ‖ 64-byte signature) [`.` base64url(footer)], strictly:
    /// no padding, canonical base64, no empty footer after a dot.
    fn parse(token: &str) -> Result<Self, TokenError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let rest = token
            .strip_prefix(PublicToken::HEADER)
            .ok_or(TokenError::Malformed)?;
        let (body, footer) = match rest.split_once('.') {
            Some((_, "")) => return Err(TokenError::Malformed),
            Some((body, footer)) => (body, Some(footer)),
            None => (rest, None),
        };
        let mut message = b64.decode(body).map_err(|_| TokenError::Malformed)?;
        let footer = footer
            .map(|f| b64.decode(f))
            .transpose()
            .map_err(|_| TokenError::Malformed)?
            .unwrap_or_default();
        let split = message
            .len()
            .checked_sub(ed25519_dalek::SIGNATURE_LENGTH)
            .filter(|&n| n > 0)
            .ok_or(TokenError::Malformed)?;
        let signature_bytes: [u8; ed25519_dalek::SIGNATURE_LENGTH] = message
            .get(split..)
            .and_then(|s| s.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        message.truncate(split);
        Ok(Self {
            message,
            signature: ed25519_dalek::Signature::from_bytes(&signature_bytes),
            footer,
        })
    }

    /// Verifies the signature over PAE(header, message, footer, implicit assertion).
    fn verify(&self, key: &ed25519_dalek::VerifyingKey, implicit: &[u8]) -> bool {
        let signed = pae(&[
            PublicToken::HEADER.as_bytes(),
            &self.message,
            &self.footer,
            implicit,
        ]);
        key.verify_strict(&signed, &self.signature).is_ok()
    }
}

/// PASETO's pre-authentication encoding: LE64(count) ‖ for each piece LE64(len) ‖ piece.
fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + pieces.iter().map(|p| 8 + p.len()).sum::<usize>());
    // PAE clears the top bit of each length; lengths here are far below 2^63.
    out.extend_from_slice(&(pieces.len() as u64).to_le_bytes());
    for piece in pieces {
        out.extend_from_slice(&(piece.len() as u64 & (u64::MAX >> 1)).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}

fn footer_json(kid: &str) -> String {
    serde_json::json!({ "kid": kid }).to_string()
}

/// The largest footer heimdall reads before the signature is checked.
const MAX_FOOTER_BYTES: usize = 1024;

/// The `kid` of an (untrusted) footer. The footer is authenticated later by the signature or
/// tag, so a forged `kid` only selects a key that then fails to verify.
fn footer_kid(footer: &[u8]) -> Result<Option<String>, TokenError> {
    if footer.is_empty() {
        return Ok(None);
    }
    if footer.len() > MAX_FOOTER_BYTES {
        return Err(TokenError::BadFooter);
    }
    #[derive(Deserialize)]
    struct Footer {
        kid: Option<String>,
    }
    let parsed: Footer = serde_json::from_slice(footer).map_err(|_| TokenError::BadFooter)?;
    Ok(parsed.kid)
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attr: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `aud` as PASETO writes it (a string) or as a list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn is_empty(&self) -> bool {
        matches!(self, Self::None)
    }

    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::None => false,
            Self::One(a) => a == wanted,
            Self::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// The longest lifetime of a minted token. `tokens.ttl` and `token mint --ttl` are refused
/// above it; [`Claims::new`] clamps to it so no lifetime can overflow the date arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl Claims {
    /// Claims for a new token: `iat` and `nbf` now, `exp` after `ttl` (at most [`MAX_TTL`]), a
    /// random `jti`.
    pub fn new(subject: &str, issuer: &str, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let exp = now + ttl.min(MAX_TTL);
        Self {
            sub: Some(subject.to_owned()),
            iss: Some(issuer.to_owned()),
            iat: format_time(now),
            nbf: format_time(now),
            exp: format_time(exp),
            jti: Some(random_id()),
            ..Self::default()
        }
    }

    /// Whether a claim is present, by name.
    pub fn has(&self, name: &str) -> bool {
        match name {
            "sub" => self.sub.is_some(),
            "iss" => self.iss.is_some(),
            "aud" => !self.aud.is_empty(),
            "exp" => self.exp.is_some(),
            "nbf" => self.nbf.is_some(),
            "iat" => self.iat.is_some(),
            "jti" => self.jti.is_some(),
            "roles" => !self.roles.is_empty(),
            "attr" => !self.attr.is_empty(),
            other => self.extra.contains_key(other),
        }
    }
}

fn format_time(t: OffsetDateTime) -> Option<String> {
    t.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

fn random_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn parse_time(
    value: Option<&str>,
    name: &'static str,
) -> Result<Option<OffsetDateTime>, TokenError> {
    value
        .map(|v| OffsetDateTime::parse(v, &Rfc3339).map_err(|_| TokenError::BadTime(name)))
        .transpose()
}

/// Claim rules of one authenticator.
#[derive(Debug, Clone)]
pub struct Validation {
    pub issuers: Box<[String]>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub required: Box<[String]>,
    pub allow_non_expiring: bool,
}

/// The times of a validated token.
#[derive(Debug, Clone, Copy)]
pub struct ValidTimes {
    pub expires_at: Option<OffsetDateTime>,
    pub issued_at: Option<OffsetDateTime>,
}

impl Validation {
    /// Checks `sub`, times (with leeway), issuer, audience and required claims at `now`.
    pub fn check(&self, claims: &Claims, now: OffsetDateTime) -> Result<ValidTimes, TokenError> {
        if claims.sub.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::MissingClaim("sub".into()));
        }
        let leeway = self.leeway;
        let exp = parse_time(claims.exp.as_deref(), "exp")?;
        let nbf = parse_time(claims.nbf.as_deref(), "nbf")?;
        let iat = parse_time(claims.iat.as_deref(), "iat")?;
        match exp {
            Some(exp) if now - leeway >= exp => {
                return Err(TokenError::Expired(shown(
                    claims.exp.as_deref().unwrap_or_default(),
                )));
            }
            None if !self.allow_non_expiring => return Err(TokenError::NoExpiry),
            _ => {}
        }
        if let Some(nbf) = nbf
            && now + leeway < nbf
        {
            return Err(TokenError::NotYetValid(shown(
                claims.nbf.as_deref().unwrap_or_default(),
            )));
        }
        if let Some(iat) = iat
            && now + leeway < iat
        {
            return Err(TokenError::IssuedInFuture(shown(
                claims.iat.as_deref().unwrap_or_default(),
            )));
        }
        if !self.issuers.is_empty() {
            let iss = claims
                .iss
                .as_deref()
                .ok_or_else(|| TokenError::MissingClaim("iss".into()))?;
            if !self.issuers.iter().any(|i| i == iss) {
                return Err(TokenError::WrongIssuer(shown(iss)));
            }
        }
        if let Some(aud) = &self.audience
            && !claims.aud.contains(aud)
        {
            return Err(TokenError::WrongAudience(aud.clone()));
        }
        for name in &self.required {
            if !claims.has(name) {
                return Err(TokenError::MissingClaim(name.as_str().into()));
            }
        }
        Ok(ValidTimes {
            expires_at: exp,
            issued_at: iat,
        })
    }
}

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
    use super::*;

    fn ring() -> Keyring {
        let mut ring = Keyring::default();
        ring.add_raw_symmetric(b"0123456789abcdef0123456789abcdef")
            .unwrap();
        ring.add_ephemeral_signing_key().unwrap();
        ring
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
        include_str!("../tests/fixtures/paserk-k4-vectors.txt")
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
