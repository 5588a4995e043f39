//! The document stored per principal in the KV bucket, how an event is merged into it, and how a
//! principal id becomes a KV key.
//!
//! Every attribute remembers the stream sequence of the event that last set or removed it, and
//! an event changes an attribute only if it is newer. That makes applying events idempotent (a
//! redelivered event changes nothing and is skipped) and order-independent (two replicas that
//! apply events of one principal out of stream order still end at the stream-order fold), which
//! is what a shared consumer with several replicas and redelivery needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::event::Change;

/// One principal's stored state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRecord {
    /// The current attributes.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// For every attribute ever set or removed: the stream sequence of the last event that did.
    /// A removed attribute keeps its entry here, so an older event cannot bring it back.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// The highest stream sequence applied.
    #[serde(default)]
    pub seq: u64,
    /// Tokens issued before this instant are rejected.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// When the record was last written.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

impl PrincipalRecord {
    /// Merges the change of the event at stream sequence `seq`. Returns whether anything
    /// changed; `false` means the event was already applied or everything it touches was set by
    /// newer events, and nothing needs to be written.
    pub fn apply(&mut self, seq: u64, change: &Change) -> bool {
        let mut changed = false;
        match change {
            Change::Attributes(updates) => {
                for (name, value) in updates {
                    if self.versions.get(name).is_some_and(|&v| v >= seq) {
                        continue;
                    }
                    self.versions.insert(name.clone(), seq);
                    if value.is_null() {
                        self.attributes.remove(name);
                    } else {
                        self.attributes.insert(name.clone(), value.clone());
                    }
                    changed = true;
                }
            }
            // Revocations only move forward: the latest `not_before` wins whatever the order.
            Change::Revoke { not_before } => {
                if self.not_before.is_none_or(|current| *not_before > current) {
                    self.not_before = Some(*not_before);
                    changed = true;
                }
            }
        }
        if changed && seq > self.seq {
            self.seq = seq;
        }
        changed
    }

    /// Whether a token issued at `issued_at` is revoked. A token without `iat` cannot be shown to
    /// be newer than a revocation, so it is revoked too (fail closed).
    pub fn revokes(&self, issued_at: Option<OffsetDateTime>) -> bool {
        match (self.not_before, issued_at) {
            (None, _) => false,
            (Some(not_before), Some(iat)) => iat < not_before,
            (Some(_), None) => true,
        }
    }
}

/// The KV key of a principal: bytes outside `[A-Za-z0-9_-]` are written as `=XX` (hex).
/// Injective (`=` itself is escaped), never empty for a valid id, and free of the `.` that KV
/// keys may not start or end with; `user123` stays `user123`.
pub fn kv_key(principal: &str) -> String {
    let mut key = String::with_capacity(principal.len());
    for byte in principal.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            key.push(char::from(byte));
        } else {
            key.push('=');
            key.push(hex_digit(byte >> 4));
            key.push(hex_digit(byte & 0x0f));
        }
    }
    key
}

/// The principal id of a KV key written by [`kv_key`]; `None` for any other key.
pub fn principal_of_key(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut rest = key.bytes();
    while let Some(byte) = rest.next() {
        if byte == b'=' {
            let high = hex_value(rest.next()?)?;
            let low = hex_value(rest.next()?)?;
            bytes.push(high << 4 | low);
        } else if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            bytes.push(byte);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

fn hex_digit(nibble: u8) -> char {
    char::from(
        b"0123456789ABCDEF"
            .get(usize::from(nibble))
            .copied()
            .unwrap_or(b'0'),
    )
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(pairs: &[(&str, Value)]) -> Change {
        Change::Attributes(
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn merges_sets_and_removes() {
        let mut record = PrincipalRecord::default();
        assert!(record.apply(1, &set(&[("plan", json!("pro")), ("seats", json!(5))])));
        assert!(record.apply(2, &set(&[("plan", Value::Null), ("region", json!("eu"))])));
        assert_eq!(
            Value::Object(record.attributes.clone()),
            json!({"seats": 5, "region": "eu"})
        );
        assert_eq!(record.seq, 2);
        assert_eq!(record.versions.get("plan"), Some(&2));
    }

    #[test]
    fn redelivery_changes_nothing() {
        let mut record = PrincipalRecord::default();
        let change = set(&[("plan", json!("pro"))]);
        assert!(record.apply(7, &change));
        let before = record.clone();
        assert!(!record.apply(7, &change));
        assert_eq!(record, before);
    }

    #[test]
    fn any_order_ends_at_the_stream_order_fold() {
        let events = [
            (1, set(&[("plan", json!("free")), ("seats", json!(1))])),
            (2, set(&[("plan", json!("pro"))])),
            (3, set(&[("seats", Value::Null)])),
            (4, set(&[("seats", json!(9)), ("plan", json!("team"))])),
            (5, set(&[("plan", Value::Null)])),
        ];
        let mut in_order = PrincipalRecord::default();
        for (seq, change) in &events {
            in_order.apply(*seq, change);
        }
        // Every rotation and the reverse, each with a redelivery of every event.
        for start in 0..events.len() {
            for reverse in [false, true] {
                let mut order: Vec<_> = events.iter().cycle().skip(start).take(5).collect();
                if reverse {
                    order.reverse();
                }
                let mut record = PrincipalRecord::default();
                for (seq, change) in order.iter().chain(order.iter()) {
                    record.apply(*seq, change);
                }
                assert_eq!(record.attributes, in_order.attributes, "start {start}");
                assert_eq!(record.seq, 5);
            }
        }
        assert_eq!(Value::Object(in_order.attributes), json!({"seats": 9}));
    }

    #[test]
    fn revocation_moves_forward_only() {
        let early = time::macros::datetime!(2026-01-01 0:00 UTC);
        let late = time::macros::datetime!(2026-06-01 0:00 UTC);
        let mut record = PrincipalRecord::default();
        assert!(!record.revokes(None));
        assert!(record.apply(2, &Change::Revoke { not_before: late }));
        assert!(!record.apply(1, &Change::Revoke { not_before: early }));
        assert_eq!(record.not_before, Some(late));
        assert!(record.revokes(Some(early)));
        assert!(!record.revokes(Some(late)));
        assert!(record.revokes(None), "a token without iat is revoked");
    }

    #[test]
    fn stored_form_round_trips() {
        let mut record = PrincipalRecord::default();
        record.apply(3, &set(&[("plan", json!("pro"))]));
        record.not_before = Some(time::macros::datetime!(2026-01-01 0:00 UTC));
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<PrincipalRecord>(&text).unwrap(),
            record
        );
        assert!(serde_json::from_str::<PrincipalRecord>(r#"{"attributes": 1}"#).is_err());
    }

    #[test]
    fn keys_are_valid_and_reversible() {
        for id in [
            "user123",
            "a.b",
            "alice@example.com",
            "=",
            "x=41",
            "名前",
            ".",
            "a/b c",
        ] {
            let key = kv_key(id);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{key}"
            );
            assert_eq!(principal_of_key(&key).as_deref(), Some(id));
        }
        assert_eq!(kv_key("user123"), "user123");
        assert_eq!(kv_key("a.b@c"), "a=2Eb=40c");
        assert_ne!(kv_key("="), kv_key("=3D"));
        assert_eq!(principal_of_key("bad.key"), None);
        assert_eq!(principal_of_key("=4"), None);
    }
}
