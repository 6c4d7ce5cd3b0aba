//! What a call leaves behind — its key-value changes and the events it
//! published — buffered while it runs and committed together only when it
//! succeeds. A trap, a limit, a plugin error or a cancelled call discards
//! them.
//!
//! Transactions nest: a call made by another plugin (or a stage of a
//! transactional pipeline) has an *enclosing* transaction. Its reads see
//! the enclosing writes, and when it succeeds its changes join the
//! enclosing transaction instead of being committed; the outermost one
//! commits everything at once or nothing.
//!
//! Commits are optimistic: every key read is recorded with the version it
//! had, and the commit checks, in the store's serialised write
//! transaction, that none of them changed (see `KvStore::commit`).

use std::sync::{Arc, Mutex, MutexGuard};

use super::kv::KvGrant;
use super::kv::store::{Changes, NamespaceChanges, Write};
use crate::contract::ServiceError;
use crate::outcome::PublishedEvent;

/// A transaction shared by the services of one store (and read by the
/// calls it encloses).
pub(crate) type SharedTransaction = Arc<Mutex<Transaction>>;

/// Locks a shared transaction (a poisoned lock still holds valid data: no
/// code panics while holding it half-updated).
pub(crate) fn lock(shared: &SharedTransaction) -> MutexGuard<'_, Transaction> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call's (or pipeline's) buffered effects.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// Keys read (with their versions) and written, by namespace.
    pub(crate) kv: Changes,
    /// Events published, in order, with the plugin that published each.
    pub(crate) events: Vec<(Arc<str>, PublishedEvent)>,
    /// Whether something escaped that running the call again would repeat
    /// (an outbound HTTP request, a write made outside the transaction);
    /// a call that conflicts is retried only when nothing escaped.
    pub(crate) escaped: bool,
    /// The transaction this one joins when it succeeds.
    enclosing: Option<SharedTransaction>,
    /// Distinct keys read or written, and bytes of keys and buffered
    /// values: this call's own (its budget) plus what the calls it
    /// enclosed brought in (the tree's, [`TREE_BUDGET`]).
    touched: usize,
    buffered: usize,
    /// Events and their payload bytes, absorbed ones included.
    event_bytes: usize,
    /// The first time a service found its backend unreachable in this call
    /// (NATS lost, say): a call that then fails failed because of it, and
    /// is reported as `unavailable` rather than as the plugin's error.
    pub(crate) unavailable: Option<String>,
}

/// What one transaction may hold with everything the calls it encloses
/// joined to it (each of them within its own budget too): a plugin that
/// calls plugins that call plugins cannot make one transaction grow past
/// this. Past it, the nested call whose changes would not fit fails as
/// `quota_exceeded` and leaves the enclosing transaction as it was.
pub(crate) const TREE_BUDGET: TransactionBudget = TransactionBudget {
    max_keys: 16_384,
    max_bytes: 16 << 20,
};

/// Most events one transaction tree may carry.
const TREE_EVENTS: usize = 4096;

/// How much one call may buffer: distinct keys it reads or writes, and
/// bytes of keys and values it writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransactionBudget {
    pub(crate) max_keys: usize,
    pub(crate) max_bytes: usize,
}

impl Transaction {
    /// A transaction that joins `enclosing` (if any) when it succeeds.
    pub(crate) fn within(enclosing: Option<SharedTransaction>) -> Transaction {
        Transaction {
            enclosing,
            ..Transaction::default()
        }
    }

    /// Whether the transaction read, wrote and published nothing, and
    /// nothing escaped it: there is nothing to commit or to join.
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.kv.namespaces.is_empty() && !self.escaped
    }

    /// Starts the next call's transaction, dropping whatever was left.
    pub(crate) fn begin(&mut self, enclosing: Option<SharedTransaction>) {
        *self = Transaction::within(enclosing);
    }

    /// Takes the finished transaction out, leaving an empty one; its link
    /// to the enclosing transaction is dropped.
    pub(crate) fn finish(&mut self) -> Transaction {
        let mut done = std::mem::take(self);
        done.enclosing = None;
        done
    }

    /// What this transaction or one enclosing it wrote to `key` last.
    pub(crate) fn written(&self, namespace: &str, key: &str) -> Option<Write> {
        if let Some(write) = self
            .kv
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.writes.get(key))
        {
            return Some(write.clone());
        }
        let enclosing = self.enclosing.as_ref()?;
        lock(enclosing).written(namespace, key)
    }

    /// Every write to keys of `namespace` starting with `prefix`, by this
    /// transaction and the ones enclosing it (inner writes win).
    pub(crate) fn writes_under(&self, namespace: &str, prefix: &str) -> Vec<(String, Write)> {
        let mut writes: std::collections::BTreeMap<String, Write> = match &self.enclosing {
            Some(enclosing) => lock(enclosing)
                .writes_under(namespace, prefix)
                .into_iter()
                .collect(),
            None => Default::default(),
        };
        if let Some(ns) = self.kv.namespaces.get(namespace) {
            for (key, write) in ns.writes.range(prefix.to_owned()..) {
                if !key.starts_with(prefix) {
                    break;
                }
                writes.insert(key.clone(), write.clone());
            }
        }
        writes.into_iter().collect()
    }

    fn namespace(&mut self, grant: &Arc<KvGrant>) -> &mut NamespaceChanges {
        self.kv
            .namespaces
            .entry(Arc::from(grant.namespace.as_str()))
            .or_insert_with(|| NamespaceChanges::new(Arc::clone(grant)))
    }

    fn touch(&mut self, budget: TransactionBudget) -> Result<(), ServiceError> {
        if self.touched >= budget.max_keys {
            return Err(ServiceError::QuotaExceeded(format!(
                "one call may read or write at most {} distinct keys (`kv.max_call_keys`)",
                budget.max_keys
            )));
        }
        self.touched += 1;
        Ok(())
    }

    /// Records that `key` was read at `version` (0: absent), unless this
    /// transaction already saw it.
    pub(crate) fn record_read(
        &mut self,
        grant: &Arc<KvGrant>,
        key: &str,
        version: u64,
        budget: TransactionBudget,
    ) -> Result<(), ServiceError> {
        let ns = self.namespace(grant);
        if ns.reads.contains_key(key) || ns.writes.contains_key(key) {
            return Ok(());
        }
        if self.buffered + key.len() > budget.max_bytes {
            return Err(ServiceError::QuotaExceeded(format!(
                "one call may hold at most {} bytes of keys and writes (`kv.max_call_bytes`)",
                budget.max_bytes
            )));
        }
        self.touch(budget)?;
        self.buffered += key.len();
        self.namespace(grant).reads.insert(key.to_owned(), version);
        Ok(())
    }

    /// Buffers `write` to `key`.
    pub(crate) fn write(
        &mut self,
        grant: &Arc<KvGrant>,
        key: &str,
        write: Write,
        budget: TransactionBudget,
    ) -> Result<(), ServiceError> {
        let ns = self.namespace(grant);
        let known = ns.reads.contains_key(key) || ns.writes.contains_key(key);
        // A key read or written before is already counted; a value
        // replaced gives its bytes back.
        let replaced = match ns.writes.get(key) {
            Some(previous) => key.len() + previous.size(),
            None if known => key.len(),
            None => 0,
        };
        let size = key.len() + write.size();
        let buffered = self.buffered.saturating_sub(replaced) + size;
        if buffered > budget.max_bytes {
            return Err(ServiceError::QuotaExceeded(format!(
                "one call may buffer at most {} bytes of writes (`kv.max_call_bytes`)",
                budget.max_bytes
            )));
        }
        if !known {
            self.touch(budget)?;
        }
        self.buffered = buffered;
        let ns = self.namespace(grant);
        ns.add_writer(grant);
        ns.writes.insert(key.to_owned(), write);
        Ok(())
    }

    /// Buffers every write, or none if together they break the budget.
    pub(crate) fn write_all(
        &mut self,
        grant: &Arc<KvGrant>,
        writes: Vec<(String, Write)>,
        budget: TransactionBudget,
    ) -> Result<(), ServiceError> {
        let saved = (self.touched, self.buffered);
        let ns = self.namespace(grant);
        let previous: Vec<Option<Write>> = writes
            .iter()
            .map(|(key, _)| ns.writes.get(key).cloned())
            .collect();
        for (key, write) in &writes {
            if let Err(err) = self.write(grant, key, write.clone(), budget) {
                // Put back what the earlier writes replaced.
                let ns = self.namespace(grant);
                for ((key, _), previous) in writes.iter().zip(previous) {
                    match previous {
                        Some(write) => ns.writes.insert(key.clone(), write),
                        None => ns.writes.remove(key),
                    };
                }
                (self.touched, self.buffered) = saved;
                return Err(err);
            }
        }
        Ok(())
    }

    /// Takes in the changes of a transaction this one enclosed, which
    /// succeeded: its reads (a key both read keeps the version this one saw
    /// first), writes and events. Refused, changing nothing, when the
    /// result would not fit [`TREE_BUDGET`].
    pub(crate) fn absorb(&mut self, inner: Transaction) -> Result<(), String> {
        let touched = self.touched + inner.touched;
        let buffered = self.buffered + inner.buffered;
        let events = self.events.len() + inner.events.len();
        let event_bytes = self.event_bytes + inner.event_bytes;
        if touched > TREE_BUDGET.max_keys
            || buffered + event_bytes > TREE_BUDGET.max_bytes
            || events > TREE_EVENTS
        {
            return Err(format!(
                "the calls of one transaction may together touch at most {} keys, publish at \
                 most {TREE_EVENTS} events and hold at most {} bytes",
                TREE_BUDGET.max_keys, TREE_BUDGET.max_bytes
            ));
        }
        (self.touched, self.buffered, self.event_bytes) = (touched, buffered, event_bytes);
        self.absorb_reads_of(&inner);
        for (name, changes) in inner.kv.namespaces {
            if changes.writes.is_empty() {
                continue;
            }
            let ns = self
                .kv
                .namespaces
                .entry(name)
                .or_insert_with(|| NamespaceChanges::new(Arc::clone(&changes.grant)));
            ns.add_writers(&changes);
            ns.writes.extend(changes.writes);
        }
        self.events.extend(inner.events);
        Ok(())
    }

    /// Takes in only what a call this one enclosed read, and whether
    /// something escaped it: for a nested call that failed, whose writes
    /// and events are discarded but whose failure the caller saw (and may
    /// have acted on), so its reads must still hold at commit.
    pub(crate) fn absorb_reads(&mut self, inner: &Transaction) {
        self.absorb_reads_of(inner);
    }

    fn absorb_reads_of(&mut self, inner: &Transaction) {
        for (name, changes) in &inner.kv.namespaces {
            if changes.reads.is_empty() {
                continue;
            }
            let ns = self
                .kv
                .namespaces
                .entry(Arc::clone(name))
                .or_insert_with(|| NamespaceChanges::new(Arc::clone(&changes.grant)));
            for (key, version) in &changes.reads {
                if !ns.writes.contains_key(key) {
                    ns.reads.entry(key.clone()).or_insert(*version);
                }
            }
        }
        self.escaped |= inner.escaped;
    }

    /// Records an event published by `plugin`, counted in the tree budget.
    pub(crate) fn publish(&mut self, plugin: &Arc<str>, event: PublishedEvent) {
        self.event_bytes += event.payload.len() + event.topic.len();
        self.events.push((Arc::clone(plugin), event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: TransactionBudget = TransactionBudget {
        max_keys: 3,
        max_bytes: 16,
    };

    fn put(value: &[u8]) -> Write {
        Write::Put {
            value: value.to_vec(),
            expires_at: None,
        }
    }

    #[test]
    fn an_inner_transaction_reads_the_enclosing_writes_and_joins_it() {
        let grant = Arc::new(KvGrant::new("ns"));
        let outer: SharedTransaction = Arc::default();
        lock(&outer).write(&grant, "a", put(b"1"), BUDGET).unwrap();
        let mut inner = Transaction::within(Some(Arc::clone(&outer)));
        assert_eq!(inner.written("ns", "a"), Some(put(b"1")));
        assert_eq!(inner.written("other", "a"), None);
        inner.write(&grant, "b", put(b"2"), BUDGET).unwrap();
        inner.record_read(&grant, "c", 7, BUDGET).unwrap();
        let keys: Vec<String> = inner
            .writes_under("ns", "")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        let inner = inner.finish();
        assert!(inner.enclosing.is_none());
        lock(&outer).absorb(inner).unwrap();
        let outer = lock(&outer);
        let ns = &outer.kv.namespaces["ns"];
        assert_eq!(ns.writes.len(), 2);
        assert_eq!(ns.reads.get("c"), Some(&7));
    }

    #[test]
    fn a_call_buffers_within_its_budget() {
        let grant = Arc::new(KvGrant::new("ns"));
        let mut txn = Transaction::default();
        txn.write(&grant, "a", put(&[0; 10]), BUDGET).unwrap();
        // Replacing a buffered value counts the new size only.
        txn.write(&grant, "a", put(&[0; 15]), BUDGET).unwrap();
        let err = txn.write(&grant, "b", put(&[0; 1]), BUDGET).unwrap_err();
        assert!(matches!(&err, ServiceError::QuotaExceeded(m) if m.contains("max_call_bytes")));
        // Keys read count too: three distinct ones fill `max_keys`.
        let mut txn = Transaction::default();
        txn.record_read(&grant, "b", 0, BUDGET).unwrap();
        txn.record_read(&grant, "b", 0, BUDGET).unwrap();
        txn.record_read(&grant, "c", 0, BUDGET).unwrap();
        txn.record_read(&grant, "d", 0, BUDGET).unwrap();
        let err = txn.record_read(&grant, "e", 0, BUDGET).unwrap_err();
        assert!(matches!(&err, ServiceError::QuotaExceeded(m) if m.contains("max_call_keys")));
    }

    #[test]
    fn what_enclosed_calls_bring_in_counts_against_one_tree_budget() {
        let grant = Arc::new(KvGrant::new("ns"));
        let big = TransactionBudget {
            max_keys: 100,
            max_bytes: 12 << 20,
        };
        let mut outer = Transaction::default();
        for round in 0..2 {
            let mut inner = Transaction::default();
            inner
                .write(&grant, &format!("k{round}"), put(&vec![0; 9 << 20]), big)
                .unwrap();
            let absorbed = outer.absorb(inner);
            assert_eq!(
                absorbed.is_ok(),
                round == 0,
                "the second 9 MiB passes 16 MiB"
            );
        }
        assert_eq!(
            outer.kv.namespaces["ns"].writes.len(),
            1,
            "a refusal changes nothing"
        );
        // Overwriting what a callee wrote does not underflow the caller's
        // count.
        outer.write(&grant, "k0", put(b"x"), big).unwrap();
    }

    #[test]
    fn a_failed_enclosed_call_leaves_its_reads_and_what_escaped() {
        let grant = Arc::new(KvGrant::new("ns"));
        let mut inner = Transaction::default();
        inner.record_read(&grant, "balance", 4, BUDGET).unwrap();
        inner.write(&grant, "w", put(b"1"), BUDGET).unwrap();
        inner.escaped = true;
        let mut outer = Transaction::default();
        outer.absorb_reads(&inner);
        let ns = &outer.kv.namespaces["ns"];
        assert_eq!(ns.reads.get("balance"), Some(&4));
        assert!(ns.writes.is_empty(), "its writes are discarded");
        assert!(outer.escaped && !outer.is_empty());
    }
}
