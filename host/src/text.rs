//! Strings from callers and plugins on their way into the host's own log.
//!
//! Operation names, plugin log lines, error messages and dead-letter reasons
//! come from people the host does not trust. Written raw, a newline would let
//! them forge a log line and a megabyte would let one request flood the log.
//! [`for_log`] escapes control characters and truncates, so one value is
//! always one bounded piece of one line. `chain` renders an error and its
//! causes on one line.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How much of an untrusted string the host log shows by default.
pub const LOG_FIELD_BYTES: usize = 1024;

/// `text` made safe for one field of one log line: control characters
/// (newlines, carriage returns, escape sequences, …) escaped as `\n`, `\r`,
/// `\u{1b}`, and at most `max` bytes of the original kept, with a note of
/// how much was cut. Borrows when nothing needs changing.
///
/// ```
/// # use capsule_host::text::for_log;
/// assert_eq!(for_log("a\nfake line", 100), "a\\nfake line");
/// assert_eq!(for_log("abcdef", 3), "abc…(3 more bytes)");
/// ```
pub fn for_log(text: &str, max: usize) -> Cow<'_, str> {
    let clean = !text.chars().any(char::is_control);
    if clean && text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let kept = &text[..cut];
    let mut out = String::with_capacity(kept.len() + 16);
    for ch in kept.chars() {
        if ch.is_control() {
            let _ = write!(out, "{}", ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    if cut < text.len() {
        let _ = write!(out, "…({} more bytes)", text.len() - cut);
    }
    Cow::Owned(out)
}

/// `text` cut to at most `max` bytes on a character boundary, with `…`
/// after it when anything was cut.
///
/// ```
/// # use capsule_host::text::cut;
/// assert_eq!(cut("héllo", 2), "h…");
/// assert_eq!(cut("short", 10), "short");
/// ```
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// [`for_log`] with [`LOG_FIELD_BYTES`].
pub fn log_field(text: &str) -> Cow<'_, str> {
    for_log(text, LOG_FIELD_BYTES)
}

/// Renders a wasmtime error and its causes on one line, without the
/// backtrace that `{:?}` prints when `RUST_BACKTRACE` is set.
pub(crate) fn chain(err: &wasmtime::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_one_value_stays_one_line() {
        let forged = "ok\n2026-12-01T00:00:00Z ERROR admin logged in\r\x1b[2J";
        let safe = for_log(forged, 1000);
        assert!(!safe.contains('\n') && !safe.contains('\r') && !safe.contains('\x1b'));
        assert!(
            safe.contains("\\n2026") && safe.contains("\\u{1b}"),
            "{safe}"
        );
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let safe = for_log(&long, 7);
        assert!(safe.starts_with("ééé…("), "{safe}");
        assert!(safe.ends_with("1994 more bytes)"), "{safe}");
        assert!(matches!(for_log("plain", 10), Cow::Borrowed("plain")));
    }
}
