//! CEL, the one expression language of heimdall: step conditions (`if`), authorizer expressions
//! and computed header values.
//!
//! Expressions are compiled once at load; each evaluation binds three variables through a
//! resolver, built lazily per request and borrowing from it (no header is copied):
//! `request` (`method`, `scheme`, `host`, `authority`, `path`, `query`, `headers`, `captures`,
//! `peer`, `id`, `raw_query`), `subject` (`id`, `roles`, `attr`, `principals`) and, in error handlers, `error`
//! (`kind`, `message`, `mechanism`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value};

use crate::pipeline::{StepError, Subject};
use crate::request::RequestView;

/// The variables an expression may use.
pub const VARIABLES: [&str; 3] = ["request", "subject", "error"];

static ENV: LazyLock<Option<Arc<Env>>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings).ok()?;
    Some(Arc::new(env))
});

fn env() -> Result<&'static Arc<Env>, ExprError> {
    ENV.as_ref().ok_or(ExprError::Environment)
}

/// An expression that failed to compile or evaluate.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ExprError {
    #[error("invalid CEL `{expr}`: {message}")]
    Parse { expr: String, message: String },
    #[error("CEL `{expr}` uses unknown variable `{name}` (known: request, subject, error)")]
    UnknownVariable { expr: String, name: String },
    #[error("CEL `{expr}` failed: {message}")]
    Eval { expr: Arc<str>, message: String },
    #[error("CEL `{expr}` returned {got}, expected {expected}")]
    Type {
        expr: Arc<str>,
        got: String,
        expected: &'static str,
    },
    #[error("CEL environment could not be built")]
    Environment,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    expr: Arc<str>,
    program: Arc<Program>,
    uses_request: bool,
}

impl Expr {
    /// Compiles `expr`, refusing variables heimdall does not bind.
    pub fn compile(expr: &str) -> Result<Self, ExprError> {
        let program = env()?.compile(expr).map_err(|e| ExprError::Parse {
            expr: expr.to_owned(),
            message: e.to_string().replace('\n', " "),
        })?;
        let references = program.references();
        if let Some(name) = references
            .variables()
            .into_iter()
            .find(|v| !VARIABLES.contains(v))
        {
            return Err(ExprError::UnknownVariable {
                expr: expr.to_owned(),
                name: name.to_owned(),
            });
        }
        let uses_request = references.has_variable("request");
        Ok(Self {
            expr: Arc::from(expr),
            program: Arc::new(program),
            uses_request,
        })
    }

    /// The source text, for messages.
    pub fn source(&self) -> &str {
        &self.expr
    }

    /// Whether evaluating it needs the `request` variable.
    pub fn uses_request(&self) -> bool {
        self.uses_request
    }

    fn eval(&self, vars: &Vars<'_>) -> Result<Value, ExprError> {
        let env = env()?;
        let mut context = Context::with_env(Arc::clone(env));
        context.set_variable_resolver(vars);
        self.program.execute(&context).map_err(|e| ExprError::Eval {
            expr: Arc::clone(&self.expr),
            message: e.to_string(),
        })
    }

    /// Evaluates a condition. Anything but a boolean is an error, never "true".
    pub fn eval_bool(&self, vars: &Vars<'_>) -> Result<bool, ExprError> {
        match self.eval(vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(ExprError::Type {
                expr: Arc::clone(&self.expr),
                got: other.type_of().to_string(),
                expected: "a bool",
            }),
        }
    }

    /// Evaluates a value for a header or body: strings as they are, lists joined with `,`,
    /// numbers and booleans formatted, `null` as empty.
    pub fn eval_string(&self, vars: &Vars<'_>) -> Result<String, ExprError> {
        let value = self.eval(vars)?;
        let mut out = String::new();
        self.render(&value, &mut out)?;
        Ok(out)
    }

    fn render(&self, value: &Value, out: &mut String) -> Result<(), ExprError> {
        use std::fmt::Write as _;
        match value {
            Value::String(s) => out.push_str(s),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            Value::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Value::Null => {}
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.render(item, out)?;
                }
            }
            other => {
                return Err(ExprError::Type {
                    expr: Arc::clone(&self.expr),
                    got: other.type_of().to_string(),
                    expected: "a string, number, bool or list",
                });
            }
        }
        Ok(())
    }
}

/// The variables of one evaluation, borrowing from the request and the subject.
#[derive(Default, Debug)]
pub struct Vars<'a> {
    request: Option<CelMap<'a>>,
    subject: Option<CelMap<'a>>,
    error: Option<CelMap<'a>>,
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let value: &'b CelMap<'_> = match variable {
            "request" => self.request.as_ref()?,
            "subject" => self.subject.as_ref()?,
            "error" => self.error.as_ref()?,
            _ => return None,
        };
        Some(CowVal::Borrowed(value))
    }
}

type Entries<'a> = HashMap<CelMapKey<'a>, Box<dyn Val + 'a>>;

fn string<'a>(s: &'a str) -> Box<dyn Val + 'a> {
    Box::new(CelString::from(s))
}

fn key(s: &str) -> CelMapKey<'_> {
    CelMapKey::from(s)
}

impl<'a> Vars<'a> {
    /// Whether `request` is bound.
    pub fn has_request(&self) -> bool {
        self.request.is_some()
    }

    /// Binds `request`; `captures` are the path parameters of the matched rule (decoded).
    pub fn bind_request(&mut self, req: &RequestView<'a>, captures: &'a [(&'a str, Cow<'a, str>)]) {
        let mut headers = Entries::new();
        req.headers.for_each(|name, value| {
            // Pseudo-headers are exposed through the named fields instead.
            if !name.starts_with(':') {
                headers.insert(key(name), string(value));
            }
        });
        let mut query = Entries::new();
        for pair in req.query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            // First value wins, as most frameworks read a single-valued parameter.
            query
                .entry(CelMapKey::String(CelString::from(k)))
                .or_insert_with(|| Box::new(CelString::from(v)));
        }
        let mut capture_map = Entries::new();
        for (name, value) in captures {
            capture_map.insert(key(name), Box::new(CelString::from(value.as_ref())));
        }
        let mut peer = Entries::new();
        peer.insert(key("address"), string(req.peer.address));
        peer.insert(key("principal"), string(req.peer.principal));

        let mut map = Entries::new();
        map.insert(key("id"), string(req.id));
        map.insert(key("method"), string(req.method));
        map.insert(key("scheme"), string(req.scheme));
        map.insert(key("host"), string(req.host));
        map.insert(key("authority"), string(req.authority));
        map.insert(key("path"), string(req.path));
        map.insert(key("raw_query"), string(req.query));
        map.insert(key("query"), Box::new(CelMap::from(query)));
        map.insert(key("headers"), Box::new(CelMap::from(headers)));
        map.insert(key("captures"), Box::new(CelMap::from(capture_map)));
        map.insert(key("peer"), Box::new(CelMap::from(peer)));
        self.request = Some(CelMap::from(map));
    }

    /// Binds `subject`: the first principal's fields at the top, every principal by name.
    pub fn bind_subject(&mut self, subject: &'a Subject) {
        let mut map = principal_entries(subject.primary());
        let mut principals = Entries::new();
        for (name, principal) in subject.iter() {
            principals.insert(
                key(name),
                Box::new(CelMap::from(principal_entries(Some(principal)))),
            );
        }
        map.insert(key("principals"), Box::new(CelMap::from(principals)));
        self.subject = Some(CelMap::from(map));
    }

    /// Binds `error` for the error pipeline.
    pub fn bind_error(&mut self, error: &'a StepError) {
        let mut map = Entries::new();
        map.insert(key("kind"), string(error.kind.as_str()));
        map.insert(key("message"), string(&error.message));
        map.insert(key("mechanism"), string(&error.mechanism));
        self.error = Some(CelMap::from(map));
    }
}

fn principal_entries(principal: Option<&crate::pipeline::Principal>) -> Entries<'_> {
    let mut map = Entries::new();
    let Some(p) = principal else {
        map.insert(key("id"), string(""));
        map.insert(key("roles"), Box::new(CelList::from(Vec::new())));
        map.insert(key("attr"), Box::new(CelMap::from(Entries::new())));
        return map;
    };
    map.insert(key("id"), string(&p.id));
    map.insert(
        key("roles"),
        Box::new(CelList::from(
            p.roles.iter().map(|r| string(r)).collect::<Vec<_>>(),
        )),
    );
    let mut attr = Entries::new();
    for (k, v) in p.attributes.iter() {
        attr.insert(key(k), json_val(v));
    }
    map.insert(key("attr"), Box::new(CelMap::from(attr)));
    map.insert(key("mechanism"), string(&p.mechanism));
    map
}

/// A JSON value as a CEL value, borrowing its strings.
pub fn json_val(value: &serde_json::Value) -> Box<dyn Val + '_> {
    use serde_json::Value as J;
    match value {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        J::String(s) => string(s),
        J::Array(items) => Box::new(CelList::from(
            items.iter().map(json_val).collect::<Vec<_>>(),
        )),
        J::Object(map) => {
            let mut entries = Entries::new();
            for (k, v) in map {
                entries.insert(key(k), json_val(v));
            }
            Box::new(CelMap::from(entries))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Principal;
    use crate::request::Headers;

    fn subject() -> Subject {
        let mut attributes = serde_json::Map::new();
        attributes.insert("plan".into(), "pro".into());
        attributes.insert("max_users".into(), 500.into());
        Subject::single(Principal::new(
            "alice",
            vec!["user".into(), "editor".into()],
            attributes,
            "test",
        ))
    }

    #[test]
    fn refuses_unknown_variables_and_bad_syntax() {
        assert!(
            matches!(Expr::compile("foo == 1"), Err(ExprError::UnknownVariable { name, .. }) if name == "foo")
        );
        assert!(matches!(
            Expr::compile("subject.id =="),
            Err(ExprError::Parse { .. })
        ));
    }

    #[test]
    fn evaluates_over_request_and_subject() {
        let headers = HashMap::from([("accept".to_string(), "text/html".to_string())]);
        let req = RequestView::new(
            "PUT",
            "https",
            "api.example.com",
            "/documents/42?x=1&y=a%20b",
            Headers::Map(&headers),
        );
        let captures = vec![("id", Cow::Borrowed("42"))];
        let subject = subject();
        let mut vars = Vars::default();
        vars.bind_request(&req, &captures);
        vars.bind_subject(&subject);
        let cases = [
            (
                r#"request.method == "PUT" && request.captures.id == "42""#,
                true,
            ),
            (
                r#""editor" in subject.roles && subject.attr.max_users > 100"#,
                true,
            ),
            (
                r#"request.query.y == "a b" && request.headers.accept.contains("html")"#,
                true,
            ),
            (r#"has(request.headers.authorization)"#, false),
            (r#"subject.principals.default.id == "alice""#, true),
        ];
        for (expr, expected) in cases {
            assert_eq!(
                Expr::compile(expr).unwrap().eval_bool(&vars).unwrap(),
                expected,
                "{expr}"
            );
        }
        let roles = Expr::compile("subject.roles").unwrap();
        assert_eq!(roles.eval_string(&vars).unwrap(), "user,editor");
        let not_bool = Expr::compile("subject.id").unwrap();
        assert!(matches!(
            not_bool.eval_bool(&vars),
            Err(ExprError::Type { .. })
        ));
    }
}
