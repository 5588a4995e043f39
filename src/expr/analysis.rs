//! Load-time analysis of a compiled expression: which variables and fields it reads, refusing
//! fields that do not exist.

use super::ExprError;
use super::fields::{ErrorField, RequestField, ResponseField, SubjectField, Uses, Variable};

/// Records a use of `variable.field`, refusing fields that do not exist.
fn mark(uses: &mut Uses, variable: Variable, field: &str, source: &str) -> Result<(), ExprError> {
    let unknown = |known: String| ExprError::UnknownField {
        expr: source.to_owned(),
        variable: variable.name().to_owned(),
        field: field.to_owned(),
        known,
    };
    match variable {
        Variable::Request => {
            uses.add_request(
                RequestField::parse(field).ok_or_else(|| unknown(RequestField::names()))?,
            );
        }
        Variable::Subject => {
            uses.add_subject(
                SubjectField::parse(field).ok_or_else(|| unknown(SubjectField::names()))?,
            );
        }
        Variable::Error => {
            ErrorField::parse(field).ok_or_else(|| unknown(ErrorField::names()))?;
            uses.add_error();
        }
        Variable::Response => {
            ResponseField::parse(field).ok_or_else(|| unknown(ResponseField::names()))?;
            uses.add_response();
        }
    }
    Ok(())
}

/// Walks the expression tree: `request.method` and `request["method"]` mark one field; a bare
/// `request` (passed to a function, compared whole) marks all of them.
pub(super) fn walk(
    expr: &cel::parser::Expression,
    uses: &mut Uses,
    source: &str,
) -> Result<(), ExprError> {
    use cel::common::ast::{EntryExpr, Expr as Ast, LiteralValue};
    match &expr.expr {
        Ast::Select(select) => {
            if let Ast::Ident(name) = &select.operand.expr
                && let Some(variable) = Variable::parse(name)
            {
                return mark(uses, variable, &select.field, source);
            }
            walk(&select.operand, uses, source)
        }
        Ast::Ident(name) => {
            if let Some(variable) = Variable::parse(name) {
                uses.add_all(variable);
            }
            Ok(())
        }
        Ast::Call(call) => {
            if call.func_name == cel::common::ast::operators::INDEX
                && call.target.is_none()
                && let [target, index] = call.args.as_slice()
                && let (Ast::Ident(name), Ast::Literal(LiteralValue::String(field))) =
                    (&target.expr, &index.expr)
                && let Some(variable) = Variable::parse(name)
            {
                return mark(uses, variable, field.inner(), source);
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

/// The names comprehensions bind (`x` in `list.exists(x, x > 1)`, and the accumulator): an
/// expression may reference them although they are not variables heimdall binds.
pub(super) fn comprehension_names(expr: &cel::parser::Expression, names: &mut Vec<String>) {
    use cel::common::ast::{EntryExpr, Expr as Ast};
    match &expr.expr {
        Ast::Comprehension(c) => {
            names.push(c.iter_var.clone());
            names.extend(c.iter_var2.iter().cloned());
            names.push(c.accu_var.clone());
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                comprehension_names(e, names);
            }
        }
        Ast::Select(select) => comprehension_names(&select.operand, names),
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                comprehension_names(target, names);
            }
            call.args.iter().for_each(|a| comprehension_names(a, names));
        }
        Ast::List(list) => list
            .elements
            .iter()
            .for_each(|e| comprehension_names(e, names)),
        Ast::Map(map) => map.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                comprehension_names(&e.key, names);
                comprehension_names(&e.value, names);
            }
            EntryExpr::StructField(f) => comprehension_names(&f.value, names),
        }),
        Ast::Struct(st) => st.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                comprehension_names(&e.key, names);
                comprehension_names(&e.value, names);
            }
            EntryExpr::StructField(f) => comprehension_names(&f.value, names),
        }),
        Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
    }
}
