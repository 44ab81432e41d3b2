//! The shape of `src/` (DESIGN §2), checked on every run: the file-level import graph has no
//! cycle, no file is over 600 lines, nothing outside the HTTP edge names an axum or hyper type,
//! and nothing imports `startup`.
//!
//! The graph is read from the source text: every `use` tree and every inline `crate::`,
//! `super::` or `self::` path, resolved to the file that defines the item, following `pub use`
//! re-exports of a `mod.rs` (a facade is not a dependency of its own; its users depend on what it
//! re-exports). Comments are ignored. It is a lexical reading, good for this crate's code, not a
//! Rust parser.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a file in `src/` may have.
const MAX_LINES: usize = 600;

/// Files that may name axum or hyper types: the HTTP edge and what composes it.
fn may_name_http(rel: &str) -> bool {
    rel.starts_with("http/") || rel == "startup.rs" || rel == "main.rs"
}

/// One source file: its module path (`cache::tiered`), text without comments, and re-exports.
struct File {
    rel: String,
    module: Vec<String>,
    code: String,
    lines: usize,
    /// `pub use` names → the path they stand for, as written in this file.
    reexports: BTreeMap<String, Vec<String>>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod") | Some("lib") | Some("main")
    ) {
        parts.pop();
    }
    parts
}

/// The text with `//` comments removed (string literals are kept; a `//` inside one, as in a
/// URL, is recognised by the quote count before it).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut cut = line.len();
        let mut quotes = 0;
        let bytes = line.as_bytes();
        for i in 0..bytes.len() {
            match bytes[i] {
                b'"' if i == 0 || bytes[i - 1] != b'\\' => quotes += 1,
                b'/' if quotes % 2 == 0 && bytes.get(i + 1) == Some(&b'/') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The code without its `#[cfg(test)]` module (by convention the end of a file): test-only
/// imports are not dependencies of the crate, and a `use super::*` in a file's test module means
/// the file itself, not its parent.
fn production_code(code: &str) -> String {
    match code.find("#[cfg(test)]") {
        Some(i) => code[..i].to_owned(),
        None => code.to_owned(),
    }
}

/// Expands a `use` tree (`crate::a::{b, c::{d as e, self}}`) into full paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let close = tree.rfind('}').filter(|c| *c > open).unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
        return;
    }
    let tree = tree.split(" as ").next().unwrap_or(tree);
    let mut path = prefix.to_vec();
    path.extend(
        tree.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "self" || prefix.is_empty())
            .map(str::to_owned),
    );
    out.push(path);
}

/// Every `use` declaration of the text (rustfmt puts each at the start of a line, after an
/// optional visibility): (is it `pub`, its expanded paths, its byte range).
fn uses(code: &str) -> Vec<(bool, Vec<Vec<String>>)> {
    use_decls(code)
        .into_iter()
        .map(|(public, paths, _)| (public, paths))
        .collect()
}

fn use_decls(code: &str) -> Vec<(bool, Vec<Vec<String>>, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let t = line.trim_start();
        let (public, rest) = ["pub(crate) use ", "pub(super) use ", "pub use "]
            .iter()
            .find_map(|p| t.strip_prefix(p).map(|r| (true, r)))
            .or_else(|| t.strip_prefix("use ").map(|r| (false, r)))
            .unwrap_or((false, ""));
        if rest.is_empty() {
            continue;
        }
        let at = start + (line.len() - rest.len());
        let end = code[at..].find(';').map_or(code.len(), |e| at + e);
        let mut paths = Vec::new();
        expand(&code[at..end], &[], &mut paths);
        out.push((public, paths, start..end));
    }
    out
}

/// Index of `word` in `text` where it starts a token.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let ok = at == 0
            || !text[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Inline paths such as `crate::startup::stopped` or `super::Backoff` outside `use` statements.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = find_word(&code[from..], root).map(|i| from + i) {
            let tail: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(
                tail.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
            from = at + root.len();
        }
    }
    out
}

struct Crate {
    files: Vec<File>,
    by_module: BTreeMap<Vec<String>, usize>,
}

impl Crate {
    fn load() -> Crate {
        let root = src();
        let mut paths = Vec::new();
        rust_files(&root, &mut paths);
        let mut files = Vec::new();
        for p in paths {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "main.rs" {
                continue; // the binary: it uses the library from outside
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = production_code(&strip_comments(&text));
            let mut reexports = BTreeMap::new();
            for (public, paths) in uses(&code) {
                if public {
                    for path in paths {
                        if let Some(name) = path.last() {
                            reexports.insert(name.clone(), path);
                        }
                    }
                }
            }
            files.push(File {
                module: module_of(&rel),
                rel,
                lines: text.lines().count(),
                code,
                reexports,
            });
        }
        let by_module = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        Crate { files, by_module }
    }

    /// The file defining what `path` (as written in file `from`) names; `None` for other crates.
    fn resolve(&self, from: usize, path: &[String], depth: usize) -> Option<usize> {
        if depth > 8 || path.is_empty() {
            return None;
        }
        let here = &self.files[from].module;
        let (mut module, rest): (Vec<String>, &[String]) = match path[0].as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "super" => {
                let mut m = here.clone();
                m.pop();
                let mut rest = &path[1..];
                while rest.first().map(String::as_str) == Some("super") {
                    m.pop();
                    rest = &rest[1..];
                }
                (m, rest)
            }
            "self" => (here.clone(), &path[1..]),
            first => {
                // A child module of this file's module, or another crate.
                let mut m = here.clone();
                m.push(first.to_owned());
                if !self.by_module.contains_key(&m) {
                    return None;
                }
                (here.clone(), path)
            }
        };
        let mut rest = rest;
        while let Some(seg) = rest.first() {
            let mut next = module.clone();
            next.push(seg.clone());
            if self.by_module.contains_key(&next) {
                module = next;
                rest = &rest[1..];
            } else {
                break;
            }
        }
        let file = *self.by_module.get(&module)?;
        if let Some(item) = rest.first() {
            if let Some(target) = self.files[file].reexports.get(item) {
                if target.as_slice() != path {
                    if let Some(t) = self.resolve(file, target, depth + 1) {
                        return Some(t);
                    }
                }
            }
        }
        Some(file)
    }

    /// File-level edges: who depends on whom.
    fn edges(&self) -> BTreeMap<usize, BTreeSet<usize>> {
        let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (i, f) in self.files.iter().enumerate() {
            let mut paths: Vec<Vec<String>> = Vec::new();
            let mut code_without_uses = f.code.clone();
            for (public, ps) in uses(&f.code) {
                for p in ps {
                    // A facade's re-export of its own children is not a dependency of its own.
                    let own_child = public && !matches!(p[0].as_str(), "crate" | "super");
                    if !own_child {
                        paths.push(p);
                    }
                }
            }
            // Inline paths, outside `use` declarations (those were expanded above).
            for (_, _, range) in use_decls(&f.code).into_iter().rev() {
                code_without_uses.replace_range(range, "");
            }
            paths.extend(inline_paths(&code_without_uses));
            for p in paths {
                if let Some(t) = self.resolve(i, &p, 0) {
                    if t != i {
                        edges.entry(i).or_default().insert(t);
                    }
                }
            }
        }
        edges
    }
}

/// A cycle in the graph, if there is one (as the files along it).
fn find_cycle(n: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the stack, 2 done.
    fn visit(
        v: usize,
        edges: &BTreeMap<usize, BTreeSet<usize>>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[v] = 1;
        stack.push(v);
        for &w in edges.get(&v).into_iter().flatten() {
            if state[w] == 1 {
                let start = stack.iter().position(|&x| x == w).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(w);
                return Some(cycle);
            }
            if state[w] == 0 {
                if let Some(c) = visit(w, edges, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[v] = 2;
        None
    }
    let mut state = vec![0u8; n];
    for v in 0..n {
        if state[v] == 0 {
            if let Some(c) = visit(v, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_import_graph_of_src_has_no_cycle() {
    let krate = Crate::load();
    let edges = krate.edges();
    if let Some(cycle) = find_cycle(krate.files.len(), &edges) {
        let names: Vec<&str> = cycle.iter().map(|&i| krate.files[i].rel.as_str()).collect();
        panic!("import cycle: {}", names.join(" -> "));
    }
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    // The reader itself, on two made-up files that import each other (through a facade).
    let file = |rel: &str, text: &str| {
        let code = production_code(&strip_comments(text));
        let mut reexports = BTreeMap::new();
        for (public, paths) in uses(&code) {
            if public {
                for path in paths {
                    reexports.insert(path.last().unwrap().clone(), path);
                }
            }
        }
        File {
            rel: rel.into(),
            module: module_of(rel),
            lines: text.lines().count(),
            code,
            reexports,
        }
    };
    let files = vec![
        file("lib.rs", "pub mod a;\npub mod b;\n"),
        file("a/mod.rs", "mod x;\npub use x::{X, Y as Z};\n"),
        file(
            "a/x.rs",
            "use crate::b::B; // crate::lib::Nothing\npub struct X;\n",
        ),
        file(
            "b.rs",
            "pub struct B;\nfn f() -> crate::a::X { let u = \"http://x\"; todo!() }\n",
        ),
    ];
    let by_module = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.clone(), i))
        .collect();
    let krate = Crate { files, by_module };
    let edges = krate.edges();
    let cycle = find_cycle(krate.files.len(), &edges).expect("a -> b -> a is found");
    let names: BTreeSet<&str> = cycle.iter().map(|&i| krate.files[i].rel.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["a/x.rs", "b.rs"]));
    assert!(
        !edges.contains_key(&1),
        "a facade re-exporting its child depends on nothing"
    );
}

#[test]
fn no_file_in_src_is_over_600_lines() {
    let krate = Crate::load();
    let long: Vec<String> = krate
        .files
        .iter()
        .filter(|f| f.lines > MAX_LINES)
        .map(|f| format!("{} ({} lines)", f.rel, f.lines))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn only_the_http_edge_names_axum_or_hyper() {
    let krate = Crate::load();
    let offenders: Vec<&str> = krate
        .files
        .iter()
        .filter(|f| !may_name_http(&f.rel))
        .filter(|f| find_word(&f.code, "axum").is_some() || find_word(&f.code, "hyper").is_some())
        .map(|f| f.rel.as_str())
        .collect();
    assert!(offenders.is_empty(), "axum or hyper named in {offenders:?}");
}

#[test]
fn nothing_imports_startup() {
    let krate = Crate::load();
    let edges = krate.edges();
    let startup = krate.by_module[&vec!["startup".to_owned()]];
    let users: Vec<&str> = edges
        .iter()
        .filter(|(_, to)| to.contains(&startup))
        .map(|(from, _)| krate.files[*from].rel.as_str())
        .collect();
    assert!(users.is_empty(), "startup is imported by {users:?}");
}
