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

/// A megapixel image is work for the background: submitted as a job, it
/// is stored at once and its thumbnail read back by the job's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_image_is_scaled_as_a_background_job() {
    use std::time::{Duration, Instant};

    use capsule_host::{JobState, JobSubmission, Limits};

    let dir = capsule_tests::temp_dir("thumbnail-job");
    let host = capsule_tests::host_builder()
        .data_dir(&dir)
        .build()
        .unwrap();
    let limits = Limits {
        max_request_bytes: 8 << 20,
        ..Limits::default()
    };
    host.load(PluginSpec::from_path(plugin_path(THUMBNAIL)).limits(limits))
        .await
        .unwrap();
    let side = 1024usize;
    let pixels: Vec<u8> = (0..side * side).map(|i| (i % 251) as u8).collect();
    let input = json!({"image": {"width": side, "height": side, "pixels": pixels}, "max": 64});
    let submitted = host
        .submit_job(
            THUMBNAIL,
            JobSubmission {
                operation: "make".into(),
                payload: input.to_string().into_bytes(),
                ..JobSubmission::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(submitted.state, JobState::Queued);
    let _runner = host.start_jobs();
    let until = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let job = host.job(&submitted.id).await.unwrap();
        if job.state.is_finished() {
            break job;
        }
        assert!(Instant::now() < until, "{:?}", job.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    let thumbnail: serde_json::Value =
        serde_json::from_slice(&done.result.unwrap().payload).unwrap();
    assert_eq!(
        (thumbnail["width"].as_u64(), thumbnail["height"].as_u64()),
        (Some(64), Some(64))
    );
    assert_eq!(thumbnail["pixels"].as_array().unwrap().len(), 64 * 64);
}
