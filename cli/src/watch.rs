//! `capsule serve --watch`: a changed plugin file triggers a verified reload.
//! Directories are watched rather than files, because signing or copying a
//! plugin usually replaces the file (a new inode) rather than writing it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use capsule_host::Host;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long to wait for a burst of file events to settle before reloading.
const SETTLE: Duration = Duration::from_millis(300);

/// How often the watcher looks for plugins loaded or unloaded since (a
/// policy apply), to follow their files.
const RESYNC: Duration = Duration::from_secs(1);

/// Starts watching the file of every plugin the host has loaded, following
/// plugins a policy apply adds or removes; runs until the process ends. A
/// reload that fails keeps the old version and is logged.
pub fn watch(host: Host) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                for path in event.paths {
                    let _ = sender.send(path);
                }
            }
        }) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::error!(error = %err, "cannot watch plugin files; --watch is off");
                return;
            }
        };
    let mut watched = BTreeSet::new();
    let by_file = follow(&host, &mut watcher, &mut watched);
    tracing::info!(files = by_file.len(), "watching plugin files for changes");
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let mut watcher = watcher;
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let first = tokio::select! {
                received = receiver.recv() => match received {
                    Some(path) => path,
                    None => return,
                },
                _ = resync.tick() => {
                    follow(&host, &mut watcher, &mut watched);
                    continue;
                }
            };
            let mut changed = BTreeSet::from([first]);
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    Some(path) = receiver.recv() => { changed.insert(path); }
                }
            }
            let by_file = follow(&host, &mut watcher, &mut watched);
            let names: BTreeSet<&String> = changed
                .iter()
                .filter_map(|path| {
                    let path = path.canonicalize().unwrap_or_else(|_| path.clone());
                    by_file.get(&path)
                })
                .flatten()
                .collect();
            for name in names {
                let reloaded = host.reload(name).await;
                let outcome = match &reloaded {
                    Ok(_) => "ok".to_owned(),
                    Err(err) => format!("failed ({})", err.kind()),
                };
                host.audit().action("watch", "reload", name, &outcome);
                match reloaded {
                    Ok(details) => tracing::info!(
                        plugin = %name,
                        version = %capsule_host::text::log_field(&details.info.version),
                        digest = %details.digest,
                        "reloaded after its file changed"
                    ),
                    Err(err) => tracing::warn!(
                        plugin = %name,
                        error = %capsule_host::text::log_field(&err.to_string()),
                        "the changed file was refused; the previous version keeps serving"
                    ),
                }
            }
        }
    });
}

/// The loaded plugins by file, watching the folder of any file not yet
/// watched (`watched` holds the folders tried so far: one that cannot be
/// watched is reported once, not every second).
fn follow(
    host: &Host,
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
) -> BTreeMap<PathBuf, Vec<String>> {
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, path) in host.plugin_files() {
        let file = path.canonicalize().unwrap_or(path);
        by_file.entry(file).or_default().push(name);
    }
    for dir in by_file.keys().filter_map(|file| file.parent()) {
        if watched.contains(dir) {
            continue;
        }
        watched.insert(dir.to_owned());
        if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %err, "cannot watch a plugin folder");
        }
    }
    by_file
}
