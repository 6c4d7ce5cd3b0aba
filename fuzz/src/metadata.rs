//! `metadata`: request and response metadata as HTTP headers
//! (`capsule_host::serve::metadata`), both ways.

use capsule_host::serve::metadata::{self, HeaderBudget, META_HEADER_PREFIX};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::Target;
use crate::fixtures::{SEPARATOR, fields, join};

/// The target.
pub const TARGET: Target = Target {
    name: "metadata",
    about: "response metadata into headers and back (first byte `M`), and raw request headers \
            from a client into metadata (`R`): the budget is never exceeded, every entry that \
            can be a header survives (key lowercased, UTF-8 value intact, order kept per name), \
            only entries that cannot be headers are left out, and a client's header becomes \
            metadata exactly when it carries the prefix and a UTF-8 value",
    check,
    seeds: || {
        let mut response = b"M".to_vec();
        response.extend(join(&[
            "16",
            "4096",
            "trace",
            "abcd",
            "Content",
            "caf\u{e9}!",
            "a b",
            "x",
        ]));
        let mut tight = b"M".to_vec();
        tight.extend(join(&["2", "40", "a", "\n", "b", "1"]));
        let mut raw = b"R".to_vec();
        raw.extend(join(&[
            "x-capsule-meta-user",
            "ada",
            "X-Capsule-Meta-Trace",
            "1",
            "other",
            "x",
        ]));
        raw.push(SEPARATOR);
        raw.extend(b"x-capsule-meta-bin");
        raw.push(SEPARATOR);
        raw.extend(b"\xe9t\xe9");
        vec![response, tight, raw]
    },
};

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
    match data.split_first() {
        Some((b'M', rest)) => response(rest),
        Some((b'R', rest)) => request(rest),
        _ => {}
    }
}

/// Fields: the budget's entries and bytes, then keys and values in turn.
fn response(data: &[u8]) {
    let fields = fields(data, 2);
    let budget = HeaderBudget {
        entries: fields[0].parse().unwrap_or(64),
        bytes: fields[1].parse().unwrap_or(16 << 10),
    };
    let metadata: Vec<(String, String)> = fields[2..]
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
        .collect();
    let bytes: usize = metadata
        .iter()
        .map(|(key, value)| META_HEADER_PREFIX.len() + key.len() + value.len())
        .sum();
    let Ok(headers) = metadata::response_headers(&metadata, budget) else {
        assert!(metadata.len() > budget.entries || bytes > budget.bytes);
        return;
    };
    assert!(metadata.len() <= budget.entries && bytes <= budget.bytes);
    let expected: Vec<(String, String)> = metadata
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

/// Raw header names and values in turn, as a client may send them.
fn request(data: &[u8]) {
    let raw: Vec<&[u8]> = data.split(|&b| b == SEPARATOR).collect();
    let mut map = HeaderMap::new();
    let mut expected = Vec::new();
    for pair in raw.chunks(2).take(64) {
        let (name, value) = (pair[0], pair.get(1).copied().unwrap_or_default());
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if let Some(key) = name.as_str().strip_prefix(META_HEADER_PREFIX)
            && let Ok(text) = std::str::from_utf8(value.as_bytes())
        {
            expected.push((key.to_owned(), text.to_owned()));
        }
        map.append(name, value);
    }
    let mut got = metadata::request_metadata(&map);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected);
}
