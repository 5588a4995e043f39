//! Values of the usual compound shapes — `"x-dept" in request.headers ? request.headers["x-dept"]
//! : ""`, `{"GET": "view", "PUT": "edit"}[request.method]`, `request.query.page`, a condition
//! used as a value — computed without the interpreter, as Cerbos resource attributes and actions
//! typically are written.
//!
//! Like [`super::predicate`], a value that cannot be computed plainly (a condition it cannot
//! decide, a missing query parameter or map key) is not computed here at all: the interpreter
//! evaluates the whole expression, so every result and every error is still the interpreter's.

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr, LiteralValue, operators};

use super::direct::Direct;
use super::predicate::{Predicate, query_read, query_value};
use super::{Expr, ExprError, Vars};

/// A value computed by reading fields.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Plain {
    Text(Box<str>),
    Read(Direct),
    /// `request.query.<name>`.
    Query(Box<str>),
    /// `condition ? then : otherwise`.
    Choice(Box<Predicate>, Box<Plain>, Box<Plain>),
    /// `{"k": "v", …}[key]`: string keys and values.
    Lookup(Box<[(Box<str>, Box<str>)]>, Box<Plain>),
    /// A condition, as a boolean value.
    Bool(Predicate),
}

/// What a plain value is, before it is rendered one way or another.
enum Computed<'v> {
    Text(std::borrow::Cow<'v, str>),
    Bool(bool),
    /// A field read: rendered by [`Direct`], which knows its exact forms.
    Read(&'v Direct),
}

fn string_literal(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

impl Plain {
    /// Recognizes the shapes above; `None` for anything else (including a lone field read,
    /// which [`Direct`] answers on its own).
    pub(super) fn detect(expr: &IdedExpr) -> Option<Self> {
        if let Ast::Call(call) = &expr.expr
            && call.target.is_none()
        {
            match (call.func_name.as_str(), call.args.as_slice()) {
                (operators::CONDITIONAL, [condition, then, otherwise]) => {
                    return Some(Self::Choice(
                        Box::new(Predicate::detect(condition)?),
                        Box::new(Self::operand(then)?),
                        Box::new(Self::operand(otherwise)?),
                    ));
                }
                (operators::INDEX, [map, key]) if matches!(map.expr, Ast::Map(_)) => {
                    let Ast::Map(map) = &map.expr else {
                        return None;
                    };
                    let entries = map
                        .entries
                        .iter()
                        .map(|entry| match &entry.expr {
                            EntryExpr::MapEntry(e) if !e.optional => Some((
                                Box::from(string_literal(&e.key)?),
                                Box::from(string_literal(&e.value)?),
                            )),
                            _ => None,
                        })
                        .collect::<Option<Box<[_]>>>()?;
                    return Some(Self::Lookup(entries, Box::new(Self::operand(key)?)));
                }
                _ => {}
            }
        }
        if let Some(name) = query_read(expr) {
            return Some(Self::Query(name.into()));
        }
        Predicate::detect(expr).map(Self::Bool)
    }

    /// A part of a compound value: also a literal or a plain read.
    fn operand(expr: &IdedExpr) -> Option<Self> {
        if let Some(text) = string_literal(expr) {
            return Some(Self::Text(text.into()));
        }
        if let Some(read) = Direct::detect(expr) {
            return Some(Self::Read(read));
        }
        Self::detect(expr)
    }

    /// The value, `None` when the interpreter must compute it; `Some(Err)` only for a field
    /// read's own error, which is the interpreter's too.
    fn compute<'v>(&'v self, vars: &'v Vars<'_>) -> Option<Computed<'v>> {
        match self {
            Self::Text(text) => Some(Computed::Text(std::borrow::Cow::Borrowed(text))),
            Self::Read(read) => Some(Computed::Read(read)),
            Self::Query(name) => {
                let query = vars.request()?.query;
                query_value(query, name).map(Computed::Text)
            }
            Self::Choice(condition, then, otherwise) => {
                if condition.decide(vars)? {
                    then.compute(vars)
                } else {
                    otherwise.compute(vars)
                }
            }
            Self::Lookup(entries, key) => {
                let key = match key.compute(vars)? {
                    Computed::Text(key) => key,
                    // A read that is missing or not a string: the interpreter says how.
                    Computed::Read(read) => read.text(vars)?,
                    Computed::Bool(_) => return None,
                };
                entries
                    .iter()
                    .find(|(k, _)| **k == *key)
                    .map(|(_, v)| Computed::Text(std::borrow::Cow::Borrowed(&**v)))
            }
            Self::Bool(condition) => condition.decide(vars).map(Computed::Bool),
        }
    }

    /// The value as [`Expr::eval_json`] gives it.
    pub(super) fn json(
        &self,
        expr: &Expr,
        vars: &Vars<'_>,
    ) -> Option<Result<serde_json::Value, ExprError>> {
        Some(match self.compute(vars)? {
            Computed::Text(text) => Ok(serde_json::Value::String(text.into_owned())),
            Computed::Bool(b) => Ok(serde_json::Value::Bool(b)),
            Computed::Read(read) => read.json(expr, vars),
        })
    }

    /// The value as [`Expr::eval_string`] renders it.
    pub(super) fn string(&self, expr: &Expr, vars: &Vars<'_>) -> Option<Result<String, ExprError>> {
        Some(match self.compute(vars)? {
            Computed::Text(text) => Ok(text.into_owned()),
            Computed::Bool(b) => Ok(b.to_string()),
            Computed::Read(read) => read.string(expr, vars),
        })
    }
}
