//! Capsule runs untrusted WebAssembly plugins: each one a component built
//! against the `capsule:plugin` contract, granted only the host services its
//! operator allows, and stopped with a typed error when it exceeds its fuel,
//! memory, stack, time or output limits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_host::{Host, PluginSpec, Request};
//!
//! let host = Host::builder().build()?;
//! host.load(PluginSpec::from_path("target/plugins/hello.wasm").config("greeting", "Hi"))
//!     .await?;
//! match host.call("hello", Request::new("greet", r#"{"name":"Ada"}"#)).await {
//!     Ok(outcome) => println!("{}", String::from_utf8_lossy(&outcome.response.payload)),
//!     Err(err) => eprintln!("{} failed ({}): {}", err.plugin, err.kind(), err.cause),
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

// The layers, bottom up (`docs/architecture.md`; `cargo xtask layers`,
// run by `cargo xtask test`, fails on any cycle and prints them):
// data — bounds, limits, text, units; contract, engine, input; artifact,
// outcome — then error; services; admission, policy, sandbox; runtime and
// check; serve on top (and the CLI crate above the library).
pub mod access;
mod admission;
pub mod artifact;
pub mod audit;
pub mod backend;
pub mod bounds;
pub mod check;
mod contract;
pub mod distribution;
mod engine;
mod error;
pub mod input;
mod limits;
#[cfg(any(feature = "nats", feature = "oci"))]
mod local_server;
mod outcome;
mod policy;
mod runtime;
mod sandbox;
mod secret;
#[cfg(feature = "serve")]
pub mod serve;
pub mod services;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod text;
pub mod tls;
pub mod units;

pub use artifact::cache::{CacheError, CacheKey, CacheKeyError, CacheStats};
pub use artifact::keys::{KeyError, KeyId, PublicKey, SecretKey};
pub use contract::{
    CONTRACT_PACKAGE, CONTRACT_VERSION, CONTRACT_VERSIONS, LogLevel, PluginError, PluginInfo,
    Request, Response, ServiceError,
};
pub use contract::{Event, EventOutcome, ForwardedEvent};
pub use engine::{AllocationMode, EngineOptions, Interruption, PoolingOptions};
pub use error::{Budget, CallError, CallFailure, ErrorKind, LoadError, LoadFailure, OutputStream};
pub use limits::{BusOptions, Limits};
pub use outcome::{CallOutcome, CallStats, LogRecord, LogSource, PublishedEvent};
pub use policy::{
    HostPolicy, OciOrigin, Overrides, PipelinePolicy, PluginPolicy, Policy, PolicyError,
    PolicyErrors,
};
pub use runtime::{
    ApplyError, BackendHealth, BusEvent, CallContext, CallStream, Cluster, ClusterHost, DeadLetter,
    FailedChange, HEALTH_TIMEOUT, HEALTH_TTL, HealthCheck, HistorySnapshot, Host, HostBuilder,
    HostError, Job, JobError, JobFailure, JobResult, JobRunner, JobState, JobSubmission, LastError,
    Middleware, NotLoaded, Pipeline, PipelineError, PluginDetails, PluginHealth, PluginHealthState,
    PluginSource, PluginSpec, PluginState, PluginStatus, PolicyChanges, REQUEST_ID, Readiness,
    RequestId, RolloutError, RolloutPlan, RolloutState, RolloutStatus, Sample, ServedPlugin,
    StreamItem, Subscription, TrackStats,
};
pub use sandbox::host_calls::ServiceCalls;
pub use services::grants::{Grants, GrantsSummary};
