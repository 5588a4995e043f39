//! Business events as published on the stream, parsed and validated before anything is written.
//!
//! The shapes are the contract's: `{"user_id": "u1", "plan": "pro", "attributes": {"seats": 5}}`
//! updates attributes (top-level fields and the `attributes` object are merged; `null` removes a
//! key) and, on the revocation subject, `{"user_id": "u1", "not_before": "2026-01-01T00:00:00Z"}`
//! revokes the principal's tokens issued before that instant. Anything else is malformed, with a
//! message that says what is wrong; the payload itself never goes into a message (it may carry
//! personal data).

use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Longest principal id accepted, in bytes.
pub const MAX_PRINCIPAL_ID_BYTES: usize = 256;

/// The fields that name the principal; neither is stored as an attribute.
const ID_FIELDS: [&str; 2] = ["user_id", "principal_id"];
/// The field holding the attributes object; its entries are merged, not the object itself.
const ATTRIBUTES_FIELD: &str = "attributes";

/// One validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub principal: String,
    pub change: Change,
}

/// What an event does to the principal's record.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set (or, with `null`, remove) these attributes, in this order.
    Attributes(Vec<(String, Value)>),
    /// Reject the principal's tokens issued before this instant.
    Revoke { not_before: OffsetDateTime },
}

/// How the subject an event arrived on is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Attributes,
    Revocation,
}

/// Why an event cannot be applied. It will never become applicable, so it is terminated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("payload is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload is a JSON {0}, not an object")]
    NotObject(&'static str),
    #[error("no principal id: `user_id` or `principal_id` is required")]
    NoPrincipal,
    #[error(
        "`{field}` must be a non-empty string of at most {MAX_PRINCIPAL_ID_BYTES} bytes without control characters"
    )]
    BadPrincipal { field: &'static str },
    #[error("`user_id` and `principal_id` name different principals")]
    ConflictingIds,
    #[error("`attributes` must be an object, not a JSON {0}")]
    AttributesNotObject(&'static str),
    #[error("attribute names must not be empty")]
    EmptyAttributeName,
    #[error("the event changes no attribute")]
    NoChange,
    #[error("`not_before` is required on a revocation event")]
    NoNotBefore,
    #[error("`not_before` must be an RFC 3339 time: {0}")]
    BadNotBefore(String),
    #[error("field `{0}` is not allowed on a revocation event")]
    RevocationField(String),
}

impl EventError {
    /// A short, fixed label for metrics.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotJson(_) | Self::NotObject(_) => "not_json_object",
            Self::NoPrincipal | Self::BadPrincipal { .. } | Self::ConflictingIds => "principal",
            Self::AttributesNotObject(_) | Self::EmptyAttributeName | Self::NoChange => {
                "attributes"
            }
            Self::NoNotBefore | Self::BadNotBefore(_) | Self::RevocationField(_) => "revocation",
        }
    }
}

/// Parses and validates one event payload.
pub fn parse(kind: EventKind, payload: &[u8], max_bytes: usize) -> Result<Event, EventError> {
    if payload.len() > max_bytes {
        return Err(EventError::TooLarge {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| EventError::NotJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(EventError::NotObject(json_type(&value)));
    };
    let principal = principal_id(&mut fields)?;
    let change = match kind {
        EventKind::Attributes => Change::Attributes(attribute_changes(fields)?),
        EventKind::Revocation => Change::Revoke {
            not_before: not_before(fields)?,
        },
    };
    Ok(Event { principal, change })
}

/// Takes the principal id out of the event: `user_id` or `principal_id` (equal if both).
fn principal_id(fields: &mut Map<String, Value>) -> Result<String, EventError> {
    let mut found: Option<String> = None;
    for field in ID_FIELDS {
        let Some(value) = fields.remove(field) else {
            continue;
        };
        let id = match value {
            Value::String(id) if valid_principal_id(&id) => id,
            _ => return Err(EventError::BadPrincipal { field }),
        };
        match &found {
            Some(other) if *other != id => return Err(EventError::ConflictingIds),
            _ => found = Some(id),
        }
    }
    found.ok_or(EventError::NoPrincipal)
}

/// Whether `id` is acceptable as a principal id.
pub fn valid_principal_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_PRINCIPAL_ID_BYTES && !id.chars().any(char::is_control)
}

/// Top-level fields first, then the `attributes` object, so an explicit `attributes` entry wins
/// over a top-level field of the same name.
fn attribute_changes(mut fields: Map<String, Value>) -> Result<Vec<(String, Value)>, EventError> {
    let nested = match fields.remove(ATTRIBUTES_FIELD) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(EventError::AttributesNotObject(json_type(&other))),
    };
    // One change per name: an event applies at one sequence, so a second would be ignored.
    fields.retain(|name, _| !nested.contains_key(name));
    let changes: Vec<(String, Value)> = fields.into_iter().chain(nested).collect();
    if changes.iter().any(|(name, _)| name.is_empty()) {
        return Err(EventError::EmptyAttributeName);
    }
    if changes.is_empty() {
        return Err(EventError::NoChange);
    }
    Ok(changes)
}

fn not_before(mut fields: Map<String, Value>) -> Result<OffsetDateTime, EventError> {
    let value = fields.remove("not_before").ok_or(EventError::NoNotBefore)?;
    // A revocation carries nothing else: a stray field is more likely a mistake than intent.
    if let Some(name) = fields.keys().next() {
        return Err(EventError::RevocationField(name.clone()));
    }
    let Value::String(text) = value else {
        return Err(EventError::BadNotBefore(format!(
            "got a JSON {}",
            json_type(&value)
        )));
    };
    OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| EventError::BadNotBefore(e.to_string()))
}

const fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attrs(payload: &str) -> Result<Event, EventError> {
        parse(EventKind::Attributes, payload.as_bytes(), 64 * 1024)
    }

    #[test]
    fn contract_examples_parse() {
        let event = attrs(r#"{"user_id": "user123", "plan": "enterprise", "attributes": {"max_users": 500, "features": ["sso", "audit", "priority_support"]}}"#).unwrap();
        assert_eq!(event.principal, "user123");
        assert_eq!(
            event.change,
            // Top-level fields first, then `attributes`, each in key order.
            Change::Attributes(vec![
                ("plan".into(), json!("enterprise")),
                (
                    "features".into(),
                    json!(["sso", "audit", "priority_support"])
                ),
                ("max_users".into(), json!(500)),
            ])
        );
        let event = attrs(r#"{"user_id": "user123", "attributes": {"current_users": 287, "storage_used_gb": 1250, "api_calls_today": 45000}}"#).unwrap();
        assert!(matches!(event.change, Change::Attributes(ref c) if c.len() == 3));
    }

    #[test]
    fn principal_id_alias_and_nulls() {
        let event = attrs(r#"{"principal_id": "svc-1", "attributes": {"plan": null}}"#).unwrap();
        assert_eq!(event.principal, "svc-1");
        assert_eq!(
            event.change,
            Change::Attributes(vec![("plan".into(), Value::Null)])
        );
        assert!(attrs(r#"{"user_id": "a", "principal_id": "a", "x": 1}"#).is_ok());
        let event =
            attrs(r#"{"user_id": "a", "plan": "top", "attributes": {"plan": "nested"}}"#).unwrap();
        assert_eq!(
            event.change,
            Change::Attributes(vec![("plan".into(), json!("nested"))])
        );
    }

    #[test]
    fn malformed_events_say_what_is_wrong() {
        let cases = [
            ("{", "payload is not JSON"),
            ("[1]", "payload is a JSON array, not an object"),
            (r#"{"plan": "pro"}"#, "no principal id"),
            (r#"{"user_id": 7, "plan": "pro"}"#, "`user_id` must be"),
            (r#"{"user_id": "", "plan": "pro"}"#, "`user_id` must be"),
            (
                r#"{"user_id": "a\u0000b", "plan": "pro"}"#,
                "`user_id` must be",
            ),
            (
                r#"{"user_id": "a", "principal_id": "b", "plan": "pro"}"#,
                "name different principals",
            ),
            (
                r#"{"user_id": "a", "attributes": [1]}"#,
                "`attributes` must be an object, not a JSON array",
            ),
            (r#"{"user_id": "a"}"#, "changes no attribute"),
            (r#"{"user_id": "a", "": 1}"#, "must not be empty"),
        ];
        for (payload, expected) in cases {
            let err = attrs(payload).unwrap_err().to_string();
            assert!(err.contains(expected), "{payload}: {err}");
        }
        let long = format!(r#"{{"user_id": "{}", "x": 1}}"#, "u".repeat(257));
        assert!(matches!(
            attrs(&long),
            Err(EventError::BadPrincipal { field: "user_id" })
        ));
        let err = parse(EventKind::Attributes, b"{\"user_id\":\"a\",\"x\":1}", 8).unwrap_err();
        assert_eq!(err.to_string(), "payload is 21 bytes, over the limit of 8");
    }

    #[test]
    fn revocations() {
        let revoke = |payload: &str| parse(EventKind::Revocation, payload.as_bytes(), 1024);
        let event = revoke(r#"{"user_id": "u1", "not_before": "2026-11-23T10:00:00Z"}"#).unwrap();
        assert_eq!(
            event.change,
            Change::Revoke {
                not_before: time::macros::datetime!(2026-11-23 10:00 UTC)
            }
        );
        for (payload, expected) in [
            (r#"{"user_id": "u1"}"#, "`not_before` is required"),
            (
                r#"{"user_id": "u1", "not_before": "yesterday"}"#,
                "RFC 3339",
            ),
            (r#"{"user_id": "u1", "not_before": 5}"#, "got a JSON number"),
            (
                r#"{"user_id": "u1", "not_before": "2026-11-23T10:00:00Z", "plan": "x"}"#,
                "field `plan` is not allowed",
            ),
        ] {
            let err = revoke(payload).unwrap_err().to_string();
            assert!(err.contains(expected), "{payload}: {err}");
        }
    }
}
