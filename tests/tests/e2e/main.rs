//! End-to-end tests: real plugins compiled to wasm components, loaded and
//! called through the host library.
//!
//! Every example plugin must have a module here named after it; the
//! `foreach_plugin!` check below fails to compile otherwise.

mod alloc_bomb;
mod amplifier;
mod batch;
mod bench_compute;
mod bench_echo;
mod call_bomb;
mod deep_recursion;
mod dependencies;
mod distribution;
mod event_storm;
mod file_reader;
mod forbidden_host;
mod fs_escape;
mod grants;
mod handle_flood;
mod hello;
mod hello_js;
mod hello_py;
mod hello_v0_1;
mod http_fetch;
mod huge_output;
mod ingest_enrich;
mod ingest_store;
mod ingest_transform;
mod ingest_validate;
mod jobs;
mod kv_counter;
mod kv_hoarder;
mod ledger;
mod limits;
mod malformed;
mod markup;
mod metric_flood;
mod order_audit;
mod order_intake;
mod panic;
mod polyglot;
mod report;
mod response_cache;
mod rollout;
mod router;
mod runaway_js;
mod runaway_py;
mod runtime;
mod sandbox;
mod scale_out;
mod sick_health;
mod signing;
mod slow_host_calls;
mod spin_loop;
mod stubborn_shutdown;
mod thumbnail;
mod wasi_standard;

use capsule_host::Host;

/// Fails to compile unless a module named after each example plugin exists.
macro_rules! plugin_has_tests {
    ($name:ident) => {
        #[allow(unused_imports)]
        use crate::$name as _;
    };
}
capsule_tests::foreach_plugin!(plugin_has_tests);

/// A host with default settings that trusts the test key.
pub fn host() -> Host {
    capsule_tests::host_builder().build().expect("host builds")
}
