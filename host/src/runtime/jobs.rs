//! Background jobs: a call submitted now and run later, whose state and
//! result the submitter reads back by id (`Host::submit_job`,
//! `Host::job`, `Host::cancel_job`; `POST /v1/plugins/{name}/jobs`,
//! `GET`/`DELETE /v1/jobs/{id}`).
//!
//! Jobs live in the host's key-value store, in a namespace no plugin can be
//! granted (`capsule/jobs`: plugin namespaces cannot hold `/`), one record
//! per job under `job/{plugin}/{random}`, so they survive a restart and,
//! with the NATS backend, are shared by every host of the deployment. A
//! host runs jobs once [`Host::start_jobs`] started its runner
//! (`capsule serve` does): it claims a due job by rewriting its record
//! atomically (`KvStore::update`, compare-and-swap on NATS) with a lease
//! of the plugin's `queue_timeout` + `timeout` + 2 s, runs it as an
//! ordinary call (limits, metrics, transaction), and writes the outcome
//! back only if the record is still its claim. A job whose lease ran out
//! (its host stopped) is claimed again as its next attempt. A failed
//! attempt is retried after 1 s, 2 s, 4 s … (at most 60 s) up to the
//! plugin's `job_attempts`, except when the request itself was refused
//! (invalid input, an unsupported operation, a denial). Finished jobs are
//! kept `job_ttl`, then expire. A job may start later (`run_at`) or recur
//! on a cron schedule (croner; UTC): each run's outcome is kept on the
//! record, which is then queued for the pattern's next time until it is
//! cancelled.
//!
//! Budgets, per plugin: at most `max_jobs` records (queued, running or
//! finished and not yet expired; 0 turns jobs off), each a request within
//! `max_request` and a result within `max_response`; at most
//! `job_concurrency` running at once on each host. Each runner lists the
//! records once per poll (250 ms, or at once after a submit on this host)
//! and reads only those that may be due: it remembers until when a queued
//! job waits, a running one is leased, and that a finished one is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Host, HostInner};
use crate::contract::{PluginError, Request};
use crate::error::{CallError, CallFailure, ErrorKind};
use crate::services::kv::KvGrant;
use crate::services::kv::store::{Write, now_ms};

/// The store namespace jobs live in; no plugin's grant can name it.
const NAMESPACE: &str = "capsule/jobs";
/// How often a runner looks for due jobs when nothing wakes it.
const POLL: Duration = Duration::from_millis(250);
/// The wait before a failed attempt's retry doubles from this…
const FIRST_BACKOFF_MS: u64 = 1_000;
/// …up to this.
const MAX_BACKOFF_MS: u64 = 60_000;
/// A claim outlives the longest its call can take by this much.
const LEASE_MARGIN_MS: u64 = 2_000;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its time (`run_at`) or for a runner.
    Queued,
    /// Claimed by a host and running.
    Running,
    /// Done; `result` holds the response.
    Succeeded,
    /// Given up on; `error` says why.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// Whether the job will not run again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job as stored and as its submitter reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `{plugin}.{32 hex digits}`: the plugin, and 128 random bits.
    pub id: String,
    /// The plugin that runs it.
    pub plugin: String,
    /// The operation it calls.
    pub operation: String,
    /// The request payload.
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    /// The request metadata.
    pub metadata: Vec<(String, String)>,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts it may have (the plugin's `job_attempts` when submitted).
    pub max_attempts: u32,
    /// Who submitted it (an API key's name); only they, and admins, read it.
    pub owner: Option<String>,
    /// When it was submitted, in Unix milliseconds.
    pub created_ms: u64,
    /// When it runs next (or ran last), in Unix milliseconds.
    pub run_at_ms: u64,
    /// When it finished, in Unix milliseconds.
    pub finished_ms: Option<u64>,
    /// Until when the host running it holds it.
    pub lease_until_ms: Option<u64>,
    /// The host running it.
    pub holder: Option<String>,
    /// The response, once it succeeded.
    pub result: Option<JobResult>,
    /// Why the last attempt failed (kept while it is retried).
    pub error: Option<JobFailure>,
    /// A recurring job's cron pattern (UTC): after each run it is queued
    /// again for the pattern's next time, until cancelled.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Runs of a recurring job finished so far.
    #[serde(default)]
    pub runs: u64,
}

/// What a successful job answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The response payload.
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    /// The response metadata.
    pub metadata: Vec<(String, String)>,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The error kind (`timeout`, `plugin_error`, …).
    pub kind: String,
    /// What happened, in words.
    pub message: String,
}

/// A job to submit.
#[derive(Debug, Clone, Default)]
pub struct JobSubmission {
    /// The operation to call.
    pub operation: String,
    /// The request payload.
    pub payload: Vec<u8>,
    /// The request metadata.
    pub metadata: Vec<(String, String)>,
    /// Not before this time (now when `None`).
    pub run_at: Option<SystemTime>,
    /// Who submits it (an API key's name).
    pub owner: Option<String>,
    /// Runs it again and again at the times this cron pattern names, in
    /// UTC: `*/5 * * * *` (minute, hour, day of month, month, day of week),
    /// a sixth leading field for seconds, or `@hourly` and the like. The
    /// first run is the pattern's first time after `run_at` (or now).
    pub schedule: Option<String>,
}

/// Why a job could not be submitted, read or cancelled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// No plugin by that name is loaded here.
    #[error("no plugin `{0}` is loaded")]
    UnknownPlugin(String),
    /// No job has that id (or it expired, or its owner is someone else).
    #[error("no job `{0}`")]
    UnknownJob(String),
    /// The host's store does not survive a restart.
    #[error("jobs need a store that survives a restart: set `[host] data_dir` or the NATS backend")]
    NotPersistent,
    /// The plugin holds as many jobs as it may.
    #[error("plugin `{plugin}` holds {limit} jobs, its limit (`max_jobs`)")]
    TooMany {
        /// The plugin.
        plugin: String,
        /// Its `max_jobs` (0: jobs are off for it).
        limit: usize,
    },
    /// The request is larger than the plugin accepts.
    #[error(
        "plugin `{plugin}`: a job's request of {size} bytes exceeds its limit of {limit} (`max_request`)"
    )]
    InputTooLarge {
        /// The plugin.
        plugin: String,
        /// The request's size.
        size: usize,
        /// Its `max_request`.
        limit: usize,
    },
    /// The schedule is not a cron pattern.
    #[error("`{pattern}` is not a cron schedule: {reason}")]
    Schedule {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store failed.
    #[error("the job store failed: {0}")]
    Store(String),
}

impl JobError {
    /// The error kind, as calls name theirs.
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::UnknownPlugin(_) => ErrorKind::UnknownPlugin,
            JobError::UnknownJob(_) => ErrorKind::UnknownPlugin,
            JobError::NotPersistent => ErrorKind::Config,
            JobError::TooMany { .. } => ErrorKind::QuotaExceeded,
            JobError::InputTooLarge { .. } => ErrorKind::InputTooLarge,
            JobError::Schedule { .. } => ErrorKind::Config,
            JobError::Store(_) => ErrorKind::Unavailable,
        }
    }
}

/// What a host keeps for its jobs: the runner's wake-up, who this host is
/// as a holder, and the attempts running here (to cancel them).
pub(crate) struct Jobs {
    wake: Notify,
    holder: String,
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Records the runner need not read before a time (Unix ms): a queued
    /// job until its time, a running one until its lease ends, a finished
    /// one never. A poll then reads only what may be due, not every
    /// record a plugin keeps for `job_ttl`.
    not_before: Mutex<HashMap<String, u64>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            wake: Notify::new(),
            holder: random_hex(),
            running: Mutex::default(),
            not_before: Mutex::default(),
        }
    }
}

/// What looking at a record for a claim found.
enum Claim {
    /// It was due and is now this host's.
    Claimed(Box<Job>),
    /// Not due before this time (Unix ms; `u64::MAX`: never again).
    NotBefore(u64),
}

/// The host's runner of jobs. Dropping it stops the runner and the
/// attempts running on this host; their jobs stay claimed until their
/// lease runs out, then run again as their next attempt (here or on
/// another host), as after a crash.
#[derive(Debug)]
pub struct JobRunner {
    task: tokio::task::JoinHandle<()>,
    host: Weak<HostInner>,
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(host) = self.host.upgrade() {
            for (_, attempt) in lock(&host.jobs.running).drain() {
                attempt.abort();
            }
        }
    }
}

/// The grant the host writes jobs under: no quota a plugin's could reach.
fn grant() -> KvGrant {
    KvGrant {
        max_key_bytes: 256,
        max_value_bytes: 4 << 30,
        max_keys: u64::MAX / 2,
        max_total_bytes: u64::MAX / 2,
        ..KvGrant::new(NAMESPACE)
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the system has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The store key of job `id`, if `id` is one.
fn key_of(id: &str) -> Option<String> {
    let (plugin, random) = id.rsplit_once('.')?;
    let random_ok = random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (random_ok && crate::bounds::plugin_name(plugin).is_ok())
        .then(|| format!("job/{plugin}/{random}"))
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The first time after `after_ms` (Unix milliseconds) that `pattern`
/// names, in Unix milliseconds.
fn next_time(pattern: &str, after_ms: u64) -> Result<u64, JobError> {
    let refused = |reason: String| JobError::Schedule {
        pattern: pattern.to_owned(),
        reason,
    };
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|err| refused(err.to_string()))?;
    let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms as i64)
        .ok_or_else(|| refused("the time is out of range".into()))?;
    let next = cron
        .find_next_occurrence(&after, false)
        .map_err(|err| refused(err.to_string()))?;
    Ok(next.timestamp_millis().max(0) as u64)
}

fn decode(bytes: &[u8]) -> Result<Job, JobError> {
    serde_json::from_slice(bytes).map_err(|err| JobError::Store(format!("a job record: {err}")))
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).expect("a job serializes")
}

fn store_error(err: crate::contract::ServiceError) -> JobError {
    JobError::Store(format!("{err:?}"))
}

/// Whether a failure is worth another attempt: not when the request itself
/// was refused.
fn retryable(err: &CallError) -> bool {
    !matches!(
        err.cause,
        CallFailure::Plugin(
            PluginError::InvalidInput(_) | PluginError::Unsupported(_) | PluginError::Denied(_)
        ) | CallFailure::InputTooLarge { .. }
            | CallFailure::InvalidInput { .. }
            | CallFailure::UnknownPlugin
    )
}

impl Host {
    /// Runs `work` with the job store on the blocking pool.
    async fn job_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&crate::services::kv::KvStore) -> Result<T, JobError> + Send + 'static,
    ) -> Result<T, JobError> {
        let store = Arc::clone(&self.inner.loader.services.kv_store);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|err| JobError::Store(err.to_string()))?
    }

    /// Submits a job for `plugin`: stored at once (queued), run by a host
    /// whose runner is started ([`Host::start_jobs`]) once `run_at` has
    /// come. Returns the stored job, whose `id` reads it back.
    pub async fn submit_job(
        &self,
        plugin: &str,
        submission: JobSubmission,
    ) -> Result<Job, JobError> {
        let Some(slot) = self.slot(plugin) else {
            return Err(JobError::UnknownPlugin(plugin.to_owned()));
        };
        let limits = slot.current().limits().clone();
        drop(slot);
        if !self.inner.loader.persistent_kv {
            return Err(JobError::NotPersistent);
        }
        let request = Request {
            operation: submission.operation,
            payload: submission.payload,
            metadata: submission.metadata,
        };
        let size = request.size();
        if size > limits.max_request_bytes {
            return Err(JobError::InputTooLarge {
                plugin: plugin.to_owned(),
                size,
                limit: limits.max_request_bytes,
            });
        }
        let now = now_ms();
        let mut run_at_ms = submission.run_at.map_or(now, millis).max(now);
        if let Some(pattern) = &submission.schedule {
            run_at_ms = next_time(pattern, run_at_ms)?;
        }
        let random = random_hex();
        let job = Job {
            id: format!("{plugin}.{random}"),
            plugin: plugin.to_owned(),
            operation: request.operation,
            payload: request.payload,
            metadata: request.metadata,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: limits.job_attempts,
            owner: submission.owner,
            created_ms: now,
            run_at_ms,
            finished_ms: None,
            lease_until_ms: None,
            holder: None,
            result: None,
            error: None,
            schedule: submission.schedule,
            runs: 0,
        };
        let stored = job.clone();
        let plugin = plugin.to_owned();
        self.job_store(move |store| {
            // Every record of the plugin counts, finished ones until they
            // expire: they hold the store's bytes too.
            let prefix = format!("job/{plugin}/");
            let mut held = 0;
            let mut after: Option<String> = None;
            loop {
                let (keys, more) = store
                    .list_keys(NAMESPACE, &prefix, after.as_deref(), 1000)
                    .map_err(store_error)?;
                held += keys.len();
                if held >= limits.max_jobs {
                    return Err(JobError::TooMany {
                        plugin,
                        limit: limits.max_jobs,
                    });
                }
                match (more, keys.last()) {
                    (true, Some(last)) => after = Some(last.clone()),
                    _ => break,
                }
            }
            let key = format!("job/{plugin}/{random}");
            let value = encode(&stored);
            store
                .update(&grant(), &key, |_| {
                    Ok((
                        Some(Write::Put {
                            value: value.clone(),
                            expires_at: None,
                        }),
                        (),
                    ))
                })
                .map_err(store_error)
        })
        .await?;
        self.inner.jobs.wake.notify_one();
        Ok(job)
    }

    /// Job `id` as it is now.
    pub async fn job(&self, id: &str) -> Result<Job, JobError> {
        let unknown = || JobError::UnknownJob(id.to_owned());
        let key = key_of(id).ok_or_else(unknown)?;
        let bytes = self
            .job_store(move |store| store.get(NAMESPACE, &key).map_err(store_error))
            .await?;
        decode(&bytes.ok_or_else(unknown)?)
    }

    /// Cancels job `id`: a queued one never runs; a running one is stopped
    /// (at once on this host; on another, its outcome is discarded). A
    /// finished job is left as it is. Returns the job as it is now.
    pub async fn cancel_job(&self, id: &str) -> Result<Job, JobError> {
        let unknown = || JobError::UnknownJob(id.to_owned());
        let key = key_of(id).ok_or_else(unknown)?;
        let ttl = self.job_ttl(id);
        let job = self
            .job_store(move |store| {
                store
                    .update(&grant(), &key, |current| {
                        let Some(entry) = current else {
                            return Ok((None, None));
                        };
                        let Ok(mut job) = decode(&entry.value) else {
                            return Ok((None, None));
                        };
                        if job.state.is_finished() {
                            return Ok((None, Some(job)));
                        }
                        let now = now_ms();
                        job.state = JobState::Cancelled;
                        job.finished_ms = Some(now);
                        job.lease_until_ms = None;
                        let write = Write::Put {
                            value: encode(&job),
                            expires_at: Some(now + ttl),
                        };
                        Ok((Some(write), Some(job)))
                    })
                    .map_err(store_error)
            })
            .await?
            .ok_or_else(unknown)?;
        let running = lock(&self.inner.jobs.running).remove(id);
        if let Some(attempt) = running {
            attempt.abort();
        }
        Ok(job)
    }

    /// How long a finished job of `id`'s plugin is kept, in milliseconds.
    fn job_ttl(&self, id: &str) -> u64 {
        let plugin = id.rsplit_once('.').map_or("", |(plugin, _)| plugin);
        let ttl = match self.slot(plugin) {
            Some(slot) => slot.current().limits().job_ttl,
            None => self.default_limits().job_ttl,
        };
        ttl.as_millis() as u64
    }

    /// Starts this host's job runner: it runs the due jobs of the plugins
    /// loaded here (see the module docs) until the returned handle is
    /// dropped or the host is.
    pub fn start_jobs(&self) -> JobRunner {
        let host = Arc::downgrade(&self.inner);
        JobRunner {
            task: tokio::spawn(run_jobs(host.clone())),
            host,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The runner's loop: look for due jobs, claim what the plugins' shares
/// allow, run each claim as a task of its own.
async fn run_jobs(host: Weak<HostInner>) {
    loop {
        let Some(inner) = host.upgrade() else { return };
        let host = Host { inner };
        if host
            .inner
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        if let Err(err) = claim_due(&host).await {
            tracing::warn!(error = %err, "looking for due jobs failed");
        }
        let woken = Arc::clone(&host.inner);
        drop(host);
        tokio::select! {
            () = woken.jobs.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Claims and starts the due jobs this host may run now.
async fn claim_due(host: &Host) -> Result<(), JobError> {
    let keys = host
        .job_store(|store| {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (keys, more) = store
                    .list_keys(NAMESPACE, "job/", after.as_deref(), 1000)
                    .map_err(store_error)?;
                let last = keys.last().cloned();
                all.extend(keys);
                match (more, last) {
                    (true, Some(last)) => after = Some(last),
                    _ => return Ok(all),
                }
            }
        })
        .await?;
    let mut running_here: HashMap<String, usize> = HashMap::new();
    for id in lock(&host.inner.jobs.running).keys() {
        if let Some((plugin, _)) = id.rsplit_once('.') {
            *running_here.entry(plugin.to_owned()).or_default() += 1;
        }
    }
    let now = now_ms();
    {
        // Forget records that are gone (expired, or never to be seen again).
        let listed: std::collections::HashSet<&String> = keys.iter().collect();
        lock(&host.inner.jobs.not_before).retain(|key, _| listed.contains(key));
    }
    for key in keys {
        if lock(&host.inner.jobs.not_before)
            .get(&key)
            .is_some_and(|until| *until > now)
        {
            continue;
        }
        let Some(plugin) = key.split('/').nth(1).map(str::to_owned) else {
            continue;
        };
        let Some(slot) = host.slot(&plugin) else {
            continue;
        };
        let limits = slot.current().limits().clone();
        drop(slot);
        let busy = running_here.entry(plugin.clone()).or_default();
        if *busy >= limits.job_concurrency {
            continue;
        }
        let lease = (limits.queue_timeout + limits.timeout).as_millis() as u64 + LEASE_MARGIN_MS;
        let ttl = limits.job_ttl.as_millis() as u64;
        let holder = host.inner.jobs.holder.clone();
        let looked = key.clone();
        let claimed = host
            .job_store(move |store| claim(store, &looked, &holder, lease, ttl))
            .await?;
        match claimed {
            Claim::Claimed(job) => {
                lock(&host.inner.jobs.not_before).remove(&key);
                *busy += 1;
                start_attempt(host, *job);
            }
            Claim::NotBefore(until) => {
                lock(&host.inner.jobs.not_before).insert(key, until);
            }
        }
    }
    Ok(())
}

/// Claims the job under `key` if it is due: queued and its time has come,
/// or running under a lease that ran out. A job out of attempts whose
/// lease ran out fails instead.
fn claim(
    store: &crate::services::kv::KvStore,
    key: &str,
    holder: &str,
    lease: u64,
    ttl: u64,
) -> Result<Claim, JobError> {
    let now = now_ms();
    // When the job is due: now or earlier means it is.
    let due_at = |job: &Job| match job.state {
        JobState::Queued => job.run_at_ms,
        JobState::Running => job.lease_until_ms.unwrap_or(u64::MAX),
        _ => u64::MAX,
    };
    // A read first: most records are not due, and a read costs no write.
    let Some(bytes) = store.get(NAMESPACE, key).map_err(store_error)? else {
        return Ok(Claim::NotBefore(u64::MAX));
    };
    let at = decode(&bytes).map_or(u64::MAX, |job| due_at(&job));
    if at > now {
        return Ok(Claim::NotBefore(at));
    }
    let claimed = store
        .update(&grant(), key, |current| {
            let Some(mut job) = current.and_then(|entry| decode(&entry.value).ok()) else {
                return Ok((None, None));
            };
            if due_at(&job) > now {
                return Ok((None, None));
            }
            if job.attempts >= job.max_attempts {
                // Its last attempt's host stopped before it finished.
                job.state = JobState::Failed;
                job.finished_ms = Some(now);
                job.lease_until_ms = None;
                job.error = Some(JobFailure {
                    kind: ErrorKind::Unavailable.as_str().to_owned(),
                    message: "the host running the job's last attempt stopped before it finished"
                        .into(),
                });
                let write = Write::Put {
                    value: encode(&job),
                    expires_at: Some(now + ttl),
                };
                return Ok((Some(write), None));
            }
            job.state = JobState::Running;
            job.attempts += 1;
            job.run_at_ms = now;
            job.lease_until_ms = Some(now + lease);
            job.holder = Some(holder.to_owned());
            let write = Write::Put {
                value: encode(&job),
                expires_at: None,
            };
            Ok((Some(write), Some(job)))
        })
        .map_err(store_error)?;
    // Not claimed: another host was first, or it changed; look again at
    // the next poll.
    Ok(claimed.map_or(Claim::NotBefore(0), |job| Claim::Claimed(Box::new(job))))
}

/// Runs one claimed attempt as a task; its outcome is written back only if
/// the record is still this claim.
fn start_attempt(host: &Host, job: Job) {
    let weak = Arc::downgrade(&host.inner);
    let id = job.id.clone();
    let task = tokio::spawn({
        let id = id.clone();
        async move {
            let Some(inner) = weak.upgrade() else { return };
            let host = Host { inner };
            let request = Request {
                operation: job.operation.clone(),
                payload: job.payload.clone(),
                metadata: job.metadata.clone(),
            };
            let result = host.call(&job.plugin, request).await;
            let (limits_ttl, key) = (
                host.job_ttl(&job.id),
                key_of(&job.id).expect("a stored job's id"),
            );
            let holder = host.inner.jobs.holder.clone();
            let plugin = job.plugin.clone();
            let written = host
                .job_store(move |store| finish(store, &key, &holder, &job, result, limits_ttl))
                .await;
            match written {
                Ok(outcome) => host.inner.dispatch.metrics.job(&plugin, outcome),
                Err(err) => {
                    tracing::warn!(job = %id, error = %err, "a job's outcome could not be stored");
                }
            }
            lock(&host.inner.jobs.running).remove(&id);
            // A retry or the next run of a recurring job is looked at
            // again at once, not when the lease would have ended.
            if let Some(key) = key_of(&id) {
                lock(&host.inner.jobs.not_before).remove(&key);
            }
            host.inner.jobs.wake.notify_one();
        }
    });
    lock(&host.inner.jobs.running).insert(id, task.abort_handle());
}

/// Writes an attempt's outcome, if the record is still `claimed`'s claim;
/// returns how the attempt ended: `succeeded`, `failed`, `retried`, or
/// `discarded` (the job was cancelled or claimed again meanwhile).
fn finish(
    store: &crate::services::kv::KvStore,
    key: &str,
    holder: &str,
    claimed: &Job,
    result: Result<crate::CallOutcome, CallError>,
    ttl: u64,
) -> Result<&'static str, JobError> {
    store
        .update(&grant(), key, |current| {
            let Some(mut job) = current.and_then(|entry| decode(&entry.value).ok()) else {
                return Ok((None, "discarded"));
            };
            let still_ours = job.state == JobState::Running
                && job.holder.as_deref() == Some(holder)
                && job.attempts == claimed.attempts;
            if !still_ours {
                return Ok((None, "discarded"));
            }
            let now = now_ms();
            job.lease_until_ms = None;
            let mut expires_at = Some(now + ttl);
            match &result {
                Ok(outcome) => {
                    job.state = JobState::Succeeded;
                    job.finished_ms = Some(now);
                    job.error = None;
                    job.result = Some(JobResult {
                        payload: outcome.response.payload.clone(),
                        metadata: outcome.response.metadata.clone(),
                    });
                }
                Err(err) => {
                    job.error = Some(JobFailure {
                        kind: err.kind().as_str().to_owned(),
                        message: err.to_string(),
                    });
                    if retryable(err) && job.attempts < job.max_attempts {
                        let backoff = FIRST_BACKOFF_MS
                            .saturating_mul(1 << (job.attempts - 1).min(16))
                            .min(MAX_BACKOFF_MS);
                        job.state = JobState::Queued;
                        job.run_at_ms = now + backoff;
                        expires_at = None;
                    } else {
                        job.state = JobState::Failed;
                        job.finished_ms = Some(now);
                    }
                }
            }
            let outcome = match job.state {
                JobState::Succeeded => "succeeded",
                JobState::Queued => "retried",
                _ => "failed",
            };
            // A recurring job's run is over: queued again for its next
            // time, its last result or error kept.
            if let (Some(pattern), true) = (&job.schedule, job.state.is_finished())
                && let Ok(next) = next_time(pattern, now)
            {
                job.runs += 1;
                job.state = JobState::Queued;
                job.attempts = 0;
                job.run_at_ms = next;
                expires_at = None;
            }
            let write = Write::Put {
                value: encode(&job),
                expires_at,
            };
            Ok((Some(write), outcome))
        })
        .map_err(store_error)
}

/// Bytes as base64 text in a job record.
mod base64_bytes {
    use super::{Base64, Encoding};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Base64::encode_string(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        Base64::decode_vec(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_plugin_and_nothing_else_is_an_id() {
        let random = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            key_of(&format!("re.port.{random}")).as_deref(),
            Some(format!("job/re.port/{random}").as_str())
        );
        for bad in [
            "report".to_owned(),
            format!("report.{}", &random[1..]),
            format!("report.{}g", &random[1..]),
            format!("../x.{random}"),
            format!(".{random}"),
        ] {
            assert!(key_of(&bad).is_none(), "{bad}");
        }
        assert_ne!(random_hex(), random_hex());
        assert_eq!(random_hex().len(), 32);
    }

    #[test]
    fn schedules_are_cron_patterns_in_utc() {
        // 2026-12-06T10:00:00.500Z
        let at = 1_796_551_200_500;
        assert_eq!(next_time("*/5 * * * *", at).unwrap(), 1_796_551_500_000);
        assert_eq!(next_time("*/10 * * * * *", at).unwrap(), 1_796_551_210_000);
        assert_eq!(next_time("@hourly", at).unwrap(), 1_796_554_800_000);
        for bad in ["", "every day", "61 * * * *", "* * * *"] {
            assert!(
                matches!(next_time(bad, at), Err(JobError::Schedule { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_record_round_trips_with_its_bytes_as_base64() {
        let job = Job {
            id: "a.0123456789abcdef0123456789abcdef".into(),
            plugin: "a".into(),
            operation: "op".into(),
            payload: vec![0, 159, 255],
            metadata: vec![("k".into(), "v".into())],
            state: JobState::Queued,
            attempts: 0,
            max_attempts: 3,
            owner: Some("checkout".into()),
            created_ms: 1,
            run_at_ms: 2,
            finished_ms: None,
            lease_until_ms: None,
            holder: None,
            result: None,
            error: None,
            schedule: Some("*/5 * * * *".into()),
            runs: 0,
        };
        let bytes = encode(&job);
        assert!(String::from_utf8_lossy(&bytes).contains("\"payload\":\"AJ//\""));
        assert_eq!(decode(&bytes).unwrap(), job);
    }
}
