//! `markup` says everything about itself in markup. The host keeps what it
//! says as text — verbatim in its details, bounded and escaped in the
//! call history the console reads — and the console's browser test
//! (`serve::console`) checks that a page shows it as text.

use capsule_host::{ErrorKind, PluginSpec, Request};
use capsule_tests::plugin_path;
use capsule_tests::plugins::MARKUP;

#[tokio::test]
async fn what_a_plugin_says_is_kept_as_text_and_its_failures_land_in_its_history() {
    let host = crate::host();
    let details = host
        .load(PluginSpec::from_path(plugin_path(MARKUP)))
        .await
        .unwrap();
    assert_eq!(details.info.description, "<script>alert(1)</script>");
    for _ in 0..3 {
        let err = host
            .call(MARKUP, Request::new("run", Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PluginError);
        assert!(err.to_string().contains("<img src=x onerror="), "{err}");
    }
    let history = host.history(MARKUP).unwrap();
    assert_eq!(history.minute_calls, 3);
    assert_eq!(history.minute_errors, 3);
    assert_eq!(history.hour_errors, vec![("plugin_error", 3)]);
    let last = &history.last_errors[0];
    assert_eq!(last.kind, "plugin_error");
    assert!(
        last.message.contains("<img src=x onerror="),
        "{}",
        last.message
    );
    assert!(host.history("not-loaded").is_none());
}
