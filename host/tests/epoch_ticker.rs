//! The epoch ticker is one thread per engine with epoch interruption (none
//! with the default fuel yields) and stops when the host (and so the engine)
//! is dropped. Kept in its own test binary so no other host
//! starts or stops tickers while this counts them.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use capsule_host::{EngineOptions, Host, Interruption};

fn ticker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("procfs is mounted")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == "capsule-epoch")
        })
        .count()
}

/// Waits up to five seconds for the number of ticker threads to become
/// `expected` (a new thread names itself only once it runs).
fn wait_for_tickers(expected: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ticker_threads() != expected {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A host whose guest code is interrupted by epochs (not the default).
fn epoch_host() -> Host {
    Host::builder()
        .engine_options(EngineOptions {
            interruption: Interruption::epoch(),
            ..EngineOptions::default()
        })
        .build()
        .unwrap()
}

#[test]
fn one_ticker_per_host_stopped_when_the_host_is_dropped() {
    // The default, fuel yields, needs no ticker.
    let default = Host::builder().build().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        ticker_threads(),
        0,
        "a host without epochs starts no ticker"
    );
    drop(default);
    let host = epoch_host();
    let clone = host.clone();
    assert!(wait_for_tickers(1), "one ticker starts with the host");
    drop(host);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ticker_threads(), 1, "a clone still holds the engine");
    drop(clone);
    assert!(wait_for_tickers(0), "the ticker outlived its engine");
    let second = epoch_host();
    assert!(wait_for_tickers(1), "a new host has its own ticker");
    drop(second);
    assert!(wait_for_tickers(0));
}
