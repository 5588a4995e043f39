//! Authorizers: decide whether the authenticated subject may make the request.
//!
//! `allow`, `deny` and `cel` are pure functions of the request and the subject; `cerbos` asks the
//! policy decision point, under a deadline. A deny is a value, never a panic.

use std::sync::Arc;

use super::BuildError;
use crate::config::mechanisms::AuthorizerSpec;
use crate::decision::{ErrorKind, StepError};
use crate::expr::{Expr, Vars};
use crate::policy::PolicyDecisionPoint;

/// The built-in authorizers.
pub enum Authorizer {
    Allow,
    Deny(Arc<str>),
    Cel(CelAuthorizer),
    Cerbos(CerbosAuthorizer),
    Remote(Box<super::remote_authorizer::RemoteAuthorizer>),
}

/// Asks Cerbos `CheckResources` about the request's resource; allows only when every action is
/// `EFFECT_ALLOW`. Cerbos failing, slow or answering garbage is a communication error (503); a
/// question Cerbos (or heimdall, before asking) refuses as invalid — an empty resource id,
/// duplicate actions, a principal without roles and no `cerbos.default_role` — is a denial
/// (`invalid_policy_request`, 403), so `failure_mode_allow` cannot turn it into an allow.
///
/// Generic over the policy decision point so each call is static dispatch; the configuration
/// builds it over [`crate::cerbos::Cerbos`].
pub struct CerbosAuthorizer<P = crate::cerbos::Cerbos> {
    id: Arc<str>,
    cerbos: Arc<P>,
    kind: String,
    resource_id: Option<Expr>,
    attr: Box<[(String, Expr)]>,
    actions: Expr,
}

impl<P: PolicyDecisionPoint> CerbosAuthorizer<P> {
    async fn authorize(&self, vars: &Vars<'_>) -> Result<(), StepError> {
        use crate::policy::{DecisionError as _, PrincipalInput, ResourceCheck, ResourceInput};
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
        // Borrowed: the PDP removes repeated roles and applies the default role itself.
        let principal = PrincipalInput::from(principal);
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
            AuthorizerSpec::Remote(cfg) => Ok(Self::Remote(Box::new(
                super::remote_authorizer::RemoteAuthorizer::build(id, &cfg, ctx)?,
            ))),
        }
    }

    /// Decides. `vars` has `request` (when any expression needs it) and `subject` bound. An
    /// allow may carry attributes to layer into the subject for the finalizers (`remote`).
    pub async fn authorize(
        &self,
        vars: &Vars<'_>,
    ) -> Result<Option<crate::subject::FetchedAttributes>, StepError> {
        match self {
            Self::Allow => Ok(None),
            Self::Deny(id) => Err(StepError::new(
                ErrorKind::Authorization,
                id,
                "denied by `deny`",
            )),
            Self::Cel(a) => match a.expression.eval_bool(vars) {
                Ok(true) => Ok(None),
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
            // Boxed: a gRPC call's state is kilobytes, and without the box every Check's future
            // (allocated and moved per request) would be that large, whatever the rule.
            Self::Cerbos(a) => Box::pin(a.authorize(vars)).await.map(|()| None),
            // Boxed for the same reason: an HTTP exchange and a cache lookup.
            Self::Remote(a) => Box::pin(a.authorize(vars)).await,
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
            Self::Remote(a) => Box::new(a.expressions()),
            Self::Allow | Self::Deny(_) => Box::new(std::iter::empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The `cerbos` authorizer against an in-test policy decision point: what it asks, and how
    //! each answer becomes a decision.

    use std::borrow::Cow;
    use tokio::sync::Mutex;

    use super::*;
    use crate::policy::{
        DecisionError, Plan, PrincipalInput, ResourceCheck, ResourceInput, ResourceResult,
    };
    use crate::subject::{Principal, Subject};

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("refused: {0}")]
        Refused(String),
        #[error("down")]
        Down,
    }

    impl DecisionError for TestError {
        fn is_refusal(&self) -> bool {
            matches!(self, Self::Refused(_))
        }
    }

    /// A question as the PDP saw it: principal id, roles, attributes, revision, resource.
    type Asked = (String, Vec<String>, serde_json::Value, u64, ResourceCheck);

    /// Allows `view` on anything, denies every other action; resource id `invalid` is refused,
    /// `down` is an outage and `silent` gets no result. Records each question.
    #[derive(Default)]
    struct TestPdp {
        asked: Mutex<Vec<Asked>>,
    }

    impl PolicyDecisionPoint for TestPdp {
        type Error = TestError;

        async fn check(
            &self,
            _request_id: &str,
            principal: &PrincipalInput<'_>,
            resources: &[ResourceCheck],
        ) -> Result<Arc<[ResourceResult]>, TestError> {
            for check in resources {
                self.asked.lock().await.push((
                    principal.id.to_owned(),
                    principal.roles.iter().map(|r| (*r).to_owned()).collect(),
                    principal
                        .attr
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    principal.attributes_revision,
                    check.clone(),
                ));
            }
            match resources.first().map(|c| c.resource.id.as_str()) {
                Some("invalid") => return Err(TestError::Refused("bad id".into())),
                Some("down") => return Err(TestError::Down),
                Some("silent") => return Ok(Arc::from([])),
                _ => {}
            }
            Ok(resources
                .iter()
                .map(|c| ResourceResult {
                    id: c.resource.id.clone(),
                    kind: c.resource.kind.clone(),
                    actions: c.actions.iter().map(|a| (a.clone(), a == "view")).collect(),
                })
                .collect())
        }

        async fn plan(
            &self,
            _request_id: &str,
            _principal: &PrincipalInput<'_>,
            _resource: &ResourceInput,
            _actions: &[String],
        ) -> Result<Plan, TestError> {
            Ok(Plan::AlwaysDenied)
        }
    }

    fn authorizer(pdp: &Arc<TestPdp>, actions: &str) -> CerbosAuthorizer<TestPdp> {
        let compile = |src: &str| Expr::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        CerbosAuthorizer {
            id: Arc::from("docs"),
            cerbos: Arc::clone(pdp),
            kind: "document".into(),
            resource_id: Some(compile("request.captures.id")),
            attr: Box::new([("owner".into(), compile("request.captures.owner"))]),
            actions: compile(actions),
        }
    }

    /// Authorizes `/docs/{id}` of `owner`, asked by alice.
    async fn decide(
        authorizer: &CerbosAuthorizer<TestPdp>,
        id: &'static str,
    ) -> Result<(), StepError> {
        let mut principal = Principal::new(
            "alice",
            vec!["user".into(), "editor".into()],
            serde_json::json!({"dept": "eng"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            "bearer",
        );
        // Stored attributes at revision 7 (none that clash): the revision joins the question.
        principal.stored = Some(crate::subject::Stored {
            revision: 7,
            record: Arc::new(crate::attributes::record::PrincipalRecord::default()),
        });
        let subject = Subject::single(principal);
        let line = crate::canonical::RequestLine::internal("GET", "/docs");
        let view = crate::request::RequestView::new(&line, "http", crate::request::Headers::None);
        let captures = [("id", Cow::Borrowed(id)), ("owner", Cow::Borrowed("bob"))];
        let mut vars = Vars::default();
        vars.bind_request(&view, &captures);
        vars.bind_subject(&subject);
        authorizer.authorize(&vars).await
    }

    #[tokio::test]
    async fn asks_about_the_principal_and_resource_and_decides_on_every_action() {
        let pdp = Arc::new(TestPdp::default());
        assert_eq!(decide(&authorizer(&pdp, "'view'"), "42").await, Ok(()));
        let asked = pdp.asked.lock().await.clone();
        assert_eq!(
            asked,
            vec![(
                "alice".to_owned(),
                vec!["user".to_owned(), "editor".to_owned()],
                serde_json::json!({"dept": "eng"}),
                7,
                ResourceCheck {
                    resource: ResourceInput {
                        kind: "document".into(),
                        id: "42".into(),
                        attr: serde_json::json!({"owner": "bob"})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    },
                    actions: vec!["view".into()],
                },
            )]
        );

        let denied = decide(&authorizer(&pdp, "['view', 'edit', 'delete']"), "42")
            .await
            .expect_err("edit is denied");
        assert_eq!(denied.kind, ErrorKind::Authorization);
        assert_eq!(
            denied.message,
            "Cerbos denies `delete`, `edit` on document `42`"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_a_denial_and_an_outage_a_communication_error() {
        let pdp = Arc::new(TestPdp::default());
        let view = authorizer(&pdp, "'view'");
        let kind = |result: Result<(), StepError>| result.map_err(|e| e.kind);
        assert_eq!(
            kind(decide(&view, "invalid").await),
            Err(ErrorKind::InvalidPolicyRequest)
        );
        assert_eq!(
            kind(decide(&view, "down").await),
            Err(ErrorKind::Communication)
        );
        assert_eq!(
            kind(decide(&view, "silent").await),
            Err(ErrorKind::Communication)
        );
        assert_eq!(
            kind(decide(&authorizer(&pdp, "[]"), "42").await),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(pdp.asked.lock().await.len(), 3);
    }
}
