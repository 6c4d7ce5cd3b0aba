#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (capsule_fuzz::target("oci").expect("a known target").check)(data);
});
