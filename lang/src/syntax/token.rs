//! The lexer: source text to tokens with spans. It never fails: a character it does not
//! know becomes an [`Token::Error`] token, and the parser reports it once.
//!
//! Newlines are not tokens. One fact about them is kept, because it is what makes
//! newline-separated net stages unambiguous: a `(` or `[` that starts a line is lexed as
//! [`Token::LineOpen`], so it opens a group or list instead of calling or indexing the
//! previous line.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    Ident(String),
    Int(i64),
    Float(f64),
    /// A string literal's raw contents (between the quotes, escapes not yet applied).
    Str(String),
    Kw(&'static str),
    Sym(&'static str),
    /// `(` or `[` as the first token on its line.
    LineOpen(&'static str),
    /// A `///` doc comment line (text after the slashes).
    Doc(String),
    Error(char),
}

pub const KEYWORDS: &[&str] = &[
    "fn", "layer", "net", "rule", "param", "state", "let", "var", "if", "else", "for", "in",
    "while", "return", "import", "record", "extern", "type", "repeat", "true", "false", "where",
    "break", "continue",
];

/// Longest first, so that `...` wins over `..` and `.`.
const SYMBOLS: &[&str] = &[
    "...", "..", "->", "|>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=", "(", ")",
    "[", "]", "{", "}", ",", ";", ":", ".", "@", "+", "-", "*", "/", "%", "<", ">", "!", "=", "?",
];

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "{s}"),
            Token::Int(n) => write!(f, "{n}"),
            Token::Float(x) => write!(f, "{x}"),
            Token::Str(s) => write!(f, "\"{s}\""),
            Token::Kw(k) => write!(f, "{k}"),
            Token::Sym(s) | Token::LineOpen(s) => write!(f, "{s}"),
            Token::Doc(_) => write!(f, "doc comment"),
            Token::Error(c) => write!(f, "{c:?}"),
        }
    }
}

/// A lexing problem, reported as a diagnostic by the parser driver.
#[derive(Clone, Debug, PartialEq)]
pub struct LexError {
    pub start: usize,
    pub end: usize,
    pub message: String,
}

/// Splits `src` into tokens with byte ranges.
pub fn lex(src: &str) -> (Vec<(Token, std::ops::Range<usize>)>, Vec<LexError>) {
    let (tokens, _, errors) = lex_with_comments(src);
    (tokens, errors)
}

/// Tokens with byte ranges, and the byte ranges of the plain comments (`// ...` to the end
/// of its line, `/* ... */`), which are not tokens; the formatter must carry them.
#[allow(clippy::type_complexity)]
pub fn lex_with_comments(
    src: &str,
) -> (
    Vec<(Token, std::ops::Range<usize>)>,
    Vec<std::ops::Range<usize>>,
    Vec<LexError>,
) {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut comments = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if src[i..].starts_with("///") && !src[i..].starts_with("////") {
            let end = src[i..].find('\n').map(|n| i + n).unwrap_or(src.len());
            let text = src[i + 3..end]
                .strip_prefix(' ')
                .unwrap_or(&src[i + 3..end]);
            out.push((Token::Doc(text.to_string()), start..end));
            i = end;
            continue;
        }
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map(|n| i + n).unwrap_or(src.len());
            comments.push(start..i);
            continue;
        }
        if src[i..].starts_with("/*") {
            match src[i + 2..].find("*/") {
                Some(n) => i = i + 2 + n + 2,
                None => {
                    errors.push(LexError {
                        start,
                        end: src.len(),
                        message: "unterminated block comment".into(),
                    });
                    i = src.len();
                }
            }
            comments.push(start..i);
            continue;
        }
        let tok = if c.is_ascii_digit() {
            let (tok, end) = lex_number(src, i);
            if let Token::Error(_) = tok {
                errors.push(LexError {
                    start,
                    end,
                    message: "number literal out of range".into(),
                });
            }
            i = end;
            tok
        } else if c == b'_' || c.is_ascii_alphabetic() {
            let mut end = i;
            while end < bytes.len() && (bytes[end] == b'_' || bytes[end].is_ascii_alphanumeric()) {
                end += 1;
            }
            let word = &src[i..end];
            i = end;
            match KEYWORDS.iter().find(|k| **k == word) {
                Some(k) => Token::Kw(k),
                None => Token::Ident(word.to_string()),
            }
        } else if c == b'"' {
            let (end, closed) = scan_string(src, i);
            if !closed {
                errors.push(LexError {
                    start,
                    end,
                    message: "unterminated string literal".into(),
                });
            }
            let inner_end = if closed { end - 1 } else { end };
            i = end;
            Token::Str(src[start + 1..inner_end.max(start + 1)].to_string())
        } else if let Some(sym) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            i += sym.len();
            if line_start && (*sym == "(" || *sym == "[") {
                Token::LineOpen(sym)
            } else {
                Token::Sym(sym)
            }
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            i += ch.len_utf8();
            errors.push(LexError {
                start,
                end: i,
                message: format!("unexpected character {ch:?}"),
            });
            Token::Error(ch)
        };
        line_start = false;
        out.push((tok, start..i));
    }
    (out, comments, errors)
}

fn lex_number(src: &str, start: usize) -> (Token, usize) {
    let bytes = src.as_bytes();
    let mut end = start;
    let digits = |end: &mut usize| {
        while *end < bytes.len() && (bytes[*end].is_ascii_digit() || bytes[*end] == b'_') {
            *end += 1;
        }
    };
    digits(&mut end);
    let mut float = false;
    // `1..3` is a range: a dot makes a float only when a digit follows it. A number right
    // after one dot is a path segment (`features.1.0`, a module name), never a float.
    let after_dot =
        start >= 1 && bytes[start - 1] == b'.' && (start < 2 || bytes[start - 2] != b'.');
    if !after_dot && end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit()
    {
        float = true;
        end += 1;
        digits(&mut end);
    }
    if end < bytes.len() && (bytes[end] == b'e' || bytes[end] == b'E') {
        let mut e = end + 1;
        if e < bytes.len() && (bytes[e] == b'+' || bytes[e] == b'-') {
            e += 1;
        }
        if e < bytes.len() && bytes[e].is_ascii_digit() {
            float = true;
            end = e;
            digits(&mut end);
        }
    }
    let text: String = src[start..end].chars().filter(|c| *c != '_').collect();
    let tok = if float {
        text.parse().map(Token::Float).unwrap_or(Token::Error('0'))
    } else {
        text.parse().map(Token::Int).unwrap_or(Token::Error('0'))
    };
    (tok, end)
}

/// Returns the end of the string starting at `start` (just past the closing quote) and
/// whether it was closed. Braces nest, so `"{f("a")}"` is one string.
fn scan_string(src: &str, start: usize) -> (usize, bool) {
    let bytes = src.as_bytes();
    let mut i = start + 1;
    let mut depth = 0usize;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                i += 1;
                i += src
                    .get(i..)
                    .and_then(|r| r.chars().next())
                    .map(char::len_utf8)
                    .unwrap_or(0);
            }
            b'\n' if depth == 0 => return (i, false),
            b'{' => {
                depth += 1;
                i += 1
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1
            }
            b'"' if depth == 0 => return (i + 1, true),
            b'"' => {
                // a nested string inside an interpolation
                let (end, closed) = scan_string(src, i);
                if !closed {
                    return (end, false);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    (bytes.len().min(i), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Token> {
        lex(s).0.into_iter().map(|t| t.0).collect()
    }

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(
            toks("1.5 2 3e-2 1_000"),
            vec![
                Token::Float(1.5),
                Token::Int(2),
                Token::Float(0.03),
                Token::Int(1000)
            ]
        );
        assert_eq!(
            toks("0..3"),
            vec![Token::Int(0), Token::Sym(".."), Token::Int(3)]
        );
    }

    #[test]
    fn path_segments_are_ints() {
        // `features.1.0` names a module: after one dot a number is an int, not `1.0`.
        assert_eq!(
            toks("features.1.0 0..1.5"),
            vec![
                Token::Ident("features".into()),
                Token::Sym("."),
                Token::Int(1),
                Token::Sym("."),
                Token::Int(0),
                Token::Int(0),
                Token::Sym(".."),
                Token::Float(1.5),
            ]
        );
    }

    #[test]
    fn line_open_paren() {
        assert_eq!(
            toks("f(x)\n(y)"),
            vec![
                Token::Ident("f".into()),
                Token::Sym("("),
                Token::Ident("x".into()),
                Token::Sym(")"),
                Token::LineOpen("("),
                Token::Ident("y".into()),
                Token::Sym(")"),
            ]
        );
    }

    #[test]
    fn strings_nest_interpolation() {
        assert_eq!(
            toks(r#""a {f("b")} c""#),
            vec![Token::Str(r#"a {f("b")} c"#.into())]
        );
        let (_, errs) = lex("\"open");
        assert_eq!(errs.len(), 1);
    }
}
