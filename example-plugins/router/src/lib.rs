//! A composite plugin: it answers each operation by routing the request,
//! unchanged, to whichever plugin provides a capability — so sub-plugins can
//! be swapped, reloaded or pinned by the operator without the router (or
//! its callers) knowing their names.
//!
//! - The config value `routes` maps operations to capabilities:
//!   `greet=greeting,make=thumbnail`. A routed call answers the provider's
//!   response with the metadata `routed-to` naming the capability.
//! - `routes` answers the table as JSON; any other operation is
//!   `unsupported`.
//! - It needs `calls = ["capability:greeting", "capability:thumbnail"]` (or
//!   whatever its routes name): a route the operator did not grant answers
//!   `denied`, and the callee runs under its own grants and limits.
//! - With `trace = {}` granted, each routed call is a `route` span (with
//!   the capability as an attribute) in the host's trace of the call.

use std::collections::BTreeMap;

use capsule_guest::manifest::Requirement;
use capsule_guest::trace::Span;
use capsule_guest::{
    Plugin, PluginError, PluginInfo, Request, Response, config, export_plugin, log, plugins,
};

/// `op=capability,op=capability` → operation → capability.
fn routes() -> Result<BTreeMap<String, String>, PluginError> {
    let text = config::require("routes")?;
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(op, cap)| (op.trim().to_owned(), cap.trim().to_owned()))
                .ok_or_else(|| {
                    PluginError::Failed(format!(
                        "the `routes` config value has `{entry}`, not `operation=capability`"
                    ))
                })
        })
        .collect()
}

struct Router;

impl Plugin for Router {
    fn describe(from_cargo: PluginInfo) -> PluginInfo {
        PluginInfo {
            capabilities: vec!["router".into()],
            ..from_cargo
        }
    }

    /// The providers the example policy routes to; a host refuses the
    /// router (`missing_dependency`) unless both are loaded.
    fn requires() -> Vec<Requirement> {
        vec![
            Requirement::capability("greeting", "^0.1"),
            Requirement::capability("thumbnail", "^0.1"),
        ]
    }

    fn handle(request: Request) -> Result<Response, PluginError> {
        let routes = routes()?;
        if request.operation == "routes" {
            return Response::json(&routes);
        }
        let Some(capability) = routes.get(&request.operation) else {
            return Err(PluginError::Unsupported(format!(
                "no route for operation `{}`",
                request.operation
            )));
        };
        log::info!("routing `{}` to `{capability}`", request.operation);
        // `?` keeps the callee's own error as it was and a denied route
        // a denial.
        let span = Span::start("route");
        let _ = span.set("capability", capability);
        match plugins::call_capability(capability, &request) {
            Ok(response) => Ok(response.with_metadata("routed-to", capability.as_str())),
            Err(err) => {
                span.fail(&err.to_string());
                Err(err.into())
            }
        }
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    fn host() -> MockHost {
        MockHost::new()
            .config("routes", "greet=greeting, make=thumbnail")
            .plugin("hello", |request| {
                Ok(Response::bytes(format!("hello got {}", request.operation)))
            })
            .capability("greeting", "hello")
            .trace()
    }

    #[test]
    fn an_operation_goes_to_the_provider_of_its_capability() {
        let host = host();
        let answer = host.call::<Router>(Request::new("greet", "{}")).unwrap();
        assert_eq!(answer.payload, b"hello got greet");
        assert_eq!(answer.metadata, [("routed-to".into(), "greeting".into())]);
        assert_eq!(host.calls()[0].0, "hello");
        let route = &host.spans()[0];
        assert_eq!(route.name, "route");
        assert_eq!(route.attributes, [("capability".into(), "greeting".into())]);
        assert!(route.ended && route.error.is_none());
    }

    #[test]
    fn an_ungranted_route_is_denied_and_an_unknown_one_unsupported() {
        let host = host();
        let denied = host.call::<Router>(Request::new("make", "{}"));
        assert!(matches!(denied, Err(PluginError::Denied(_))), "{denied:?}");
        assert!(
            host.spans()[0].error.is_some(),
            "the denied route's span failed"
        );
        let unknown = host.call::<Router>(Request::new("fly", "{}"));
        assert!(
            matches!(unknown, Err(PluginError::Unsupported(_))),
            "{unknown:?}"
        );
    }
}
