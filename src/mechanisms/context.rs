//! Contextualizers: enrich the authenticated subject before anything decides on it.
//!
//! `principal_attributes` merges the attributes that business services published on NATS (see
//! [`crate::attributes`]) into a principal, so CEL sees them under `subject.attr` and the Cerbos
//! authorizer sends them as the principal's `attr`. The stored attributes win over a token's
//! claims of the same name: they are the newer fact.

use std::sync::Arc;

use super::BuildError;
use crate::attributes::PrincipalStore;
use crate::config::mechanisms::ContextualizerSpec;
use crate::decision::{ErrorKind, StepError};
use crate::subject::Subject;
use crate::subject::enrich;

/// The built-in contextualizers.
pub enum Contextualizer {
    PrincipalAttributes(PrincipalAttributes),
    Http(Box<super::http_contextualizer::HttpContextualizer>),
}

/// Merges the principal's stored attributes into it.
pub struct PrincipalAttributes {
    id: Arc<str>,
    store: Arc<PrincipalStore>,
    principal: Option<Arc<str>>,
    required: bool,
}

impl Contextualizer {
    /// Builds the contextualizer a spec describes.
    pub fn from_spec(
        id: &Arc<str>,
        spec: ContextualizerSpec,
        ctx: &super::BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        match spec {
            ContextualizerSpec::PrincipalAttributes(cfg) => {
                let store = ctx.attributes.ok_or(BuildError::NoAttributeStore)?;
                Ok(Self::PrincipalAttributes(PrincipalAttributes {
                    id: Arc::clone(id),
                    store: Arc::clone(store),
                    principal: cfg.principal.map(Arc::from),
                    required: cfg.required,
                }))
            }
            ContextualizerSpec::Http(cfg) => Ok(Self::Http(Box::new(
                super::http_contextualizer::HttpContextualizer::build(id, &cfg, ctx)?,
            ))),
        }
    }

    /// Enriches `subject` in place; `req` and `captures` are what its expressions read.
    pub async fn contextualize(
        &self,
        req: &crate::request::RequestView<'_>,
        captures: &[(&str, std::borrow::Cow<'_, str>)],
        subject: &mut Subject,
    ) -> Result<(), StepError> {
        match self {
            // Boxed, like the other I/O steps: only rules that enrich pay for the lookup's state.
            Self::PrincipalAttributes(c) => Box::pin(c.contextualize(subject)).await,
            Self::Http(c) => Box::pin(c.contextualize(req, captures, subject)).await,
        }
    }

    /// The expressions this contextualizer evaluates.
    pub fn expressions(&self) -> Box<dyn Iterator<Item = &crate::expr::Expr> + '_> {
        match self {
            Self::PrincipalAttributes(_) => Box::new(std::iter::empty()),
            Self::Http(c) => Box::new(c.expressions()),
        }
    }
}

impl PrincipalAttributes {
    async fn contextualize(&self, subject: &mut Subject) -> Result<(), StepError> {
        let Some((name, principal)) = subject.named(self.principal.as_deref()) else {
            return Err(StepError::new(
                ErrorKind::Internal,
                &self.id,
                format!(
                    "no principal `{}` to enrich",
                    self.principal.as_deref().unwrap_or("(first)")
                ),
            ));
        };
        let Some(enriched) = enrich(principal, &*self.store)
            .await
            .map_err(|e| StepError::new(ErrorKind::Communication, &self.id, e.to_string()))?
        else {
            if self.required {
                return Err(StepError::new(
                    ErrorKind::Authorization,
                    &self.id,
                    "the principal has no stored attributes",
                ));
            }
            return Ok(());
        };
        let name = Arc::clone(name);
        subject.insert(name, enriched);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::attributes::record::PrincipalRecord;
    use crate::attributes::{AttributeMetrics, NatsConfig, Snapshot};
    use crate::subject::Principal;

    async fn enrich(stored: Option<serde_json::Value>, config: &str) -> Result<Subject, StepError> {
        let store = Arc::new(PrincipalStore::new(
            &NatsConfig::default(),
            AttributeMetrics::new(&mut prometheus_client::registry::Registry::default()),
        ));
        let record = stored.map(|attributes| {
            Arc::new(PrincipalRecord {
                attributes: serde_json::from_value(attributes).unwrap(),
                ..PrincipalRecord::default()
            })
        });
        store
            .insert_for_test(
                "alice",
                Snapshot {
                    revision: 42,
                    record,
                },
            )
            .await;
        let keys = Arc::new(crate::tokens::Keyring::default());
        let tokens = crate::config::TokensConfig::default();
        let ctx = crate::mechanisms::BuildContext {
            keys: &keys,
            tokens: &tokens,
            cerbos: None,
            attributes: Some(&store),
            check_timeout: std::time::Duration::from_millis(180),
            provider_metrics: &Default::default(),
            remote_calls: None,
        };
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(config).unwrap();
        let spec = crate::config::mechanisms::parse("principal_attributes", &config).unwrap();
        let mechanism = Contextualizer::from_spec(&Arc::from("attrs"), spec, &ctx).unwrap();
        let token_attributes = json!({"plan": "free", "department": "eng"});
        let mut subject = Subject::single(Principal::new(
            "alice",
            vec!["user".into()],
            serde_json::from_value(token_attributes).unwrap(),
            "bearer",
        ));
        let line = crate::canonical::RequestLine::internal("GET", "/");
        let view = crate::request::RequestView::new(&line, "http", crate::request::Headers::None);
        mechanism
            .contextualize(&view, &[], &mut subject)
            .await
            .map(|()| subject)
    }

    #[tokio::test]
    async fn stored_attributes_win_over_the_tokens_and_carry_their_revision() {
        let subject = enrich(Some(json!({"plan": "enterprise", "seats": 5})), "{}")
            .await
            .unwrap();
        let principal = subject.primary().unwrap();
        assert_eq!(
            serde_json::Value::Object(principal.attributes()),
            json!({"plan": "enterprise", "seats": 5, "department": "eng"})
        );
        assert_eq!(principal.attributes_revision(), 42);
        assert_eq!(principal.attr("plan"), Some(&json!("enterprise")));
        assert_eq!(principal.attr("department"), Some(&json!("eng")));
        assert_eq!(principal.attr_count(), 3);
        // Layered, not merged: the token's claims are still what the token said.
        assert_eq!(principal.claims.get("plan"), Some(&json!("free")));
    }

    #[tokio::test]
    async fn no_stored_attributes_is_fine_unless_required() {
        let subject = enrich(None, "{}").await.unwrap();
        assert_eq!(subject.primary().unwrap().attributes_revision(), 0);
        let err = enrich(None, "required: true").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Authorization);
        let err = enrich(None, "principal: workload").await.unwrap_err();
        assert!(
            err.message.contains("no principal `workload`"),
            "{}",
            err.message
        );
    }
}
