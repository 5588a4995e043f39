//! CEL, the one expression language of heimdall: step conditions (`if`), authorizer expressions
//! and computed header values.
//!
//! Expressions are compiled once at load, where [`analysis`] refuses variables and fields
//! heimdall does not bind. Each evaluation reads three variables through [`Vars`], bound lazily
//! over the request and the subject (see [`bind`]): `request` (`method`, `scheme`, `host`,
//! `authority`, `path`, `query`, `headers`, `captures`, `peer`, `id`, `raw_query`), `subject`
//! (`id`, `roles`, `attr`, `mechanism`, `principals`) and, in error handlers, `error` (`kind`,
//! `message`, `mechanism`). The field names live in [`fields`].

mod analysis;
mod bind;
mod direct;
pub(crate) mod fields;
mod plain;
mod predicate;
mod render;

use std::sync::{Arc, LazyLock};

use cel::common::types::CelBool;
use cel::common::value::Val;
use cel::{Context, Env, Program, Value};

pub(crate) use bind::Vars;
use direct::Direct;
pub(crate) use fields::{Uses, Variable};
use plain::Plain;
use predicate::Predicate;

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
    #[error("CEL `{expr}` uses unknown variable `{name}` (known: {known})")]
    UnknownVariable {
        expr: String,
        name: String,
        known: &'static str,
    },
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
    /// Set for a condition of the usual shapes (`"admin" in subject.roles`): decided without the
    /// interpreter where it can be, with the same result.
    predicate: Option<Predicate>,
    /// Set for a value of the usual compound shapes (`cond ? a : b`, `{...}[request.method]`,
    /// `request.query.x`): computed without the interpreter where it can be, same result.
    plain: Option<Plain>,
}

impl Expr {
    /// Compiles `expr`, refusing variables and fields heimdall does not bind.
    pub fn compile(expr: &str) -> Result<Self, ExprError> {
        Self::compile_binding(expr, false)
    }

    /// Compiles an expression over the answer of an outbound call: `response` (`status`,
    /// `headers`, `body`) is bound besides `request` and `subject`.
    pub fn compile_over_response(expr: &str) -> Result<Self, ExprError> {
        Self::compile_binding(expr, true)
    }

    fn compile_binding(expr: &str, response: bool) -> Result<Self, ExprError> {
        let bindable = |name: &str| {
            Variable::parse(name).is_some_and(|v| match v {
                Variable::Response => response,
                // No error pipeline runs around an outbound call.
                Variable::Error => !response,
                Variable::Request | Variable::Subject => true,
            })
        };
        let program = env()?.compile(expr).map_err(|e| ExprError::Parse {
            expr: expr.to_owned(),
            message: e.to_string().replace('\n', " "),
        })?;
        let references = program.references();
        let mut bound = Vec::new();
        analysis::comprehension_names(program.expression(), &mut bound);
        if let Some(name) = references
            .variables()
            .into_iter()
            .find(|v| !bindable(v) && !bound.iter().any(|b| b == v))
        {
            return Err(ExprError::UnknownVariable {
                expr: expr.to_owned(),
                name: name.to_owned(),
                known: if response {
                    "request, subject, response"
                } else {
                    "request, subject, error"
                },
            });
        }
        let mut uses = Uses::default();
        analysis::walk(program.expression(), &mut uses, expr)?;
        let direct = Direct::detect(program.expression());
        let predicate = Predicate::detect(program.expression());
        let plain = if direct.is_none() {
            Plain::detect(program.expression())
        } else {
            None
        };
        Ok(Self {
            expr: Arc::from(expr),
            program: Arc::new(program),
            uses,
            direct,
            predicate,
            plain,
        })
    }

    /// The variables and fields it reads.
    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// Runs the interpreter and hands its result to `convert`, whose `Err` is the type it got.
    fn eval<T>(
        &self,
        vars: &Vars<'_>,
        expected: &'static str,
        convert: impl FnOnce(&dyn Val) -> Result<T, String>,
    ) -> Result<T, ExprError> {
        let env = env()?;
        let mut context = Context::with_env(Arc::clone(env));
        context.set_variable_resolver(vars);
        let value = Value::resolve_val(self.program.expression(), &context).map_err(|e| {
            ExprError::Eval {
                expr: Arc::clone(&self.expr),
                message: e.to_string(),
            }
        })?;
        convert(&*value).map_err(|got| self.type_error(got, expected))
    }

    fn type_error(&self, got: String, expected: &'static str) -> ExprError {
        ExprError::Type {
            expr: Arc::clone(&self.expr),
            got,
            expected,
        }
    }

    /// Evaluates a condition. Anything but a boolean is an error, never "true".
    pub fn eval_bool(&self, vars: &Vars<'_>) -> Result<bool, ExprError> {
        if let Some(decided) = self.predicate.as_ref().and_then(|p| p.decide(vars)) {
            return Ok(decided);
        }
        if let Some(direct) = &self.direct {
            return match direct.json(self, vars)? {
                serde_json::Value::Bool(b) => Ok(b),
                other => Err(self.type_error(direct::json_type(&other).to_owned(), "a bool")),
            };
        }
        self.eval(vars, "a bool", |value| {
            value
                .downcast_ref::<CelBool>()
                .map(|b| *b.inner())
                .ok_or_else(|| render::type_name(value))
        })
    }

    /// Evaluates a value for a header or body: strings as they are, lists joined with `,`,
    /// numbers and booleans formatted, `null` as empty.
    pub fn eval_string(&self, vars: &Vars<'_>) -> Result<String, ExprError> {
        if let Some(direct) = &self.direct {
            return direct.string(self, vars);
        }
        if let Some(computed) = self.plain.as_ref().and_then(|p| p.string(self, vars)) {
            return computed;
        }
        self.eval(vars, "a string, number, bool or list", |value| {
            let mut out = String::new();
            render::render(value, &mut out).map(|()| out)
        })
    }

    /// Evaluates to a list of strings: a string is a list of one, a list must hold strings.
    pub fn eval_strings(&self, vars: &Vars<'_>) -> Result<Vec<String>, ExprError> {
        const EXPECTED: &str = "a string or a list of strings";
        let fast = match (&self.direct, &self.plain) {
            (Some(direct), _) => Some(direct.json(self, vars)),
            (None, Some(plain)) => plain.json(self, vars),
            (None, None) => None,
        };
        if let Some(value) = fast {
            return match value? {
                serde_json::Value::String(s) => Ok(vec![s]),
                serde_json::Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Ok(s),
                        other => {
                            Err(self.type_error(direct::json_type(&other).to_owned(), EXPECTED))
                        }
                    })
                    .collect(),
                other => Err(self.type_error(direct::json_type(&other).to_owned(), EXPECTED)),
            };
        }
        self.eval(vars, EXPECTED, render::to_strings)
    }

    /// Evaluates to JSON (for resource attributes sent to the policy engine).
    pub fn eval_json(&self, vars: &Vars<'_>) -> Result<serde_json::Value, ExprError> {
        if let Some(direct) = &self.direct {
            return direct.json(self, vars);
        }
        if let Some(computed) = self.plain.as_ref().and_then(|p| p.json(self, vars)) {
            return computed;
        }
        self.eval(vars, "a JSON-like value", render::to_json)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashMap;

    use serde_json::json;

    use super::fields::{RequestField, SubjectField};
    use super::*;
    use crate::canonical::RequestLine;
    use crate::request::{Headers, RequestView};
    use crate::subject::{Principal, Stored, Subject};

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

    /// A principal whose token says one thing and whose stored attributes another.
    fn layered() -> Subject {
        let claims = json!({"plan": "free", "department": "eng", "nested": {"a": 1}});
        let mut principal = Principal::new(
            "alice",
            vec!["user".into()],
            serde_json::from_value(claims).unwrap(),
            "bearer",
        );
        let record = crate::attributes::record::PrincipalRecord {
            attributes: serde_json::from_value(json!({
                "plan": "enterprise",
                "features": ["sso", "audit"],
                "limits": {"seats": 5, "tags": ["a", "b"], "deep": {"x": true}},
                "items": [{"name": "one"}, {"name": "two"}],
            }))
            .unwrap(),
            ..Default::default()
        };
        principal.stored = Some(Stored {
            revision: 7,
            record: Arc::new(record),
        });
        Subject::single(principal)
    }

    /// `vars` over `req` with each of `subjects`, with no subject, and with nothing bound at all:
    /// every binding a fast path must answer as the interpreter does.
    fn bindings<'a>(
        req: &RequestView<'a>,
        captures: &'a [(&'a str, Cow<'a, str>)],
        subjects: [&'a Subject; 3],
    ) -> Vec<Vars<'a>> {
        subjects
            .into_iter()
            .map(Some)
            .chain([None])
            .map(|subject| {
                let mut vars = Vars::default();
                vars.bind_request(req, captures);
                if let Some(subject) = subject {
                    vars.bind_subject(subject);
                }
                vars
            })
            .chain(std::iter::once(Vars::default()))
            .collect()
    }

    fn eval(src: &str, vars: &Vars<'_>) -> Result<serde_json::Value, ExprError> {
        Expr::compile(src).unwrap().eval_json(vars)
    }

    /// Evaluates without the load-time variable check, which refuses a comprehension's own
    /// variable (`x` in `list.exists(x, …)`): the lazy values must iterate all the same.
    fn eval_unchecked(src: &str, vars: &Vars<'_>) -> Result<serde_json::Value, ExprError> {
        let expr = Expr {
            expr: Arc::from(src),
            program: Arc::new(env().unwrap().compile(src).unwrap()),
            uses: Uses::ALL,
            direct: None,
            predicate: None,
            plain: None,
        };
        expr.eval_json(vars)
    }

    #[test]
    fn finds_the_fields_expressions_read() {
        let uses = |src: &str| Expr::compile(src).unwrap().uses();
        let method = uses(r#"request.method == "GET""#);
        assert!(
            method.reads_request(RequestField::Method)
                && !method.reads_request(RequestField::Headers),
            "method only, not headers"
        );
        assert!(uses(r#"request["headers"].accept == "x""#).reads_request(RequestField::Headers));
        assert!(uses(r#"has(request.headers.accept)"#).reads_request(RequestField::Headers));
        assert!(
            uses(r#"[1].exists(x, request.captures.id == "1")"#)
                .reads_request(RequestField::Captures)
        );
        let whole = uses("size(request) > 0");
        assert!(RequestField::ALL.iter().all(|f| whole.reads_request(*f)));
        assert!(!whole.reads_subject() && !whole.reads_error());
        assert!(!uses(r#""admin" in subject.roles"#).any_request());
        assert!(uses(r#""admin" in subject.roles"#).reads_subject_field(SubjectField::Roles));
        assert!(uses(r#"error.kind == "x""#).reads_error());
        let err = Expr::compile("request.metod == 1").unwrap_err();
        assert_eq!(
            err,
            ExprError::UnknownField {
                expr: "request.metod == 1".into(),
                variable: "request".into(),
                field: "metod".into(),
                known: RequestField::names(),
            }
        );
        assert!(matches!(
            Expr::compile("error.kinds == 1"),
            Err(ExprError::UnknownField { field, .. }) if field == "kinds"
        ));
    }

    /// Direct field reads answer exactly as the interpreter does, errors included: the same
    /// error, not merely some error.
    #[test]
    fn direct_reads_match_the_interpreter() {
        let headers = HashMap::from([
            ("accept".to_string(), "text/html".to_string()),
            ("x-tenant".to_string(), "acme".to_string()),
            (":authority".to_string(), "api.example.com".to_string()),
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
        attributes.insert("big".into(), json!(u64::MAX));
        attributes.insert("ratio".into(), json!(2.5));
        attributes.insert("whole".into(), json!(2.0));
        attributes.insert("flag".into(), json!(true));
        attributes.insert("features".into(), json!(["sso", "audit"]));
        attributes.insert("mixed".into(), json!(["sso", 1]));
        attributes.insert("nothing".into(), serde_json::Value::Null);
        attributes.insert("nested".into(), json!({"a": 1}));
        let plain = Subject::single(Principal::new(
            "alice",
            vec!["user".into(), "editor".into()],
            attributes,
            "bearer",
        ));
        let sources = [
            "subject.id",
            "subject.roles",
            "subject.mechanism",
            "subject.attr.plan",
            "subject.attr.seats",
            "subject.attr.big",
            "subject.attr.ratio",
            "subject.attr.whole",
            "subject.attr.flag",
            "subject.attr.features",
            "subject.attr.mixed",
            "subject.attr.nothing",
            "subject.attr.nested",
            "subject.attr.missing",
            "subject.attr.department",
            "subject.attr.limits",
            "request.id",
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
            "request.headers[\"accept\"]",
            "request.headers[\"missing\"]",
            "request.captures[\"id\"]",
            "subject.attr[\"plan\"]",
            "subject.attr[\"missing\"]",
        ];
        let layered = layered();
        let empty = Subject::default();
        for subject in [&plain, &layered, &empty] {
            let mut vars = Vars::default();
            vars.bind_request(&req, &captures);
            vars.bind_subject(subject);
            for source in sources {
                let direct = Expr::compile(source).unwrap();
                assert!(direct.direct.is_some(), "{source} should be read directly");
                let mut interpreted = direct.clone();
                interpreted.direct = None;
                assert_eq!(
                    direct.eval_string(&vars),
                    interpreted.eval_string(&vars),
                    "{source} as a string"
                );
                assert_eq!(
                    direct.eval_json(&vars),
                    interpreted.eval_json(&vars),
                    "{source} as JSON"
                );
                assert_eq!(
                    direct.eval_strings(&vars),
                    interpreted.eval_strings(&vars),
                    "{source} as strings"
                );
                assert_eq!(
                    direct.eval_bool(&vars),
                    interpreted.eval_bool(&vars),
                    "{source} as a bool"
                );
            }
        }
        // Unbound variables fail alike too (an authenticator condition sees no subject).
        let mut unbound = Vars::default();
        unbound.bind_request(&req, &captures);
        for source in [
            "request.method",
            "request.headers.accept",
            "request.captures.id",
            "subject.id",
            "subject.attr.plan",
        ] {
            let direct = Expr::compile(source).unwrap();
            let mut interpreted = direct.clone();
            interpreted.direct = None;
            assert_eq!(
                direct.eval_string(&Vars::default()),
                interpreted.eval_string(&Vars::default()),
                "{source} without a request"
            );
        }
        for source in [
            "has(subject.attr.plan)",
            r#"subject.id + "!""#,
            "subject.principals",
            "request.query",
            "request.headers[request.method]",
        ] {
            assert!(
                Expr::compile(source).unwrap().direct.is_none(),
                "{source} is not a plain read"
            );
        }
    }

    /// Conditions decided without the interpreter decide exactly as it does: for every binding
    /// (no subject, no principal, roles or not, headers present, missing or pseudo), the
    /// predicate's answer — or its deferral to the interpreter — gives the interpreter's result.
    #[test]
    fn predicates_decide_as_the_interpreter_does() {
        let conditions = [
            r#""admin" in subject.roles"#,
            r#""editor" in subject.roles"#,
            r#"request.method in ["GET", "HEAD"]"#,
            r#"request.method in ["GET", "HEAD"] || "editor" in subject.roles"#,
            r#"request.method == "PUT" && "user" in subject.roles"#,
            r#""PUT" == request.method"#,
            r#"request.method != "GET""#,
            r#"!("admin" in subject.roles)"#,
            r#"subject.id == "alice""#,
            r#"subject.id in ["bob", "alice"]"#,
            r#"request.host == "api.example.com" && request.path == "/documents/42""#,
            r#"request.scheme == "https" || request.authority == "x""#,
            r#"request.raw_query == "x=1""#,
            r#"request.id == """#,
            r#""accept" in request.headers"#,
            r#""missing" in request.headers"#,
            r#"":authority" in request.headers"#,
            r#"request.headers.accept.contains("text/html")"#,
            r#"request.headers.accept.startsWith("text/")"#,
            r#"request.headers.accept.endsWith("xml")"#,
            r#"request.headers.missing.contains("x")"#,
            r#""accept" in request.headers && request.headers.accept.contains("text/html")"#,
            r#""missing" in request.headers && request.headers.missing.contains("x")"#,
            r#"request.headers.missing.contains("x") && request.method == "GET""#,
            r#"request.headers.missing.contains("x") || "user" in subject.roles"#,
            r#""x" in request.query"#,
            r#"request.headers.accept == "text/html" && request.raw_query == "x=1""#,
            r#""user" in subject.roles || request.headers.missing.contains("x")"#,
        ];
        let with_accept = HashMap::from([
            ("accept".to_string(), "text/html".to_string()),
            (":authority".to_string(), "api.example.com".to_string()),
        ]);
        let without = HashMap::new();
        let line = RequestLine::parse(
            "PUT",
            "api.example.com:8443",
            "/documents/42?x=1",
            &Default::default(),
        )
        .unwrap();
        let plain = subject();
        let layered = layered();
        let empty = Subject::default();
        let captures = vec![];
        for headers in [&with_accept, &without] {
            let req = RequestView::new(&line, "https", Headers::Map(headers));
            let bindings = bindings(&req, &captures, [&plain, &layered, &empty]);
            for source in conditions {
                let fast = Expr::compile(source).unwrap();
                assert!(fast.predicate.is_some(), "{source} should be a predicate");
                let mut interpreted = fast.clone();
                interpreted.predicate = None;
                interpreted.direct = None;
                for vars in &bindings {
                    assert_eq!(
                        fast.eval_bool(vars),
                        interpreted.eval_bool(vars),
                        "{source}"
                    );
                }
            }
        }
        for source in [
            r#"subject.roles.exists(r, r == "admin")"#,
            r#"request.method in subject.roles"#,
            r#""a" in request.query.keys()"#,
            r#"request.headers["accept"].contains("x")"#,
            r#"subject.attr.plan == "pro""#,
            r#"request.method in ["GET", 1]"#,
            r#"size(request.path) > 1"#,
        ] {
            assert!(
                Expr::compile(source).unwrap().predicate.is_none(),
                "{source} is not one of the plain shapes"
            );
        }
    }

    /// Compound values computed without the interpreter give the interpreter's results and
    /// errors, in every evaluation mode, for every binding.
    #[test]
    fn plain_values_match_the_interpreter() {
        let values = [
            r#""x-department" in request.headers ? request.headers["x-department"] : """#,
            r#""missing" in request.headers ? request.headers["missing"] : "none""#,
            r#""x-department" in request.headers ? request.headers.missing : "none""#,
            r#"{"GET": "view", "HEAD": "view", "PUT": "edit"}[request.method]"#,
            r#"{"GET": "view"}[request.method]"#,
            r#"{"alice": "owner"}[subject.id]"#,
            r#"{"pro": "paid"}[subject.attr.plan]"#,
            r#"{"x": "y"}[subject.attr.seats]"#,
            r#"{"x": "y"}[request.headers.missing]"#,
            r#""status" in request.query ? request.query.status : "published""#,
            r#""public" in request.query && request.query.public == "true""#,
            r#"request.query.status"#,
            r#"request.query["page"]"#,
            r#"request.query.missing"#,
            r#"request.headers.accept == "text/html""#,
            r#"request.headers.missing == "x""#,
            r#""editor" in subject.roles ? "write" : "read""#,
            r#"request.method == "PUT" ? request.captures.id : subject.id"#,
            r#""admin" in subject.roles"#,
        ];
        let with = HashMap::from([
            ("accept".to_string(), "text/html".to_string()),
            ("x-department".to_string(), "eng".to_string()),
        ]);
        let without = HashMap::new();
        let mut attributes = serde_json::Map::new();
        attributes.insert("plan".into(), "pro".into());
        attributes.insert("seats".into(), json!(5));
        let plain = Subject::single(Principal::new(
            "alice",
            vec!["user".into(), "editor".into()],
            attributes,
            "test",
        ));
        let layered = layered();
        let empty = Subject::default();
        for (method, raw) in [
            ("PUT", "/documents/42?status=draft&public=true&page=%32"),
            ("GET", "/documents/42?public=false"),
            ("DELETE", "/documents/42"),
        ] {
            let line =
                RequestLine::parse(method, "api.example.com", raw, &Default::default()).unwrap();
            let captures = vec![("id", Cow::Borrowed("42"))];
            for headers in [&with, &without] {
                let req = RequestView::new(&line, "https", Headers::Map(headers));
                let bindings = bindings(&req, &captures, [&plain, &layered, &empty]);
                for source in values {
                    let fast = Expr::compile(source).unwrap();
                    assert!(
                        fast.plain.is_some(),
                        "{source} should be computed without the interpreter"
                    );
                    let mut interpreted = fast.clone();
                    interpreted.plain = None;
                    interpreted.predicate = None;
                    interpreted.direct = None;
                    for vars in &bindings {
                        let context = format!("{source} for {method} {raw}");
                        assert_eq!(
                            fast.eval_json(vars),
                            interpreted.eval_json(vars),
                            "{context}"
                        );
                        assert_eq!(
                            fast.eval_string(vars),
                            interpreted.eval_string(vars),
                            "{context}"
                        );
                        assert_eq!(
                            fast.eval_strings(vars),
                            interpreted.eval_strings(vars),
                            "{context}"
                        );
                    }
                }
            }
        }
        for source in [
            r#"{"GET": 1}[request.method]"#,
            r#""a" in request.headers ? 1 : 2"#,
            r#"request.method + "x""#,
        ] {
            assert!(
                Expr::compile(source).unwrap().plain.is_none(),
                "{source} is not one of the plain shapes"
            );
        }
    }

    #[test]
    fn comprehension_variables_are_bound_names_not_unknown_variables() {
        let expr =
            Expr::compile(r#"subject.roles.exists(r, r == "admin") && [1, 2].all(n, n > 0)"#)
                .unwrap();
        let principal = Principal::new(
            "alice",
            vec!["admin".to_owned()],
            serde_json::Map::new(),
            "bearer",
        );
        let mut subject = Subject::default();
        subject.insert(Arc::from("default"), Arc::new(principal));
        let mut vars = Vars::default();
        vars.bind_subject(&subject);
        assert!(expr.eval_bool(&vars).unwrap());
        // A name no comprehension binds is still refused.
        assert!(matches!(
            Expr::compile(r#"subject.roles.exists(r, y == "admin")"#),
            Err(ExprError::UnknownVariable { name, .. }) if name == "y"
        ));
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
            "/documents/42?x=1&y=a%20b&x=2",
            &Default::default(),
        )
        .unwrap();
        let req = RequestView::new(&line, "https", Headers::Map(&headers));
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
            (r#"request.query.x == "1""#, true),
            (r#"has(request.headers.authorization)"#, false),
            (r#"subject.principals.default.id == "alice""#, true),
            (r#"has(subject.principals.default.principals)"#, false),
            (r#"size(request) == 11 && size(subject) == 5"#, true),
            (r#"request.captures == {"id": "42"}"#, true),
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
            Err(ExprError::Type { got, .. }) if got == "string"
        ));
        assert_eq!(
            eval("request.peer", &vars).unwrap(),
            json!({"address": "", "principal": ""})
        );
        assert_eq!(
            eval("request.query", &vars).unwrap(),
            json!({"x": "1", "y": "a b"})
        );
    }

    /// The stored attributes win over the claims, nested JSON reads on demand, and every map
    /// operation CEL has works on the lazy values.
    #[test]
    fn lazy_attributes_read_like_built_maps() {
        let subject = layered();
        let mut vars = Vars::default();
        vars.bind_subject(&subject);
        let truths = [
            r#"subject.attr.plan == "enterprise""#,
            r#"subject.attr.department == "eng""#,
            "subject.attr.nested.a == 1",
            "subject.attr.limits.seats == 5",
            "subject.attr.limits.deep.x",
            r#"subject.attr.items[1].name == "two""#,
            r#"subject.attr.items.exists(i, i.name == "one")"#,
            r#""sso" in subject.attr.features"#,
            r#""seats" in subject.attr.limits"#,
            r#"!("nope" in subject.attr.limits)"#,
            r#""plan" in subject.attr"#,
            "has(subject.attr.limits.tags)",
            "!has(subject.attr.limits.missing)",
            "!has(subject.attr.missing)",
            "size(subject.attr) == 6",
            "size(subject.attr.limits) == 3",
            r#"subject.attr.exists(k, k == "department")"#,
            r#"subject.attr.limits.all(k, k in ["seats", "tags", "deep"])"#,
            r#"subject.attr.limits.deep == {"x": true}"#,
            r#"subject.attr.nested.?a.orValue(0) == 1"#,
            r#"subject.attr.?missing.orValue("none") == "none""#,
            r#"subject.attr["plan"] == "enterprise""#,
            "!(1 in subject.attr)",
        ];
        for src in truths {
            assert_eq!(eval_unchecked(src, &vars), Ok(json!(true)), "{src}");
        }
        assert_eq!(
            eval("subject.attr", &vars).unwrap(),
            serde_json::Value::Object(subject.primary().unwrap().attributes())
        );
        assert_eq!(
            eval("subject.attr.limits", &vars).unwrap(),
            json!({"seats": 5, "tags": ["a", "b"], "deep": {"x": true}})
        );
        let missing = eval("subject.attr.missing == 1", &vars).unwrap_err();
        assert_eq!(
            missing,
            ExprError::Eval {
                expr: "subject.attr.missing == 1".into(),
                message: cel::ExecutionError::no_such_key("missing").to_string(),
            }
        );
        let missing_nested = eval("subject.attr.limits.nope", &vars).unwrap_err();
        assert!(
            matches!(&missing_nested, ExprError::Eval { message, .. } if *message == cel::ExecutionError::no_such_key("nope").to_string()),
            "{missing_nested}"
        );
        // A map is no header value.
        let as_string = Expr::compile("subject.attr.limits")
            .unwrap()
            .eval_string(&vars);
        assert!(
            matches!(&as_string, Err(ExprError::Type { got, .. }) if got == "map"),
            "{as_string:?}"
        );
    }

    /// Headers are looked up as the request view looks them up: case-insensitively where the
    /// source is, first value wins, pseudo-headers hidden.
    #[test]
    fn lazy_headers_read_like_the_request_view() {
        let list = vec![
            envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "X-Tenant".into(),
                value: "acme".into(),
                ..Default::default()
            },
            envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "x-tenant".into(),
                value: "other".into(),
                ..Default::default()
            },
            envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: ":path".into(),
                value: "/".into(),
                ..Default::default()
            },
        ];
        let mut http = http::HeaderMap::new();
        http.insert("x-tenant", http::HeaderValue::from_static("acme"));
        let line = RequestLine::parse("GET", "h", "/p", &Default::default()).unwrap();
        for headers in [Headers::List(&list), Headers::Http(&http)] {
            let req = RequestView::new(&line, "https", headers);
            let mut vars = Vars::default();
            vars.bind_request(&req, &[]);
            for src in [
                r#"request.headers["x-tenant"] == "acme""#,
                r#"request.headers["X-TENANT"] == "acme""#,
                r#""x-tenant" in request.headers"#,
                r#"!(":path" in request.headers)"#,
                r#"!has(request.headers.accept)"#,
                r#"size(request.headers) > 0"#,
                r#"request.headers.exists(h, h.lowerAscii() == "x-tenant")"#,
            ] {
                assert_eq!(eval_unchecked(src, &vars), Ok(json!(true)), "{src}");
            }
        }
    }

    #[test]
    fn error_is_bound_only_in_the_error_pipeline() {
        let failure = crate::decision::StepError::new(
            crate::decision::ErrorKind::Authentication,
            &Arc::from("bearer"),
            "expired",
        );
        let mut vars = Vars::default();
        let expr = Expr::compile(r#"error.kind == "authentication""#).unwrap();
        assert!(matches!(expr.eval_bool(&vars), Err(ExprError::Eval { .. })));
        vars.bind_error(&failure);
        assert_eq!(
            eval("error", &vars).unwrap(),
            json!({"kind": failure.kind.as_str(), "message": "expired", "mechanism": "bearer"})
        );
    }
}
