//! The module graph stays the one ARCHITECTURE.md draws: no import cycles, and every import
//! points down the layers (entry points, orchestration, mechanisms, foundations). It reads
//! every `src/**/*.rs`, collects the modules each file names through `use crate::...`, inline
//! `crate::a::b` paths and `super::` paths, and fails naming the loop or the upward import.
//! File granularity: `src/deploy/pipeline.rs` is the module `deploy::pipeline`; an inline
//! `mod tests` counts as part of its file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules from the top layer to the bottom one. A module may import modules of its
/// own layer (the no-cycle check keeps those in order) or of a layer below. A new top-level
/// folder (`runtime/`, `proxy/`, `access/`, `notify/`) must be placed here and in
/// ARCHITECTURE.md.
const LAYERS: &[&[&str]] = &[
    // Entry points: the commands.
    &["cli", "status", "access"],
    // A push arrives.
    &["push"],
    // Orchestration: the pipeline, the rollback and the recovery.
    &["deploy"],
    // Mechanisms: the front door, which the pipeline switches around the run/ switch, first.
    &["proxy"],
    &["release"],
    &["transaction"],
    // What makes the tree an app that runs and runs it: buildpacks, Procfile, supervision,
    // app logs (below the journal, which keeps the formation an undo starts again).
    &["runtime"],
    // Notifications: below the supervisor, which reports crash loops and recoveries.
    &["notify"],
    &["exec"],
    // Foundations.
    &["config", "fs", "error"],
];

/// A module at file granularity: `["deploy", "pipeline"]`; the crate root is `[]`.
type Module = Vec<String>;

/// Where an import was seen, to name it in a failure.
#[derive(Clone, Debug)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

/// Splits Rust source into the tokens a path is made of, dropping comments, string and
/// character literals (a `crate::x` in a doc comment or a message is not an import).
fn tokens(source: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                line += usize::from(chars[i] == '\n');
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime: its name follows as an identifier, which names no module.
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw_string = (word == "r" || word == "br")
                && (at(i) == '"' || (at(i) == '#' && at(i + 1) != '['));
            if raw_string {
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1;
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            } else if word == "b" && (at(i) == '"' || at(i) == '\'') {
                // A byte string or byte: the literal itself is skipped on the next round.
            } else {
                out.push((Token::Ident(word), line));
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            let token = match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                '*' => Token::Star,
                c if c.is_whitespace() => {
                    i += 1;
                    continue;
                }
                _ => Token::Other,
            };
            out.push((token, line));
            i += 1;
        }
    }
    out
}

fn ident(tokens: &[(Token, usize)], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some((Token::Ident(word), _)) => Some(word),
        _ => None,
    }
}

fn is(tokens: &[(Token, usize)], i: usize, token: &Token) -> bool {
    tokens.get(i).map(|(t, _)| t) == Some(token)
}

/// Reads the path (or use tree) starting at `i`, relative to `prefix`: every full path it
/// names, and where it ends. `crate::a::{b::C, d}` names `a::b::C` and `a::d`.
fn path_at(
    tokens: &[(Token, usize)],
    mut i: usize,
    mut prefix: Vec<String>,
) -> (Vec<Module>, usize) {
    loop {
        match ident(tokens, i) {
            Some(word) if is(tokens, i + 1, &Token::PathSep) => {
                match word {
                    "crate" => prefix.clear(),
                    "super" => {
                        prefix.pop();
                    }
                    "self" => {}
                    _ => prefix.push(word.to_string()),
                }
                i += 2;
            }
            Some(word) => {
                if word != "self" {
                    prefix.push(word.to_string());
                }
                return (vec![prefix], i + 1);
            }
            None if is(tokens, i, &Token::Open) => {
                let mut all = Vec::new();
                i += 1;
                while i < tokens.len() && !is(tokens, i, &Token::Close) {
                    if is(tokens, i, &Token::Comma) {
                        i += 1;
                        continue;
                    }
                    let (paths, next) = path_at(tokens, i, prefix.clone());
                    all.extend(paths);
                    // Skip an `as alias` or anything else up to the next item of the group.
                    i = next;
                    while i < tokens.len()
                        && !is(tokens, i, &Token::Comma)
                        && !is(tokens, i, &Token::Close)
                    {
                        i += 1;
                    }
                }
                return (all, i + 1);
            }
            None => return (vec![prefix], i + 1),
        }
    }
}

/// Every path that `source`, the file of module `module`, names through `crate::` or
/// `super::`, with its line. `super::` inside an inline `mod tests` is the file itself.
fn paths_named(source: &str, module: &[String]) -> Vec<(Module, usize)> {
    let tokens = tokens(source);
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (token, line) = &tokens[i];
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Token::Ident(word) if word == "mod" => {
                if let Some(name) = ident(&tokens, i + 1)
                    && is(&tokens, i + 2, &Token::Open)
                {
                    inline.push((name.to_string(), depth + 1));
                }
            }
            Token::Ident(word)
                if (word == "crate" || word == "super")
                    && is(&tokens, i + 1, &Token::PathSep)
                    && !(i > 0 && is(&tokens, i - 1, &Token::PathSep)) =>
            {
                let mut here: Module = module.to_vec();
                here.extend(inline.iter().map(|(name, _)| name.clone()));
                let (paths, next) = path_at(&tokens, i, here);
                found.extend(paths.into_iter().map(|p| (p, *line)));
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The module a file is: `src/deploy/pipeline.rs` is `deploy::pipeline`, `src/push/mod.rs` is
/// `push`, `src/lib.rs` the crate root.
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The file module a path lands in: the longest prefix of it that is a file.
fn resolve(path: &[String], modules: &BTreeSet<Module>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// The imports between file modules of the crate in `src`, each with the first place seen.
/// The crate root (lib.rs: the `run` entry point and the `failpoint` hook every layer may
/// call) is neither a source nor a target: it declares the modules rather than importing them.
fn graph(files: &[(Module, String, String)]) -> BTreeMap<Module, BTreeMap<Module, Site>> {
    let modules: BTreeSet<Module> = files.iter().map(|(m, _, _)| m.clone()).collect();
    let mut edges: BTreeMap<Module, BTreeMap<Module, Site>> = BTreeMap::new();
    for (module, file, source) in files {
        if module.is_empty() {
            continue;
        }
        let from = edges.entry(module.clone()).or_default();
        for (path, line) in paths_named(source, module) {
            let target = resolve(&path, &modules);
            if target.is_empty() || &target == module {
                continue;
            }
            from.entry(target).or_insert_with(|| Site {
                file: file.clone(),
                line,
                path: path.join("::"),
            });
        }
    }
    edges
}

/// One import cycle, as the modules along it (the first repeated at the end), if any.
fn find_cycle(edges: &BTreeMap<Module, BTreeMap<Module, Site>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeMap<Module, Site>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|m| m == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut marks, &mut Vec::new()))
}

fn layer(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top.as_str()))
}

fn name(module: &[String]) -> String {
    module.join("::")
}

fn describe(site: &Site) -> String {
    format!("{}:{} names `crate::{}`", site.file, site.line, site.path)
}

/// Imports that point up the layers, and modules in no layer.
fn layer_violations(edges: &BTreeMap<Module, BTreeMap<Module, Site>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (from, targets) in edges {
        let Some(from_layer) = layer(from) else {
            problems.push(format!(
                "module `{}` is in no layer: add `{}` to LAYERS in tests/architecture.rs and to ARCHITECTURE.md",
                name(from),
                from[0]
            ));
            continue;
        };
        for (to, site) in targets {
            if layer(to).is_some_and(|to_layer| to_layer < from_layer) {
                problems.push(format!(
                    "`{}` imports `{}`, a layer above it ({})",
                    name(from),
                    name(to),
                    describe(site)
                ));
            }
        }
    }
    problems
}

fn crate_files() -> Vec<(Module, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&src).sort_by_file_name() {
        let entry = entry.expect("src/ is readable");
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(&src).expect("under src/");
        // main.rs is the binary crate: three lines that call `kiln::run`.
        if rel == Path::new("main.rs") {
            continue;
        }
        let source = std::fs::read_to_string(path).expect("a source file is UTF-8");
        files.push((module_of(rel), format!("src/{}", rel.display()), source));
    }
    files
}

#[test]
fn module_graph_has_no_cycle() {
    let edges = graph(&crate_files());
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| describe(&edges[&pair[0]][&pair[1]]))
            .collect();
        panic!(
            "import cycle: {}\n  {}",
            cycle
                .iter()
                .map(|m| name(m))
                .collect::<Vec<_>>()
                .join(" -> "),
            steps.join("\n  ")
        );
    }
}

#[test]
fn imports_point_down_the_layers() {
    let problems = layer_violations(&graph(&crate_files()));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks above see what they claim to see: a tiny crate with a loop and an upward import.
#[test]
fn the_checks_catch_a_cycle_and_an_upward_import() {
    let file = |path: &str, source: &str| {
        (
            module_of(Path::new(path)),
            format!("src/{path}"),
            source.to_string(),
        )
    };
    let files = vec![
        file(
            "lib.rs",
            "pub mod error; pub mod deploy; pub fn failpoint() {}",
        ),
        file("deploy/mod.rs", "pub mod pipeline; pub mod rollback;"),
        file(
            "deploy/pipeline.rs",
            "// use crate::error::Ignored;\nuse crate::{error::{self, Error}, deploy::rollback as undo};\nfn f() { crate::failpoint(); let s = \"crate::fs::x\"; }",
        ),
        file(
            "deploy/rollback.rs",
            "fn g<'a>(c: char) { let _ = 'x'; let _ = r#\"crate::error\"#; }\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::pipeline::run;\n}",
        ),
        file(
            "error.rs",
            "pub struct Error(crate::deploy::pipeline::Failure);",
        ),
    ];
    let edges = graph(&files);
    let targets = |m: &str| -> Vec<String> {
        let module: Module = m.split("::").map(str::to_string).collect();
        edges[&module].keys().map(|t| name(t)).collect()
    };
    assert_eq!(targets("deploy::pipeline"), ["deploy::rollback", "error"]);
    assert_eq!(targets("deploy::rollback"), ["deploy::pipeline"]);
    assert_eq!(
        edges[&vec!["deploy".to_string(), "rollback".to_string()]]
            [&vec!["deploy".to_string(), "pipeline".to_string()]]
            .line,
        5
    );
    let cycle = find_cycle(&edges).expect("deploy::pipeline -> deploy::rollback -> back");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 3);
    let problems = layer_violations(&edges);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("`error` imports `deploy::pipeline`, a layer above it (src/error.rs:1")
    );
}
