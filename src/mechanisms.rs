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
pub mod http_contextualizer;
pub mod introspection;
pub mod jwt;
pub mod provider;
pub mod remote_authorizer;
pub mod remote_call;
mod token_source;

use std::sync::Arc;

use serde_yaml_ng::Value;

use crate::config::TokensConfig;
pub use crate::config::mechanisms::Kind;
use crate::config::mechanisms::{
    AuthenticatorSpec, AuthorizerSpec, ContextualizerSpec, ErrorHandlerSpec, FinalizerSpec,
    SpecError, parse,
};
use crate::expr::ExprError;
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
    /// The deadline of a decision: every outbound call of a mechanism ends before it.
    pub check_timeout: std::time::Duration,
    /// Counters of the calls to identity providers (`jwt`, `oauth2_introspection`).
    pub provider_metrics: &'a provider::ProviderMetrics,
    /// The metrics of mechanisms that call remote services (`None`: counted, not exported).
    pub remote_calls: Option<&'a remote_call::RemoteCallMetrics>,
}

/// Why a mechanism cannot be built from its spec.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no Cerbos is configured: add a `cerbos` section or set CERBOS_GRPC_URL")]
    NoCerbos,
    #[error("no attribute store is configured: add a `nats` section or set NATS_URL")]
    NoAttributeStore,
    #[error(
        "no key can verify the accepted tokens: configure `tokens.keys` or PASETO_SYMMETRIC_KEY"
    )]
    NoVerifyingKey,
    /// An expression of the config does not compile; `what` names it (`header `x-user``).
    #[error("{what}: {source}")]
    Expr {
        what: Box<str>,
        #[source]
        source: ExprError,
    },
    /// The expression that is the whole config (`cel`'s `expression`) does not compile.
    #[error(transparent)]
    Expression(ExprError),
    #[error("`{0}` is not a valid header name")]
    HeaderName(Box<str>),
    /// A setting out of its range, with why.
    #[error("{0}")]
    Invalid(Box<str>),
}

impl BuildError {
    pub(crate) fn expr(what: impl Into<Box<str>>) -> impl FnOnce(ExprError) -> Self {
        let what = what.into();
        move |source| Self::Expr { what, source }
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

/// Builds a mechanism of `kind` and `type` from its YAML config: the config is read into the
/// kind's typed spec, the mechanism is built from that.
pub fn build(
    kind: Kind,
    id: &Arc<str>,
    type_name: &str,
    config: &Value,
    ctx: &BuildContext<'_>,
) -> Result<Mechanism, BuildError> {
    Ok(match kind {
        Kind::Authenticator => Mechanism::Authenticator(Arc::new(Authenticator::from_spec(
            id,
            parse::<AuthenticatorSpec>(type_name, config)?,
            ctx,
        )?)),
        Kind::Contextualizer => Mechanism::Contextualizer(Arc::new(Contextualizer::from_spec(
            id,
            parse::<ContextualizerSpec>(type_name, config)?,
            ctx,
        )?)),
        Kind::Authorizer => Mechanism::Authorizer(Arc::new(Authorizer::from_spec(
            id,
            parse::<AuthorizerSpec>(type_name, config)?,
            ctx,
        )?)),
        Kind::Finalizer => Mechanism::Finalizer(Arc::new(Finalizer::from_spec(
            id,
            parse::<FinalizerSpec>(type_name, config)?,
            ctx,
        )?)),
        Kind::ErrorHandler => Mechanism::ErrorHandler(Arc::new(ErrorHandler::from_spec(
            id,
            parse::<ErrorHandlerSpec>(type_name, config)?,
        )?)),
    })
}

/// Runs `f` with the build context of a process that has only `keys` and `tokens`: no Cerbos, no
/// attribute store, the default Check deadline; for unit tests that build one mechanism.
#[cfg(test)]
pub(crate) fn with_test_context<T>(
    keys: &Arc<Keyring>,
    tokens: &TokensConfig,
    f: impl FnOnce(&BuildContext<'_>) -> T,
) -> T {
    let provider_metrics = provider::ProviderMetrics::default();
    f(&BuildContext {
        keys,
        tokens,
        cerbos: None,
        attributes: None,
        check_timeout: crate::config::ServerConfig::default().check_timeout,
        provider_metrics: &provider_metrics,
        remote_calls: None,
    })
}

/// A header name as configured, checked and lower-cased.
pub(crate) fn header_name(name: &str) -> Result<Arc<str>, BuildError> {
    let parsed =
        http::HeaderName::try_from(name).map_err(|_| BuildError::HeaderName(name.into()))?;
    Ok(Arc::from(parsed.as_str()))
}
