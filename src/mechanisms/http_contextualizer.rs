//! The `http` contextualizer: asks a remote service (an identity store such as Kratos's admin
//! API) about the subject and layers the values its CEL mapping takes from the answer over the
//! principal's attributes, so later steps read them under `subject.attr`.

use std::sync::Arc;

use super::BuildError;
use super::remote_call::{RemoteCall, compile_attributes, map_attributes};
use crate::config::remote_call::HttpContextualizerConfig;
use crate::decision::{ErrorKind, StepError};
use crate::expr::{Expr, Vars};
use crate::request::RequestView;
use crate::subject::{FetchedAttributes, Subject};

/// The path parameters of the matched rule.
type Captures<'a> = &'a [(&'a str, std::borrow::Cow<'a, str>)];

/// Asks a service, maps its answer into attributes.
pub struct HttpContextualizer {
    id: Arc<str>,
    call: RemoteCall,
    attributes: Box<[(String, Expr)]>,
    /// Empty: any 2xx.
    accept_status: Box<[u16]>,
    continue_on_error: bool,
    principal: Option<Arc<str>>,
}

impl HttpContextualizer {
    /// Builds it from its config, refusing what cannot work.
    pub fn build(
        id: &Arc<str>,
        config: &HttpContextualizerConfig,
        ctx: &super::BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        if let Some(status) = config
            .accept_status
            .iter()
            .find(|s| !(100..500).contains(*s))
        {
            return Err(BuildError::Invalid(
                format!("accept_status: {status} cannot be accepted (100 to 499; a 5xx answer is always a failure)")
                    .into(),
            ));
        }
        if config.attributes.is_empty() {
            return Err(BuildError::Invalid(
                "attributes: map at least one attribute from the answer".into(),
            ));
        }
        Ok(Self {
            id: Arc::clone(id),
            call: RemoteCall::build(id, &config.request, &config.cache, ctx)?,
            attributes: compile_attributes(&config.attributes)?,
            accept_status: config.accept_status.clone().into(),
            continue_on_error: config.continue_on_error,
            principal: config.principal.as_deref().map(Arc::from),
        })
    }

    /// Layers the fetched attributes over the principal; with `continue_on_error`, a failure
    /// leaves them absent (logged and counted) and the request goes on.
    pub async fn contextualize(
        &self,
        req: &RequestView<'_>,
        captures: Captures<'_>,
        subject: &mut Subject,
    ) -> Result<(), StepError> {
        if subject.named(self.principal.as_deref()).is_none() {
            return Err(StepError::new(
                ErrorKind::Internal,
                &self.id,
                format!(
                    "no principal `{}` to enrich",
                    self.principal.as_deref().unwrap_or("(first)")
                ),
            ));
        }
        match self.fetch(req, captures, subject).await {
            Ok(fetched) => {
                subject.add_fetched(fetched);
                Ok(())
            }
            Err(error) if self.continue_on_error => {
                tracing::warn!(
                    mechanism = &*self.id,
                    error.kind = error.kind.as_str(),
                    error.message = %error.message,
                    "remote attributes unavailable; step skipped (continue_on_error)"
                );
                self.call.counters().skipped.inc();
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    async fn fetch(
        &self,
        req: &RequestView<'_>,
        captures: Captures<'_>,
        subject: &Subject,
    ) -> Result<FetchedAttributes, StepError> {
        let bind = || {
            let mut vars = Vars::default();
            vars.bind_request(req, captures);
            vars.bind_subject(subject);
            vars
        };
        let rendered = self.call.render(&bind())?;
        let answer = self
            .call
            .call(rendered)
            .await
            .map_err(|e| StepError::new(ErrorKind::Communication, &self.id, e.to_string()))?;
        let accepted = if self.accept_status.is_empty() {
            (200..300).contains(&answer.status)
        } else {
            self.accept_status.contains(&answer.status)
        };
        if !accepted {
            return Err(StepError::new(
                ErrorKind::Communication,
                &self.id,
                format!("the service answered {}", answer.status),
            ));
        }
        let mut vars = bind();
        answer.bind(&mut vars);
        Ok(FetchedAttributes {
            principal: self.principal.clone(),
            values: map_attributes(&self.id, &self.attributes, &vars)?,
        })
    }

    /// The expressions it evaluates.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.call
            .expressions()
            .chain(self.attributes.iter().map(|(_, e)| e))
    }
}
