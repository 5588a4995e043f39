//! Finalizers: shape what the upstream receives once the request is allowed.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::parse_config;
use crate::decision::{Allowed, ErrorKind, StepError};
use crate::expr::{Expr, Vars};

/// The built-in finalizers.
pub enum Finalizer {
    Header(HeaderFinalizer),
    RemoveHeaders(Box<[Arc<str>]>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    /// Upstream request header name → CEL expression for its value (set, overwriting).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Downstream response header name → CEL expression (added to the response Envoy returns).
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveConfig {
    headers: Vec<String>,
}

/// Sets upstream headers to values computed from the subject and the request.
pub struct HeaderFinalizer {
    id: Arc<str>,
    headers: ComputedHeaders,
    response_headers: ComputedHeaders,
}

/// Header names with the expressions for their values.
type ComputedHeaders = Box<[(Arc<str>, Expr)]>;

fn compile_headers(headers: &BTreeMap<String, String>) -> Result<ComputedHeaders, String> {
    headers
        .iter()
        .map(|(name, source)| {
            let expr = Expr::compile(source).map_err(|e| format!("header `{name}`: {e}"))?;
            Ok((header_name(name)?, expr))
        })
        .collect()
}

impl HeaderFinalizer {
    fn value(&self, name: &str, expr: &Expr, vars: &Vars<'_>) -> Result<String, StepError> {
        let value = expr.eval_string(vars).map_err(|e| {
            StepError::new(
                ErrorKind::Internal,
                &self.id,
                format!("header `{name}`: {e}"),
            )
        })?;
        if !is_header_value(&value) {
            return Err(StepError::new(
                ErrorKind::Internal,
                &self.id,
                format!("header `{name}`: value is not a valid header value"),
            ));
        }
        Ok(value)
    }
}

/// Whether `value` is a valid HTTP header value (visible ASCII, spaces, tabs and obs-text, as
/// `http::HeaderValue` accepts), checked in place instead of copying it into one.
pub(super) fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
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
                if cfg.headers.is_empty() && cfg.response_headers.is_empty() {
                    return Err("set at least one of `headers` and `response_headers`".into());
                }
                Ok(Self::Header(HeaderFinalizer {
                    id: Arc::clone(id),
                    headers: compile_headers(&cfg.headers)?,
                    response_headers: compile_headers(&cfg.response_headers)?,
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
                    out.set_header(name, f.value(name, expr, vars)?);
                }
                for (name, expr) in &f.response_headers {
                    out.response_headers
                        .push((Arc::clone(name), f.value(name, expr, vars)?));
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
        let response: &[(Arc<str>, Expr)] = match self {
            Self::Header(f) => &f.response_headers,
            Self::RemoveHeaders(_) => &[],
        };
        list.iter().chain(response).map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values_are_checked_as_http_checks_them() {
        for b in 0..=u8::MAX {
            let bytes = [b'a', b, b'z'];
            // Only UTF-8 reaches the check: expression results are strings.
            if let Ok(text) = std::str::from_utf8(&bytes) {
                assert_eq!(
                    super::is_header_value(text),
                    http::HeaderValue::try_from(text).is_ok(),
                    "byte {b:#x}"
                );
            }
        }
        for text in [
            "",
            "é",
            "a\u{80}b",
            "tab\there",
            "nul\0",
            "del\u{7f}",
            "line\nbreak",
        ] {
            assert_eq!(
                super::is_header_value(text),
                http::HeaderValue::try_from(text).is_ok(),
                "{text:?}"
            );
        }
    }
}
