//! The key ring: local, public and signing keys by PASERK id, loaded from PASERK or raw bytes
//! (refusing the published test keys), and `mint` / `open` with the `kid` footer that selects
//! a key.

use std::fmt;
use std::sync::Arc;

use pasetors::Local;
use pasetors::keys::{
    AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate, SymmetricKey,
};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, PublicToken, V4};
use serde::Deserialize;

use super::v4_public::PublicParts;
use super::{Accept, Claims, KeyError, Purpose, TokenError, shown, token_purpose};

/// A verification or encryption key with its PASERK id.
pub(super) struct LocalKey {
    pub(super) id: Arc<str>,
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
    pub(super) local: Vec<LocalKey>,
    public: Vec<PublicKey>,
    signing: Option<SigningKey>,
    /// The JWT keys of upstream tokens (`tokens.jwt_keys`), rotated the same way.
    jwt: super::JwtKeys,
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
            .field("jwt", &self.jwt)
            .finish()
    }
}

pub(super) fn paserk_string(key: &dyn FormatAsPaserk) -> String {
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

    /// Adds a JWT key in PEM (see [`super::JwtKeys::add_pem`]).
    pub fn add_jwt_pem(
        &mut self,
        pem: &str,
        index: usize,
        expected: Option<super::JwtAlgorithm>,
    ) -> Result<(), KeyError> {
        self.jwt.add_pem(pem, index, expected)
    }

    /// The JWT keys: the signing one and the published ones.
    pub fn jwt(&self) -> &super::JwtKeys {
        &self.jwt
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

    /// Encrypts `payload` for heimdall itself (a login's state, a refresh envelope) with the
    /// first local key, bound to `context` by PASETO's implicit assertion: a value sealed for one
    /// context never opens in another, nor as an access token (which has no assertion).
    pub fn seal(&self, context: &[u8], payload: &[u8]) -> Result<String, KeyError> {
        let key = self
            .local
            .first()
            .ok_or(KeyError::NoSigningKey(Purpose::Local))?;
        let footer = footer_json(&key.id);
        LocalToken::encrypt(&key.key, payload, Some(footer.as_bytes()), Some(context))
            .map_err(|e| KeyError::Mint(e.to_string()))
    }

    /// Opens what [`Keyring::seal`] sealed for `context`, with the key its footer names (or any
    /// local key when it names none).
    pub fn unseal(
        &self,
        context: &[u8],
        sealed: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, TokenError> {
        if sealed.len() > max_bytes {
            return Err(TokenError::TooLarge {
                size: sealed.len(),
                limit: max_bytes,
            });
        }
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(sealed).map_err(|_| TokenError::Malformed)?;
        let kid = footer_kid(untrusted.untrusted_footer())?;
        for key in self
            .local
            .iter()
            .filter(|k| kid.as_deref().is_none_or(|kid| *k.id == *kid))
        {
            if let Ok(trusted) = LocalToken::decrypt(&key.key, &untrusted, None, Some(context)) {
                return Ok(trusted.payload().as_bytes().to_vec());
            }
        }
        Err(TokenError::BadSignature)
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
