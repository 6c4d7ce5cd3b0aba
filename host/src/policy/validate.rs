//! The checks of every setting before anything runs: limits, bus and engine
//! options, how a plugin's limits fit the instance pool, and (through each
//! service) its grants. The policy file, `capsule check`,
//! `HostBuilder::build` and `Host::load` all call these functions, so
//! whatever the host would refuse at load, `capsule check` refuses too, and
//! no value — however large — can make the host panic, wrap around or
//! silently fall back.
//!
//! Each check returns the first problem as an [`Invalid`] naming the field
//! (relative to its section, e.g. `timeout` or `kv.max_value`) and saying
//! what range is allowed.

use std::time::Duration;

use crate::Grants;
use crate::bounds::{GIB, Invalid, KIB, MIB, PAGE, bytes, duration, range, show_bytes};
use crate::engine::{EngineOptions, Interruption, PoolingOptions};
use crate::limits::{BusOptions, Limits};

/// A plugin's limits, each within the range the host can honour.
pub fn limits(limits: &Limits) -> Result<(), Invalid> {
    if let Some(fuel) = limits.fuel {
        range("fuel", fuel, 1, u64::MAX / 2, "units")?;
    }
    bytes("memory", limits.memory_bytes, PAGE, 64 * GIB)?;
    duration("timeout", limits.timeout, Duration::from_millis(1))?;
    bytes("max_request", limits.max_request_bytes as u64, 0, GIB)?;
    bytes("max_response", limits.max_response_bytes as u64, 0, GIB)?;
    bytes("max_log", limits.max_log_bytes as u64, 0, 64 * MIB)?;
    range(
        "max_instances",
        limits.max_instances as u64,
        1,
        10_000,
        "instances",
    )?;
    range("max_queued", limits.max_queued as u64, 0, 100_000, "calls")?;
    duration("queue_timeout", limits.queue_timeout, Duration::ZERO)?;
    range("max_batch", limits.max_batch as u64, 1, 10_000, "requests")?;
    bytes("cache", limits.cache_bytes as u64, 0, GIB)?;
    duration("cache_ttl", limits.cache_ttl, Duration::from_millis(1))?;
    range("max_jobs", limits.max_jobs as u64, 0, 1_000_000, "jobs")?;
    range(
        "job_concurrency",
        limits.job_concurrency as u64,
        1,
        10_000,
        "jobs",
    )?;
    range(
        "job_attempts",
        u64::from(limits.job_attempts),
        1,
        100,
        "attempts",
    )?;
    duration("job_ttl", limits.job_ttl, Duration::from_secs(1))?;
    range(
        "recycle_after",
        u64::from(limits.recycle_after),
        1,
        u64::from(u32::MAX),
        "calls",
    )?;
    if limits.prewarm > limits.max_instances {
        return Err(Invalid::new(
            "prewarm",
            format!(
                "{} instances is more than max_instances ({})",
                limits.prewarm, limits.max_instances
            ),
        ));
    }
    duration("circuit_cooldown", limits.circuit_cooldown, Duration::ZERO)?;
    range(
        "max_handles",
        limits.max_handles as u64,
        16,
        65_536,
        "handles",
    )?;
    range(
        "max_log_records",
        limits.max_log_records as u64,
        0,
        1_000_000,
        "lines",
    )?;
    range(
        "max_metadata_entries",
        limits.max_metadata_entries as u64,
        0,
        1_000_000,
        "entries",
    )?;
    range("max_calls", u64::from(limits.max_calls), 0, 1024, "calls")?;
    range(
        "max_call_depth",
        u64::from(limits.max_call_depth),
        1,
        32,
        "plugins",
    )?;
    Ok(())
}

/// A plugin's limits against the instance pool (if the engine has one): its
/// memory must fit the pool's largest memory, and its instances the pool.
pub fn limits_fit_pool(limits: &Limits, pool: Option<&PoolingOptions>) -> Result<(), Invalid> {
    let Some(pool) = pool else {
        return Ok(());
    };
    if limits.memory_bytes > pool.max_memory_bytes {
        return Err(Invalid::new(
            "memory",
            format!(
                "{} is more than the instance pool's largest memory ({}); raise [host.pool] \
                 max_memory",
                show_bytes(limits.memory_bytes),
                show_bytes(pool.max_memory_bytes)
            ),
        ));
    }
    if limits.max_instances as u64 > u64::from(pool.total_instances) {
        return Err(Invalid::new(
            "max_instances",
            format!(
                "{} is more than the instance pool holds ({}); raise [host.pool] instances",
                limits.max_instances, pool.total_instances
            ),
        ));
    }
    Ok(())
}

/// Engine settings: the wasm stack, how guest code is interrupted and the
/// pool.
pub fn engine(engine: &EngineOptions) -> Result<(), Invalid> {
    bytes(
        "max_wasm_stack",
        engine.max_wasm_stack as u64,
        64 * KIB,
        64 * MIB,
    )?;
    match engine.interruption {
        Interruption::Epoch { tick }
            if tick < Duration::from_millis(1) || tick > Duration::from_secs(1) =>
        {
            return Err(Invalid::new(
                "epoch_tick",
                format!("{tick:?} is out of range: use 1ms to 1s"),
            ));
        }
        Interruption::FuelYield { .. } if !engine.consume_fuel => {
            return Err(Invalid::new(
                "interruption",
                "fuel yields need fuel metering: turn consume_fuel on, or interrupt with epochs",
            ));
        }
        Interruption::FuelYield { interval } => range(
            "fuel_yield_interval",
            interval,
            1_000,
            1_000_000_000,
            "fuel units",
        )?,
        Interruption::Epoch { .. } | Interruption::Off => {}
    }
    if let Some(pool) = &engine.pooling {
        range(
            "instances",
            u64::from(pool.total_instances),
            1,
            100_000,
            "instances",
        )?;
        bytes("max_memory", pool.max_memory_bytes, PAGE, 64 * GIB)?;
    }
    Ok(())
}

/// Event bus settings.
pub fn bus(options: &BusOptions) -> Result<(), Invalid> {
    range("queue", options.queue as u64, 1, 1_000_000, "events")?;
    bytes("queue_bytes", options.queue_bytes as u64, KIB, GIB)?;
    duration("queue_timeout", options.queue_timeout, Duration::ZERO)?;
    range(
        "max_attempts",
        u64::from(options.max_attempts),
        1,
        100,
        "attempts",
    )?;
    duration("max_retry_delay", options.max_retry_delay, Duration::ZERO)?;
    duration("ack_wait", options.ack_wait, Duration::from_secs(1))?;
    range("max_hops", u64::from(options.max_hops), 0, 1_000, "hops")?;
    range(
        "dead_letters",
        options.dead_letters as u64,
        0,
        1_000_000,
        "letters",
    )?;
    bytes(
        "dead_letter_bytes",
        options.dead_letter_bytes as u64,
        0,
        GIB,
    )?;
    Ok(())
}

/// The plugins of a policy against the instance pool: all of them at their
/// `max_instances` at once, plus one instance per plugin for a second
/// version (a reload or a canary draining while the new one starts), must
/// fit, so that no plugin can be kept from its instances by the others.
pub fn plugins_fit_pool<'a>(
    plugins: impl Iterator<Item = (&'a str, &'a Limits)>,
    pool: Option<&PoolingOptions>,
) -> Result<(), Invalid> {
    let Some(pool) = pool else {
        return Ok(());
    };
    let (count, needed) = plugins.fold((0u64, 0u64), |(count, needed), (_, limits)| {
        (count + 1, needed + limits.max_instances as u64 + 1)
    });
    if needed > u64::from(pool.total_instances) {
        return Err(Invalid::new(
            "instances",
            format!(
                "the pool holds {} instances, but the {count} plugins need {needed} \
                 (their `max_instances`, plus one each for a second version while it \
                 reloads): raise `instances` or lower `max_instances`",
                pool.total_instances
            ),
        ));
    }
    Ok(())
}

/// Everything about one plugin: its limits, its grants, and how its limits
/// fit the instance pool.
pub fn plugin(
    limits_: &Limits,
    grants_: &Grants,
    pool: Option<&PoolingOptions>,
) -> Result<(), Invalid> {
    limits(limits_).map_err(|err| err.within("limits"))?;
    limits_fit_pool(limits_, pool).map_err(|err| err.within("limits"))?;
    grants_.validate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::kv::KvGrant;

    #[test]
    fn the_defaults_are_valid() {
        limits(&Limits::default()).unwrap();
        engine(&EngineOptions::default()).unwrap();
        bus(&BusOptions::default()).unwrap();
        Grants::default().validate().unwrap();
        limits_fit_pool(
            &Limits::default(),
            EngineOptions::default().pooling.as_ref(),
        )
        .unwrap();
    }

    #[test]
    fn values_out_of_range_name_their_field() {
        let cases: Vec<(Limits, &str)> = vec![
            (
                Limits {
                    fuel: Some(0),
                    ..Limits::default()
                },
                "fuel",
            ),
            (
                Limits {
                    timeout: Duration::ZERO,
                    ..Limits::default()
                },
                "timeout",
            ),
            (
                Limits {
                    timeout: Duration::from_secs(u64::MAX),
                    ..Limits::default()
                },
                "timeout",
            ),
            (
                Limits {
                    memory_bytes: 1000,
                    ..Limits::default()
                },
                "memory",
            ),
            (
                Limits {
                    max_instances: 0,
                    ..Limits::default()
                },
                "max_instances",
            ),
            (
                Limits {
                    recycle_after: 0,
                    ..Limits::default()
                },
                "recycle_after",
            ),
            (
                Limits {
                    max_instances: 4,
                    prewarm: 5,
                    ..Limits::default()
                },
                "prewarm",
            ),
            (
                Limits {
                    max_handles: 1,
                    ..Limits::default()
                },
                "max_handles",
            ),
            (
                Limits {
                    queue_timeout: Duration::MAX,
                    ..Limits::default()
                },
                "queue_timeout",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(limits(&bad).unwrap_err().field, field);
        }
        let bad_bus = BusOptions {
            queue: 0,
            ..BusOptions::default()
        };
        assert_eq!(bus(&bad_bus).unwrap_err().field, "queue");
        let bad_engine = EngineOptions {
            max_wasm_stack: 1,
            ..EngineOptions::default()
        };
        assert_eq!(engine(&bad_engine).unwrap_err().field, "max_wasm_stack");
        let unfuelled_yields = EngineOptions {
            consume_fuel: false,
            ..EngineOptions::default()
        };
        assert_eq!(engine(&unfuelled_yields).unwrap_err().field, "interruption");
        let fast_epochs = EngineOptions {
            interruption: Interruption::Epoch {
                tick: Duration::from_micros(10),
            },
            ..EngineOptions::default()
        };
        assert_eq!(engine(&fast_epochs).unwrap_err().field, "epoch_tick");
        let no_fuel_epochs = EngineOptions {
            consume_fuel: false,
            interruption: Interruption::epoch(),
            ..EngineOptions::default()
        };
        engine(&no_fuel_epochs).unwrap();
    }

    #[test]
    fn limits_must_fit_the_pool() {
        let small_pool = PoolingOptions {
            total_instances: 4,
            max_memory_bytes: 16 * MIB,
        };
        let err = limits_fit_pool(&Limits::default(), Some(&small_pool)).unwrap_err();
        assert_eq!(err.field, "memory");
        let many = Limits {
            memory_bytes: 8 * MIB,
            max_instances: 5,
            ..Limits::default()
        };
        assert_eq!(
            limits_fit_pool(&many, Some(&small_pool)).unwrap_err().field,
            "max_instances"
        );
    }

    #[test]
    fn grants_refuse_what_cannot_be_passed_on() {
        let mut env = Grants::default();
        env.env.insert("A=B".into(), "x".into());
        assert_eq!(env.validate().unwrap_err().field, "env.A=B");
        let mut nul = Grants::default();
        nul.env.insert("A".into(), "x\0y".into());
        assert!(nul.validate().is_err());
        let kv = Grants {
            kv: Some(KvGrant {
                max_key_bytes: 0,
                ..KvGrant::new("ns")
            }),
            ..Grants::default()
        };
        assert_eq!(kv.validate().unwrap_err().field, "kv.max_key");
        let err = plugin(
            &Limits {
                fuel: Some(0),
                ..Limits::default()
            },
            &Grants::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(err.field, "limits.fuel");
    }
}
