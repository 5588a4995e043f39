//! An independent verifier of the tokens heimdall mints for upstreams: the node script
//! [`SCRIPT`] checks a JWT with the npm package `jose` against heimdall's
//! `/.well-known/jwks.json`, and a PASETO `v4.public` token with node's own crypto against
//! `/.well-known/paseto-keys`. Nothing of heimdall's code (nor its crates) is involved.
//!
//! Found as [`tools::require`] finds a binary: `node` on the usual paths, `jose` in
//! [`oidc::npm_modules`] (it comes with oidc-provider). Outside CI a missing one skips the test,
//! in CI it fails it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use super::process::{fail, fresh_dir};
use super::{oidc, tools};
use crate::tokens::JwtAlgorithm;
use crate::tokens::jwt::test_keys;

/// The verifier, relative to the repository root.
pub const SCRIPT: &str = "tests/fixtures/verify-upstream-token.mjs";
/// The bound on one verification (node's start and the key fetch included).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// What a verified token held: its (protected) header and its claims.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Value,
    pub payload: Value,
}

/// node with `jose` at hand.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    node: PathBuf,
}

impl TokenVerifier {
    /// Finds node and jose; `None` when one is missing outside CI.
    pub fn require() -> Option<TokenVerifier> {
        let node = tools::require("node")?;
        let manifest = oidc::npm_modules().join("jose").join("package.json");
        if !manifest.is_file() {
            if tools::in_ci() {
                fail(&format!(
                    "jose is not installed ({} is missing): run `make tools`",
                    manifest.display()
                ));
            }
            eprintln!("skipping: jose not installed, run `make tools`");
            return None;
        }
        Some(TokenVerifier { node })
    }

    /// Verifies a JWT against the JWK Set of the heimdall whose side port is `side_port`, for
    /// `issuer` and `audience`.
    pub async fn jwt(
        &self,
        token: &str,
        side_port: SocketAddr,
        issuer: &str,
        audience: &str,
    ) -> Result<Verified, String> {
        let jwks = format!("http://{side_port}/.well-known/jwks.json");
        self.run(&[
            ("MODE", "jwt"),
            ("TOKEN", token),
            ("JWKS_URL", &jwks),
            ("ISSUER", issuer),
            ("AUDIENCE", audience),
        ])
        .await
    }

    /// Verifies a PASETO `v4.public` token against the keys of the heimdall whose side port is
    /// `side_port`, for `issuer` and `audience`.
    pub async fn paseto(
        &self,
        token: &str,
        side_port: SocketAddr,
        issuer: &str,
        audience: &str,
    ) -> Result<Verified, String> {
        let keys = format!("http://{side_port}/.well-known/paseto-keys");
        self.run(&[
            ("MODE", "paseto"),
            ("TOKEN", token),
            ("KEYS_URL", &keys),
            ("ISSUER", issuer),
            ("AUDIENCE", audience),
        ])
        .await
    }

    async fn run(&self, env: &[(&str, &str)]) -> Result<Verified, String> {
        let mut command = Command::new(&self.node);
        command
            .arg(tools::repo_root().join(SCRIPT))
            .current_dir(tools::repo_root())
            .env("HEIMDALL_NPM_MODULES", oidc::npm_modules())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(VERIFY_TIMEOUT, command.output())
            .await
            .map_err(|_| format!("the verifier did not finish within {VERIFY_TIMEOUT:?}"))?
            .map_err(|e| format!("run node: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let mut document: Value =
            serde_json::from_str(line).map_err(|e| format!("verifier printed {line:?}: {e}"))?;
        Ok(Verified {
            header: document
                .get_mut("header")
                .map(Value::take)
                .unwrap_or_default(),
            payload: document
                .get_mut("payload")
                .map(Value::take)
                .unwrap_or_default(),
        })
    }
}

/// A fresh JWT key for `algorithm`, its PKCS#8 PEM written to a file of its own: the path, and the
/// key's SPKI public PEM.
pub fn jwt_key_file(algorithm: JwtAlgorithm) -> (PathBuf, String) {
    let pair = test_keys::generate(algorithm);
    let path = fresh_dir("jwt-key")
        .unwrap_or_else(|e| fail(&e))
        .join("key.pem");
    std::fs::write(&path, &pair.private_pem)
        .unwrap_or_else(|e| fail(&format!("write {}: {e}", path.display())));
    (path, pair.public_pem)
}

/// A fresh JWT private key for `algorithm`, as PKCS#8 PEM text.
pub fn generate_jwt_key(algorithm: JwtAlgorithm) -> String {
    test_keys::generate(algorithm).private_pem
}
