//! The documentation against the code:
//! * `docs/rules.md` against the configuration structs themselves
//!   (`docs/schema.rs`, which walks the serde structs): every key of the
//!   gateway file, of `[[route]]` and of each provider's `[route.keys]` has a
//!   row in its section, with a default, an example and every value an enum
//!   key takes; and the page documents no key that does not exist. A field
//!   added to a raw struct fails here with the key to document.
//! * README's Troubleshooting table explains every rejection `reason` label
//!   the code can emit (read from the source: the `label()` functions and the
//!   labels the pipeline passes itself), and no label the code lost.
//! * README opens with the two set-up commands, and no link in README or
//!   `docs/` points outside the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[path = "docs/schema.rs"]
mod schema;

use schema::Section;

const DOC: &str = "docs/rules.md";

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DOC);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One documented row: its cells and the whole line.
#[derive(Debug)]
struct Row {
    line: usize,
    cells: Vec<String>,
    text: String,
}

/// The rows of each `<!-- schema: ID -->` table: section id → key → row.
fn documented(doc: &str) -> Result<BTreeMap<String, BTreeMap<String, Row>>, Vec<String>> {
    let mut out: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    let mut problems = Vec::new();
    let lines: Vec<&str> = doc.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let Some(id) = lines[i]
            .trim()
            .strip_prefix("<!-- schema:")
            .and_then(|r| r.strip_suffix("-->"))
            .map(str::trim)
        else {
            i += 1;
            continue;
        };
        if out.contains_key(id) {
            problems.push(format!("{DOC}:{}: section `{id}` is marked twice", i + 1));
        }
        let rows = out.entry(id.to_owned()).or_default();
        i += 1;
        let mut header = true;
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            let line = lines[i].trim();
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            if header {
                if cells != ["key", "default", "example", "meaning"] {
                    problems.push(format!(
                        "{DOC}:{}: section `{id}`: the table's columns must be | key | default | example | meaning |",
                        i + 1
                    ));
                }
                header = false;
                i += 2; // header and separator
                continue;
            }
            let key = cells[0].trim_matches('`').to_owned();
            if !cells[0].starts_with('`') || key.contains(['`', ' ', ',']) {
                problems.push(format!(
                    "{DOC}:{}: section `{id}`: first cell `{}` must be one key in backticks",
                    i + 1,
                    cells[0]
                ));
            }
            if cells.len() != 4 || cells.iter().any(String::is_empty) {
                problems.push(format!(
                    "{DOC}:{}: key `{key}` needs a default, an example and a meaning",
                    i + 1
                ));
            }
            if rows
                .insert(
                    key.clone(),
                    Row {
                        line: i + 1,
                        cells,
                        text: line.to_owned(),
                    },
                )
                .is_some()
            {
                problems.push(format!("{DOC}:{}: key `{key}` is documented twice", i + 1));
            }
            i += 1;
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// What is wrong between the sections the code defines and the page.
fn compare(sections: &[Section], doc: &str) -> Vec<String> {
    let documented = match documented(doc) {
        Ok(d) => d,
        Err(problems) => return problems,
    };
    let mut problems = Vec::new();
    for section in sections {
        let Some(rows) = documented.get(&section.id) else {
            problems.push(format!(
                "{DOC}: no table for `{}` ({}): add `<!-- schema: {} -->` and a | key | default | example | meaning | table under its heading",
                section.id, section.source, section.id
            ));
            continue;
        };
        for (key, values) in &section.keys {
            let Some(row) = rows.get(key) else {
                problems.push(format!(
                    "{DOC}: section `{}` does not document key `{key}` (a field of {}): add a row | `{key}` | default | example | meaning |",
                    section.id, section.source
                ));
                continue;
            };
            for value in values {
                if !row.text.contains(&format!("`{value}`"))
                    && !row.text.contains(&format!("\"{value}\""))
                {
                    problems.push(format!(
                        "{DOC}:{}: key `{key}` can be `{value}`, which its row does not mention",
                        row.line
                    ));
                }
            }
        }
        for (key, row) in rows {
            if !section.keys.contains_key(key) {
                problems.push(format!(
                    "{DOC}:{}: section `{}` documents `{key}`, which is not a key of {} (renamed or removed?)",
                    row.line, section.id, section.source
                ));
            }
            let _ = &row.cells;
        }
    }
    for id in documented.keys() {
        if !sections.iter().any(|s| &s.id == id) {
            problems.push(format!(
                "{DOC}: `<!-- schema: {id} -->` names no configuration section"
            ));
        }
    }
    // Keys named anywhere in prose must exist too: `limits.foo`, `keys.bar`.
    let gateway: BTreeSet<&str> = sections
        .iter()
        .filter(|s| s.id == "gateway")
        .flat_map(|s| s.keys.keys().map(String::as_str))
        .collect();
    let provider_keys: BTreeSet<&str> = sections
        .iter()
        .filter(|s| s.id.starts_with("keys."))
        .flat_map(|s| s.keys.keys().map(String::as_str))
        .collect();
    for (n, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("<!-- schema:") {
            continue;
        }
        for (prefix, known) in [
            ("listen.", &gateway),
            ("admin.", &gateway),
            ("replay.", &gateway),
            ("limits.", &gateway),
            ("journal.", &gateway),
            ("keys.", &provider_keys),
        ] {
            for mention in mentions(line, prefix) {
                let key = if prefix == "keys." {
                    mention.trim_start_matches("keys.")
                } else {
                    mention.as_str()
                };
                if !known.contains(key) {
                    problems.push(format!(
                        "{DOC}:{}: `{mention}` is not a configuration key",
                        n + 1
                    ));
                }
            }
        }
    }
    problems
}

/// `prefix` followed by a lower-case key (dots allowed inside), at a word
/// boundary.
fn mentions(line: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = line[from..].find(prefix) {
        let start = from + i;
        from = start + prefix.len();
        let before_ok = line[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'));
        let rest = &line[from..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        let key = rest[..len].trim_end_matches('.');
        if before_ok && key.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(format!("{prefix}{key}"));
        }
    }
    out
}

#[test]
fn docs_rules_md_documents_exactly_the_configuration_keys() {
    let sections = schema::sections().expect("the configuration structs walk");
    let problems = compare(&sections, &doc());
    assert!(
        problems.is_empty(),
        "docs/rules.md and the configuration structs disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_new_field_fails_with_the_key_to_document() {
    // The real sections, with a field the lead might add to RouteFile and
    // a value added to an enum.
    let mut sections = schema::sections().unwrap();
    let route = sections.iter_mut().find(|s| s.id == "route").unwrap();
    route.keys.insert("retry_budget".to_owned(), Vec::new());
    route.keys.get_mut("forward").unwrap().push("compressed");
    let problems = compare(&sections, &doc());
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let joined = problems.join("\n");
    assert!(
        joined.contains("section `route` does not document key `retry_budget` (a field of rules::RouteFile): add a row | `retry_budget` |"),
        "{joined}"
    );
    assert!(
        joined.contains("key `forward` can be `compressed`, which its row does not mention"),
        "{joined}"
    );

    // A key documented that does not exist, a gateway key named in prose,
    // and a provider table with no section.
    let sections = schema::sections().unwrap();
    let doc = doc()
        .replace(
            "| `success_body` |",
            "| `retries` | `0` | `3` | made up |\n| `success_body` |",
        )
        .replace(
            "General rules:",
            "General rules (see `limits.max_retries`):",
        )
        .replace("<!-- schema: keys.jdpay -->", "<!-- schema: keys.jd -->");
    let problems = compare(&sections, &doc);
    let joined = problems.join("\n");
    assert!(
        joined.contains("documents `retries`, which is not a key of rules::RouteFile"),
        "{joined}"
    );
    assert!(
        joined.contains("`limits.max_retries` is not a configuration key"),
        "{joined}"
    );
    assert!(joined.contains("no table for `keys.jdpay`"), "{joined}");
    assert!(
        joined.contains("`<!-- schema: keys.jd -->` names no configuration section"),
        "{joined}"
    );
}

// === README: troubleshooting, set-up, links ===

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `.rs` files under `src/`, with their text.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let rel = p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&p);
                out.push((rel.display().to_string(), text));
            }
        }
    }
    out.sort();
    out
}

/// The text from the first `open` in `s` to its matching `close`.
fn balanced(s: &str, open: char, close: char) -> &str {
    let Some(start) = s.find(open) else { return "" };
    let mut depth = 0;
    let mut in_string = false;
    let mut prev = ' ';
    for (i, c) in s[start..].char_indices() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            c if c == open && !in_string => depth += 1,
            c if c == close && !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &s[start..start + i + 1];
                }
            }
            _ => {}
        }
        prev = c;
    }
    &s[start..]
}

/// String literals of `s` that look like labels (`bad_digest`).
fn label_literals(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .filter(|l| {
            l.starts_with(|c: char| c.is_ascii_lowercase())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// Every `reason` label the code can emit, with the file it is in: the
/// literals returned by each `fn label(&self) -> &'static str`, those passed
/// to `reject(..)` and `.rejection(..)` or set as a `label: "x"` field, and
/// those of the `Outcome::X =>`
/// arms of the pipeline's `fn finish` (its other literals are log field
/// values).
fn emitted_reasons(sources: &[(String, String)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (file, text) in sources {
        let mut found = Vec::new();
        for (i, _) in text.match_indices("fn label(&self) -> &'static str") {
            found.extend(label_literals(balanced(&text[i..], '{', '}')));
        }
        // A reason carried in a struct to a later `reject` (`label: "x"`).
        for (i, _) in text.match_indices("label: \"") {
            found.extend(label_literals(&text[i..]).into_iter().take(1));
        }
        for marker in ["reject(", ".rejection("] {
            for (i, _) in text.match_indices(marker) {
                // The definitions (`fn reject(&mut self, ...)`) hold no literals.
                found.extend(label_literals(balanced(&text[i..], '(', ')')));
            }
        }
        for (i, _) in text.match_indices("fn finish(") {
            let body = balanced(&text[i..], '{', '}');
            for line in body.lines() {
                if line.contains("Outcome::") && line.contains("=>") {
                    found.extend(label_literals(line));
                }
            }
        }
        for l in found {
            out.entry(l).or_insert_with(|| file.clone());
        }
    }
    out
}

/// The first-column labels of README's `## Troubleshooting` table.
fn documented_reasons(readme: &str) -> BTreeSet<String> {
    let Some(start) = readme.find("\n## Troubleshooting\n") else {
        return BTreeSet::new();
    };
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(label, _)| label.to_owned())
        .filter(|l| l != "reason")
        .collect()
}

/// What is wrong between the labels the code emits and the table.
fn reason_problems(sources: &[(String, String)], readme: &str) -> Vec<String> {
    let emitted = emitted_reasons(sources);
    let documented = documented_reasons(readme);
    let mut problems = Vec::new();
    for (label, file) in &emitted {
        if !documented.contains(label) {
            problems.push(format!(
                "README.md: reason `{label}` (emitted in {file}) has no row in the Troubleshooting table: add | `{label}` | status | likely cause | fix |"
            ));
        }
    }
    for label in &documented {
        if !emitted.contains_key(label) {
            problems.push(format!(
                "README.md: the Troubleshooting table explains `{label}`, which the code no longer emits"
            ));
        }
    }
    problems
}

#[test]
fn the_readme_explains_every_rejection_reason_the_code_emits() {
    let sources = sources();
    let emitted = emitted_reasons(&sources);
    // The scan sees the labels of each kind of source.
    for known in [
        "bad_digest",
        "ip_denied",
        "ip_denied_dry_run",
        "stale",
        "upstream_timeout",
        "rate_limited",
        "journal_unavailable",
        "not_found",
        "in_flight",
        "method_not_allowed",
        "too_large",
        "notify_verify_denied",
    ] {
        assert!(emitted.contains_key(known), "{known} not found in src/");
    }
    let problems = reason_problems(&sources, &read("README.md"));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn a_new_reason_fails_with_the_row_to_add() {
    let readme = "# x\n\n## Troubleshooting\n\n| `reason` | status | cause | fix |\n|---|---|---|---|\n| `stale` | 401 | a | b |\n| `gone` | 400 | a | b |\n\n## Next\n";
    let sources = vec![(
        "src/replay.rs".to_owned(),
        "pub fn label(&self) -> &'static str {\n match self { A => \"stale\", B => \"skewed\" }\n}\nfn f() { ctx.reject(Outcome::X, \"new_reason\", \"some words\") }\nfn g() -> Stop { Stop { label: \"carried\", why: \"words\".into() } }\nfn finish(a: u8) { tracing::info!(target: \"callgate::request\", \"notification\"); match o {\n Outcome::NotFound => \"not_found\",\n Outcome::InFlight => l.unwrap_or(\"in_flight\"),\n _ => x } }\n".to_owned(),
    )];
    let problems = reason_problems(&sources, readme);
    let joined = problems.join("\n");
    assert!(
        joined.contains("reason `skewed` (emitted in src/replay.rs) has no row"),
        "{joined}"
    );
    assert!(joined.contains("reason `new_reason`"), "{joined}");
    assert!(joined.contains("reason `not_found`"), "{joined}");
    assert!(joined.contains("reason `in_flight`"), "{joined}");
    assert!(joined.contains("reason `carried`"), "{joined}");
    assert!(
        joined.contains("explains `gone`, which the code no longer emits"),
        "{joined}"
    );
    assert!(!joined.contains("`stale`"), "{joined}");
    assert!(
        !joined.contains("`notification`"),
        "log values are not reasons: {joined}"
    );
    assert_eq!(problems.len(), 6, "{joined}");
}

#[test]
fn the_readme_opens_with_the_demo_and_the_whole_suite() {
    let readme = read("README.md");
    let first_block = readme
        .split("```")
        .nth(1)
        .expect("README opens with a code block");
    let commands: Vec<&str> = first_block
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run --release -- run -c callgate.toml",
            "bash .ci/run"
        ],
        "{first_block}"
    );
    // The README's test command is CI's.
    assert!(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".ci/run")
            .is_file()
    );
    for section in [
        "## Contents",
        "## What it is",
        "## Install",
        "## Quick start",
        "## Platforms",
        "## Operations",
        "## Troubleshooting",
    ] {
        assert!(readme.contains(&format!("\n{section}")), "no {section}");
    }
}

/// Markdown link targets of `text`: `[label](target)`.
fn links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            rest.find(')').map(|end| rest[..end].to_owned())
        })
        .collect()
}

#[test]
fn no_link_points_outside_the_repository() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![PathBuf::from("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p.strip_prefix(&root).unwrap().to_path_buf());
        }
    }
    let mut problems = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(root.join(page)).unwrap();
        if text.contains("shared/") {
            problems.push(format!(
                "{}: names a file outside the repository (shared/)",
                page.display()
            ));
        }
        for target in links(&text) {
            let path = target.split('#').next().unwrap();
            if target.contains("://") || path.starts_with('/') {
                problems.push(format!(
                    "{}: link `{target}` leaves the repository",
                    page.display()
                ));
                continue;
            }
            if path.is_empty() {
                continue;
            }
            let resolved = root.join(page.parent().unwrap()).join(path);
            if !resolved.exists() {
                problems.push(format!("{}: link `{target}`: no such file", page.display()));
            } else if !resolved
                .canonicalize()
                .unwrap()
                .starts_with(root.canonicalize().unwrap())
            {
                problems.push(format!(
                    "{}: link `{target}` leaves the repository",
                    page.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
