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

use crate::decision::StepError;
use crate::request::RequestView;
use crate::subject::Subject;

/// The variables an expression may use.
pub const VARIABLES: [&str; 3] = ["request", "subject", "error"];

/// The fields of `request`, in bit order for [`Uses`].
pub const REQUEST_FIELDS: [&str; 11] = [
    "id",
    "method",
    "scheme",
    "host",
    "authority",
    "path",
    "raw_query",
    "query",
    "headers",
    "captures",
    "peer",
];
/// The fields of `subject`, in bit order for [`Uses`].
pub const SUBJECT_FIELDS: [&str; 5] = ["id", "roles", "attr", "mechanism", "principals"];
/// The fields of `error`.
pub const ERROR_FIELDS: [&str; 3] = ["kind", "message", "mechanism"];

/// Which fields of `request` and `subject` expressions read, found at load time, so a request
/// binds only those (building the header map is the costly part, and most rules never read it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    request: u16,
    subject: u16,
    /// Whether `error` is read (only bound in the error pipeline).
    error: bool,
}

impl Uses {
    /// Every field of both variables.
    pub const ALL: Self = Self {
        request: u16::MAX,
        subject: u16::MAX,
        error: true,
    };

    /// The fields either of `self` and `other` reads.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self {
            request: self.request | other.request,
            subject: self.subject | other.subject,
            error: self.error || other.error,
        }
    }

    /// Whether `subject` is read at all.
    pub fn reads_subject(self) -> bool {
        self.subject != 0
    }

    /// Whether `error` is read.
    pub fn reads_error(self) -> bool {
        self.error
    }

    /// Whether `request` is read at all.
    pub fn any_request(self) -> bool {
        self.request != 0
    }

    fn request_field(self, index: usize) -> bool {
        self.request & (1 << index) != 0
    }

    fn subject_field(self, index: usize) -> bool {
        self.subject & (1 << index) != 0
    }
}

/// Records a use of `variable.field`, refusing fields that do not exist.
fn mark(uses: &mut Uses, variable: &str, field: &str, source: &str) -> Result<(), ExprError> {
    let (fields, bits): (&[&str], Option<&mut u16>) = match variable {
        "request" => (&REQUEST_FIELDS, Some(&mut uses.request)),
        "subject" => (&SUBJECT_FIELDS, Some(&mut uses.subject)),
        "error" => {
            uses.error = true;
            (&ERROR_FIELDS, None)
        }
        _ => return Ok(()),
    };
    let Some(index) = fields.iter().position(|f| *f == field) else {
        return Err(ExprError::UnknownField {
            expr: source.to_owned(),
            variable: variable.to_owned(),
            field: field.to_owned(),
            known: fields.join(", "),
        });
    };
    if let Some(bits) = bits {
        *bits |= 1 << index;
    }
    Ok(())
}

fn mark_all(uses: &mut Uses, variable: &str) {
    match variable {
        "request" => uses.request = u16::MAX,
        "subject" => uses.subject = u16::MAX,
        "error" => uses.error = true,
        _ => {}
    }
}

/// Walks the expression tree: `request.method` and `request["method"]` mark one field; a bare
/// `request` (passed to a function, compared whole) marks all of them.
fn walk(expr: &cel::parser::Expression, uses: &mut Uses, source: &str) -> Result<(), ExprError> {
    use cel::common::ast::{EntryExpr, Expr as Ast, LiteralValue};
    match &expr.expr {
        Ast::Select(select) => {
            if let Ast::Ident(name) = &select.operand.expr
                && VARIABLES.contains(&name.as_str())
            {
                return mark(uses, name, &select.field, source);
            }
            walk(&select.operand, uses, source)
        }
        Ast::Ident(name) => {
            mark_all(uses, name);
            Ok(())
        }
        Ast::Call(call) => {
            if call.func_name == cel::common::ast::operators::INDEX
                && call.target.is_none()
                && let [target, index] = call.args.as_slice()
                && let (Ast::Ident(name), Ast::Literal(LiteralValue::String(field))) =
                    (&target.expr, &index.expr)
                && VARIABLES.contains(&name.as_str())
            {
                return mark(uses, name, field.inner(), source);
            }
            if let Some(target) = &call.target {
                walk(target, uses, source)?;
            }
            call.args.iter().try_for_each(|arg| walk(arg, uses, source))
        }
        Ast::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .try_for_each(|e| walk(e, uses, source)),
        Ast::List(list) => list.elements.iter().try_for_each(|e| walk(e, uses, source)),
        Ast::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                walk(&e.key, uses, source).and_then(|()| walk(&e.value, uses, source))
            }
            EntryExpr::StructField(f) => walk(&f.value, uses, source),
        }),
        Ast::Struct(st) => st.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                walk(&e.key, uses, source).and_then(|()| walk(&e.value, uses, source))
            }
            EntryExpr::StructField(f) => walk(&f.value, uses, source),
        }),
        Ast::Literal(_) | Ast::Unspecified => Ok(()),
    }
}

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
    #[error("CEL `{expr}`: `{variable}` has no field `{field}` (fields: {known})")]
    UnknownField {
        expr: String,
        variable: String,
        field: String,
        known: String,
    },
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
    uses: Uses,
    /// Set for a plain field read (`subject.id`, `request.headers.accept`): evaluated without the
    /// interpreter, with the same result and errors.
    direct: Option<Direct>,
}

/// A field read that needs no interpreter: the usual shape of header values.
#[derive(Debug, Clone, PartialEq)]
enum Direct {
    SubjectId,
    SubjectRoles,
    SubjectMechanism,
    SubjectAttr(Box<str>),
    Request(&'static str),
    RequestHeader(Box<str>),
    RequestCapture(Box<str>),
}

impl Direct {
    /// Recognizes `variable.field` and `variable.map.key` for the fields that allow it.
    fn detect(expr: &cel::parser::Expression) -> Option<Self> {
        use cel::common::ast::Expr as Ast;
        let Ast::Select(outer) = &expr.expr else {
            return None;
        };
        if outer.test {
            return None;
        }
        match &outer.operand.expr {
            Ast::Ident(var) => match (var.as_str(), outer.field.as_str()) {
                ("subject", "id") => Some(Self::SubjectId),
                ("subject", "roles") => Some(Self::SubjectRoles),
                ("subject", "mechanism") => Some(Self::SubjectMechanism),
                ("request", field) => [
                    "id",
                    "method",
                    "scheme",
                    "host",
                    "authority",
                    "path",
                    "raw_query",
                ]
                .into_iter()
                .find(|f| *f == field)
                .map(Self::Request),
                _ => None,
            },
            Ast::Select(inner) if !inner.test => {
                let Ast::Ident(var) = &inner.operand.expr else {
                    return None;
                };
                let key: Box<str> = outer.field.as_str().into();
                match (var.as_str(), inner.field.as_str()) {
                    ("subject", "attr") => Some(Self::SubjectAttr(key)),
                    ("request", "headers") => Some(Self::RequestHeader(key)),
                    ("request", "captures") => Some(Self::RequestCapture(key)),
                    _ => None,
                }
            }
            _ => None,
        }
    }
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
        let mut uses = Uses::default();
        walk(program.expression(), &mut uses, expr)?;
        let direct = Direct::detect(program.expression());
        if direct.is_some() {
            // Read from the raw request and subject: nothing to bind for it.
            uses = Uses::default();
        }
        Ok(Self {
            expr: Arc::from(expr),
            program: Arc::new(program),
            uses,
            direct,
        })
    }

    /// The source text, for messages.
    pub fn source(&self) -> &str {
        &self.expr
    }

    /// The fields of `request` and `subject` it reads.
    pub fn uses(&self) -> Uses {
        self.uses
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
        if let Some(direct) = &self.direct {
            return match self.direct_json(direct, vars)? {
                serde_json::Value::Bool(b) => Ok(b),
                other => Err(self.json_type_error(&other, "a bool")),
            };
        }
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
        if let Some(direct) = &self.direct {
            return self.eval_direct(direct, vars);
        }
        let value = self.eval(vars)?;
        let mut out = String::new();
        self.render(&value, &mut out)?;
        Ok(out)
    }

    /// Evaluates to a list of strings: a string is a list of one, a list must hold strings.
    pub fn eval_strings(&self, vars: &Vars<'_>) -> Result<Vec<String>, ExprError> {
        if let Some(direct) = &self.direct {
            return match self.direct_json(direct, vars)? {
                serde_json::Value::String(s) => Ok(vec![s]),
                serde_json::Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Ok(s),
                        other => Err(self.json_type_error(&other, "a string or a list of strings")),
                    })
                    .collect(),
                other => Err(self.json_type_error(&other, "a string or a list of strings")),
            };
        }
        let type_error = |got: &Value| ExprError::Type {
            expr: Arc::clone(&self.expr),
            got: got.type_of().to_string(),
            expected: "a string or a list of strings",
        };
        match self.eval(vars)? {
            Value::String(s) => Ok(vec![s.to_string()]),
            Value::List(items) => items
                .iter()
                .map(|v| {
                    if let Value::String(s) = v {
                        Ok(s.to_string())
                    } else {
                        Err(type_error(v))
                    }
                })
                .collect(),
            other => Err(type_error(&other)),
        }
    }

    /// Evaluates to JSON (for resource attributes sent to the policy engine).
    pub fn eval_json(&self, vars: &Vars<'_>) -> Result<serde_json::Value, ExprError> {
        if let Some(direct) = &self.direct {
            return self.direct_json(direct, vars);
        }
        let value = self.eval(vars)?;
        value_to_json(&value).ok_or_else(|| ExprError::Type {
            expr: Arc::clone(&self.expr),
            got: value.type_of().to_string(),
            expected: "a JSON-like value",
        })
    }

    fn missing(&self, what: &str) -> ExprError {
        ExprError::Eval {
            expr: Arc::clone(&self.expr),
            message: format!("No such key: {what}"),
        }
    }

    fn eval_direct(&self, direct: &Direct, vars: &Vars<'_>) -> Result<String, ExprError> {
        let subject = vars.raw_subject.and_then(Subject::primary);
        let request = vars.raw_request.as_ref();
        match direct {
            Direct::SubjectId => Ok(subject.map(|p| p.id.to_string()).unwrap_or_default()),
            Direct::SubjectMechanism => {
                Ok(subject.map(|p| p.mechanism.to_string()).unwrap_or_default())
            }
            Direct::SubjectRoles => Ok(subject.map(|p| p.roles.join(",")).unwrap_or_default()),
            Direct::SubjectAttr(key) => {
                let value = subject
                    .and_then(|p| p.attributes.get(&**key))
                    .ok_or_else(|| self.missing(key))?;
                let mut out = String::new();
                self.render_json(value, &mut out)?;
                Ok(out)
            }
            Direct::Request(field) => {
                let (req, _) = request.ok_or_else(|| self.missing("request"))?;
                Ok(match *field {
                    "id" => req.id,
                    "method" => req.method,
                    "scheme" => req.scheme,
                    "host" => req.host,
                    "authority" => req.authority,
                    "path" => req.path,
                    _ => req.query,
                }
                .to_owned())
            }
            Direct::RequestHeader(name) => {
                let (req, _) = request.ok_or_else(|| self.missing("request"))?;
                req.headers
                    .get(name)
                    .map(str::to_owned)
                    .ok_or_else(|| self.missing(name))
            }
            Direct::RequestCapture(name) => {
                let (_, captures) = request.ok_or_else(|| self.missing("request"))?;
                captures
                    .iter()
                    .find(|(n, _)| *n == &**name)
                    .map(|(_, v)| v.to_string())
                    .ok_or_else(|| self.missing(name))
            }
        }
    }

    /// A direct read as JSON, for the evaluation modes other than [`Expr::eval_string`].
    fn direct_json(
        &self,
        direct: &Direct,
        vars: &Vars<'_>,
    ) -> Result<serde_json::Value, ExprError> {
        match direct {
            Direct::SubjectRoles => {
                let roles = vars
                    .raw_subject
                    .and_then(Subject::primary)
                    .map(|p| {
                        p.roles
                            .iter()
                            .map(|r| serde_json::Value::from(&**r))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(serde_json::Value::Array(roles))
            }
            Direct::SubjectAttr(key) => vars
                .raw_subject
                .and_then(Subject::primary)
                .and_then(|p| p.attributes.get(&**key))
                .cloned()
                .ok_or_else(|| self.missing(key)),
            _ => self
                .eval_direct(direct, vars)
                .map(serde_json::Value::String),
        }
    }

    fn json_type_error(&self, value: &serde_json::Value, expected: &'static str) -> ExprError {
        let got = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "bool",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "list",
            serde_json::Value::Object(_) => "map",
        };
        ExprError::Type {
            expr: Arc::clone(&self.expr),
            got: got.to_owned(),
            expected,
        }
    }

    /// Renders a JSON attribute exactly as the interpreter path renders its CEL value.
    fn render_json(&self, value: &serde_json::Value, out: &mut String) -> Result<(), ExprError> {
        use serde_json::Value as J;
        use std::fmt::Write as _;
        match value {
            J::Null => {}
            J::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            J::Number(n) => {
                let _ = match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => write!(out, "{i}"),
                    (None, Some(u)) => write!(out, "{u}"),
                    _ => write!(out, "{}", n.as_f64().unwrap_or(f64::NAN)),
                };
            }
            J::String(s) => out.push_str(s),
            J::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.render_json(item, out)?;
                }
            }
            J::Object(_) => {
                return Err(ExprError::Type {
                    expr: Arc::clone(&self.expr),
                    got: "map".into(),
                    expected: "a string, number, bool or list",
                });
            }
        }
        Ok(())
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
/// The request view with the matched path parameters.
type RawRequest<'a> = (RequestView<'a>, &'a [(&'a str, Cow<'a, str>)]);

#[derive(Default)]
pub struct Vars<'a> {
    request: Option<CelMap<'a>>,
    subject: Option<CelMap<'a>>,
    error: Option<CelMap<'a>>,
    /// The request and subject themselves, for direct field reads.
    raw_request: Option<RawRequest<'a>>,
    raw_subject: Option<&'a Subject>,
}

impl std::fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vars")
            .field("request", &self.request)
            .field("subject", &self.subject)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
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
    /// Binds `request`; `captures` are the path parameters of the matched rule (decoded).
    pub fn bind_request(
        &mut self,
        req: &RequestView<'a>,
        captures: &'a [(&'a str, Cow<'a, str>)],
        uses: Uses,
    ) {
        self.raw_request = Some((*req, captures));
        if !uses.any_request() {
            return;
        }
        let mut map = Entries::new();
        for (index, field) in REQUEST_FIELDS.iter().enumerate() {
            if uses.request_field(index) {
                map.insert(key(field), request_field(req, captures, field));
            }
        }
        self.request = Some(CelMap::from(map));
    }

    /// Binds `subject` (only the fields in `uses`): the first principal's fields at the top,
    /// every principal by name under `principals`.
    pub fn bind_subject(&mut self, subject: &'a Subject, uses: Uses) {
        self.raw_subject = Some(subject);
        let mut map = Entries::new();
        let primary = subject.primary();
        for (index, field) in SUBJECT_FIELDS.iter().enumerate() {
            if !uses.subject_field(index) {
                continue;
            }
            let value: Box<dyn Val + 'a> = if *field == "principals" {
                let mut principals = Entries::new();
                for (name, principal) in subject.iter() {
                    principals.insert(
                        key(name),
                        Box::new(CelMap::from(principal_entries(Some(principal)))),
                    );
                }
                Box::new(CelMap::from(principals))
            } else {
                principal_field(primary, field)
            };
            map.insert(key(field), value);
        }
        self.subject = Some(CelMap::from(map));
    }
}

/// One field of `request`.
fn request_field<'a>(
    req: &RequestView<'a>,
    captures: &'a [(&'a str, Cow<'a, str>)],
    field: &str,
) -> Box<dyn Val + 'a> {
    match field {
        "id" => string(req.id),
        "method" => string(req.method),
        "scheme" => string(req.scheme),
        "host" => string(req.host),
        "authority" => string(req.authority),
        "path" => string(req.path),
        "raw_query" => string(req.query),
        "query" => {
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
            Box::new(CelMap::from(query))
        }
        "headers" => {
            let mut headers = Entries::new();
            req.headers.for_each(|name, value| {
                // Pseudo-headers are exposed through the named fields instead.
                if !name.starts_with(':') {
                    // First value wins, as for direct reads (`Headers::get`).
                    headers.entry(key(name)).or_insert_with(|| string(value));
                }
            });
            Box::new(CelMap::from(headers))
        }
        "captures" => {
            let mut map = Entries::new();
            for (name, value) in captures {
                map.insert(key(name), Box::new(CelString::from(value.as_ref())));
            }
            Box::new(CelMap::from(map))
        }
        "peer" => {
            let mut peer = Entries::new();
            peer.insert(key("address"), string(req.peer.address));
            peer.insert(key("principal"), string(req.peer.principal));
            Box::new(CelMap::from(peer))
        }
        _ => Box::new(CelNull),
    }
}

/// One field of a principal (an empty principal when there is none).
fn principal_field<'a>(
    principal: Option<&'a crate::subject::Principal>,
    field: &str,
) -> Box<dyn Val + 'a> {
    match (field, principal) {
        ("id", Some(p)) => string(&p.id),
        ("id", None) | ("mechanism", None) => string(""),
        ("roles", Some(p)) => Box::new(CelList::from(
            p.roles.iter().map(|r| string(r)).collect::<Vec<_>>(),
        )),
        ("roles", None) => Box::new(CelList::from(Vec::new())),
        ("attr", Some(p)) => {
            let mut attr = Entries::new();
            for (k, v) in p.attributes.iter() {
                attr.insert(key(k), json_val(v));
            }
            Box::new(CelMap::from(attr))
        }
        ("attr", None) => Box::new(CelMap::from(Entries::new())),
        ("mechanism", Some(p)) => string(&p.mechanism),
        _ => Box::new(CelNull),
    }
}

impl<'a> Vars<'a> {
    /// Binds every field of `request` (tests, tools).
    pub fn bind_request_all(
        &mut self,
        req: &RequestView<'a>,
        captures: &'a [(&'a str, Cow<'a, str>)],
    ) {
        self.bind_request(req, captures, Uses::ALL);
    }

    /// The subject bound for this evaluation.
    pub fn subject(&self) -> Option<&'a Subject> {
        self.raw_subject
    }

    /// The request bound for this evaluation.
    pub fn request(&self) -> Option<&RequestView<'a>> {
        self.raw_request.as_ref().map(|(req, _)| req)
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

/// Every field of a principal, for `subject.principals.<name>`.
fn principal_entries(principal: Option<&crate::subject::Principal>) -> Entries<'_> {
    ["id", "roles", "attr", "mechanism"]
        .into_iter()
        .map(|field| (key(field), principal_field(principal, field)))
        .collect()
}

/// A CEL value as JSON; `None` for values JSON cannot carry (bytes, functions, …).
fn value_to_json(value: &Value) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::UInt(u) => J::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.to_string()),
        Value::List(items) => J::Array(items.iter().map(value_to_json).collect::<Option<_>>()?),
        Value::Map(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, value_to_json(v)?);
            }
            J::Object(out)
        }
        _ => return None,
    })
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
    use crate::canonical::RequestLine;
    use crate::request::Headers;
    use crate::subject::Principal;

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
    fn finds_the_fields_expressions_read() {
        let uses = |src: &str| Expr::compile(src).unwrap().uses();
        let method = uses(r#"request.method == "GET""#);
        assert!(
            method.request_field(1) && !method.request_field(8),
            "method only, not headers"
        );
        assert!(uses(r#"request["headers"].accept == "x""#).request_field(8));
        assert!(uses(r#"has(request.headers.accept)"#).request_field(8));
        assert!(uses(r#"[1].exists(x, request.captures.id == "1")"#).request_field(9));
        assert_eq!(
            uses("size(request) > 0"),
            Uses {
                request: u16::MAX,
                subject: 0,
                error: false
            }
        );
        assert!(!uses(r#""admin" in subject.roles"#).any_request());
        assert!(uses(r#""admin" in subject.roles"#).subject_field(1));
        let err = Expr::compile("request.metod == 1").unwrap_err().to_string();
        assert!(err.contains("`request` has no field `metod`"), "{err}");
        assert!(Expr::compile("error.kinds == 1").is_err());
    }

    /// Direct field reads answer exactly as the interpreter does, errors included.
    #[test]
    fn direct_reads_match_the_interpreter() {
        let headers = HashMap::from([
            ("accept".to_string(), "text/html".to_string()),
            ("x-tenant".to_string(), "acme".to_string()),
        ]);
        let line = RequestLine::parse(
            "PUT",
            "api.example.com:8443",
            "/documents/42?x=1",
            &Default::default(),
        )
        .unwrap();
        let req = RequestView::new(&line, "https", Headers::Map(&headers));
        let captures = vec![("id", Cow::Borrowed("42"))];
        let mut attributes = serde_json::Map::new();
        attributes.insert("plan".into(), "pro".into());
        attributes.insert("seats".into(), 500.into());
        attributes.insert("ratio".into(), serde_json::json!(2.5));
        attributes.insert("whole".into(), serde_json::json!(2.0));
        attributes.insert("features".into(), serde_json::json!(["sso", "audit"]));
        attributes.insert("nothing".into(), serde_json::Value::Null);
        attributes.insert("nested".into(), serde_json::json!({"a": 1}));
        let subject = Subject::single(Principal::new(
            "alice",
            vec!["user".into(), "editor".into()],
            attributes,
            "bearer",
        ));
        let mut vars = Vars::default();
        vars.bind_request(&req, &captures, Uses::ALL);
        vars.bind_subject(&subject, Uses::ALL);
        let sources = [
            "subject.id",
            "subject.roles",
            "subject.mechanism",
            "subject.attr.plan",
            "subject.attr.seats",
            "subject.attr.ratio",
            "subject.attr.whole",
            "subject.attr.features",
            "subject.attr.nothing",
            "subject.attr.nested",
            "subject.attr.missing",
            "request.method",
            "request.host",
            "request.authority",
            "request.path",
            "request.raw_query",
            "request.scheme",
            "request.headers.accept",
            "request.headers.missing",
            "request.captures.id",
            "request.captures.nope",
        ];
        for source in sources {
            let direct = Expr::compile(source).unwrap();
            assert!(direct.direct.is_some(), "{source} should be read directly");
            let mut interpreted = direct.clone();
            interpreted.direct = None;
            let (a, b) = (direct.eval_string(&vars), interpreted.eval_string(&vars));
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(x, y, "{source}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{source}: direct {a:?} vs interpreted {b:?}"),
            }
            // Every evaluation mode agrees, not only strings.
            let (a, b) = (direct.eval_json(&vars), interpreted.eval_json(&vars));
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(x, y, "{source} as JSON"),
                (Err(_), Err(_)) => {}
                _ => panic!("{source} as JSON: direct {a:?} vs interpreted {b:?}"),
            }
            assert_eq!(
                direct.eval_strings(&vars).ok(),
                interpreted.eval_strings(&vars).ok(),
                "{source} as strings"
            );
            assert_eq!(
                direct.eval_bool(&vars).ok(),
                interpreted.eval_bool(&vars).ok(),
                "{source} as bool"
            );
        }
        assert!(
            Expr::compile("has(subject.attr.plan)")
                .unwrap()
                .direct
                .is_none()
        );
        assert!(
            Expr::compile(r#"subject.id + "!""#)
                .unwrap()
                .direct
                .is_none()
        );
    }

    #[test]
    fn binds_only_what_is_read() {
        let headers = HashMap::from([("accept".to_string(), "text/html".to_string())]);
        let line = RequestLine::parse("GET", "h", "/p", &Default::default()).unwrap();
        let req = RequestView::new(&line, "https", Headers::Map(&headers));
        let expr = Expr::compile(r#"request.method == "GET""#).unwrap();
        let mut vars = Vars::default();
        vars.bind_request(&req, &[], expr.uses());
        assert!(expr.eval_bool(&vars).unwrap());
        // A field nobody declared a use of is not there.
        let headers_expr = Expr::compile(r#"has(request.headers.accept)"#).unwrap();
        assert!(headers_expr.eval_bool(&vars).is_err());
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
        let line = RequestLine::parse(
            "PUT",
            "api.example.com",
            "/documents/42?x=1&y=a%20b",
            &Default::default(),
        )
        .unwrap();
        let req = RequestView::new(&line, "https", Headers::Map(&headers));
        let captures = vec![("id", Cow::Borrowed("42"))];
        let subject = subject();
        let mut vars = Vars::default();
        vars.bind_request_all(&req, &captures);
        vars.bind_subject(&subject, Uses::ALL);
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
