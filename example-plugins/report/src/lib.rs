//! The report plugin: a large CSV report streamed to its caller in chunks
//! as it is produced, with `response::write`.
//!
//! - `sales` with `{"rows": 100000, "chunk_rows": 500}` writes the header
//!   `day,region,product,units,revenue_cents` and then `rows` lines of
//!   (synthetic, deterministic) sales, `chunk_rows` lines per chunk
//!   (default 500, at most 10,000; `rows` at most 5,000,000), and answers an
//!   empty payload with metadata `rows` (the data lines written) and
//!   `bytes`. With `"fail_after": N` the data source "fails" after N rows:
//!   the call ends with `failed` after the chunks already sent, which a
//!   streaming caller sees as the stream ending in an error.
//!
//! With a kv grant, every report counts itself under `reports` before it
//! starts, which is kept only if the report succeeds (`count` answers
//! `{"reports": N}`): a report that fails after its first chunks leaves the
//! count as it was, like any failed call.
//!
//! A caller that streams (`capsule serve`, `capsule run`,
//! `Host::call_stream`) gets the first rows while the rest are still being
//! produced; any other caller gets the whole CSV at once. The whole report
//! counts against the plugin's `max_response`, and a caller that reads
//! slowly holds the plugin back rather than letting the host buffer it.

use std::fmt::Write as _;

use capsule_guest::{
    Plugin, PluginError, Request, Response, ServiceError, export_plugin, kv, response,
};
use serde::Deserialize;

/// The CSV's header line.
pub const HEADER: &str = "day,region,product,units,revenue_cents\n";
/// The most rows one report may have.
const MAX_ROWS: u64 = 5_000_000;
/// The most rows one chunk may hold.
const MAX_CHUNK_ROWS: u64 = 10_000;

const REGIONS: &[&str] = &["north", "south", "east", "west"];
const PRODUCTS: &[(&str, u64)] = &[
    ("teapot", 2_500),
    ("cup", 800),
    ("saucer", 450),
    ("kettle", 4_200),
    ("tray", 1_900),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SalesIn {
    rows: u64,
    #[serde(default)]
    chunk_rows: Option<u64>,
    #[serde(default)]
    fail_after: Option<u64>,
}

/// Row `index` of the report, with its newline.
fn row(index: u64, line: &mut String) {
    // A small multiplicative hash: the same report every time, without a
    // random source.
    let mixed = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let region = REGIONS[(mixed % REGIONS.len() as u64) as usize];
    let (product, unit_cents) = PRODUCTS[((mixed >> 8) % PRODUCTS.len() as u64) as usize];
    let units = 1 + (mixed >> 16) % 40;
    let day = 1 + index / 2_000 % 365;
    let _ = writeln!(
        line,
        "{day},{region},{product},{units},{}",
        units * unit_cents
    );
}

fn sales(request: Request) -> Result<Response, PluginError> {
    let input: SalesIn = request.json()?;
    if input.rows > MAX_ROWS {
        return Err(PluginError::InvalidInput(format!(
            "`rows` is at most {MAX_ROWS}"
        )));
    }
    let chunk_rows = input.chunk_rows.unwrap_or(500);
    if !(1..=MAX_CHUNK_ROWS).contains(&chunk_rows) {
        return Err(PluginError::InvalidInput(format!(
            "`chunk_rows` is 1 to {MAX_CHUNK_ROWS}"
        )));
    }
    match kv::increment("reports", 1) {
        Ok(_) | Err(ServiceError::Denied(_)) => {}
        Err(err) => return Err(err.into()),
    }
    let mut chunk = String::with_capacity(64 * chunk_rows as usize);
    chunk.push_str(HEADER);
    let mut bytes = 0usize;
    for index in 0..input.rows {
        if input.fail_after == Some(index) {
            return Err(PluginError::Failed(format!(
                "the sales source failed after {index} rows"
            )));
        }
        row(index, &mut chunk);
        if (index + 1) % chunk_rows == 0 {
            bytes += chunk.len();
            response::write(chunk.as_bytes())?;
            chunk.clear();
        }
    }
    bytes += chunk.len();
    response::write(chunk.as_bytes())?;
    Ok(Response::bytes("")
        .with_metadata("rows", input.rows.to_string())
        .with_metadata("bytes", bytes.to_string()))
}

fn count(_request: Request) -> Result<Response, PluginError> {
    let reports = kv::get("reports")?
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, i64::from_le_bytes);
    Ok(Response::bytes(format!("{{\"reports\":{reports}}}")))
}

struct Report;

impl Plugin for Report {
    fn handle(request: Request) -> Result<Response, PluginError> {
        request
            .dispatch()
            .raw("sales", sales)
            .about("Streams a CSV of sales, `rows` lines in chunks of `chunk_rows`")
            .raw("count", count)
            .about("How many reports succeeded (with a kv grant)")
            .finish()
    }
}

export_plugin!(Report);

#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    #[test]
    fn the_report_comes_in_chunks_of_rows_after_its_header() {
        let host = MockHost::new();
        let whole = host
            .call::<Report>(Request::new("sales", r#"{"rows": 5, "chunk_rows": 2}"#))
            .unwrap();
        let chunks = host.chunks();
        assert_eq!(chunks.len(), 3, "rows 0-1, 2-3, then 4");
        let text = String::from_utf8(whole.payload).unwrap();
        assert!(text.starts_with(HEADER));
        assert_eq!(text.lines().count(), 6);
        assert_eq!(chunks.concat(), text.as_bytes());
        assert_eq!(whole.metadata[0], ("rows".into(), "5".into()));
        assert_eq!(whole.metadata[1], ("bytes".into(), text.len().to_string()));
        // The same report every time.
        let again = host
            .call::<Report>(Request::new("sales", r#"{"rows": 5, "chunk_rows": 5}"#))
            .unwrap();
        assert_eq!(again.payload, text.as_bytes());
    }

    #[test]
    fn a_failing_source_fails_the_call_after_its_chunks() {
        let host = MockHost::new();
        let failed = host.call::<Report>(Request::new(
            "sales",
            r#"{"rows": 10, "chunk_rows": 2, "fail_after": 5}"#,
        ));
        assert!(matches!(failed, Err(PluginError::Failed(_))), "{failed:?}");
        assert_eq!(host.chunks().len(), 2, "rows 0-1 and 2-3 were sent");
    }

    #[test]
    fn only_reports_that_succeed_are_counted() {
        let host = MockHost::new().kv();
        host.call::<Report>(Request::new("sales", r#"{"rows": 3}"#))
            .unwrap();
        let _ = host.call::<Report>(Request::new("sales", r#"{"rows": 3, "fail_after": 1}"#));
        let count = host.call::<Report>(Request::new("count", "")).unwrap();
        assert_eq!(count.payload, br#"{"reports":1}"#);
    }

    #[test]
    fn bounds_are_checked() {
        let host = MockHost::new();
        for input in [
            r#"{"rows": 5000001}"#,
            r#"{"rows": 1, "chunk_rows": 0}"#,
            r#"{"rows": 1, "extra": true}"#,
        ] {
            let refused = host.call::<Report>(Request::new("sales", input));
            assert!(
                matches!(refused, Err(PluginError::InvalidInput(_))),
                "{input}"
            );
        }
    }
}
