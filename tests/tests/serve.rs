//! `capsule serve`'s HTTP API, exercised with a real HTTP client against a
//! server on an ephemeral loopback port: every route, every error status,
//! admin auth, body limits, concurrent calls, reload through the API and a
//! graceful shutdown with a call in flight.

use std::time::Duration;

use capsule_host::serve::{ServeOptions, serve_on};
use capsule_host::services::config::Secret;
use capsule_host::services::events::TopicPattern;
use capsule_host::services::kv::KvGrant;
use capsule_host::services::metrics::MetricsGrant;
use capsule_host::{Grants, Host, Limits, PluginSpec, RequestId};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{
    AMPLIFIER, HELLO, HELLO_V0_1, HUGE_OUTPUT, INGEST_ENRICH, INGEST_TRANSFORM, INGEST_VALIDATE,
    KV_COUNTER, ORDER_AUDIT, ORDER_INTAKE, ROUTER, SLOW_HOST_CALLS, SPIN_LOOP, THUMBNAIL,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[path = "serve/console.rs"]
mod console;
#[path = "serve/jobs.rs"]
mod jobs;
#[path = "serve/stream.rs"]
mod stream;

const TOKEN: &str = "test-admin-token";

struct Server {
    base: String,
    client: reqwest::Client,
    host: Host,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Server {
        Self::start_with(ServeOptions::default()).await
    }

    /// A server with `options` (the admin token, body limit and shutdown
    /// deadline are the tests' own).
    async fn start_with(options: ServeOptions) -> Server {
        let host = capsule_tests::host_builder()
            .middleware(RequestId)
            .build()
            .unwrap();
        // hello keeps its own metrics.
        let metrics = Grants {
            metrics: Some(MetricsGrant::default()),
            ..Grants::default()
        };
        host.load(
            PluginSpec::from_path(plugin_path(HELLO))
                .grants(metrics)
                .config("api_token", "Top-secret-value"),
        )
        .await
        .unwrap();
        // Its greeting word is a secret: it reaches the plugin, and no
        // listing shows it.
        let mut secret = Grants::default();
        secret
            .config
            .secrets
            .insert("greeting".into(), Secret::new("Psst-zq7"));
        host.load(
            PluginSpec::from_path(plugin_path(HELLO))
                .with_name("hello-secret")
                .grants(secret),
        )
        .await
        .unwrap();
        // The same plugin under its declared contract: requests are checked
        // against its input schemas before it runs.
        host.load(
            PluginSpec::from_path(plugin_path(HELLO))
                .with_name("hello-strict")
                .validate_input(true),
        )
        .await
        .unwrap();
        let limited = [
            (
                HUGE_OUTPUT,
                Limits {
                    max_response_bytes: 32 << 20,
                    ..Limits::default()
                },
            ),
            (
                AMPLIFIER,
                Limits {
                    max_metadata_entries: 100_000,
                    max_response_bytes: 8 << 20,
                    ..Limits::default()
                },
            ),
            (
                SPIN_LOOP,
                Limits {
                    fuel: None,
                    timeout: Duration::from_millis(300),
                    max_instances: 1,
                    max_queued: 0,
                    circuit_failures: 0,
                    ..Limits::default()
                },
            ),
            (
                SLOW_HOST_CALLS,
                Limits {
                    timeout: Duration::from_millis(600),
                    ..Limits::default()
                },
            ),
        ];
        for (plugin, limits) in limited {
            host.load(PluginSpec::from_path(plugin_path(plugin)).limits(limits))
                .await
                .unwrap();
        }
        for (name, plugin) in [
            ("validate", INGEST_VALIDATE),
            ("transform", INGEST_TRANSFORM),
            ("enrich", INGEST_ENRICH),
        ] {
            host.load(PluginSpec::from_path(plugin_path(plugin)).with_name(name))
                .await
                .unwrap();
        }
        host.define_pipeline(
            "ingest",
            vec!["validate".into(), "transform".into(), "enrich".into()],
        );
        let mut audit = Grants {
            kv: Some(KvGrant::new("audit")),
            ..Grants::default()
        };
        audit.events.subscribe = vec![TopicPattern::parse("orders.created").unwrap()];
        host.load(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit))
            .await
            .unwrap();
        Self::serve(host, options).await
    }

    /// Serves `host` (with the tests' admin token, body limit and shutdown
    /// deadline).
    async fn serve(host: Host, options: ServeOptions) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let options = ServeOptions {
            admin_token: Some(TOKEN.into()),
            max_body_bytes: 64 << 10,
            shutdown_deadline: Duration::from_secs(3),
            ..options
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(serve_on(listener, host.clone(), options, async {
            let _ = stopped.await;
        }));
        Server {
            base,
            client: reqwest::Client::new(),
            host,
            stop: Some(stop),
            done,
        }
    }

    /// A host built from the policy at `path`, with every plugin loaded,
    /// served with that file to apply.
    async fn from_policy_file(path: &std::path::Path) -> Server {
        let policy = capsule_host::Policy::load(path).unwrap();
        let host = capsule_host::HostBuilder::from_policy(&policy)
            .build()
            .unwrap();
        assert!(host.load_policy(&policy).await.is_empty());
        Self::serve(
            host,
            ServeOptions {
                policy_file: Some(path.to_owned()),
                ..ServeOptions::default()
            },
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn admin(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap()
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.expect("errors are JSON");
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_return_the_plugin_payload_with_metadata_and_cost() {
    let server = Server::start().await;
    let response = server
        .client
        .post(server.url("/v1/plugins/hello/call?op=greet"))
        .header("x-capsule-meta-request-id", "req-42")
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-capsule-meta-request-id"], "req-42");
    assert!(response.headers().contains_key("x-capsule-duration-us"));
    // What it cost, against what it was allowed.
    let number =
        |name: &str| -> u64 { response.headers()[name].to_str().unwrap().parse().unwrap() };
    let (fuel, fuel_limit) = (number("x-capsule-fuel"), number("x-capsule-fuel-limit"));
    assert!(0 < fuel && fuel < fuel_limit, "{fuel} of {fuel_limit}");
    let (memory, memory_limit) = (
        number("x-capsule-memory-bytes"),
        number("x-capsule-memory-limit"),
    );
    assert_eq!(memory_limit, server.host.default_limits().memory_bytes);
    assert!(
        0 < memory && memory <= memory_limit,
        "{memory} of {memory_limit}"
    );
    assert_eq!(memory % 65_536, 0, "whole wasm pages");
    // Its calls into host services, each with its time: `greet` logs a
    // line, reads its config and counts the greeting.
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let entries: Vec<(&str, &str)> = timing
        .split(", ")
        .map(|entry| {
            let (service, rest) = entry.split_once(";dur=").unwrap();
            let (millis, desc) = rest.split_once(";desc=").unwrap();
            assert!(millis.parse::<f64>().unwrap() >= 0.0, "{timing}");
            (service, desc)
        })
        .collect();
    for service in ["log", "config", "metrics"] {
        assert!(
            entries.contains(&(service, "\"1 call\"")),
            "{service} once in {timing}"
        );
    }
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"greeting":"Hello, Ada!"}"#
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"capsule_host_calls_total{plugin="hello",service="log"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"capsule_host_call_duration_seconds_count{plugin="hello",service="config"} 1"#
    ));

    let pipeline = server
        .post(
            "/v1/pipelines/ingest/call?op=process",
            json!({"id": "1", "name": "ada", "email": "A@B.org", "amount": 5}).to_string(),
        )
        .await;
    assert_eq!(pipeline.status(), StatusCode::OK);
    let record: Value = pipeline.json().await.unwrap();
    assert_eq!(record["tier"], "bronze");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_a_fitting_status_and_a_json_body() {
    let server = Server::start().await;
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "/v1/plugins/hello/call?op=greet",
            "not json".into(),
            StatusCode::BAD_REQUEST,
            "plugin_error",
        ),
        (
            "/v1/plugins/hello/call?op=nope",
            "{}".into(),
            StatusCode::NOT_FOUND,
            "plugin_error",
        ),
        (
            "/v1/plugins/hello-strict/call?op=greet",
            r#"{"name":""}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "/v1/plugins/ghost/call?op=greet",
            "{}".into(),
            StatusCode::NOT_FOUND,
            "unknown_plugin",
        ),
        (
            "/v1/plugins/hello/call",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "config",
        ),
        (
            "/v1/plugins/spin-loop/call?op=run",
            "x".into(),
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
        ),
        (
            "/v1/pipelines/ingest/call?op=process",
            json!({"id": "1"}).to_string(),
            StatusCode::BAD_REQUEST,
            "plugin_error",
        ),
        (
            "/v1/pipelines/nothing/call?op=x",
            "{}".into(),
            StatusCode::NOT_FOUND,
            "unknown_plugin",
        ),
    ];
    for (path, body, status, kind) in cases {
        let (got, error) = error_of(server.post(path, body).await).await;
        assert_eq!(got, status, "{path}: {error}");
        assert_eq!(error["kind"], kind, "{path}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, error) = error_of(
        server
            .post(
                "/v1/pipelines/ingest/call?op=process",
                json!({"id": "1"}).to_string(),
            )
            .await,
    )
    .await;
    assert_eq!(error["plugin"], "validate", "the failing stage is named");

    // Busy: spin-loop has one instance and no queue.
    let first = server.post("/v1/plugins/spin-loop/call?op=run", "x");
    let second = async {
        running(&server.host, "spin-loop").await;
        server.post("/v1/plugins/spin-loop/call?op=run", "x").await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
    let (status, error) = error_of(second).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("busy"))
    );

    // Paused.
    server.admin("/v1/plugins/hello/pause", "").await;
    let (status, error) = error_of(
        server
            .post("/v1/plugins/hello/call?op=greet", r#"{"name":"x"}"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("paused"))
    );
    server.admin("/v1/plugins/hello/resume", "").await;
    assert_eq!(
        server
            .post("/v1/plugins/hello/call?op=greet", r#"{"name":"x"}"#)
            .await
            .status(),
        StatusCode::OK
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded() {
    let server = Server::start().await;
    let response = server
        .post("/v1/plugins/hello/call?op=greet", vec![b' '; 100 << 10])
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Under the server's bound but over the plugin's request limit.
    server.host.unload(HELLO).await;
    server
        .host
        .load(PluginSpec::from_path(plugin_path(HELLO)).limits(Limits {
            max_request_bytes: 1024,
            ..Limits::default()
        }))
        .await
        .unwrap();
    let (status, error) = error_of(
        server
            .post("/v1/plugins/hello/call?op=greet", vec![b' '; 4096])
            .await,
    )
    .await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("input_too_large"))
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_bearer_token() {
    let server = Server::start().await;
    for path in [
        "/v1/plugins/hello/reload",
        "/v1/plugins/hello/pause",
        "/v1/plugins/hello/resume",
        "/v1/events/orders.created",
    ] {
        let anonymous = server.post(path, "").await;
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
        let wrong = server
            .client
            .post(server.url(path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let dead = server.get("/v1/dead-letters").await;
    assert_eq!(dead.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.host.status(HELLO).unwrap().state,
        capsule_host::PluginState::Active
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_metrics_health_events_and_reload() {
    let server = Server::start().await;
    assert_eq!(server.get("/healthz").await.text().await.unwrap(), "ok\n");
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let hello = ready["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hello")
        .unwrap();
    assert_eq!(hello["state"], "ok");
    assert_eq!(hello["check"]["status"], "healthy");
    server
        .post("/v1/plugins/hello/call?op=greet", r#"{"name":"Ada"}"#)
        .await;

    let listing: Value = server.get("/v1/plugins").await.json().await.unwrap();
    let hello = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == HELLO)
        .expect("hello is listed");
    assert_eq!(hello["info"]["version"], "0.1.0");
    assert_eq!(hello["info"]["capabilities"], json!(["greeting"]));
    // The signed manifest: operations with their schemas.
    assert_eq!(hello["manifest"]["operations"][0]["name"], "greet");
    assert_eq!(
        hello["manifest"]["operations"][0]["input"]["required"],
        json!(["name"])
    );
    assert_eq!(hello["validate_input"], false);
    assert_eq!(hello["state"], "active");
    assert_eq!(
        (&hello["calls_in_flight"], &hello["queued_events"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(hello["digest"].as_str().unwrap().len(), 64);
    assert_eq!(hello["signers"].as_array().unwrap().len(), 1);
    assert!(hello["grants"].is_object() && hello["limits"].is_object());
    assert_eq!(listing["pipelines"][0]["name"], "ingest");

    let metrics = server.get("/metrics").await;
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"capsule_calls_total{plugin="hello",outcome="ok"} 1"#),
        "{text}"
    );
    // What hello declared and counted itself.
    assert_eq!(hello["manifest"]["metrics"][0]["name"], "greetings");
    assert!(
        text.contains(r#"capsule_plugin_greetings_total{plugin="hello",word="Hello"} 1.0"#),
        "{text}"
    );
    capsule_tests::promtool::check_metrics(&text);
    // Prometheus' own Accept header gets OpenMetrics, families named as
    // that format names them.
    let openmetrics = server
        .client
        .get(server.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let openmetrics = openmetrics.text().await.unwrap();
    assert!(openmetrics.contains("# TYPE capsule_calls counter\n"));
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(text.contains("# TYPE capsule_calls_total counter\n"));

    let published = server
        .admin(
            "/v1/events/orders.created",
            json!({"order_id": "H-1", "item": "kettle", "quantity": 1}).to_string(),
        )
        .await;
    assert_eq!(published.status(), StatusCode::OK);
    assert_eq!(published.json::<Value>().await.unwrap()["delivered"], 1);
    let bad_topic = server.admin("/v1/events/not..a.topic", "x").await;
    assert_eq!(bad_topic.status(), StatusCode::BAD_REQUEST);

    let reloaded = server.admin("/v1/plugins/hello/reload", "").await;
    assert_eq!(reloaded.status(), StatusCode::OK);
    let body: Value = reloaded.json().await.unwrap();
    assert_eq!(body["generation"], 1);
    let missing = server.admin("/v1/plugins/ghost/reload", "").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let dead = server
        .client
        .get(server.url("/v1/dead-letters"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(dead.status(), StatusCode::OK);
    assert!(dead.json::<Value>().await.unwrap()["dead_letters"].is_array());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_every_request_in_order() {
    let server = Server::start().await;
    let batch = json!({ "requests": [
        { "op": "greet", "payload": { "name": "Ada" }, "metadata": [["x-note", "one"]] },
        { "op": "calls" },
        { "op": "no-such-op", "payload": {} },
        { "op": "greet", "payload_base64": "bm90IGpzb24=" },
        { "op": "calls" },
    ]});
    let response = server
        .post("/v1/plugins/hello/batch", batch.to_string())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{body}");
    assert_eq!(results[0]["ok"], true, "{body}");
    assert!(
        results[0]["payload"]["greeting"]
            .as_str()
            .unwrap()
            .contains("Ada"),
        "{body}"
    );
    assert!(results[0]["duration_us"].as_u64().is_some());
    assert!(results[0]["fuel"].as_u64().unwrap() > 0);
    // Each item is the error a single call would have been, with its
    // status; the others ran.
    assert_eq!(results[2]["ok"], false);
    assert_eq!(results[2]["status"], 404, "{body}");
    assert_eq!(results[2]["error"]["kind"], "plugin_error");
    assert_eq!(results[2]["error"]["plugin"], "hello");
    assert_eq!(results[3]["status"], 400, "{body}");
    // One instance served the batch, in order.
    let first = results[1]["payload"]["calls"].as_u64().unwrap();
    assert_eq!(results[4]["payload"]["calls"].as_u64(), Some(first + 3));

    // Malformed and oversized batches run nothing.
    let (status, error) = error_of(server.post("/v1/plugins/hello/batch", "[1,2]").await).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let many: Vec<Value> = (0..101).map(|_| json!({ "op": "calls" })).collect();
    let oversized = json!({ "requests": many }).to_string();
    let (status, error) = error_of(server.post("/v1/plugins/hello/batch", oversized).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["kind"], "input_too_large");
    assert!(
        error["message"].as_str().unwrap().contains("max_batch"),
        "{error}"
    );
    // A pure operation's repeated answer comes from the cache, said in a
    // header on a call and in the item of a batch.
    server
        .host
        .load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)))
        .await
        .unwrap();
    let price = "/v1/plugins/order-intake/call?op=price";
    let teapot = r#"{"item":"teapot","quantity":1}"#;
    let first = server.post(price, teapot).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("x-capsule-cache").is_none());
    let again = server.post(price, teapot).await;
    assert_eq!(again.headers()["x-capsule-cache"], "hit");
    assert!(again.headers().get("x-capsule-fuel").is_none());
    let cups = json!({ "requests": [
        { "op": "price", "payload": { "item": "cup", "quantity": 1 } },
        { "op": "price", "payload": { "item": "cup", "quantity": 1 } },
    ]});
    let body: Value = server
        .post("/v1/plugins/order-intake/batch", cups.to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["results"][0]["cached"], false, "{body}");
    assert_eq!(body["results"][1]["cached"], true, "{body}");
    assert_eq!(body["results"][1]["payload"]["total_cents"], 800);

    let (status, error) = error_of(
        server
            .post("/v1/plugins/nobody/batch", r#"{"requests":[]}"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_plugin"))
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_over_http_are_all_answered() {
    let server = Server::start().await;
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let client = server.client.clone();
            let url = server.url("/v1/plugins/hello/call?op=greet");
            tokio::spawn(async move {
                let body = json!({ "name": format!("n{i}") }).to_string();
                let response = client.post(url).body(body).send().await.unwrap();
                (i, response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    for call in calls {
        let (i, status, text) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, format!(r#"{{"greeting":"Hello, n{i}!"}}"#));
    }
    server.stop().await.unwrap();
}

/// Waits (up to five seconds) until a call to `plugin` is running.
async fn running(host: &Host, plugin: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while host.status(plugin).unwrap().calls_in_flight == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no call to {plugin} started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish_then_stops() {
    let server = Server::start().await;
    let in_flight = {
        let client = server.client.clone();
        let url = server.url("/v1/plugins/slow-host-calls/call?op=run");
        tokio::spawn(async move { client.post(url).body("x").send().await })
    };
    running(&server.host, "slow-host-calls").await;
    let base = server.base.clone();
    let host = server.host.clone();
    server.stop().await.expect("the server stops cleanly");
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight call got its answer");
    // slow-host-calls sleeps past its 600 ms deadline: the call ran to its
    // end (a timeout) instead of being cut off by the shutdown.
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
    assert_eq!(
        host.status(HELLO).unwrap().live_instances,
        0,
        "plugins were shut down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_does_not_pin_an_instance() {
    let server = Server::start().await;
    // A spinning plugin with a long deadline: only cancellation can free it.
    server
        .host
        .load(
            PluginSpec::from_path(plugin_path(SPIN_LOOP))
                .with_name("spin-long")
                .limits(Limits {
                    fuel: None,
                    timeout: Duration::from_secs(20),
                    max_instances: 1,
                    ..Limits::default()
                }),
        )
        .await
        .unwrap();
    // reqwest shares the host's TLS build, which needs a provider.
    capsule_host::tls::install_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let abandoned = client
        .post(server.url("/v1/plugins/spin-long/call?op=run"))
        .body("x")
        .send()
        .await;
    assert!(abandoned.is_err(), "the client gave up");
    // The dropped connection cancels the call and drops its instance long
    // before the 20 s deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while server.host.status("spin-long").unwrap().live_instances > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned call still holds its instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_metadata_becomes_headers_only_within_a_budget() {
    let server = Server::start().await;
    // 40,000 distinct names would make the `http` crate panic past 32,768,
    // and no client accepts 16 KiB of headers: both are answered as errors.
    for (op, payload) in [("metadata-names", "40000"), ("metadata-large", "")] {
        let response = server
            .post(&format!("/v1/plugins/amplifier/call?op={op}"), payload)
            .await;
        let (status, error) = error_of(response).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{op}: {error}");
        assert_eq!(error["kind"], "output_too_large", "{op}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("HTTP headers"),
            "{op}: {error}"
        );
    }
    // Within the budget, metadata goes back as headers.
    let response = server
        .post("/v1/plugins/amplifier/call?op=metadata-names", "3")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-capsule-meta-n2"], "v");
    let hello = server
        .post("/v1/plugins/hello/call?op=greet", r#"{"name":"Ada"}"#)
        .await;
    assert_eq!(hello.status(), StatusCode::OK);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_listing_shows_config_values_to_nobody() {
    let server = Server::start().await;
    let open = server.get("/v1/plugins").await.text().await.unwrap();
    assert!(!open.contains("Top-secret-value"), "{open}");
    let listing: Value = serde_json::from_str(&open).unwrap();
    let hello = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hello")
        .unwrap();
    assert_eq!(hello["grants"]["config"], json!(["api_token"]));

    let admin = server
        .client
        .get(server.url("/v1/plugins"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Config values may be credentials: even the admin sees key names only.
    assert!(!admin.contains("Top-secret-value"), "{admin}");
    assert!(
        !admin.contains("Psst-zq7") && !open.contains("Psst-zq7"),
        "{admin}"
    );
    assert!(admin.contains(r#""config":["api_token"]"#), "{admin}");
    let greeted = server
        .client
        .post(server.url("/v1/plugins/hello-secret/call?op=greet"))
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(greeted.contains("Psst-zq7, Ada!"), "{greeted}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_exhaust_the_server() {
    use tokio::io::AsyncWriteExt;
    let header_timeout = Duration::from_millis(300);
    let server = Server::start_with(ServeOptions {
        max_connections: 4,
        header_read_timeout: header_timeout,
        ..ServeOptions::default()
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Every connection the server allows, held open by clients that send
    // half a request line and then nothing.
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(b"POST /v1/plugins/hel").await.unwrap();
        silent.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        server.post("/v1/plugins/hello/call?op=greet", r#"{"name":"Ada"}"#),
    )
    .await
    .expect("the server answered");
    assert_eq!(response.status(), StatusCode::OK);
    // It waited for a place: the silent clients held every one of them
    // until the header timeout cut them off.
    assert!(
        started.elapsed() >= header_timeout / 2,
        "answered after {:?}: the connection limit did not hold",
        started.elapsed()
    );
    drop(silent);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_and_unread_responses_cannot_hold_a_connection() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start_with(ServeOptions {
        max_connections: 1,
        body_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_millis(500),
        ..ServeOptions::default()
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // A body that trickles in, a byte at a time: cut off after the body
    // timeout in total, however often a byte arrives.
    let mut trickle = tokio::net::TcpStream::connect(&address).await.unwrap();
    trickle
        .write_all(b"POST /v1/plugins/hello/call?op=greet HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut cut_off = false;
    while started.elapsed() < Duration::from_secs(5) {
        if trickle.write_all(b" ").await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read_to_string(&mut trickle, &mut answer),
    )
    .await;
    assert!(
        cut_off || answer.contains("408"),
        "a trickled body kept its connection: {answer}"
    );
    drop(trickle);
    // A client that asks for 16 MiB and never reads: the stalled write drops
    // it, and the only place is free again.
    let mut unread = tokio::net::TcpStream::connect(&address).await.unwrap();
    unread
        .write_all(b"POST /v1/plugins/huge-output/call?op=big HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        server.post("/v1/plugins/hello/call?op=greet", r#"{"name":"Ada"}"#),
    )
    .await
    .expect("the unread response did not hold the only connection");
    assert_eq!(response.status(), StatusCode::OK);
    drop(unread);
    server.stop().await.unwrap();
}

/// A host fault's message (here: a mounted directory that vanished, named by
/// its host path) goes to the server's log, never to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_faults_do_not_reveal_host_paths() {
    use capsule_host::services::files::{Access, Mount};
    let server = Server::start().await;
    let dir = capsule_tests::temp_dir("serve-vanishing-mount");
    let grants = Grants {
        files: vec![Mount::new(&dir, "/data", Access::ReadOnly).unwrap()],
        ..Grants::default()
    };
    server
        .host
        .load(
            PluginSpec::from_path(plugin_path(capsule_tests::plugins::FILE_READER))
                .grants(grants)
                .limits(Limits {
                    recycle_after: 1,
                    ..Limits::default()
                }),
        )
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // The instance warmed at load still holds the directory open; the next
    // one cannot open it any more.
    let list = || {
        server.post(
            "/v1/plugins/file-reader/call?op=list",
            r#"{"path":"/data"}"#,
        )
    };
    assert_eq!(list().await.status(), StatusCode::OK);
    let response = list().await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["kind"], "host", "{body}");
    assert!(!body.contains(dir.to_str().unwrap()), "{body}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_a_dependent_needs_force() {
    let dir = capsule_tests::temp_dir("serve-force-reload");
    let file = dir.join("thumbnail.wasm");
    std::fs::copy(plugin_path(THUMBNAIL), &file).unwrap();
    let host = capsule_tests::host_builder().build().unwrap();
    host.load(PluginSpec::from_path(&file)).await.unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(ROUTER)))
        .await
        .unwrap();
    let server = Server::serve(host, ServeOptions::default()).await;
    // The file now holds a plugin without the `thumbnail` capability the
    // router requires.
    std::fs::copy(plugin_path(KV_COUNTER), &file).unwrap();
    let refused = server.admin("/v1/plugins/thumbnail/reload", "").await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "missing_dependency", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`router` requires capability `thumbnail` ^0.1"),
        "{body}"
    );
    let forced = server
        .admin("/v1/plugins/thumbnail/reload?force=true", "")
        .await;
    assert_eq!(forced.status(), StatusCode::OK);
    let body: Value = forced.json().await.unwrap();
    assert_eq!(
        (&body["version"], &body["generation"]),
        (&json!("0.2.0"), &json!(1))
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answers_over_http_for_a_plugin_another_host_serves() {
    use capsule_host::backend::local::NatsServer;
    use capsule_host::backend::{Backend, NatsOptions};
    let nats = NatsServer::shared();
    let on = |name: &str| {
        let options = NatsOptions::new(nats.url())
            .prefix("http-remote")
            .host_name(name);
        capsule_tests::host_builder()
            .backend(Backend::Nats(options))
            .build()
            .unwrap()
    };
    // Host A serves HTTP and has no plugin; host B has hello.
    let front = Server::serve(on("front"), ServeOptions::default()).await;
    let back = on("back");
    back.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();

    let response = front
        .post("/v1/plugins/hello/call?op=greet", r#"{"name":"Ada"}"#)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(body["greeting"].as_str().unwrap().contains("Ada"), "{body}");
    // A plugin's own error keeps its status across hosts.
    let (status, error) = error_of(front.post("/v1/plugins/hello/call?op=greet", "{").await).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("plugin_error"))
    );

    // The deployment as NATS knows it: both hosts, and what each serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cluster = loop {
        let cluster: Value = front.get("/v1/cluster").await.json().await.unwrap();
        if cluster["hosts"].as_array().unwrap().len() == 2 {
            break cluster;
        }
        assert!(std::time::Instant::now() < deadline, "{cluster}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (&cluster["backend"], &cluster["this_host"]),
        (&json!("nats"), &json!("front"))
    );
    let hosts = cluster["hosts"].as_array().unwrap();
    assert_eq!(
        (&hosts[0]["host"], &hosts[1]["host"]),
        (&json!("back"), &json!("front"))
    );
    assert_eq!(hosts[0]["plugins"][0]["name"], HELLO);
    assert_eq!(hosts[0]["plugins"][0]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(hosts[1]["plugins"], json!([]));

    // B goes away: A answers 404 `unknown_plugin`, nobody told it.
    back.shutdown(Duration::from_secs(2)).await;
    let (status, error) = error_of(
        front
            .post("/v1/plugins/hello/call?op=greet", r#"{"name":"Ada"}"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_plugin"))
    );
    front.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_host_lists_itself_as_its_cluster() {
    let server = Server::start().await;
    let cluster: Value = server.get("/v1/cluster").await.json().await.unwrap();
    assert_eq!(cluster["backend"], "embedded");
    let hosts = cluster["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1);
    let names: Vec<&str> = hosts[0]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&HELLO) && names.contains(&"hello-secret"),
        "{names:?}"
    );
    server.stop().await.unwrap();
}

/// A policy with `plugins` (TOML sections after `[host]`), trusting the test
/// key, written to `dir/capsule.toml`.
fn write_policy(dir: &std::path::Path, plugins: &str) -> std::path::PathBuf {
    let plugin_dir = capsule_tests::plugin_dir();
    let policy = format!(
        "[host]\ntrusted_keys = [\"{}\"]\n\n{plugins}",
        plugin_dir.join("test-key.pub").display()
    );
    let path = dir.join("capsule.toml");
    std::fs::write(&path, policy).unwrap();
    path
}

fn plugin_file(name: &str) -> String {
    plugin_path(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_policy_is_applied_without_a_restart() {
    let dir = capsule_tests::temp_dir("policy-apply");
    let hello = plugin_file(HELLO);
    let counter = plugin_file(KV_COUNTER);
    let first = format!(
        "[plugins.hello]\npath = \"{hello}\"\nconfig = {{ greeting = \"Hello\" }}\n\n\
         [plugins.kv-counter]\npath = \"{counter}\"\nkv = {{ namespace = \"counters\" }}\n\n\
         [plugins.spin-loop]\npath = \"{}\"\n",
        plugin_file(SPIN_LOOP)
    );
    let path = write_policy(&dir, &first);
    let server = Server::from_policy_file(&path).await;
    let greet = |server: &Server| {
        let request = server
            .client
            .post(server.url("/v1/plugins/hello/call?op=greet"))
            .body(r#"{"name":"Ada"}"#);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()["greeting"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(greet(&server).await, "Hello, Ada!");
    let count = server
        .post("/v1/plugins/kv-counter/call?op=increment", r#"{"key":"k"}"#)
        .await;
    assert_eq!(count.status(), StatusCode::OK);

    // Calls keep coming while the policy changes: none fails.
    let load = {
        let client = server.client.clone();
        let url = server.url("/v1/plugins/hello/call?op=greet");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client.post(&url).body(r#"{"name":"Ada"}"#).send().await;
                match response {
                    Ok(response) if response.status() == StatusCode::OK => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        });
        (stop, task)
    };

    // The greeting changes, the counter loses its kv grant, spin-loop goes,
    // a second hello and a pipeline come.
    let second = format!(
        "[plugins.hello]\npath = \"{hello}\"\nconfig = {{ greeting = \"Bonjour\" }}\n\n\
         [plugins.kv-counter]\npath = \"{counter}\"\n\n\
         [plugins.hello-two]\npath = \"{hello}\"\n\n\
         [pipelines.greeters]\nstages = [\"hello\"]\n"
    );
    write_policy(&dir, &second);
    let applied = server.admin("/v1/policy/apply", "").await;
    assert_eq!(applied.status(), StatusCode::OK);
    let changes: Value = applied.json().await.unwrap();
    assert_eq!(changes["loaded"], json!(["hello-two"]), "{changes}");
    assert_eq!(
        changes["reloaded"],
        json!(["hello", "kv-counter"]),
        "{changes}"
    );
    assert_eq!(changes["unloaded"], json!(["spin-loop"]), "{changes}");
    assert_eq!(changes["pipelines"], json!(["greeters"]), "{changes}");
    assert_eq!(changes["failed"], json!([]), "{changes}");

    // The next calls see the new policy: the new config, the revoked
    // grant, the removed plugin, the new plugin and pipeline.
    assert_eq!(greet(&server).await, "Bonjour, Ada!");
    let (status, error) = error_of(
        server
            .post("/v1/plugins/kv-counter/call?op=increment", r#"{"key":"k"}"#)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    let (status, _) = error_of(
        server
            .post("/v1/plugins/spin-loop/call?op=spin", "{}")
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let two = server
        .post("/v1/plugins/hello-two/call?op=greet", r#"{"name":"Bo"}"#)
        .await;
    assert_eq!(two.status(), StatusCode::OK);
    let piped = server
        .post("/v1/pipelines/greeters/call?op=greet", r#"{"name":"Cy"}"#)
        .await;
    assert_eq!(piped.status(), StatusCode::OK);

    // Applying the same file again changes nothing.
    let again: Value = server
        .admin("/v1/policy/apply", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&again["loaded"], &again["reloaded"], &again["unloaded"]),
        (&json!([]), &json!([]), &json!([])),
        "{again}"
    );

    // A plugin that cannot load is reported; the rest is applied.
    let junk = dir.join("broken.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    let broken = format!(
        "{}\n[plugins.broken]\npath = \"{}\"\n",
        second.replace("[plugins.hello-two]", "[plugins.hello-three]"),
        junk.display()
    );
    write_policy(&dir, &broken);
    let applied = server.admin("/v1/policy/apply", "").await;
    assert_eq!(applied.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let changes: Value = applied.json().await.unwrap();
    assert_eq!(changes["failed"][0]["name"], "broken", "{changes}");
    assert_eq!(changes["loaded"], json!(["hello-three"]), "{changes}");
    assert_eq!(changes["unloaded"], json!(["hello-two"]), "{changes}");
    let (status, _) = error_of(server.post("/v1/plugins/broken/call?op=x", "{}").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let listed = |server: &Server| {
        let request = server.client.get(server.url("/v1/plugins"));
        async move {
            let listing: Value = request.send().await.unwrap().json().await.unwrap();
            let mut names: Vec<String> = listing["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            (names, listing["pipelines"].clone())
        }
    };
    let before = listed(&server).await;
    // A missing file is caught when the policy is validated: nothing changes.
    let missing = format!(
        "{second}\n[plugins.missing]\npath = \"{}\"\n",
        dir.join("missing.wasm").display()
    );
    write_policy(&dir, &missing);
    let (status, _) = error_of(server.admin("/v1/policy/apply", "").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An invalid policy, or one only a restart applies, changes nothing.
    std::fs::write(&path, "[plugins.hello\n").unwrap();
    let (status, error) = error_of(server.admin("/v1/policy/apply", "").await).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::BAD_REQUEST, Some("config"))
    );
    let restart = second.replace(
        "[plugins.hello]",
        "[host.limits]\ntimeout = \"9s\"\n\n[plugins.hello]",
    );
    write_policy(&dir, &restart.replace("Bonjour", "Hallo"));
    let (status, error) = error_of(server.admin("/v1/policy/apply", "").await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("[host.limits]"),
        "{error}"
    );
    assert_eq!(greet(&server).await, "Bonjour, Ada!");
    assert_eq!(
        listed(&server).await,
        before,
        "refused applies changed nothing"
    );
    // Only the admin applies.
    let refused = server.post("/v1/policy/apply", "").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let (stop, task) = load;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = task.await.unwrap();
    assert!(ok > 0 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_keeps_what_staying_plugins_require_and_pins_after_loading() {
    let dir = capsule_tests::temp_dir("policy-apply-deps");
    let (hello, router, thumbnail) = (
        plugin_file(HELLO),
        plugin_file(ROUTER),
        plugin_file(THUMBNAIL),
    );
    let router_section = format!(
        "[plugins.router]\npath = \"{router}\"\n\
         config = {{ routes = \"greet=greeting,make=thumbnail\" }}\n\
         calls = [\"capability:greeting\", \"capability:thumbnail\"]\n"
    );
    let first = format!(
        "{router_section}\n[plugins.hello]\npath = \"{hello}\"\n\n\
         [plugins.thumbnail]\npath = \"{thumbnail}\"\n"
    );
    let path = write_policy(&dir, &first);
    let policy = capsule_host::Policy::load(&path).unwrap();
    let host = capsule_host::HostBuilder::from_policy(&policy)
        .build()
        .unwrap();
    assert!(host.load_policy(&policy).await.is_empty());

    // The router requires a thumbnail provider: removing the only one is
    // refused for that plugin, the rest applied. A second greeting
    // provider comes with a pin to it, set once it has loaded.
    let second = format!(
        "{router_section}\n[plugins.hello]\npath = \"{hello}\"\n\n\
         [plugins.hola]\npath = \"{hello}\"\nconfig = {{ greeting = \"Hola\" }}\n\n\
         [capabilities]\ngreeting = \"hola\"\n"
    );
    write_policy(&dir, &second);
    let changes = host
        .apply_policy(&capsule_host::Policy::load(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(changes.loaded, ["hola"], "{changes:?}");
    assert_eq!(changes.pins, ["greeting"], "{changes:?}");
    assert!(changes.unloaded.is_empty(), "{changes:?}");
    assert_eq!(changes.failed.len(), 1, "{changes:?}");
    assert_eq!(
        (
            changes.failed[0].name.as_str(),
            changes.failed[0].kind.as_str()
        ),
        ("thumbnail", "missing_dependency")
    );
    assert!(host.status(THUMBNAIL).is_some(), "kept for the router");
    let greeting = host
        .call(
            ROUTER,
            capsule_host::Request::new("greet", r#"{"name":"Ada"}"#),
        )
        .await
        .unwrap();
    let greeting: Value = serde_json::from_slice(&greeting.response.payload).unwrap();
    assert_eq!(greeting["greeting"], "Hola, Ada!", "the pin took effect");
}

/// A request with `key` as its bearer credential.
async fn with_key(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: &'static str,
) -> reqwest::Response {
    server
        .client
        .request(method, server.url(path))
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `[[host.api_keys]]` entries for `(name, role, extra TOML, key)`.
fn api_keys(keys: &[(&str, &str, &str, &str)]) -> String {
    keys.iter()
        .map(|(name, role, extra, key)| {
            format!(
                "[[host.api_keys]]\nname = \"{name}\"\nrole = \"{role}\"\ndigest = \"{}\"\n{extra}\n",
                capsule_host::access::digest_of(key)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_have_roles_scopes_and_rates_and_rotate_by_apply() {
    use reqwest::Method;
    let dir = capsule_tests::temp_dir("api-keys");
    let new_key = || capsule_host::access::generate_key().unwrap();
    let (caller, viewer, operator, successor) = (new_key(), new_key(), new_key(), new_key());
    let data = dir.join("greeter-data");
    let plugins = format!(
        "[plugins.hello]\npath = \"{hello}\"\nconfig = {{ greeting = \"Cfg-value-91\" }}\n\
         files = [{{ host = \"{data}\", guest = \"/data\", access = \"read-only\", create = true }}]\n\n\
         [plugins.kv-counter]\npath = \"{counter}\"\nkv = {{ namespace = \"counters\" }}\n\n",
        hello = plugin_file(HELLO),
        counter = plugin_file(KV_COUNTER),
        data = data.display(),
    );
    let keys = api_keys(&[
        (
            "checkout",
            "call",
            "plugins = [\"hel*\"]\ntopics = [\"orders.>\"]\nrate = \"3/h\"",
            &caller,
        ),
        ("dashboard", "view", "", &viewer),
        ("ops", "admin", "", &operator),
    ]);
    let path = write_policy(&dir, &format!("{keys}\n{plugins}"));
    let server = Server::from_policy_file(&path).await;
    let greet = "/v1/plugins/hello/call?op=greet";
    let body = r#"{"name":"Ada"}"#;

    // With keys configured, only health is open: 401 without a valid key.
    assert_eq!(server.get("/healthz").await.status(), StatusCode::OK);
    // Readiness is open too, but names nothing to a caller who may not read
    // what the host runs.
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({ "ready": true })
    );
    let detail: Value = with_key(&server, Method::GET, "/readyz", &viewer, "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["ready"], true, "{detail}");
    assert_eq!(detail["backend"]["kind"], "embedded");
    assert_eq!(detail["plugins"].as_array().unwrap().len(), 2, "{detail}");
    for path in ["/v1/plugins", "/metrics", "/v1/cluster"] {
        assert_eq!(
            server.get(path).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let anonymous = server.post(greet, body).await;
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Bearer",
        "401 says how to authenticate"
    );
    let (status, error) = error_of(anonymous).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, _) =
        error_of(with_key(&server, Method::POST, greet, "capsule_wrong", body).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The digest is not the key.
    let digest = capsule_host::access::digest_of(&caller);
    let (status, _) = error_of(with_key(&server, Method::POST, greet, &digest, body).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A call key calls what its scope names, and nothing else (403).
    let response = with_key(&server, Method::POST, greet, &caller, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    for (method, path) in [
        (Method::POST, "/v1/plugins/kv-counter/call?op=increment"),
        (Method::GET, "/v1/plugins"),
        (Method::POST, "/v1/plugins/hello/pause"),
        (Method::POST, "/v1/events/payments.created"),
        (Method::GET, "/v1/dead-letters"),
    ] {
        let (status, error) = error_of(with_key(&server, method, path, &caller, "{}").await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(error["kind"], "forbidden");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("`checkout` (role `call`)"),
            "{error}"
        );
    }
    let published = with_key(
        &server,
        Method::POST,
        "/v1/events/orders.created",
        &caller,
        "{}",
    )
    .await;
    assert_eq!(published.status(), StatusCode::OK);
    // A batch takes one request of the rate per item, all or none: two
    // do not fit in the one left, and nothing runs.
    let two = r#"{"requests":[{"op":"greet","payload":{"name":"A"}},{"op":"greet","payload":{"name":"B"}}]}"#;
    let batch = "/v1/plugins/hello/batch";
    let (status, error) =
        error_of(with_key(&server, Method::POST, batch, &caller, two).await).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    // Its rate (3 an hour) counts what it was allowed to do: the third
    // request passes, the fourth is refused with when to come back.
    assert_eq!(
        with_key(&server, Method::POST, greet, &caller, body)
            .await
            .status(),
        StatusCode::OK
    );
    let limited = with_key(&server, Method::POST, greet, &caller, body).await;
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((60..=1200).contains(&retry), "{retry}");
    let (status, error) = error_of(limited).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );

    // A view key reads, but calls and changes nothing.
    for path in ["/v1/plugins", "/metrics", "/v1/cluster", "/v1/dead-letters"] {
        let response = with_key(&server, Method::GET, path, &viewer, "").await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    for path in [greet, "/v1/plugins/hello/pause", "/v1/policy/apply"] {
        let response = with_key(&server, Method::POST, path, &viewer, body).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // Host paths only to admin; config values to nobody.
    let data_path = std::fs::canonicalize(&data).unwrap().display().to_string();
    let viewed = with_key(&server, Method::GET, "/v1/plugins", &viewer, "")
        .await
        .text()
        .await
        .unwrap();
    let administered = with_key(&server, Method::GET, "/v1/plugins", &operator, "")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !viewed.contains(&data_path) && viewed.contains("/data"),
        "{viewed}"
    );
    assert!(administered.contains(&data_path), "{administered}");
    for listing in [&viewed, &administered] {
        assert!(!listing.contains("Cfg-value-91"), "{listing}");
    }
    // An admin key does everything.
    for path in [
        "/v1/plugins/kv-counter/pause",
        "/v1/plugins/kv-counter/resume",
    ] {
        let response = with_key(&server, Method::POST, path, &operator, "").await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    // Rotation: the apply replaces `checkout` by `checkout-2`. The old key
    // is refused at once, the new one works, and the apply says so.
    let rotated = api_keys(&[
        ("checkout-2", "call", "plugins = [\"hello\"]", &successor),
        ("dashboard", "view", "", &viewer),
        ("ops", "admin", "", &operator),
    ]);
    write_policy(&dir, &format!("{rotated}\n{plugins}"));
    let applied = with_key(&server, Method::POST, "/v1/policy/apply", &operator, "").await;
    assert_eq!(applied.status(), StatusCode::OK);
    let changes: Value = applied.json().await.unwrap();
    assert_eq!(changes["api_keys"], json!(["checkout", "checkout-2"]));
    assert_eq!(changes["unchanged"], json!(["hello", "kv-counter"]));
    let (status, _) = error_of(with_key(&server, Method::POST, greet, &caller, body).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        with_key(&server, Method::POST, greet, &successor, body)
            .await
            .status(),
        StatusCode::OK
    );
    // A policy with a broken key changes nothing: the keys stay.
    let broken = format!(
        "{rotated}[[host.api_keys]]\nname = \"x\"\nrole = \"root\"\ndigest = \"sha256:00\"\n\n{plugins}"
    );
    write_policy(&dir, &broken);
    let refused = with_key(&server, Method::POST, "/v1/policy/apply", &operator, "").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        with_key(&server, Method::POST, greet, &successor, body)
            .await
            .status(),
        StatusCode::OK
    );
    // The admin token stays an admin credential beside the keys.
    assert_eq!(
        server.admin("/v1/plugins/hello/pause", "").await.status(),
        StatusCode::OK
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_admin_actions_and_counts_a_refusal_flood() {
    use reqwest::Method;
    let dir = capsule_tests::temp_dir("audit-log");
    let (operator, viewer) = (
        capsule_host::access::generate_key().unwrap(),
        capsule_host::access::generate_key().unwrap(),
    );
    let keys = api_keys(&[
        ("ops", "admin", "", &operator),
        ("dashboard", "view", "", &viewer),
    ]);
    let audit_file = dir.join("audit.jsonl");
    let text = format!(
        "{keys}\n[host.audit]\nfile = \"{}\"\nwindow = \"1s\"\n\n[plugins.hello]\npath = \"{}\"\n",
        audit_file.display(),
        plugin_file(HELLO)
    );
    let path = write_policy(&dir, &text);
    let server = Server::from_policy_file(&path).await;
    for path in [
        "/v1/plugins/hello/pause",
        "/v1/plugins/hello/resume",
        "/v1/policy/apply",
    ] {
        let response = with_key(&server, Method::POST, path, &operator, "").await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let missing = with_key(
        &server,
        Method::POST,
        "/v1/plugins/nope/pause",
        &operator,
        "",
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // A flood of refused requests: 2,000 with bad keys, 500 beyond a
    // key's role.
    let flood = |key: String, count: usize, path: &'static str| {
        let client = server.client.clone();
        let url = server.url(path);
        async move {
            for _ in 0..count {
                let status = client
                    .post(&url)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert!(matches!(
                    status,
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                ));
            }
        }
    };
    let mut floods = Vec::new();
    for i in 0..4 {
        floods.push(tokio::spawn(flood(
            format!("capsule_bad-{i}"),
            500,
            "/v1/plugins/hello/call?op=greet",
        )));
    }
    floods.push(tokio::spawn(flood(
        viewer.clone(),
        500,
        "/v1/plugins/hello/reload",
    )));
    for flood in floods {
        flood.await.unwrap();
    }
    // A view key may not read the audit log.
    let (status, _) =
        error_of(with_key(&server, Method::GET, "/v1/audit", &viewer, "").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Once the window has passed, each refusal is one counted line.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let audit: Value = with_key(&server, Method::GET, "/v1/audit?limit=1000", &operator, "")
        .await
        .json()
        .await
        .unwrap();
    let records = audit["records"].as_array().unwrap();
    let find = |kind: &str, who: &str, action: &str| {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["who"] == who && r["action"] == action)
            .collect::<Vec<_>>()
    };
    for (action, target, outcome) in [
        ("pause", "hello", "ok"),
        ("resume", "hello", "ok"),
        ("apply", "policy", "ok"),
        ("pause", "nope", "failed (404)"),
    ] {
        let found = find("admin", "ops", action);
        assert!(
            found
                .iter()
                .any(|r| r["target"] == target && r["outcome"] == outcome),
            "{action} {target} {outcome}: {records:?}"
        );
    }
    let anonymous: u64 = find("denied", "anonymous", "call")
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(anonymous, 2000);
    let forbidden: u64 = find("denied", "dashboard", "admin")
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(forbidden, 501, "500 reloads and the audit read");
    // The flood cost a handful of lines, on disk too; the keys never appear.
    assert!(records.len() < 20, "{records:?}");
    let written = std::fs::read_to_string(&audit_file).unwrap();
    assert!(written.lines().count() < 20, "{written}");
    assert!(!written.contains(&operator) && !written.contains("capsule_bad"));
    for line in written.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    server.stop().await.unwrap();
}

/// `[plugins.hello]` (the stable version) served from a policy in `dir`.
async fn hello_from_policy(dir: &std::path::Path) -> Server {
    let plugins = format!(
        "[plugins.hello]\npath = \"{}\"\nconfig = {{ greeting = \"Hello\" }}\n\
         kv = {{ namespace = \"greets\" }}\n",
        plugin_file(HELLO)
    );
    Server::from_policy_file(&write_policy(dir, &plugins)).await
}

/// `GET path` with the admin token, as JSON.
async fn admin_get(server: &Server, path: &str) -> Value {
    let response = server
        .client
        .get(server.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

/// Greets `Ada` as `user` (if any): whether the call succeeded, and whether
/// the 0.2 `hello` answered (its answer is JSON; the 0.1 version's is text).
async fn greet_as(server: &Server, user: Option<&str>) -> (bool, bool) {
    let mut request = server
        .client
        .post(server.url("/v1/plugins/hello/call?op=greet"))
        .body(r#"{"name":"Ada"}"#);
    if let Some(user) = user {
        request = request.header("x-capsule-meta-user", user);
    }
    let response = request.send().await.unwrap();
    let ok = response.status() == StatusCode::OK;
    let body = response.bytes().await.unwrap();
    let stable = serde_json::from_slice::<Value>(&body)
        .is_ok_and(|value| value["greeting"] == "Hello, Ada!");
    (ok, stable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_fails_every_call_rolls_back_by_itself_within_its_window() {
    let dir = capsule_tests::temp_dir("rollout-back");
    let server = hello_from_policy(&dir).await;
    let rollout = |body: String| server.admin("/v1/plugins/hello/rollout", body);

    // What cannot start: no admin credential, no such plugin, a bad plan,
    // a version that does not verify. The stable version serves on.
    let anonymous = server
        .post("/v1/plugins/hello/rollout", r#"{"path":"x","share":10}"#)
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let (status, error) = error_of(
        server
            .admin(
                "/v1/plugins/nope/rollout",
                r#"{"path":"x.wasm","share":10}"#,
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_plugin"))
    );
    let (status, error) = error_of(rollout(r#"{"path":"x.wasm","share":100}"#.into()).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"].as_str().unwrap().contains("`share`"),
        "{error}"
    );
    let mut tampered = std::fs::read(plugin_path(HELLO)).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x55;
    let tampered_path = dir.join("tampered.wasm");
    std::fs::write(&tampered_path, tampered).unwrap();
    let (status, _) =
        error_of(rollout(json!({"path": tampered_path, "share": 50}).to_string()).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(greet_as(&server, None).await, (true, true));
    let (status, _) = error_of(server.admin("/v1/plugins/hello/rollout/promote", "").await).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let never = server
        .client
        .get(server.url("/v1/plugins/hello/rollout"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(never).await;
    assert_eq!(
        (status, error["kind"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_rollout"))
    );

    // A version that panics on every call, at half the traffic, judged
    // from 5 calls over 30 s; named relative to the policy file, as the
    // policy's own paths are.
    std::fs::copy(
        plugin_path(capsule_tests::plugins::PANIC),
        dir.join("panic.wasm"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let plan = json!({
        "path": "panic.wasm",
        "share": 50,
        "window": "30s",
        "min_calls": 5,
        "max_error_rate": 5,
    });
    let response = rollout(plan.to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await.unwrap();
    assert_eq!(
        (status["state"].as_str(), status["share"].as_f64()),
        (Some("running"), Some(50.0))
    );
    assert_ne!(status["canary"]["digest"], status["stable"]["digest"]);
    assert_eq!(
        status["path"].as_str(),
        Some(dir.join("panic.wasm").to_str().unwrap())
    );
    let (status, error) = error_of(rollout(plan.to_string()).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    // The listing is open (no keys are configured) and shows the rollout,
    // but only an admin sees the host path of the new version.
    let listed: Value = server.get("/v1/plugins").await.json().await.unwrap();
    assert_eq!(listed["plugins"][0]["rollout"]["state"], "running");
    assert!(
        listed["plugins"][0]["rollout"].get("path").is_none(),
        "{listed}"
    );

    // Calls alternate (an exact 50 % split): the fifth failure on the new
    // version rolls it back, and every call after that is the stable one's.
    let mut failed = 0;
    for _ in 0..40 {
        let (ok, stable) = greet_as(&server, None).await;
        if !ok {
            failed += 1;
        } else {
            assert!(stable);
        }
    }
    assert_eq!(failed, 5, "the new version took exactly its 5 judged calls");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "within the window"
    );
    let status = admin_get(&server, "/v1/plugins/hello/rollout").await;
    assert_eq!(status["state"], "rolled_back");
    assert_eq!(
        (
            status["canary"]["calls"].as_u64(),
            status["canary"]["failures"].as_u64()
        ),
        (Some(5), Some(5))
    );
    assert_eq!(status["stable"]["failures"], 0);
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("5 of its last 5 calls failed"),
        "{status}"
    );
    let listing: Value = server.get("/v1/plugins").await.json().await.unwrap();
    assert!(
        listing["plugins"][0].get("rollout").is_none(),
        "no rollout runs now"
    );
    assert_eq!(
        listing["plugins"][0]["generation"], 0,
        "the stable version never left"
    );

    let metrics = server.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"capsule_rollout_calls_total{plugin="hello",track="canary",outcome="trap"} 5"#,
        r#"capsule_rollouts_total{plugin="hello",outcome="rolled_back"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let audit = admin_get(&server, "/v1/audit?limit=100").await;
    let records = audit["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["who"] == "rollout" && r["action"] == "rollback" && r["target"] == "hello"),
        "{audit}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["who"] == "admin-token" && r["action"] == "rollout" && r["outcome"] == "ok"),
        "{audit}"
    );

    // An aborted rollout leaves the stable version alone as well.
    let response = rollout(json!({"path": plugin_path(HELLO_V0_1), "share": 50}).to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let aborted: Value = server
        .admin("/v1/plugins/hello/rollout/abort", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(aborted["state"], "aborted");
    for _ in 0..4 {
        assert_eq!(greet_as(&server, None).await, (true, true));
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_steps_up_keeps_sticky_callers_and_promotes() {
    let dir = capsule_tests::temp_dir("rollout-up");
    let server = hello_from_policy(&dir).await;
    let before = admin_get(&server, "/v1/plugins").await["plugins"][0]["digest"].clone();
    let plan = json!({
        "path": plugin_path(HELLO_V0_1),
        "share": 30,
        "step": 35,
        "every": "1s",
        "min_calls": 5,
        // Matched without regard to case: HTTP sends header names lower-case.
        "sticky": "User",
    });
    let response = server
        .admin("/v1/plugins/hello/rollout", plan.to_string())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let started: Value = response.json().await.unwrap();
    let canary_digest = started["canary"]["digest"].clone();
    assert_ne!(canary_digest, before);

    // The same user always meets the same version; some users meet each.
    let mut sides = std::collections::BTreeSet::new();
    for i in 0..20 {
        let user = format!("user-{i}");
        let (ok, first) = greet_as(&server, Some(&user)).await;
        assert!(ok);
        for _ in 0..3 {
            assert_eq!(
                greet_as(&server, Some(&user)).await,
                (true, first),
                "{user}"
            );
        }
        sides.insert(first);
    }
    assert_eq!(sides.len(), 2, "30 % of 20 users meet the new version");
    // Callers without the key are split by count.
    let status = admin_get(&server, "/v1/plugins/hello/rollout").await;
    assert_eq!(status["state"], "running");
    assert!(status["canary"]["calls"].as_u64().unwrap() > 0);

    // Traffic goes on; every healthy second adds 35 %: 30 → 65 → 100 %,
    // which promotes. No call fails meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let promoted = loop {
        for _ in 0..10 {
            assert!(greet_as(&server, None).await.0);
        }
        let status = admin_get(&server, "/v1/plugins/hello/rollout").await;
        if status["state"] == "promoted" {
            break status;
        }
        assert_eq!(status["state"], "running", "{status}");
        assert!(
            std::time::Instant::now() < deadline,
            "not promoted: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(promoted["canary"]["failures"], 0);
    assert_eq!(promoted["share"].as_f64(), Some(100.0), "{promoted}");
    for user in [None, Some("user-0"), Some("user-1")] {
        assert_eq!(
            greet_as(&server, user).await,
            (true, false),
            "only the new version answers"
        );
    }
    let listing = admin_get(&server, "/v1/plugins").await;
    let hello = &listing["plugins"][0];
    assert_eq!(
        (&hello["digest"], &hello["generation"]),
        (&canary_digest, &json!(1))
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"capsule_rollouts_total{plugin="hello",outcome="promoted"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"capsule_rollout_calls_total{plugin="hello",track="stable",outcome="ok"}"#)
    );
    let audit = admin_get(&server, "/v1/audit?limit=100").await;
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["who"] == "rollout" && r["action"] == "promote"),
        "{audit}"
    );
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["who"] == "rollout" && r["action"] == "step" && r["outcome"] == "65 %"),
        "{audit}"
    );

    // The policy still names the old file: an apply brings it back.
    let applied = server.admin("/v1/policy/apply", "").await;
    assert_eq!(applied.status(), StatusCode::OK);
    let changes: Value = applied.json().await.unwrap();
    assert_eq!(changes["reloaded"], json!(["hello"]), "{changes}");
    assert_eq!(greet_as(&server, None).await, (true, true));
    server.stop().await.unwrap();
}

/// The metric names in `text`: every `capsule_…` identifier (a trailing
/// `_`, as in a `capsule_plugin_.+` pattern, is a prefix, not a name).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("capsule_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if !name.ends_with('_') {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_alerts_and_dashboard_use_only_exported_metrics() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let rules = docs.join("prometheus/capsule-alerts.yml");
    capsule_tests::promtool::check_rules(&rules);
    capsule_tests::promtool::test_rules(&docs.join("prometheus/capsule-alerts.test.yml"));

    // A host where every family has a series: calls, an event delivery, a
    // reload, and a rollout with calls on both tracks.
    let dir = capsule_tests::temp_dir("shipped-dashboards");
    let plugins = format!(
        "[plugins.hello]\npath = \"{}\"\nmetrics = {{}}\n\
         [plugins.order-audit]\npath = \"{}\"\n\
         events = {{ subscribe = [\"orders.created\"] }}\n",
        plugin_file(HELLO),
        plugin_file(ORDER_AUDIT)
    );
    let server = Server::from_policy_file(&write_policy(&dir, &plugins)).await;
    assert_eq!(greet_as(&server, None).await, (true, true));
    let published = server
        .admin(
            "/v1/events/orders.created",
            json!({"order_id": "D-1", "item": "kettle", "quantity": 1}).to_string(),
        )
        .await;
    assert_eq!(published.status(), StatusCode::OK);
    let reloaded = server.admin("/v1/plugins/hello/reload", "").await;
    assert_eq!(reloaded.status(), StatusCode::OK);
    let plan = json!({"path": plugin_path(HELLO_V0_1), "share": 50});
    let started = server
        .admin("/v1/plugins/hello/rollout", plan.to_string())
        .await;
    assert_eq!(started.status(), StatusCode::OK);
    for _ in 0..6 {
        assert!(greet_as(&server, None).await.0);
    }
    let aborted = server.admin("/v1/plugins/hello/rollout/abort", "").await;
    assert_eq!(aborted.status(), StatusCode::OK);
    let waiting = std::time::Instant::now();
    let exported = loop {
        // The delivery runs on the bus: wait until it is counted.
        let text = server.get("/metrics").await.text().await.unwrap();
        if text.contains("capsule_events_total{") {
            break text;
        }
        assert!(waiting.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A family and, for histograms, its sample names.
    let mut families = std::collections::BTreeSet::new();
    for line in exported.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declared.split_once(' ').unwrap();
        families.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                families.insert(format!("{name}{suffix}"));
            }
        }
    }
    for required in [
        "capsule_circuit_open",
        "capsule_fuel_limit",
        "capsule_instances",
    ] {
        assert!(families.contains(required), "{required} in\n{exported}");
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("grafana/capsule-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    for (source, text) in [
        ("the dashboard", exprs.join("\n")),
        ("the alert rules", rules_text),
    ] {
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{source} names no metric");
        for name in used {
            assert!(
                families.contains(&name),
                "{source} uses `{name}`, which /metrics does not export:\n{exported}"
            );
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_request_through_pipelines_plugin_calls_and_events() {
    use capsule_host::services::calls::CallTarget;
    use capsule_host::services::trace::TraceGrant;
    use capsule_host::telemetry::TelemetryOptions;
    use capsule_tests::otlp::{Collector, attribute};
    use capsule_tests::plugins::ORDER_INTAKE;

    let collector = Collector::start().await;
    let host = capsule_tests::host_builder()
        .telemetry(TelemetryOptions {
            otlp: Some(collector.url.clone()),
            service_name: "capsule-test".into(),
            interval: Duration::from_millis(200),
            ..TelemetryOptions::default()
        })
        .build()
        .unwrap();
    // hello provides `greeting`; the router calls it for `greet`, inside a
    // `route` span of its own.
    for plugin in [HELLO, THUMBNAIL] {
        host.load(PluginSpec::from_path(plugin_path(plugin)))
            .await
            .unwrap();
    }
    let router = Grants {
        calls: vec![CallTarget::parse("capability:greeting").unwrap()],
        trace: Some(TraceGrant::default()),
        ..Grants::default()
    };
    host.load(
        PluginSpec::from_path(plugin_path(ROUTER))
            .grants(router)
            .config("routes", "greet=greeting"),
    )
    .await
    .unwrap();
    host.define_pipeline("front", vec!["router".into()]);
    // order-intake publishes what order-audit receives.
    let mut intake = Grants::default();
    intake.events.publish = vec![TopicPattern::parse("orders.*").unwrap()];
    host.load(PluginSpec::from_path(plugin_path(ORDER_INTAKE)).grants(intake))
        .await
        .unwrap();
    let mut audit = Grants {
        kv: Some(KvGrant::new("audit")),
        ..Grants::default()
    };
    audit.events.subscribe = vec![TopicPattern::parse("orders.created").unwrap()];
    host.load(PluginSpec::from_path(plugin_path(ORDER_AUDIT)).grants(audit))
        .await
        .unwrap();
    let server = Server::serve(host, ServeOptions::default()).await;

    // A caller's trace: its span is the parent of everything the host does.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let response = server
        .client
        .post(server.url("/v1/pipelines/front/call?op=greet"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .body(r#"{"name":"Otel"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let pipeline = collector.span("pipeline front").await;
    let router = collector.span("call router").await;
    let route = collector.span("route").await;
    let hello = collector.span("call hello").await;
    for span in [&pipeline, &router, &route, &hello] {
        assert_eq!(hex(&span.trace_id), trace, "{}", span.name);
    }
    assert_eq!(hex(&pipeline.parent_span_id), caller);
    assert_eq!(router.parent_span_id, pipeline.span_id);
    // The plugin's own span and the call it made are the router call's.
    assert_eq!(route.parent_span_id, router.span_id);
    assert_eq!(hello.parent_span_id, router.span_id);
    assert_eq!(attribute(&route, "capability").as_deref(), Some("greeting"));
    assert_eq!(
        attribute(&route, "capsule.plugin").as_deref(),
        Some("router")
    );
    // What each call cost rides on its span.
    assert_eq!(attribute(&router, "capsule.outcome").as_deref(), Some("ok"));
    assert_eq!(
        attribute(&router, "capsule.operation").as_deref(),
        Some("greet")
    );
    assert_eq!(
        attribute(&router, "capsule.host_calls.calls.count").as_deref(),
        Some("1")
    );
    assert_eq!(
        attribute(&router, "capsule.host_calls.trace.count").as_deref(),
        Some("3"),
        "start, set-attribute, and the end when the span dropped"
    );
    let fuel: u64 = attribute(&hello, "capsule.fuel.used")
        .unwrap()
        .parse()
        .unwrap();
    let limit: u64 = attribute(&hello, "capsule.fuel.limit")
        .unwrap()
        .parse()
        .unwrap();
    assert!(0 < fuel && fuel < limit, "{fuel} of {limit}");
    assert!(attribute(&hello, "capsule.memory.bytes").is_some());

    // An event carries its publisher's span to its delivery.
    let order = json!({"order_id": "T-1", "item": "lamp", "quantity": 1});
    let response = server
        .client
        .post(server.url("/v1/plugins/order-intake/call?op=place"))
        .header("traceparent", format!("00-{}-{caller}-01", "1".repeat(32)))
        .body(order.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let intake = collector.span("call order-intake").await;
    let delivery = collector.span("deliver order-audit").await;
    assert_eq!(delivery.trace_id, intake.trace_id);
    assert_eq!(delivery.parent_span_id, intake.span_id);
    assert_eq!(
        attribute(&delivery, "capsule.topic").as_deref(),
        Some("orders.created")
    );
    assert_eq!(
        attribute(&delivery, "capsule.outcome").as_deref(),
        Some("done")
    );

    // A call without trace context starts a trace of its own; a malformed
    // one is ignored, not trusted.
    let response = server
        .client
        .post(server.url("/v1/plugins/hello/call?op=greet"))
        .header("traceparent", "00-zz-not-a-trace-01")
        .body(r#"{"name":"Root"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let root = loop {
        let roots: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|(_, span)| span.name == "call hello" && span.parent_span_id.is_empty())
            .collect();
        if let Some((service, span)) = roots.into_iter().next() {
            assert_eq!(service, "capsule-test");
            break span;
        }
        assert!(std::time::Instant::now() < deadline, "no root span");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(hex(&root.trace_id), trace);
    server.stop().await.unwrap();
}
