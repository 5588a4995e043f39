//! The mechanism catalogue: named, pre-built authenticators, contextualizers, authorizers,
//! finalizers and error handlers, configured once and referenced by id from rules.
//!
//! The built-in mechanisms are a closed set, so each kind is an enum and a step dispatches with a
//! `match`: no boxed futures on the hot path. A rule step may override a mechanism's config; the
//! override is merged into the catalogue entry and built once, at load time.

pub mod authn;
pub mod authz;
pub mod context;
pub mod error_handler;
pub mod finalize;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::config::TokensConfig;
use crate::tokens::Keyring;

pub use authn::{Authenticator, AuthnError};
pub use authz::Authorizer;
pub use context::Contextualizer;
pub use error_handler::ErrorHandler;
pub use finalize::Finalizer;

/// What building a mechanism may need from the process.
pub struct BuildContext<'a> {
    pub keys: &'a Arc<Keyring>,
    pub tokens: &'a TokensConfig,
    /// The policy engine, when one is configured.
    pub cerbos: Option<&'a Arc<crate::cerbos::Cerbos>>,
    /// The principal attribute store, when NATS is configured.
    pub attributes: Option<&'a Arc<crate::attributes::PrincipalStore>>,
}

/// The kinds of mechanism, as named in the configuration, in pipeline order (an `execute`
/// list runs authenticators, then contextualizers, authorizers and finalizers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Authenticator,
    Contextualizer,
    Authorizer,
    Finalizer,
    ErrorHandler,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Authenticator => "authenticator",
            Self::Contextualizer => "contextualizer",
            Self::Authorizer => "authorizer",
            Self::Finalizer => "finalizer",
            Self::ErrorHandler => "error_handler",
        }
    }

    /// The name with its indefinite article, for messages.
    pub const fn with_article(self) -> &'static str {
        match self {
            Self::Authenticator => "an authenticator",
            Self::Contextualizer => "a contextualizer",
            Self::Authorizer => "an authorizer",
            Self::Finalizer => "a finalizer",
            Self::ErrorHandler => "an error handler",
        }
    }
}

/// One built mechanism of any kind; cloning shares the built mechanism.
#[derive(Clone)]
pub enum Mechanism {
    Authenticator(Arc<Authenticator>),
    Contextualizer(Arc<Contextualizer>),
    Authorizer(Arc<Authorizer>),
    Finalizer(Arc<Finalizer>),
    ErrorHandler(Arc<ErrorHandler>),
}

/// Builds a mechanism of `kind` and `type` from its YAML config. Errors are messages that the
/// caller prefixes with the mechanism (and rule) id.
pub fn build(
    kind: Kind,
    id: &Arc<str>,
    type_name: &str,
    config: &Value,
    ctx: &BuildContext<'_>,
) -> Result<Mechanism, String> {
    Ok(match kind {
        Kind::Authenticator => {
            Mechanism::Authenticator(Arc::new(Authenticator::build(id, type_name, config, ctx)?))
        }
        Kind::Contextualizer => {
            Mechanism::Contextualizer(Arc::new(Contextualizer::build(id, type_name, config, ctx)?))
        }
        Kind::Authorizer => {
            Mechanism::Authorizer(Arc::new(Authorizer::build(id, type_name, config, ctx)?))
        }
        Kind::Finalizer => Mechanism::Finalizer(Arc::new(Finalizer::build(id, type_name, config)?)),
        Kind::ErrorHandler => {
            Mechanism::ErrorHandler(Arc::new(ErrorHandler::build(id, type_name, config)?))
        }
    })
}

/// Parses a mechanism's config; an absent config means every default.
pub(crate) fn parse_config<T: DeserializeOwned>(config: &Value) -> Result<T, String> {
    let value = match config {
        Value::Null => Value::Mapping(serde_yaml_ng::Mapping::new()),
        other => other.clone(),
    };
    serde_yaml_ng::from_value(value).map_err(|e| format!("invalid config: {e}"))
}

/// Refuses a config for a mechanism type that takes none.
pub(crate) fn no_config(type_name: &str, config: &Value) -> Result<(), String> {
    match config {
        Value::Null => Ok(()),
        Value::Mapping(m) if m.is_empty() => Ok(()),
        _ => Err(format!("type `{type_name}` takes no config")),
    }
}

/// Merges a rule step's override into a catalogue config (top-level keys replace).
pub fn merge_config(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            let mut merged = base.clone();
            for (k, v) in over {
                merged.insert(k.clone(), v.clone());
            }
            Value::Mapping(merged)
        }
        (_, Value::Null) => base.clone(),
        (_, over) => over.clone(),
    }
}
