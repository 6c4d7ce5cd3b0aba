//! `router`: a composite plugin that routes by capability to `hello`
//! (greeting) and `thumbnail`, through the `calls` service: granted edges
//! only, the callee under its own limits, the request id carried along,
//! callees' fuel reported apart, ambiguity resolved by a pin.

use std::sync::{Arc, Mutex};

use capsule_host::services::calls::CallTarget;
use capsule_host::{
    CallContext, CallFailure, Grants, Host, Limits, Middleware, PluginError, PluginSpec, Request,
    RequestId,
};
use capsule_tests::plugin_path;
use capsule_tests::plugins::{HELLO, ROUTER, THUMBNAIL};
use serde_json::json;

/// Records every call the host makes: the plugin and the request's
/// metadata, nested calls included.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<Call>>>);

/// A plugin called, and its request's metadata.
type Call = (String, Vec<(String, String)>);

impl Middleware for Seen {
    fn before(&self, call: &mut CallContext<'_>) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push((call.plugin.to_owned(), call.request.metadata.clone()));
        Ok(())
    }
}

fn targets(edges: &[&str]) -> Vec<CallTarget> {
    edges
        .iter()
        .map(|e| CallTarget::parse(e).unwrap())
        .collect()
}

async fn router_host(edges: &[&str], seen: &Seen) -> Host {
    let host = capsule_tests::host_builder()
        .middleware(RequestId)
        .middleware(seen.clone())
        .build()
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(HELLO)))
        .await
        .unwrap();
    host.load(PluginSpec::from_path(plugin_path(THUMBNAIL)))
        .await
        .unwrap();
    host.load(
        PluginSpec::from_path(plugin_path(ROUTER))
            .grants(Grants {
                calls: targets(edges),
                ..Grants::default()
            })
            .config("routes", "greet=greeting,make=thumbnail"),
    )
    .await
    .unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_capability_carrying_the_request_id_and_reporting_callee_fuel() {
    let seen = Seen::default();
    let host = router_host(&["capability:greeting", "capability:thumbnail"], &seen).await;
    let greeted = host
        .call(
            ROUTER,
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(greeted.response.payload, br#"{"greeting":"Hello, Ada!"}"#);
    assert!(
        greeted
            .response
            .metadata
            .contains(&("routed-to".into(), "greeting".into()))
    );
    // The callee's fuel is its own, reported apart from the router's.
    assert!(greeted.stats.callee_fuel > 0, "{:?}", greeted.stats);
    assert!(greeted.stats.fuel_used.unwrap() > 0);

    let calls = seen.0.lock().unwrap().clone();
    let (first, second) = (&calls[0], &calls[1]);
    assert_eq!((first.0.as_str(), second.0.as_str()), (ROUTER, HELLO));
    let id = |metadata: &Vec<(String, String)>| {
        metadata
            .iter()
            .find(|(k, _)| k == "request-id")
            .map(|(_, v)| v.clone())
    };
    assert!(id(&first.1).is_some());
    assert_eq!(id(&first.1), id(&second.1), "the request id went along");
    assert!(
        second.1.contains(&("capsule-caller".into(), ROUTER.into())),
        "{:?}",
        second.1
    );

    let image = json!({"image": {"width": 2, "height": 2, "pixels": [1, 2, 3, 4]}, "max": 1});
    let made = host
        .call(ROUTER, Request::new("make", image.to_string()))
        .await
        .unwrap();
    assert_eq!(
        made.response.payload,
        br#"{"width":1,"height":1,"pixels":[1]}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_route_is_denied_and_the_callees_own_error_comes_back() {
    let host = router_host(&["capability:greeting"], &Seen::default()).await;
    let denied = host
        .call(ROUTER, Request::new("make", "{}"))
        .await
        .unwrap_err();
    match &denied.cause {
        CallFailure::Plugin(PluginError::Denied(why)) => {
            assert!(why.contains("`thumbnail` was not granted"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // hello's own invalid-input reaches the router's caller as it was.
    let invalid = host
        .call(ROUTER, Request::new("greet", "not json"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            invalid.cause,
            CallFailure::Plugin(PluginError::InvalidInput(_))
        ),
        "{invalid}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_runs_under_its_own_limits() {
    let host = router_host(&["capability:greeting"], &Seen::default()).await;
    // hello may answer at most 16 bytes: its limit, not the router's.
    host.reload_with(PluginSpec::from_path(plugin_path(HELLO)).limits(Limits {
        max_response_bytes: 16,
        ..Limits::default()
    }))
    .await
    .unwrap();
    let err = host
        .call(
            ROUTER,
            Request::new("greet", json!({"name": "Ada"}).to_string()),
        )
        .await
        .unwrap_err();
    match &err.cause {
        CallFailure::Plugin(PluginError::Failed(why)) => {
            assert!(
                why.contains("the callee failed (output_too_large)"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_are_ambiguous_until_the_operator_pins_one() {
    let seen = Seen::default();
    let host = router_host(&["capability:greeting"], &seen).await;
    host.load(PluginSpec::from_path(plugin_path(HELLO)).with_name("hello-2"))
        .await
        .unwrap();
    let greet = || Request::new("greet", json!({"name": "Ada"}).to_string());
    let err = host.call(ROUTER, greet()).await.unwrap_err();
    assert!(err.to_string().contains("ambiguous"), "{err}");
    host.pin_capability("greeting", "hello-2");
    host.call(ROUTER, greet()).await.unwrap();
    let last = seen.0.lock().unwrap().last().unwrap().0.clone();
    assert_eq!(last, "hello-2");
}
