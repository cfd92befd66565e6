//! The formatter behind `nabla fmt` and the language server's formatting: canonical
//! indentation and spacing, with the author's line breaks and comments kept.
//!
//! It works on tokens, not the tree, so it never drops a comment or reorders anything:
//! * each line is re-indented by two spaces per enclosing bracket *line* (brackets opened
//!   on one line count once, so `f(g {` indents its body one level), a line that starts
//!   with closers is outdented by them, and a line starting with `|>` or `.` continues the
//!   previous one (one level more);
//! * tokens on a line are spaced by fixed rules (binary operators and `=` spaced, none
//!   inside brackets or around `.` and `..`, one after `,` `;` `:`, a prefix `-` or `!`
//!   attached to its operand);
//! * trailing whitespace goes, runs of blank lines become one, the file ends in one newline;
//! * a trailing comment keeps its gap (aligned comments stay aligned); lines inside a
//!   multi-line string are left as they are.
//!
//! Comments are laid out with the tokens: a block comment (`/* */`) keeps its place between
//! tokens, with a space on each side where the source had one; a comment spanning lines is
//! kept verbatim with its lines.
//!
//! Formatting refuses a file that does not parse, and checks its own output: the tokens
//! and the comments after formatting must be those before, or it is an error, never a
//! changed program or a lost comment. Formatting is idempotent (tested over `examples/`,
//! the standard library, and thousands of generated files with comments everywhere).

use super::token::{Token, lex_with_comments};
use crate::span::FileId;

/// The formatted text of `src`, or why it cannot be formatted.
pub fn format(src: &str) -> Result<String, String> {
    let (tokens, comments, lex_errors) = lex_with_comments(src);
    if let Some(e) = lex_errors.first() {
        return Err(format!("cannot format a file with errors: {}", e.message));
    }
    let (_, parse_errors) = super::parse_module(src, FileId(0));
    if let Some(e) = parse_errors.first() {
        return Err(format!("cannot format a file with errors: {}", e.message));
    }
    let mut items: Vec<Tok> = tokens
        .iter()
        .map(|(t, r)| (Some(t.clone()), r.clone()))
        .chain(comments.iter().map(|r| (None, r.clone())))
        .collect();
    items.sort_by_key(|(_, r)| r.start);
    let out = layout(src, &items);
    let (again, again_comments, _) = lex_with_comments(&out);
    let same_tokens =
        again.len() == tokens.len() && again.iter().zip(&tokens).all(|(a, b)| a.0 == b.0);
    let text = |s: &str, rs: &[std::ops::Range<usize>]| -> Vec<String> {
        rs.iter().map(|r| s[r.clone()].to_string()).collect()
    };
    if !same_tokens || text(&out, &again_comments) != text(src, &comments) {
        return Err("internal error: formatting would change the program's tokens or comments; the file is left as it is".into());
    }
    Ok(out)
}

/// A token, or a comment (`None`), with its byte range.
type Tok = (Option<Token>, std::ops::Range<usize>);

fn is_open(t: &Token) -> bool {
    matches!(t, Token::Sym("(" | "[" | "{") | Token::LineOpen(_))
}

fn is_close(t: &Token) -> bool {
    matches!(t, Token::Sym(")" | "]" | "}"))
}

const BINARY: &[&str] = &[
    "+", "-", "*", "/", "%", "@", "==", "!=", "<=", ">=", "<", ">", "&&", "||", "=", "+=", "-=",
    "*=", "/=", "->", "|>", "?",
];

fn layout(src: &str, tokens: &[Tok]) -> String {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |off: usize| line_starts.partition_point(|s| *s <= off) - 1;
    let nlines = line_starts.len();
    // Items per line, and lines that lie inside a multi-line token or comment (kept
    // verbatim).
    let mut per_line: Vec<Vec<usize>> = vec![vec![]; nlines];
    let mut verbatim = vec![false; nlines];
    for (i, (_, r)) in tokens.iter().enumerate() {
        let (a, b) = (
            line_of(r.start),
            line_of(r.end.saturating_sub(1).max(r.start)),
        );
        per_line[a].push(i);
        for v in verbatim.iter_mut().take(b + 1).skip(a) {
            if b > a {
                *v = true;
            }
        }
    }
    let token = |i: usize| tokens[i].0.as_ref();
    // Open brackets, each with the line that opened it.
    let mut stack: Vec<usize> = Vec::new();
    let mut out = String::new();
    let mut blank_run = 0;
    let mut prev_line_tokens = false;
    for l in 0..nlines {
        let start = line_starts[l];
        let end = line_starts.get(l + 1).map_or(src.len(), |e| e - 1);
        let raw = src.get(start..end).unwrap_or("");
        let ids = &per_line[l];
        if verbatim[l] {
            out.push_str(raw);
            out.push('\n');
            for &i in ids {
                if let Some(t) = token(i) {
                    track(&mut stack, t, l);
                }
            }
            blank_run = 0;
            continue;
        }
        if ids.is_empty() && raw.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if blank_run > 0 && !out.is_empty() {
            out.push('\n');
        }
        blank_run = 0;
        // The line's tokens, for indentation (comments do not indent).
        let toks: Vec<&Token> = ids.iter().filter_map(|&i| token(i)).collect();
        // Indentation: distinct opening lines still open after this line's leading closers.
        let leading = toks.iter().take_while(|t| is_close(t)).count();
        let open_after: Vec<usize> = stack[..stack.len().saturating_sub(leading)].to_vec();
        let mut level = {
            let mut lines = open_after.clone();
            lines.dedup();
            lines.len()
        };
        if let Some(first) = toks.first()
            && matches!(first, Token::Sym("|>" | ".") | Token::Kw("where"))
            && prev_line_tokens
        {
            level += 1;
        }
        let mut line = "  ".repeat(level);
        let mut prev: Option<&Token> = None;
        let mut before_prev: Option<&Token> = None;
        // Whether the previous item was a comment.
        let mut after_comment = false;
        let mut last_end = start;
        let mut first = true;
        for (k, &i) in ids.iter().enumerate() {
            let (t, r) = &tokens[i];
            let gap = src.get(last_end..r.start).unwrap_or("");
            if !first {
                // A comment keeps the source's spacing: the last one on a line its gap
                // exactly (aligned trailing comments stay aligned), any other a space
                // on each side where the source had one.
                let space = match t {
                    None if k + 1 == ids.len() => {
                        line.push_str(gap);
                        false
                    }
                    Some(t) if !after_comment => {
                        prev.is_some_and(|a| spaced(before_prev, a, t, !gap.is_empty()))
                    }
                    _ => !gap.is_empty(),
                };
                if space {
                    line.push(' ');
                }
            }
            line.push_str(src.get(r.clone()).unwrap_or(""));
            if let Some(t) = t {
                track(&mut stack, t, l);
                before_prev = prev;
                prev = Some(t);
            }
            after_comment = t.is_none();
            last_end = r.end;
            first = false;
        }
        out.push_str(line.trim_end());
        out.push('\n');
        prev_line_tokens = !toks.is_empty();
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    if out.trim().is_empty() {
        return String::new();
    }
    out
}

/// Pushes or pops the bracket stack for one token on line `l`.
fn track(stack: &mut Vec<usize>, t: &Token, l: usize) {
    if is_open(t) {
        stack.push(l);
    } else if is_close(t) {
        stack.pop();
    }
}

/// Whether a token that ends an operand: after it, `-` is binary.
fn ends_operand(t: &Token) -> bool {
    matches!(
        t,
        Token::Ident(_)
            | Token::Int(_)
            | Token::Float(_)
            | Token::Str(_)
            | Token::Kw("true" | "false")
            | Token::Sym(")" | "]" | "}")
    )
}

/// Whether a space goes between `a` and `b` (`z` came before `a`; `had` says whether the
/// source had one, for the few places the rules leave open).
fn spaced(z: Option<&Token>, a: &Token, b: &Token, had: bool) -> bool {
    use Token::*;
    // A prefix `-` or `!` sticks to its operand.
    let prefix = |t: &Token, before: Option<&Token>| {
        matches!(t, Sym("!")) || (matches!(t, Sym("-")) && !before.is_some_and(ends_operand))
    };
    if prefix(a, z) {
        return false;
    }
    match (a, b) {
        (Sym("," | ";" | ":" | "="), Sym("..." | "..")) => true,
        (_, Sym("," | ";" | ":" | ")" | "]" | "." | ".." | "...")) => false,
        (Sym("(" | "[" | "." | ".." | "...") | LineOpen(_), _) => false,
        (Sym("{"), Sym("}")) => false,
        (Sym("{"), _) | (_, Sym("}")) => true,
        (_, Sym("{")) => true,
        (Sym("," | ";" | ":"), _) => true,
        (Ident(_) | Sym(")" | "]"), Sym("(" | "[")) => false,
        (Kw(_), Sym("(" | "[")) => true,
        (_, LineOpen(_)) => true,
        (Sym(op), _) if BINARY.contains(op) => true,
        (_, Sym("!")) => true,
        (_, Sym(op)) if BINARY.contains(op) => *op != "-" || ends_operand(a) || had,
        (Doc(_), _) | (_, Doc(_)) => true,
        (
            Ident(_) | Int(_) | Float(_) | Str(_) | Kw(_) | Sym(")" | "]" | "}"),
            Ident(_) | Int(_) | Float(_) | Str(_) | Kw(_),
        ) => true,
        _ => had,
    }
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn spacing_and_indentation_are_canonical() {
        let src = "net  N : f32[1,28,28]->f32[10]{\n      flatten\n dense( 10 ,relu )   // out\n}\nlet x=-1+2*3\nfn f(a:int=1)->int{ if a>0 { return -a } a }\n\n\n\nprint(\"{x:.2}\")\n";
        let want = "net N: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10, relu)   // out\n}\nlet x = -1 + 2 * 3\nfn f(a: int = 1) -> int { if a > 0 { return -a } a }\n\nprint(\"{x:.2}\")\n";
        assert_eq!(format(src).expect("formats"), want);
        assert_eq!(format(want).expect("formats"), want);
    }

    #[test]
    fn brackets_opened_on_one_line_indent_once_and_pipes_continue() {
        let src = "let cfg = TrainConfig { optimizer: sgd(lr: 0.1,\nmomentum: 0.9), augment: [\nrandom_crop(4),\n] }\nlayer l()(x: f32[B, c]) {\nx\n|> relu\n}\n";
        let want = "let cfg = TrainConfig { optimizer: sgd(lr: 0.1,\n  momentum: 0.9), augment: [\n    random_crop(4),\n] }\nlayer l()(x: f32[B, c]) {\n  x\n    |> relu\n}\n";
        assert_eq!(format(src).expect("formats"), want);
        assert_eq!(format(want).expect("formats"), want);
    }

    #[test]
    fn a_file_with_errors_is_refused() {
        assert!(
            format("net N: f32[1] -> f32[1] {\n  dense(\n")
                .expect_err("refused")
                .contains("cannot format")
        );
        assert!(format("let x = 1 $ 2\n").is_err());
    }

    #[test]
    fn comments_and_imports_are_kept() {
        let src = "// header\nimport std.nn.*\n\n/// doc\nfn g(x: f32[B, ...S]) -> f32[...S] { x }   // trailing\n";
        assert_eq!(format(src).expect("formats"), src);
    }
}
