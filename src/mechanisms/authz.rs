//! Authorizers: decide whether the authenticated subject may make the request.
//!
//! They are pure functions of the request and the subject (no I/O), so a deny is a value.

use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::{no_config, parse_config};
use crate::expr::{Expr, Vars};
use crate::pipeline::{ErrorKind, StepError};

/// The built-in authorizers.
pub enum Authorizer {
    Allow,
    Deny(Arc<str>),
    Cel(CelAuthorizer),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CelConfig {
    /// A boolean CEL expression over `request` and `subject`.
    expression: String,
    /// The reason logged when the expression is false.
    #[serde(default)]
    message: Option<String>,
}

/// Allows when a CEL expression is true; false, an error or a non-boolean denies.
pub struct CelAuthorizer {
    id: Arc<str>,
    expression: Expr,
    message: String,
}

impl Authorizer {
    pub(crate) fn build(id: &Arc<str>, type_name: &str, config: &Value) -> Result<Self, String> {
        match type_name {
            "allow" => no_config(type_name, config).map(|()| Self::Allow),
            "deny" => no_config(type_name, config).map(|()| Self::Deny(Arc::clone(id))),
            "cel" => {
                let cfg: CelConfig = parse_config(config)?;
                let expression = Expr::compile(&cfg.expression).map_err(|e| e.to_string())?;
                let message = cfg
                    .message
                    .unwrap_or_else(|| format!("expression `{}` is false", cfg.expression));
                Ok(Self::Cel(CelAuthorizer {
                    id: Arc::clone(id),
                    expression,
                    message,
                }))
            }
            other => Err(format!(
                "unknown authorizer type `{other}` (known: allow, deny, cel)"
            )),
        }
    }

    /// Decides. `vars` has `request` (when any expression needs it) and `subject` bound.
    pub async fn authorize(&self, vars: &Vars<'_>) -> Result<(), StepError> {
        match self {
            Self::Allow => Ok(()),
            Self::Deny(id) => Err(StepError::new(
                ErrorKind::Authorization,
                id,
                "denied by `deny`",
            )),
            Self::Cel(a) => match a.expression.eval_bool(vars) {
                Ok(true) => Ok(()),
                Ok(false) => Err(StepError::new(
                    ErrorKind::Authorization,
                    &a.id,
                    a.message.clone(),
                )),
                // A missing attribute is the usual cause: deny, and say why in the log.
                Err(e) => Err(StepError::new(
                    ErrorKind::Authorization,
                    &a.id,
                    e.to_string(),
                )),
            },
        }
    }

    /// The expressions this authorizer evaluates (to know which variables to bind).
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        match self {
            Self::Cel(a) => Some(&a.expression),
            _ => None,
        }
        .into_iter()
    }
}
