//! `thumbnail`: a service plugin providing the `thumbnail` capability.

use capsule_host::PluginSpec;
use capsule_tests::plugin_path;
use capsule_tests::plugins::THUMBNAIL;
use serde_json::json;

use crate::grants::{call_json, plugin_error};
use crate::host;

#[tokio::test]
async fn scales_an_image_to_fit_and_says_it_provides_thumbnails() {
    let host = host();
    let details = host
        .load(PluginSpec::from_path(plugin_path(THUMBNAIL)))
        .await
        .unwrap();
    assert_eq!(details.info.capabilities, ["thumbnail"]);
    assert_eq!(host.find_by_capability("thumbnail").len(), 1);
    let image = json!({"width": 4, "height": 2, "pixels": [0, 1, 2, 3, 10, 11, 12, 13]});
    let small = call_json(&host, THUMBNAIL, "make", json!({"image": image, "max": 2})).await;
    assert_eq!(small, json!({"width": 2, "height": 1, "pixels": [0, 2]}));
    let err = plugin_error(
        &host,
        THUMBNAIL,
        "make",
        json!({"image": {"width": 2, "height": 2, "pixels": [1]}, "max": 1}),
    )
    .await;
    assert!(
        matches!(err, capsule_host::PluginError::InvalidInput(_)),
        "{err:?}"
    );
}
