//! `manifest`: the static manifest a plugin carries in its
//! `capsule-manifest` section, read before any of its code runs.

use capsule_host::artifact::manifest::{self, Manifest};

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "manifest",
    about: "parse any bytes as a manifest: an accepted one re-serializes to a document that \
            parses to the same manifest, embeds into a component and reads back, and every \
            schema it declares compiles (so validation at load cannot refuse it)",
    check,
    seeds: || {
        vec![
            br#"{"format":1,"name":"hello","version":"0.1.0","description":"Greets","capabilities":["greeting"],"operations":[{"name":"greet","input":{"type":"object","properties":{"name":{"type":"string","maxLength":64,"pattern":"^[A-Za-z]+$"}},"required":["name"]}}],"requires":[{"capability":"store","version":"^1"}],"config":{"type":"object","properties":{"greeting":{"type":"string","default":"Hi"}}},"metrics":[]}"#.to_vec(),
            br##"{"format":1,"name":"a","version":"1.2.3-rc.1+b","operations":[{"name":"x","input":{"$defs":{"n":{"$ref":"#/$defs/m"},"m":{"type":"integer"}},"$ref":"#/$defs/n"}}]}"##.to_vec(),
            br#"{"format":1,"name":"b","version":"0.0.1","config":true,"requires":[{"plugin":"c","version":">=1.2, <2"}]}"#.to_vec(),
        ]
    },
};

fn check(data: &[u8]) {
    let Ok(parsed) = Manifest::parse(data) else {
        return;
    };
    let bytes = parsed.to_bytes();
    let again = Manifest::parse(&bytes)
        .unwrap_or_else(|err| panic!("a manifest's own serialization is refused: {err}"));
    assert_eq!(
        again, parsed,
        "a manifest does not survive its own serialization"
    );
    assert_eq!(again.to_bytes(), bytes, "serialization is not stable");
    for operation in parsed.operations.iter().flatten() {
        for schema in [&operation.input, &operation.output].into_iter().flatten() {
            if let Err(err) = manifest::compile_schema(schema) {
                panic!(
                    "operation `{}` has a schema parse accepts and load refuses: {err}",
                    operation.name
                );
            }
        }
    }
    if let Some(schema) = &parsed.config
        && let Err(err) = manifest::compile_schema(schema)
    {
        panic!("a config schema parse accepts and load refuses: {err}");
    }
    let component = crate::fixtures::component(&[]);
    let embedded = manifest::embed(&component, data).expect("an accepted manifest embeds");
    let read = manifest::read(&embedded).expect("an embedded manifest reads back");
    assert_eq!(read.as_ref(), Some(&parsed));
}
