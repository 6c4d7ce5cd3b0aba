//! `units`: sizes (`64MiB`) and durations (`500ms`) as policies and the
//! command line write them.

use std::time::Duration;

use capsule_host::units::{format_size, parse_duration, parse_size};

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "units",
    about: "parse any text as a size and a duration: a whole number with a unit means \
            exactly that many bytes (or is refused when it does not fit, never rounded or \
            clamped), formatted sizes and durations parse back to themselves",
    check,
    seeds: || {
        [
            "64MiB",
            "1.5GiB",
            "18446744073709551615",
            "18446744073709551616",
            "17179869184GiB",
            "1m 30s",
            "500ms",
            "2s",
            "1000",
            "0.1KB",
        ]
        .iter()
        .map(|text| text.as_bytes().to_vec())
        .collect()
    },
};

/// Bytes per unit, as [`parse_size`] documents them.
fn unit_factor(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "p" | "pb" => 1_000_000_000_000_000,
        "e" | "eb" => 1_000_000_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        "pib" | "pi" => 1 << 50,
        "eib" | "ei" => 1 << 60,
        _ => return None,
    })
}

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let size = parse_size(text);
    // A whole number, optionally followed by a known unit: exact or refused.
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 {
        let (number, unit) = trimmed.split_at(digits);
        if let Some(factor) = unit_factor(unit.trim()) {
            let exact = number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(factor));
            match (exact, &size) {
                (Some(exact), Ok(parsed)) => assert_eq!(*parsed, exact, "`{text}`"),
                (None, Ok(parsed)) => {
                    panic!("`{text}` does not fit in 64 bits, yet reads as {parsed}")
                }
                (Some(exact), Err(err)) => panic!("`{text}` is {exact} bytes, yet: {err}"),
                (None, Err(_)) => {}
            }
        }
    }
    if let Ok(bytes) = size {
        assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
    }
    if let Ok(duration) = parse_duration(text) {
        let printed = humantime::format_duration(duration).to_string();
        assert_eq!(
            parse_duration(&printed),
            Ok(duration),
            "`{text}` printed as `{printed}`"
        );
    }
    // Numbers the fuzzer makes also go the other way.
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        let duration = Duration::from_nanos(n);
        let printed = humantime::format_duration(duration).to_string();
        assert_eq!(parse_duration(&printed), Ok(duration));
    }
}
