//! The language server against malformed JSON-RPC frames and hostile text: hundreds of
//! generated bad frames, each followed by a good request; non-ASCII text with requests at
//! every position; one very long line. The server must answer each bad frame with the
//! error JSON-RPC 2.0 defines, answer the good request after it, and never exit.

#[path = "lsp/client.rs"]
mod client;
#[path = "support/rng.rs"]
mod rng;

use std::time::{Duration, Instant};

use client::Client;
use rng::Rng;
use serde_json::json;

/// A malformed frame and the error replies it must get, in order.
struct Bad {
    bytes: Vec<u8>,
    expect: Vec<i64>,
    what: String,
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    f.extend_from_slice(body);
    f
}

const PARSE: i64 = -32700;
const INVALID: i64 = -32600;

/// One malformed frame of a random kind.
fn bad_frame(rng: &mut Rng) -> Bad {
    let good = json!({"jsonrpc": "2.0", "id": 9999, "method": "textDocument/hover", "params": {}})
        .to_string();
    let kind = rng.below(12);
    let bad = |bytes: Vec<u8>, expect: Vec<i64>, what: &str| Bad {
        bytes,
        expect,
        what: what.into(),
    };
    match kind {
        0 => {
            // Not JSON: the good body cut or with noise in it.
            let cut = 1 + rng.below(good.len() - 2);
            let mut body = good.as_bytes()[..cut].to_vec();
            if rng.below(2) == 0 {
                body.extend_from_slice(b"}}]]@#");
            }
            bad(frame(&body), vec![PARSE], "body is not JSON")
        }
        1 => {
            let version = rng.pick(&["1.0", "2", "3.0", ""]);
            let id = rng.range(-5, 1_000_000);
            let body = json!({"jsonrpc": version, "id": id, "method": "initialize"}).to_string();
            bad(
                frame(body.as_bytes()),
                vec![INVALID],
                "wrong jsonrpc version",
            )
        }
        2 => {
            let body = rng.pick(&["[]", "[1,2]", "42", "\"x\"", "null", "true"]);
            bad(frame(body.as_bytes()), vec![INVALID], "not an object")
        }
        3 => {
            let method = rng.pick(&["1", "null", "[\"a\"]", "{}"]);
            let body = format!(r#"{{"jsonrpc":"2.0","id":3,"method":{method}}}"#);
            bad(frame(body.as_bytes()), vec![INVALID], "method not a string")
        }
        4 => {
            let id = rng.pick(&["1.5", "[1]", "{}", "true"]);
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"x"}}"#);
            bad(frame(body.as_bytes()), vec![INVALID], "bad id")
        }
        5 => {
            let params = rng.pick(&["1", "\"s\"", "true"]);
            let body = format!(r#"{{"jsonrpc":"2.0","id":4,"method":"x","params":{params}}}"#);
            bad(frame(body.as_bytes()), vec![INVALID], "bad params")
        }
        6 => {
            // A header whose length cannot be read.
            let value = rng.pick(&["abc", "-5", "", "1e3", "99999999999999999999999"]);
            let mut f = format!("Content-Length: {value}\r\n\r\n").into_bytes();
            f.extend_from_slice(good.as_bytes());
            bad(f, vec![PARSE], "bad Content-Length")
        }
        7 => {
            // No Content-Length at all.
            let mut f = b"Content-Type: application/vscode-jsonrpc\r\n\r\n".to_vec();
            f.extend_from_slice(good.as_bytes());
            bad(f, vec![PARSE], "no Content-Length")
        }
        8 => {
            // A length too small: the cut body, then its rest between frames.
            let short = 2 + rng.below(good.len() - 4);
            let mut f = format!("Content-Length: {short}\r\n\r\n").into_bytes();
            f.extend_from_slice(good.as_bytes());
            bad(f, vec![PARSE, PARSE], "Content-Length too small")
        }
        9 => {
            // A length too large: it swallows the start of the next frame, which is read
            // again.
            let extra = 1 + rng.below(30);
            let mut f = format!("Content-Length: {}\r\n\r\n", good.len() + extra).into_bytes();
            f.extend_from_slice(good.as_bytes());
            bad(f, vec![PARSE], "Content-Length too large")
        }
        10 => {
            // Invalid UTF-8 inside a string.
            let mut body = br#"{"jsonrpc":"2.0","id":5,"method":"x","params":{"a":""#.to_vec();
            body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            body.extend_from_slice(br#""}}"#);
            bad(frame(&body), vec![PARSE], "invalid UTF-8")
        }
        _ => {
            // Noise between frames (no header in it; not only blanks, which are skipped).
            let mut noise = vec![b'x'];
            noise.extend((0..rng.below(40)).map(|_| *rng.pick(b"abc{}[]\"xyz:;, 0123")));
            bad(noise, vec![PARSE], "noise between frames")
        }
    }
}

#[test]
fn every_malformed_frame_gets_its_error_and_the_server_goes_on() {
    let mut c = Client::start("frames");
    let uri = c.open("a.net", "import std.nn.*\nlet x = 1\n");
    let mut rng = Rng(0xf4a3e5);
    for i in 0..300 {
        let b = bad_frame(&mut rng);
        c.send_raw(&b.bytes);
        // A good request right after: it must be answered, after the bad frame's errors.
        let id = c.send_request(
            "textDocument/hover",
            json!({ "textDocument": { "uri": uri }, "position": { "line": 1, "character": 4 } }),
        );
        let mut errors = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "#{i} ({}): no answer", b.what);
            let Some(m) = c.recv(Duration::from_secs(20)) else {
                continue;
            };
            if m.get("id") == Some(&json!(id)) {
                assert!(m.get("result").is_some(), "#{i}: {m}");
                break;
            }
            if let Some(code) = m["error"]["code"].as_i64() {
                errors.push(code);
            }
        }
        assert_eq!(
            errors,
            b.expect,
            "#{i}: {} ({:?})",
            b.what,
            String::from_utf8_lossy(&b.bytes)
        );
        assert!(c.alive(), "#{i}: the server exited after {}", b.what);
    }
    c.shutdown();
}

/// Requests at every UTF-16 position of text full of multi-byte characters (inside
/// comments, strings and names, and between the halves of a surrogate pair), right
/// after each of them: every one is answered, none with an internal error.
#[test]
fn requests_at_every_position_of_non_ascii_text_are_answered() {
    let mut c = Client::start("unicode");
    let text = "import std.nn.*\n// a comment — with “quotes” and 💥\nlet café = 1 // é—\nlet s = \"— 𝔸 {café}\"\n/* — 💥 */ let t = s\nnet N: f32[4] -> f32[2] { dense(2) } // —\nt.\n";
    let uri = c.open("u.net", text);
    let methods = [
        "textDocument/completion",
        "textDocument/hover",
        "textDocument/definition",
        "textDocument/references",
        "textDocument/rename",
    ];
    let mut asked = 0;
    for (line, l) in text.split('\n').enumerate() {
        let units = l.encode_utf16().count();
        for col in 0..=units + 1 {
            for m in methods {
                let id = c.send_request(
                    m,
                    json!({
                        "textDocument": { "uri": uri },
                        "position": { "line": line, "character": col },
                        "context": { "includeDeclaration": true },
                        "newName": "z",
                    }),
                );
                let r = c.response(id);
                if let Some(e) = r.get("error") {
                    assert_ne!(e["code"], -32603, "{m} at {line}:{col}: {e}");
                }
                asked += 1;
            }
        }
    }
    assert!(asked > 500, "{asked}");
    // Edits that insert multi-byte text at every position of a line, each followed by a
    // completion right after it.
    let line = 2;
    let units = text
        .split('\n')
        .nth(line)
        .map_or(0, |l| l.encode_utf16().count());
    for (v, col) in (0..units).enumerate() {
        let piece = ["—", "💥", "é", "𝔸"][v % 4];
        c.notify(
            "textDocument/didChange",
            json!({ "textDocument": { "uri": uri, "version": v + 2 }, "contentChanges": [{ "range": { "start": { "line": line, "character": col }, "end": { "line": line, "character": col } }, "text": piece }] }),
        );
        let after = col + piece.encode_utf16().count();
        let id = c.send_request(
            "textDocument/completion",
            json!({ "textDocument": { "uri": uri }, "position": { "line": line, "character": after } }),
        );
        assert!(c.response(id).get("result").is_some());
    }
    assert!(c.alive());
    c.shutdown();
}

/// Semantic tokens for one 270 KB line take time linear in its length, and a request
/// sent behind them is answered promptly.
#[test]
fn a_very_long_line_is_not_quadratic() {
    let mut c = Client::start("longline");
    let terms: Vec<String> = (0..35_000).map(|i| format!("value{}", i % 10)).collect();
    let mut text: String = (0..10).map(|i| format!("let value{i} = {i}\n")).collect();
    text.push_str("let long = [");
    text.push_str(&terms.join(", "));
    text.push_str("]\n");
    assert!(text.len() > 270_000, "{}", text.len());
    let uri = c.open("long.net", &text);
    let _ = c.diagnostics(&uri);
    let start = Instant::now();
    let id = c.send_request(
        "textDocument/semanticTokens/full",
        json!({ "textDocument": { "uri": uri } }),
    );
    let hover = c.send_request(
        "textDocument/hover",
        json!({ "textDocument": { "uri": uri }, "position": { "line": 0, "character": 4 } }),
    );
    let tokens = c.response(id);
    let took = start.elapsed();
    let data = tokens["result"]["data"].as_array().map_or(0, Vec::len);
    // Five numbers per token, and the names alone are thousands of tokens.
    assert!(data >= 5 * 20_000, "{data}");
    assert!(c.response(hover).get("result").is_some());
    // Measured: about 0.1 s in a debug build; the quadratic conversion took over 20 s.
    // The bound leaves room for a loaded machine.
    let bound = Duration::from_secs(if cfg!(debug_assertions) { 8 } else { 3 });
    assert!(took < bound, "semantic tokens took {took:?}");
    eprintln!("semantic tokens of a {} byte line: {took:?}", text.len());
    c.shutdown();
}
