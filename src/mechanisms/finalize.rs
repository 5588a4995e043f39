//! Finalizers: shape what the upstream receives once the request is allowed.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::parse_config;
use crate::expr::{Expr, Vars};
use crate::pipeline::{Allowed, ErrorKind, StepError};

/// The built-in finalizers.
pub enum Finalizer {
    Header(HeaderFinalizer),
    RemoveHeaders(Box<[Arc<str>]>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    /// Header name → CEL expression for its value.
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveConfig {
    headers: Vec<String>,
}

/// Sets upstream headers to values computed from the subject and the request.
pub struct HeaderFinalizer {
    id: Arc<str>,
    headers: Box<[(Arc<str>, Expr)]>,
}

fn header_name(name: &str) -> Result<Arc<str>, String> {
    let parsed = http::HeaderName::try_from(name)
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    Ok(Arc::from(parsed.as_str()))
}

impl Finalizer {
    pub(crate) fn build(id: &Arc<str>, type_name: &str, config: &Value) -> Result<Self, String> {
        match type_name {
            "header" => {
                let cfg: HeaderConfig = parse_config(config)?;
                let headers = cfg
                    .headers
                    .iter()
                    .map(|(name, source)| {
                        let expr =
                            Expr::compile(source).map_err(|e| format!("header `{name}`: {e}"))?;
                        Ok((header_name(name)?, expr))
                    })
                    .collect::<Result<Box<[_]>, String>>()?;
                Ok(Self::Header(HeaderFinalizer {
                    id: Arc::clone(id),
                    headers,
                }))
            }
            "remove_headers" => {
                let cfg: RemoveConfig = parse_config(config)?;
                let headers = cfg
                    .headers
                    .iter()
                    .map(|h| header_name(h))
                    .collect::<Result<Box<[_]>, String>>()?;
                Ok(Self::RemoveHeaders(headers))
            }
            other => Err(format!(
                "unknown finalizer type `{other}` (known: header, remove_headers)"
            )),
        }
    }

    /// Applies the finalizer to the allowed response.
    pub fn finalize(&self, vars: &Vars<'_>, out: &mut Allowed) -> Result<(), StepError> {
        match self {
            Self::Header(f) => {
                for (name, expr) in &f.headers {
                    let value = expr.eval_string(vars).map_err(|e| {
                        StepError::new(ErrorKind::Internal, &f.id, format!("header `{name}`: {e}"))
                    })?;
                    if http::HeaderValue::try_from(value.as_str()).is_err() {
                        return Err(StepError::new(
                            ErrorKind::Internal,
                            &f.id,
                            format!("header `{name}`: value is not a valid header value"),
                        ));
                    }
                    out.set_header(name, value);
                }
                Ok(())
            }
            Self::RemoveHeaders(names) => {
                for name in names {
                    out.remove_header(name);
                }
                Ok(())
            }
        }
    }

    /// The expressions this finalizer evaluates.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        let list: &[(Arc<str>, Expr)] = match self {
            Self::Header(f) => &f.headers,
            Self::RemoveHeaders(_) => &[],
        };
        list.iter().map(|(_, e)| e)
    }
}
