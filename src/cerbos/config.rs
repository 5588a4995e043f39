//! How heimdall reaches Cerbos: the `cerbos` configuration section and its TLS settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CerbosError;

/// How heimdall reaches Cerbos.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CerbosConfig {
    /// `host:port` or `http(s)://host:port` of the PDP's gRPC API (`CERBOS_GRPC_URL`).
    /// Credentials in the URL are shown as `user:***` in the configuration dump and in logs.
    #[serde(serialize_with = "crate::redact::serialize_redacted_url")]
    pub url: String,
    /// Deadline of one call; keep it below Envoy's ext_authz timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Decision cache: entries and lifetime (0 entries disables it).
    pub cache_entries: u64,
    /// HTTP/2 connections to the PDP, used in turn: one connection serializes every call's
    /// frames on one TCP stream under load.
    pub connections: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// How often readiness probes the PDP's health.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub health_interval: Duration,
    /// TLS to the PDP. An `https://` URL turns it on with the system's roots; this section adds
    /// a private CA, a client certificate (mTLS) or the name to verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<CerbosTls>,
    /// The role a principal without roles is asked about as (Cerbos refuses a principal with
    /// none). Empty: such a principal is denied without asking Cerbos.
    pub default_role: String,
    /// Most resources in one `CheckResources` call, and most actions per resource: the PDP's
    /// `server.requestLimits` (both 50 by default). More is refused before it reaches Cerbos.
    pub max_resources: usize,
    pub max_actions: usize,
}

/// TLS settings for the connection to Cerbos.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CerbosTls {
    /// PEM file of the CA that signed the PDP's certificate (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for a PDP that requires mTLS.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name the PDP's certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
}

impl Default for CerbosConfig {
    fn default() -> Self {
        Self {
            url: "cerbos:3593".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            cache_entries: 100_000,
            connections: 4,
            cache_ttl: Duration::from_secs(30),
            health_interval: Duration::from_secs(2),
            tls: None,
            default_role: DEFAULT_ROLE.into(),
            max_resources: 50,
            max_actions: 50,
        }
    }
}

/// The role of a principal without roles unless `cerbos.default_role` says otherwise.
pub const DEFAULT_ROLE: &str = "anonymous";

/// The client TLS settings: system roots unless a CA file is given, optional client identity.
pub(super) fn tls_config(
    tls: Option<&CerbosTls>,
) -> Result<tonic::transport::ClientTlsConfig, CerbosError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| CerbosError::Tls(format!("cannot read `{}`: {e}", path.display())))
    };
    let mut config = ClientTlsConfig::new();
    let Some(tls) = tls else {
        return Ok(config.with_native_roots());
    };
    config = match &tls.ca_file {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?))
        }
        (None, None) => {}
        _ => {
            return Err(CerbosError::Tls(
                "`cert_file` and `key_file` go together".into(),
            ));
        }
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}
