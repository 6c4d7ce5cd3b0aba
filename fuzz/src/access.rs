//! `access`: what `[[host.api_keys]]` entries are written with — key
//! digests and rates (`capsule_host::access`).

use arbitrary::{Arbitrary, Unstructured};
use capsule_host::access::{Rate, digest_of, parse_digest};

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "access",
    about: "parse any text as a key digest and as a rate: a digest is exactly `sha256:` and 64 \
            hex digits and the digest of a key parses to that key's hash; an accepted rate is \
            never zero, keeps its count and burst, and describes itself as text that parses \
            back to the same rate",
    check,
    seeds: || {
        vec![
            b"\x00sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8".to_vec(),
            b"\x01\x0a\x00\x00\x00100/s".to_vec(),
            b"\x01\x00\x00\x00\x00600 / min".to_vec(),
        ]
    },
};

#[derive(Arbitrary, Debug)]
struct Input {
    burst: Option<u32>,
    key: String,
    text: String,
}

fn check(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    if let Ok(digest) = parse_digest(&input.text) {
        let hex = input.text.strip_prefix("sha256:").expect("the prefix");
        assert_eq!(hex.len(), 64);
        let printed: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(printed, hex.to_ascii_lowercase());
    }
    let digest = digest_of(&input.key);
    let parsed = parse_digest(&digest).expect("a key's digest parses");
    let expected: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(input.key.as_bytes()).into();
    assert_eq!(parsed, expected);

    if let Ok(rate) = Rate::parse(&input.text, input.burst) {
        assert!(rate.count > 0 && rate.burst > 0);
        assert_eq!(rate.burst, input.burst.unwrap_or(rate.count));
        let again = Rate::parse(&rate.describe(), Some(rate.burst))
            .unwrap_or_else(|err| panic!("`{}` does not parse: {err}", rate.describe()));
        assert_eq!(
            (again.count, again.per, again.burst),
            (rate.count, rate.per, rate.burst)
        );
    }
}
