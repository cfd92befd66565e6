//! Language-server latency on every example, over the protocol as an editor sees it
//! (`cargo bench --bench lsp_latency`): for each file, the time from an edit to its
//! published diagnostics (debounce included), and hover and completion response times
//! right after an edit (so each request re-checks the file first). Medians and maxima
//! over 20 rounds. Targets: hover and completion ≤ 50 ms, diagnostics ≤ 100 ms.

#[path = "../tests/lsp/client.rs"]
mod client;

use std::time::{Duration, Instant};

use serde_json::json;

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let mut c = client::Client::start("bench");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files: Vec<_> = std::fs::read_dir(format!("{root}/examples"))
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .collect();
    files.sort();
    println!(
        "{:<22} {:>16} {:>16} {:>16}",
        "file", "diagnostics ms", "hover ms", "completion ms"
    );
    println!(
        "{:<22} {:>16} {:>16} {:>16}",
        "", "median / max", "median / max", "median / max"
    );
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for p in files {
        let text = std::fs::read_to_string(&p).expect("read");
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x.net")
            .to_string();
        let uri = c.open(&name, &text);
        c.diagnostics(&uri);
        // The position of the first stage of the first net: hovered every round.
        let (line, _) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with("net "))
            .map(|(i, l)| (i + 1, l))
            .unwrap_or((0, ""));
        let col = text
            .lines()
            .nth(line)
            .map_or(2, |l| l.len() - l.trim_start().len() + 1);
        let (mut diag, mut hover, mut complete) = (vec![], vec![], vec![]);
        for round in 0..20 {
            let version = 2 + 2 * round;
            // An edit that changes the text (a comment at the end), then its diagnostics.
            let lines = text.lines().count();
            let t = Instant::now();
            c.notify("textDocument/didChange", json!({ "textDocument": { "uri": uri, "version": version }, "contentChanges": [{ "range": { "start": { "line": lines, "character": 0 }, "end": { "line": lines + 1, "character": 0 } }, "text": format!("// edit {round}\n") }] }));
            loop {
                let m = c.recv(Duration::from_secs(30)).expect("diagnostics");
                if m["method"] == "textDocument/publishDiagnostics"
                    && m["params"]["uri"] == uri.as_str()
                    && m["params"]["version"] == version
                {
                    break;
                }
            }
            diag.push(t.elapsed().as_secs_f64() * 1e3);
            // Another edit, then requests before its debounce ends: each re-checks first.
            c.notify("textDocument/didChange", json!({ "textDocument": { "uri": uri, "version": version + 1 }, "contentChanges": [{ "range": { "start": { "line": lines, "character": 0 }, "end": { "line": lines + 1, "character": 0 } }, "text": format!("// again {round}\n") }] }));
            let pos = json!({ "line": line, "character": col });
            let t = Instant::now();
            c.request(
                "textDocument/hover",
                json!({ "textDocument": { "uri": uri }, "position": pos }),
            );
            hover.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            c.request(
                "textDocument/completion",
                json!({ "textDocument": { "uri": uri }, "position": pos }),
            );
            complete.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (d, h, k) = (stats(diag), stats(hover), stats(complete));
        worst = (worst.0.max(d.1), worst.1.max(h.1), worst.2.max(k.1));
        println!(
            "{name:<22} {:>7.1} / {:>6.1} {:>7.1} / {:>6.1} {:>7.1} / {:>6.1}",
            d.0, d.1, h.0, h.1, k.0, k.1
        );
    }
    println!(
        "worst: diagnostics {:.1} ms (target 100), hover {:.1} ms (target 50), completion {:.1} ms (target 50)",
        worst.0, worst.1, worst.2
    );
    c.shutdown();
}
