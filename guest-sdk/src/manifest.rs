//! The plugin's static manifest: what it says about itself (as
//! [`Plugin::describe`]), the operations its [`Dispatch`](crate::Dispatch)
//! handles (with JSON Schemas for [`Dispatch::typed`](crate::Dispatch::typed)
//! handlers and descriptions from [`Dispatch::about`](crate::Dispatch::about)),
//! what it [requires](Plugin::requires) and the [metrics](Plugin::metrics) it
//! keeps.
//!
//! [`export_plugin!`](crate::export_plugin) exports it as the contract's
//! `manifest` function; `capsule sign` calls that once and embeds the answer
//! in the component, under the signature, so hosts know a plugin's
//! operations and dependencies before running it. Test it natively with
//! [`document`]:
//!
//! ```
//! use capsule_guest::manifest::{self, Requirement};
//! use capsule_guest::{Plugin, PluginError, PluginInfo, Request, Response};
//!
//! struct Gallery;
//!
//! impl Plugin for Gallery {
//!     fn requires() -> Vec<Requirement> {
//!         vec![Requirement::capability("thumbnail", "^0.1")]
//!     }
//!
//!     fn handle(request: Request) -> Result<Response, PluginError> {
//!         request
//!             .dispatch()
//!             .raw("show", |r| Ok(Response::bytes(r.payload)))
//!             .about("Shows a picture")
//!             .finish()
//!     }
//! }
//!
//! let info = PluginInfo {
//!     name: "gallery".into(),
//!     version: "1.0.0".into(),
//!     description: String::new(),
//!     capabilities: Vec::new(),
//! };
//! let doc: serde_json::Value = serde_json::from_str(&manifest::document::<Gallery>(info)).unwrap();
//! assert_eq!(doc["operations"][0]["name"], "show");
//! assert_eq!(doc["operations"][0]["description"], "Shows a picture");
//! assert_eq!(doc["requires"][0]["capability"], "thumbnail");
//! ```

use std::cell::RefCell;

use serde::Serialize;

use crate::{Plugin, PluginInfo, Request};

/// The manifest format this SDK writes (the host's `MANIFEST_FORMAT`).
pub const FORMAT: u32 = 1;

/// Something the plugin needs loaded beside it, with the versions that will
/// do (a Cargo-style semver range such as `^0.1`, `>=1.2, <2` or `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capability: Option<String>,
    version: String,
}

impl Requirement {
    /// The plugin the policy loads under `name`, in a version within
    /// `range`.
    pub fn plugin(name: impl Into<String>, range: impl Into<String>) -> Self {
        Requirement {
            plugin: Some(name.into()),
            capability: None,
            version: range.into(),
        }
    }

    /// Some plugin providing `capability`, in a version within `range`.
    pub fn capability(capability: impl Into<String>, range: impl Into<String>) -> Self {
        Requirement {
            plugin: None,
            capability: Some(capability.into()),
            version: range.into(),
        }
    }
}

/// One operation as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Operation {
    pub(crate) name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) pure: bool,
}

#[derive(Serialize)]
struct Document {
    format: u32,
    name: String,
    version: String,
    description: String,
    capabilities: Vec<String>,
    /// `None` when `handle` built no `Dispatch`: the operations are then
    /// unknown, not absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    operations: Option<Vec<Operation>>,
    requires: Vec<Requirement>,
    /// The JSON Schema of the plugin's configuration, if it declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Value>,
    /// The metrics the plugin keeps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    metrics: Vec<crate::metrics::Metric>,
    /// Distribution metadata: authors, license, links, tags, the grants the
    /// plugin needs, the contract it needs.
    metadata: serde_json::Value,
}

/// What a probe of `handle` collected.
#[derive(Default)]
struct Probe {
    /// Whether `handle` built a `Dispatch` at all.
    dispatched: bool,
    operations: Vec<Operation>,
}

/// Ends the probe however `handle` returns (or unwinds, natively).
struct ProbeGuard;

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        PROBE.with(|probe| probe.borrow_mut().take());
    }
}

thread_local! {
    /// Set while [`document`] probes `handle`: each handler registered on a
    /// [`Dispatch`](crate::Dispatch) is recorded here instead of matched.
    static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

/// Whether a probe is collecting operations; notes that a `Dispatch` was
/// built if so.
pub(crate) fn probing() -> bool {
    PROBE.with(|probe| match probe.borrow_mut().as_mut() {
        Some(probe) => {
            probe.dispatched = true;
            true
        }
        None => false,
    })
}

/// Records an operation during a probe.
pub(crate) fn record(operation: Operation) {
    PROBE.with(|probe| {
        if let Some(probe) = probe.borrow_mut().as_mut() {
            probe.operations.push(operation);
        }
    });
}

/// Sets the description of the operation recorded last during a probe.
pub(crate) fn describe_last(description: &str) {
    change_last(|last| last.description = description.to_owned());
}

/// Marks the operation recorded last during a probe as pure.
pub(crate) fn mark_last_pure() {
    change_last(|last| last.pure = true);
}

fn change_last(change: impl FnOnce(&mut Operation)) {
    PROBE.with(|probe| {
        if let Some(last) = probe
            .borrow_mut()
            .as_mut()
            .and_then(|probe| probe.operations.last_mut())
        {
            change(last);
        }
    });
}

/// The manifest document of plugin `P`, whose [`Plugin::describe`] is
/// given `from_cargo`. Its operations are found by running `P::handle` once
/// on an empty probe request, during which every [`Dispatch`](crate::Dispatch)
/// records its handlers instead of calling them; so keep `handle` a dispatch
/// (work done before it runs, in a sandbox without grants, and any host
/// call fails). A `handle` that builds no `Dispatch` leaves `operations`
/// out: unknown, which hosts tell from "none".
pub fn document<P: Plugin>(from_cargo: PluginInfo) -> String {
    document_with::<P>(from_cargo, "{}")
}

/// [`document`] with distribution `metadata` (a JSON object, as
/// `export_plugin!` reads it from the plugin's `Cargo.toml`: authors,
/// license, homepage, repository, documentation, tags, categories, grants,
/// `min_contract`). `min_contract` defaults to [`CONTRACT_VERSION`].
///
/// ```
/// # use capsule_guest::{Plugin, PluginError, PluginInfo, Request, Response};
/// # struct Echo;
/// # impl Plugin for Echo {
/// #     fn handle(r: Request) -> Result<Response, PluginError> { Ok(Response::bytes(r.payload)) }
/// # }
/// # let info = PluginInfo { name: "echo".into(), version: "1.0.0".into(),
/// #     description: String::new(), capabilities: Vec::new() };
/// let doc = capsule_guest::manifest::document_with::<Echo>(info, r#"{"tags": ["demo"]}"#);
/// let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
/// assert_eq!(doc["metadata"]["tags"][0], "demo");
/// assert_eq!(doc["metadata"]["min_contract"], capsule_guest::CONTRACT_VERSION);
/// ```
///
/// [`CONTRACT_VERSION`]: crate::CONTRACT_VERSION
pub fn document_with<P: Plugin>(from_cargo: PluginInfo, metadata: &str) -> String {
    let probed = {
        PROBE.with(|probe| *probe.borrow_mut() = Some(Probe::default()));
        let _end = ProbeGuard;
        let _ = P::handle(Request::new("", ""));
        PROBE.with(|probe| probe.borrow_mut().take())
    };
    let operations = probed.and_then(|probe| probe.dispatched.then_some(probe.operations));
    let info = P::describe(from_cargo);
    let document = Document {
        format: FORMAT,
        name: info.name,
        version: info.version,
        description: info.description,
        capabilities: info.capabilities,
        operations,
        requires: P::requires(),
        config: P::config_schema(),
        metrics: P::metrics(),
        metadata: with_contract(metadata),
    };
    serde_json::to_string(&document).unwrap_or_default()
}

/// `metadata` (a JSON object) with `min_contract` set to the SDK's contract
/// when it does not name one.
fn with_contract(metadata: &str) -> serde_json::Value {
    let mut metadata = match serde_json::from_str(metadata) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    metadata
        .entry("min_contract")
        .or_insert_with(|| crate::CONTRACT_VERSION.into());
    serde_json::Value::Object(metadata)
}

/// The JSON Schema of `T`, as the manifest carries it.
#[cfg(feature = "schema")]
pub(crate) fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}
