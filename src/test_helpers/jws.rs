//! Forged and tampered JWTs for the tests of the `jwt` authenticator: what an attacker can make
//! without the provider's private key (`alg: none`, HMAC keyed with public key bytes, a key of
//! its own, a payload swapped under a real signature).

use base64::Engine as _;
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use serde_json::Value;

use super::tools;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(part: &str) -> Result<Value, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("base64: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("JSON: {e}"))
}

/// The header and claims of a JWT, unverified.
pub fn decode(token: &str) -> Result<(Value, Value), String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims)) = (parts.next(), parts.next()) else {
        return Err("not a JWT".into());
    };
    Ok((unb64(header)?, unb64(claims)?))
}

/// `header.claims.` with `alg: none` and no signature.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// HS256 keyed with `secret` (e.g. the provider's public key bytes: key confusion).
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> Result<String, String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// RS256 signed with the test-only key `tests/fixtures/oidc/test-rsa-a.pem`, which no
/// provider publishes, under `kid`.
pub fn rs256_foreign(kid: &str, claims: &Value) -> Result<String, String> {
    let path = tools::repo_root().join("tests/fixtures/oidc/test-rsa-a.pem");
    let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new(kid.to_owned())))
        .map_err(|e| format!("test key: {e}"))?;
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key
        .sign(
            &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            input.as_bytes(),
        )
        .map_err(|e| format!("sign: {e}"))?;
    Ok(format!("{input}.{}", b64(&signature)))
}

/// `token` with its claims replaced by `claims`, header and signature kept.
pub fn with_claims(token: &str, claims: &Value) -> Result<String, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    Ok(format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    ))
}
