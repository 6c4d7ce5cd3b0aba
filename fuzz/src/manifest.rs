//! `manifest`: the static manifest a plugin carries in its
//! `capsule-manifest` section, read before any of its code runs.

use capsule_host::artifact::manifest::{self, Manifest};

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "manifest",
    about: "parse any bytes as a manifest: an accepted one re-serializes to a document that \
            parses to the same manifest; signing embeds it exactly when its input and config \
            schemas compile, and what it embeds reads back the same",
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
    let component = crate::fixtures::component(&[]);
    // Signing embeds only manifests whose schemas compile, as loads compile
    // them: what embed accepts, no load refuses for its schemas.
    let Ok(embedded) = manifest::embed(&component, data) else {
        assert!(
            parsed.compile_schemas().is_err(),
            "embed refuses a manifest whose schemas compile"
        );
        return;
    };
    parsed
        .compile_schemas()
        .expect("what signing embeds has schemas that compile");
    let read = manifest::read(&embedded).expect("an embedded manifest reads back");
    assert_eq!(read.as_ref(), Some(&parsed));
}
