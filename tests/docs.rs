//! `docs/rules.md` against the configuration structs themselves
//! (`callgate::schema`, which walks the serde structs): every key of the
//! gateway file, of `[[route]]` and of each provider's `[route.keys]` has a
//! row in its section, with a default, an example and every value an enum
//! key takes; and the page documents no key that does not exist. A field
//! added to a raw struct fails here with the key to document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use callgate::schema::Section;

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
    let sections = callgate::schema::sections().expect("the configuration structs walk");
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
    let mut sections = callgate::schema::sections().unwrap();
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
    let sections = callgate::schema::sections().unwrap();
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
