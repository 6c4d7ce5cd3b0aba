//! The store's resource limiter: linear memory against [`Limits::memory_bytes`],
//! and core instances, tables and memories against one instance's share of
//! the pool, each refusal a typed error that classifies as the plugin's.

use wasmtime::ResourceLimiter;

use crate::limits::{
    CORE_INSTANCES_PER_INSTANCE, MAX_TABLE_ELEMENTS, MEMORIES_PER_INSTANCE, TABLES_PER_INSTANCE,
};

/// Core instances, tables and memories a single store may create: one
/// instance's share of the pool. Components from ordinary toolchains need a
/// handful; the bound stops a crafted component from exhausting the host
/// through sheer numbers, or taking other plugins' share of the pool.
pub(crate) const MAX_INSTANCES_PER_STORE: usize = CORE_INSTANCES_PER_INSTANCE as usize;
const MAX_TABLES_PER_STORE: usize = TABLES_PER_INSTANCE as usize;
const MAX_MEMORIES_PER_STORE: usize = MEMORIES_PER_INSTANCE as usize;

/// The typed error the limiter raises when a plugin asks for more memory than
/// it was given. Raising an error (rather than refusing the growth) makes the
/// guest trap at once with a cause we can classify; a refused `memory.grow`
/// would make a Rust guest abort with a bare `unreachable`.
#[derive(Debug, thiserror::Error)]
#[error("linear memory limit of {limit} bytes exceeded (requested {requested} bytes in total)")]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) limit: u64,
    pub(crate) requested: u64,
}

/// The typed error for a table that grows past [`MAX_TABLE_ELEMENTS`].
#[derive(Debug, thiserror::Error)]
#[error("table limit of {MAX_TABLE_ELEMENTS} elements exceeded (requested {requested})")]
pub(crate) struct TableLimitExceeded {
    pub(crate) requested: usize,
}

/// The typed error raised when a call's deadline passes while guest code runs.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub(crate) struct DeadlineExceeded;

/// Enforces [`Limits::memory_bytes`] for one store, across every memory the
/// component creates.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    /// Bytes of linear memory currently granted to the store.
    total: u64,
    /// The growth approved last, undone if the allocation then fails.
    last_growth: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            total: 0,
            last_growth: 0,
        }
    }

    /// Bytes of linear memory the store holds now, across its memories.
    pub(crate) fn held(&self) -> u64 {
        self.total
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let requested = self.total.saturating_add(growth);
        if requested > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }));
        }
        self.total = requested;
        self.last_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total = self.total.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(TableLimitExceeded {
                requested: desired,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_STORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_growth_across_memories_and_refuses_with_a_typed_error() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        // A second memory of 50 bytes would bring the total to 110.
        let err = limiter.memory_growing(0, 50, None).unwrap_err();
        let exceeded = err.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((exceeded.limit, exceeded.requested), (100, 110));
        // A failed allocation gives its growth back.
        assert!(limiter.memory_growing(60, 90, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::Error::msg("no"))
            .unwrap();
        assert!(limiter.memory_growing(60, 100, None).unwrap());
    }
}
