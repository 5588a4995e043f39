//! Error handlers: turn a failed step into the answer the client gets (401, 403, a login
//! redirect, …). The first handler of a rule whose condition holds answers.

use std::sync::Arc;

use super::BuildError;
use super::finalize::compile_headers;
use crate::config::mechanisms::ErrorHandlerSpec;
use crate::decision::{Denial, StepError};
use crate::expr::{Expr, Vars};
use crate::request::RequestView;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The built-in error handlers.
pub enum ErrorHandler {
    /// The default mapping from error kind to status.
    Default,
    WwwAuthenticate {
        challenge: Box<str>,
    },
    Redirect(RedirectHandler),
    Generic(GenericHandler),
}

/// Redirects to a login page with the original URL as a parameter.
pub struct RedirectHandler {
    to: Box<str>,
    param: Box<str>,
    status: u16,
}

/// A response built from templates.
pub struct GenericHandler {
    id: Arc<str>,
    status: u16,
    headers: Box<[(Arc<str>, Expr)]>,
    body: Option<Expr>,
}

/// Characters kept as they are in a query parameter value (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl ErrorHandler {
    /// Builds the error handler a spec describes.
    pub fn from_spec(id: &Arc<str>, spec: ErrorHandlerSpec) -> Result<Self, BuildError> {
        match spec {
            ErrorHandlerSpec::Default => Ok(Self::Default),
            ErrorHandlerSpec::WwwAuthenticate(cfg) => {
                if cfg.realm.contains('"') || cfg.scheme.contains(' ') {
                    return Err(BuildError::Invalid(
                        "`realm` must not contain `\"` and `scheme` must be one token".into(),
                    ));
                }
                Ok(Self::WwwAuthenticate {
                    challenge: format!("{} realm=\"{}\"", cfg.scheme, cfg.realm).into(),
                })
            }
            ErrorHandlerSpec::Redirect(cfg) => {
                if !(300..400).contains(&cfg.status) {
                    return Err(BuildError::Invalid(
                        format!("`status` {} is not a redirect (3xx)", cfg.status).into(),
                    ));
                }
                if cfg.to.is_empty() || cfg.param.is_empty() {
                    return Err(BuildError::Invalid(
                        "`to` and `param` must not be empty".into(),
                    ));
                }
                Ok(Self::Redirect(RedirectHandler {
                    to: cfg.to.into(),
                    param: cfg.param.into(),
                    status: cfg.status,
                }))
            }
            ErrorHandlerSpec::Generic(cfg) => {
                // Never 2xx: behind a forward-auth gateway a 2xx answer is an allow.
                if !(300..600).contains(&cfg.status) {
                    return Err(BuildError::Invalid(
                        format!(
                            "`status` {} is not a refusal (use 3xx, 4xx or 5xx)",
                            cfg.status
                        )
                        .into(),
                    ));
                }
                let headers = compile_headers(&cfg.headers)?;
                let body = cfg
                    .body
                    .as_deref()
                    .map(Expr::compile)
                    .transpose()
                    .map_err(BuildError::expr("body"))?;
                Ok(Self::Generic(GenericHandler {
                    id: Arc::clone(id),
                    status: cfg.status,
                    headers,
                    body,
                }))
            }
        }
    }

    /// The response for `error`. `None` asks for the default mapping.
    pub fn handle(
        &self,
        error: &StepError,
        req: &RequestView<'_>,
        vars: &Vars<'_>,
    ) -> Option<Denial> {
        match self {
            Self::Default => None,
            Self::WwwAuthenticate { challenge } => {
                // Always a 401 with exactly this challenge, replacing the default one.
                let mut response = Denial::from_kind(error.kind);
                response.status = 401;
                response
                    .headers
                    .retain(|(name, _)| name != "www-authenticate");
                response
                    .headers
                    .push(("www-authenticate".into(), challenge.to_string()));
                Some(response)
            }
            Self::Redirect(r) => {
                let separator = if r.to.contains('?') { '&' } else { '?' };
                let target = utf8_percent_encode(&req.url(), QUERY_VALUE).to_string();
                let location = format!("{}{separator}{}={target}", r.to, r.param);
                Some(Denial {
                    status: r.status,
                    headers: vec![("location".into(), location)],
                    body: String::new(),
                })
            }
            Self::Generic(g) => {
                let mut response = Denial {
                    status: g.status,
                    headers: Vec::with_capacity(g.headers.len()),
                    body: String::new(),
                };
                for (name, expr) in &g.headers {
                    match expr.eval_string(vars) {
                        Ok(value) if super::finalize::is_header_value(&value) => response
                            .headers
                            .push((std::borrow::Cow::Owned(name.to_string()), value)),
                        Ok(_) => {
                            tracing::warn!(handler = %g.id, header = %name, "error handler header value is not a valid header value; left out")
                        }
                        Err(e) => {
                            tracing::warn!(handler = %g.id, header = %name, error = %e, "error handler header failed; left out")
                        }
                    }
                }
                if let Some(body) = &g.body {
                    match body.eval_string(vars) {
                        Ok(text) => response.body = text,
                        Err(e) => {
                            tracing::warn!(handler = %g.id, error = %e, "error handler body failed; sent empty")
                        }
                    }
                }
                Some(response)
            }
        }
    }

    /// The expressions this handler evaluates.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        let (headers, body): (&[(Arc<str>, Expr)], Option<&Expr>) = match self {
            Self::Generic(g) => (&g.headers, g.body.as_ref()),
            _ => (&[], None),
        };
        headers.iter().map(|(_, e)| e).chain(body)
    }
}
