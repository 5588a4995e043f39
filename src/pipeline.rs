//! A rule's pipeline and its execution: authenticate → contextualize → authorize → finalize, or
//! the error pipeline.
//!
//! Semantics (see the README): authenticator steps that target the same principal form a
//! fallback chain (the first that produces a principal wins; "not responsible" and "failed" both
//! try the next); chains for different principals are all required. Contextualizers (which enrich
//! the subject), then authorizers, then finalizers run in order. Every step may carry a CEL condition. Any failure hands the error to
//! the error pipeline: the first handler whose condition holds answers; otherwise the error kind
//! decides the status. No step ever turns an error into an allow.

use std::borrow::Cow;
use std::sync::Arc;

use crate::decision::{Allowed, Decision, ErrorKind, Outcome, StepError};
use crate::expr::{Expr, Vars};
use crate::mechanisms::{
    Authenticator, AuthnError, Authorizer, Contextualizer, ErrorHandler, Finalizer,
};
use crate::request::RequestView;
use crate::subject::{Principal, Subject};

/// One step: a mechanism with the id it is known by and an optional condition.
pub struct Step<M> {
    pub id: Arc<str>,
    pub when: Option<Expr>,
    pub mechanism: Arc<M>,
}

/// Authenticators that target one principal, tried in order.
pub struct AuthnChain {
    pub principal: Arc<str>,
    pub steps: Box<[Step<Authenticator>]>,
}

/// A compiled pipeline; immutable and shared by every request of its rule.
pub struct Pipeline {
    pub authn: Box<[AuthnChain]>,
    pub contextualizers: Box<[Step<Contextualizer>]>,
    pub authorizers: Box<[Step<Authorizer>]>,
    pub finalizers: Box<[Step<Finalizer>]>,
    pub on_error: Box<[Step<ErrorHandler>]>,
}

impl Pipeline {
    /// Assembles a pipeline; the compiler has checked order and references.
    pub fn new(
        authn: Box<[AuthnChain]>,
        contextualizers: Box<[Step<Contextualizer>]>,
        authorizers: Box<[Step<Authorizer>]>,
        finalizers: Box<[Step<Finalizer>]>,
        on_error: Box<[Step<ErrorHandler>]>,
    ) -> Self {
        Self {
            authn,
            contextualizers,
            authorizers,
            finalizers,
            on_error,
        }
    }

    /// Runs the pipeline for one request. `captures` are the matched path parameters.
    pub async fn execute<'r>(
        &self,
        req: &RequestView<'r>,
        captures: &'r [(&'r str, Cow<'r, str>)],
    ) -> Outcome {
        // Declared before `vars`, which borrows them once they are final.
        let mut subject = Subject::default();
        // The subject with what authorizers added (`remote`), for the finalizers; only built
        // when an authorizer adds something.
        let mut authorized: Option<Subject> = None;
        let failure: StepError;
        let mut vars = Vars::default();
        // Binding is lazy: nothing is read from the request until an expression asks.
        vars.bind_request(req, captures);

        'run: {
            for chain in &self.authn {
                match authenticate(chain, req, &vars).await {
                    Ok(principal) => subject.insert(Arc::clone(&chain.principal), principal),
                    Err(error) => {
                        failure = error;
                        break 'run;
                    }
                }
            }
            // Contextualizers change the subject, so it is bound for the later steps only after
            // them; a contextualizer's own condition sees the subject as it is at that point.
            for step in &self.contextualizers {
                if let Some(when) = &step.when {
                    // Cheap: binding copies nothing.
                    let mut scoped = Vars::default();
                    scoped.bind_request(req, captures);
                    scoped.bind_subject(&subject);
                    match condition(Some(when), &step.id, &scoped) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(error) => {
                            failure = error;
                            break 'run;
                        }
                    }
                }
                if let Err(error) = step
                    .mechanism
                    .contextualize(req, captures, &mut subject)
                    .await
                {
                    step_event("contextualizer", &step.id, "failed");
                    failure = error;
                    break 'run;
                }
                step_event("contextualizer", &step.id, "done");
            }
            vars.bind_subject(&subject);

            for step in &self.authorizers {
                match condition(step.when.as_ref(), &step.id, &vars) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        failure = error;
                        break 'run;
                    }
                }
                let result = step.mechanism.authorize(&vars).await;
                step_event(
                    "authorizer",
                    &step.id,
                    if result.is_ok() { "allowed" } else { "refused" },
                );
                match result {
                    Ok(None) => {}
                    Ok(Some(fetched)) => {
                        authorized
                            .get_or_insert_with(|| subject.clone())
                            .add_fetched(fetched);
                    }
                    Err(error) => {
                        failure = error;
                        break 'run;
                    }
                }
            }
            if let Some(authorized) = &authorized {
                vars.bind_subject(authorized);
            }

            let mut allowed = Allowed::default();
            for step in &self.finalizers {
                let result = match condition(step.when.as_ref(), &step.id, &vars) {
                    Ok(true) => step.mechanism.finalize(&vars, &mut allowed),
                    Ok(false) => Ok(()),
                    Err(error) => Err(error),
                };
                if let Err(error) = result {
                    step_event("finalizer", &step.id, "failed");
                    failure = error;
                    break 'run;
                }
            }
            return Outcome {
                decision: Decision::Allow(allowed),
                error: None,
            };
        }

        // The error pipeline. The subject may be partial (authentication failed): bind what there is.
        vars.bind_subject(&subject);
        vars.bind_error(&failure);
        for step in &self.on_error {
            match condition(step.when.as_ref(), &step.id, &vars) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    // A broken condition must not hide the error: skip the handler, say why.
                    tracing::warn!(handler = %step.id, error = %e.message, "error handler condition failed; handler skipped");
                    continue;
                }
            }
            if let Some(response) = step.mechanism.handle(&failure, req, &vars) {
                step_event("error_handler", &step.id, "answered");
                // `vars` borrows the failure: release it so the failure moves, uncopied.
                drop(vars);
                return Outcome {
                    decision: Decision::Deny(response),
                    error: Some(failure),
                };
            }
            break;
        }
        drop(vars);
        Outcome::from_error(failure)
    }
}

/// One step's outcome as an event of the decision span. With tracing off and the log below
/// `debug` the callsite is disabled: a load and a branch, nothing recorded.
#[inline]
fn step_event(kind: &'static str, id: &str, outcome: &'static str) {
    tracing::event!(
        target: crate::trace_context::STEP_TARGET,
        tracing::Level::DEBUG,
        step.kind = kind,
        step.id = id,
        step.outcome = outcome,
        "step"
    );
}

/// Evaluates a step condition; an evaluation error fails the step as an internal error.
fn condition(when: Option<&Expr>, step: &Arc<str>, vars: &Vars<'_>) -> Result<bool, StepError> {
    match when {
        None => Ok(true),
        Some(expr) => expr
            .eval_bool(vars)
            .map_err(|e| StepError::new(ErrorKind::Internal, step, format!("condition: {e}"))),
    }
}

/// Runs one fallback chain: the first principal wins; otherwise the first real failure is
/// reported, or "no credential" when every authenticator was not responsible.
async fn authenticate(
    chain: &AuthnChain,
    req: &RequestView<'_>,
    vars: &Vars<'_>,
) -> Result<Arc<Principal>, StepError> {
    let mut first_failure = None;
    for step in &chain.steps {
        match condition(step.when.as_ref(), &step.id, vars) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => return Err(error),
        }
        match step.mechanism.authenticate(req).await {
            Ok(principal) => {
                step_event("authenticator", &step.id, "accepted");
                return Ok(principal);
            }
            Err(AuthnError::NotResponsible) => {
                step_event("authenticator", &step.id, "not_responsible");
            }
            Err(AuthnError::Failed(error)) => {
                step_event("authenticator", &step.id, "failed");
                first_failure.get_or_insert(error);
            }
        }
    }
    Err(first_failure.unwrap_or_else(|| {
        let last = chain
            .steps
            .last()
            .map_or_else(|| Arc::from("authentication"), |s| Arc::clone(&s.id));
        StepError::new(ErrorKind::Authentication, &last, "no credential found")
    }))
}
