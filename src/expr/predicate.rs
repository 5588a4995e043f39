//! Conditions of the usual shapes — `"admin" in subject.roles`, `request.method in ["GET",
//! "HEAD"]`, `"accept" in request.headers`, `request.headers.accept.contains("text/html")`,
//! joined with `&&`, `||` and `!` — decided without the interpreter.
//!
//! A condition that cannot be decided plainly (a variable not bound, no principal, a header read
//! that is missing) is not decided here at all: [`Predicate::decide`] answers `None` and the
//! interpreter evaluates the whole expression, so every result and every error is still the
//! interpreter's. `&&` and `||` short-circuit from the left only where CEL's own answer does not
//! depend on the right side (`false && x` is false and `true || x` true, even if `x` fails).

use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue, operators};

use super::Vars;
use super::direct::{is_text, request_text};
use super::fields::{RequestField, SubjectField};
use crate::subject::Subject;

/// A boolean condition decided by reading fields.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Predicate {
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
    /// `field == "a"`, `field in ["a", "b"]`.
    OneOf(StringField, Box<[Box<str>]>),
    /// `"admin" in subject.roles`.
    HasRole(Box<str>),
    /// `"accept" in request.headers`.
    HasHeader(Box<str>),
    /// `"page" in request.query`.
    HasQuery(Box<str>),
    /// `request.headers.accept.contains("text/html")` and its `startsWith` / `endsWith`.
    HeaderText(Box<str>, TextTest, Box<str>),
}

/// A string the condition compares.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StringField {
    Request(RequestField),
    SubjectId,
    /// `request.headers.<name>`: a missing header is the interpreter's error to report.
    Header(Box<str>),
    /// `request.query.<name>`, decoded, first value: missing likewise.
    Query(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TextTest {
    Contains,
    StartsWith,
    EndsWith,
}

fn string_literal(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// `variable.field` with a plain (non-`has`) select.
fn field_of<'e>(expr: &'e IdedExpr, variable: &str) -> Option<&'e str> {
    let Ast::Select(select) = &expr.expr else {
        return None;
    };
    match &select.operand.expr {
        Ast::Ident(name) if !select.test && name == variable => Some(select.field.as_str()),
        _ => None,
    }
}

fn string_field(expr: &IdedExpr) -> Option<StringField> {
    if let Some(name) = header_read(expr).filter(|h| !h.starts_with(':')) {
        return Some(StringField::Header(name.into()));
    }
    if let Some(name) = query_read(expr) {
        return Some(StringField::Query(name.into()));
    }
    if let Some(field) = field_of(expr, "request") {
        return RequestField::parse(field)
            .filter(|f| is_text(*f))
            .map(StringField::Request);
    }
    match SubjectField::parse(field_of(expr, "subject")?)? {
        SubjectField::Id => Some(StringField::SubjectId),
        _ => None,
    }
}

/// `request.headers.<name>`.
fn header_read(expr: &IdedExpr) -> Option<&str> {
    let Ast::Select(outer) = &expr.expr else {
        return None;
    };
    (!outer.test && field_of(&outer.operand, "request") == Some("headers"))
        .then_some(outer.field.as_str())
}

/// `request.query.<name>` or `request.query["name"]`.
pub(super) fn query_read(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Ast::Select(outer) => (!outer.test && field_of(&outer.operand, "request") == Some("query"))
            .then_some(outer.field.as_str()),
        Ast::Call(call)
            if call.func_name == operators::INDEX
                && call.target.is_none()
                && let [map, key] = call.args.as_slice()
                && field_of(map, "request") == Some("query") =>
        {
            string_literal(key)
        }
        _ => None,
    }
}

/// The decoded value of query parameter `name` (the first one), as `request.query` reads it.
pub(super) fn query_value<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    super::bind::query_pairs(query)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn is_subject_roles(expr: &IdedExpr) -> bool {
    field_of(expr, "subject").and_then(SubjectField::parse) == Some(SubjectField::Roles)
}

fn is_request_headers(expr: &IdedExpr) -> bool {
    field_of(expr, "request") == Some("headers")
}

impl Predicate {
    /// Recognizes the shapes above; `None` for anything else.
    pub(super) fn detect(expr: &IdedExpr) -> Option<Self> {
        let Ast::Call(call) = &expr.expr else {
            return None;
        };
        let boxed = |e: &IdedExpr| Self::detect(e).map(Box::new);
        match (call.func_name.as_str(), &call.target, call.args.as_slice()) {
            (operators::LOGICAL_AND, None, [a, b]) => Some(Self::And(boxed(a)?, boxed(b)?)),
            (operators::LOGICAL_OR, None, [a, b]) => Some(Self::Or(boxed(a)?, boxed(b)?)),
            (operators::LOGICAL_NOT, None, [a]) => Some(Self::Not(boxed(a)?)),
            (operators::EQUALS | operators::NOT_EQUALS, None, [a, b]) => {
                let (field, value) = match (string_field(a), string_literal(b)) {
                    (Some(field), Some(value)) => (field, value),
                    _ => (string_field(b)?, string_literal(a)?),
                };
                let equals = Self::OneOf(field, Box::new([value.into()]));
                Some(if call.func_name == operators::EQUALS {
                    equals
                } else {
                    Self::Not(Box::new(equals))
                })
            }
            (operators::IN, None, [needle, haystack]) => {
                if let Some(field) = string_field(needle) {
                    let Ast::List(list) = &haystack.expr else {
                        return None;
                    };
                    let values = list
                        .elements
                        .iter()
                        .map(|e| string_literal(e).map(Box::from))
                        .collect::<Option<Box<[_]>>>()?;
                    // An optional element (`[?x]`) is not a plain literal list.
                    if !list.optional_indices.is_empty() {
                        return None;
                    }
                    return Some(Self::OneOf(field, values));
                }
                let needle = string_literal(needle)?;
                if is_subject_roles(haystack) {
                    Some(Self::HasRole(needle.into()))
                } else if is_request_headers(haystack) {
                    Some(Self::HasHeader(needle.into()))
                } else if field_of(haystack, "request") == Some("query") {
                    Some(Self::HasQuery(needle.into()))
                } else {
                    None
                }
            }
            (name @ ("contains" | "startsWith" | "endsWith"), Some(target), [arg]) => {
                let test = match name {
                    "contains" => TextTest::Contains,
                    "startsWith" => TextTest::StartsWith,
                    _ => TextTest::EndsWith,
                };
                let header = header_read(target).filter(|h| !h.starts_with(':'))?;
                Some(Self::HeaderText(
                    header.into(),
                    test,
                    string_literal(arg)?.into(),
                ))
            }
            _ => None,
        }
    }

    /// The condition's value, or `None` when the interpreter must decide.
    pub(super) fn decide(&self, vars: &Vars<'_>) -> Option<bool> {
        match self {
            Self::And(a, b) => match a.decide(vars)? {
                false => Some(false),
                true => b.decide(vars),
            },
            Self::Or(a, b) => match a.decide(vars)? {
                true => Some(true),
                false => b.decide(vars),
            },
            Self::Not(a) => a.decide(vars).map(|b| !b),
            Self::OneOf(field, values) => {
                let query;
                let value = match field {
                    StringField::Header(name) => vars.request()?.headers.get(name)?,
                    StringField::Query(name) => {
                        query = query_value(vars.request()?.query, name)?;
                        &*query
                    }
                    StringField::Request(field) => request_text(vars.request()?, *field)?,
                    StringField::SubjectId => &*vars.subject().and_then(Subject::primary)?.id,
                };
                Some(values.iter().any(|v| **v == *value))
            }
            Self::HasRole(role) => {
                let principal = vars.subject().and_then(Subject::primary)?;
                Some(principal.roles.iter().any(|r| **r == **role))
            }
            // Pseudo-headers are not in `request.headers` (they have fields of their own).
            Self::HasHeader(name) => {
                let req = vars.request()?;
                Some(!name.starts_with(':') && req.headers.get(name).is_some())
            }
            Self::HasQuery(name) => Some(query_value(vars.request()?.query, name).is_some()),
            Self::HeaderText(name, test, text) => {
                // A missing header is an error for the interpreter to report (or to absorb).
                let value = vars.request()?.headers.get(name)?;
                Some(match test {
                    TextTest::Contains => value.contains(&**text),
                    TextTest::StartsWith => value.starts_with(&**text),
                    TextTest::EndsWith => value.ends_with(&**text),
                })
            }
        }
    }
}
