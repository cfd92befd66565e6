//! The wire in front of the server: splits the client's byte stream into JSON-RPC frames,
//! answers every malformed one with the error the JSON-RPC 2.0 specification defines, and
//! passes on only frames the protocol crate can read.
//!
//! tower-lsp-server stops serving at the first frame it cannot decode (it answers once,
//! then its input stream ends), so nothing malformed may reach it. Here:
//! * a header block without a usable `Content-Length` (missing, not a number, larger than
//!   [`MAX_FRAME`]), or with a charset other than UTF-8, gets a Parse error (-32700, id
//!   null); reading resumes at the next `Content-Length:` in the stream;
//! * a body that is not UTF-8 JSON gets a Parse error. When it holds the start of the next
//!   frame (its length was too large, so it swallowed what followed), that part is read
//!   again as the next frame, so one bad length costs one answer, not the frames after it;
//! * JSON that is not a request, notification or response (an array, a wrong `jsonrpc`
//!   version, a `method` that is not a string, `params` that are not an object, an array
//!   or null,
//!   an `id` that is not an integer, string or null) gets an Invalid Request error
//!   (-32600) with its id when it has a usable one, else null. A malformed response is
//!   dropped (responses are never answered);
//! * a body shorter than its length whose input then stalls (the client waits for an
//!   answer that would never come) is judged after [`STALL`], as a body that ends there;
//! * the end of input in the middle of a frame gets a Parse error.
//!
//! Header names are matched without regard to case, unknown headers are ignored, and a
//! bare `\n` ends a header line as `\r\n` does.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

/// The largest body accepted (a generous bound: a 270 KB line is a normal edit).
pub const MAX_FRAME: usize = 64 << 20;

/// The longest header block read before it counts as malformed.
const MAX_HEADER: usize = 8 << 10;

/// How long a frame's body may wait for its remaining bytes before it is judged as it is.
pub const STALL: Duration = Duration::from_secs(2);

const MARKER: &[u8] = b"content-length:";

/// What the reader found next in the stream.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A frame to pass on: its body, as sent.
    Forward(Vec<u8>),
    /// A complete frame to write back to the client (an error response).
    Reply(Vec<u8>),
    /// A malformed response or a frame that needs no answer: reported on stderr only.
    Ignored(String),
}

/// A byte source that can wait with a deadline.
pub trait Source {
    /// Reads some bytes into `buf`: `Ok(Some(0))` at the end of input, `Ok(None)` when
    /// nothing came within `wait`.
    fn read_within(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>>;
}

/// Any reader, which never times out (tests, in-memory input).
pub struct Blocking<R>(pub R);

impl<R: Read> Source for Blocking<R> {
    fn read_within(&mut self, buf: &mut [u8], _: Duration) -> std::io::Result<Option<usize>> {
        self.0.read(buf).map(Some)
    }
}

/// Standard input as a [`Source`]: waited on with `poll(2)` on Unix (so a stalled frame
/// can be judged), read as it comes elsewhere.
pub fn stdin() -> std::io::Result<Box<dyn Source + Send>> {
    #[cfg(unix)]
    return Ok(Box::new(Stdin::open()?));
    #[cfg(not(unix))]
    return Ok(Box::new(Blocking(std::io::stdin())));
}

impl Source for Box<dyn Source + Send> {
    fn read_within(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>> {
        (**self).read_within(buf, wait)
    }
}

/// Standard input, waited on with `poll(2)` so a stalled frame can be judged.
#[cfg(unix)]
pub struct Stdin(std::fs::File);

#[cfg(unix)]
impl Stdin {
    /// A second handle on fd 0, unbuffered (a buffer in between would hide bytes from
    /// `poll`).
    pub fn open() -> std::io::Result<Stdin> {
        use std::os::fd::AsFd;
        Ok(Stdin(std::fs::File::from(
            std::io::stdin().as_fd().try_clone_to_owned()?,
        )))
    }
}

#[cfg(unix)]
impl Source for Stdin {
    fn read_within(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>> {
        use std::os::fd::AsRawFd;
        let mut fds = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, its count, and a timeout.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        if ready == 0 {
            return Ok(None);
        }
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        self.0.read(buf).map(Some)
    }
}

/// Splits a stream into [`Event`]s.
///
/// Input is kept in one buffer read from `pos` on: consuming advances `pos`, and the
/// consumed part is dropped only once it is at least half the buffer, so every byte is
/// moved a bounded number of times (a stream of huge announced lengths costs time in
/// proportion to its bytes, not to their product).
pub struct Reader<S> {
    source: S,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    stall: Duration,
}

/// How a read for more input ended.
enum More {
    Got,
    Eof,
    Stalled,
}

impl<S: Source> Reader<S> {
    pub fn new(source: S) -> Self {
        Reader::with_stall(source, STALL)
    }

    /// With another stall timeout (tests).
    pub fn with_stall(source: S, stall: Duration) -> Self {
        Reader {
            source,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            stall,
        }
    }

    /// The unread input.
    fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` bytes of the unread input read.
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos >= 1 << 16 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    fn more(&mut self, wait: Duration) -> More {
        if self.eof {
            return More::Eof;
        }
        let mut chunk = [0u8; 1 << 16];
        loop {
            match self.source.read_within(&mut chunk, wait) {
                Ok(None) => return More::Stalled,
                // A signal or a spurious wake-up: read again.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Ok(Some(0)) | Err(_) => {
                    self.eof = true;
                    return More::Eof;
                }
                Ok(Some(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return More::Got;
                }
            }
        }
    }

    /// The next event; `None` at the end of input.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            // Blank lines between frames are not frames.
            let blank = self
                .data()
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
                .count();
            self.consume(blank);
            if self.data().is_empty() {
                match self.more(Duration::MAX) {
                    More::Eof => return None,
                    _ => continue,
                }
            }
            if !starts_with_header(self.data()) {
                // Bytes between frames (the rest of a body shorter than its length, or
                // noise): one error for all of them, then the next frame.
                self.skip_to_marker();
                return Some(parse_error(
                    "unexpected bytes where a frame header should be",
                ));
            }
            let Some((header_len, fields)) = self.header() else {
                self.consume(self.data().len());
                return Some(parse_error("the input ended inside a header"));
            };
            // A `Content-Length:` in the middle of a header line is a frame that follows
            // bytes that were not one (`ab:cContent-Length: 74`): those bytes are the error.
            if let Some(i) = find_marker(&self.data()[..header_len])
                && i > 0
                && self.data()[i - 1] != b'\n'
            {
                self.consume(i);
                return Some(parse_error(
                    "unexpected bytes where a frame header should be",
                ));
            }
            self.consume(header_len);
            let length = match content_length(&fields) {
                Ok(n) => n,
                Err(why) => {
                    // The length is unknown: skip to the next frame's header.
                    self.skip_to_marker();
                    return Some(parse_error(&why));
                }
            };
            return Some(self.body(length));
        }
    }

    /// Reads a header block: its length in bytes (with the blank line) and its lines.
    /// `None` when the input ends before the block does.
    fn header(&mut self) -> Option<(usize, Vec<String>)> {
        let mut scanned = 0;
        loop {
            if let Some(end) = header_end(self.data(), scanned) {
                let text = String::from_utf8_lossy(&self.data()[..end]).into_owned();
                let lines = text
                    .split('\n')
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                return Some((end, lines));
            }
            if self.data().len() > MAX_HEADER {
                // No blank line where a header should end: one malformed header.
                return Some((self.data().len(), vec!["a header longer than 8 KiB".into()]));
            }
            scanned = self.data().len().saturating_sub(4);
            if let More::Eof = self.more(Duration::MAX) {
                return None;
            }
        }
    }

    /// Drops input up to the next `Content-Length:` (any case), reading as needed.
    fn skip_to_marker(&mut self) {
        loop {
            if let Some(i) = find_marker(self.data()) {
                self.consume(i);
                return;
            }
            // Keep a tail that may be the start of the marker.
            let cut = self.data().len().saturating_sub(MARKER.len() - 1);
            self.consume(cut);
            if let More::Eof = self.more(Duration::MAX) {
                self.consume(self.data().len());
                return;
            }
        }
    }

    /// Reads a body of `length` bytes and judges it.
    fn body(&mut self, length: usize) -> Event {
        while self.data().len() < length {
            match self.more(self.stall) {
                More::Got => {}
                More::Eof => {
                    let got = self.data().len();
                    let e = judge_prefix(self.data()).unwrap_or_else(|| {
                        parse_error(&format!(
                            "the input ended after {got} of the {length} bytes the header announced"
                        ))
                    });
                    self.consume(got);
                    return e;
                }
                More::Stalled => {
                    // The client sent less than it announced and waits: judge what came.
                    if let Some(e) = self.judge_short() {
                        return e;
                    }
                }
            }
        }
        let body = &self.data()[..length];
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => {
                let e = judge(v, body.to_vec());
                self.consume(length);
                e
            }
            Err(e) => {
                // A length too large swallows the start of the next frame: read it again
                // from the end of the JSON value the body starts with, or else from the
                // next `Content-Length:` inside it.
                let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
                let again = match values.next() {
                    Some(Ok(_)) if starts_a_frame(&body[values.byte_offset()..]) => {
                        Some(values.byte_offset())
                    }
                    _ => find_marker(&body[1.min(body.len())..]).map(|i| i + 1),
                };
                self.consume(again.unwrap_or(length));
                parse_error(&format!("the body is not JSON: {e}"))
            }
        }
    }

    /// A stalled short body: when a complete JSON value came, it is the frame (with a
    /// wrong length) and what follows is read as the next one.
    fn judge_short(&mut self) -> Option<Event> {
        let mut values = serde_json::Deserializer::from_slice(self.data()).into_iter::<Value>();
        match values.next() {
            Some(Ok(_)) => {
                let end = values.byte_offset();
                self.consume(end);
                Some(parse_error(&format!(
                    "the header announced more bytes than the body has ({end})"
                )))
            }
            _ => None,
        }
    }
}

/// The end of a header block in `buf` (after its blank line), searching from `from`.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // `\n\n` or `\n\r\n`.
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Whether `buf` starts like a header line (`Name:`, the name made of letters, digits and
/// `-`), or could still become one.
fn starts_with_header(buf: &[u8]) -> bool {
    let name = buf
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-')
        .count();
    match buf.get(name) {
        Some(b':') => name > 0,
        None => true,
        Some(_) => false,
    }
}

/// Whether `rest` (after blanks) is the start of a `Content-Length:` header, or all of it.
fn starts_a_frame(rest: &[u8]) -> bool {
    let rest = rest.trim_ascii_start();
    let n = rest.len().min(MARKER.len());
    n > 0 && rest[..n].eq_ignore_ascii_case(&MARKER[..n])
}

fn find_marker(buf: &[u8]) -> Option<usize> {
    buf.windows(MARKER.len())
        .position(|w| w.eq_ignore_ascii_case(MARKER))
}

/// The body length a header announces, or why there is none.
fn content_length(lines: &[String]) -> Result<usize, String> {
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a header line without a colon: {:?}", clip(line)));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Content-Length is not a number: {:?}", clip(value)));
            }
            match value.parse::<usize>() {
                Ok(n) if n <= MAX_FRAME => length = Some(n),
                _ => {
                    return Err(format!(
                        "Content-Length {} is larger than the {MAX_FRAME} bytes a frame may have",
                        clip(value)
                    ));
                }
            }
        } else if name.eq_ignore_ascii_case("content-type")
            && let Some(charset) = value
                .split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
                .map(|(_, v)| v.trim().trim_matches('"'))
            && !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8"))
        {
            return Err(format!("charset {charset:?} is not UTF-8"));
        }
    }
    length.ok_or_else(|| "a header without Content-Length".to_string())
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Judges what came of a frame at the end of input: a complete JSON value is judged as
/// a frame; anything else is `None`.
fn judge_prefix(got: &[u8]) -> Option<Event> {
    let mut values = serde_json::Deserializer::from_slice(got).into_iter::<Value>();
    match values.next() {
        Some(Ok(_)) => Some(parse_error(&format!(
            "the header announced more bytes than the body has ({})",
            got.len()
        ))),
        _ => None,
    }
}

/// Judges a body that is JSON: a request, notification or response to pass on, or the
/// error it gets.
fn judge(v: Value, body: Vec<u8>) -> Event {
    let Value::Object(m) = &v else {
        let what = match v {
            Value::Array(_) => "a batch (an array): the language server protocol has none",
            _ => "not an object",
        };
        return invalid(Value::Null, what);
    };
    // A response (no method, a result or an error) is never answered: a malformed one is
    // dropped, a well-formed one passed on.
    if !m.contains_key("method") && (m.contains_key("result") || m.contains_key("error")) {
        let id_ok = matches!(m.get("id"), Some(Value::Number(n)) if n.is_i64())
            || matches!(m.get("id"), Some(Value::String(_)));
        return if m.get("jsonrpc") == Some(&Value::String("2.0".into())) && id_ok {
            Event::Forward(body)
        } else {
            Event::Ignored("a malformed response (its id or version)".into())
        };
    }
    // The id, when it is one the protocol allows.
    let id = match m.get("id") {
        None => None,
        Some(Value::Number(n)) if n.is_i64() => Some(Value::Number(n.clone())),
        Some(Value::String(s)) => Some(Value::String(s.clone())),
        Some(Value::Null) => Some(Value::Null),
        Some(_) => return invalid(Value::Null, "an id must be an integer, a string or null"),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if m.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid(reply_id, "\"jsonrpc\" must be \"2.0\"");
    }
    match m.get("method") {
        Some(Value::String(_)) => match m.get("params") {
            // `null` is not in the specification, but clients send it for requests
            // without parameters (`shutdown`), and the protocol crate reads it as none.
            None | Some(Value::Object(_) | Value::Array(_) | Value::Null) => Event::Forward(body),
            Some(_) => invalid(reply_id, "\"params\" must be an object or an array"),
        },
        Some(_) => invalid(reply_id, "\"method\" must be a string"),
        None => invalid(reply_id, "no \"method\": neither a request nor a response"),
    }
}

/// An error response as a frame.
fn error_frame(id: Value, code: i64, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    })
    .to_string();
    frame(body.as_bytes())
}

/// `Content-Length: n` and the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

fn parse_error(why: &str) -> Event {
    Event::Reply(error_frame(
        Value::Null,
        -32700,
        &format!("Parse error: {why}"),
    ))
}

fn invalid(id: Value, why: &str) -> Event {
    Event::Reply(error_frame(id, -32600, &format!("Invalid Request: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8]) -> Vec<Event> {
        let mut r = Reader::with_stall(Blocking(input), Duration::from_millis(1));
        std::iter::from_fn(|| r.next_event()).collect()
    }

    fn code(e: &Event) -> Option<i64> {
        match e {
            Event::Reply(f) => {
                let body = &f[f.windows(4).position(|w| w == b"\r\n\r\n")? + 4..];
                let v: Value = serde_json::from_slice(body).ok()?;
                v["error"]["code"].as_i64()
            }
            _ => None,
        }
    }

    const OK: &str = r#"{"jsonrpc":"2.0","id":1,"method":"shutdown"}"#;

    #[test]
    fn good_frames_pass_and_bad_ones_get_the_spec_errors() {
        let ok = frame(OK.as_bytes());
        let mut input = ok.clone();
        input.extend(frame(b"{not json"));
        input.extend(frame(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#));
        input.extend(frame(br#"[1,2]"#));
        input.extend(b"Content-Length: abc\r\n\r\n{}");
        input.extend(&ok);
        input.extend(b"Content-Length: 3\r\n\r\n{\"jsonrpc\"");
        input.extend(&ok);
        let got = events(&input);
        let codes: Vec<Option<i64>> = got.iter().map(code).collect();
        assert_eq!(
            codes,
            vec![
                None,
                Some(-32700),
                Some(-32600),
                Some(-32600),
                Some(-32700),
                None,
                Some(-32700),
                Some(-32700),
                None
            ],
            "{got:?}"
        );
        assert_eq!(got[0], Event::Forward(OK.as_bytes().to_vec()));
        assert_eq!(got[8], Event::Forward(OK.as_bytes().to_vec()));
    }

    #[test]
    fn a_length_too_large_costs_one_answer_not_the_next_frame() {
        let mut input = format!("Content-Length: {}\r\n\r\n", OK.len() + 30).into_bytes();
        input.extend(OK.as_bytes());
        input.extend(frame(OK.as_bytes()));
        let got = events(&input);
        assert_eq!(code(&got[0]), Some(-32700), "{got:?}");
        assert_eq!(got[1], Event::Forward(OK.as_bytes().to_vec()), "{got:?}");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn responses_are_passed_on_or_dropped_never_answered() {
        let ok = r#"{"jsonrpc":"2.0","id":4,"result":null}"#;
        let bad_id = r#"{"jsonrpc":"2.0","id":1.5,"result":1}"#;
        let bad_version = r#"{"jsonrpc":"1.0","id":2,"error":{"code":1,"message":"x"}}"#;
        let mut input = frame(ok.as_bytes());
        input.extend(frame(bad_id.as_bytes()));
        input.extend(frame(bad_version.as_bytes()));
        let got = events(&input);
        assert_eq!(got[0], Event::Forward(ok.as_bytes().to_vec()));
        assert!(matches!(got[1], Event::Ignored(_)), "{got:?}");
        assert!(matches!(got[2], Event::Ignored(_)), "{got:?}");
    }

    /// Many frames announcing the largest length, each followed by a little: reading
    /// them takes time in proportion to the input (each byte is moved a bounded number of
    /// times), and every good frame among them is still found.
    #[test]
    fn hostile_lengths_cost_linear_time() {
        let mut input = Vec::new();
        for _ in 0..2000 {
            input.extend(format!("Content-Length: {MAX_FRAME}\r\n\r\nX").as_bytes());
            input.extend(frame(OK.as_bytes()));
        }
        let start = std::time::Instant::now();
        let got = events(&input);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(!got.is_empty());
        assert!(
            got.iter()
                .all(|e| matches!(e, Event::Reply(_) | Event::Forward(_)))
        );
    }

    #[test]
    fn headers_are_read_leniently() {
        let input = format!(
            "content-length: {}\nContent-Type: application/vscode-jsonrpc; charset=utf-8\nX-Other: 1\n\n{OK}",
            OK.len()
        );
        assert_eq!(
            events(input.as_bytes()),
            vec![Event::Forward(OK.as_bytes().to_vec())]
        );
        let latin = format!(
            "Content-Length: {}\r\nContent-Type: text/plain; charset=latin1\r\n\r\n{OK}",
            OK.len()
        );
        assert_eq!(code(&events(latin.as_bytes())[0]), Some(-32700));
    }
}
