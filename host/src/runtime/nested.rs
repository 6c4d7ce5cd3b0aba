//! The runtime's side of calls between plugins: the `calls` service (a
//! layer below) reaches the host through [`PluginCaller`], implemented here
//! over a weak handle, so a plugin's store never keeps its host alive.

use std::sync::Weak;

use super::{Host, HostInner};
use crate::contract::Request;
use crate::error::{CallError, CallFailure};
use crate::services::calls::{CallFuture, CallScope, PluginCaller};

/// The host, as the `calls` service sees it.
pub(crate) struct HostCaller(pub(crate) Weak<HostInner>);

impl HostCaller {
    fn host(&self) -> Option<Host> {
        self.0.upgrade().map(|inner| Host { inner })
    }
}

impl PluginCaller for HostCaller {
    fn call(&self, scope: CallScope, target: String, request: Request) -> CallFuture<'_> {
        Box::pin(async move {
            let Some(host) = self.host() else {
                return Err(CallError::new(
                    target,
                    CallFailure::Host("the host is shutting down".into()),
                ));
            };
            host.call_scoped(&target, request, scope).await
        })
    }

    fn providers(&self, capability: &str) -> Vec<String> {
        let Some(host) = self.host() else {
            return Vec::new();
        };
        host.find_by_capability(capability)
            .into_iter()
            .map(|details| details.name)
            .collect()
    }

    fn pinned(&self, capability: &str) -> Option<String> {
        self.host()?.pinned(capability)
    }
}
