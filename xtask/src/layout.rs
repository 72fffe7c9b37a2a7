//! The repository's shape, checked: no import circle between modules, no file over
//! [`MAX_FILE_LINES`] lines and no function over [`MAX_FN_LINES`] lines outside tests.
//!
//! Run by `cargo xtask test` (the test `repository_layout` below, so CI fails on a breach).
//! Test code does not count: `tests/` directories and items under `#[cfg(test)]`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// A source file longer than this (test items left out) should be split by concern.
pub const MAX_FILE_LINES: usize = 800;
/// A function longer than this should be split into named steps.
pub const MAX_FN_LINES: usize = 150;

/// The crates' source roots, relative to the workspace root.
pub const CRATE_ROOTS: &[&str] = &[
    "lb-common/src",
    "lb-ebpf/src",
    "lb-userspace/src",
    "lb-testkit/src",
    "bench/src",
    "xtask/src",
];

/// One breach of the layout rules, with where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    FileTooLong {
        file: PathBuf,
        lines: usize,
    },
    FnTooLong {
        file: PathBuf,
        name: String,
        line: usize,
        lines: usize,
    },
    ImportCircle {
        crate_root: PathBuf,
        /// The modules of the circle, in order; each imports the next, the last the first.
        modules: Vec<String>,
        /// For each step of the circle, one place that makes it (file:line).
        because: Vec<String>,
    },
    Unparsable {
        file: PathBuf,
        error: String,
    },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breach::FileTooLong { file, lines } => write!(
                f,
                "{}: {lines} lines outside tests (limit {MAX_FILE_LINES}): split it by concern \
                 into submodules",
                file.display()
            ),
            Breach::FnTooLong {
                file,
                name,
                line,
                lines,
            } => write!(
                f,
                "{}:{line}: fn {name} has {lines} lines (limit {MAX_FN_LINES}): split it into \
                 named steps",
                file.display()
            ),
            Breach::ImportCircle {
                crate_root,
                modules,
                because,
            } => {
                let mut circle = modules.clone();
                circle.push(modules[0].clone());
                write!(
                    f,
                    "{}: import circle {} ({}): move the shared piece to the lower layer",
                    crate_root.display(),
                    circle.join(" -> "),
                    because.join("; ")
                )
            }
            Breach::Unparsable { file, error } => {
                write!(f, "{}: cannot parse: {error}", file.display())
            }
        }
    }
}

/// Every breach in the workspace at `root`.
pub fn check_workspace(root: &Path) -> Vec<Breach> {
    let mut breaches = Vec::new();
    for crate_root in CRATE_ROOTS {
        breaches.extend(check_crate(root, Path::new(crate_root)));
    }
    breaches
}

/// A module path inside one crate: `["source", "file"]`; the crate root is `[]`.
type ModPath = Vec<String>;

/// What one file says about itself: its module, its size, its long functions and the modules
/// of the same crate it refers to.
struct FileFacts {
    module: ModPath,
    /// `(referenced path, line)` for every `crate::`/`super::`/`self::` path outside tests.
    refs: Vec<(ModPath, usize)>,
}

fn check_crate(root: &Path, crate_root: &Path) -> Vec<Breach> {
    let mut breaches = Vec::new();
    let mut files = Vec::new();
    for file in rust_files(&root.join(crate_root)) {
        let rel = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
        // src/bin/*: binaries are crates of their own: sizes checked, not in the module graph.
        let module = module_of(file.strip_prefix(root.join(crate_root)).unwrap_or(&file));
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) => {
                breaches.push(Breach::Unparsable {
                    file: rel,
                    error: err.to_string(),
                });
                continue;
            }
        };
        match scan_file(&text, module.as_ref().unwrap_or(&Vec::new())) {
            Ok(scan) => {
                if scan.product_lines > MAX_FILE_LINES {
                    breaches.push(Breach::FileTooLong {
                        file: rel.clone(),
                        lines: scan.product_lines,
                    });
                }
                for (name, line, lines) in scan.long_fns {
                    breaches.push(Breach::FnTooLong {
                        file: rel.clone(),
                        name,
                        line,
                        lines,
                    });
                }
                if let Some(module) = module {
                    files.push((
                        rel,
                        FileFacts {
                            module,
                            refs: scan.refs,
                        },
                    ));
                }
            }
            Err(err) => breaches.push(Breach::Unparsable {
                file: rel,
                error: err.to_string(),
            }),
        }
    }
    breaches.extend(import_circles(crate_root, &files));
    breaches
}

/// Every `.rs` file under `dir`, sorted, `tests/` directories left out.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module a file under `src/` holds; `None` for binaries (`bin/`).
fn module_of(rel: &Path) -> Option<ModPath> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let (last, dirs) = parts.split_last()?;
    let mut module: ModPath = dirs.to_vec();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") || !dirs.is_empty() && stem != "mod" {
        module.push(stem.to_string());
    }
    Some(module)
}

struct Scan {
    product_lines: usize,
    long_fns: Vec<(String, usize, usize)>,
    refs: Vec<(ModPath, usize)>,
}

fn scan_file(text: &str, module: &ModPath) -> syn::Result<Scan> {
    let file = syn::parse_file(text)?;
    let mut visitor = Visitor {
        module,
        test_lines: 0,
        long_fns: Vec::new(),
        refs: Vec::new(),
    };
    visitor.visit_file(&file);
    let lines = text.lines().count();
    Ok(Scan {
        product_lines: lines.saturating_sub(visitor.test_lines),
        long_fns: visitor.long_fns,
        refs: visitor.refs,
    })
}

struct Visitor<'a> {
    module: &'a ModPath,
    test_lines: usize,
    long_fns: Vec<(String, usize, usize)>,
    refs: Vec<(ModPath, usize)>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        (attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test")))
            || attr.path().is_ident("test")
    })
}

fn span_lines(span: proc_macro2::Span) -> (usize, usize) {
    let (start, end) = (span.start().line, span.end().line);
    (start, end.saturating_sub(start) + 1)
}

impl Visitor<'_> {
    fn function(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let (line, lines) = span_lines(span);
        if lines > MAX_FN_LINES {
            self.long_fns.push((name.to_string(), line, lines));
        }
    }

    /// Resolves a path's leading `crate`/`super`/`self` to a module path of this crate.
    fn record(&mut self, segments: &[String], line: usize) {
        let Some(first) = segments.first() else {
            return;
        };
        let resolved = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "self" => [self.module.as_slice(), &segments[1..]].concat(),
            "super" => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                [base.as_slice(), rest].concat()
            }
            _ => return,
        };
        self.refs.push((resolved, line));
    }
}

impl<'ast> Visit<'ast> for Visitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            _ => &[],
        };
        if is_test_only(attrs) {
            let (_, lines) = span_lines(syn::spanned::Spanned::span(item));
            self.test_lines += lines;
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.function(&f.sig.ident, syn::spanned::Spanned::span(f));
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if is_test_only(&f.attrs) {
            return;
        }
        self.function(&f.sig.ident, syn::spanned::Spanned::span(f));
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = syn::spanned::Spanned::span(path).start().line;
        self.record(&segments, line);
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let line = syn::spanned::Spanned::span(item).start().line;
        let mut paths = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut paths);
        for segments in paths {
            self.record(&segments, line);
        }
    }
}

/// Every path a `use` tree names (`use a::{b, c::d}` → `a::b`, `a::c::d`).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            if n.ident != "self" {
                path.push(n.ident.to_string());
            }
            out.push(path);
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

/// Import circles between sibling modules: a reference from module `a::x` to `a::y::z` is an
/// edge `x -> y` among the children of `a`. A module referring to its own parent's items (the
/// parent's re-exports, shared types) counts as an edge to nothing: parents own children.
fn import_circles(crate_root: &Path, files: &[(PathBuf, FileFacts)]) -> Vec<Breach> {
    let modules: BTreeSet<ModPath> = files.iter().map(|(_, f)| f.module.clone()).collect();
    // (parent, from child, to child) -> first place that makes the edge.
    let mut edges: BTreeMap<(ModPath, String, String), String> = BTreeMap::new();
    for (file, facts) in files {
        for (target, line) in &facts.refs {
            let target = longest_module(&modules, target);
            let common = facts
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let (Some(from), Some(to)) = (facts.module.get(common), target.get(common)) else {
                continue; // one contains the other
            };
            edges
                .entry((facts.module[..common].to_vec(), from.clone(), to.clone()))
                .or_insert_with(|| format!("{}:{line}", file.display()));
        }
    }
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, from, to) in edges.keys() {
        by_parent
            .entry(parent.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    let mut breaches = Vec::new();
    for (parent, graph) in &by_parent {
        for circle in circles(graph) {
            let because = circle
                .iter()
                .zip(circle.iter().cycle().skip(1))
                .map(|(from, to)| edges[&(parent.clone(), from.clone(), to.clone())].clone())
                .collect();
            let name = |m: &String| {
                [parent.as_slice(), std::slice::from_ref(m)]
                    .concat()
                    .join("::")
            };
            breaches.push(Breach::ImportCircle {
                crate_root: crate_root.to_path_buf(),
                modules: circle.iter().map(name).collect(),
                because,
            });
        }
    }
    breaches
}

/// The longest prefix of `path` that is a module of the crate (items resolve to their module).
fn longest_module(modules: &BTreeSet<ModPath>, path: &[String]) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// One circle per strongly connected group of two or more modules (a shortest one through its
/// smallest member), so each tangle is reported once.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(from, tos)| std::iter::once(from).chain(tos))
        .collect();
    let reaches = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(node) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for node in &nodes {
        if reported.contains(*node) || !reach[node].contains(*node) {
            continue;
        }
        let group: BTreeSet<String> = reach[node]
            .iter()
            .filter(|other| reach[other].contains(*node))
            .cloned()
            .collect();
        reported.extend(group.iter().cloned());
        out.push(shortest_cycle(graph, node));
    }
    out
}

/// A shortest path from `start` back to itself (breadth first).
fn shortest_cycle(graph: &BTreeMap<String, BTreeSet<String>>, start: &String) -> Vec<String> {
    let mut previous: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut path = vec![node.clone()];
                while let Some(prev) = previous.get(path.last().unwrap()) {
                    path.push(prev.clone());
                }
                if path.last() != Some(start) {
                    path.push(start.clone());
                }
                path.reverse();
                path.dedup();
                return path;
            }
            if !previous.contains_key(next) && next != start {
                previous.insert(next.clone(), node.clone());
                queue.push_back(next.clone());
            }
        }
    }
    vec![start.clone()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Scan {
        scan_file(text, &vec!["a".into(), "b".into()]).unwrap()
    }

    #[test]
    fn modules_of_files() {
        let m = |p: &str| module_of(Path::new(p));
        assert_eq!(m("lib.rs"), Some(vec![]));
        assert_eq!(m("main.rs"), Some(vec![]));
        assert_eq!(m("plan/mod.rs"), Some(vec!["plan".into()]));
        assert_eq!(
            m("plan/select.rs"),
            Some(vec!["plan".into(), "select".into()])
        );
        assert_eq!(
            m("source/swarm/main.rs"),
            Some(vec!["source".into(), "swarm".into(), "main".into()])
        );
        assert_eq!(m("bin/lbd.rs"), None);
    }

    #[test]
    fn test_items_do_not_count_and_paths_resolve() {
        let long_body = "    let _x = 1;\n".repeat(MAX_FN_LINES);
        let text = format!(
            "use crate::plan::Plan;\nuse super::{{c, d::E}};\nfn long() {{\n{long_body}}}\n\
             #[cfg(test)]\nmod tests {{\n    use crate::dataplane::X;\n    fn t() {{}}\n}}\n"
        );
        let s = scan(&text);
        assert_eq!(s.long_fns.len(), 1, "{:?}", s.long_fns);
        assert_eq!(s.long_fns[0].0, "long");
        assert_eq!(s.product_lines, text.lines().count() - 5);
        let refs: Vec<String> = s.refs.iter().map(|(p, _)| p.join("::")).collect();
        assert_eq!(refs, ["plan::Plan", "a::c", "a::d::E"]);
    }

    #[test]
    fn circles_between_siblings_are_found_once() {
        let facts = |module: &[&str], refs: &[&[&str]]| FileFacts {
            module: module.iter().map(|s| s.to_string()).collect(),
            refs: refs
                .iter()
                .map(|r| (r.iter().map(|s| s.to_string()).collect(), 1))
                .collect(),
        };
        let files = vec![
            (PathBuf::from("src/a.rs"), facts(&["a"], &[&["b", "Thing"]])),
            (PathBuf::from("src/b/mod.rs"), facts(&["b"], &[&["c"]])),
            (
                PathBuf::from("src/b/x.rs"),
                facts(&["b", "x"], &[&["b", "Shared"], &["b", "y"]]),
            ),
            (PathBuf::from("src/b/y.rs"), facts(&["b", "y"], &[])),
            (PathBuf::from("src/c.rs"), facts(&["c"], &[&["a", "f"]])),
            (PathBuf::from("src/lib.rs"), facts(&[], &[&["a"], &["b"]])),
        ];
        let breaches = import_circles(Path::new("x/src"), &files);
        assert_eq!(breaches.len(), 1, "{breaches:?}");
        let Breach::ImportCircle {
            modules, because, ..
        } = &breaches[0]
        else {
            panic!("{breaches:?}")
        };
        assert_eq!(modules, &["a", "b", "c"]);
        assert_eq!(because, &["src/a.rs:1", "src/b/mod.rs:1", "src/c.rs:1"]);
    }

    /// The repository itself keeps the rules.
    #[test]
    fn repository_layout() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let breaches = check_workspace(&root);
        assert!(
            breaches.is_empty(),
            "{} layout breach(es):\n{}",
            breaches.len(),
            breaches
                .iter()
                .map(|b| format!("  {b}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
