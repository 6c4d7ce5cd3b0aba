#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (capsule_fuzz::target("policy_structured")
        .expect("a known target")
        .check)(data);
});
