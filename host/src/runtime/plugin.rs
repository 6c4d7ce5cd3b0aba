//! A loaded plugin and its call path: one store per instance, limits set
//! before any guest code runs, every failure classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::Engine;

use crate::artifact::ComponentSummary;
use crate::contract::{PluginError, PluginInfo, PluginPre, Request, Response};
use crate::error::{CallError, CallFailure, OutputStream};
use crate::limits::{FailureContext, Limits, classify};
use crate::services::events::PublishedEvent;
use crate::services::log::{LogRecord, LogSink};
use crate::services::{Grants, PreparedGrants};
use crate::store::{StoreSetup, StoreState, fuel_used, new_store};

/// A successful call: the plugin's response, what it logged and published,
/// and what the call cost.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The plugin's response.
    pub response: Response,
    /// Lines the plugin logged during the call (log calls, stdout, stderr).
    pub logs: Vec<LogRecord>,
    /// Events the plugin published (to topics it was granted) during the call.
    pub events: Vec<PublishedEvent>,
    /// What the call consumed.
    pub stats: CallStats,
}

/// What one call consumed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallStats {
    /// Wall-clock time from admission to result, excluding time queued.
    pub duration: Duration,
    /// Fuel the plugin burned, instantiation and `init` included. `None` when
    /// the plugin trapped or was cut off (other than by running out of fuel,
    /// which reports the whole budget): wasmtime cannot tell how much fuel an
    /// interrupted function had burned.
    pub fuel_used: Option<u64>,
    /// `log` calls refused because the per-call log budget was spent.
    pub logs_refused: usize,
}

/// Public facts about a loaded plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDetails {
    /// The name calls use.
    pub name: String,
    /// What the plugin's `describe` returned.
    #[serde(serialize_with = "serialize_info")]
    pub info: PluginInfo,
    /// SHA-256 of the component file, as hex.
    pub digest: String,
    /// Ids of the trusted keys that signed it (empty if it loaded unsigned).
    pub signers: Vec<String>,
    /// Whether the compiled code came from the compile cache.
    pub compiled_from_cache: bool,
    /// The contract version the component was built against.
    pub contract_version: Option<String>,
    /// The component's top-level imports and exports.
    pub component: ComponentSummary,
    /// What the plugin may touch.
    pub grants: Grants,
    /// What the plugin may consume.
    pub limits: Limits,
}

fn serialize_info<S: serde::Serializer>(info: &PluginInfo, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut out = s.serialize_struct("PluginInfo", 4)?;
    out.serialize_field("name", &info.name)?;
    out.serialize_field("version", &info.version)?;
    out.serialize_field("description", &info.description)?;
    out.serialize_field("capabilities", &info.capabilities)?;
    out.end()
}

/// One call into a fresh instance: which export to invoke after `init`.
pub(crate) enum Invocation {
    Describe,
    Handle(Request),
}

/// What the invoked export returned.
pub(crate) enum Returned {
    Info(PluginInfo),
    Handled(Result<Response, PluginError>),
}

/// The result of [`LoadedPlugin::invoke`], with the log and cost either way.
pub(crate) struct Invoked {
    pub(crate) result: Result<Returned, CallFailure>,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) events: Vec<PublishedEvent>,
    pub(crate) stats: CallStats,
}

/// A compiled, linked, described plugin ready to serve calls.
pub(crate) struct LoadedPlugin {
    pub(crate) name: Arc<str>,
    pub(crate) details: PluginDetails,
    pub(crate) engine: Engine,
    pub(crate) pre: PluginPre<StoreState>,
    pub(crate) grants: Arc<PreparedGrants>,
    slots: Semaphore,
    queued: AtomicUsize,
}

impl LoadedPlugin {
    pub(crate) fn new(
        engine: Engine,
        pre: PluginPre<StoreState>,
        details: PluginDetails,
        grants: Arc<PreparedGrants>,
    ) -> LoadedPlugin {
        LoadedPlugin {
            name: Arc::clone(&grants.plugin),
            grants,
            slots: Semaphore::new(details.limits.max_instances.max(1)),
            queued: AtomicUsize::new(0),
            engine,
            pre,
            details,
        }
    }

    fn limits(&self) -> &Limits {
        &self.details.limits
    }

    /// Serves one request on a fresh instance.
    pub(crate) async fn call(&self, request: Request) -> Result<CallOutcome, CallError> {
        let limits = self.limits();
        let size = request.size();
        if size > limits.max_request_bytes {
            return Err(self.error(CallFailure::InputTooLarge {
                size,
                limit: limits.max_request_bytes,
            }));
        }
        let _slot = self.admit().await.map_err(|cause| self.error(cause))?;
        let invoked = self.invoke(Invocation::Handle(request)).await;
        let failure = match invoked.result {
            Ok(Returned::Handled(Ok(response))) => {
                if response.size() > limits.max_response_bytes {
                    CallFailure::OutputTooLarge {
                        stream: OutputStream::Response,
                        limit: limits.max_response_bytes,
                    }
                } else {
                    return Ok(CallOutcome {
                        response,
                        logs: invoked.logs,
                        events: invoked.events,
                        stats: invoked.stats,
                    });
                }
            }
            Ok(Returned::Handled(Err(plugin_error))) => CallFailure::Plugin(plugin_error),
            Ok(Returned::Info(_)) => unreachable!("a handle invocation returns a response"),
            Err(failure) => failure,
        };
        Err(CallError {
            plugin: self.name.to_string(),
            cause: failure,
            logs: invoked.logs,
            stats: invoked.stats,
        })
    }

    /// Waits for a free instance slot, or fails as `busy` when the queue is
    /// full or the wait outlasts [`Limits::queue_timeout`].
    async fn admit(&self) -> Result<SemaphorePermit<'_>, CallFailure> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let limits = self.limits();
        let busy = |queued| CallFailure::Busy {
            max_instances: limits.max_instances,
            queued,
        };
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave_queue = QueueGuard(&self.queued);
        if waiting >= limits.max_queued {
            return Err(busy(waiting));
        }
        match tokio::time::timeout(limits.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(CallFailure::Host("the plugin is shutting down".into())),
            Err(_elapsed) => Err(busy(waiting)),
        }
    }

    /// Instantiates the plugin in a new store, runs `init`, then the
    /// invocation, all under the plugin's limits.
    pub(crate) async fn invoke(&self, invocation: Invocation) -> Invoked {
        let limits = self.limits();
        let sink = Arc::new(LogSink::new(Arc::clone(&self.name), limits.max_log_bytes));
        let started = Instant::now();
        let setup = StoreSetup {
            engine: &self.engine,
            grants: &self.grants,
            limits,
            sink: &sink,
        };
        let mut store = match new_store(&setup, started + limits.timeout) {
            Ok(store) => store,
            Err(reason) => {
                return Invoked {
                    result: Err(CallFailure::Host(reason)),
                    logs: Vec::new(),
                    events: Vec::new(),
                    stats: CallStats::default(),
                };
            }
        };
        let work = async move {
            let result = async {
                let plugin = self.pre.instantiate_async(&mut store).await?;
                let handler = plugin.capsule_plugin_handler();
                if let Err(err) = handler.call_init(&mut store).await? {
                    return Ok(Err(err));
                }
                Ok(Ok(match invocation {
                    Invocation::Describe => {
                        Returned::Info(handler.call_describe(&mut store).await?)
                    }
                    Invocation::Handle(request) => {
                        Returned::Handled(handler.call_handle(&mut store, &request).await?)
                    }
                }))
            }
            .await;
            let fuel = fuel_used(&store, limits);
            let events = std::mem::take(&mut store.data_mut().events.published);
            (result, fuel, events)
        };
        // The epoch callback stops guest code at the deadline; this outer
        // timeout also bounds time spent blocked inside host calls.
        let (result, fuel, events) = match tokio::time::timeout(limits.timeout, work).await {
            Ok((Ok(Ok(returned)), fuel, events)) => (Ok(returned), Some(fuel), events),
            Ok((Ok(Err(init_error)), fuel, _)) => {
                (Err(init_failed(init_error)), Some(fuel), Vec::new())
            }
            Ok((Err(err), _, _)) => {
                let stderr = sink.stderr_tail();
                let context = FailureContext {
                    limits,
                    stderr_tail: Some(&stderr),
                    max_instances: limits.max_instances,
                };
                let failure = classify(&err, &context);
                // Compiled code keeps its fuel counter in a register and does
                // not write it back when it is interrupted, so after a trap the
                // store's counter is stale. Only an exhausted budget is exact.
                let fuel = match failure {
                    CallFailure::OutOfFuel { limit } => Some(limit),
                    _ => None,
                };
                (Err(failure), fuel, Vec::new())
            }
            Err(_elapsed) => (
                Err(CallFailure::Timeout {
                    limit: limits.timeout,
                }),
                None,
                Vec::new(),
            ),
        };
        let log = sink.end_call();
        Invoked {
            result,
            logs: log.records,
            events,
            stats: CallStats {
                duration: started.elapsed(),
                fuel_used: fuel,
                logs_refused: log.refused,
            },
        }
    }

    fn error(&self, cause: CallFailure) -> CallError {
        CallError::new(self.name.to_string(), cause)
    }
}

/// An `init` that returns an error fails the call with that error, marked so
/// the caller can tell it from a `handle` failure.
fn init_failed(err: PluginError) -> CallFailure {
    let mark = |msg: String| format!("init failed: {msg}");
    CallFailure::Plugin(match err {
        PluginError::InvalidInput(msg) => PluginError::InvalidInput(mark(msg)),
        PluginError::Unsupported(msg) => PluginError::Unsupported(mark(msg)),
        PluginError::Denied(msg) => PluginError::Denied(mark(msg)),
        PluginError::Failed(msg) => PluginError::Failed(mark(msg)),
    })
}

/// Leaves the wait queue when dropped, however the wait ended.
struct QueueGuard<'a>(&'a AtomicUsize);

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
