//! The language server at the protocol level: `nabla lsp` is started as an editor starts
//! it and spoken to in JSON-RPC. One fixture set per feature (`tests/lsp/fixtures/<feature>/`,
//! a `$0` marks the cursor); each response is rendered as text and snapshot-tested.

#[path = "lsp/client.rs"]
mod client;

use std::path::Path;
use std::time::Duration;

use client::{Client, cursor, show_location, show_range};
use serde_json::{Value, json};

/// Runs `f` on every fixture of `feature` with one server, and snapshots what it returns.
fn each_fixture(feature: &str, mut f: impl FnMut(&mut Client, &str, &str) -> String) {
    let mut c = Client::start(feature);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/lsp/fixtures")
        .join(feature);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures for {feature}");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let out = f(&mut c, &name, &text);
        insta::with_settings!({ snapshot_suffix => name.trim_end_matches(".net"), prepend_module_to_snapshot => false, description => text.clone(), omit_expression => true }, {
            insta::assert_snapshot!(feature, out);
        });
    }
    c.shutdown();
}

/// Opens a fixture with a cursor; returns its uri and the cursor position as JSON.
fn open_at(c: &mut Client, name: &str, text: &str) -> (String, Value) {
    let (clean, line, col) = cursor(text);
    let uri = c.open(name, &clean);
    c.diagnostics(&uri);
    (uri, json!({ "line": line, "character": col }))
}

fn at(uri: &str, pos: &Value) -> Value {
    json!({ "textDocument": { "uri": uri }, "position": pos })
}

#[test]
fn diagnostics() {
    each_fixture("diagnostics", |c, name, text| {
        let uri = c.open(name, text);
        let ds = c.diagnostics(&uri);
        ds.iter()
            .map(|d| {
                format!(
                    "{} {} {}\n  {}",
                    show_range(&d["range"]),
                    d["code"].as_str().unwrap_or(""),
                    d["severity"],
                    d["message"].as_str().unwrap_or("").replace('\n', "\n  ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
}

#[test]
fn hover() {
    each_fixture("hover", |c, name, text| {
        let (uri, pos) = open_at(c, name, text);
        let h = c.request("textDocument/hover", at(&uri, &pos));
        format!(
            "{}\n{}",
            show_range(&h["range"]),
            h["contents"]["value"].as_str().unwrap_or("(none)")
        )
    });
}

#[test]
fn definition() {
    each_fixture("definition", |c, name, text| {
        let (uri, pos) = open_at(c, name, text);
        let d = c.request("textDocument/definition", at(&uri, &pos));
        show_location(c, &d)
    });
}

#[test]
fn references() {
    each_fixture("references", |c, name, text| {
        let (uri, pos) = open_at(c, name, text);
        let mut p = at(&uri, &pos);
        p["context"] = json!({ "includeDeclaration": true });
        let refs = c.request("textDocument/references", p);
        let mut shown: Vec<String> = refs
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| show_location(c, l))
            .collect();
        shown.sort();
        shown.join("\n")
    });
}

#[test]
fn completion() {
    each_fixture("completion", |c, name, text| {
        let (uri, pos) = open_at(c, name, text);
        let (clean, line, col) = cursor(text);
        // What the editor filters by: the word before the cursor.
        let before: String = clean
            .lines()
            .nth(line as usize)
            .unwrap_or("")
            .chars()
            .take(col as usize)
            .collect();
        let word: String = before
            .chars()
            .rev()
            .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        let items = c.request("textDocument/completion", at(&uri, &pos));
        items
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["label"].as_str().is_some_and(|l| l.starts_with(&word)))
            .map(|i| {
                format!(
                    "{} (kind {}) {}{}",
                    i["label"].as_str().unwrap_or(""),
                    i["kind"],
                    i["detail"].as_str().unwrap_or(""),
                    i["insertText"]
                        .as_str()
                        .map(|s| format!("  ⇒ {s}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
}

#[test]
fn inlay_hints() {
    each_fixture("inlay_hints", |c, name, text| {
        let uri = c.open(name, text);
        c.diagnostics(&uri);
        let lines = text.lines().count() as u32 + 1;
        let hints = c.request("textDocument/inlayHint", json!({ "textDocument": { "uri": uri }, "range": { "start": { "line": 0, "character": 0 }, "end": { "line": lines, "character": 0 } } }));
        hints
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                format!(
                    "{}:{} {}",
                    h["position"]["line"].as_u64().unwrap_or(0) + 1,
                    h["position"]["character"].as_u64().unwrap_or(0) + 1,
                    h["label"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
}

fn show_symbols(out: &mut String, syms: &Value, depth: usize) {
    for s in syms.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}{} (kind {}) {} @ {}\n",
            "  ".repeat(depth),
            s["name"].as_str().unwrap_or(""),
            s["kind"],
            s["detail"].as_str().unwrap_or(""),
            show_range(&s["selectionRange"])
        ));
        show_symbols(out, &s["children"], depth + 1);
    }
}

#[test]
fn symbols() {
    each_fixture("symbols", |c, name, text| {
        let uri = c.open(name, text);
        c.diagnostics(&uri);
        let syms = c.request(
            "textDocument/documentSymbol",
            json!({ "textDocument": { "uri": uri } }),
        );
        let mut out = String::new();
        show_symbols(&mut out, &syms, 0);
        out
    });
}

#[test]
fn semantic_tokens() {
    const TYPES: &[&str] = &[
        "keyword", "function", "method", "class", "type", "variable", "property", "number",
        "string", "comment", "operator",
    ];
    each_fixture("semantic_tokens", |c, name, text| {
        let uri = c.open(name, text);
        c.diagnostics(&uri);
        let r = c.request(
            "textDocument/semanticTokens/full",
            json!({ "textDocument": { "uri": uri } }),
        );
        let data: Vec<u64> = r["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        let (mut line, mut col) = (0u64, 0u64);
        let mut out = Vec::new();
        for t in data.chunks(5) {
            line += t[0];
            col = if t[0] == 0 { col + t[1] } else { t[1] };
            let word: String = lines
                .get(line as usize)
                .unwrap_or(&"")
                .chars()
                .skip(col as usize)
                .take(t[2] as usize)
                .collect();
            out.push(format!(
                "{}:{} {} {word:?}",
                line + 1,
                col + 1,
                TYPES.get(t[3] as usize).unwrap_or(&"?")
            ));
        }
        out.join("\n")
    });
}

/// Applies a list of text edits (non-overlapping) to `text`.
fn apply(text: &str, edits: &[Value]) -> String {
    let mut edits: Vec<(usize, usize, String)> = edits
        .iter()
        .map(|e| {
            let off = |p: &Value| {
                let (l, ch) = (
                    p["line"].as_u64().unwrap_or(0) as usize,
                    p["character"].as_u64().unwrap_or(0) as usize,
                );
                text.split_inclusive('\n')
                    .take(l)
                    .map(str::len)
                    .sum::<usize>()
                    + ch
            };
            (
                off(&e["range"]["start"]),
                off(&e["range"]["end"]),
                e["newText"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = text.to_string();
    for (a, b, t) in edits {
        out.replace_range(a..b.min(out.len()), &t);
    }
    out
}

#[test]
fn rename() {
    each_fixture("rename", |c, name, text| {
        let (uri, pos) = open_at(c, name, text);
        let mut p = at(&uri, &pos);
        p["newName"] = json!("renamed");
        let r = c.request("textDocument/rename", p);
        let edits = r["changes"][&uri].as_array().cloned().unwrap_or_default();
        apply(&cursor(text).0, &edits)
    });
}

#[test]
fn formatting() {
    each_fixture("formatting", |c, name, text| {
        let uri = c.open(name, text);
        c.diagnostics(&uri);
        let edits = c.request("textDocument/formatting", json!({ "textDocument": { "uri": uri }, "options": { "tabSize": 2, "insertSpaces": true } }));
        apply(text, edits.as_array().map(Vec::as_slice).unwrap_or(&[]))
    });
}

#[test]
fn renaming_a_standard_layer_or_to_a_keyword_is_refused() {
    let mut c = Client::start("rename-refused");
    let text = "import std.nn.*\nnet N: f32[4] -> f32[2] {\n  dense(2)\n}\nlet x = 1\n";
    let uri = c.open("a.net", text);
    c.diagnostics(&uri);
    for (line, col, name, want) in [
        (2, 3, "thick", "is defined in <std.nn>"),
        (4, 4, "net", "not a valid name"),
    ] {
        let id = c.send_request("textDocument/rename", json!({ "textDocument": { "uri": uri }, "position": { "line": line, "character": col }, "newName": name }));
        let m = c.response(id);
        assert!(
            m["error"]["message"]
                .as_str()
                .is_some_and(|s| s.contains(want)),
            "{m}"
        );
    }
    c.shutdown();
}

#[test]
fn files_that_import_each_other_are_rechecked_together() {
    let mut c = Client::start("imports");
    let lib = c.open(
        "blocks.net",
        "import std.nn.*\n\nlayer head(k: dim)(x: f32[B, n]) {\n  x |> dense(k)\n}\n",
    );
    assert!(c.diagnostics(&lib).is_empty());
    let main = c.open(
        "main.net",
        "import std.nn.*\nimport blocks.*\n\nnet N: f32[8] -> f32[3] {\n  head(3)\n}\n",
    );
    assert!(
        c.diagnostics(&main).is_empty(),
        "imports resolve from the open buffer"
    );
    // Go to definition crosses into the imported file.
    let d = c.request(
        "textDocument/definition",
        json!({ "textDocument": { "uri": main }, "position": { "line": 4, "character": 3 } }),
    );
    assert_eq!(show_location(&c, &d), "blocks.net:3:7-3:11");
    // Editing the imported buffer (unsaved) re-checks the file importing it.
    c.notify("textDocument/didChange", json!({ "textDocument": { "uri": lib, "version": 2 }, "contentChanges": [{ "range": { "start": { "line": 3, "character": 7 }, "end": { "line": 3, "character": 15 } }, "text": "dense(k + 1)" }] }));
    let lib_diags = c.diagnostics(&lib);
    assert!(lib_diags.is_empty(), "{lib_diags:?}");
    let main_diags = c.diagnostics(&main);
    assert_eq!(main_diags.len(), 1, "{main_diags:?}");
    assert!(
        main_diags[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("must output f32[B, 3]")),
        "{main_diags:?}"
    );
    c.shutdown();
}

#[test]
fn edits_are_debounced_and_diagnostics_follow_the_last_one() {
    let mut c = Client::start("debounce");
    let uri = c.open("a.net", "let x = 1\n");
    assert!(c.diagnostics(&uri).is_empty());
    // Three quick edits: only the last version is published.
    for (v, t) in [
        (2, "let x = \n"),
        (3, "let x = y\n"),
        (4, "let x = 2\nlet y = x +\n"),
    ] {
        c.notify("textDocument/didChange", json!({ "textDocument": { "uri": uri, "version": v }, "contentChanges": [{ "text": t }] }));
    }
    let m = loop {
        let m = c.recv(Duration::from_secs(20)).expect("diagnostics");
        if m["method"] == "textDocument/publishDiagnostics" {
            break m;
        }
    };
    assert_eq!(m["params"]["version"], 4, "{m}");
    assert_eq!(
        m["params"]["diagnostics"].as_array().map(Vec::len),
        Some(1),
        "{m}"
    );
    c.shutdown();
}
