//! Requirements between plugins, from their static manifests: the order a
//! policy loads in, whether what a plugin requires is loaded (in a version
//! its range accepts), dependency cycles, and reloads that would break a
//! plugin that requires the one being replaced.
//!
//! A plugin requires either another plugin, by the name the policy loads it
//! under, or any provider of a capability; each with a semver range over the
//! provider's version. Everything here reads manifests only: no plugin code
//! runs to decide.

use std::collections::{BTreeMap, BTreeSet};

use crate::artifact::manifest::{Manifest, Needs, Requirement};

/// What one loaded (or about to be loaded) plugin offers to others.
#[derive(Debug, Clone)]
pub(crate) struct Provider<'a> {
    /// The name it is loaded under.
    pub(crate) name: &'a str,
    /// Its version.
    pub(crate) version: &'a str,
    /// The capabilities it provides.
    pub(crate) capabilities: &'a [String],
}

/// Whether `requirement` is met by one of `providers`; the error says what
/// is missing or which versions are there instead.
pub(crate) fn satisfied(
    requirement: &Requirement,
    providers: &[Provider<'_>],
) -> Result<(), String> {
    let candidates: Vec<&Provider<'_>> = providers
        .iter()
        .filter(|p| match requirement.needs() {
            Needs::Plugin(name) => p.name == name,
            Needs::Capability(capability) => p.capabilities.iter().any(|c| c == capability),
        })
        .collect();
    if candidates.iter().any(|p| requirement.accepts(p.version)) {
        return Ok(());
    }
    if candidates.is_empty() {
        return Err(match requirement.needs() {
            Needs::Plugin(name) => format!("requires plugin `{name}`, which is not loaded"),
            Needs::Capability(capability) => {
                format!("requires capability `{capability}`, which no loaded plugin provides")
            }
        });
    }
    let found: Vec<String> = candidates
        .iter()
        .map(|p| format!("`{}` {}", p.name, p.version))
        .collect();
    Err(format!(
        "requires {requirement}, but only {} is loaded",
        found.join(", ")
    ))
}

/// Every unmet requirement of `manifest`, joined into one message.
pub(crate) fn unmet(manifest: &Manifest, providers: &[Provider<'_>]) -> Result<(), String> {
    let missing: Vec<String> = manifest
        .requires
        .iter()
        .filter_map(|r| satisfied(r, providers).err())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Which loaded plugins a replacement of `replaced` would leave with an
/// unmet requirement: `providers` describe the host after the replacement
/// (the new version in place of the old). Each entry is the dependent's
/// name and what it would miss.
pub(crate) fn broken_by_replacing<'a>(
    replaced: &str,
    dependents: impl IntoIterator<Item = (&'a str, &'a Manifest)>,
    providers: &[Provider<'_>],
) -> Vec<String> {
    dependents
        .into_iter()
        .filter(|(name, _)| *name != replaced)
        .filter_map(|(name, manifest)| {
            let broken: Vec<String> = manifest
                .requires
                .iter()
                .filter(|r| satisfied(r, providers).is_err())
                .map(|r| format!("`{name}` requires {r}"))
                .collect();
            (!broken.is_empty()).then(|| broken.join("; "))
        })
        .collect()
}

/// The order to load a policy's plugins in, so that each comes after what it
/// requires among them: plugins without a manifest first (what they provide
/// is only known once they have described themselves), then the rest
/// dependencies first, by name where the order is free. Plugins on a cycle of
/// requirements are left out and returned with the cycle they are on.
pub(crate) fn load_order(
    plugins: &BTreeMap<String, Option<&Manifest>>,
) -> (Vec<String>, Vec<(String, String)>) {
    // Edges from each plugin to the plugins of this policy it requires.
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, manifest) in plugins {
        let mut needs = BTreeSet::new();
        for requirement in manifest.iter().flat_map(|m| &m.requires) {
            match requirement.needs() {
                Needs::Plugin(other) => {
                    if let Some((key, _)) = plugins.get_key_value(other) {
                        needs.insert(key.as_str());
                    }
                }
                Needs::Capability(capability) => {
                    for (other, m) in plugins {
                        if m.is_some_and(|m| m.capabilities.iter().any(|c| c == capability)) {
                            needs.insert(other.as_str());
                        }
                    }
                }
            }
        }
        edges.insert(name.as_str(), needs);
    }

    let mut order: Vec<String> = plugins
        .iter()
        .filter(|(_, m)| m.is_none())
        .map(|(name, _)| name.clone())
        .collect();
    let mut placed: BTreeSet<&str> = plugins
        .iter()
        .filter(|(_, m)| m.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    // Kahn's algorithm, smallest name first so the order is stable.
    loop {
        let ready: Vec<&str> = edges
            .iter()
            .filter(|(name, needs)| {
                !placed.contains(*name) && needs.iter().all(|n| placed.contains(n) || n == *name)
            })
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            placed.insert(name);
            order.push(name.to_owned());
        }
    }

    // Whatever is left is on a cycle or waits for one.
    let mut cycles = Vec::new();
    for name in edges.keys().filter(|n| !placed.contains(*n)) {
        if let Some(cycle) = cycle_through(name, &edges) {
            cycles.push(((*name).to_owned(), cycle.join(" → ")));
        }
    }
    // A plugin that only waits for a cycle is loaded last, and refused then
    // as missing what the cycle would have provided.
    for name in edges.keys() {
        if !placed.contains(name) && !cycles.iter().any(|(c, _)| c == name) {
            order.push((*name).to_owned());
        }
    }
    (order, cycles)
}

/// The shortest cycle of requirements from `start` back to itself, as the
/// path of names (ending where it started), if there is one. A plugin that
/// requires a capability it provides itself is not a cycle.
fn cycle_through<'a>(
    start: &'a str,
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
) -> Option<Vec<&'a str>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for node in frontier {
            for &to in edges.get(node).into_iter().flatten() {
                if to == node && node == start {
                    continue;
                }
                if to == start {
                    let mut path = vec![start];
                    let mut at = node;
                    while at != start {
                        path.push(at);
                        at = came_from[at];
                    }
                    path.push(start);
                    let last = path.len() - 1;
                    path[1..last].reverse();
                    return Some(path);
                }
                if to != start && !came_from.contains_key(to) {
                    came_from.insert(to, node);
                    next.push(to);
                }
            }
        }
        frontier = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::manifest::MANIFEST_FORMAT;

    fn manifest(version: &str, capabilities: &[&str], requires: &[(&str, &str)]) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: "x".into(),
            version: version.into(),
            description: String::new(),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            operations: Vec::new(),
            requires: requires
                .iter()
                .map(|(target, range)| match target.strip_prefix("capability:") {
                    Some(c) => Requirement {
                        plugin: None,
                        capability: Some(c.into()),
                        version: (*range).into(),
                    },
                    None => Requirement {
                        plugin: Some((*target).into()),
                        capability: None,
                        version: (*range).into(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn dependencies_load_first_and_cycles_are_reported() {
        let thumbnail = manifest("0.1.0", &["thumbnail"], &[]);
        let gallery = manifest("1.0.0", &[], &[("capability:thumbnail", "^0.1")]);
        let site = manifest("1.0.0", &[], &[("gallery", "^1")]);
        let a = manifest("1.0.0", &[], &[("b", "*")]);
        let b = manifest("1.0.0", &[], &[("c", "*")]);
        let c = manifest("1.0.0", &[], &[("a", "*")]);
        let waits = manifest("1.0.0", &[], &[("a", "*")]);
        let plugins: BTreeMap<String, Option<&Manifest>> = [
            ("a", Some(&a)),
            ("b", Some(&b)),
            ("c", Some(&c)),
            ("site", Some(&site)),
            ("gallery", Some(&gallery)),
            ("thumbnail", Some(&thumbnail)),
            ("legacy", None),
            ("waits", Some(&waits)),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_owned(), m))
        .collect();
        let (order, cycles) = load_order(&plugins);
        assert_eq!(order, ["legacy", "thumbnail", "gallery", "site", "waits"]);
        assert_eq!(
            cycles,
            [
                ("a".to_owned(), "a → b → c → a".to_owned()),
                ("b".to_owned(), "b → c → a → b".to_owned()),
                ("c".to_owned(), "c → a → b → c".to_owned()),
            ]
        );
    }

    #[test]
    fn requirements_name_what_is_missing_or_mismatched() {
        let capabilities = vec!["thumbnail".to_owned()];
        let providers = [Provider {
            name: "images",
            version: "0.2.0",
            capabilities: &capabilities,
        }];
        let needs = |requires| manifest("1.0.0", &[], requires);
        assert!(unmet(&needs(&[("images", ">=0.2")]), &providers).is_ok());
        assert!(unmet(&needs(&[("capability:thumbnail", "0.2")]), &providers).is_ok());
        let old = unmet(&needs(&[("images", "^0.1")]), &providers).unwrap_err();
        assert_eq!(
            old,
            "requires plugin `images` ^0.1, but only `images` 0.2.0 is loaded"
        );
        let absent = unmet(&needs(&[("storage", "*")]), &providers).unwrap_err();
        assert_eq!(absent, "requires plugin `storage`, which is not loaded");
        let nobody = unmet(&needs(&[("capability:resize", "*")]), &providers).unwrap_err();
        assert_eq!(
            nobody,
            "requires capability `resize`, which no loaded plugin provides"
        );
    }

    #[test]
    fn a_replacement_that_breaks_a_dependent_is_named() {
        let gallery = manifest("1.0.0", &[], &[("images", "^0.1")]);
        let capabilities = Vec::new();
        let after = [Provider {
            name: "images",
            version: "0.2.0",
            capabilities: &capabilities,
        }];
        assert_eq!(
            broken_by_replacing("images", [("gallery", &gallery)], &after),
            ["`gallery` requires plugin `images` ^0.1"]
        );
        let fine = [Provider {
            name: "images",
            version: "0.1.7",
            capabilities: &capabilities,
        }];
        assert!(broken_by_replacing("images", [("gallery", &gallery)], &fine).is_empty());
    }
}
