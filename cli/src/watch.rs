//! `capsule serve --watch`: a changed plugin file triggers a verified reload.
//! Directories are watched rather than files, because signing or copying a
//! plugin usually replaces the file (a new inode) rather than writing it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use capsule_host::{Host, Policy};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long to wait for a burst of file events to settle before reloading.
const SETTLE: Duration = Duration::from_millis(300);

/// Starts watching every plugin file of `policy`; runs until the process
/// ends. A reload that fails keeps the old version and is logged.
pub fn watch(host: Host, policy: &Policy) {
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, plugin) in &policy.plugins {
        let file = plugin
            .path
            .canonicalize()
            .unwrap_or_else(|_| plugin.path.clone());
        by_file.entry(file).or_default().push(name.clone());
    }
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
    let dirs: BTreeSet<PathBuf> = by_file
        .keys()
        .filter_map(|file| file.parent().map(PathBuf::from))
        .collect();
    for dir in &dirs {
        if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %err, "cannot watch a plugin folder");
        }
    }
    tracing::info!(files = by_file.len(), "watching plugin files for changes");
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while let Some(first) = receiver.recv().await {
            let mut changed = BTreeSet::from([first]);
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    Some(path) = receiver.recv() => { changed.insert(path); }
                }
            }
            let names: BTreeSet<&String> = changed
                .iter()
                .filter_map(|path| {
                    let path = path.canonicalize().unwrap_or_else(|_| path.clone());
                    by_file.get(&path)
                })
                .flatten()
                .collect();
            for name in names {
                match host.reload(name).await {
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
