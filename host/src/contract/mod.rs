//! The `capsule:plugin` contract as seen from the host: one bindings module
//! per contract version (`v0_1` from the frozen `wit/v0.1/`, `v0_2` from
//! `wit/`), the tracks this host serves, the one handle on a plugin's
//! exports whatever its version, and conveniences on the request/response
//! types (shared by every version).

mod standard;
mod v0_1;
mod v0_2;

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, InstancePre, TypedFunc};

/// The standard WASI proposals answered as adapters (`wasi:keyvalue`,
/// `wasi:config`, `wasi:logging`).
pub(crate) use standard::wasi as standard_interfaces;
/// The host-service imports of contract 0.1.
pub(crate) use v0_1::capsule::plugin as interfaces;
/// The host-service imports of contract 0.2.
pub(crate) use v0_2::capsule::plugin as interfaces_v0_2;

/// The level of a plugin log line.
pub use v0_1::capsule::plugin::log::Level as LogLevel;
/// An event delivered to a plugin's `on-event`.
pub use v0_1::capsule::plugin::types::Event;
/// How a plugin disposed of an event.
pub use v0_1::capsule::plugin::types::EventOutcome;
/// An event a plugin forwards to another topic.
pub use v0_1::capsule::plugin::types::ForwardedEvent;
/// The error value a plugin returns when it refuses or fails a request.
pub use v0_1::capsule::plugin::types::PluginError;
/// What a plugin reports about itself from `describe`.
pub use v0_1::capsule::plugin::types::PluginInfo;
/// A request to a plugin: an operation name, a payload and metadata.
pub use v0_1::capsule::plugin::types::Request;
/// A successful plugin response: a payload and metadata.
pub use v0_1::capsule::plugin::types::Response;
/// A denial or failure a host service reports to a plugin.
pub use v0_1::capsule::plugin::types::ServiceError;

/// The WIT package name of the contract.
pub const CONTRACT_PACKAGE: &str = "capsule:plugin";

/// The newest contract version this host implements: what the SDK builds
/// against.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// Every contract version this host implements, oldest first: a plugin built
/// against any version on one of their tracks loads.
pub const CONTRACT_VERSIONS: &[&str] = &["0.1.0", CONTRACT_VERSION];

/// The contracts this host serves, for messages:
/// `capsule:plugin@0.1.0 and capsule:plugin@0.2.0`.
pub(crate) fn served_contracts() -> String {
    let names: Vec<String> = CONTRACT_VERSIONS
        .iter()
        .map(|version| format!("{CONTRACT_PACKAGE}@{version}"))
        .collect();
    names.join(" and ")
}

/// A component's exports, pre-linked: instantiate it to get [`Exports`].
pub(crate) struct PluginPre<T: 'static> {
    instance_pre: InstancePre<T>,
    handler: HandlerIndices,
    /// `capsule:plugin/health#check`, when the component exports it.
    health: Option<ComponentExportIndex>,
}

/// Where a contract version's `handler` functions are in a component.
enum HandlerIndices {
    V0_1(v0_1::PluginIndices),
    V0_2(v0_2::PluginIndices),
}

/// `health.check` as the host calls it.
type HealthCheck = TypedFunc<(), (Result<(), String>,)>;

impl<T: Send + 'static> PluginPre<T> {
    /// The exports of a component built against contract `version` (its
    /// track must be one this host serves).
    pub(crate) fn new(instance_pre: InstancePre<T>, version: &str) -> wasmtime::Result<Self> {
        let (handler, health) = if version.starts_with("0.1.") {
            (
                HandlerIndices::V0_1(v0_1::PluginIndices::new(&instance_pre)?),
                None,
            )
        } else {
            // `health` is outside the `plugin` world (a plugin built before
            // it existed has none), so it is looked up by name.
            let component = instance_pre.component();
            let health = component
                .get_export_index(None, format!("{CONTRACT_PACKAGE}/health@{version}"))
                .and_then(|interface| component.get_export_index(Some(&interface), "check"));
            (
                HandlerIndices::V0_2(v0_2::PluginIndices::new(&instance_pre)?),
                health,
            )
        };
        Ok(PluginPre {
            instance_pre,
            handler,
            health,
        })
    }

    /// Whether the component exports a `health` check.
    /// The component, for a profiler to name its functions.
    pub(crate) fn component(&self) -> &wasmtime::component::Component {
        self.instance_pre.component()
    }

    pub(crate) fn has_health(&self) -> bool {
        self.health.is_some()
    }

    /// A new instance in `store`.
    pub(crate) async fn instantiate_async(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Exports> {
        let instance = self.instance_pre.instantiate_async(&mut *store).await?;
        let handler = match &self.handler {
            HandlerIndices::V0_1(indices) => Handler::V0_1(indices.load(&mut *store, &instance)?),
            HandlerIndices::V0_2(indices) => Handler::V0_2(indices.load(&mut *store, &instance)?),
        };
        let health = match &self.health {
            Some(index) => Some(
                instance
                    .get_typed_func::<(), (Result<(), String>,)>(&mut *store, index)
                    .map_err(|err| {
                        err.context(
                            "the `health` export's `check` is not `func() -> result<_, string>`",
                        )
                    })?,
            ),
            None => None,
        };
        Ok(Exports { handler, health })
    }
}

/// One instance's `handler` export, whatever its contract version: the
/// functions are the same and take and return the same types.
enum Handler {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

/// One instance's exports: its `handler`, and its `health` check if it has
/// one.
pub(crate) struct Exports {
    handler: Handler,
    health: Option<HealthCheck>,
}

impl Exports {
    /// What the plugin's `health.check` answers; `None` for a plugin
    /// without one (0.1 plugins, and 0.2 plugins not built with the SDK's
    /// world), which counts as healthy.
    pub(crate) async fn health<T: Send>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Option<Result<(), String>>> {
        match &self.health {
            None => Ok(None),
            Some(check) => Ok(Some(check.call_async(store, ()).await?.0)),
        }
    }

    pub(crate) async fn describe<T: Send>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<PluginInfo> {
        match &self.handler {
            Handler::V0_1(e) => e.capsule_plugin_handler().call_describe(store).await,
            Handler::V0_2(e) => e.capsule_plugin_handler().call_describe(store).await,
        }
    }

    /// The manifest document a 0.2 plugin builds; `None` for 0.1 plugins,
    /// which have no manifest.
    pub(crate) async fn manifest<T: Send>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Option<String>> {
        match &self.handler {
            Handler::V0_1(_) => Ok(None),
            Handler::V0_2(e) => e
                .capsule_plugin_handler()
                .call_manifest(store)
                .await
                .map(Some),
        }
    }

    pub(crate) async fn init<T: Send>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        match &self.handler {
            Handler::V0_1(e) => e.capsule_plugin_handler().call_init(store).await,
            Handler::V0_2(e) => e.capsule_plugin_handler().call_init(store).await,
        }
    }

    pub(crate) async fn handle<T: Send>(
        &self,
        store: &mut Store<T>,
        request: &Request,
    ) -> wasmtime::Result<Result<Response, PluginError>> {
        match &self.handler {
            Handler::V0_1(e) => e.capsule_plugin_handler().call_handle(store, request).await,
            Handler::V0_2(e) => e.capsule_plugin_handler().call_handle(store, request).await,
        }
    }

    pub(crate) async fn on_event<T: Send>(
        &self,
        store: &mut Store<T>,
        event: &Event,
    ) -> wasmtime::Result<Result<EventOutcome, PluginError>> {
        match &self.handler {
            Handler::V0_1(e) => e.capsule_plugin_handler().call_on_event(store, event).await,
            Handler::V0_2(e) => e.capsule_plugin_handler().call_on_event(store, event).await,
        }
    }

    pub(crate) async fn shutdown<T: Send>(&self, store: &mut Store<T>) -> wasmtime::Result<()> {
        match &self.handler {
            Handler::V0_1(e) => e.capsule_plugin_handler().call_shutdown(store).await,
            Handler::V0_2(e) => e.capsule_plugin_handler().call_shutdown(store).await,
        }
    }
}

impl Request {
    /// A request for `operation` carrying `payload` and no metadata.
    pub fn new(operation: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Request {
            operation: operation.into(),
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Bytes this request occupies: payload, operation and metadata (each
    /// entry with a fixed overhead of 32 bytes).
    pub fn size(&self) -> usize {
        self.operation.len() + self.payload.len() + metadata_size(&self.metadata)
    }
}

impl Response {
    /// Bytes this response occupies: payload and metadata (each entry with
    /// a fixed overhead of 32 bytes).
    pub fn size(&self) -> usize {
        self.payload.len() + metadata_size(&self.metadata)
    }

    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

impl LogLevel {
    /// The level's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Bytes metadata occupies: every key and value, plus a fixed overhead per
/// entry so that many empty entries are not free.
fn metadata_size(metadata: &[(String, String)]) -> usize {
    metadata
        .iter()
        .map(|(k, v)| k.len() + v.len() + crate::limits::METADATA_ENTRY_OVERHEAD)
        .sum()
}

impl PluginError {
    /// The message the plugin gave with its error.
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidInput(msg)
            | PluginError::Unsupported(msg)
            | PluginError::Denied(msg)
            | PluginError::Failed(msg) => msg,
        }
    }
}

impl PluginInfo {
    /// Bytes this description occupies: every string, plus a fixed overhead
    /// per capability.
    pub fn size(&self) -> usize {
        self.name.len()
            + self.version.len()
            + self.description.len()
            + self
                .capabilities
                .iter()
                .map(|c| c.len() + crate::limits::METADATA_ENTRY_OVERHEAD)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versions_served_are_the_ones_in_wit() {
        for (wit, version, file) in [
            (
                include_str!("../../../wit/plugin.wit"),
                CONTRACT_VERSION,
                "wit/plugin.wit",
            ),
            (
                include_str!("../../../wit/v0.1/plugin.wit"),
                CONTRACT_VERSIONS[0],
                "wit/v0.1/plugin.wit",
            ),
        ] {
            let package = format!("package {CONTRACT_PACKAGE}@{version};");
            assert!(
                wit.lines().any(|line| line.trim() == package),
                "{file} does not declare `{package}`"
            );
        }
    }
}
