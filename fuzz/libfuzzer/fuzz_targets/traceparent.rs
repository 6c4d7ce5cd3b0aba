#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (capsule_fuzz::target("traceparent")
        .expect("a known target")
        .check)(data);
});
