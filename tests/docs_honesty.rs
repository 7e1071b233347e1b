//! Docs that say what the code does (issue #17): the reference tables in `docs/` checked
//! against the code, so a key, problem type or metric that disappears or appears without its
//! documentation fails here with the file, the row and what to change.
//!
//! - `docs/config.md`: every key in a table (a table whose first header cell is `key`) parses
//!   with its example value; every key the code has is in a table; every default shown is the
//!   code's; the Reload section lists every start-only setting; `config.yaml` marks what is not
//!   a default.
//! - `docs/problems.md`: every problem type the code can answer is listed with its status, and
//!   nothing else is.
//! - `docs/metrics.md`: every family in the live registry is listed with its type and labels, and
//!   nothing else is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cvgate::config::Config;
use serde_json::Value;

mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The text between the single backticks of a cell that is nothing but one code span.
fn code_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// Every code span in a cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// One row of a Markdown table, with the line it is on (1-based).
struct Row {
    line: usize,
    cells: Vec<String>,
}

/// The Markdown tables of `md`, each as its header cells and rows. Cells are split on `|`
/// that is not escaped as `\|`.
fn tables(md: &str) -> Vec<(Vec<String>, Vec<Row>)> {
    fn cells(line: &str) -> Vec<String> {
        let inner = line.trim().trim_start_matches('|');
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        let mut out = vec![String::new()];
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'|') => {
                    out.last_mut().unwrap().push('|');
                    chars.next();
                }
                '|' => out.push(String::new()),
                c => out.last_mut().unwrap().push(c),
            }
        }
        out.into_iter().map(|c| c.trim().to_string()).collect()
    }
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let is_table = lines[i].trim_start().starts_with('|')
            && lines.get(i + 1).is_some_and(|l| l.trim_start().starts_with("|-") || l.trim_start().starts_with("|:"));
        if !is_table {
            i += 1;
            continue;
        }
        let header = cells(lines[i]);
        let mut rows = Vec::new();
        i += 2;
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            rows.push(Row { line: i + 1, cells: cells(lines[i]) });
            i += 1;
        }
        out.push((header, rows));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// docs/config.md

/// A row of a key table in docs/config.md.
struct KeyRow {
    line: usize,
    /// As written: `routes[].cost.fixed`, `quota.scopes.{account,org}.horizons.<horizon>.budget`.
    key: String,
    /// The default cell: one code span (a YAML value), `*required*`, or prose.
    default: String,
    /// The value a test config gives the key: the first "e.g. `…`" of the meaning, else the
    /// default when it is one code span.
    example: Option<String>,
}

impl KeyRow {
    fn required(&self) -> bool {
        self.default == "*required*"
    }

    /// Every concrete path the row stands for: `{a,b}` expanded, `<name>` as the word `name`.
    fn paths(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = vec![Vec::new()];
        for seg in self.key.split('.') {
            let alternatives: Vec<String> = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(list) => list.split(',').map(str::to_string).collect(),
                None => vec![seg.trim_start_matches('<').trim_end_matches('>').to_string()],
            };
            out = out
                .into_iter()
                .flat_map(|p| {
                    alternatives.iter().map(move |a| {
                        let mut p = p.clone();
                        p.push(a.clone());
                        p
                    })
                })
                .collect();
        }
        out
    }

    /// The key with its first alternative for each `{…}`, as a path.
    fn first_path(&self) -> Vec<String> {
        self.paths().swap_remove(0)
    }
}

fn key_rows() -> Vec<KeyRow> {
    let md = read("docs/config.md");
    let mut out = Vec::new();
    for (header, rows) in tables(&md) {
        if header.first().map(String::as_str) != Some("key") {
            continue;
        }
        assert_eq!(
            header,
            ["key", "default", "meaning"],
            "docs/config.md: a key table has the columns key | default | meaning"
        );
        for r in rows {
            let key = code_span(&r.cells[0]).unwrap_or_else(|| {
                panic!("docs/config.md:{}: the key cell must be one key in backticks, got {:?}", r.line, r.cells[0])
            });
            let default = r.cells.get(1).cloned().unwrap_or_default();
            let meaning = r.cells.get(2).cloned().unwrap_or_default();
            let example = meaning
                .split_once("e.g. `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(e, _)| e.to_string())
                .or_else(|| code_span(&default).map(str::to_string));
            out.push(KeyRow { line: r.line, key: key.to_string(), default, example });
        }
    }
    assert!(out.len() > 100, "docs/config.md: found only {} key rows; did the table format change?", out.len());
    out
}

/// A YAML value as JSON.
fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML: {text:?}: {e}"))
}

/// Set `path` (segments; `name[]` is the one entry of a list) to `v` in the object `tree`.
fn insert(tree: &mut Value, path: &[String], v: Value) {
    let (seg, rest) = (&path[0], &path[1..]);
    let (name, list) = match seg.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (seg.as_str(), false),
    };
    let obj = tree.as_object_mut().expect("only objects on the way");
    if rest.is_empty() {
        assert!(!list, "a key path ends in a list entry: {path:?}");
        obj.insert(name.to_string(), v);
        return;
    }
    let child = obj.entry(name).or_insert_with(|| if list { serde_json::json!([{}]) } else { serde_json::json!({}) });
    let child = if list { &mut child[0] } else { child };
    if !child.is_object() {
        *child = serde_json::json!({});
    }
    insert(child, rest, v)
}

fn parse(text: &str) -> Result<Config, cvgate::config::ConfigErrors> {
    Config::parse(text, "doc", &repo())
}

/// Every key in docs/config.md's tables is a key the loader knows, and its example has the
/// key's type. Required siblings (a route's `name`, a horizon's `budget` and `window`) are set
/// too, so an entry is complete enough to deserialize.
#[test]
fn every_documented_config_key_parses() {
    let rows = key_rows();
    let mut failures = Vec::new();
    for row in &rows {
        let Some(example) = &row.example else {
            failures.push(format!(
                "docs/config.md:{}: `{}` has no value to test: give the default as one code span or an \"e.g. `value`\" in the meaning",
                row.line, row.key
            ));
            continue;
        };
        for path in row.paths() {
            let mut tree = serde_json::json!({});
            // Required keys of every entry or section on the way (the row's own ancestors).
            for sibling in rows.iter().filter(|s| s.required() && s.key != row.key) {
                for sp in sibling.paths() {
                    let parent = &sp[..sp.len() - 1];
                    if path.len() > parent.len() && path[..parent.len()] == *parent {
                        insert(&mut tree, &sp, yaml(sibling.example.as_deref().unwrap_or("x")));
                    }
                }
            }
            insert(&mut tree, &path, yaml(example));
            let text = serde_json::to_string_pretty(&tree).unwrap();
            let Err(errs) = parse(&text) else { continue };
            for e in &errs.errors {
                if e.message == "unknown key" {
                    failures.push(format!(
                        "docs/config.md:{}: `{}`: the loader reports {:?} as an unknown key (the code no longer has it: remove or rename the row)",
                        row.line,
                        row.key,
                        e.path
                    ));
                } else if e.path.is_empty() {
                    failures.push(format!(
                        "docs/config.md:{}: `{}` = {example:?} does not deserialize: {}\n{text}",
                        row.line, row.key, e.message
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

/// Leaf key paths of a serialized default config, list entries as `name[]`: a scalar, null,
/// an empty map or list, or a list of scalars ends a path.
fn leaves(prefix: &[String], v: &Value, out: &mut BTreeSet<Vec<String>>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let mut p = prefix.to_vec();
                p.push(k.clone());
                leaves(&p, x, out);
            }
        }
        Value::Array(a) if a.iter().any(Value::is_object) => {
            let mut p = prefix.to_vec();
            let last = p.pop().expect("a list has a key");
            p.push(format!("{last}[]"));
            for x in a {
                leaves(&p, x, out);
            }
        }
        _ => {
            out.insert(prefix.to_vec());
        }
    }
}

/// Does one segment of a row's key (`<x>`, `{a,b}`, a name) match a concrete segment? A list
/// matches with or without its `[]` (an empty list is a leaf without it).
fn segment_matches(pattern: &str, seg: &str) -> bool {
    if pattern.starts_with('<') && pattern.ends_with('>') {
        return !seg.ends_with("[]");
    }
    let (pattern, seg) = (pattern.trim_end_matches("[]"), seg.trim_end_matches("[]"));
    if let Some(list) = pattern.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        return list.split(',').any(|a| a == seg);
    }
    pattern == seg
}

/// Every key the code has — every leaf of `RawConfig::default()`, serialized — is in a table:
/// a row's key equals it, or starts with it (an empty map or a null section whose keys have rows),
/// or is a prefix of it ending in a `<name>` (a map value documented whole).
#[test]
fn every_config_key_of_the_code_is_documented() {
    let rows = key_rows();
    let patterns: Vec<Vec<&str>> = rows.iter().map(|r| r.key.split('.').collect()).collect();
    let defaults = serde_json::to_value(cvgate::config::raw::RawConfig::default()).unwrap();
    let mut all = BTreeSet::new();
    leaves(&[], &defaults, &mut all);
    let documented = |leaf: &[String]| {
        patterns.iter().any(|p| {
            let n = p.len().min(leaf.len());
            let same = p[..n].iter().zip(&leaf[..n]).all(|(p, s)| segment_matches(p, s));
            same && (p.len() >= leaf.len() || p.last().is_some_and(|l| l.starts_with('<')))
        })
    };
    let missing: Vec<String> = all.iter().filter(|l| !documented(l)).map(|l| l.join(".")).collect();
    assert!(
        missing.is_empty(),
        "config keys the code has that no table in docs/config.md lists (add a row `key | default | meaning`):\n{}",
        missing.join("\n")
    );
}

/// The value at a concrete path (no list entries) of a serialized config, if any.
fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, seg| v.get(seg))
}

/// A default written as one code span is the code's default (where the code spells it out: a
/// few keys are `null` in the raw config and get their default when validated).
#[test]
fn documented_defaults_are_the_codes() {
    let defaults = serde_json::to_value(cvgate::config::raw::RawConfig::default()).unwrap();
    let mut wrong = Vec::new();
    for row in key_rows() {
        let Some(doc) = code_span(&row.default) else { continue };
        if row.key.contains(['<', '{', '[']) {
            continue;
        }
        let Some(code) = at(&defaults, &row.first_path()).filter(|v| !v.is_null()) else { continue };
        if yaml(doc) != *code {
            wrong.push(format!("docs/config.md:{}: `{}`: the doc says {doc}, the code {code}", row.line, row.key));
        }
    }
    assert!(wrong.is_empty(), "defaults that differ from the code:\n{}", wrong.join("\n"));
}

/// The Reload section names every setting read only at start (`START_ONLY`).
#[test]
fn reload_section_lists_every_start_only_setting() {
    let md = read("docs/config.md");
    let start = md.find("\n## Reload").expect("docs/config.md has a `## Reload` section");
    let section = &md[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let named: BTreeSet<&str> = code_spans(section).into_iter().collect();
    let missing: Vec<&&str> = cvgate::state::START_ONLY.iter().filter(|k| !named.contains(**k)).collect();
    assert!(
        missing.is_empty(),
        "settings in START_ONLY (src/state.rs) that docs/config.md's Reload section does not name: {missing:?}"
    );
}

/// `config.yaml` shows the built-in defaults, except what its comments mark "not the default"
/// (on the key's line or in the comment block just above it).
#[test]
fn config_yaml_marks_what_is_not_a_default() {
    let text = read("config.yaml");
    let file = parse(&text).unwrap_or_else(|e| panic!("config.yaml does not load: {e}"));
    let file = serde_json::to_value(&file.raw).unwrap();
    let defaults = serde_json::to_value(cvgate::config::raw::RawConfig::default()).unwrap();
    // Written out, with the same effect as leaving them out.
    let same_effect: BTreeMap<&str, &str> = [
        ("closure.windows[0].tz", "Europe/Amsterdam is the default zone"),
        ("closure.windows[0].days", "all seven days, as when days is left out"),
        ("identity.leeway", "30s, the default leeway"),
        ("routes[0].encoding.undecodable", "an up_to route always refuses"),
    ]
    .into();
    fn diff(p: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        let join = |k: &str| if p.is_empty() { k.to_string() } else { format!("{p}.{k}") };
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                    diff(&join(k), x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (a, b)) in x.iter().zip(y).enumerate() {
                    diff(&format!("{p}[{i}]"), a, b, out);
                }
            }
            _ if a != b => out.push(p.to_string()),
            _ => {}
        }
    }
    let mut differing = Vec::new();
    diff("", &file, &defaults, &mut differing);
    let index = cvgate::config::lines::LineIndex::new(&text);
    let lines: Vec<&str> = text.lines().collect();
    let mut unmarked = Vec::new();
    for path in differing.iter().filter(|p| !same_effect.contains_key(p.as_str())) {
        let Some(line) = index.line_of(path) else {
            unmarked.push(format!("{path} (not found in config.yaml)"));
            continue;
        };
        let mut marked = lines[line - 1].contains("not the default");
        let mut i = line - 1;
        while !marked && i > 0 && lines[i - 1].trim_start().starts_with('#') {
            marked = lines[i - 1].contains("not the default");
            i -= 1;
        }
        if !marked {
            unmarked.push(format!("config.yaml:{line}: {path}"));
        }
    }
    assert!(
        unmarked.is_empty(),
        "config.yaml says it shows the defaults; these values are not, and no comment says \"not the default\":\n{}",
        unmarked.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// docs/problems.md

/// Every Rust source file under `src/`, as (path relative to the repo, text).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(repo()).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The string literal at the start of `s` (after spaces), if there is one.
fn leading_literal(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('"')?;
    s.split_once('"').map(|(lit, _)| lit)
}

/// Every problem slug the code can answer, each with where it was found and its status when
/// the source names it (`problem(StatusCode::X, "slug", …)`):
/// - the string literals of `ProxyError::slug` (src/problem.rs);
/// - `problem(StatusCode::…, "slug"` calls, with the prefix the file's `problem` helper puts in
///   front (`format!("admin-{slug}")`);
/// - `answer(…, "slug"` calls whose slug is a literal.
fn code_slugs() -> BTreeMap<String, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    for (file, text) in sources() {
        if let Some(start) = text.find("pub fn slug(&self)") {
            let body = &text[start..];
            let body = &body[..body.find("\n    }\n").expect("the end of fn slug")];
            for lit in code_spans_quoted(body) {
                out.insert(lit.to_string(), (file.clone(), None));
            }
        }
        let prefix = text
            .find("{slug}\")")
            .and_then(|end| text[..end].rfind("format!(\"").map(|start| &text[start + 9..end]))
            .unwrap_or("");
        for (i, _) in text.match_indices("problem(StatusCode::") {
            let rest = &text[i + "problem(StatusCode::".len()..];
            let Some((status, rest)) = rest.split_once(',') else { continue };
            if let Some(slug) = leading_literal(rest) {
                out.insert(format!("{prefix}{slug}"), (file.clone(), Some(status.trim().to_string())));
            }
        }
        for (i, _) in text.match_indices("answer(") {
            if text[..i].ends_with("fn ") {
                continue;
            }
            let rest = &text[i + "answer(".len()..];
            let Some((_, rest)) = rest.split_once(',') else { continue };
            if let Some(slug) = leading_literal(rest) {
                out.insert(slug.to_string(), (file.clone(), None));
            }
        }
    }
    out
}

/// The string literals in `s`.
fn code_spans_quoted(s: &str) -> Vec<&str> {
    s.split('"').skip(1).step_by(2).collect()
}

/// The problem types docs/problems.md lists, each with the statuses its row names and its line.
fn doc_slugs() -> BTreeMap<String, (BTreeSet<u16>, usize)> {
    let md = read("docs/problems.md");
    let mut out = BTreeMap::new();
    for (header, rows) in tables(&md) {
        if !matches!(header.first().map(String::as_str), Some("type")) {
            continue;
        }
        for r in rows {
            let ty = code_span(&r.cells[0])
                .unwrap_or_else(|| panic!("docs/problems.md:{}: the type cell must be one code span", r.line));
            let slug = ty.strip_prefix("urn:cvgate:problem:").unwrap_or_else(|| {
                panic!("docs/problems.md:{}: a type is urn:cvgate:problem:<slug>, got {ty:?}", r.line)
            });
            let statuses = r.cells[1].split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
            let dup = out.insert(slug.to_string(), (statuses, r.line));
            assert!(dup.is_none(), "docs/problems.md:{}: {slug} is listed twice", r.line);
        }
    }
    out
}

/// HTTP status of a `StatusCode` constant's name (`UNPROCESSABLE_ENTITY` → 422): the constants
/// are named after the reason phrases.
fn status_of(name: &str) -> u16 {
    (100..600)
        .filter_map(|n| http::StatusCode::from_u16(n).ok())
        .find(|s| s.canonical_reason().unwrap_or_default().to_ascii_uppercase().replace([' ', '-'], "_") == name)
        .map(|s| s.as_u16())
        .unwrap_or_else(|| panic!("unknown StatusCode constant {name}"))
}

/// Every problem type the code can answer is in docs/problems.md, with its status, and the doc
/// lists no type the code cannot answer.
#[test]
fn every_problem_type_is_documented() {
    let code = code_slugs();
    let doc = doc_slugs();
    let mut failures = Vec::new();
    for (slug, (file, status)) in &code {
        match doc.get(slug) {
            None => failures.push(format!(
                "{file} answers urn:cvgate:problem:{slug}, which docs/problems.md does not list (add a row: type | status | when)"
            )),
            Some((statuses, line)) => {
                if let Some(name) = status {
                    let s = status_of(name);
                    if !statuses.contains(&s) {
                        failures.push(format!(
                            "docs/problems.md:{line}: {slug} answers {s} ({file}), the row says {statuses:?}"
                        ));
                    }
                }
            }
        }
    }
    for (slug, (_, line)) in &doc {
        if !code.contains_key(slug) {
            failures.push(format!("docs/problems.md:{line}: lists {slug}, which no code in src/ answers"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(code.len() >= 30, "found only {} slugs in src/: did the patterns of this scan change?", code.len());
}

/// The proxy's problems have the status docs/problems.md gives them. One value per variant:
/// a new variant fails `every_problem_type_is_documented` until documented, and this test
/// until it is added here.
#[test]
fn proxy_problem_statuses_are_documented() {
    use cvgate::problem::ProxyError as E;
    let all = [
        E::NoRoute,
        E::BadRequest("x"),
        E::HeaderTooLarge { limit: 1 },
        E::Auth { status: 401, reason: "expired", detail: String::new() },
        E::Auth { status: 403, reason: "no_organisation", detail: String::new() },
        E::Blocked { scope: "account", until: None },
        E::Closed { window: "night".into(), opens_at: String::new(), retry_after: 1 },
        E::Paused { group: "cv".into() },
        E::TooDeep { depth: 2, max_depth: 1 },
        E::QuotaExceeded { scope: "account", horizon: "day".into(), retry_after: 1, headers: Vec::new() },
        E::TooLarge { scope: "account", horizon: "day".into(), capacity: 1, headers: Vec::new() },
        E::QuotaUnavailable,
        E::UpstreamUnreachable,
        E::UpstreamTimeout,
        E::UpstreamFailed,
        E::UpstreamUndecodable,
        E::Overloaded,
    ];
    let doc = doc_slugs();
    let covered: BTreeSet<&str> = all.iter().map(E::slug).collect();
    let src = read("src/problem.rs");
    let start = src.find("pub fn slug(&self)").unwrap();
    let body = &src[start..start + src[start..].find("\n    }\n").unwrap()];
    for slug in code_spans_quoted(body) {
        assert!(covered.contains(slug), "ProxyError has a variant with slug {slug:?}: add a value of it to this test");
    }
    for e in &all {
        let (statuses, line) = doc.get(e.slug()).unwrap_or_else(|| panic!("docs/problems.md lacks {}", e.slug()));
        assert!(
            statuses.contains(&e.status().as_u16()),
            "docs/problems.md:{line}: {} answers {}, the row says {statuses:?}",
            e.slug(),
            e.status()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docs/metrics.md

/// The families docs/metrics.md lists: name → (type, labels, line).
fn doc_metrics() -> BTreeMap<String, (String, Vec<String>, usize)> {
    let md = read("docs/metrics.md");
    let mut out = BTreeMap::new();
    for (header, rows) in tables(&md) {
        if header.first().map(String::as_str) != Some("family") {
            continue;
        }
        assert_eq!(
            header[..3],
            ["family", "type", "labels"],
            "docs/metrics.md: columns family | type | labels | meaning"
        );
        for r in rows {
            let name = code_span(&r.cells[0])
                .unwrap_or_else(|| panic!("docs/metrics.md:{}: the family cell must be one code span", r.line));
            let labels = code_spans(&r.cells[2]).into_iter().map(str::to_string).collect();
            let dup = out.insert(name.to_string(), (r.cells[1].clone(), labels, r.line));
            assert!(dup.is_none(), "docs/metrics.md:{}: {name} is listed twice", r.line);
        }
    }
    out
}

/// Is a family of this name registered? Registering a probe of the same name fails exactly
/// when one is (the registry refuses a second descriptor with the same name).
fn registered(registry: &prometheus::Registry, name: &str) -> bool {
    let probe = prometheus::IntGauge::new(name, "docs_honesty probe").expect("a valid metric name");
    match registry.register(Box::new(probe.clone())) {
        Ok(()) => {
            registry.unregister(Box::new(probe)).unwrap();
            false
        }
        Err(_) => true,
    }
}

/// Type and sorted label names of every family the registry gathers (a labelled family only
/// once it has a label set).
fn gathered(registry: &prometheus::Registry) -> BTreeMap<String, (String, Vec<String>)> {
    registry
        .gather()
        .into_iter()
        .map(|mf| {
            let t = format!("{:?}", mf.get_field_type()).to_ascii_lowercase();
            let mut labels: Vec<String> = mf
                .get_metric()
                .first()
                .map(|x| x.get_label().iter().map(|l| l.name().to_string()).collect())
                .unwrap_or_default();
            labels.sort();
            (mf.name().to_string(), (t, labels))
        })
        .collect()
}

/// docs/metrics.md lists exactly the families of the live registry, with their types and labels.
///
/// The registry is a running proxy's: its start creates a series of every labelled family the
/// config can produce (`Shared::prime_metrics`), and a few more get one here, so that most
/// families show their type and labels. A family that still has no series (a new one) is
/// checked by name only: registering a probe of that name fails exactly when it is registered.
#[tokio::test]
async fn every_metric_family_is_documented() {
    let p = common::start_proxy("http://127.0.0.1:1", "").await;
    let m = &p.running.shared.metrics;
    m.auth_failures.with_label_values(&["expired"]);
    m.upstream_latency.with_label_values(&["cv_search"]);
    m.closed.with_label_values(&["night"]);
    let live = gathered(&m.registry);
    // Every family the source names that the registry holds, with or without a series.
    let in_source: BTreeSet<String> = sources()
        .iter()
        .flat_map(|(_, text)| code_spans_quoted(text).into_iter().map(str::to_string).collect::<Vec<_>>())
        .filter(|s| s.starts_with("cvgate_"))
        .filter(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        .filter(|s| registered(&m.registry, s))
        .collect();
    let doc = doc_metrics();
    let mut failures = Vec::new();
    for name in in_source.iter().filter(|n| !live.contains_key(*n)) {
        if !doc.contains_key(name) {
            failures.push(format!("{name} is in the registry but not in docs/metrics.md"));
        }
    }
    for (name, (t, labels)) in &live {
        match doc.get(name) {
            None => {
                failures.push(format!("{name} ({t}, labels {labels:?}) is in the registry but not in docs/metrics.md"))
            }
            Some((dt, dl, line)) => {
                let mut dl = dl.clone();
                dl.sort();
                if dt != t {
                    failures.push(format!("docs/metrics.md:{line}: {name} is a {t}, the row says {dt}"));
                }
                if dl != *labels {
                    failures.push(format!("docs/metrics.md:{line}: {name} has labels {labels:?}, the row says {dl:?}"));
                }
            }
        }
    }
    for (name, (_, _, line)) in &doc {
        if !live.contains_key(name) && !registered(&m.registry, name) {
            failures.push(format!("docs/metrics.md:{line}: {name} is not in the registry"));
        }
    }
    p.running.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
