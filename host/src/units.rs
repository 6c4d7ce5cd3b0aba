//! Human-friendly sizes (`64MiB`, `512k`) and durations (`500ms`, `2s`), as
//! written on the command line and in policy files.

use std::time::Duration;

/// Parses a byte size: a plain number of bytes, or a number with a unit.
/// `KiB`/`MiB`/`GiB` are powers of 1024; `KB`/`MB`/`GB` (and `k`/`m`/`g`)
/// are powers of 1000.
///
/// ```
/// assert_eq!(capsule_host::units::parse_size("64MiB"), Ok(64 << 20));
/// assert_eq!(capsule_host::units::parse_size("1000"), Ok(1000));
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size (try `64MiB` or `1048576`)");
    let too_large = || format!("`{text}` is more bytes than 64 bits hold");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start();
    // `Unit * 1` is the unit's factor (bytesize keeps `factor` private).
    let factor: u64 = if unit.is_empty() {
        1
    } else {
        unit.parse::<bytesize::Unit>().map_err(|_| bad())? * 1
    };
    // Exact arithmetic, refused rather than saturated when it does not fit:
    // bytesize itself reads `17179869184GiB` as u64::MAX, a value some
    // settings would then accept as "unlimited".
    if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * factor as f64;
        // 2^64 is exact in f64; anything at or above it does not fit.
        if bytes >= 18_446_744_073_709_551_616.0 {
            return Err(too_large());
        }
        Ok(bytes as u64)
    } else {
        // Only digits: parsing fails on overflow alone.
        let value: u64 = number.parse().map_err(|_| too_large())?;
        value.checked_mul(factor).ok_or_else(too_large)
    }
}

/// Parses a duration such as `500ms`, `2s` or `1m 30s`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(capsule_host::units::parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("`{text}` is not a duration (try `500ms` or `2s`): {err}"))
}

/// Formats a byte count the way [`parse_size`] reads it back.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, factor) in UNITS {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// Values that check themselves while being deserialized, so that a policy
/// file's error carries the position of the bad value.
///
/// Implements `Deserialize` for `$ty` through a visitor that accepts strings
/// (parsed by `$parse`) and, where `int` is given, non-negative integers.
macro_rules! value_from_str {
    ($ty:ident, $expecting:literal, |$s:ident| $parse:expr $(, int |$n:ident| $from_int:expr)?) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, $s: &str) -> Result<$ty, E> {
                        $parse.map_err(E::custom)
                    }
                    $(
                    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<$ty, E> {
                        let $n = u64::try_from(value)
                            .map_err(|_| E::custom(format!("{value} is negative")))?;
                        Ok($from_int)
                    }
                    fn visit_u64<E: serde::de::Error>(self, $n: u64) -> Result<$ty, E> {
                        Ok($from_int)
                    }
                    )?
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}
pub(crate) use value_from_str;

/// A byte size in a policy file: an integer or a string such as `"64MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// The size as a `usize` (saturating: validation refuses anything this
    /// large).
    pub fn usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// A duration in a policy file, such as `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub Duration);

/// A fuel budget in a policy file: an integer, or `"none"` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fuel(pub Option<u64>);

value_from_str!(
    Size,
    "a size such as \"64MiB\" or a number of bytes",
    |s| parse_size(s).map(Size),
    int | n | Size(n)
);
value_from_str!(Time, "a duration such as \"500ms\" or \"2s\"", |s| {
    parse_duration(s).map(Time)
});
value_from_str!(
    Fuel,
    "a number of fuel units or \"none\"",
    |s| if s.eq_ignore_ascii_case("none") {
        Ok(Fuel(None))
    } else {
        Err(format!(
            "`{s}` is not a fuel amount (a number, or \"none\")"
        ))
    },
    int | n | Fuel(Some(n))
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
        // Past 64 bits is refused, never saturated.
        assert!(
            parse_size("17179869184GiB")
                .unwrap_err()
                .contains("64 bits")
        );
        assert!(
            parse_size("18446744073709551616")
                .unwrap_err()
                .contains("64 bits")
        );
        assert!(parse_size("99999999999999999999.5GiB").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }
}
