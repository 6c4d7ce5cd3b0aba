//! `cargo xtask layers` (also run first by `cargo xtask test`): the
//! top-level modules of the host library must not form a cycle. Every
//! `crate::…` and `super::…` path in `host/src` — in `use` items, in code,
//! and in macro bodies (as tokens) — is an edge from the module it is
//! written in to the top-level module it names; a cycle among those edges is
//! an error that prints the cycle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Edges between top-level modules: from → to → one place that says so.
pub type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Checks `src` (the library's source folder) and prints its layers.
pub fn check(src: &Path) -> Result<()> {
    let graph = graph(src)?;
    let cycles = cycles(&graph);
    if cycles.is_empty() {
        eprintln!(
            "layers: {} modules of {} reach only down: no cycle",
            graph.len(),
            src.display()
        );
        for (level, modules) in levels(&graph).iter().enumerate().rev() {
            eprintln!("  {level:>2}  {}", modules.join(" "));
        }
        return Ok(());
    }
    let mut report = String::new();
    for cycle in &cycles {
        report.push_str("\n  ");
        for pair in cycle.windows(2) {
            let place = &graph[&pair[0]][&pair[1]];
            report.push_str(&format!("{} → {} ({place}); ", pair[0], pair[1]));
        }
    }
    bail!(
        "the host library's modules form {} cycle(s); a lower layer must not name a higher \
         one:{report}",
        cycles.len()
    )
}

/// The module graph of the sources under `src`.
pub fn graph(src: &Path) -> Result<Graph> {
    let mut graph = Graph::new();
    for file in rust_files(src)? {
        let relative = file.strip_prefix(src).expect("below src");
        let module = module_path(relative);
        let Some(top) = module.first().cloned() else {
            continue; // lib.rs: the crate root declares, it does not depend.
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let syntax =
            syn::parse_file(&text).with_context(|| format!("cannot parse {}", file.display()))?;
        let mut paths = Paths::default();
        paths.visit_file(&syntax);
        for path in paths.found {
            let Some(target) = resolve(&module, &path) else {
                continue;
            };
            if target != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("{}: {}", relative.display(), path.join("::")));
            }
        }
        graph.entry(top).or_default();
    }
    Ok(graph)
}

/// Every `.rs` file below `dir`, except binaries.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "bin") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `runtime/load.rs` → `["runtime", "load"]`; `services/mod.rs` →
/// `["services"]`; `lib.rs` → `[]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        parts.pop();
    }
    parts
}

/// The top-level module a path starting with `crate` or `super` names,
/// from inside `module`.
fn resolve(module: &[String], path: &[String]) -> Option<String> {
    match path.first().map(String::as_str) {
        Some("crate") => path.get(1).cloned(),
        Some("super") => {
            let mut base = module.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|p| p == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.first().cloned().or_else(|| rest.first().cloned())
        }
        _ => None,
    }
}

/// Paths starting with `crate` or `super`, as segment names.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super")
        ) {
            self.found.push(segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefixes = Vec::new();
        use_tree(&item.tree, &mut Vec::new(), &mut prefixes);
        self.found.extend(
            prefixes
                .into_iter()
                .filter(|p| matches!(p.first().map(String::as_str), Some("crate" | "super"))),
        );
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        tokens(mac.tokens.clone(), &mut self.found);
        syn::visit::visit_macro(self, mac);
    }
}

/// Every path a `use` tree names.
fn use_tree(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            use_tree(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let mut full = prefix.clone();
            full.push(name.ident.to_string());
            out.push(full);
        }
        syn::UseTree::Rename(rename) => {
            let mut full = prefix.clone();
            full.push(rename.ident.to_string());
            out.push(full);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                use_tree(tree, prefix, out);
            }
        }
    }
}

/// `crate :: a :: b` and `super :: a` sequences in a macro's tokens
/// (including `$crate`, whose tokens are `$` then `crate`).
fn tokens(stream: TokenStream, out: &mut Vec<Vec<String>>) {
    let trees: Vec<TokenTree> = stream.into_iter().collect();
    let mut i = 0;
    while i < trees.len() {
        match &trees[i] {
            TokenTree::Group(group) => tokens(group.stream(), out),
            TokenTree::Ident(ident) if ident == "crate" || ident == "super" => {
                let mut path = vec![ident.to_string()];
                let mut j = i + 1;
                loop {
                    let colons = matches!((trees.get(j), trees.get(j + 1)),
                        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                            if a.as_char() == ':' && b.as_char() == ':');
                    match (colons, trees.get(j + 2)) {
                        (true, Some(TokenTree::Ident(next))) => {
                            path.push(next.to_string());
                            j += 3;
                        }
                        _ => break,
                    }
                }
                if path.len() > 1 {
                    out.push(path);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// The modules of an acyclic graph by layer: layer 0 names no other
/// module, and every module sits one above the highest it names.
pub fn levels(graph: &Graph) -> Vec<Vec<String>> {
    fn level(graph: &Graph, node: &str, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(&known) = memo.get(node) {
            return known;
        }
        let below = graph
            .get(node)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .map(|next| level(graph, next, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(node.to_owned(), below);
        below
    }
    let mut memo = BTreeMap::new();
    let mut layers: Vec<Vec<String>> = Vec::new();
    for node in graph.keys() {
        let at = level(graph, node, &mut memo);
        if layers.len() <= at {
            layers.resize(at + 1, Vec::new());
        }
        layers[at].push(node.clone());
    }
    layers
}

/// Every cycle of the graph, one per strongly connected component, as a
/// closed walk (`a, b, c, a`).
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph
        .keys()
        .chain(graph.values().flat_map(BTreeMap::keys))
        .collect();
    let mut found = Vec::new();
    let mut covered = BTreeSet::new();
    for start in nodes {
        if covered.contains(start) {
            continue;
        }
        if let Some(cycle) = shortest_cycle(graph, start) {
            covered.extend(cycle.iter().cloned());
            found.push(cycle);
        }
    }
    found
}

/// The shortest walk from `start` back to itself, if any.
fn shortest_cycle(graph: &Graph, start: &String) -> Option<Vec<String>> {
    let mut previous: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.clone()]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(&node).into_iter().flat_map(BTreeMap::keys) {
            if next == start {
                let mut walk = vec![start.clone(), node.clone()];
                let mut at = node.clone();
                while let Some(before) = previous.get(&at) {
                    walk.push(before.clone());
                    at = before.clone();
                }
                walk.reverse();
                // `walk` is now start … node start; drop the duplicate head.
                walk.dedup();
                if walk.first() != walk.last() {
                    walk.push(start.clone());
                }
                return Some(walk);
            }
            if !previous.contains_key(next) && next != start {
                previous.insert(next.clone(), node.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_cycle_through_use_items_code_and_macros_is_found() {
        let dir = std::env::temp_dir().join(format!("xtask-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, "lib.rs", "mod a; mod b; mod c;");
        write(&dir, "a.rs", "use crate::b::Thing;");
        write(&dir, "b/mod.rs", "mod inner;");
        write(
            &dir,
            "b/inner.rs",
            "fn f() { let _ = super::super::c::g(); }",
        );
        write(&dir, "c.rs", "macro_rules! m { () => { $crate::a::x() }; }");
        let found_graph = graph(&dir).unwrap();
        assert!(found_graph["a"].contains_key("b"));
        assert!(found_graph["b"].contains_key("c"), "{found_graph:?}");
        assert!(found_graph["c"].contains_key("a"), "{found_graph:?}");
        let found = cycles(&found_graph);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].first(), found[0].last());
        assert_eq!(found[0].len(), 4, "{found:?}");
        assert!(check(&dir).is_err());

        write(&dir, "c.rs", "fn g() {}");
        assert!(check(&dir).is_ok());
        let layers = levels(&graph(&dir).unwrap());
        assert_eq!(layers, [vec!["c"], vec!["b"], vec!["a"]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn super_inside_a_module_stays_inside_it() {
        assert_eq!(
            resolve(
                &["runtime".into(), "load".into()],
                &["super".into(), "plugin".into()]
            ),
            Some("runtime".into())
        );
        assert_eq!(
            resolve(&["runtime".into()], &["super".into(), "error".into()]),
            Some("error".into())
        );
    }
}
