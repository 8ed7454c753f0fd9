//! The module graph of every crate has no cycle: no module imports, directly or through others,
//! a module that imports it back.
//!
//! An edge `a -> b` means that module `a` names an item defined in module `b`: through a `use`
//! declaration or a path in code (`crate::…`, `super::…`, `self::…`, `child::…`). A name reached
//! through a re-export counts for the module that defines it, and public re-exports (`pub use`,
//! as in `lib.rs` or a folder's `mod.rs`) are not imports of their own. Unit-test modules
//! (`#[cfg(test)] mod tests`) are leaves that nothing imports, so they are left out.
//!
//! This reads the sources as text (no `syn` in the build): comments and literals are removed,
//! then `use` trees and paths are parsed from the tokens. `cargo test --test modules --
//! --nocapture` prints every crate's graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

#[derive(Debug, Default)]
struct Module {
    /// Submodules declared in this file (`mod x;` or an inline `mod x { … }`).
    children: BTreeSet<String>,
    /// Names of items defined here (functions, types, traits, constants, macros).
    defines: BTreeSet<String>,
    /// `use` declarations: local name → path as written (resolved later).
    aliases: BTreeMap<String, ModPath>,
    /// `use a::b::*` paths as written.
    globs: Vec<ModPath>,
    /// Paths this module names as an import (private `use` declarations and paths in code).
    references: Vec<ModPath>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Source text without comments, string, byte-string and char literals.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && is_raw_string(&chars, i) {
            i += 1;
            let mut hashes = 0;
            while chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a), which stays.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_raw_string(chars: &[char], i: usize) -> bool {
    // `r"…"` or `r#"…"#`, not an identifier ending in r (`for"` cannot happen; `br"` can).
    let before_ok = i == 0
        || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
        || (chars[i - 1] == 'b'
            && (i < 2 || !(chars[i - 2].is_alphanumeric() || chars[i - 2] == '_')));
    let mut j = i + 1;
    while j < chars.len() && chars[j] == '#' {
        j += 1;
    }
    before_ok && chars.get(j) == Some(&'"')
}

fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(Token::Ident(word.trim_start_matches("r#").to_string()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token::PathSep);
            i += 2;
        } else if c.is_whitespace() || c.is_ascii_digit() {
            i += 1;
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

fn ident(tokens: &[Token], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some(Token::Ident(s)) => Some(s),
        _ => None,
    }
}

/// The index just past the `}` matching the `{` at `open`.
fn matching_brace(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Removes `#[cfg(test)] mod name { … }` blocks; returns the names of `#[cfg(test)] mod name;`
/// files, which are left out as well.
fn drop_test_modules(tokens: Vec<Token>) -> (Vec<Token>, BTreeSet<String>) {
    let is = |t: &Token, c: char| *t == Token::Punct(c);
    let mut out = Vec::with_capacity(tokens.len());
    let mut test_files = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let cfg_test = is(&tokens[i], '#')
            && tokens.len() > i + 6
            && is(&tokens[i + 1], '[')
            && ident(&tokens, i + 2) == Some("cfg")
            && is(&tokens[i + 3], '(')
            && ident(&tokens, i + 4) == Some("test")
            && is(&tokens[i + 5], ')')
            && is(&tokens[i + 6], ']');
        if cfg_test {
            let mut j = i + 7;
            // Further attributes, then an optional visibility.
            while j < tokens.len() && is(&tokens[j], '#') {
                while j < tokens.len() && !is(&tokens[j], ']') {
                    j += 1;
                }
                j += 1;
            }
            if ident(&tokens, j) == Some("pub") {
                j += 1;
                if tokens.get(j).is_some_and(|t| is(t, '(')) {
                    while j < tokens.len() && !is(&tokens[j], ')') {
                        j += 1;
                    }
                    j += 1;
                }
            }
            if ident(&tokens, j) == Some("mod") {
                if let Some(name) = ident(&tokens, j + 1) {
                    match tokens.get(j + 2) {
                        Some(Token::Punct('{')) => {
                            i = matching_brace(&tokens, j + 2);
                            continue;
                        }
                        Some(Token::Punct(';')) => {
                            test_files.insert(name.to_string());
                            i = j + 3;
                            continue;
                        }
                        _ => {}
                    }
                }
            }
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    (out, test_files)
}

/// One `use` tree from `tokens[i..]` (after the `use` keyword) up to its `;`: the (local name,
/// path) pairs, where a glob has the local name `*` and `self` in braces names the prefix.
fn parse_use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: &ModPath,
    out: &mut Vec<(String, ModPath)>,
) {
    let mut path = prefix.clone();
    loop {
        match tokens.get(*i) {
            Some(Token::Ident(s))
                if s == "self"
                    && !path.is_empty()
                    && path.len() == prefix.len()
                    && !prefix.is_empty() =>
            {
                *i += 1;
                // `{self}` or `{self as x}` inside braces: the prefix module itself.
                let mut name = path.last().cloned().unwrap_or_default();
                if ident(tokens, *i) == Some("as") {
                    name = ident(tokens, *i + 1).unwrap_or("_").to_string();
                    *i += 2;
                }
                out.push((name, path));
                return;
            }
            Some(Token::Ident(s)) => {
                path.push(s.clone());
                *i += 1;
                match tokens.get(*i) {
                    Some(Token::PathSep) => {
                        *i += 1;
                    }
                    _ => {
                        let mut name = s.clone();
                        if ident(tokens, *i) == Some("as") {
                            name = ident(tokens, *i + 1).unwrap_or("_").to_string();
                            *i += 2;
                        }
                        out.push((name, path));
                        return;
                    }
                }
            }
            Some(Token::Punct('*')) => {
                *i += 1;
                out.push(("*".into(), path));
                return;
            }
            Some(Token::Punct('{')) => {
                *i += 1;
                loop {
                    match tokens.get(*i) {
                        Some(Token::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Token::Punct(',')) => *i += 1,
                        None => return,
                        _ => parse_use_tree(tokens, i, &path, out),
                    }
                }
            }
            Some(Token::PathSep) => *i += 1, // a leading `::`
            _ => return,
        }
    }
}

const ITEM_KEYWORDS: [&str; 9] = [
    "fn",
    "struct",
    "enum",
    "trait",
    "type",
    "const",
    "static",
    "union",
    "macro_rules",
];
const KEYWORDS: [&str; 8] = [
    "fn", "unsafe", "extern", "async", "const", "mut", "impl", "dyn",
];

fn parse_module(file: &Path) -> (Module, BTreeSet<String>) {
    let source = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let (tokens, test_files) = drop_test_modules(tokenize(&strip(&source)));
    let mut module = Module::default();
    let mut i = 0;
    while i < tokens.len() {
        let word = ident(&tokens, i);
        let prev = if i > 0 { tokens.get(i - 1) } else { None };
        match word {
            Some("mod") => {
                if let Some(name) = ident(&tokens, i + 1) {
                    module.children.insert(name.to_string());
                }
                i += 2;
            }
            Some("use") => {
                let public = matches!(prev, Some(Token::Ident(p)) if p == "pub")
                    || (matches!(prev, Some(Token::Punct(')')))
                        && (2..=5).any(|k| i >= k && ident(&tokens, i - k) == Some("pub")));
                i += 1;
                let mut entries = Vec::new();
                parse_use_tree(&tokens, &mut i, &Vec::new(), &mut entries);
                for (name, path) in entries {
                    if name == "*" {
                        module.globs.push(path.clone());
                    } else {
                        module.aliases.insert(name, path.clone());
                    }
                    if !public {
                        module.references.push(path);
                    }
                }
            }
            Some(w) if ITEM_KEYWORDS.contains(&w) => {
                let mut j = i + 1;
                if tokens.get(j) == Some(&Token::Punct('!')) {
                    j += 1;
                }
                if let Some(name) = ident(&tokens, j).filter(|n| !KEYWORDS.contains(n)) {
                    module.defines.insert(name.to_string());
                }
                i += 1;
            }
            Some(first)
                if tokens.get(i + 1) == Some(&Token::PathSep)
                    && prev != Some(&Token::PathSep)
                    && !matches!(prev, Some(Token::Ident(p)) if p == "in") =>
            {
                let mut path = vec![first.to_string()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&Token::PathSep) {
                    match ident(&tokens, j + 1) {
                        Some(s) => path.push(s.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                module.references.push(path);
                i = j;
            }
            _ => i += 1,
        }
    }
    (module, test_files)
}

/// Every module of a crate's `src`, by path (`[]` is the crate root).
fn crate_modules(src: &Path) -> BTreeMap<ModPath, Module> {
    let mut modules = BTreeMap::new();
    let mut skip: BTreeSet<ModPath> = BTreeSet::new();
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let mut path: ModPath = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.len() == 1 && (path[0] == "lib" || path[0] == "main") {
            path.clear();
        } else if path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        let (module, test_files) = parse_module(&file);
        for name in test_files {
            let mut p = path.clone();
            p.push(name);
            skip.insert(p);
        }
        modules.insert(path, module);
    }
    modules.retain(|path, _| !skip.iter().any(|s| path.starts_with(s)));
    modules
}

/// The absolute path of a path written in module `at`, or `None` for another crate's.
fn absolute(modules: &BTreeMap<ModPath, Module>, at: &ModPath, path: &ModPath) -> Option<ModPath> {
    let first = path.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (at.clone(), &path[1..]),
        "super" => {
            let mut base = at.clone();
            let mut k = 0;
            while path.get(k).is_some_and(|s| s == "super") {
                base.pop()?;
                k += 1;
            }
            (base, &path[k..])
        }
        name if modules[at].children.contains(name) => (at.clone(), &path[..]),
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module defining the item an absolute path names (following re-exports), or the module
/// itself when the path names a module.
fn defining_module(
    modules: &BTreeMap<ModPath, Module>,
    path: &ModPath,
    depth: usize,
) -> Option<ModPath> {
    if depth > 16 {
        return None;
    }
    let prefix_len = (0..=path.len())
        .rev()
        .find(|&n| modules.contains_key(&path[..n]))?;
    let owner = path[..prefix_len].to_vec();
    let Some(name) = path.get(prefix_len) else {
        return Some(owner);
    };
    let module = &modules[&owner];
    if module.defines.contains(name) || module.children.contains(name) {
        return Some(owner);
    }
    let follow = |target: &ModPath| -> Option<ModPath> {
        let mut target = absolute(modules, &owner, target)?;
        target.extend(path[prefix_len + 1..].iter().cloned());
        defining_module(modules, &target, depth + 1)
    };
    if let Some(target) = module.aliases.get(name) {
        return follow(target);
    }
    for glob in &module.globs {
        let mut target = glob.clone();
        target.push(name.clone());
        if let Some(found) = follow(&target) {
            let found_module = &modules[&found];
            if found_module.defines.contains(name) || found_module.children.contains(name) {
                return Some(found);
            }
        }
    }
    Some(owner)
}

fn module_name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// Strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        next: usize,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g ModPath) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn module_graph(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules = crate_modules(src);
    let mut graph = BTreeMap::new();
    for (at, module) in &modules {
        let mut edges = BTreeSet::new();
        for reference in &module.references {
            let Some(path) = absolute(&modules, at, reference) else {
                continue;
            };
            if let Some(target) = defining_module(&modules, &path, 0) {
                if &target != at {
                    edges.insert(target);
                }
            }
        }
        graph.insert(at.clone(), edges);
    }
    graph
}

fn workspace_crates() -> Vec<(String, PathBuf)> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(crates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                p.join("src"),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let crates = workspace_crates();
    assert!(crates.len() >= 5, "found only {crates:?}");
    let mut failures = Vec::new();
    for (name, src) in &crates {
        let graph = module_graph(src);
        println!("{name} ({} modules)", graph.len());
        for (module, edges) in &graph {
            let targets: Vec<String> = edges.iter().map(module_name).collect();
            println!("  {} -> {}", module_name(module), targets.join(", "));
        }
        for cycle in cycles(&graph) {
            let names: Vec<String> = cycle.iter().map(module_name).collect();
            failures.push(format!("{name}: {}", names.join(" <-> ")));
        }
    }
    assert!(
        failures.is_empty(),
        "modules importing each other:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_graph_reader_sees_cycles_and_re_exports() {
    // Two modules of a small crate written to a temporary directory: a <-> b through a
    // re-export at the root, c only through its folder's facade.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir(src.join("c")).unwrap();
    fs::write(
        src.join("lib.rs"),
        "mod a;\nmod b;\nmod c;\npub use b::Bee;\n",
    )
    .unwrap();
    fs::write(
        src.join("a.rs"),
        "// crate::b::nothing in a comment\nuse crate::Bee;\npub struct Ay;\nconst S: &str = \"super::c::Sea\";\n",
    )
    .unwrap();
    fs::write(
        src.join("b.rs"),
        "pub struct Bee;\nfn f() -> crate::a::Ay { super::c::Sea::make() }\n#[cfg(test)]\nmod tests { use crate::c::deep::Deep; }\n",
    )
    .unwrap();
    fs::write(src.join("c/mod.rs"), "mod deep;\npub use deep::Sea;\n").unwrap();
    fs::write(src.join("c/deep.rs"), "pub struct Sea;\npub struct Deep;\n").unwrap();
    let graph = module_graph(src);
    let m = |s: &str| -> ModPath {
        s.split("::")
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    assert_eq!(graph[&m("a")], BTreeSet::from([m("b")]));
    assert_eq!(graph[&m("b")], BTreeSet::from([m("a"), m("c::deep")]));
    assert_eq!(graph[&m("")], BTreeSet::new());
    assert_eq!(cycles(&graph), vec![vec![m("a"), m("b")]]);
}
