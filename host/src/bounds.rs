//! Invalid settings and the range checks that find them: every number a
//! policy, an embedder or a command line sets is checked against a range
//! the host can honour before anything runs, and a value out of range is an
//! [`Invalid`] naming its field, never a panic, a wrap or a silent clamp.

use std::time::Duration;

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct Invalid {
    /// The field, relative to its section (`timeout`, `kv.max_value`,
    /// `env.LANG`).
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same problem, with `prefix.` in front of its field.
    pub fn within(self, prefix: &str) -> Invalid {
        let separator = if self.field.starts_with('[') { "" } else { "." };
        Invalid {
            field: format!("{prefix}{separator}{}", self.field),
            ..self
        }
    }
}

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;
/// The longest any timeout or delay may be: far beyond any sane value, far
/// below where `Instant + Duration` could overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// A WebAssembly page.
pub(crate) const PAGE: u64 = 64 * KIB;

pub(crate) fn range(
    field: &str,
    value: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            field,
            format!("{value} {unit} is out of range: use {min} to {max} {unit}"),
        ));
    }
    Ok(())
}

pub(crate) fn bytes(field: &str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            field,
            format!(
                "{} is out of range: use {} to {}",
                show_bytes(value),
                show_bytes(min),
                show_bytes(max)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn duration(field: &str, value: Duration, min: Duration) -> Result<(), Invalid> {
    if value < min || value > MAX_DURATION {
        return Err(Invalid::new(
            field,
            format!("{value:?} is out of range: use {min:?} to 24h"),
        ));
    }
    Ok(())
}

pub(crate) fn show_bytes(value: u64) -> String {
    bytesize::ByteSize::b(value).display().iec().to_string()
}

/// Checks a plugin (or pipeline) name: 1–64 characters of ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit. Names appear in
/// URLs, metrics labels and file names, so nothing else is accepted.
pub fn plugin_name(name: &str) -> Result<(), String> {
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.len() > 64 || !valid_start || !valid_chars {
        return Err(format!(
            "invalid plugin name `{name}`: use 1-64 ASCII letters, digits, `-`, `_` or `.`, \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(plugin_name("hello").is_ok());
        assert!(plugin_name("kv-counter_2.v1").is_ok());
        assert!(plugin_name("").is_err());
        assert!(plugin_name("-x").is_err());
        assert!(plugin_name("a/b").is_err());
        assert!(plugin_name(&"x".repeat(65)).is_err());
    }
}
