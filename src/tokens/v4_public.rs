//! The `v4.public` verifier, by hand: strict parsing (canonical unpadded base64, no empty
//! footer) and Ed25519 `verify_strict` over PASETO's pre-authentication encoding. Written out so
//! a reviewer can audit it here; a differential test checks it against `pasetors`.

use pasetors::version4::PublicToken;

use super::TokenError;

/// A decoded, not yet verified `v4.public` token.
pub(super) struct PublicParts {
    pub(super) message: Vec<u8>,
    signature: ed25519_dalek::Signature,
    pub(super) footer: Vec<u8>,
}

impl PublicParts {
    /// `v4.public.` base64url(message ‖ 64-byte signature) [`.` base64url(footer)], strictly:
    /// no padding, canonical base64, no empty footer after a dot.
    pub(super) fn parse(token: &str) -> Result<Self, TokenError> {
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
    pub(super) fn verify(&self, key: &ed25519_dalek::VerifyingKey, implicit: &[u8]) -> bool {
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
pub(super) fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + pieces.iter().map(|p| 8 + p.len()).sum::<usize>());
    // PAE clears the top bit of each length; lengths here are far below 2^63.
    out.extend_from_slice(&(pieces.len() as u64).to_le_bytes());
    for piece in pieces {
        out.extend_from_slice(&(piece.len() as u64 & (u64::MAX >> 1)).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}
