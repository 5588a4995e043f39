//! Fuzz target `traceparent`: arbitrary `traceparent` and `tracestate` values, as a request or
//! Envoy's gRPC metadata carries them, through `heimdall::trace_context::extract_values`. The
//! header is untrusted and decides which trace heimdall's spans join, so this target asserts
//! that only the W3C form is ever taken and that it is read exactly, not just that nothing
//! panics:
//!
//! - a taken parent came from a value of the W3C shape (`00-` + 32 + `-` + 16 + `-` + 2
//!   lower-case hex digits, or a later version with `-`-separated extra parts), with a non-zero
//!   trace id and span id;
//! - the parent's trace id, span id and sampled flag are those digits, read back.
//!
//! The first byte splits the rest into the two values.

#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fuzz target: a failed assertion is the finding"
)]

use heimdall::trace_context::extract_values;
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt as _;

fn lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let at = usize::from(split).min(text.len());
    let (traceparent, tracestate) = match text.is_char_boundary(at) {
        true => text.split_at(at),
        false => (text, ""),
    };
    let tracestate = (!tracestate.is_empty()).then_some(tracestate);
    let Some(parent) = extract_values(traceparent, tracestate) else {
        return;
    };
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert!(fields.len() >= 4, "took {traceparent:?}");
    let (version, trace, span, flags) = (fields[0], fields[1], fields[2], fields[3]);
    assert!(
        lower_hex(version, 2)
            && version != "ff"
            && lower_hex(trace, 32)
            && lower_hex(span, 16)
            && lower_hex(flags, 2)
            && (version != "00" || fields.len() == 4),
        "took a value that is not W3C traceparent: {traceparent:?}"
    );
    assert!(
        trace != "0".repeat(32) && span != "0".repeat(16),
        "took an all-zero id: {traceparent:?}"
    );
    let context = parent.span().span_context().clone();
    assert_eq!(context.trace_id().to_string(), trace, "{traceparent:?}");
    assert_eq!(context.span_id().to_string(), span, "{traceparent:?}");
    let sampled = u8::from_str_radix(flags, 16).unwrap() & 1 == 1;
    assert_eq!(context.is_sampled(), sampled, "{traceparent:?}");
});
