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

/// Capability → the plugin pinned to answer it (the policy's
/// `[capabilities]`).
pub(crate) type Pins = BTreeMap<String, String>;

/// Whether `requirement` is met by `providers` the way calls would resolve
/// it: a plugin by name; a capability by its pinned provider, else by its
/// only provider (several unpinned providers make calls ambiguous, so the
/// requirement is not met). The error says what is missing or which
/// versions are there instead.
pub(crate) fn satisfied(
    requirement: &Requirement,
    providers: &[Provider<'_>],
    pins: &Pins,
) -> Result<(), String> {
    let candidates: Vec<&Provider<'_>> = match requirement.needs() {
        Needs::Plugin(name) => providers.iter().filter(|p| p.name == name).collect(),
        Needs::Capability(capability) => {
            let offering: Vec<&Provider<'_>> = providers
                .iter()
                .filter(|p| p.capabilities.iter().any(|c| c == capability))
                .collect();
            match pins.get(capability) {
                Some(pinned) => {
                    let chosen: Vec<&Provider<'_>> =
                        offering.into_iter().filter(|p| p.name == pinned).collect();
                    if chosen.is_empty() {
                        return Err(format!(
                            "requires capability `{capability}`, pinned to `{pinned}`, which is \
                             not loaded or does not provide it"
                        ));
                    }
                    chosen
                }
                None if offering.len() > 1 => {
                    let names: Vec<&str> = offering.iter().map(|p| p.name).collect();
                    return Err(format!(
                        "requires capability `{capability}`, which {} provide; pin one in \
                         [capabilities] so calls are not ambiguous",
                        names.join(" and ")
                    ));
                }
                None => offering,
            }
        }
    };
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
pub(crate) fn unmet(
    manifest: &Manifest,
    providers: &[Provider<'_>],
    pins: &Pins,
) -> Result<(), String> {
    let missing: Vec<String> = manifest
        .requires
        .iter()
        .filter_map(|r| satisfied(r, providers, pins).err())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// The requirements of loaded plugins that a replacement of `replaced`
/// would break: met with the providers `before` it and unmet `after` it
/// (requirements already unmet are not the replacement's doing). Each entry
/// names the dependent and what it would miss.
pub(crate) fn broken_by_replacing<'a>(
    replaced: &str,
    dependents: impl IntoIterator<Item = (&'a str, &'a Manifest)>,
    before: &[Provider<'_>],
    after: &[Provider<'_>],
    pins: &Pins,
) -> Vec<String> {
    dependents
        .into_iter()
        .filter(|(name, _)| *name != replaced)
        .filter_map(|(name, manifest)| {
            let broken: Vec<String> = manifest
                .requires
                .iter()
                .filter(|r| {
                    satisfied(r, before, pins).is_ok() && satisfied(r, after, pins).is_err()
                })
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
/// requirements are left out and returned with the cycle they are on; the
/// plugins that wait for them are placed last, still in dependency order
/// (they will be refused for what the cycle would have provided).
pub(crate) fn load_order(
    plugins: &BTreeMap<String, Option<&Manifest>>,
    pins: &Pins,
) -> (Vec<String>, Vec<(String, String)>) {
    // Edges from each plugin to the plugins of this policy it requires: a
    // pinned capability to its pin, an unpinned one to every provider.
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
                        let provides =
                            m.is_some_and(|m| m.capabilities.iter().any(|c| c == capability));
                        let chosen = pins.get(capability).is_none_or(|pin| pin == other);
                        if provides && chosen {
                            needs.insert(other.as_str());
                        }
                    }
                }
            }
        }
        // A plugin's own capability is no requirement on itself.
        needs.remove(name.as_str());
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
    place(&edges, &mut placed, &mut order);

    // Whatever is left is on a cycle or waits for one.
    let mut cycles = Vec::new();
    for name in edges.keys().filter(|n| !placed.contains(*n)) {
        if let Some(cycle) = cycle_through(name, &edges) {
            cycles.push(((*name).to_owned(), cycle.join(" → ")));
        }
    }
    // The cycle's members count as settled (they will not load), so the
    // plugins waiting for them are ordered among themselves.
    let mut settled = placed.clone();
    settled.extend(cycles.iter().map(|(name, _)| name.as_str()));
    place(&edges, &mut settled, &mut order);
    (order, cycles)
}

/// Kahn's algorithm: appends to `order`, smallest name first, every plugin
/// whose requirements are all in `placed`, until none is left that can be.
fn place<'a>(
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    placed: &mut BTreeSet<&'a str>,
    order: &mut Vec<String>,
) {
    loop {
        let ready: Vec<&str> = edges
            .iter()
            .filter(|(name, needs)| {
                !placed.contains(*name) && needs.iter().all(|n| placed.contains(n))
            })
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            return;
        }
        for name in ready {
            placed.insert(name);
            order.push(name.to_owned());
        }
    }
}

/// The shortest cycle of requirements from `start` back to itself, as the
/// path of names (ending where it started), if there is one.
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
                if !came_from.contains_key(to) {
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
            operations: None,
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
            config: None,
            metrics: Vec::new(),
            metadata: None,
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
        let (order, cycles) = load_order(&plugins, &Pins::new());
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
        assert!(unmet(&needs(&[("images", ">=0.2")]), &providers, &Pins::new()).is_ok());
        assert!(
            unmet(
                &needs(&[("capability:thumbnail", "0.2")]),
                &providers,
                &Pins::new()
            )
            .is_ok()
        );
        let old = unmet(&needs(&[("images", "^0.1")]), &providers, &Pins::new()).unwrap_err();
        assert_eq!(
            old,
            "requires plugin `images` ^0.1, but only `images` 0.2.0 is loaded"
        );
        let absent = unmet(&needs(&[("storage", "*")]), &providers, &Pins::new()).unwrap_err();
        assert_eq!(absent, "requires plugin `storage`, which is not loaded");
        let nobody = unmet(
            &needs(&[("capability:resize", "*")]),
            &providers,
            &Pins::new(),
        )
        .unwrap_err();
        assert_eq!(
            nobody,
            "requires capability `resize`, which no loaded plugin provides"
        );
    }

    #[test]
    fn a_replacement_that_breaks_a_dependent_is_named() {
        let gallery = manifest("1.0.0", &[], &[("images", "^0.1")]);
        let none = Vec::new();
        let provider = |version| Provider {
            name: "images",
            version,
            capabilities: &none,
        };
        let (old, new, fine) = (
            [provider("0.1.0")],
            [provider("0.2.0")],
            [provider("0.1.7")],
        );
        let pins = Pins::new();
        assert_eq!(
            broken_by_replacing("images", [("gallery", &gallery)], &old, &new, &pins),
            ["`gallery` requires plugin `images` ^0.1"]
        );
        assert!(
            broken_by_replacing("images", [("gallery", &gallery)], &old, &fine, &pins).is_empty()
        );
        // Already broken before: not this replacement's doing.
        let storage = manifest("1.0.0", &[], &[("storage", "*")]);
        assert!(
            broken_by_replacing("images", [("gallery", &storage)], &old, &new, &pins).is_empty()
        );
    }

    #[test]
    fn capabilities_resolve_as_calls_do() {
        let thumbs = vec!["thumbnail".to_owned()];
        let providers = [
            Provider {
                name: "fast",
                version: "0.1.0",
                capabilities: &thumbs,
            },
            Provider {
                name: "slow",
                version: "0.3.0",
                capabilities: &thumbs,
            },
        ];
        let wants = manifest("1.0.0", &[], &[("capability:thumbnail", "^0.3")]);
        let ambiguous = unmet(&wants, &providers, &Pins::new()).unwrap_err();
        assert!(
            ambiguous.contains("fast and slow provide; pin one"),
            "{ambiguous}"
        );
        let mut pins = Pins::new();
        pins.insert("thumbnail".into(), "slow".into());
        assert!(unmet(&wants, &providers, &pins).is_ok());
        pins.insert("thumbnail".into(), "fast".into());
        let pinned = unmet(&wants, &providers, &pins).unwrap_err();
        assert!(pinned.contains("only `fast` 0.1.0 is loaded"), "{pinned}");
        pins.insert("thumbnail".into(), "gone".into());
        let gone = unmet(&wants, &providers, &pins).unwrap_err();
        assert!(gone.contains("pinned to `gone`"), "{gone}");
    }

    #[test]
    fn plugins_waiting_behind_a_cycle_keep_their_order() {
        let c1 = manifest("1.0.0", &["store"], &[("c2", "*")]);
        let c2 = manifest("1.0.0", &[], &[("c1", "*")]);
        let m = manifest("1.0.0", &[], &[("capability:store", "*")]);
        let a = manifest("1.0.0", &[], &[("m", "*")]);
        let s = manifest("1.0.0", &["store"], &[]);
        let own = manifest("1.0.0", &["store"], &[("capability:store", "*")]);
        let plugins: BTreeMap<String, Option<&Manifest>> = [
            ("a", Some(&a)),
            ("c1", Some(&c1)),
            ("c2", Some(&c2)),
            ("m", Some(&m)),
            ("s", Some(&s)),
            ("own", Some(&own)),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_owned(), m))
        .collect();
        let mut pins = Pins::new();
        pins.insert("store".into(), "s".into());
        let (order, cycles) = load_order(&plugins, &pins);
        // Pinned to `s`, `m` waits for nothing on the cycle.
        assert_eq!(order, ["s", "m", "own", "a"]);
        assert_eq!(cycles.len(), 2);
        // Unpinned, `m` waits for the cycle's `c1` too, and `a` still comes after it.
        let (order, cycles) = load_order(&plugins, &Pins::new());
        assert_eq!(cycles.len(), 2);
        let at = |name| order.iter().position(|n| n == name).unwrap();
        assert!(at("m") < at("a"), "{order:?}");
    }
}
