//! Error handlers: turn a failed step into the answer the client gets (401, 403, a login
//! redirect, …). The first handler of a rule whose condition holds answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::{no_config, parse_config};
use crate::decision::{Denial, StepError};
use crate::expr::{Expr, Vars};
use crate::request::RequestView;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WwwAuthenticateConfig {
    scheme: String,
    realm: String,
}

impl Default for WwwAuthenticateConfig {
    fn default() -> Self {
        Self {
            scheme: "Bearer".into(),
            realm: "heimdall".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RedirectConfig {
    /// Where to send the browser (the login endpoint).
    to: String,
    /// The query parameter that carries the original URL.
    param: String,
    status: u16,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            to: "/auth/login".into(),
            param: "redirect_uri".into(),
            status: 302,
        }
    }
}

/// Redirects to a login page with the original URL as a parameter.
pub struct RedirectHandler {
    to: Box<str>,
    param: Box<str>,
    status: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericConfig {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A CEL expression for the body.
    #[serde(default)]
    body: Option<String>,
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
    pub(crate) fn build(id: &Arc<str>, type_name: &str, config: &Value) -> Result<Self, String> {
        match type_name {
            "default" => no_config(type_name, config).map(|()| Self::Default),
            "www_authenticate" => {
                let cfg: WwwAuthenticateConfig = parse_config(config)?;
                if cfg.realm.contains('"') || cfg.scheme.contains(' ') {
                    return Err(
                        "`realm` must not contain `\"` and `scheme` must be one token".into(),
                    );
                }
                Ok(Self::WwwAuthenticate {
                    challenge: format!("{} realm=\"{}\"", cfg.scheme, cfg.realm).into(),
                })
            }
            "redirect" => {
                let cfg: RedirectConfig = parse_config(config)?;
                if !(300..400).contains(&cfg.status) {
                    return Err(format!("`status` {} is not a redirect (3xx)", cfg.status));
                }
                if cfg.to.is_empty() || cfg.param.is_empty() {
                    return Err("`to` and `param` must not be empty".into());
                }
                Ok(Self::Redirect(RedirectHandler {
                    to: cfg.to.into(),
                    param: cfg.param.into(),
                    status: cfg.status,
                }))
            }
            "generic" => {
                let cfg: GenericConfig = parse_config(config)?;
                // Never 2xx: behind a forward-auth gateway a 2xx answer is an allow.
                if !(300..600).contains(&cfg.status) {
                    return Err(format!(
                        "`status` {} is not a refusal (use 3xx, 4xx or 5xx)",
                        cfg.status
                    ));
                }
                let headers = cfg
                    .headers
                    .iter()
                    .map(|(name, source)| {
                        let parsed = http::HeaderName::try_from(name.as_str())
                            .map_err(|_| format!("`{name}` is not a valid header name"))?;
                        let expr =
                            Expr::compile(source).map_err(|e| format!("header `{name}`: {e}"))?;
                        Ok((Arc::from(parsed.as_str()), expr))
                    })
                    .collect::<Result<Box<[_]>, String>>()?;
                let body = cfg
                    .body
                    .as_deref()
                    .map(Expr::compile)
                    .transpose()
                    .map_err(|e| format!("body: {e}"))?;
                Ok(Self::Generic(GenericHandler {
                    id: Arc::clone(id),
                    status: cfg.status,
                    headers,
                    body,
                }))
            }
            other => Err(format!(
                "unknown error handler type `{other}` (known: default, www_authenticate, redirect, generic)"
            )),
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
