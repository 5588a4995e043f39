//! Protobuf ↔ JSON: the PDP-neutral question in Cerbos's wire types, and
//! `google.protobuf.Value` both ways.

use super::pb::cerbos::engine::v1 as engine;
use crate::policy::{PrincipalInput, ResourceInput};

pub(super) fn principal_pb(p: &PrincipalInput<'_>) -> engine::Principal {
    engine::Principal {
        id: p.id.to_owned(),
        roles: p.roles.iter().map(|r| (*r).to_owned()).collect(),
        attr: p
            .attr
            .iter()
            .map(|(k, v)| (k.clone(), json_to_pb(v)))
            .collect(),
        ..Default::default()
    }
}

pub(super) fn resource_pb(r: &ResourceInput) -> engine::Resource {
    engine::Resource {
        kind: r.kind.clone(),
        id: r.id.clone(),
        attr: json_map_to_pb(&r.attr),
        ..Default::default()
    }
}

/// JSON → `google.protobuf.Value`.
pub fn json_to_pb(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_pb).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: json_map_to_pb(map).into_iter().collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

pub(super) fn json_map_to_pb(
    map: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::HashMap<String, prost_types::Value> {
    map.iter()
        .map(|(k, v)| (k.clone(), json_to_pb(v)))
        .collect()
}

/// `google.protobuf.Value` → JSON.
pub fn pb_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers come back as integers, as callers sent them.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(pb_to_json).collect())
        }
        Some(Kind::StructValue(st)) => {
            let mut fields: Vec<_> = st.fields.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.clone(), pb_to_json(v)))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_between_json_and_protobuf() {
        let value =
            serde_json::json!({"n": 500, "f": 2.5, "s": "x", "b": true, "l": [1, "a"], "z": null});
        assert_eq!(pb_to_json(&json_to_pb(&value)), value);
    }
}
