//! Stage 2 of the `ingest` pipeline (`ingest-validate` → `ingest-transform` →
//! `ingest-enrich`): normalises a validated record.
//!
//! It demonstrates a pure data-shaping stage over `serde_json::Value`: it
//! handles every operation the same way (a pipeline passes its caller's
//! operation to each stage) and keeps the fields it does not know.
//!
//! Input: a JSON object with string `name` and `email` and a number `amount`
//! (what `ingest-validate` answers). Output: the same object with
//!
//! - `email` lowercased;
//! - each whitespace-separated word of `name` title-cased (`ada  LOVELACE` →
//!   `Ada Lovelace`);
//! - `amount` replaced by the integer `amount_cents`, rounded half away from
//!   zero on the number's decimal digits (`1.005` → `101`, `0.005` → `1`).
//!
//! Anything else (not an object, a field missing or of the wrong type, an
//! amount too large for 64-bit cents) is refused with `invalid-input`.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log};
use serde_json::{Map, Number, Value};

/// Each whitespace-separated word with its first character uppercased and
/// the rest lowercased, joined with single spaces.
fn title_case(name: &str) -> String {
    name.split_whitespace()
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// `amount` in hundredths, rounded half away from zero.
///
/// The rounding works on the number's shortest decimal form (what the JSON
/// said), not on `amount * 100.0` in binary floating point, where `1.005`
/// would become `100.49999…` and round the wrong way. `None` if the result
/// does not fit an `i64`.
fn to_cents(amount: &Number) -> Option<i64> {
    if let Some(whole) = amount.as_i64() {
        return whole.checked_mul(100);
    }
    let text = amount.to_string();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b.wrapping_sub(b'0'))
        .collect();
    if digits.iter().any(|&d| d > 9) {
        return None;
    }
    // Digits before this index are whole cents; the digit at it decides the
    // rounding. It may fall before the first digit or after the last.
    let point = i64::try_from(int_part.len()).ok()? + exponent.checked_add(2)?;
    let mut cents: i64 = 0;
    let mut round_up = false;
    for (index, &digit) in (0_i64..).zip(&digits) {
        if index < point {
            cents = cents.checked_mul(10)?.checked_add(i64::from(digit))?;
        } else {
            round_up = index == point && digit >= 5;
            break;
        }
    }
    // Zeros implied by a positive exponent past the last digit.
    let written = i64::try_from(digits.len()).ok()?;
    if point > written && cents != 0 {
        for _ in written..point {
            cents = cents.checked_mul(10)?;
        }
    }
    if round_up {
        cents = cents.checked_add(1)?;
    }
    Some(if negative { -cents } else { cents })
}

/// The field `name` of `record` as the JSON type `pick` selects, or an
/// `invalid-input` message.
fn field<'a, T>(
    record: &'a Map<String, Value>,
    name: &str,
    expected: &str,
    pick: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<T, String> {
    let value = record
        .get(name)
        .ok_or_else(|| format!("invalid record: `{name}` is missing"))?;
    pick(value).ok_or_else(|| format!("invalid record: `{name}` must be {expected}"))
}

/// The normalised record, or the `invalid-input` message.
fn transform(record: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(mut record) = record else {
        return Err("invalid record: expected a JSON object".into());
    };
    let email = field(&record, "email", "a string", Value::as_str)?.to_lowercase();
    let name = title_case(field(&record, "name", "a string", Value::as_str)?);
    let amount = field(&record, "amount", "a number", |value| match value {
        Value::Number(number) => Some(number),
        _ => None,
    })?;
    let cents = to_cents(amount)
        .ok_or_else(|| format!("invalid record: `amount` {amount} is out of range"))?;
    record.insert("email".into(), Value::String(email));
    record.insert("name".into(), Value::String(name));
    record.remove("amount");
    record.insert("amount_cents".into(), Value::from(cents));
    Ok(record)
}

struct IngestTransform;

impl Plugin for IngestTransform {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("transforming a record (operation `{}`)", request.operation);
        let record = transform(request.json::<Value>()?).map_err(PluginError::InvalidInput)?;
        log::info!(
            "transformed record {}",
            record.get("id").unwrap_or(&Value::Null)
        );
        Response::json(&record)
    }
}

export_plugin!(IngestTransform);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cents(json: &str) -> Option<i64> {
        match serde_json::from_str::<Value>(json).unwrap() {
            Value::Number(number) => to_cents(&number),
            other => panic!("not a number: {other}"),
        }
    }

    #[test]
    fn cents_round_half_away_from_zero_on_decimal_digits() {
        for (amount, expected) in [
            ("0", 0),
            ("12", 1200),
            ("1234.5", 123450),
            ("0.005", 1),
            ("0.004", 0),
            ("0.0049999", 0),
            ("1.005", 101),
            ("1.015", 102),
            ("2.675", 268),
            ("0.125", 13),
            ("19.99", 1999),
            ("-1.005", -101),
            ("-0.5", -50),
            ("-0.004", 0),
            ("1e-7", 0),
            ("5e-3", 1),
            ("1.5e3", 150000),
            ("1e5", 10000000),
            ("12.0", 1200),
            ("-3", -300),
            ("92233720368547757", 9223372036854775700),
        ] {
            assert_eq!(cents(amount), Some(expected), "{amount}");
        }
        assert_eq!(cents("18446744073709551615"), None);
        assert_eq!(cents("1e300"), None);
        assert_eq!(cents("92233720368547758"), Some(9223372036854775800));
        assert_eq!(cents("92233720368547759"), None);
    }

    #[test]
    fn names_emails_and_amounts_are_normalised() {
        let record = json!({"id": "7", "name": "ada  LOVELACE", "email": "Ada@Example.COM",
                            "amount": 1234.5, "validated": true});
        assert_eq!(
            Value::Object(transform(record).unwrap()),
            json!({"id": "7", "name": "Ada Lovelace", "email": "ada@example.com",
                   "amount_cents": 123450, "validated": true})
        );
        assert_eq!(title_case("  élodie  o'brien "), "Élodie O'brien");
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(
            transform(json!([1, 2, 3]))
                .unwrap_err()
                .contains("JSON object")
        );
        assert_eq!(
            transform(json!({"name": "a", "amount": 1})).unwrap_err(),
            "invalid record: `email` is missing"
        );
        assert_eq!(
            transform(json!({"name": "a", "email": "a@b", "amount": "1"})).unwrap_err(),
            "invalid record: `amount` must be a number"
        );
    }
}
