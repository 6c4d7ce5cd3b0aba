//! The call path through the host: registry lookup, pause and circuit
//! checks, middleware, the plugin call itself, metrics, a tracing span, and
//! publishing the events the call produced. Pipelines chain calls.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::Instrument;

use super::Host;
use super::breaker::Admission;
use super::commit::{Exclusive, MAX_ATTEMPTS};
use super::metrics::Metrics;
use super::middleware::{CallContext, Middleware};
use super::pipeline::PipelineError;
use super::plugin::{Held, LoadedPlugin};
use super::pure::Lookup;
use super::registry::Slot;
use super::rollout::{Track, judged};
use crate::contract::Request;
use crate::error::{CallError, CallFailure};
use crate::outcome::CallOutcome;
use crate::services::calls::{CallScope, propagated};
use crate::services::transaction::{SharedTransaction, Transaction, lock};
use crate::telemetry::{self, Span, SpanKind, Value};
use crate::text::log_field;

/// What surrounds every call: the embedder's middleware and the metrics.
pub(crate) struct Dispatch {
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) metrics: Metrics,
}

impl Host {
    /// Calls a plugin's `handle` with `request`. Safe to use from many tasks
    /// at once. Events the plugin published during a successful call are put
    /// on the bus before this returns. With the NATS backend, a plugin this
    /// host has not loaded is called on a host of the deployment that
    /// serves it (`unknown_plugin` when none does).
    pub async fn call(&self, plugin: &str, request: Request) -> Result<CallOutcome, CallError> {
        self.call_scoped(plugin, request, CallScope::default())
            .await
    }

    /// Calls `plugin`'s `handle` once per request, in order, on one
    /// instance: one admission to an instance slot for the whole batch, and
    /// the instance that served one item serves the next (an item that
    /// traps or times out loses it; the next gets a fresh one). Each item is
    /// otherwise its own call: its own fuel, deadline and output limits, its
    /// own transaction committed before the next item runs (so an item sees
    /// the writes of those before it), its own middleware, metrics and span,
    /// and its own result; one item failing does not stop the others. The
    /// batch counts as one use of the instance toward `recycle_after`.
    /// The answers together are bounded by the plugin's
    /// `max_response_bytes`: once they pass it, the remaining requests are
    /// not run and each is answered `output_too_large` (stream `batch`), so
    /// a batch holds at most twice one answer's limit whatever its size.
    /// More than the plugin's `max_batch` requests are refused whole
    /// (`input_too_large`), as is a plugin this host has not loaded
    /// (`unknown_plugin`; batches are not forwarded to other hosts).
    pub async fn call_batch(
        &self,
        plugin: &str,
        requests: Vec<Request>,
    ) -> Result<Vec<Result<CallOutcome, CallError>>, CallError> {
        let Some(slot) = self.slot(plugin) else {
            return Err(CallError::new(plugin, CallFailure::UnknownPlugin));
        };
        let limit = slot.current().limits().max_batch;
        if requests.len() > limit {
            return Err(CallError::new(
                plugin,
                CallFailure::BatchTooLarge {
                    items: requests.len(),
                    limit,
                },
            ));
        }
        let budget = slot.current().limits().max_response_bytes;
        drop(slot);
        let mut held = Held::default();
        let mut answered = 0usize;
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            if answered > budget {
                let spent = CallFailure::OutputTooLarge {
                    stream: crate::error::OutputStream::Batch,
                    limit: budget,
                };
                results.push(Err(CallError::new(plugin, spent)));
                continue;
            }
            let span = log_span(plugin, &request);
            let result =
                Box::pin(self.call_in_span(plugin, request, CallScope::default(), Some(&mut held)))
                    .instrument(span)
                    .await;
            // A plugin's own error message is an answer too, as large.
            let size = match &result {
                Ok(outcome) => outcome.response.size(),
                Err(CallError {
                    cause: CallFailure::Plugin(error),
                    ..
                }) => error.message().len(),
                Err(_) => 0,
            };
            answered = answered.saturating_add(size);
            results.push(result);
        }
        Ok(results)
    }

    /// Calls `plugin` like [`Host::call`] and profiles the guest while it
    /// runs: the second value is the profile in the Firefox profiler's
    /// processed format (JSON, open it at <https://profiler.firefox.com>),
    /// sampled on the epoch tick; `None` when the call was stopped before it
    /// returned (a timeout drops the instance and its samples), never ran
    /// (refused, unknown, busy), or the engine has no epochs (sampling
    /// needs [`crate::Interruption::Epoch`]; the default fuel yields take no
    /// samples, and `capsule run --profile` asks for epochs). Plugins it
    /// calls are not profiled. Meant for one call at a time, by an operator
    /// (`capsule run --profile`): a profile grows with the call's length.
    pub async fn call_profiled(
        &self,
        plugin: &str,
        request: Request,
    ) -> (Result<CallOutcome, CallError>, Option<Vec<u8>>) {
        let profile = Arc::new(crate::telemetry::profile::ProfileRequest::default());
        let scope = CallScope {
            profile: Some(Arc::clone(&profile)),
            ..CallScope::default()
        };
        let result = self.call_scoped(plugin, request, scope).await;
        (result, profile.take_json())
    }

    /// A call within `scope`: from the host (the default scope) or from
    /// another plugin through the `calls` service.
    pub(crate) async fn call_scoped(
        &self,
        plugin: &str,
        request: Request,
        scope: CallScope,
    ) -> Result<CallOutcome, CallError> {
        let span = log_span(plugin, &request);
        // Boxed, like the plugin's own call below: a caller moves this
        // future (into a task, a timeout, `block_on`) and would otherwise
        // copy all of it. (No `async fn` in between either: each layer
        // would copy the boxed future's parent again.)
        Box::pin(self.call_in_span(plugin, request, scope, None))
            .instrument(span)
            .await
    }

    async fn call_in_span(
        &self,
        plugin: &str,
        request: Request,
        scope: CallScope,
        held: Option<&mut Held>,
    ) -> Result<CallOutcome, CallError> {
        let Some(slot) = self.slot(plugin) else {
            // A plugin this host has not loaded may be served by another
            // host of the deployment: a call from outside goes there; one
            // from a plugin or a transaction stays here (its effects would
            // join a transaction only this host holds).
            #[cfg(feature = "nats")]
            if let Some(calls) = &self.inner.shared_calls
                && scope.chain.is_none()
                && scope.enclosing.is_none()
                && !scope.forwarded
            {
                return self.forward(calls, plugin, request, &scope).await;
            }
            return Err(CallError::new(plugin, CallFailure::UnknownPlugin));
        };
        // A plugin's call hands on its caller's span, made on this host.
        let mut traced = self.call_span(&slot.name, &request, scope.chain.is_none());
        let scope = CallScope {
            span: traced.as_ref().map(Span::context),
            ..scope
        };
        // The request is kept for the middleware's `after`/`on-error` hooks
        // only when there are hooks to run.
        let (result, kept) = if self.inner.dispatch.middleware.is_empty() {
            (self.call_slot(&slot, request, scope, held).await, None)
        } else {
            self.call_with_middleware(&slot, request, scope, held).await
        };
        let (outcome, stats) = match &result {
            Ok(outcome) => ("ok", &outcome.stats),
            Err(err) => (err.kind().as_str(), &err.stats),
        };
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("outcome", outcome);
            span.record("duration_us", stats.duration.as_micros() as u64);
            if let Some(fuel) = stats.fuel_used {
                span.record("fuel", fuel);
            }
        }
        if let Some(span) = &mut traced {
            record_call(span, result.as_ref().err(), stats);
        }
        drop(traced);
        slot.metrics.host_calls(&stats.host_calls);
        match &result {
            Ok(_) => {
                slot.metrics.ok(stats.duration, stats.fuel_used);
                slot.history.record(stats.duration, stats.fuel_used, None);
            }
            Err(err) => {
                let kind = err.kind().as_str();
                self.inner.dispatch.metrics.call(
                    plugin,
                    kind,
                    stats.duration.as_secs_f64(),
                    stats.fuel_used,
                );
                slot.history
                    .record(stats.duration, stats.fuel_used, Some((kind, &err.cause)));
            }
        }
        match result {
            Ok(mut outcome) => {
                if let Some(request) = &kept {
                    for middleware in &self.inner.dispatch.middleware {
                        middleware.after(plugin, request, &mut outcome);
                    }
                }
                Ok(outcome)
            }
            Err(err) => {
                if let Some(request) = &kept {
                    for middleware in &self.inner.dispatch.middleware {
                        middleware.on_error(plugin, request, &err);
                    }
                }
                Err(err)
            }
        }
    }

    /// The host's tracer, when it exports traces (`[host.telemetry]`).
    pub(crate) fn tracer(&self) -> Option<&crate::telemetry::Tracing> {
        self.inner.loader.services.tracing.as_deref()
    }

    /// The span of a call to `plugin`, when the host traces: a child of the
    /// request's `traceparent` (`remote`: from outside this host), or the
    /// root of a new trace.
    fn call_span(&self, plugin: &str, request: &Request, remote: bool) -> Option<Span> {
        let tracing = self.tracer()?;
        let parent = telemetry::parent_of(&request.metadata);
        let mut span = tracing.span(format!("call {plugin}"), SpanKind::Server, parent, remote);
        if span.recording() {
            span.set("capsule.plugin", Value::from(plugin));
            span.set(
                "capsule.operation",
                Value::from(telemetry::bounded(&request.operation)),
            );
        }
        Some(span)
    }

    /// Runs the `before` hooks, then the call; hands back the request for
    /// the `after` hooks.
    async fn call_with_middleware(
        &self,
        slot: &Slot,
        mut request: Request,
        scope: CallScope,
        held: Option<&mut Held>,
    ) -> (Result<CallOutcome, CallError>, Option<Request>) {
        let started = Instant::now();
        for middleware in &self.inner.dispatch.middleware {
            let mut context = CallContext {
                plugin: &slot.name,
                request: &mut request,
                started,
            };
            if let Err(reason) = middleware.before(&mut context) {
                let err = CallError::new(slot.name.to_string(), CallFailure::Rejected(reason));
                return (Err(err), Some(request));
            }
        }
        let result = self.call_slot(slot, request.clone(), scope, held).await;
        (result, Some(request))
    }

    /// The call itself: the pause check, then the current version behind
    /// its circuit breaker — or, during a rollout, the version the rollout
    /// picks, whose outcome the rollout counts (and may roll back on).
    async fn call_slot(
        &self,
        slot: &Slot,
        request: Request,
        scope: CallScope,
        held: Option<&mut Held>,
    ) -> Result<CallOutcome, CallError> {
        if slot.paused.load(Ordering::Acquire) {
            return Err(CallError::new(slot.name.to_string(), CallFailure::Paused));
        }
        let Some(rollout) = slot.rollout() else {
            return self
                .call_version(slot, slot.current(), request, scope, held)
                .await;
        };
        let track = rollout.track_for(&request);
        let result = match track {
            Track::Stable => {
                self.call_version(slot, slot.current(), request, scope, held)
                    .await
            }
            // The new version is judged by the rollout, not the breaker: its
            // failures roll it back instead of closing the plugin.
            Track::Canary => {
                let canary = Arc::clone(&rollout.canary);
                self.call_unguarded(&canary, request, scope, held).await
            }
        };
        let (kind, duration) = match &result {
            Ok(outcome) => (Ok(()), outcome.stats.duration),
            Err(err) => (Err(err.kind()), err.stats.duration),
        };
        self.inner.dispatch.metrics.rollout_call(
            &slot.name,
            track,
            kind.map_or_else(|kind| kind.as_str(), |()| "ok"),
            duration.as_secs_f64(),
        );
        if let Some(failed) = judged(result.as_ref().map(|_| ()).map_err(|err| &err.cause))
            && let Some(reason) = rollout.record(track, failed, duration)
        {
            self.roll_back(slot, &rollout, reason);
        }
        result
    }

    /// A call to `version` behind the plugin's circuit breaker.
    async fn call_version(
        &self,
        slot: &Slot,
        version: Arc<LoadedPlugin>,
        request: Request,
        scope: CallScope,
        held: Option<&mut Held>,
    ) -> Result<CallOutcome, CallError> {
        let limits = version.limits();
        // The ticket reports the call's end; if this future is dropped first
        // (the client went away), dropping the ticket frees a probe's place.
        let ticket = match slot.breaker.admit(limits.circuit_cooldown) {
            Admission::Admit(ticket) => ticket,
            Admission::Refuse(retry_in) => {
                return Err(CallError::new(
                    slot.name.to_string(),
                    CallFailure::CircuitOpen { retry_in },
                ));
            }
        };
        let result = self.call_unguarded(&version, request, scope, held).await;
        ticket.record(
            result.as_ref().map(|_| ()).map_err(CallError::kind),
            limits.circuit_failures,
            limits.circuit_cooldown,
        );
        result
    }

    /// Runs the call on `version` and settles what it buffered.
    async fn call_unguarded(
        &self,
        version: &Arc<LoadedPlugin>,
        request: Request,
        scope: CallScope,
        mut held: Option<&mut Held>,
    ) -> Result<CallOutcome, CallError> {
        // What the call hands on to the plugins it calls, after the
        // middleware (which may have given it a request id).
        let scope = CallScope {
            propagated: propagated(&request, scope.span),
            ..scope
        };
        // A pure operation asked again is answered from the cache.
        let remember = if version.pure.is_pure(&request.operation) {
            let started = Instant::now();
            let lookup = version.pure.lookup(&request);
            let metrics = &self.inner.dispatch.metrics;
            metrics.cache_lookup(&version.name, lookup.is_ok());
            match lookup {
                Ok(response) => return Ok(cached(version, response, started)),
                Err(Lookup::Miss(key)) => Some(key),
                Err(Lookup::Off | Lookup::NotPure) => None,
            }
        } else {
            None
        };
        let enclosing = scope.enclosing.clone();
        let again = (enclosing.is_none() && version.may_conflict())
            .then(|| (request.clone(), scope.clone()));
        // Boxed: the plugin's call (instance, wasmtime call, commit) is a
        // 10 KB future, and every async fn above held it inline, twice or
        // more at each level (the call's own and a rerun's). The future of
        // `Host::call` was 94 KB: memcpy, mostly moving it, was 43% of a
        // warm call's instructions under callgrind, and boxing cut the count
        // by 23% (the allocations cost some back). Wall-clock time in
        // release did not move measurably; each call in flight (a task in
        // `capsule serve`) now holds kilobytes, not 94 KB.
        let first = Box::pin(version.call(request, scope, held.as_deref_mut())).await;
        let result = match first {
            // Most calls change nothing: nothing to join or commit.
            Ok((outcome, transaction)) if transaction.is_empty() => Ok(outcome),
            first => Box::pin(self.settle(version, first, enclosing, again, held)).await,
        };
        // Only answers are kept, never errors.
        if let (Some(key), Ok(outcome)) = (remember, &result) {
            version.pure.remember(*key, &outcome.response);
        }
        result
    }

    /// Settles what a call buffered: joined to the enclosing transaction,
    /// or committed (the events come back in the outcome, already on the
    /// bus). A call that loses to a concurrent commit runs again with
    /// `again` (its request and scope, kept when a rerun is possible),
    /// holding its namespaces, when that repeats nothing outside its
    /// transaction.
    async fn settle(
        &self,
        plugin: &Arc<LoadedPlugin>,
        first: Result<(CallOutcome, Transaction), CallError>,
        enclosing: Option<SharedTransaction>,
        again: Option<(Request, CallScope)>,
        mut batch: Option<&mut Held>,
    ) -> Result<CallOutcome, CallError> {
        let mut result = first;
        let mut held = None;
        for attempt in 1.. {
            let (mut outcome, transaction) = result?;
            if let Some(enclosing) = &enclosing {
                if let Err(over) = lock(enclosing).absorb(transaction) {
                    return Err(CallError {
                        plugin: plugin.name.to_string(),
                        cause: CallFailure::QuotaExceeded(over),
                        logs: outcome.logs,
                        stats: outcome.stats,
                    });
                }
                return Ok(outcome);
            }
            let wait = plugin.limits().timeout;
            match self
                .commit(
                    &plugin.name,
                    transaction,
                    held.as_ref().map(|held: &Exclusive| held.holder),
                    0,
                    wait,
                )
                .await
            {
                Ok(events) => {
                    outcome.events = events;
                    return Ok(outcome);
                }
                Err(refused) => {
                    let store = &self.inner.loader.services.kv_store;
                    // A shared store gets two more runs, holding the
                    // namespaces' gates in the store too: a commit another
                    // host checked just before they were taken can still
                    // beat the first of them, never the second.
                    let runs = MAX_ATTEMPTS + 2 * u32::from(store.shared());
                    let rerun = match (&again, &refused.conflict) {
                        (Some(again), Some(namespaces)) if attempt < runs && !refused.escaped => {
                            Some((again.clone(), namespaces))
                        }
                        _ => None,
                    };
                    let Some(((request, scope), namespaces)) = rerun else {
                        return Err(CallError {
                            plugin: plugin.name.to_string(),
                            cause: refused.failure,
                            logs: outcome.logs,
                            stats: outcome.stats,
                        });
                    };
                    match &mut held {
                        None => held = Some(self.inner.commits.exclusive(namespaces).await),
                        // Lost again with this host's gates held: to
                        // another host, whose reruns the store's gates
                        // hold off.
                        Some(held) => held.hold_in_store(store, namespaces, wait).await,
                    }
                    result = plugin.call(request, scope, batch.as_deref_mut()).await;
                }
            }
        }
        unreachable!("the loop returns by its last attempt")
    }

    /// Calls a pipeline: each stage's response payload becomes the next
    /// stage's request payload, with the same operation and the caller's
    /// metadata. The first failing stage stops it, and the error names it.
    /// In a transactional pipeline, the stages' writes and events are kept
    /// only if every stage succeeds, and commit together at the end.
    pub async fn call_pipeline(
        &self,
        pipeline: &str,
        request: Request,
    ) -> Result<CallOutcome, PipelineError> {
        let defined = {
            let pipelines = self
                .inner
                .registry
                .pipelines
                .read()
                .unwrap_or_else(|p| p.into_inner());
            match pipelines.get(pipeline) {
                Some(defined) => defined.clone(),
                None => return Err(PipelineError::Unknown(pipeline.to_owned())),
            }
        };
        let stages = &defined.stages;
        let together = defined.transaction.then(SharedTransaction::default);
        let started = Instant::now();
        let mut request = request;
        // The stages' spans are children of the pipeline's.
        let mut traced = self.tracer().map(|tracing| {
            let parent = telemetry::parent_of(&request.metadata);
            let mut span = tracing.span(
                format!("pipeline {pipeline}"),
                SpanKind::Server,
                parent,
                true,
            );
            span.set("capsule.pipeline", Value::from(pipeline));
            span.set("capsule.stages", Value::from(stages.len() as u64));
            request
                .metadata
                .retain(|(key, _)| key != telemetry::TRACEPARENT);
            request.metadata.push((
                telemetry::TRACEPARENT.to_owned(),
                span.context().to_string(),
            ));
            span
        });
        let result = self
            .run_pipeline(pipeline, &defined, together, started, request)
            .await;
        if let Some(span) = &mut traced {
            match &result {
                Ok(_) => span.set("capsule.outcome", Value::from("ok")),
                Err(err) => {
                    span.set("capsule.outcome", Value::from("error"));
                    span.fail(telemetry::bounded(&err.to_string()));
                }
            }
        }
        result
    }

    /// Runs a pipeline's stages in order, then commits them together if it
    /// is transactional.
    async fn run_pipeline(
        &self,
        pipeline: &str,
        defined: &super::Pipeline,
        together: Option<SharedTransaction>,
        started: Instant,
        mut request: Request,
    ) -> Result<CallOutcome, PipelineError> {
        let stages = &defined.stages;
        let mut logs = Vec::new();
        let mut events = Vec::new();
        let mut fuel: Option<u64> = Some(0);
        let mut last = None;
        for (stage, plugin) in stages.iter().enumerate() {
            let scope = CallScope {
                enclosing: together.clone(),
                ..CallScope::default()
            };
            let outcome = self
                .call_scoped(plugin, request.clone(), scope)
                .await
                .map_err(|error| PipelineError::Stage {
                    pipeline: pipeline.to_owned(),
                    stage,
                    stages: stages.len(),
                    error: Box::new(error),
                })?;
            request.payload = outcome.response.payload.clone();
            fuel = fuel
                .zip(outcome.stats.fuel_used)
                .map(|(a, b)| a.saturating_add(b));
            logs.extend(outcome.logs.iter().cloned());
            events.extend(outcome.events.iter().cloned());
            last = Some(outcome);
        }
        let Some(mut outcome) = last else {
            return Err(PipelineError::Unknown(format!(
                "{pipeline} (it has no stages)"
            )));
        };
        if let Some(together) = together {
            let transaction = lock(&together).finish();
            events = self
                .commit(
                    pipeline,
                    transaction,
                    None,
                    0,
                    self.default_limits().timeout,
                )
                .await
                .map_err(|refused| PipelineError::Commit {
                    pipeline: pipeline.to_owned(),
                    error: Box::new(CallError {
                        plugin: stages.last().cloned().unwrap_or_default(),
                        cause: refused.failure,
                        logs: Vec::new(),
                        stats: outcome.stats.clone(),
                    }),
                })?;
        }
        outcome.logs = logs;
        outcome.events = events;
        outcome.stats.fuel_used = fuel;
        outcome.stats.duration = started.elapsed();
        Ok(outcome)
    }
}

/// The log span of one call to `plugin`.
fn log_span(plugin: &str, request: &Request) -> tracing::Span {
    // Both come from the caller: escaped and truncated for the log.
    tracing::info_span!(
        "plugin_call",
        plugin = %log_field(plugin),
        operation = %log_field(&request.operation),
        outcome = tracing::field::Empty,
        duration_us = tracing::field::Empty,
        fuel = tracing::field::Empty,
        request_id = tracing::field::Empty,
    )
}

/// The outcome of a call answered from `version`'s response cache: the
/// plugin did not run.
fn cached(
    version: &LoadedPlugin,
    response: crate::contract::Response,
    started: Instant,
) -> CallOutcome {
    let limits = version.limits();
    CallOutcome {
        response,
        logs: Vec::new(),
        events: Vec::new(),
        stats: crate::outcome::CallStats {
            duration: started.elapsed(),
            fuel_limit: limits.fuel.filter(|_| version.metering().fuel),
            memory_limit: limits.memory_bytes,
            cached: true,
            ..crate::outcome::CallStats::default()
        },
    }
}

/// Records on `span` how a call went and what it cost: its outcome, fuel
/// against its limit, linear memory against its limit, whether it needed
/// a fresh instance, and its host calls per service (count and time); a
/// failed call's span is marked failed with the error.
fn record_call(
    span: &mut Span,
    failure: Option<&crate::error::CallError>,
    stats: &crate::outcome::CallStats,
) {
    if !span.recording() {
        return;
    }
    let outcome = failure.map_or("ok", |err| err.kind().as_str());
    span.set("capsule.outcome", Value::from(outcome));
    if let Some(fuel) = stats.fuel_used {
        span.set("capsule.fuel.used", Value::from(fuel));
    }
    if let Some(limit) = stats.fuel_limit {
        span.set("capsule.fuel.limit", Value::from(limit));
    }
    if stats.callee_fuel > 0 {
        span.set("capsule.fuel.callees", Value::from(stats.callee_fuel));
    }
    if let Some(memory) = stats.memory_bytes {
        span.set("capsule.memory.bytes", Value::from(memory));
    }
    span.set("capsule.memory.limit", Value::from(stats.memory_limit));
    span.set("capsule.fresh_instance", Value::from(stats.fresh_instance));
    for service in &stats.host_calls {
        span.set(
            format!("capsule.host_calls.{}.count", service.service),
            Value::from(u64::from(service.calls)),
        );
        span.set(
            format!("capsule.host_calls.{}.time_us", service.service),
            Value::from(u64::try_from(service.time.as_micros()).unwrap_or(u64::MAX)),
        );
    }
    if let Some(err) = failure {
        span.fail(telemetry::bounded(&err.to_string()));
    }
}
