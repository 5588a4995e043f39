//! JWT signing keys for tokens heimdall mints for upstreams (the `jwt` finalizer): asymmetric
//! keys only (EdDSA over Ed25519, ES256, ES384), read from PEM, published as an RFC 7517 JWK Set
//! at `/.well-known/jwks.json`.
//!
//! Rotation follows the PASETO key ring: the first private key signs, every key (the public half
//! of a private key, or a public key alone) is published, so tokens of the previous key keep
//! verifying while it is listed. A key's `kid` is its RFC 7638 thumbprint (SHA-256, base64url):
//! the same key has the same `kid` on every replica and after every restart, and nobody has to
//! invent names for keys.

use std::fmt;

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;

use super::KeyError;

/// The algorithms heimdall signs upstream JWTs with: asymmetric, so an upstream verifies with a
/// public key and cannot mint tokens itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// EdDSA over Ed25519.
    EdDsa,
    /// ECDSA over P-256 with SHA-256.
    Es256,
    /// ECDSA over P-384 with SHA-384.
    Es384,
}

impl JwtAlgorithm {
    /// The names accepted, for messages.
    pub const NAMES: &'static str = "EdDSA, ES256, ES384";

    /// The algorithm named `name` (its JOSE name), or why it is refused.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "EdDSA" => Ok(Self::EdDsa),
            "ES256" => Ok(Self::Es256),
            "ES384" => Ok(Self::Es384),
            "HS256" | "HS384" | "HS512" => Err(format!(
                "`{name}` is an HMAC algorithm: every upstream would need heimdall's secret to \
                 verify, and could then mint tokens itself; use an asymmetric key ({})",
                Self::NAMES
            )),
            "none" | "None" | "NONE" => Err(format!(
                "`{name}` means unsigned tokens, which anyone can forge; use {}",
                Self::NAMES
            )),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => Err(format!(
                "RSA (`{name}`) is not supported: use {}",
                Self::NAMES
            )),
            other => Err(format!(
                "unknown algorithm `{}` (known: {})",
                crate::redact::untrusted(other, 32),
                Self::NAMES
            )),
        }
    }

    /// The JOSE name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    const fn jose(self) -> Algorithm {
        match self {
            Self::EdDsa => Algorithm::EdDSA,
            Self::Es256 => Algorithm::ES256,
            Self::Es384 => Algorithm::ES384,
        }
    }

    /// aws-lc-rs's verification algorithm, to check a public key is a point of its curve.
    fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        match self {
            Self::EdDsa => &aws_lc_rs::signature::ED25519,
            Self::Es256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key that signs, with its prepared header (`alg`, `kid`, `typ: JWT`).
struct JwtSigner {
    header: Header,
    key: EncodingKey,
}

/// heimdall's JWT keys: published ones by `kid`, and the one that signs.
#[derive(Default)]
pub struct JwtKeys {
    published: Vec<Jwk>,
    signer: Option<JwtSigner>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only: key material never reaches a log.
        f.debug_struct("JwtKeys")
            .field(
                "published",
                &self
                    .published
                    .iter()
                    .map(|k| k.common.key_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .field("signing", &self.signing_kid())
            .finish()
    }
}

impl JwtKeys {
    /// Adds a PEM key: a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`; signs when it is the
    /// first, is published either way) or an SPKI public key (`-----BEGIN PUBLIC KEY-----`;
    /// published only). `expected` is the algorithm the configuration says the key is for;
    /// `index` locates it in errors, which never quote the key.
    pub fn add_pem(
        &mut self,
        pem: &str,
        index: usize,
        expected: Option<JwtAlgorithm>,
    ) -> Result<(), KeyError> {
        let pem = pem.trim();
        let bad = |reason: &'static str| KeyError::InvalidJwtKey { index, reason };
        let label = pem
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.split_once("-----"))
            .map(|(label, _)| label)
            .ok_or(bad(
                "not a PEM key; HMAC secrets are refused (upstreams would need the secret to \
                 verify); give a PKCS#8 Ed25519 or EC private key",
            ))?;
        let (algorithm, jwk, signer) = match label {
            "PRIVATE KEY" => {
                let (algorithm, key, jwk) = private_key(pem.as_bytes())
                    .ok_or(bad("not a PKCS#8 Ed25519, P-256 or P-384 private key"))?;
                (algorithm, jwk, Some(key))
            }
            "PUBLIC KEY" => {
                let (algorithm, jwk) = public_key(pem.as_bytes())
                    .ok_or(bad("not an Ed25519, P-256 or P-384 public key (SPKI)"))?;
                (algorithm, jwk, None)
            }
            "EC PRIVATE KEY" => {
                return Err(bad(
                    "a SEC1 EC key: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`",
                ));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(bad(
                    "an encrypted private key: heimdall reads unencrypted PKCS#8 (keep it in a \
                     secret file or variable instead)",
                ));
            }
            "RSA PRIVATE KEY" | "RSA PUBLIC KEY" => {
                return Err(bad("RSA keys are not supported: use Ed25519 or P-256"));
            }
            _ => return Err(bad("not a `PRIVATE KEY` or `PUBLIC KEY` PEM block")),
        };
        if let Some(expected) = expected
            && expected != algorithm
        {
            return Err(KeyError::JwtAlgorithmMismatch {
                index,
                expected,
                found: algorithm,
            });
        }
        let jwk =
            published(jwk, algorithm).map_err(|_| bad("its thumbprint cannot be computed"))?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        if let Some(key) = signer
            && self.signer.is_none()
        {
            let mut header = Header::new(algorithm.jose());
            header.kid = Some(kid.clone());
            self.signer = Some(JwtSigner { header, key });
        }
        if !self
            .published
            .iter()
            .any(|k| k.common.key_id == jwk.common.key_id)
        {
            self.published.push(jwk);
        }
        Ok(())
    }

    /// Whether a key can sign.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// The `kid` of the signing key.
    pub fn signing_kid(&self) -> Option<&str> {
        self.signer.as_ref().and_then(|s| s.header.kid.as_deref())
    }

    /// The algorithm of the signing key.
    pub fn signing_algorithm(&self) -> Option<&'static str> {
        self.signer.as_ref().map(|s| match s.header.alg {
            Algorithm::EdDSA => JwtAlgorithm::EdDsa.as_str(),
            Algorithm::ES384 => JwtAlgorithm::Es384.as_str(),
            _ => JwtAlgorithm::Es256.as_str(),
        })
    }

    /// The JWK Set of every published key (RFC 7517), for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.published })
    }

    /// Signs `claims` with the signing key, `kid` in the header.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        let signer = self.signer.as_ref().ok_or(KeyError::NoJwtSigningKey)?;
        jsonwebtoken::encode(&signer.header, claims, &signer.key)
            .map_err(|e| KeyError::Mint(e.to_string()))
    }
}

/// A PKCS#8 private key: its algorithm, the signing key and its public JWK. aws-lc-rs checks
/// the key (that the point is on the curve, that the key pair is consistent) while the JWK is
/// derived.
fn private_key(pem: &[u8]) -> Option<(JwtAlgorithm, EncodingKey, Jwk)> {
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        let jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).ok()?;
        return Some((JwtAlgorithm::EdDsa, key, jwk));
    }
    let key = EncodingKey::from_ec_pem(pem).ok()?;
    [JwtAlgorithm::Es256, JwtAlgorithm::Es384]
        .into_iter()
        .find_map(|algorithm| {
            Jwk::from_encoding_key(&key, algorithm.jose())
                .ok()
                .map(|jwk| (algorithm, jwk))
        })
        .map(|(algorithm, jwk)| (algorithm, key, jwk))
}

/// An SPKI public key: its algorithm and JWK, once aws-lc-rs accepts the point for the curve.
fn public_key(pem: &[u8]) -> Option<(JwtAlgorithm, Jwk)> {
    let (candidates, key): (&[JwtAlgorithm], DecodingKey) = match DecodingKey::from_ed_pem(pem) {
        Ok(key) => (&[JwtAlgorithm::EdDsa], key),
        Err(_) => (
            &[JwtAlgorithm::Es256, JwtAlgorithm::Es384],
            DecodingKey::from_ec_pem(pem).ok()?,
        ),
    };
    candidates.iter().find_map(|&algorithm| {
        let jwk = Jwk::from_decoding_key(&key, Some(algorithm.jose())).ok()?;
        let point = public_point(&jwk)?;
        aws_lc_rs::signature::ParsedPublicKey::new(algorithm.verification(), &point).ok()?;
        Some((algorithm, jwk))
    })
}

/// The public key of a JWK as its curve's raw encoding (Ed25519's 32 bytes, or the
/// uncompressed `04 || x || y` point).
fn public_point(jwk: &Jwk) -> Option<Vec<u8>> {
    use jsonwebtoken::jwk::AlgorithmParameters;
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    };
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) => decode(&p.x),
        AlgorithmParameters::EllipticCurve(p) => {
            let mut point = vec![4];
            point.extend(decode(&p.x)?);
            point.extend(decode(&p.y)?);
            Some(point)
        }
        _ => None,
    }
}

/// The JWK as published: `kid` (the RFC 7638 thumbprint), `alg` and `use: sig`.
fn published(mut jwk: Jwk, algorithm: JwtAlgorithm) -> Result<Jwk, jsonwebtoken::errors::Error> {
    let kid = jwk.thumbprint(ThumbprintHash::SHA256)?;
    jwk.common.key_id = Some(kid);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(algorithm.jose().into());
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh PKCS#8 key as PEM, and its SPKI public key as PEM.
    fn pem_pair(algorithm: JwtAlgorithm) -> (String, String) {
        let pair = crate::tokens::jwt::test_keys::generate(algorithm);
        (pair.private_pem, pair.public_pem)
    }

    #[test]
    fn the_first_private_key_signs_and_every_key_is_published() {
        let (old_private, _) = pem_pair(JwtAlgorithm::EdDsa);
        let (new_private, _) = pem_pair(JwtAlgorithm::Es256);
        let (_, retired_public) = pem_pair(JwtAlgorithm::Es384);
        let mut keys = JwtKeys::default();
        keys.add_pem(&new_private, 0, Some(JwtAlgorithm::Es256))
            .unwrap();
        keys.add_pem(&old_private, 1, None).unwrap();
        keys.add_pem(&retired_public, 2, None).unwrap();
        // The same key twice is published once.
        keys.add_pem(&old_private, 3, None).unwrap();
        let jwks = keys.jwks();
        let listed = jwks["keys"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{jwks}");
        assert_eq!(listed[0]["kid"].as_str(), keys.signing_kid());
        assert_eq!(keys.signing_algorithm(), Some("ES256"));
        for (jwk, (kty, crv, alg)) in listed.iter().zip([
            ("EC", "P-256", "ES256"),
            ("OKP", "Ed25519", "EdDSA"),
            ("EC", "P-384", "ES384"),
        ]) {
            assert_eq!(jwk["kty"], kty, "{jwk}");
            assert_eq!(jwk["crv"], crv, "{jwk}");
            assert_eq!(jwk["alg"], alg, "{jwk}");
            assert_eq!(jwk["use"], "sig", "{jwk}");
            assert_eq!(jwk["kid"].as_str().unwrap().len(), 43, "{jwk}");
            assert!(jwk.get("d").is_none(), "no private part: {jwk}");
        }
        let token = keys.sign(&serde_json::json!({"sub": "alice"})).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), keys.signing_kid());
    }

    #[test]
    fn a_public_key_alone_does_not_sign() {
        let (_, public) = pem_pair(JwtAlgorithm::EdDsa);
        let mut keys = JwtKeys::default();
        keys.add_pem(&public, 0, None).unwrap();
        assert!(!keys.can_sign());
        assert!(matches!(
            keys.sign(&serde_json::json!({})),
            Err(KeyError::NoJwtSigningKey)
        ));
    }

    #[test]
    fn refuses_secrets_rsa_sec1_and_mismatched_algorithms_without_quoting_the_key() {
        let (ed, _) = pem_pair(JwtAlgorithm::EdDsa);
        let cases = [
            (
                "a-very-secret-hmac-key".to_owned(),
                "HMAC secrets are refused",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----".to_owned(),
                "openssl pkcs8 -topk8",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----".to_owned(),
                "RSA keys are not supported",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----".to_owned(),
                "not a PKCS#8 Ed25519, P-256 or P-384 private key",
            ),
        ];
        for (pem, expected) in cases {
            let err = JwtKeys::default().add_pem(&pem, 4, None).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("JWT key 4: "), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("secret-hmac") && !message.contains("MIIE"));
        }
        let err = JwtKeys::default()
            .add_pem(&ed, 1, Some(JwtAlgorithm::Es256))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "JWT key 1 is configured as `ES256` but is an EdDSA key"
        );
    }

    #[test]
    fn hmac_none_and_rsa_algorithms_are_refused_by_name() {
        assert!(JwtAlgorithm::parse("HS256").unwrap_err().contains("HMAC"));
        assert!(
            JwtAlgorithm::parse("none")
                .unwrap_err()
                .contains("unsigned")
        );
        assert!(JwtAlgorithm::parse("RS256").unwrap_err().contains("RSA"));
        assert!(JwtAlgorithm::parse("ES512").unwrap_err().contains("known"));
        assert_eq!(JwtAlgorithm::parse("EdDSA"), Ok(JwtAlgorithm::EdDsa));
    }

    #[test]
    fn a_point_off_the_curve_is_refused() {
        let (_, public) = pem_pair(JwtAlgorithm::Es256);
        let body: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let broken = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert!(JwtKeys::default().add_pem(&broken, 0, None).is_err());
    }
}

/// Key generation for tests and the testkit: fresh PKCS#8 and SPKI PEM pairs.
#[cfg(any(test, feature = "testing"))]
pub mod test_keys {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair as _,
    };
    use base64::Engine as _;

    use super::JwtAlgorithm;

    /// A generated key pair as PEM.
    pub struct PemPair {
        /// `-----BEGIN PRIVATE KEY-----` (PKCS#8 v1).
        pub private_pem: String,
        /// `-----BEGIN PUBLIC KEY-----` (SPKI).
        pub public_pem: String,
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// A fresh key pair for `algorithm`; panics if the RNG fails (tests only).
    #[expect(
        clippy::expect_used,
        reason = "test helper: key generation cannot fail"
    )]
    pub fn generate(algorithm: JwtAlgorithm) -> PemPair {
        let (private, public) = match algorithm {
            JwtAlgorithm::EdDsa => {
                let pair = Ed25519KeyPair::generate().expect("generate Ed25519");
                let private = pair.to_pkcs8v1().expect("PKCS#8 v1");
                let public = pair.public_key().as_der().expect("SPKI");
                (private.as_ref().to_vec(), public.as_ref().to_vec())
            }
            JwtAlgorithm::Es256 | JwtAlgorithm::Es384 => {
                let alg = match algorithm {
                    JwtAlgorithm::Es384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
                    _ => &ECDSA_P256_SHA256_FIXED_SIGNING,
                };
                let pair = EcdsaKeyPair::generate(alg).expect("generate ECDSA");
                let private = pair.to_pkcs8v1().expect("PKCS#8 v1");
                let public = pair.public_key().as_der().expect("SPKI");
                (private.as_ref().to_vec(), public.as_ref().to_vec())
            }
        };
        PemPair {
            private_pem: pem("PRIVATE KEY", &private),
            public_pem: pem("PUBLIC KEY", &public),
        }
    }
}
