//! The configuration of the mechanisms that call a remote HTTP service for each Check: the
//! `http` contextualizer and the `remote` authorizer. Pure data; `crate::mechanisms::remote_call`
//! builds and checks it.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::attributes::Secret;

/// The outbound request, built per Check, and its bounds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteRequestConfig {
    /// `GET` (default), `HEAD`, `POST`, `PUT`, `PATCH` or `DELETE`.
    #[serde(default = "default_method")]
    pub method: String,
    /// An `http` or `https` URL template: `${NAME}` is replaced by the environment variable
    /// `NAME` at load; `{cel}` by the CEL expression's value per request, percent-encoded (only
    /// unreserved characters are kept, so a value cannot add a path segment, a query parameter
    /// or a fragment). Placeholders may appear in the path and query only.
    pub url: String,
    /// Header name → CEL expression for its value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Header name → a secret (read at load from `env` or `file`, never logged), e.g. an admin
    /// API token.
    #[serde(default)]
    pub secret_headers: BTreeMap<String, SecretHeaderConfig>,
    /// A CEL expression whose value is sent as the JSON body (not with `GET` or `HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Deadline of the whole exchange; keep it well below `server.check_timeout`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Largest answer read, in bytes; a larger one is a failure.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// A header whose value is a secret.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretHeaderConfig {
    /// Written before the secret, e.g. `"Bearer "`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// `{env: NAME}` or `{file: PATH}`.
    pub secret: Secret,
}

/// Answers kept by their rendered request (method, URL, headers, body); concurrent misses of
/// one key make one call. Answers with a status of 500 or more, and failures, are not kept.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteCacheConfig {
    /// How long an answer is reused; `0s` (default) turns the cache off.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Most answers kept.
    pub max_entries: u64,
}

impl Default for RemoteCacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::ZERO,
            max_entries: 10_000,
        }
    }
}

/// `http` contextualizer: asks a service and maps its answer into the subject's attributes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpContextualizerConfig {
    /// The request.
    pub request: RemoteRequestConfig,
    /// Attribute name → CEL expression over `response` (`status`, `headers`, `body`),
    /// `request` and `subject`; a `null` value leaves the attribute absent.
    pub attributes: BTreeMap<String, String>,
    /// The statuses that are an answer (default: any 2xx); every other one is a failure.
    /// Statuses of 500 or more cannot be listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_status: Vec<u16>,
    /// On a failure, skip the step (attributes absent, logged and counted) instead of failing
    /// the request with a communication error (503).
    #[serde(default)]
    pub continue_on_error: bool,
    /// The principal to enrich, by the name the rule gave it (default: the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The answer cache.
    #[serde(default)]
    pub cache: RemoteCacheConfig,
}

/// `remote` authorizer: asks a policy service and decides on its answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteAuthorizerConfig {
    /// The request.
    pub request: RemoteRequestConfig,
    /// A boolean CEL expression over `response`, `request` and `subject`, asked about 2xx
    /// answers; without it every 2xx answer allows. 401 and 403 always deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
    /// Attribute name → CEL expression over the allowing answer, layered into the subject for
    /// later steps (finalizers); a `null` value leaves the attribute absent.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The principal the attributes are added to (default: the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The reason logged on a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The answer cache.
    #[serde(default)]
    pub cache: RemoteCacheConfig,
}

fn default_method() -> String {
    "GET".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}
