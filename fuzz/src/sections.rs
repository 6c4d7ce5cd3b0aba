//! `sections`: the section walker every component passes before anything
//! is compiled — the framing signatures are defined over
//! ([`sections::split`]), the top-level summary the loader reads
//! ([`inspect::inspect`]) and the manifest section ([`manifest::read`]).

use capsule_host::artifact::sections;
use capsule_host::artifact::{inspect, manifest};

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "sections",
    about: "split, inspect and read the manifest of any bytes: sections tile the file \
            exactly, custom sections re-encode to the same name and data, and every \
            component wasmparser validates frames for the signature code too, but for a last \
            nested section cut short at the end of the file",
    check,
    seeds: || {
        let mut seeds = crate::fixtures::samples();
        seeds.push(b"\0asm\x0d\0\x01\0\x00\x80\x80\x80\x80\x10".to_vec());
        seeds
    },
};

fn check(data: &[u8]) {
    let split = sections::split(data);
    if let Ok(all) = &split {
        let mut at = 8;
        for section in all {
            assert_eq!(section.range.start, at, "sections leave a gap or overlap");
            assert!(section.range.end > section.range.start);
            let whole = &data[section.range.clone()];
            assert_eq!(whole[0], section.id);
            assert!(whole.ends_with(section.payload));
            at = section.range.end;
            if let Some((name, custom)) = section.custom() {
                // Re-encoded, it reads back the same (not byte for byte: a
                // LEB128 length may be padded, as wasm allows).
                let again = sections::encode_custom(name, custom);
                let file = [&data[..8], &again].concat();
                let reread = sections::split(&file).expect("it frames");
                assert_eq!(reread.len(), 1);
                assert_eq!(reread[0].custom(), Some((name, custom)));
            }
        }
        assert_eq!(at, data.len(), "sections do not reach the end of the file");
    }
    // A component wasmparser validates frames for the signature code too,
    // but for one case: wasmparser (0.254) reads and validates a component
    // whose last section, a nested module or component, declares more bytes
    // than the file holds. Capsule's framing refuses it, and so does the
    // loader (signed or not: it frames the file to read the manifest), so
    // such a file is never compiled.
    let summary = inspect::inspect(data);
    if summary.is_ok()
        && wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(data)
            .is_ok()
        && let Err(err) = &split
    {
        assert!(
            err.contains("runs past the end of the file"),
            "a valid component the signature framing cannot read: {err}"
        );
    }
    let _ = manifest::read(data);
}
