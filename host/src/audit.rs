//! The audit log: who did what to the host, when, and how it ended — every
//! administrative action (pause, reload, apply, an admin's publish, …) as
//! it happens, and every refusal — a request without a valid key or beyond
//! its key's role, scope or rate; a plugin reaching for a service it was
//! not granted (`who = plugin:NAME`, `action` = the service) — aggregated
//! per who, what and outcome over a time window, so that a flood of
//! refusals costs one line per window, not one per refusal. (What a refused request aimed at — a plugin, a topic —
//! is chosen by the requester, so it is kept as the example only.)
//!
//! Records go to an in-memory ring (the last [`MEMORY_RECORDS`], what
//! `GET /v1/audit` answers) and, with `[host.audit] file`, to an
//! append-only JSON-lines file rotated by size:
//!
//! ```toml
//! [host.audit]
//! file = "audit.jsonl"
//! max_file_size = "16MiB"    # then audit.jsonl → audit.jsonl.1 → … .keep_files
//! keep_files = 4
//! window = "60s"             # refusals are counted per window
//! ```
//!
//! Budgets: the ring holds [`MEMORY_RECORDS`] records; at most
//! [`MAX_AGGREGATES`] distinct refusals are counted per window, plus one
//! `other` entry per who past that (whos are bounded: the policy's keys,
//! `anonymous`, the loaded plugins); every field is cut to
//! [`MAX_EXAMPLE_BYTES`] (and `…`) before it is kept; on disk at most
//! `max_file_size × (keep_files + 1)` (a rotation that fails drops lines
//! rather than grow the file).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Records kept in memory for `GET /v1/audit`.
pub const MEMORY_RECORDS: usize = 1000;

/// Distinct refusals counted per window; more are counted per who as
/// action `other`.
pub const MAX_AGGREGATES: usize = 256;

/// Bytes of an example message kept with a refusal, and of any field.
pub const MAX_EXAMPLE_BYTES: usize = 256;

/// Where the audit log goes and how much of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// The JSON-lines file; `None`: memory only.
    pub file: Option<PathBuf>,
    /// Size at which the file is rotated.
    pub max_file_bytes: u64,
    /// Rotated files kept (`file.1` … `file.N`).
    pub keep_files: u32,
    /// How long refusals are counted before their line is written.
    pub window: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            file: None,
            max_file_bytes: 16 << 20,
            keep_files: 4,
            window: Duration::from_secs(60),
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// When (RFC 3339, UTC); for refusals, the first in the window.
    pub time: String,
    /// `admin` for an action, `denied` for refusals.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The API key's name, `admin-token`, `anonymous` (no valid key),
    /// `signal` (SIGHUP), `watch` (`--watch`), or `plugin:NAME` for a
    /// plugin's refused service requests.
    pub who: String,
    /// What was done or attempted (`pause`, `apply`, `kv`, `call`, …).
    pub action: String,
    /// What it was done to (a plugin, a topic), if anything.
    pub target: String,
    /// How it ended: `ok`, or the error kind.
    pub outcome: String,
    /// Refusals: how many in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Refusals: the last one in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Refusals: the first one's message, cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
}

/// Refusals of one kind counted in the current window.
struct Pending {
    count: u64,
    first: SystemTime,
    last: SystemTime,
    example: String,
}

/// What the log holds between writes.
struct Inner {
    recent: VecDeque<AuditRecord>,
    window_began: Instant,
    pending: HashMap<(String, String, String), Pending>,
    file: Option<std::fs::File>,
    file_bytes: u64,
}

/// The host's audit log (see the module documentation).
pub struct AuditLog {
    options: AuditOptions,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// A log under `options`; opens (or creates) its file for appending.
    pub fn new(options: AuditOptions) -> Result<AuditLog, String> {
        let (file, file_bytes) = match &options.file {
            Some(path) => {
                remove_beyond(path, options.keep_files);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| format!("audit log {}: {err}", path.display()))?;
                let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
                (Some(file), bytes)
            }
            None => (None, 0),
        };
        Ok(AuditLog {
            options,
            inner: Mutex::new(Inner {
                recent: VecDeque::new(),
                window_began: Instant::now(),
                pending: HashMap::new(),
                file,
                file_bytes,
            }),
        })
    }

    /// A log kept in memory only.
    pub fn in_memory() -> AuditLog {
        AuditLog::new(AuditOptions::default()).expect("a log without a file opens")
    }

    /// Records an administrative action at once.
    pub fn action(&self, who: &str, action: &str, target: &str, outcome: &str) {
        let record = AuditRecord {
            time: rfc3339(SystemTime::now()),
            kind: "admin",
            who: cut(who),
            action: cut(action),
            target: cut(target),
            outcome: cut(outcome),
            count: None,
            until: None,
            example: None,
        };
        let mut inner = self.lock();
        self.flush_if_due(&mut inner);
        self.write(&mut inner, record);
    }

    /// Counts a refusal of `who` doing `action` (on `target`, which goes
    /// into the example only); its line is written when the window ends.
    pub fn denied(&self, who: &str, action: &str, target: &str, outcome: &str, example: &str) {
        let now = SystemTime::now();
        let mut inner = self.lock();
        self.flush_if_due(&mut inner);
        let mut key = (cut(who), cut(action), cut(outcome));
        if !inner.pending.contains_key(&key) && inner.pending.len() >= MAX_AGGREGATES {
            // Who stays known (the names of the policy's keys, and
            // `anonymous`: a bounded set); what they did is lumped.
            key = (key.0, "other".into(), "denied".into());
        }
        let pending = inner.pending.entry(key).or_insert_with(|| Pending {
            count: 0,
            first: now,
            last: now,
            example: cut(&if target.is_empty() {
                cut(example)
            } else {
                format!("{}: {}", cut(target), cut(example))
            }),
        });
        pending.count += 1;
        pending.last = now;
    }

    /// Writes the refusals counted so far if their window has ended.
    pub fn flush_due(&self) {
        let mut inner = self.lock();
        self.flush_if_due(&mut inner);
    }

    /// Writes the refusals counted so far, window or not (on shutdown).
    pub fn flush(&self) {
        let mut inner = self.lock();
        self.flush_pending(&mut inner);
    }

    /// The most recent records, newest last, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<AuditRecord> {
        let mut inner = self.lock();
        self.flush_if_due(&mut inner);
        let skip = inner.recent.len().saturating_sub(limit);
        inner.recent.iter().skip(skip).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_if_due(&self, inner: &mut Inner) {
        if inner.window_began.elapsed() >= self.options.window {
            self.flush_pending(inner);
        }
    }

    fn flush_pending(&self, inner: &mut Inner) {
        inner.window_began = Instant::now();
        let mut pending: Vec<_> = inner.pending.drain().collect();
        pending.sort_by_key(|(_, p)| p.first);
        for ((who, action, outcome), counted) in pending {
            let record = AuditRecord {
                time: rfc3339(counted.first),
                kind: "denied",
                who,
                action,
                target: String::new(),
                outcome,
                count: Some(counted.count),
                until: Some(rfc3339(counted.last)),
                example: Some(counted.example),
            };
            self.write(inner, record);
        }
    }

    /// Keeps `record` in the ring and appends it to the file, rotating
    /// first if it would pass the size bound.
    fn write(&self, inner: &mut Inner, record: AuditRecord) {
        if let Some(file) = &self.options.file {
            let mut line = serde_json::to_vec(&record).unwrap_or_default();
            line.push(b'\n');
            let line_bytes = line.len() as u64;
            let mut fits = true;
            if inner.file_bytes > 0 && inner.file_bytes + line_bytes > self.options.max_file_bytes {
                inner.file = None;
                // A rotation that failed keeps the full file: the line is
                // dropped rather than grow it past its bound.
                fits = self.rotate(file);
            }
            if inner.file.is_none() {
                // Reopened on every write until it works (descriptors can
                // run out for a while).
                inner.file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .ok();
                inner.file_bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            }
            let written = fits
                && inner.file_bytes + line_bytes <= self.options.max_file_bytes.max(line_bytes)
                && matches!(
                    inner.file.as_mut().map(|f| f.write_all(&line)),
                    Some(Ok(()))
                );
            if written {
                inner.file_bytes += line_bytes;
            } else {
                inner.file = None;
                tracing::warn!(file = %file.display(), "cannot write the audit log");
            }
        }
        if inner.recent.len() == MEMORY_RECORDS {
            inner.recent.pop_front();
        }
        inner.recent.push_back(record);
    }

    /// `file.N-1` → `file.N` … `file` → `file.1`; the oldest goes.
    /// Whether the live file made room. The live file is moved aside
    /// first: if it cannot move (an append-only file, say), the rotated
    /// files are left as they are, not shifted out one by one.
    fn rotate(&self, file: &std::path::Path) -> bool {
        let keep = self.options.keep_files;
        let mut aside = file.as_os_str().to_owned();
        aside.push(".rotating");
        let aside = PathBuf::from(aside);
        match std::fs::rename(file, &aside) {
            Ok(()) => {}
            // Gone already: a fresh file has room.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => return false,
        }
        if keep == 0 {
            return std::fs::remove_file(&aside).is_ok();
        }
        let _ = std::fs::remove_file(numbered(file, keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(file, n), numbered(file, n + 1));
        }
        std::fs::rename(&aside, numbered(file, 1)).is_ok()
    }
}

/// `file.n`.
fn numbered(file: &std::path::Path, n: u32) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Removes rotated files past `keep` (left by a run that kept more).
fn remove_beyond(file: &std::path::Path, keep: u32) {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(n) = entry_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Exactly the name rotation gives `.n`, nothing that decodes alike.
        if n > keep && Some(entry_name.as_os_str()) == numbered(file, n).file_name() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `text` cut to [`MAX_EXAMPLE_BYTES`] on a character boundary.
fn cut(text: &str) -> String {
    crate::text::cut(text, MAX_EXAMPLE_BYTES).into_owned()
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_kept_and_refusals_counted_per_window() {
        let log = AuditLog::in_memory();
        log.action("ops", "pause", "hello", "ok");
        for _ in 0..10_000 {
            log.denied("plugin:evil", "kv", "", "denied", "no namespace");
        }
        log.denied(
            "anonymous",
            "call",
            "hello",
            "unauthorized",
            &"x".repeat(10_000),
        );
        // Counted, not yet written: the window is open.
        assert_eq!(log.recent(10).len(), 1);
        log.flush();
        let records = log.recent(10);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].action, "pause");
        assert_eq!(
            (records[1].who.as_str(), records[1].count),
            ("plugin:evil", Some(10_000))
        );
        assert!(records[2].example.as_ref().unwrap().len() <= MAX_EXAMPLE_BYTES + 3);
    }

    #[test]
    fn requester_chosen_targets_cannot_crowd_out_who_was_refused() {
        let log = AuditLog::in_memory();
        // 10,000 anonymous refusals at 10,000 made-up plugin names, long
        // ones: one entry, its example cut.
        for i in 0..10_000 {
            let target = format!("{i}-{}", "n".repeat(60_000));
            log.denied("anonymous", "call", &target, "unauthorized", "no key");
        }
        // Distinct actions past the cap are lumped per who.
        for i in 0..1000 {
            log.denied("stolen-key", &format!("action-{i}"), "", "forbidden", "");
        }
        log.flush();
        let records = log.recent(MEMORY_RECORDS);
        assert_eq!(records.len(), MAX_AGGREGATES + 1);
        let anonymous = records.iter().find(|r| r.who == "anonymous").unwrap();
        assert_eq!(anonymous.count, Some(10_000));
        assert!(anonymous.example.as_ref().unwrap().len() <= MAX_EXAMPLE_BYTES + 3);
        let lumped = records
            .iter()
            .find(|r| r.who == "stolen-key" && r.action == "other")
            .unwrap();
        assert_eq!(lumped.count, Some(1000 - (MAX_AGGREGATES as u64 - 1)));
    }

    #[test]
    fn the_file_rotates_within_its_bound() {
        let dir = crate::test_support::temp_dir("audit-rotate");
        let file = dir.join("audit.jsonl");
        let log = AuditLog::new(AuditOptions {
            file: Some(file.clone()),
            max_file_bytes: 4096,
            keep_files: 2,
            window: Duration::from_secs(60),
        })
        .unwrap();
        for i in 0..1000 {
            log.action("ops", "reload", &format!("plugin-{i}"), "ok");
        }
        let mut total = 0;
        for name in ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"] {
            let size = std::fs::metadata(dir.join(name)).unwrap().len();
            assert!(size <= 4096, "{name}: {size}");
            total += size;
        }
        assert!(!dir.join("audit.jsonl.3").exists());
        assert!(total > 8192);
        // The live file deleted from under the log: the next rotation
        // starts a fresh one, no line lost.
        std::fs::remove_file(&file).unwrap();
        for i in 0..100 {
            log.action("ops", "reload", &format!("again-{i}"), "ok");
        }
        let live = std::fs::read_to_string(&file).unwrap();
        assert!(live.contains("again-99"), "{live}");
        // A restart keeping fewer files removes the older ones, and only
        // them.
        for other in ["audit.jsonl.+9", "audit.jsonl.0009", "audit.jsonl.x"] {
            std::fs::write(dir.join(other), b"").unwrap();
        }
        drop(log);
        let _fewer = AuditLog::new(AuditOptions {
            file: Some(file.clone()),
            max_file_bytes: 4096,
            keep_files: 1,
            window: Duration::from_secs(60),
        })
        .unwrap();
        assert!(dir.join("audit.jsonl.1").exists() && !dir.join("audit.jsonl.2").exists());
        for other in ["audit.jsonl.+9", "audit.jsonl.0009", "audit.jsonl.x"] {
            assert!(dir.join(other).exists(), "{other}");
        }
        // Every line is a whole JSON record; the newest is in the live file.
        let live = std::fs::read_to_string(&file).unwrap();
        let last: serde_json::Value = serde_json::from_str(live.lines().last().unwrap()).unwrap();
        assert_eq!(last["target"], "again-99");
        assert_eq!(last["type"], "admin");
    }
}
