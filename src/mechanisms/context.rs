//! Contextualizers: enrich the authenticated subject before anything decides on it.
//!
//! `principal_attributes` merges the attributes that business services published on NATS (see
//! [`crate::attributes`]) into a principal, so CEL sees them under `subject.attr` and the Cerbos
//! authorizer sends them as the principal's `attr`. The stored attributes win over a token's
//! claims of the same name: they are the newer fact.

use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::parse_config;
use crate::attributes::PrincipalStore;
use crate::pipeline::{ErrorKind, StepError, Subject};

/// The built-in contextualizers.
pub enum Contextualizer {
    PrincipalAttributes(PrincipalAttributes),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct PrincipalAttributesConfig {
    /// The principal to enrich, by the name the rule gave it (default: the first one).
    principal: Option<String>,
    /// Deny (403) a principal that has no stored attributes at all.
    required: bool,
}

/// Merges the principal's stored attributes into it.
pub struct PrincipalAttributes {
    id: Arc<str>,
    store: Arc<PrincipalStore>,
    principal: Option<Arc<str>>,
    required: bool,
}

impl Contextualizer {
    pub(crate) fn build(
        id: &Arc<str>,
        type_name: &str,
        config: &Value,
        ctx: &super::BuildContext<'_>,
    ) -> Result<Self, String> {
        match type_name {
            "principal_attributes" => {
                let cfg: PrincipalAttributesConfig = parse_config(config)?;
                let store = ctx.attributes.ok_or(
                    "no attribute store is configured: add a `nats` section or set NATS_URL",
                )?;
                Ok(Self::PrincipalAttributes(PrincipalAttributes {
                    id: Arc::clone(id),
                    store: Arc::clone(store),
                    principal: cfg.principal.map(Arc::from),
                    required: cfg.required,
                }))
            }
            other => Err(format!(
                "unknown contextualizer type `{other}` (known: principal_attributes)"
            )),
        }
    }

    /// Enriches `subject` in place.
    pub async fn contextualize(&self, subject: &mut Subject) -> Result<(), StepError> {
        match self {
            Self::PrincipalAttributes(c) => c.contextualize(subject).await,
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
        let snapshot = self
            .store
            .get(&principal.id)
            .await
            .map_err(|e| StepError::new(ErrorKind::Communication, &self.id, e.to_string()))?;
        let Some(record) = snapshot.record else {
            if self.required {
                return Err(StepError::new(
                    ErrorKind::Authorization,
                    &self.id,
                    "the principal has no stored attributes",
                ));
            }
            return Ok(());
        };
        let mut enriched = (**principal).clone();
        enriched.attributes.extend(
            record
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        enriched.attributes_revision = snapshot.revision;
        let name = Arc::clone(name);
        subject.insert(name, Arc::new(enriched));
        Ok(())
    }
}
