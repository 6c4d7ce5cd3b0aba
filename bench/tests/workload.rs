//! The instruction-count workload runs natively: every measurement loads,
//! answers what it must and reports its rounds. Its being an integration
//! test of this package is also what makes `cargo test --workspace` build
//! the binary, with the tests' profile and features, for `cargo xtask test`
//! to count under callgrind afterwards.

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn every_measurement_runs_its_rounds_and_reports_them() {
    let output = Command::new(env!("CARGO_BIN_EXE_capsule-instructions"))
        .output()
        .expect("the workload starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    let mut rounds: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("measure"), "{line}");
        let name = words.next().expect("a name").to_owned();
        let calls = words
            .next()
            .expect("a call count")
            .parse()
            .expect("a number");
        rounds.entry(name).or_default().push(calls);
    }
    assert_eq!(
        rounds,
        BTreeMap::from([
            ("echo_fresh".to_owned(), vec![32; 5]),
            ("echo_nested_warm".to_owned(), vec![100; 5]),
            ("echo_warm".to_owned(), vec![100; 5]),
            ("sieve".to_owned(), vec![1; 5]),
        ]),
        "the names and call counts bench/instructions.toml budgets"
    );
}
