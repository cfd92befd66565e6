#![allow(dead_code)]
// shared by tests/lsp.rs, tests/lsp_fuzz.rs, tests/lsp_frames.rs and bench/lsp_latency.rs, which use different parts
//! A minimal JSON-RPC client for `nabla lsp`, speaking the protocol over the server's
//! stdin and stdout as an editor does (Content-Length framing).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use serde_json::{Value, json};

pub struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next: i64,
    /// Notifications received while waiting for responses.
    pub notifications: Vec<Value>,
    pub dir: PathBuf,
}

fn read_message(r: &mut BufReader<ChildStdout>) -> Option<Value> {
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl Client {
    /// Starts `nabla lsp` in a fresh directory and initializes it.
    pub fn start(test: &str) -> Client {
        let dir = std::env::temp_dir().join(format!("nabla-lsp-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nabla"))
            .arg("lsp")
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nabla lsp");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, incoming) = channel();
        std::thread::spawn(move || {
            while let Some(m) = read_message(&mut stdout) {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            incoming,
            next: 1,
            notifications: vec![],
            dir,
        };
        let root = c.uri("");
        c.request(
            "initialize",
            json!({ "processId": null, "rootUri": root, "capabilities": {} }),
        );
        c.notify("initialized", json!({}));
        c
    }

    pub fn uri(&self, name: &str) -> String {
        format!("file://{}/{name}", self.dir.display())
    }

    fn send(&mut self, v: &Value) {
        let body = v.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("write");
        self.stdin.flush().expect("flush");
    }

    /// Writes bytes as they are: malformed frames, for the framing tests.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).expect("write");
        self.stdin.flush().expect("flush");
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request without waiting; returns its id.
    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next;
        self.next += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        id
    }

    /// The next message, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Value> {
        match self.incoming.recv_timeout(timeout) {
            Ok(v) => Some(v),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the server exited"),
        }
    }

    /// The response to request `id` (its whole message: `result` or `error`).
    pub fn response(&mut self, id: i64) -> Value {
        loop {
            let m = self
                .recv(Duration::from_secs(20))
                .unwrap_or_else(|| panic!("no response to request {id} in 20 s"));
            if m.get("id") == Some(&json!(id)) && m.get("method").is_none() {
                return m;
            }
            self.notifications.push(m);
        }
    }

    /// Sends a request and returns its `result` (panics on an error response).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        let m = self.response(id);
        if let Some(e) = m.get("error") {
            panic!("{method} failed: {e}");
        }
        m["result"].clone()
    }

    /// Writes `text` to `name` in the directory (so imports find it) and opens it.
    pub fn open(&mut self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).expect("dir");
        }
        std::fs::write(&path, text).expect("write");
        let uri = self.uri(name);
        self.notify("textDocument/didOpen", json!({ "textDocument": { "uri": uri, "languageId": "nabla", "version": 1, "text": text } }));
        uri
    }

    /// The next diagnostics published for `uri` (waiting up to 20 s).
    pub fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        if let Some(i) = self.notifications.iter().position(|n| {
            n["method"] == "textDocument/publishDiagnostics" && n["params"]["uri"] == uri
        }) {
            let n = self.notifications.remove(i);
            return n["params"]["diagnostics"]
                .as_array()
                .cloned()
                .unwrap_or_default();
        }
        loop {
            let m = self
                .recv(Duration::from_secs(20))
                .unwrap_or_else(|| panic!("no diagnostics for {uri} in 20 s"));
            if m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri {
                return m["params"]["diagnostics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
            }
            self.notifications.push(m);
        }
    }

    pub fn shutdown(mut self) {
        self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `text` without its `$0` marker, and the marker's (line, UTF-16 column).
pub fn cursor(text: &str) -> (String, u32, u32) {
    let at = text.find("$0").expect("fixture has a $0 cursor");
    let before = &text[..at];
    let line = before.matches('\n').count() as u32;
    let col = before
        .rsplit('\n')
        .next()
        .map_or(0, |l| l.encode_utf16().count()) as u32;
    (text.replacen("$0", "", 1), line, col)
}

/// A location as `file:line:col-line:col` (1-based), with the test directory removed.
pub fn show_location(c: &Client, l: &Value) -> String {
    let uri = l["uri"].as_str().unwrap_or("");
    let base = format!("file://{}/", c.dir.display());
    let file = uri
        .strip_prefix(&base)
        .map(|f| f.replace("cache/nabla/std-0.1.0/", "<std>/"))
        .unwrap_or_else(|| uri.to_string());
    format!("{file}:{}", show_range(&l["range"]))
}

pub fn show_range(r: &Value) -> String {
    let p = |v: &Value| {
        format!(
            "{}:{}",
            v["line"].as_u64().unwrap_or(0) + 1,
            v["character"].as_u64().unwrap_or(0) + 1
        )
    };
    format!("{}-{}", p(&r["start"]), p(&r["end"]))
}
