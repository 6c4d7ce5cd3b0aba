//! Every committed fuzz input, replayed on stable: the seed corpora
//! (`fuzz/corpus/<target>/`) and every input a fuzz run ever found a
//! problem with (`fuzz/regressions/<target>/`), through the same checks the
//! fuzzer runs. A regression that comes back fails here, in
//! `cargo xtask test`, without nightly.

use std::path::{Path, PathBuf};

use capsule_fuzz::{TARGETS, Target};
use sha2::{Digest, Sha256};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Replays one folder of inputs; returns how many ran and those that failed.
fn replay(target: &Target, folder: &str) -> (usize, Vec<String>) {
    let inputs = files(&fuzz_dir().join(folder).join(target.name));
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| (target.check)(&data)).is_err() {
            failed.push(format!(
                "{} on {} (it checks: {})",
                target.name,
                path.display(),
                target.about
            ));
        }
    }
    (inputs.len(), failed)
}

/// The file name a seed is committed under.
fn seed_name(seed: &[u8]) -> String {
    let digest = Sha256::digest(seed);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("seed-{hex}")
}

#[test]
fn every_corpus_and_regression_replays_clean() {
    let (mut replayed, mut failed) = (0, Vec::new());
    for target in TARGETS {
        for folder in ["corpus", "regressions"] {
            let (count, failures) = replay(target, folder);
            replayed += count;
            failed.extend(failures);
        }
    }
    assert!(failed.is_empty(), "failing inputs:\n{}", failed.join("\n"));
    assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
}

/// The seeds each target names are committed (`CAPSULE_WRITE_SEEDS=1`
/// writes them), so a fuzz run and this replay start from them.
#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("CAPSULE_WRITE_SEEDS").is_some();
    let mut missing = Vec::new();
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target.name);
        let seeds = (target.seeds)();
        if write {
            // Seeds no target names any more go (inputs the fuzzer found stay).
            let current: Vec<String> = seeds.iter().map(|seed| seed_name(seed)).collect();
            for path in files(&dir) {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("seed-") && !current.contains(&name) {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        for seed in seeds {
            let path = dir.join(seed_name(&seed));
            if path.exists() {
                continue;
            }
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &seed).unwrap();
            } else {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "seeds not committed (run with CAPSULE_WRITE_SEEDS=1): {missing:?}"
    );
}

/// Each target has a libFuzzer binary calling exactly its check, and each
/// binary is a target's.
#[test]
fn every_target_has_a_libfuzzer_binary() {
    for path in files(&fuzz_dir().join("libfuzzer/fuzz_targets")) {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            capsule_fuzz::target(&name).is_some(),
            "{} runs no target of capsule-fuzz",
            path.display()
        );
    }
    for target in TARGETS {
        let path = fuzz_dir()
            .join("libfuzzer/fuzz_targets")
            .join(format!("{}.rs", target.name));
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(
            source.contains(&format!("\"{}\"", target.name)),
            "{} does not run target {}",
            path.display(),
            target.name
        );
    }
}

/// docs/fuzzing.md describes every target.
#[test]
fn every_target_is_documented() {
    let docs = std::fs::read_to_string(fuzz_dir().join("../docs/fuzzing.md")).unwrap();
    for target in TARGETS {
        assert!(
            docs.contains(&format!("| `{}` |", target.name)),
            "docs/fuzzing.md has no row for `{}`",
            target.name
        );
    }
}
