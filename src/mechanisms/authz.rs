//! Authorizers: decide whether the authenticated subject may make the request.
//!
//! `allow`, `deny` and `cel` are pure functions of the request and the subject; `cerbos` asks the
//! policy decision point, under a deadline. A deny is a value, never a panic.

use std::sync::Arc;

use super::BuildError;
use crate::config::mechanisms::AuthorizerSpec;
use crate::decision::{ErrorKind, StepError};
use crate::expr::{Expr, Vars};

/// The built-in authorizers.
pub enum Authorizer {
    Allow,
    Deny(Arc<str>),
    Cel(CelAuthorizer),
    Cerbos(CerbosAuthorizer),
}

/// Asks Cerbos `CheckResources` about the request's resource; allows only when every action is
/// `EFFECT_ALLOW`. Cerbos failing, slow or answering garbage is a communication error (503); a
/// question Cerbos (or heimdall, before asking) refuses as invalid — an empty resource id,
/// duplicate actions, a principal without roles and no `cerbos.default_role` — is a denial
/// (`invalid_policy_request`, 403), so `failure_mode_allow` cannot turn it into an allow.
pub struct CerbosAuthorizer {
    id: Arc<str>,
    cerbos: Arc<crate::cerbos::Cerbos>,
    kind: String,
    resource_id: Option<Expr>,
    attr: Box<[(String, Expr)]>,
    actions: Expr,
}

impl CerbosAuthorizer {
    async fn authorize(&self, vars: &Vars<'_>) -> Result<(), StepError> {
        use crate::cerbos::{PrincipalInput, ResourceCheck, ResourceInput};
        let fail = |kind, message: String| StepError::new(kind, &self.id, message);
        let principal = vars
            .subject()
            .and_then(crate::subject::Subject::primary)
            .ok_or_else(|| {
                fail(
                    ErrorKind::Internal,
                    "no principal to ask Cerbos about".into(),
                )
            })?;
        let id = match &self.resource_id {
            Some(expr) => expr
                .eval_string(vars)
                .map_err(|e| fail(ErrorKind::BadRequest, format!("resource id: {e}")))?,
            None => String::new(),
        };
        let mut attr = serde_json::Map::new();
        for (name, expr) in &self.attr {
            attr.insert(
                name.clone(),
                expr.eval_json(vars).map_err(|e| {
                    fail(
                        ErrorKind::BadRequest,
                        format!("resource attribute `{name}`: {e}"),
                    )
                })?,
            );
        }
        let actions = self
            .actions
            .eval_strings(vars)
            .map_err(|e| fail(ErrorKind::BadRequest, format!("actions: {e}")))?;
        if actions.is_empty() {
            return Err(fail(ErrorKind::BadRequest, "no action to check".into()));
        }
        // `Cerbos::check` removes repeated roles and applies the default role.
        let principal = PrincipalInput {
            id: principal.id.to_string(),
            roles: principal.roles.iter().map(|r| r.to_string()).collect(),
            attr: principal.attributes.clone(),
            attributes_revision: principal.attributes_revision,
        };
        let check = [ResourceCheck {
            resource: ResourceInput {
                kind: self.kind.clone(),
                id,
                attr,
            },
            actions,
        }];
        let request_id = vars.request().map_or("", |r| r.id);
        let results = self
            .cerbos
            .check(request_id, &principal, &check)
            .await
            .map_err(|e| {
                let kind = if e.is_refusal() {
                    ErrorKind::InvalidPolicyRequest
                } else {
                    ErrorKind::Communication
                };
                fail(kind, e.to_string())
            })?;
        match results.first() {
            Some(result) if result.all_allowed() => Ok(()),
            Some(result) => {
                let denied: Vec<&str> = result
                    .actions
                    .iter()
                    .filter(|(_, allowed)| !**allowed)
                    .map(|(a, _)| a.as_str())
                    .collect();
                Err(fail(
                    ErrorKind::Authorization,
                    format!(
                        "Cerbos denies `{}` on {} `{}`",
                        denied.join("`, `"),
                        result.kind,
                        result.id
                    ),
                ))
            }
            None => Err(fail(
                ErrorKind::Communication,
                "Cerbos returned no result".into(),
            )),
        }
    }
}

/// Allows when a CEL expression is true; false, an error or a non-boolean denies.
pub struct CelAuthorizer {
    id: Arc<str>,
    expression: Expr,
    message: String,
}

impl Authorizer {
    /// Builds the authorizer a spec describes.
    pub fn from_spec(
        id: &Arc<str>,
        spec: AuthorizerSpec,
        ctx: &super::BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        match spec {
            AuthorizerSpec::Allow => Ok(Self::Allow),
            AuthorizerSpec::Deny => Ok(Self::Deny(Arc::clone(id))),
            AuthorizerSpec::Cel(cfg) => {
                let expression = Expr::compile(&cfg.expression).map_err(BuildError::Expression)?;
                let message = cfg
                    .message
                    .unwrap_or_else(|| format!("expression `{}` is false", cfg.expression));
                Ok(Self::Cel(CelAuthorizer {
                    id: Arc::clone(id),
                    expression,
                    message,
                }))
            }
            AuthorizerSpec::Cerbos(cfg) => {
                let cerbos = ctx.cerbos.ok_or(BuildError::NoCerbos)?;
                if cfg.kind.is_empty() {
                    return Err(BuildError::Invalid("`kind` must not be empty".into()));
                }
                let compile =
                    |what: String, src: &str| Expr::compile(src).map_err(BuildError::expr(what));
                Ok(Self::Cerbos(CerbosAuthorizer {
                    id: Arc::clone(id),
                    cerbos: Arc::clone(cerbos),
                    kind: cfg.kind,
                    resource_id: cfg
                        .id
                        .as_deref()
                        .map(|src| compile("id".into(), src))
                        .transpose()?,
                    attr: cfg
                        .attr
                        .iter()
                        .map(|(k, src)| Ok((k.clone(), compile(format!("attr `{k}`"), src)?)))
                        .collect::<Result<_, BuildError>>()?,
                    actions: compile("actions".into(), &cfg.actions)?,
                }))
            }
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
            Self::Cerbos(a) => a.authorize(vars).await,
        }
    }

    /// The expressions this authorizer evaluates (to know which variables to bind).
    pub fn expressions(&self) -> Box<dyn Iterator<Item = &Expr> + '_> {
        match self {
            Self::Cel(a) => Box::new(std::iter::once(&a.expression)),
            Self::Cerbos(a) => Box::new(
                a.resource_id
                    .iter()
                    .chain(a.attr.iter().map(|(_, e)| e))
                    .chain(std::iter::once(&a.actions)),
            ),
            Self::Allow | Self::Deny(_) => Box::new(std::iter::empty()),
        }
    }
}
