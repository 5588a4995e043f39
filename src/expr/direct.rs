//! Plain field reads (`subject.id`, `request.headers.accept`, `subject.attr.plan`), the usual
//! shape of header values, answered without the interpreter: same results, same errors.

use std::sync::Arc;

use super::fields::{RequestField, SubjectField};
use super::{Expr, ExprError, Vars};
use crate::request::RequestView;
use crate::subject::Subject;

/// A field read that needs no interpreter.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Direct {
    Subject(SubjectField),
    SubjectAttr(Box<str>),
    /// A string field of `request`.
    Request(RequestField),
    RequestHeader(Box<str>),
    RequestCapture(Box<str>),
}

impl Direct {
    /// Recognizes `variable.field` and `variable.map.key` (or `variable.map["key"]`) for the
    /// fields that allow it.
    pub(super) fn detect(expr: &cel::parser::Expression) -> Option<Self> {
        use cel::common::ast::{Expr as Ast, LiteralValue, operators};
        if let Ast::Call(call) = &expr.expr
            && call.func_name == operators::INDEX
            && call.target.is_none()
            && let [map, key] = call.args.as_slice()
            && let Ast::Literal(LiteralValue::String(key)) = &key.expr
            && let Ast::Select(inner) = &map.expr
            && !inner.test
            && let Ast::Ident(var) = &inner.operand.expr
        {
            let key: Box<str> = key.inner().into();
            return match (var.as_str(), inner.field.as_str()) {
                ("subject", "attr") => Some(Self::SubjectAttr(key)),
                ("request", "headers") => Some(Self::RequestHeader(key)),
                ("request", "captures") => Some(Self::RequestCapture(key)),
                _ => None,
            };
        }
        let Ast::Select(outer) = &expr.expr else {
            return None;
        };
        if outer.test {
            return None;
        }
        match &outer.operand.expr {
            Ast::Ident(var) => match (var.as_str(), outer.field.as_str()) {
                ("subject", field) => match SubjectField::parse(field)? {
                    f @ (SubjectField::Id | SubjectField::Roles | SubjectField::Mechanism) => {
                        Some(Self::Subject(f))
                    }
                    SubjectField::Attr | SubjectField::Principals => None,
                },
                ("request", field) => RequestField::parse(field)
                    .filter(|f| is_text(*f))
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

    /// The read rendered as [`Expr::eval_string`] renders it.
    pub(super) fn string(&self, expr: &Expr, vars: &Vars<'_>) -> Result<String, ExprError> {
        self.check_bound(expr, vars)?;
        let primary = vars.subject().and_then(Subject::primary);
        match self {
            Self::Subject(SubjectField::Roles) => {
                Ok(primary.map(|p| p.roles.join(",")).unwrap_or_default())
            }
            Self::Subject(field) => Ok(primary
                .map(|p| match field {
                    SubjectField::Mechanism => &*p.mechanism,
                    _ => &*p.id,
                })
                .unwrap_or_default()
                .to_owned()),
            Self::SubjectAttr(key) => {
                let value = primary
                    .and_then(|p| p.attr(key))
                    .ok_or_else(|| missing(expr, key))?;
                let mut out = String::new();
                render_json(expr, value, &mut out)?;
                Ok(out)
            }
            Self::Request(field) => {
                let req = vars.request().ok_or_else(|| unbound(expr, "request"))?;
                Ok(request_text(req, *field).unwrap_or_default().to_owned())
            }
            Self::RequestHeader(name) => {
                let req = vars.request().ok_or_else(|| unbound(expr, "request"))?;
                Some(&**name)
                    .filter(|n| !n.starts_with(':'))
                    .and_then(|n| req.headers.get(n))
                    .map(str::to_owned)
                    .ok_or_else(|| missing(expr, name))
            }
            Self::RequestCapture(name) => {
                vars.request().ok_or_else(|| unbound(expr, "request"))?;
                vars.captures()
                    .iter()
                    .find(|(n, _)| *n == &**name)
                    .map(|(_, v)| v.to_string())
                    .ok_or_else(|| missing(expr, name))
            }
        }
    }

    /// A read of `subject` where none is bound (an authenticator's condition) fails as the
    /// interpreter fails it.
    fn check_bound(&self, expr: &Expr, vars: &Vars<'_>) -> Result<(), ExprError> {
        match self {
            Self::Subject(_) | Self::SubjectAttr(_) if vars.subject().is_none() => {
                Err(unbound(expr, "subject"))
            }
            _ => Ok(()),
        }
    }

    /// The read when it is a string that is there (`None` for a missing key, an unbound
    /// variable, roles or a non-string attribute): what a map lookup keyed by it needs.
    pub(super) fn text<'v>(&self, vars: &'v Vars<'_>) -> Option<std::borrow::Cow<'v, str>> {
        use std::borrow::Cow;
        match self {
            Self::Subject(SubjectField::Id) => Some(Cow::Borrowed(&*vars.subject()?.primary()?.id)),
            Self::Subject(SubjectField::Mechanism) => {
                Some(Cow::Borrowed(&*vars.subject()?.primary()?.mechanism))
            }
            Self::Subject(_) => None,
            Self::SubjectAttr(key) => match vars.subject()?.primary()?.attr(key)? {
                serde_json::Value::String(text) => Some(Cow::Borrowed(text.as_str())),
                _ => None,
            },
            Self::Request(field) => request_text(vars.request()?, *field).map(Cow::Borrowed),
            Self::RequestHeader(name) if !name.starts_with(':') => {
                vars.request()?.headers.get(name).map(Cow::Borrowed)
            }
            Self::RequestHeader(_) => None,
            Self::RequestCapture(name) => {
                vars.request()?;
                vars.captures()
                    .iter()
                    .find(|(n, _)| *n == &**name)
                    .map(|(_, v)| Cow::Owned(v.to_string()))
            }
        }
    }

    /// The read as JSON, for the evaluation modes other than [`Expr::eval_string`].
    pub(super) fn json(
        &self,
        expr: &Expr,
        vars: &Vars<'_>,
    ) -> Result<serde_json::Value, ExprError> {
        self.check_bound(expr, vars)?;
        let primary = || vars.subject().and_then(Subject::primary);
        match self {
            Self::Subject(SubjectField::Roles) => Ok(serde_json::Value::Array(
                primary()
                    .map(|p| {
                        p.roles
                            .iter()
                            .map(|r| serde_json::Value::from(&**r))
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
            Self::SubjectAttr(key) => primary()
                .and_then(|p| p.attr(key))
                .cloned()
                .ok_or_else(|| missing(expr, key)),
            _ => self.string(expr, vars).map(serde_json::Value::String),
        }
    }
}

/// Whether `field` of `request` is a plain string (the fields read without the interpreter).
pub(super) fn is_text(field: RequestField) -> bool {
    matches!(
        field,
        RequestField::Id
            | RequestField::Method
            | RequestField::Scheme
            | RequestField::Host
            | RequestField::Authority
            | RequestField::Path
            | RequestField::RawQuery
    )
}

/// The string a plain-string field of `request` reads as; `None` for the other fields.
pub(super) fn request_text<'v>(req: &RequestView<'v>, field: RequestField) -> Option<&'v str> {
    Some(match field {
        RequestField::Id => req.id,
        RequestField::Method => req.method,
        RequestField::Scheme => req.scheme,
        RequestField::Host => req.host,
        RequestField::Authority => req.authority,
        RequestField::Path => req.path,
        RequestField::RawQuery => req.query,
        RequestField::Query
        | RequestField::Headers
        | RequestField::Captures
        | RequestField::Peer => return None,
    })
}

/// The interpreter's own error for a missing key, so both paths fail alike.
fn missing(expr: &Expr, key: &str) -> ExprError {
    eval_error(expr, cel::ExecutionError::no_such_key(key))
}

/// The interpreter's own error for a variable that is not bound.
fn unbound(expr: &Expr, variable: &str) -> ExprError {
    eval_error(expr, cel::ExecutionError::undeclared_reference(variable))
}

fn eval_error(expr: &Expr, error: cel::ExecutionError) -> ExprError {
    ExprError::Eval {
        expr: Arc::clone(&expr.expr),
        message: error.to_string(),
    }
}

/// The CEL type name of a JSON value, as the interpreter path reports it.
pub(super) fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_i64() => "int",
        serde_json::Value::Number(n) if n.is_u64() => "uint",
        serde_json::Value::Number(_) => "float",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "map",
    }
}

/// Renders a JSON attribute exactly as the interpreter path renders its CEL value.
fn render_json(expr: &Expr, value: &serde_json::Value, out: &mut String) -> Result<(), ExprError> {
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
                render_json(expr, item, out)?;
            }
        }
        J::Object(_) => {
            return Err(expr.type_error("map".into(), "a string, number, bool or list"));
        }
    }
    Ok(())
}
