//! One connection to NATS, shared by everything a host keeps there.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use super::{BackendError, NatsOptions, check_prefix};

/// How long one request to NATS (a read, a publish acknowledgement, a
/// bucket lookup) may take before it counts as unavailable.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to NATS with JetStream, and the runtime that drives it.
///
/// The connection has its own small tokio runtime, so the blocking store
/// API can wait for NATS from any thread (the host calls it on tokio's
/// blocking pool, tests from plain threads) without a runtime of the
/// caller's. The client reconnects by itself when NATS comes back; until
/// then requests fail as unavailable.
pub struct NatsConnection {
    runtime: OwnedRuntime,
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) options: NatsOptions,
}

impl std::fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConnection")
            .field("url", &self.options.url)
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsConnection {
    /// Connects to the server(s) in `options`; fails at once, with the
    /// reason, when none answers.
    pub fn connect(options: &NatsOptions) -> Result<Arc<NatsConnection>, BackendError> {
        let fail = |reason: String| BackendError {
            kind: "nats",
            url: options.url.clone(),
            reason,
        };
        check_prefix(&options.prefix).map_err(|err| fail(format!("prefix: {err}")))?;
        let runtime = OwnedRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("capsule-nats")
                .enable_all()
                .build()
                .map_err(|err| fail(format!("cannot start its runtime: {err}")))?,
        ));
        let rt = runtime.0.as_ref().expect("just built");
        let connect = connect_options(options).map_err(fail)?;
        let url = options.url.clone();
        let client = wait_on(rt, async move { connect.connect(url).await })
            .ok_or_else(|| fail("its runtime stopped".into()))?
            .map_err(|err| fail(err.to_string()))?;
        // The JetStream context starts a task of its own.
        let _runtime = rt.enter();
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(REQUEST_TIMEOUT);
        drop(_runtime);
        Ok(Arc::new(NatsConnection {
            runtime,
            client,
            jetstream,
            options: options.clone(),
        }))
    }

    /// A second client on the same servers, whose subscriptions each hold
    /// at most `subscription_capacity` messages not yet taken (the default,
    /// 65,536, is far more than a host should buffer for its peers).
    pub(crate) fn another_client(
        &self,
        subscription_capacity: usize,
    ) -> Result<async_nats::Client, String> {
        let connect = connect_options(&self.options)?.subscription_capacity(subscription_capacity);
        let url = self.options.url.clone();
        self.run(async move { connect.connect(url).await })
            .ok_or("the connection's runtime has stopped")?
            .map_err(|err| err.to_string())
    }

    /// The deployment's prefix.
    pub fn prefix(&self) -> &str {
        &self.options.prefix
    }

    /// Whether the client is connected now (it reconnects by itself).
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The largest message the server accepts.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Runs `work` on the connection's runtime and waits for it, from any
    /// thread (inside the caller's runtime too: it only blocks this thread).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        wait_on(self.runtime.0.as_ref()?, work)
    }

    /// Runs `work` on the connection's runtime and awaits it from the
    /// caller's: the client's I/O and timers stay on the runtime that
    /// drives the connection, whatever runtime the caller is on.
    pub(crate) async fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.runtime.0.as_ref()?.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.await.ok()
    }
}

/// How every client of a host connects: named, reconnecting for as long as
/// the host runs, with the deployment's credentials.
fn connect_options(options: &NatsOptions) -> Result<async_nats::ConnectOptions, String> {
    let mut connect = async_nats::ConnectOptions::new()
        .name("capsule")
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None);
    if let Some(credentials) = &options.credentials {
        connect = connect
            .credentials(credentials.expose())
            .map_err(|err| format!("credentials: {err}"))?;
    }
    Ok(connect)
}

impl NatsConnection {
    /// Like [`NatsConnection::spawn`], but the work is abandoned (the task
    /// aborted) when the caller stops waiting for it: for work with nothing
    /// to finish on its own, such as waiting for a reply.
    pub(crate) async fn spawn_abortable<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
        impl<T> Drop for AbortOnDrop<T> {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut task = AbortOnDrop(self.runtime.0.as_ref()?.spawn(work));
        (&mut task.0).await.ok()
    }
}

/// Runs `work` on `runtime` and blocks this thread until it is done; unlike
/// `Runtime::block_on`, allowed inside another runtime.
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().ok()
}

/// A runtime that shuts down in the background when dropped: dropping a
/// runtime blocks, which tokio forbids inside another runtime (where the
/// host usually is).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
