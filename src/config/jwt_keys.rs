//! `tokens.jwt_keys`: where the keys of upstream JWTs come from. A private key is read from a
//! file or an environment variable, never inline (a configuration file is not a secret store);
//! a public key (a retired key still published) may be inline.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::tokens::JwtAlgorithm;

/// One JWT key: `{file: PATH}`, `{env: NAME}` or `{pem: "-----BEGIN PUBLIC KEY-----…"}`, with an
/// optional `algorithm` it must be for.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "JwtKeySpec", into = "JwtKeySpec")]
pub struct JwtKeySource {
    pub material: JwtKeyMaterial,
    pub algorithm: Option<JwtAlgorithm>,
}

/// Where the PEM text is.
#[derive(Debug, Clone)]
pub enum JwtKeyMaterial {
    File(PathBuf),
    Env(String),
    /// A public key, inline.
    Pem(String),
}

/// A JWT signing or published key (PEM): PKCS#8 private keys (Ed25519, P-256, P-384) from a file
/// or an environment variable; SPKI public keys also inline.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct JwtKeySpec {
    /// A file holding the PEM key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    /// An environment variable holding the PEM key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
    /// A public key inline (`-----BEGIN PUBLIC KEY-----`); private keys are refused inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pem: Option<String>,
    /// The algorithm the key must be for: `EdDSA`, `ES256` or `ES384` (checked at load; HMAC and
    /// `none` are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    algorithm: Option<String>,
}

impl TryFrom<JwtKeySpec> for JwtKeySource {
    type Error = String;

    fn try_from(spec: JwtKeySpec) -> Result<Self, Self::Error> {
        let material = match (spec.file, spec.env, spec.pem) {
            (Some(file), None, None) => JwtKeyMaterial::File(file),
            (None, Some(env), None) => JwtKeyMaterial::Env(env),
            (None, None, Some(pem)) if pem.trim().starts_with("-----BEGIN PUBLIC KEY-----") => {
                JwtKeyMaterial::Pem(pem)
            }
            // Whatever it is, it is not shown: it may be a private key or a secret.
            (None, None, Some(_)) => {
                return Err(
                    "an inline `pem` must be a public key (`-----BEGIN PUBLIC KEY-----`); \
                     give a private key as `{env: NAME}` or `{file: PATH}` so it stays out of \
                     the configuration"
                        .into(),
                );
            }
            _ => return Err("a JWT key needs exactly one of `file`, `env` or `pem`".into()),
        };
        let algorithm = spec
            .algorithm
            .map(|name| JwtAlgorithm::parse(&name))
            .transpose()?;
        Ok(Self {
            material,
            algorithm,
        })
    }
}

impl From<JwtKeySource> for JwtKeySpec {
    fn from(source: JwtKeySource) -> Self {
        let (file, env, pem) = match source.material {
            JwtKeyMaterial::File(file) => (Some(file), None, None),
            JwtKeyMaterial::Env(env) => (None, Some(env), None),
            JwtKeyMaterial::Pem(pem) => (None, None, Some(pem)),
        };
        Self {
            file,
            env,
            pem,
            algorithm: source.algorithm.map(|a| a.as_str().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<JwtKeySource, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_each_source_and_refuses_inline_secrets_and_symmetric_algorithms() {
        assert!(matches!(
            parse("{file: /k.pem, algorithm: EdDSA}").unwrap(),
            JwtKeySource {
                material: JwtKeyMaterial::File(_),
                algorithm: Some(JwtAlgorithm::EdDsa)
            }
        ));
        assert!(matches!(
            parse("{env: JWT_KEY}").unwrap().material,
            JwtKeyMaterial::Env(_)
        ));
        let inline = parse("{pem: \"-----BEGIN PRIVATE KEY-----\\nTOPSECRET\"}").unwrap_err();
        assert!(inline.contains("must be a public key"), "{inline}");
        assert!(!inline.contains("TOPSECRET"), "{inline}");
        let hmac = parse("{file: /k, algorithm: HS256}").unwrap_err();
        assert!(hmac.contains("HMAC"), "{hmac}");
        let none = parse("{file: /k, algorithm: none}").unwrap_err();
        assert!(none.contains("unsigned"), "{none}");
        let both = parse("{file: /k, env: K}").unwrap_err();
        assert!(both.contains("exactly one"), "{both}");
        let unknown = parse("{file: /k, kid: x}").unwrap_err();
        assert!(unknown.contains("unknown field `kid`"), "{unknown}");
    }

    /// The key ring reads `tokens.jwt_keys` from the environment; a missing variable is named,
    /// and neither the dump nor the key ring's debug output holds the private key.
    #[test]
    fn the_key_ring_reads_jwt_keys_and_never_shows_them() {
        use std::collections::HashMap;

        use crate::config::{Config, Origin};
        let yaml = "version: \"1\"\ntokens:\n  jwt_keys: [{env: JWT_KEY, algorithm: ES256}]\n";
        let config = Config::parse(yaml, &Origin::Embedded).unwrap();
        let missing = config
            .keyring(&HashMap::<String, String>::new())
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "JWT key 0: environment variable `JWT_KEY` is not set"
        );
        let pem = crate::tokens::jwt::test_keys::generate(JwtAlgorithm::Es256).private_pem;
        let env = HashMap::from([("JWT_KEY".to_owned(), pem.clone())]);
        let keys = config.keyring(&env).unwrap();
        assert_eq!(keys.jwt().signing_algorithm(), Some("ES256"));
        let body = pem.lines().nth(1).unwrap();
        assert!(!format!("{keys:?}").contains(body));
        assert!(!config.redacted_yaml().contains(body));
        assert!(config.redacted_yaml().contains("env: JWT_KEY"));
    }
}
