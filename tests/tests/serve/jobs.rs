//! Background jobs over HTTP: submitted with a key, read back and
//! cancelled by that key (or an admin) only; everyone else sees nothing.

use std::time::{Duration, Instant};

use capsule_tests::plugins::HELLO;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{Server, api_keys, error_of, plugin_file, with_key, write_policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_submitted_read_and_cancelled_by_their_own_key() {
    let dir = capsule_tests::temp_dir("serve-jobs");
    let new_key = || capsule_host::access::generate_key().unwrap();
    let (shop, other, ops) = (new_key(), new_key(), new_key());
    let keys = api_keys(&[
        ("shop", "call", "plugins = [\"hello\"]", &shop),
        ("other", "call", "plugins = [\"hello\"]", &other),
        ("ops", "admin", "", &ops),
    ]);
    let policy = format!(
        "data_dir = \"{}\"\n\n{keys}\n[plugins.hello]\npath = \"{}\"\n",
        dir.join("data").display(),
        plugin_file(HELLO)
    );
    let server = Server::from_policy_file(&write_policy(&dir, &policy)).await;

    let submitted = with_key(
        &server,
        Method::POST,
        "/v1/plugins/hello/jobs?op=greet",
        &shop,
        r#"{"name":"Ada"}"#,
    )
    .await;
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);
    let location = submitted.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = submitted.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["state"], "queued");

    // `capsule serve` runs it; the submitting key reads the result.
    let until = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let job: Value = with_key(&server, Method::GET, &location, &shop, "")
            .await
            .json()
            .await
            .unwrap();
        if job["state"] != "queued" && job["state"] != "running" {
            break job;
        }
        assert!(Instant::now() < until, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["payload"]["greeting"], "Hello, Ada!");

    // Another key learns nothing, not even that the job exists; an admin
    // reads it; no key at all is 401.
    for method in [Method::GET, Method::DELETE] {
        let (status, error) =
            error_of(with_key(&server, method, &location, &other, "").await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(error["message"].as_str().unwrap().contains("no job"));
    }
    let seen = with_key(&server, Method::GET, &location, &ops, "").await;
    assert_eq!(seen.status(), StatusCode::OK);
    assert_eq!(
        server.get(&location).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A job for an hour from now, cancelled by its key.
    let later: Value = with_key(
        &server,
        Method::POST,
        "/v1/plugins/hello/jobs?op=greet&delay=1h",
        &shop,
        r#"{"name":"Bo"}"#,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(later["state"], "queued");
    let path = format!("/v1/jobs/{}", later["id"].as_str().unwrap());
    let cancelled: Value = with_key(&server, Method::DELETE, &path, &shop, "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["attempts"], 0);

    // A malformed schedule is refused before anything is stored.
    for bad in [
        "delay=soon",
        "delay=1s&run_at=2030-01-01T00:00:00Z",
        "run_at=tomorrow",
    ] {
        let refused = with_key(
            &server,
            Method::POST,
            &format!("/v1/plugins/hello/jobs?op=greet&{bad}"),
            &shop,
            "{}",
        )
        .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    server.stop().await.unwrap();
}
