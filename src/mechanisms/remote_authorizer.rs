//! The `remote` authorizer: asks an HTTP policy service about the request. A 2xx answer allows
//! (or, with `allow`, a CEL expression over it decides), 401 and 403 deny, anything else, a
//! slow answer or no answer is a communication error: never an allow. Values of the allowing
//! answer may be layered into the subject for the finalizers.

use std::sync::Arc;

use super::BuildError;
use super::remote_call::{RemoteCall, compile_attributes, map_attributes};
use crate::config::remote_call::RemoteAuthorizerConfig;
use crate::decision::{ErrorKind, StepError};
use crate::expr::{Expr, Vars};
use crate::subject::FetchedAttributes;

/// Asks a policy service.
pub struct RemoteAuthorizer {
    id: Arc<str>,
    call: RemoteCall,
    allow: Option<Expr>,
    attributes: Box<[(String, Expr)]>,
    principal: Option<Arc<str>>,
    message: String,
}

impl RemoteAuthorizer {
    /// Builds it from its config, refusing what cannot work.
    pub fn build(
        id: &Arc<str>,
        config: &RemoteAuthorizerConfig,
        ctx: &super::BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            id: Arc::clone(id),
            call: RemoteCall::build(id, &config.request, &config.cache, ctx)?,
            allow: config
                .allow
                .as_deref()
                .map(|src| Expr::compile_over_response(src).map_err(BuildError::expr("allow")))
                .transpose()?,
            attributes: compile_attributes(&config.attributes)?,
            principal: config.principal.as_deref().map(Arc::from),
            message: config
                .message
                .clone()
                .unwrap_or_else(|| "denied by the policy service".into()),
        })
    }

    /// Decides; on an allow, returns the attributes to layer into the subject, if any.
    pub async fn authorize(&self, vars: &Vars<'_>) -> Result<Option<FetchedAttributes>, StepError> {
        let fail = |kind, message: String| StepError::new(kind, &self.id, message);
        let rendered = self.call.render(vars)?;
        let answer = self
            .call
            .call(rendered)
            .await
            .map_err(|e| fail(ErrorKind::Communication, e.to_string()))?;
        match answer.status {
            200..=299 => {}
            401 | 403 => {
                return Err(fail(
                    ErrorKind::Authorization,
                    format!("{} ({})", self.message, answer.status),
                ));
            }
            status => {
                return Err(fail(
                    ErrorKind::Communication,
                    format!("the policy service answered {status}"),
                ));
            }
        }
        let mut scoped = Vars::default();
        if let Some(request) = vars.request() {
            scoped.bind_request(request, vars.captures());
        }
        if let Some(subject) = vars.subject() {
            scoped.bind_subject(subject);
        }
        answer.bind(&mut scoped);
        if let Some(allow) = &self.allow {
            match allow.eval_bool(&scoped) {
                Ok(true) => {}
                Ok(false) => return Err(fail(ErrorKind::Authorization, self.message.clone())),
                // The answer is not what the expression expects: not a decision.
                Err(e) => return Err(fail(ErrorKind::Communication, format!("allow: {e}"))),
            }
        }
        if self.attributes.is_empty() {
            return Ok(None);
        }
        if vars
            .subject()
            .and_then(|s| s.named(self.principal.as_deref()))
            .is_none()
        {
            return Err(fail(
                ErrorKind::Internal,
                format!(
                    "no principal `{}` to add the answer's attributes to",
                    self.principal.as_deref().unwrap_or("(first)")
                ),
            ));
        }
        Ok(Some(FetchedAttributes {
            principal: self.principal.clone(),
            values: map_attributes(&self.id, &self.attributes, &scoped)?,
        }))
    }

    /// The expressions it evaluates.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.call
            .expressions()
            .chain(self.allow.iter())
            .chain(self.attributes.iter().map(|(_, e)| e))
    }
}
