//! The outbound call of the mechanisms that ask a remote HTTP service per Check (the `http`
//! contextualizer, the `remote` authorizer): a request template whose URL placeholders, headers
//! and body are CEL over `request` and `subject`, sent through one pooled
//! [`HttpClient`] per mechanism, its answer parsed and, optionally, cached with single-flight.
//!
//! The URL's scheme, host and port are fixed at load; a placeholder's value is percent-encoded
//! down to the unreserved characters, so a subject id like `../admin?x=` stays inside its path
//! segment. Secret headers are read once at load, marked sensitive and never shown.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};

use super::BuildError;
use crate::config::remote_call::{RemoteCacheConfig, RemoteRequestConfig};
use crate::decision::{ErrorKind, StepError};
use crate::expr::{Expr, ExprError, Vars};
use crate::outbound::{HttpClient, OutboundError};

/// What a placeholder's value keeps as is: RFC 3986's unreserved characters. Everything else,
/// `/`, `?`, `#`, `&`, `=` and `%` included, is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest a call's deadline may be: a Check waits for it.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers heimdall sets itself or that would change how the message is framed.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

// === impl RemoteCall ===

/// A built request template with its client, cache and counters.
pub struct RemoteCall {
    id: Arc<str>,
    method: Method,
    url: UrlTemplate,
    headers: Box<[(HeaderName, Expr)]>,
    secret_headers: Box<[(HeaderName, HeaderValue)]>,
    body: Option<Expr>,
    client: HttpClient,
    cache: Option<moka::future::Cache<[u8; 32], Arc<Answer>>>,
    counters: CallCounters,
}

/// The request of one Check, rendered.
#[derive(Debug)]
pub struct Rendered {
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
}

/// A remote service's answer (status below 500).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The parsed JSON when the answer says it is JSON, else the text; `null` when empty.
    pub body: Value,
}

/// Why a call has no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("the service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the service cannot be reached: {0}")]
    Transport(String),
    #[error("the service's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the service answered {0}")]
    ServerError(u16),
    #[error("the service's answer says it is JSON but is not")]
    InvalidJson,
}

impl RemoteCall {
    /// Builds the template of mechanism `id`, refusing what cannot work; the messages name the
    /// field (`request.url`, `request.headers.x-user`, `cache.ttl`).
    pub fn build(
        id: &Arc<str>,
        request: &RemoteRequestConfig,
        cache: &RemoteCacheConfig,
        ctx: &super::BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        let (metrics, check_timeout) = (ctx.remote_calls, ctx.check_timeout);
        let invalid = |message: String| BuildError::Invalid(message.into());
        let method = parse_method(&request.method).map_err(invalid)?;
        let url = UrlTemplate::parse(&request.url, &|name| std::env::var(name).ok())
            .map_err(|e| e.into_build_error())?;
        if request.timeout.is_zero() || request.timeout > MAX_TIMEOUT {
            return Err(invalid(format!(
                "request.timeout: {:?} is out of range (more than 0, at most {MAX_TIMEOUT:?}; keep it below `server.check_timeout`)",
                request.timeout
            )));
        }
        // A call the decision's deadline cuts short would answer 503 for a slow service instead
        // of the step's own error handling (`continue_on_error`, the error pipeline).
        if request.timeout >= check_timeout {
            return Err(invalid(format!(
                "request.timeout: {:?} must be below server.check_timeout ({check_timeout:?})",
                request.timeout
            )));
        }
        if request.max_body_bytes == 0 {
            return Err(invalid(
                "request.max_body_bytes: must be more than 0".into(),
            ));
        }
        let mut headers = Vec::with_capacity(request.headers.len());
        for (name, src) in &request.headers {
            let header = checked_header_name(name, "request.headers")?;
            let expr = compile_request_expr(src, &format!("request.headers `{name}`"))?;
            headers.push((header, expr));
        }
        let mut secret_headers = Vec::with_capacity(request.secret_headers.len());
        for (name, config) in &request.secret_headers {
            let header = checked_header_name(name, "request.secret_headers")?;
            if headers.iter().any(|(h, _)| *h == header) {
                return Err(invalid(format!(
                    "request.secret_headers: `{name}` is also in `request.headers`"
                )));
            }
            let secret = config.secret.read().map_err(|e| {
                invalid(format!(
                    "request.secret_headers `{name}`: {}",
                    crate::outbound::error_chain(e.as_ref())
                ))
            })?;
            // Never quoted: the value is the secret.
            let mut value =
                HeaderValue::try_from(format!("{}{secret}", config.prefix)).map_err(|_| {
                    invalid(format!(
                        "request.secret_headers `{name}`: the value is not a valid header value"
                    ))
                })?;
            value.set_sensitive(true);
            secret_headers.push((header, value));
        }
        let body = match &request.body {
            Some(_) if matches!(method, Method::GET | Method::HEAD) => {
                return Err(invalid(format!(
                    "request.body: a {method} request carries no body"
                )));
            }
            Some(src) => Some(compile_request_expr(src, "request.body")?),
            None => None,
        };
        let client = HttpClient::new(request.timeout, request.max_body_bytes)
            .map_err(|e| invalid(format!("request: the HTTP client cannot be built: {e}")))?;
        if !cache.ttl.is_zero() && cache.max_entries == 0 {
            return Err(invalid(
                "cache.max_entries: must be more than 0 when `cache.ttl` is set".into(),
            ));
        }
        let cache = (!cache.ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(cache.ttl)
                .build()
        });
        let counters = metrics.cloned().unwrap_or_default().for_mechanism(id);
        Ok(Self {
            id: Arc::clone(id),
            method,
            url,
            headers: headers.into(),
            secret_headers: secret_headers.into(),
            body,
            client,
            cache,
            counters,
        })
    }

    /// The expressions the request is built with.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.url
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Value(expr) => Some(expr),
                Piece::Literal(_) => None,
            })
            .chain(self.headers.iter().map(|(_, e)| e))
            .chain(self.body.iter())
    }

    /// The counters of this mechanism.
    pub fn counters(&self) -> &CallCounters {
        &self.counters
    }

    /// Renders the request of one Check. A value that cannot be sent (an expression failing, a
    /// header value with a line break, a `..` segment) is a bad request.
    pub fn render(&self, vars: &Vars<'_>) -> Result<Rendered, StepError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            StepError::new(ErrorKind::BadRequest, &self.id, format!("{what}: {e}"))
        };
        let url = self.url.render(vars).map_err(|e| bad("request.url", &e))?;
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, expr) in &self.headers {
            let value = expr
                .eval_string(vars)
                .map_err(|e| bad("request.headers", &e))?;
            let value = HeaderValue::try_from(value).map_err(|_| {
                bad(
                    "request.headers",
                    &format_args!("`{name}` is not a valid header value"),
                )
            })?;
            headers.push((name.clone(), value));
        }
        let body = match &self.body {
            Some(expr) => {
                let json = expr.eval_json(vars).map_err(|e| bad("request.body", &e))?;
                if !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
                    headers.push((
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ));
                }
                Some(serde_json::to_vec(&json).map_err(|e| bad("request.body", &e))?)
            }
            None => None,
        };
        Ok(Rendered { url, headers, body })
    }

    /// Sends `rendered`, or answers from the cache; concurrent misses of one request wait for
    /// one call. Only answers (status below 500) are cached.
    pub async fn call(&self, rendered: Rendered) -> Result<Arc<Answer>, CallError> {
        let Some(cache) = &self.cache else {
            return self.fetch(&rendered).await;
        };
        let key = rendered.cache_key(&self.method);
        let mut called = false;
        let result = cache
            .try_get_with(key, async {
                called = true;
                self.fetch(&rendered).await
            })
            .await;
        if !called && result.is_ok() {
            self.counters.cache_hits.inc();
        }
        result.map_err(|e| (*e).clone())
    }

    async fn fetch(&self, rendered: &Rendered) -> Result<Arc<Answer>, CallError> {
        let result = self.exchange(rendered).await;
        self.counters.count(&result);
        result.map(Arc::new)
    }

    async fn exchange(&self, rendered: &Rendered) -> Result<Answer, CallError> {
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(&rendered.url);
        for (name, value) in rendered.headers.iter().chain(self.secret_headers.iter()) {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(rendered.body.clone().unwrap_or_default())
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let response = self.client.send(request).await.map_err(|e| match e {
            OutboundError::Timeout(after) => CallError::Timeout(after),
            OutboundError::TooLarge(max) => CallError::TooLarge(max),
            // The message may quote the URL, which carries request values.
            OutboundError::Transport(message) => {
                CallError::Transport(crate::redact::untrusted(&message, 200))
            }
        })?;
        let (parts, body) = response.into_parts();
        let status = parts.status.as_u16();
        if status >= 500 {
            return Err(CallError::ServerError(status));
        }
        let body = parse_body(&parts.headers, body)?;
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    }
}

impl Answer {
    /// Binds `response` to this answer.
    pub fn bind<'a>(&'a self, vars: &mut Vars<'a>) {
        vars.bind_response(self.status, &self.headers, &self.body);
    }
}

/// Evaluates each `(name, expression)` over the answer bound in `vars`; a `null` leaves the
/// attribute out. An expression failing is a communication error: the service did not answer
/// what the mapping expects.
pub fn map_attributes(
    id: &Arc<str>,
    attributes: &[(String, Expr)],
    vars: &Vars<'_>,
) -> Result<Map<String, Value>, StepError> {
    let mut values = Map::new();
    for (name, expr) in attributes {
        let value = expr.eval_json(vars).map_err(|e| {
            StepError::new(
                ErrorKind::Communication,
                id,
                format!("attribute `{name}`: {e}"),
            )
        })?;
        if !value.is_null() {
            values.insert(name.clone(), value);
        }
    }
    Ok(values)
}

/// Compiles the attribute mapping of a config (`attributes.<name>`).
pub fn compile_attributes(
    attributes: &std::collections::BTreeMap<String, String>,
) -> Result<Box<[(String, Expr)]>, BuildError> {
    attributes
        .iter()
        .map(|(name, src)| {
            if name.is_empty() {
                return Err(BuildError::Invalid(
                    "attributes: an attribute name must not be empty".into(),
                ));
            }
            let expr = Expr::compile_over_response(src)
                .map_err(BuildError::expr(format!("attributes `{name}`")))?;
            Ok((name.clone(), expr))
        })
        .collect()
}

/// Compiles an expression the request is built with: over `request` and `subject` only.
fn compile_request_expr(src: &str, what: &str) -> Result<Expr, BuildError> {
    let expr = Expr::compile(src).map_err(BuildError::expr(what))?;
    if expr.uses().reads_error() {
        return Err(BuildError::Invalid(
            format!("{what}: `error` is only bound in error handlers").into(),
        ));
    }
    Ok(expr)
}

fn parse_method(method: &str) -> Result<Method, String> {
    const METHODS: [Method; 6] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    METHODS
        .into_iter()
        .find(|m| m.as_str() == method)
        .ok_or_else(|| {
            format!("request.method: `{method}` is not one of GET, HEAD, POST, PUT, PATCH, DELETE")
        })
}

fn checked_header_name(name: &str, field: &str) -> Result<HeaderName, BuildError> {
    let header = HeaderName::try_from(name).map_err(|_| {
        BuildError::Invalid(format!("{field}: `{name}` is not a header name").into())
    })?;
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(BuildError::Invalid(
            format!("{field}: `{name}` is set by the HTTP client, not by the configuration").into(),
        ));
    }
    Ok(header)
}

/// The answer's body: JSON when its `Content-Type` is `application/json` or `…+json`, else
/// text; `null` when empty.
fn parse_body(headers: &HeaderMap, body: Vec<u8>) -> Result<Value, CallError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let is_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .is_some_and(|media| media == "application/json" || media.ends_with("+json"));
    if is_json {
        serde_json::from_slice(&body).map_err(|_| CallError::InvalidJson)
    } else {
        Ok(Value::String(String::from_utf8_lossy(&body).into_owned()))
    }
}

// === impl Rendered ===

impl Rendered {
    /// A digest of everything that varies per request: method, URL, headers, body. (Secret
    /// headers are the same for every call of a mechanism and its cache.)
    fn cache_key(&self, method: &Method) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(method.as_str().as_bytes());
        field(self.url.as_bytes());
        for (name, value) in &self.headers {
            field(name.as_str().as_bytes());
            field(value.as_bytes());
        }
        if let Some(body) = &self.body {
            field(body);
        }
        hasher.finalize().into()
    }
}

// === impl UrlTemplate ===

/// A URL with `{cel}` placeholders in its path and query.
#[derive(Debug)]
struct UrlTemplate {
    pieces: Box<[Piece]>,
}

#[derive(Debug)]
enum Piece {
    Literal(Box<str>),
    Value(Expr),
}

/// Why a URL template is refused.
#[derive(Debug, PartialEq)]
enum TemplateError {
    Syntax(String),
    Expr(ExprError),
}

impl TemplateError {
    fn into_build_error(self) -> BuildError {
        match self {
            Self::Syntax(message) => BuildError::Invalid(format!("request.url: {message}").into()),
            Self::Expr(e) => BuildError::Expr {
                what: "request.url".into(),
                source: e,
            },
        }
    }
}

/// Replaces every `${NAME}` in `text` by the environment variable's value, now (at load):
/// `${HYDRA_ADMIN_URL}/admin/oauth2/introspect`. An unset or blank variable is an error naming
/// it; `$` not followed by `{` stays as it is.
pub(crate) fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut expanded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let (before, from) = rest.split_at(at);
        expanded.push_str(before);
        let (value, after) = env_placeholder(text, from.get(2..).unwrap_or_default(), env)?;
        expanded.push_str(&value);
        rest = after;
    }
    expanded.push_str(rest);
    Ok(expanded)
}

/// Reads one `${NAME}` whose text after `${` is `after`: the variable's trimmed value and the
/// text after the closing `}`. `${BASE}/path` with BASE ending in `/` does not make `//path`.
fn env_placeholder<'t>(
    template: &str,
    after: &'t str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, &'t str), String> {
    let end = after
        .find('}')
        .ok_or_else(|| format!("`${{` without its `}}` in `{template}`"))?;
    let name = after.get(..end).unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`${{{name}}}` is not an environment variable name"));
    }
    let value = env(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("the environment variable `{name}` is not set"))?;
    let rest = after.get(end + 1..).unwrap_or_default();
    let value = if rest.starts_with('/') {
        value.trim().trim_end_matches('/')
    } else {
        value.trim()
    };
    Ok((value.to_owned(), rest))
}

impl UrlTemplate {
    /// Reads `template`: `${NAME}` is replaced by `env(NAME)` now, `{cel}` is compiled.
    fn parse(template: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, TemplateError> {
        let syntax = |m: String| TemplateError::Syntax(m);
        let mut pieces = Vec::new();
        let mut literal = String::new();
        // The literal text before the first placeholder: it must hold the whole origin.
        let mut origin_checked = false;
        let mut rest = template;
        while let Some(at) = rest.find(['$', '{', '}']) {
            let (before, from) = rest.split_at(at);
            literal.push_str(before);
            if let Some(after) = from.strip_prefix("${") {
                let (value, rest_after) = env_placeholder(template, after, env).map_err(syntax)?;
                literal.push_str(&value);
                rest = rest_after;
            } else if let Some(after) = from.strip_prefix('{') {
                let end = placeholder_end(after)
                    .ok_or_else(|| syntax(format!("`{{` without its `}}` in `{template}`")))?;
                let src = after.get(..end).unwrap_or_default();
                if !origin_checked {
                    check_origin_is_literal(&literal)?;
                    origin_checked = true;
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal).into()));
                }
                let expr = Expr::compile(src.trim()).map_err(TemplateError::Expr)?;
                if expr.uses().reads_error() {
                    return Err(syntax("`error` is only bound in error handlers".into()));
                }
                pieces.push(Piece::Value(expr));
                rest = after.get(end + 1..).unwrap_or_default();
            } else if from.starts_with('$') {
                literal.push('$');
                rest = from.get(1..).unwrap_or_default();
            } else {
                return Err(syntax(format!("`}}` without its `{{` in `{template}`")));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.into()));
        }
        let built = Self {
            pieces: pieces.into(),
        };
        built.check_probe()?;
        Ok(built)
    }

    /// The template with `x` for every placeholder must be a canonical `http(s)` URL with a
    /// host, no credentials and no fragment: what is sent is then exactly what was rendered.
    fn check_probe(&self) -> Result<(), TemplateError> {
        let probe: String = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(text) => &**text,
                Piece::Value(_) => "x",
            })
            .collect();
        let syntax = |m: String| Err(TemplateError::Syntax(m));
        let url = match url::Url::parse(&probe) {
            Ok(url) => url,
            Err(e) => return syntax(format!("`{probe}` is not a URL: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return syntax(format!(
                "the scheme must be `http` or `https`, not `{}`",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return syntax("the URL has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return syntax(
                "credentials do not belong in the URL: send them with `request.secret_headers`"
                    .into(),
            );
        }
        if url.fragment().is_some() {
            return syntax("a URL sent to a service has no fragment (`#…`)".into());
        }
        if url.as_str() != probe {
            return syntax(format!(
                "write the URL as it is sent: `{probe}` reads as `{}` (each placeholder shown as `x`)",
                url.as_str()
            ));
        }
        Ok(())
    }

    /// The URL of one request: literals as written, values percent-encoded.
    fn render(&self, vars: &Vars<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Value(expr) => {
                    let value = expr.eval_string(vars).map_err(|e| e.to_string())?;
                    out.extend(percent_encoding::utf8_percent_encode(&value, COMPONENT));
                }
            }
        }
        // A value of `.` or `..` is unreserved, yet a URL parser folds it into the path: refuse
        // what would not be sent exactly as rendered.
        match url::Url::parse(&out) {
            Ok(url) if url.as_str() == out => Ok(out),
            _ => Err("a value would change the URL's path (a `.` or `..` segment)".into()),
        }
    }
}

/// Where the placeholder starting after a `{` ends: its matching `}`, skipping CEL string
/// literals and nested braces (map literals).
fn placeholder_end(src: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The literal text before the first placeholder must reach past the host and port: values
/// may only ever land in the path or the query.
fn check_origin_is_literal(prefix: &str) -> Result<(), TemplateError> {
    let authority_end = prefix
        .split_once("://")
        .and_then(|(_, after)| after.find(['/', '?']));
    match authority_end {
        Some(_) => Ok(()),
        None => Err(TemplateError::Syntax(
            "placeholders may only appear in the path and query: write the scheme, host and port (or `${NAME}`) before the first `{`"
                .into(),
        )),
    }
}

// === metrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    mechanism: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MechanismLabels {
    mechanism: String,
}

/// The outbound-call metrics of every remote mechanism, labelled by mechanism id.
#[derive(Clone, Default)]
pub struct RemoteCallMetrics {
    calls: Family<CallLabels, Counter>,
    cache_hits: Family<MechanismLabels, Counter>,
    skipped: Family<MechanismLabels, Counter>,
}

impl RemoteCallMetrics {
    /// Creates the metrics and registers them under `heimdall_remote_`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("heimdall_remote");
        r.register(
            "calls",
            "Calls to remote services by mechanism and outcome (answered, server_error, timeout, failed)",
            metrics.calls.clone(),
        );
        r.register(
            "cache_hits",
            "Checks answered from a remote mechanism's cache",
            metrics.cache_hits.clone(),
        );
        r.register(
            "skipped",
            "Contextualizer steps skipped after a failure (continue_on_error)",
            metrics.skipped.clone(),
        );
        metrics
    }

    /// Resolves the counters of mechanism `id` once, at load.
    fn for_mechanism(&self, id: &str) -> CallCounters {
        let call = |outcome| {
            self.calls
                .get_or_create(&CallLabels {
                    mechanism: id.to_owned(),
                    outcome,
                })
                .clone()
        };
        let labels = MechanismLabels {
            mechanism: id.to_owned(),
        };
        CallCounters {
            answered: call("answered"),
            server_error: call("server_error"),
            timeout: call("timeout"),
            failed: call("failed"),
            cache_hits: self.cache_hits.get_or_create(&labels).clone(),
            skipped: self.skipped.get_or_create(&labels).clone(),
        }
    }
}

/// The counters of one mechanism.
#[derive(Clone)]
pub struct CallCounters {
    answered: Counter,
    server_error: Counter,
    timeout: Counter,
    failed: Counter,
    cache_hits: Counter,
    /// Failures a contextualizer skipped (`continue_on_error`).
    pub skipped: Counter,
}

impl CallCounters {
    fn count(&self, result: &Result<Answer, CallError>) {
        match result {
            Ok(_) => &self.answered,
            Err(CallError::ServerError(_)) => &self.server_error,
            Err(CallError::Timeout(_)) => &self.timeout,
            Err(CallError::Transport(_) | CallError::TooLarge(_) | CallError::InvalidJson) => {
                &self.failed
            }
        }
        .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashMap;

    use super::*;
    use crate::canonical::RequestLine;
    use crate::request::{Headers, RequestView};
    use crate::subject::{Principal, Subject};

    fn env(name: &str) -> Option<String> {
        HashMap::from([
            ("KRATOS_ADMIN_URL", "http://kratos:4434/"),
            ("BAD", "ftp://x"),
        ])
        .get(name)
        .map(|v| (*v).to_owned())
    }

    fn parse(template: &str) -> Result<UrlTemplate, TemplateError> {
        UrlTemplate::parse(template, &env)
    }

    fn syntax_error(template: &str) -> String {
        match parse(template) {
            Err(TemplateError::Syntax(message)) => message,
            other => panic!("{template}: {other:?}"),
        }
    }

    fn render_for(template: &str, subject_id: &str) -> Result<String, String> {
        let subject = Subject::single(Principal::new(subject_id, vec![], Map::new(), "t"));
        let line = RequestLine::internal("GET", "/docs");
        let view = RequestView::new(&line, "http", Headers::None);
        let captures = [("id", Cow::Borrowed("a b&c"))];
        let mut vars = Vars::default();
        vars.bind_request(&view, &captures);
        vars.bind_subject(&subject);
        parse(template).unwrap().render(&vars)
    }

    #[test]
    fn environment_variables_expand_in_plain_urls() {
        assert_eq!(
            expand_env("${KRATOS_ADMIN_URL}/admin/x", &env).unwrap(),
            "http://kratos:4434/admin/x"
        );
        assert_eq!(expand_env("http://h/$x", &env).unwrap(), "http://h/$x");
        assert_eq!(
            expand_env("${NOT_SET_ANYWHERE}/x", &env).unwrap_err(),
            "the environment variable `NOT_SET_ANYWHERE` is not set"
        );
        assert!(expand_env("${KRATOS_ADMIN_URL", &env).is_err());
    }

    #[test]
    fn placeholders_are_percent_encoded_into_their_component() {
        assert_eq!(
            render_for(
                "${KRATOS_ADMIN_URL}/admin/identities/{subject.id}",
                "../admin?x="
            )
            .unwrap(),
            "http://kratos:4434/admin/identities/..%2Fadmin%3Fx%3D"
        );
        assert_eq!(
            render_for(
                "http://pdp/v1/{subject.id}?doc={request.captures.id}&m={ {'a': 'b'}['a'] }",
                "alice#1"
            )
            .unwrap(),
            "http://pdp/v1/alice%231?doc=a%20b%26c&m=b"
        );
        for dots in [".", ".."] {
            assert!(
                render_for("http://pdp/v1/{subject.id}", dots).is_err(),
                "{dots}"
            );
        }
        assert_eq!(
            render_for("http://pdp/v1/{subject.id}", "...").unwrap(),
            "http://pdp/v1/..."
        );
    }

    #[test]
    fn refuses_templates_that_would_let_values_choose_the_host_or_are_not_sent_as_written() {
        assert!(syntax_error("http://{subject.id}/x").contains("path and query"));
        assert!(syntax_error("{request.host}/x").contains("path and query"));
        assert!(syntax_error("http://pdp:{subject.id}/x").contains("path and query"));
        assert!(syntax_error("${BAD}/x").contains("`http` or `https`"));
        assert!(syntax_error("${MISSING}/x").contains("`MISSING` is not set"));
        assert!(syntax_error("${}/x").contains("not an environment variable name"));
        assert!(syntax_error("http://pdp/{subject.id").contains("without its"));
        assert!(syntax_error("http://pdp/}").contains("without its"));
        assert!(syntax_error("http://u:p@pdp/x").contains("credentials"));
        assert!(syntax_error("http://pdp/x#frag").contains("fragment"));
        assert!(syntax_error("http://pdp:80/x").contains("reads as `http://pdp/x`"));
        assert!(syntax_error("http://pdp").contains("reads as `http://pdp/`"));
        assert!(matches!(
            parse("http://pdp/{subject.nope}"),
            Err(TemplateError::Expr(ExprError::UnknownField { .. }))
        ));
        assert!(matches!(
            parse("http://pdp/{response.body}"),
            Err(TemplateError::Expr(ExprError::UnknownVariable { .. }))
        ));
        assert!(parse("https://pdp/a$b/{subject.id}").is_ok());
    }

    #[test]
    fn json_answers_are_parsed_others_kept_as_text() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json; charset=utf-8"),
        );
        assert_eq!(
            parse_body(&headers, br#"{"a":1}"#.to_vec()).unwrap(),
            serde_json::json!({"a": 1})
        );
        assert!(matches!(
            parse_body(&headers, b"{oops".to_vec()),
            Err(CallError::InvalidJson)
        ));
        assert_eq!(parse_body(&headers, Vec::new()).unwrap(), Value::Null);
        assert_eq!(
            parse_body(&HeaderMap::new(), b"ok".to_vec()).unwrap(),
            Value::String("ok".into())
        );
    }

    /// Builds a mechanism of `kind` and `type_name` from `yaml`, the message of its refusal.
    fn refusal(kind: crate::mechanisms::Kind, type_name: &str, yaml: &str) -> Option<String> {
        let keys = Arc::new(crate::tokens::Keyring::default());
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        crate::mechanisms::with_test_context(&keys, &Default::default(), |ctx| {
            crate::mechanisms::build(kind, &Arc::from("m"), type_name, &config, ctx)
        })
        .err()
        .map(|e| e.to_string())
    }

    #[test]
    fn misconfigurations_are_refused_at_load_naming_the_field() {
        use crate::mechanisms::Kind::{Authorizer, Contextualizer};
        let context = |yaml: &str| refusal(Contextualizer, "http", yaml);
        let ok = "request: {url: 'http://kratos/i/{subject.id}'}\nattributes: {email: response.body.email}";
        assert_eq!(context(ok), None);
        let cases = [
            (
                "request: {url: 'http://k/{subject.id}', urll: x}\nattributes: {a: response.body}",
                "unknown field `urll`",
            ),
            (
                "request: {url: 'http://k/x'}\nattributes: {a: response.body}\nretry: true",
                "unknown field `retry`",
            ),
            (
                "request: {url: 'http://k/x'}\nattributes: {email: 'response.body.'}",
                "attributes `email`: invalid CEL",
            ),
            (
                "request: {url: 'http://k/x'}\nattributes: {email: error.message}",
                "unknown variable `error` (known: request, subject, response)",
            ),
            (
                "request: {url: 'http://k/x', method: FETCH}\nattributes: {a: response.body}",
                "request.method: `FETCH` is not one of",
            ),
            (
                "request: {url: 'ftp://k/x'}\nattributes: {a: response.body}",
                "request.url: the scheme must be `http` or `https`",
            ),
            (
                "request: {url: 'http://k/{response.body}'}\nattributes: {a: response.body}",
                "request.url: CEL `response.body` uses unknown variable `response`",
            ),
            (
                "request: {url: 'http://k/x', headers: {x-a: error.kind}}\nattributes: {a: response.body}",
                "request.headers `x-a`: `error` is only bound in error handlers",
            ),
            (
                "request: {url: 'http://k/x', headers: {host: '\"h\"'}}\nattributes: {a: response.body}",
                "request.headers: `host` is set by the HTTP client",
            ),
            (
                "request: {url: 'http://k/x', body: subject.id}\nattributes: {a: response.body}",
                "request.body: a GET request carries no body",
            ),
            (
                "request: {url: 'http://k/x', timeout: 0s}\nattributes: {a: response.body}",
                "request.timeout: 0ns is out of range",
            ),
            (
                "request: {url: 'http://k/x', timeout: 1h}\nattributes: {a: response.body}",
                "request.timeout: 3600s is out of range",
            ),
            (
                "request: {url: 'http://k/x'}\nattributes: {a: response.body}\naccept_status: [200, 503]",
                "accept_status: 503 cannot be accepted",
            ),
            (
                "request: {url: 'http://k/x'}\nattributes: {}",
                "attributes: map at least one attribute",
            ),
            (
                "request: {url: 'http://k/x', secret_headers: {authorization: {secret: {env: HEIMDALL_TEST_UNSET_SECRET}}}}\nattributes: {a: response.body}",
                "request.secret_headers `authorization`: environment variable `HEIMDALL_TEST_UNSET_SECRET` is not set",
            ),
            (
                "request: {url: 'http://k/x', secret_headers: {authorization: {secret: 's3cret'}}}\nattributes: {a: response.body}",
                "inline secrets are not accepted",
            ),
            (
                "request: {url: 'http://k/x'}\nattributes: {a: response.body}\ncache: {ttl: 1s, max_entries: 0}",
                "cache.max_entries: must be more than 0",
            ),
        ];
        for (yaml, expected) in cases {
            let message = context(yaml).unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(message.contains(expected), "{yaml}\n{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        let remote = |yaml: &str| refusal(Authorizer, "remote", yaml);
        assert_eq!(remote("request: {url: 'http://pdp/v1/{subject.id}'}"), None);
        let message =
            remote("request: {url: 'http://pdp/x'}\nallow: response.body.allow ==").unwrap();
        assert!(message.starts_with("allow: invalid CEL"), "{message}");
        let message = remote("request: {url: 'http://pdp/x'}\nallow: reply.ok").unwrap();
        assert!(message.contains("unknown variable `reply`"), "{message}");
        let message = remote("request: {url: 'http://pdp/x'}\ndecision: allow").unwrap();
        assert!(message.contains("unknown field `decision`"), "{message}");
    }

    #[test]
    fn response_reads_status_headers_and_body() {
        let mut headers = HeaderMap::new();
        headers.insert("x-served-by", HeaderValue::from_static("kratos-1"));
        let answer = Answer {
            status: 200,
            headers,
            body: serde_json::json!({"traits": {"email": "a@example.com", "tags": ["x"]}}),
        };
        let subject = Subject::single(Principal::new("alice", vec![], Map::new(), "t"));
        let mut vars = Vars::default();
        vars.bind_subject(&subject);
        answer.bind(&mut vars);
        let eval = |src: &str| Expr::compile_over_response(src).unwrap().eval_json(&vars);
        assert_eq!(
            eval(
                r#"response.status == 200 && response.headers["X-Served-By"] == "kratos-1" && "x" in response.body.traits.tags && subject.id == "alice""#
            ),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval("response.body.traits"),
            Ok(serde_json::json!({"email": "a@example.com", "tags": ["x"]}))
        );
        assert!(eval("response.body.traits.missing").is_err());
        assert!(matches!(
            Expr::compile_over_response("response.stat"),
            Err(ExprError::UnknownField { field, .. }) if field == "stat"
        ));
        // Not bound elsewhere: ordinary expressions refuse it.
        assert!(matches!(
            Expr::compile("response.status == 200"),
            Err(ExprError::UnknownVariable { name, .. }) if name == "response"
        ));
        let attributes = compile_attributes(&std::collections::BTreeMap::from([
            ("email".to_owned(), "response.body.traits.email".to_owned()),
            ("absent".to_owned(), "null".to_owned()),
        ]))
        .unwrap();
        assert_eq!(
            map_attributes(&Arc::from("m"), &attributes, &vars).unwrap(),
            serde_json::json!({"email": "a@example.com"})
                .as_object()
                .cloned()
                .unwrap()
        );
    }

    #[test]
    fn methods_and_headers_are_checked() {
        assert_eq!(parse_method("POST"), Ok(Method::POST));
        assert!(parse_method("post").is_err());
        assert!(parse_method("CONNECT").is_err());
        assert!(checked_header_name("Host", "request.headers").is_err());
        assert!(checked_header_name("x user", "request.headers").is_err());
        assert!(checked_header_name("X-User", "request.headers").is_ok());
    }
}
