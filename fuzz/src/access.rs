//! `access`: what `[[host.api_keys]]` entries are written with — key
//! digests and rates (`capsule_host::access`).

use capsule_host::access::{Rate, digest_of, parse_digest};

use crate::Target;
use crate::fixtures::{fields, join};

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
            join(&[
                "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
                "password",
                "",
            ]),
            join(&["100/s", "capsule_0123", "10"]),
            join(&["600 / min", "", ""]),
            join(&["4294967295/h", "k", "1"]),
        ]
    },
};

fn check(data: &[u8]) {
    // Fields: the text (a digest or a rate), a key, a burst.
    let fields = fields(data, 3);
    let (text, key) = (&fields[0], &fields[1]);
    let burst: Option<u32> = fields[2].parse().ok();
    if let Ok(digest) = parse_digest(text) {
        let hex = text.strip_prefix("sha256:").expect("the prefix");
        assert_eq!(hex.len(), 64);
        let printed: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(printed, hex.to_ascii_lowercase());
    }
    let digest = digest_of(key);
    let parsed = parse_digest(&digest).expect("a key's digest parses");
    let expected: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()).into();
    assert_eq!(parsed, expected);

    if let Ok(rate) = Rate::parse(text, burst) {
        assert!(rate.count > 0 && rate.burst > 0);
        assert_eq!(rate.burst, burst.unwrap_or(rate.count));
        let again = Rate::parse(&rate.describe(), Some(rate.burst))
            .unwrap_or_else(|err| panic!("`{}` does not parse: {err}", rate.describe()));
        assert_eq!(
            (again.count, again.per, again.burst),
            (rate.count, rate.per, rate.burst)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_reach_the_digest_and_the_rates() {
        let seeds = (TARGET.seeds)();
        assert!(parse_digest(&fields(&seeds[0], 3)[0]).is_ok());
        for seed in &seeds[1..] {
            let fields = fields(seed, 3);
            assert!(
                Rate::parse(&fields[0], fields[2].parse().ok()).is_ok(),
                "{fields:?}"
            );
        }
    }
}
