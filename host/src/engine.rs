//! The wasmtime engine every plugin of a host shares: compilation settings,
//! fuel metering and how guest code is interrupted at its deadline, the wasm
//! stack limit, the pooling allocator, and the epoch ticker when epochs are
//! what interrupts.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::limits::{CORE_INSTANCES_PER_INSTANCE, MEMORIES_PER_INSTANCE, TABLES_PER_INSTANCE};
use crate::text::chain;

/// Engine-wide settings. Per-plugin limits live in [`crate::Limits`]; these
/// are the ones wasmtime can only set for the whole engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Maximum wasm stack in bytes for every call (wasmtime's
    /// `max_wasm_stack`). Overflow is reported as `stack_overflow`.
    pub max_wasm_stack: usize,
    /// Pooling-allocator sizing, or `None` to allocate instances on demand.
    pub pooling: Option<PoolingOptions>,
    /// Whether fuel is metered. Off, `Limits::fuel` is ignored and only the
    /// deadline bounds compute; meant for benchmarks and trusted code. The
    /// default interruption rides on fuel: with fuel off, set
    /// `interruption` to [`Interruption::Epoch`] (or `Off`).
    pub consume_fuel: bool,
    /// How guest code that never calls the host is stopped at its deadline
    /// (and made to let other tasks run meanwhile).
    pub interruption: Interruption,
}

/// How a call's deadline reaches guest code that is busy computing. Either
/// way, the call's timer bounds time blocked inside a host call, and a call
/// past its deadline is stopped as it returns from any host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Guest code yields to the host every `interval` units of fuel (about
    /// one per wasm instruction); at each yield the call's timer stops a
    /// call that is past its deadline, and other tasks get to run. It rides
    /// on fuel's own checks, so it adds no code to the guest: the default,
    /// and it needs `consume_fuel`.
    FuelYield {
        /// Fuel units between yields.
        interval: u64,
    },
    /// The engine's epoch advances every `tick` on a background thread, and
    /// compiled code checks it at every function entry and loop back-edge:
    /// the only way to stop guest code when fuel is off, and what samples a
    /// profile (`Host::call_profiled`). It costs compute about 1.4× (the
    /// prime-sieve benchmark).
    Epoch {
        /// How often the epoch advances: deadlines are checked, guests
        /// yield and profiles are sampled at this granularity.
        tick: Duration,
    },
    /// Nothing interrupts guest code: only the outer timer applies, which
    /// cannot stop a guest that never calls the host. Never for untrusted
    /// plugins.
    Off,
}

impl Interruption {
    /// Fuel units between yields by default. Compiled code burns fuel fast
    /// (a prime sieve, 21 units a nanosecond on a 2-vCPU EPYC: most wasm
    /// operators cost no machine instruction), so this is about half a
    /// millisecond of such code and a few of slower code, about the epoch
    /// tick it replaces. A yield goes out of the fiber, through tokio and
    /// back in: at a million units the sieve ran 9% slower than with fuel
    /// alone, at ten million 5% (docs/benchmarks.md).
    pub const DEFAULT_FUEL_INTERVAL: u64 = 10_000_000;
    /// The epoch tick used when epochs are asked for without one.
    pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(5);

    /// Epoch interruption with the default tick.
    pub fn epoch() -> Interruption {
        Interruption::Epoch {
            tick: Self::DEFAULT_EPOCH_TICK,
        }
    }
}

/// Which metering the engine compiles in, as every store needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Metering {
    pub(crate) fuel: bool,
    pub(crate) epoch: bool,
    /// Fuel units between yields, when fuel yields carry the deadline.
    pub(crate) fuel_yield: Option<u64>,
}

impl EngineOptions {
    pub(crate) fn metering(&self) -> Metering {
        Metering {
            fuel: self.consume_fuel,
            epoch: matches!(self.interruption, Interruption::Epoch { .. }),
            fuel_yield: match self.interruption {
                Interruption::FuelYield { interval } if self.consume_fuel => Some(interval),
                _ => None,
            },
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_wasm_stack: 512 * 1024,
            pooling: Some(PoolingOptions::default()),
            consume_fuel: true,
            interruption: Interruption::FuelYield {
                interval: Interruption::DEFAULT_FUEL_INTERVAL,
            },
        }
    }
}

/// How many instances the pooling allocator reserves room for, across all
/// plugins of a host, and how large each linear memory may ever be.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolingOptions {
    /// Component instances alive at once across the host.
    pub total_instances: u32,
    /// Largest linear memory any plugin may be granted, in bytes.
    pub max_memory_bytes: u64,
}

impl Default for PoolingOptions {
    fn default() -> Self {
        PoolingOptions {
            total_instances: 256,
            max_memory_bytes: 4 << 30,
        }
    }
}

/// How the engine ended up allocating instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationMode {
    /// The pooling allocator, as configured.
    Pooling,
    /// On-demand allocation: pooling was not asked for, or the machine could
    /// not reserve the pool (the reason is kept).
    OnDemand {
        /// Why pooling is not in use, if it was asked for.
        fallback_reason: Option<String>,
    },
}

/// Builds the engine, falling back from the pooling allocator to on-demand
/// allocation (with a warning) when the machine cannot reserve the pool, for
/// example under a tight `ulimit -v`.
pub(crate) fn build(options: &EngineOptions) -> wasmtime::Result<(Engine, AllocationMode)> {
    let mut config = base_config(options);
    let Some(pooling) = &options.pooling else {
        let engine = Engine::new(&config)?;
        return Ok((
            engine,
            AllocationMode::OnDemand {
                fallback_reason: None,
            },
        ));
    };
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(pooling)));
    match Engine::new(&config) {
        Ok(engine) => Ok((engine, AllocationMode::Pooling)),
        Err(err) => {
            let reason = chain(&err);
            tracing::warn!(
                reason = %reason,
                "cannot reserve the pooling allocator; allocating instances on demand"
            );
            let engine = Engine::new(&base_config(options))?;
            Ok((
                engine,
                AllocationMode::OnDemand {
                    fallback_reason: Some(reason),
                },
            ))
        }
    }
}

fn base_config(options: &EngineOptions) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // The component-model async ABI is not part of the contract and makes
        // every call several times slower.
        .concurrency_support(false)
        .consume_fuel(options.consume_fuel)
        .epoch_interruption(options.metering().epoch)
        .max_wasm_stack(options.max_wasm_stack)
        // Fibers need room for the wasm stack plus host frames below it.
        .async_stack_size(options.max_wasm_stack + 1024 * 1024)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

fn pooling_config(options: &PoolingOptions) -> PoolingAllocationConfig {
    let instances = options.total_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // A Rust component is one core module plus a few adapter shims; leave room
    // for components built by other toolchains too.
    pool.total_component_instances(instances)
        .total_core_instances(instances * CORE_INSTANCES_PER_INSTANCE)
        .total_memories(instances * MEMORIES_PER_INSTANCE)
        .total_tables(instances * TABLES_PER_INSTANCE)
        .total_stacks(instances)
        .max_memory_size(usize::try_from(options.max_memory_bytes).unwrap_or(usize::MAX))
        // Resetting a slot with `madvise` makes the kernel flush the TLB of
        // every thread of the process: with several workers, a fresh instance
        // per call spent most of its time in those flushes. Keeping the first
        // megabytes resident and resetting only the pages a plugin touched
        // (found with PAGEMAP_SCAN on Linux 6.7+, else by memset) avoids it.
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .async_stack_keep_resident(KEEP_RESIDENT_STACK)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH);
    pool
}

/// Bytes of each pooled linear memory reset in place instead of decommitted.
const KEEP_RESIDENT_MEMORY: usize = 4 << 20;
/// Bytes of each pooled table reset in place.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
/// Bytes of each pooled fiber stack reset in place.
const KEEP_RESIDENT_STACK: usize = 256 << 10;
/// Slots decommitted together, so what is decommitted costs fewer flushes.
const DECOMMIT_BATCH: usize = 16;

/// Advances the engine's epoch every `tick` on a background thread. The
/// thread holds only a weak reference and exits once the engine is dropped.
///
/// Without this thread no deadline could interrupt guest code, so failing to
/// start it fails the host.
pub(crate) fn start_epoch_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("capsule-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
}
