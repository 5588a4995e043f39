//! The rule wire format (version "1"): what operators write in YAML. Compiled into
//! [`crate::rules::RuleSet`] (the rule compiler); kept separate so the runtime types never leak into the format.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

pub use super::mechanisms::{MechanismSpec, MechanismsSpec};

/// A rule: which requests it takes and what it does with them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    /// Without `match`, the rule is reachable only through Envoy's `context_extensions`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchSpec>,
    #[serde(flatten)]
    pub pipeline: PipelineSpec,
}

/// Hosts × paths × methods; an empty list matches anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MatchSpec {
    /// `api.example.com`, `*.example.com` (any subdomain) or `*`.
    pub hosts: Vec<String>,
    /// `/documents/:id` (one segment), `/files/*rest` (the rest of the path), literals.
    pub paths: Vec<String>,
    /// `GET`, `POST`, … (requests' methods are upper-cased before matching).
    pub methods: Vec<String>,
    /// Match the paths' literal parts in any letter case, for upstreams that read `/Admin` as
    /// `/admin` (IIS, Windows file systems, case-insensitive routers).
    pub case_insensitive: bool,
}

/// The steps of a rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub execute: Vec<StepSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_error: Vec<ErrorStepSpec>,
}

/// One step: exactly one of `authenticator`, `contextualizer`, `authorizer` or `finalizer`,
/// naming a mechanism.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contextualizer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizer: Option<String>,
    /// For authenticators: the principal the step produces (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// A CEL condition; the step runs only when it is true.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Overrides merged into the mechanism's config for this rule.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub config: Value,
}

/// One error handler step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorStepSpec {
    pub error_handler: String,
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub config: Value,
}
