//! The language server under random edits: every example is opened and edited thousands
//! of times at random (brackets, strings, keywords, non-ASCII text, deletions, positions
//! past line ends), with requests of every kind between edits. Every request must get an
//! answer and the server must never exit.

#[path = "lsp/client.rs"]
mod client;

use client::Client;
use serde_json::json;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const PIECES: &[&str] = &[
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "\n",
    "dense(",
    "|>",
    "let x = ",
    "\"",
    "\"{",
    "///",
    "é",
    "💥",
    "—",
    "// — ",
    "/* é */",
    "0",
    "1.5e",
    "f32[",
    ",",
    " ",
    "",
    "net N: ",
    "import std.",
    "repeat 3 {",
    "->",
    "..",
    ".",
    "x",
    "layer l()(x: f32[B, n]) {",
    "$",
    "\t",
    "-",
    "@",
    "where",
];
const REQUESTS: &[&str] = &[
    "textDocument/hover",
    "textDocument/completion",
    "textDocument/definition",
    "textDocument/references",
    "textDocument/documentSymbol",
    "textDocument/inlayHint",
    "textDocument/semanticTokens/full",
    "textDocument/formatting",
    "textDocument/rename",
];

#[test]
fn thousands_of_random_edits_never_stop_the_server() {
    let mut c = Client::start("fuzz");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut docs = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(format!("{root}/examples"))
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .collect();
    names.sort();
    for p in &names {
        let text = std::fs::read_to_string(p).expect("read");
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x.net")
            .to_string();
        let uri = c.open(&name, &text);
        docs.push((uri, text.lines().count() as u64 + 1, 1));
    }
    let mut rng = Rng(0x5eed);
    let (edits, mut answered) = (3000, 0);
    for i in 0..edits {
        let d = rng.below(docs.len());
        let (uri, lines, version) = &mut docs[d];
        *version += 1;
        let pos = |rng: &mut Rng, lines: u64| json!({ "line": rng.below(lines as usize + 2), "character": rng.below(90) });
        let (a, b) = (pos(&mut rng, *lines), pos(&mut rng, *lines));
        let (start, end) = if (a["line"].as_u64(), a["character"].as_u64())
            <= (b["line"].as_u64(), b["character"].as_u64())
        {
            (a, b)
        } else {
            (b, a)
        };
        let piece = PIECES[rng.below(PIECES.len())];
        // Mostly small edits: a range of at most one line.
        let end = if rng.below(4) == 0 {
            end
        } else {
            start.clone()
        };
        *lines += piece.matches('\n').count() as u64;
        c.notify("textDocument/didChange", json!({ "textDocument": { "uri": uri, "version": *version }, "contentChanges": [{ "range": { "start": start, "end": end }, "text": piece }] }));
        if i % 5 == 0 {
            let method = REQUESTS[rng.below(REQUESTS.len())];
            let at = pos(&mut rng, *lines);
            let params = json!({
                "textDocument": { "uri": uri },
                "position": at,
                "context": { "includeDeclaration": true },
                "newName": "renamed",
                "range": { "start": { "line": 0, "character": 0 }, "end": { "line": *lines, "character": 0 } },
                "options": { "tabSize": 2, "insertSpaces": true },
            });
            let id = c.send_request(method, params);
            let m = c.response(id);
            assert!(
                m.get("result").is_some() || m.get("error").is_some(),
                "{method}: {m}"
            );
            // Errors are answers too (a rename refused, a file that does not parse), but
            // never an internal error of the server.
            if let Some(e) = m.get("error") {
                assert_ne!(e["code"], -32603, "{method} failed internally: {e}");
            }
            answered += 1;
        }
    }
    // Still alive and answering after all of it.
    let uri = docs[0].0.clone();
    let id = c.send_request(
        "textDocument/documentSymbol",
        json!({ "textDocument": { "uri": uri } }),
    );
    assert!(c.response(id).get("result").is_some());
    assert!(answered >= edits / 5);
    c.shutdown();
}
