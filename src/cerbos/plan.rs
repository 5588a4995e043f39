//! Query plans: Cerbos's `PlanResources` filter as a [`Plan`], with the condition both as
//! Cerbos's JSON tree and as a readable expression (infix, parenthesized by precedence).

use super::CerbosError;
use super::convert::pb_to_json;
use super::pb::cerbos::engine::v1 as engine;
use crate::policy::Plan;

/// The plan a filter states.
pub(super) fn plan_of(filter: engine::PlanResourcesFilter) -> Result<Plan, CerbosError> {
    use engine::plan_resources_filter::Kind;
    match Kind::try_from(filter.kind) {
        Ok(Kind::AlwaysAllowed) => Ok(Plan::AlwaysAllowed),
        Ok(Kind::AlwaysDenied) => Ok(Plan::AlwaysDenied),
        Ok(Kind::Conditional) => {
            let condition = filter.condition.ok_or_else(|| {
                CerbosError::Malformed("conditional filter without condition".into())
            })?;
            Ok(Plan::Conditional {
                tree: operand_json(&condition),
                expression: render_operand(&condition),
            })
        }
        _ => Err(CerbosError::Malformed(format!(
            "unknown filter kind {}",
            filter.kind
        ))),
    }
}

/// An operand in Cerbos's JSON shape.
fn operand_json(operand: &engine::plan_resources_filter::expression::Operand) -> serde_json::Value {
    use engine::plan_resources_filter::expression::operand::Node;
    match &operand.node {
        Some(Node::Value(v)) => serde_json::json!({ "value": pb_to_json(v) }),
        Some(Node::Variable(name)) => serde_json::json!({ "variable": name }),
        Some(Node::Expression(e)) => serde_json::json!({
            "expression": { "operator": e.operator, "operands": e.operands.iter().map(operand_json).collect::<Vec<_>>() }
        }),
        None => serde_json::Value::Null,
    }
}

/// Cerbos's operators as the readable infix form callers turn into queries, with precedence
/// (higher binds tighter) and whether the operator is associative.
fn infix(operator: &str) -> Option<(&'static str, u8, bool)> {
    Some(match operator {
        "or" => ("||", 1, true),
        "and" => ("&&", 2, true),
        "eq" => ("==", 3, false),
        "ne" => ("!=", 3, false),
        "lt" => ("<", 3, false),
        "le" => ("<=", 3, false),
        "gt" => (">", 3, false),
        "ge" => (">=", 3, false),
        "in" => ("in", 3, false),
        "add" => ("+", 4, true),
        "sub" => ("-", 4, false),
        "mult" => ("*", 5, true),
        "div" => ("/", 5, false),
        "mod" => ("%", 5, false),
        _ => return None,
    })
}

/// A readable rendering: `request.resource.attr.owner == "user123" || request.resource.attr.public == true`.
fn render_operand(operand: &engine::plan_resources_filter::expression::Operand) -> String {
    render_in(operand, None)
}

/// Renders `operand` inside a parent infix operator (`parent`: its name and precedence),
/// parenthesizing only where precedence requires it.
fn render_in(
    operand: &engine::plan_resources_filter::expression::Operand,
    parent: Option<(&str, u8)>,
) -> String {
    use engine::plan_resources_filter::expression::operand::Node;
    match &operand.node {
        Some(Node::Value(v)) => pb_to_json(v).to_string(),
        Some(Node::Variable(name)) => name.clone(),
        Some(Node::Expression(e)) => match (
            e.operator.as_str(),
            infix(&e.operator),
            e.operands.as_slice(),
        ) {
            ("not", _, [one]) => format!("!{}", render_in(one, Some(("not", 6)))),
            (name, Some((symbol, precedence, associative)), operands @ [_, _, ..]) => {
                let text = operands
                    .iter()
                    .map(|o| render_in(o, Some((name, precedence))))
                    .collect::<Vec<_>>()
                    .join(&format!(" {symbol} "));
                let needs_parens = match parent {
                    Some((parent_name, parent_precedence)) => {
                        precedence < parent_precedence
                            || (precedence == parent_precedence
                                && !(associative && parent_name == name))
                    }
                    None => false,
                };
                if needs_parens {
                    format!("({text})")
                } else {
                    text
                }
            }
            (name, _, operands) => format!(
                "{name}({})",
                operands
                    .iter()
                    .map(|o| render_in(o, None))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => "null".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cerbos::json_to_pb;
    use engine::plan_resources_filter::Expression;
    use engine::plan_resources_filter::expression::Operand;
    use engine::plan_resources_filter::expression::operand::Node;

    fn var(name: &str) -> Operand {
        Operand {
            node: Some(Node::Variable(name.into())),
        }
    }
    fn val(v: serde_json::Value) -> Operand {
        Operand {
            node: Some(Node::Value(json_to_pb(&v))),
        }
    }
    fn op(operator: &str, operands: Vec<Operand>) -> Operand {
        Operand {
            node: Some(Node::Expression(Expression {
                operator: operator.into(),
                operands,
            })),
        }
    }

    #[test]
    fn renders_plans_readably_with_needed_parentheses_only() {
        let owner = op(
            "eq",
            vec![var("request.resource.attr.owner"), val("user123".into())],
        );
        let public = op(
            "eq",
            vec![var("request.resource.attr.public"), val(true.into())],
        );
        let either = op("or", vec![owner.clone(), public.clone()]);
        assert_eq!(
            render_operand(&either),
            r#"request.resource.attr.owner == "user123" || request.resource.attr.public == true"#
        );
        let both = op(
            "and",
            vec![
                either.clone(),
                op(
                    "not",
                    vec![op(
                        "eq",
                        vec![var("request.resource.attr.status"), val("draft".into())],
                    )],
                ),
            ],
        );
        assert_eq!(
            render_operand(&both),
            r#"(request.resource.attr.owner == "user123" || request.resource.attr.public == true) && !(request.resource.attr.status == "draft")"#
        );
        let listed = op(
            "in",
            vec![
                var("request.resource.attr.dept"),
                val(serde_json::json!(["eng", "ops"])),
            ],
        );
        assert_eq!(
            render_operand(&listed),
            r#"request.resource.attr.dept in ["eng","ops"]"#
        );
    }
}
