//! Finalizers: shape what the upstream receives once the request is allowed.

mod upstream_token;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{BuildContext, BuildError, header_name};
use crate::config::mechanisms::FinalizerSpec;
use crate::decision::{Allowed, ErrorKind, StepError};
use crate::expr::{Expr, Vars};

/// The built-in finalizers.
pub enum Finalizer {
    Header(HeaderFinalizer),
    RemoveHeaders(RemoveHeaders),
    /// `jwt` and `paseto`: a signed token for the upstream.
    UpstreamToken(Box<UpstreamToken>),
}

pub use upstream_token::{TokenFormat, UpstreamToken};

/// Removes headers, and cookies from the `Cookie` header.
pub struct RemoveHeaders {
    headers: Box<[Arc<str>]>,
    cookies: Box<[Box<str>]>,
    /// `cookie`, the header rewritten when a cookie is removed.
    cookie_header: Arc<str>,
}

impl RemoveHeaders {
    /// Rewrites the request's `Cookie` header(s) without the configured cookies; removes it when
    /// none is left. Untouched when none of them was sent.
    fn strip_cookies(&self, vars: &Vars<'_>, out: &mut Allowed) {
        let Some(request) = vars.request() else {
            return;
        };
        let mut kept = String::new();
        let mut removed = false;
        request.headers.for_each(|name, value| {
            if !name.eq_ignore_ascii_case("cookie") {
                return;
            }
            for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let cookie = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                if self.cookies.iter().any(|c| **c == *cookie) {
                    removed = true;
                    continue;
                }
                if !kept.is_empty() {
                    kept.push_str("; ");
                }
                kept.push_str(pair);
            }
        });
        if !removed {
            return;
        }
        if kept.is_empty() {
            out.remove_header(&self.cookie_header);
        } else {
            out.set_header(&self.cookie_header, kept);
        }
    }
}

/// Sets upstream headers to values computed from the subject and the request.
pub struct HeaderFinalizer {
    id: Arc<str>,
    headers: ComputedHeaders,
    response_headers: ComputedHeaders,
}

/// Header names with the expressions for their values.
type ComputedHeaders = Box<[(Arc<str>, Expr)]>;

/// Compiles each header's expression (a generic error handler's headers too).
pub(crate) fn compile_headers(
    headers: &BTreeMap<String, String>,
) -> Result<ComputedHeaders, BuildError> {
    headers
        .iter()
        .map(|(name, source)| {
            let expr =
                Expr::compile(source).map_err(BuildError::expr(format!("header `{name}`")))?;
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

impl Finalizer {
    /// Builds the finalizer a spec describes.
    pub fn from_spec(
        id: &Arc<str>,
        spec: FinalizerSpec,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        match spec {
            FinalizerSpec::Jwt(cfg) => Ok(Self::UpstreamToken(Box::new(UpstreamToken::build(
                id,
                TokenFormat::Jwt,
                cfg,
                ctx,
            )?))),
            FinalizerSpec::Paseto(cfg) => Ok(Self::UpstreamToken(Box::new(UpstreamToken::build(
                id,
                TokenFormat::Paseto,
                cfg,
                ctx,
            )?))),
            FinalizerSpec::Header(cfg) => {
                if cfg.headers.is_empty() && cfg.response_headers.is_empty() {
                    return Err(BuildError::Invalid(
                        "set at least one of `headers` and `response_headers`".into(),
                    ));
                }
                Ok(Self::Header(HeaderFinalizer {
                    id: Arc::clone(id),
                    headers: compile_headers(&cfg.headers)?,
                    response_headers: compile_headers(&cfg.response_headers)?,
                }))
            }
            FinalizerSpec::RemoveHeaders(cfg) => {
                if cfg.headers.is_empty() && cfg.cookies.is_empty() {
                    return Err(BuildError::Invalid(
                        "set at least one of `headers` and `cookies`".into(),
                    ));
                }
                let headers = cfg
                    .headers
                    .iter()
                    .map(|h| header_name(h))
                    .collect::<Result<Box<[_]>, BuildError>>()?;
                if let Some(bad) = cfg.cookies.iter().find(|c| {
                    c.is_empty()
                        || !c
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
                }) {
                    return Err(BuildError::Invalid(
                        format!(
                            "`{}` is not a cookie name",
                            crate::redact::untrusted(bad, 64)
                        )
                        .into(),
                    ));
                }
                Ok(Self::RemoveHeaders(RemoveHeaders {
                    headers,
                    cookies: cfg.cookies.iter().map(|c| c.as_str().into()).collect(),
                    cookie_header: Arc::from("cookie"),
                }))
            }
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
            Self::RemoveHeaders(f) => {
                for name in &f.headers {
                    out.remove_header(name);
                }
                if !f.cookies.is_empty() {
                    f.strip_cookies(vars, out);
                }
                Ok(())
            }
            Self::UpstreamToken(f) => f.finalize(vars, out),
        }
    }

    /// The expressions this finalizer evaluates.
    pub fn expressions(&self) -> Box<dyn Iterator<Item = &Expr> + '_> {
        match self {
            Self::Header(f) => Box::new(
                f.headers
                    .iter()
                    .chain(f.response_headers.iter())
                    .map(|(_, e)| e),
            ),
            Self::RemoveHeaders(_) => Box::new(std::iter::empty()),
            Self::UpstreamToken(f) => Box::new(f.expressions()),
        }
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
