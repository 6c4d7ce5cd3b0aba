//! `hello-v0-1`: a plugin built from the frozen 0.1 contract loads and runs
//! unchanged on a host that serves 0.2, beside 0.2 plugins, with the same
//! host services and grants.

use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, HELLO_V0_1};
use serde_json::json;

use crate::host;

#[tokio::test]
async fn a_0_1_plugin_runs_beside_a_0_2_plugin() {
    let host = host();
    let old = host
        .load(
            PluginSpec::from_path(plugin_path(HELLO_V0_1))
                .grants(Grants {
                    kv: Some(KvGrant::new("v0-1")),
                    ..Grants::default()
                })
                .config("greeting", "Hej"),
        )
        .await
        .unwrap();
    let new = host
        .load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    assert_eq!(old.contract_version.as_deref(), Some("0.1.0"));
    assert_eq!(new.contract_version.as_deref(), Some("0.2.0"));
    assert_eq!(old.info.capabilities, ["greeting-v0-1"]);

    let greeted = host
        .call(HELLO_V0_1, Request::new("greet", "Ada"))
        .await
        .unwrap();
    assert_eq!(greeted.response.payload, b"Hej, Ada!");
    assert_eq!(greeted.logs[0].message, "greeting Ada");
    for expected in ["1", "2"] {
        let counted = host
            .call(HELLO_V0_1, Request::new("count", ""))
            .await
            .unwrap();
        assert_eq!(counted.response.payload, expected.as_bytes());
    }
    let unsupported = host
        .call(HELLO_V0_1, Request::new("nope", ""))
        .await
        .unwrap_err();
    assert_eq!(unsupported.kind(), capsule_host::ErrorKind::PluginError);

    let greeted = host
        .call(
            HELLO,
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(greeted.response.payload, br#"{"greeting":"Hello, Ada!"}"#);
}

#[tokio::test]
async fn without_its_grant_a_0_1_plugin_is_denied_as_before() {
    let host = host();
    host.load(PluginSpec::from_path(plugin_path(HELLO_V0_1)))
        .await
        .unwrap();
    let denied = host
        .call(HELLO_V0_1, Request::new("count", ""))
        .await
        .unwrap_err();
    assert!(
        denied
            .to_string()
            .contains("no key-value namespace was granted"),
        "{denied}"
    );
}
