//! Fuzz target `event`: arbitrary bytes as a NATS business event, through the parser and into a
//! principal's stored record — the path every published payload takes before anything is
//! written. No payload may panic, and what the parser accepts must keep the record's rules.
//!
//! The first byte picks the subject kind (attributes or revocation); the rest is the payload.

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use heimdall::attributes::event::{Change, EventKind, parse, valid_principal_id};
use heimdall::attributes::record::{PrincipalRecord, kv_key, principal_of_key};
use libfuzzer_sys::fuzz_target;

/// `nats.consumer.max_event_bytes` by default.
const MAX_EVENT_BYTES: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let kind = if mode & 1 == 0 {
        EventKind::Attributes
    } else {
        EventKind::Revocation
    };
    let event = match parse(kind, payload, MAX_EVENT_BYTES) {
        Ok(event) => event,
        Err(error) => {
            // The message is logged and the label is a metric label: the payload (which may
            // carry personal data) stays out of both, so neither grows with it. (Control
            // characters are escaped by the log formatter, not here.)
            assert!(!error.label().is_empty());
            let message = error.to_string();
            assert!(
                message.len() <= 512,
                "an error message grows with the payload: {message:?}"
            );
            return;
        }
    };

    assert!(
        valid_principal_id(&event.principal),
        "accepted a bad principal id"
    );
    let key = kv_key(&event.principal);
    assert!(!key.is_empty());
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=')),
        "KV key `{key}` has a byte outside [A-Za-z0-9_=-]"
    );
    assert_eq!(
        principal_of_key(&key).as_deref(),
        Some(event.principal.as_str())
    );

    match (&event.change, kind) {
        (Change::Attributes(updates), EventKind::Attributes) => {
            assert!(
                !updates.is_empty(),
                "an attributes event that changes nothing"
            );
            let mut names: Vec<&str> = updates.iter().map(|(name, _)| name.as_str()).collect();
            assert!(names.iter().all(|name| !name.is_empty()));
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "one event changes an attribute twice");
        }
        (Change::Revoke { .. }, EventKind::Revocation) => {}
        (change, kind) => panic!("a {kind:?} event parsed as {change:?}"),
    }

    // Applying is idempotent: the redelivered event changes nothing.
    let mut record = PrincipalRecord::default();
    assert!(
        record.apply(7, &event.change),
        "a valid event changed nothing"
    );
    let after_once = record.clone();
    assert!(
        !record.apply(7, &event.change),
        "a redelivered event applied twice"
    );
    assert_eq!(record, after_once);
    // An older event cannot undo what a newer one set.
    assert!(
        !record.apply(3, &event.change),
        "an older event applied over a newer one"
    );

    // The record survives its trip through the KV bucket (JSON) with the same keys, versions and
    // revocation instant. Attribute values are compared by key only: JSON floats need not
    // round-trip bit for bit.
    let stored = serde_json::to_vec(&record).expect("record serializes");
    let read: PrincipalRecord = serde_json::from_slice(&stored).expect("stored record reads back");
    assert_eq!(read.versions, record.versions);
    assert_eq!(read.seq, record.seq);
    assert_eq!(read.not_before, record.not_before);
    assert!(read.attributes.keys().eq(record.attributes.keys()));
});
