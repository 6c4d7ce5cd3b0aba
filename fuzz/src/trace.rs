//! `traceparent`: W3C trace context as it arrives in HTTP headers, event
//! messages and metadata from anyone (`telemetry::TraceParent::parse`).

use capsule_host::telemetry::TraceParent;

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "traceparent",
    about: "parse any text as a traceparent: accepted exactly when the W3C recommendation's \
            grammar (written out here separately) accepts it, and what is accepted prints as a \
            version-00 value that parses back to the same context",
    check,
    seeds: || {
        [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        ]
        .iter()
        .map(|text| text.as_bytes().to_vec())
        .collect()
    },
};

/// Lowercase hex of exactly `len` characters.
fn lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The recommendation's grammar, field by field: `version "-" trace-id "-"
/// parent-id "-" trace-flags`, lowercase hex, version `ff` invalid, ids not
/// all zeros, version `00` exactly 55 characters, a later version at least
/// 55 with a `-` after the flags if longer.
fn reference(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let value = value.trim();
    let version = value.get(0..2)?;
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    if version == "00" && value.len() != 55 {
        return None;
    }
    if value.len() > 55 && value.as_bytes()[55] != b'-' {
        return None;
    }
    let mut fields = value.get(..55)?.split('-');
    let (Some(_), Some(trace), Some(parent), Some(flags), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let byte = |hex: &str, i: usize| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    let trace_id = std::array::from_fn(|i| byte(trace, i));
    let span_id = std::array::from_fn(|i| byte(parent, i));
    Some((trace_id, span_id, byte(flags, 0) & 1 == 1))
}

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = TraceParent::parse(text);
    assert_eq!(
        parsed.map(|p| (p.trace_id, p.span_id, p.sampled)),
        reference(text),
        "`{text}`"
    );
    if let Some(parent) = parsed {
        let printed = parent.to_string();
        assert_eq!(printed.len(), 55);
        assert!(printed.starts_with("00-"));
        assert_eq!(TraceParent::parse(&printed), Some(parent));
    }
}
