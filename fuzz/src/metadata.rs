//! `metadata`: request and response metadata as HTTP headers
//! (`capsule_host::serve::metadata`).

use arbitrary::{Arbitrary, Unstructured};
use capsule_host::serve::metadata::{self, HeaderBudget, META_HEADER_PREFIX};
use http::HeaderMap;

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "metadata",
    about: "turn arbitrary metadata into response headers and back: the budget is never \
            exceeded, every entry that can be a header survives the trip (its key lowercased), \
            and only entries that cannot be headers are left out",
    check,
    seeds: || {
        vec![
            b"\x10\x00\x00\x40\x05trace\x04abcd\x07Content\x06caf\xc3\xa9!".to_vec(),
            b"\x02\x00\x00\x01\x01a\x01\n".to_vec(),
        ]
    },
};

#[derive(Arbitrary, Debug)]
struct Input {
    entries: u8,
    bytes: u16,
    metadata: Vec<(String, String)>,
}

/// Whether `key` can follow the prefix in a header name (an HTTP token).
fn token(key: &str) -> bool {
    key.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` can be a header value: no control characters but tab.
fn header_safe(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn check(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let budget = HeaderBudget {
        entries: usize::from(input.entries),
        bytes: usize::from(input.bytes),
    };
    let bytes = metadata::header_bytes(&input.metadata);
    let Ok(headers) = metadata::response_headers(&input.metadata, budget) else {
        assert!(input.metadata.len() > budget.entries || bytes > budget.bytes);
        return;
    };
    assert!(headers.len() <= budget.entries);
    let sent: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    assert!(
        sent <= budget.bytes,
        "{sent} header bytes past a budget of {}",
        budget.bytes
    );

    // Which entries can be headers at all, as RFC 9110 says.
    let expected: Vec<(String, String)> = input
        .metadata
        .iter()
        .filter(|(key, value)| token(key) && header_safe(value))
        .map(|(key, value)| (key.to_ascii_lowercase(), value.clone()))
        .collect();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        assert!(name.as_str().starts_with(META_HEADER_PREFIX));
        map.append(name, value);
    }
    let mut back = metadata::request_metadata(&map);
    let mut expected = expected;
    // A header map groups values by name; order within a name is kept.
    back.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        back, expected,
        "metadata changed on its way through headers"
    );
}
