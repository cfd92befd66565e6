//! The parser: tokens to a [`Module`], with chumsky. It never fails. Each construct that
//! can go wrong has a recovery strategy that skips to a sensible restart point (the next
//! statement, stage or item, respecting bracket nesting) and leaves an `Error` node, so one
//! broken file reports all of its problems at once and later stages still get a tree.

use chumsky::input::{Input as _, ValueInput};
use chumsky::prelude::*;

use super::ast::*;
use super::token::{Token, lex};
use crate::diag::{Diagnostic, Label};
use crate::span::{FileId, Span};

type Ex<'t> = extra::Err<Rich<'t, Token, SimpleSpan>>;

const INTERPOLATION: &str = "in string interpolation: ";

thread_local! {
    /// Diagnostics of string interpolations other than syntax errors, which chumsky's
    /// error type cannot carry with their codes; each parse takes those it caused.
    static PASSED: std::cell::RefCell<Vec<Diagnostic>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs a parse and appends the interpolation diagnostics it passed on.
fn with_passed<T>(parse: impl FnOnce() -> (T, Vec<Diagnostic>)) -> (T, Vec<Diagnostic>) {
    let before = PASSED.with(|p| p.borrow().len());
    let (out, mut diags) = parse();
    // A string parsed again after the parser backtracked passes its diagnostics twice.
    let mut seen = std::collections::HashSet::new();
    PASSED.with(|p| {
        diags.extend(p.borrow_mut().drain(before..).filter(|d| {
            seen.insert((d.code, d.labels.first().map(|l| (l.span.start, l.span.end))))
        }))
    });
    (out, diags)
}

/// Parses a whole file. Always returns a module; problems come back as diagnostics.
pub fn parse_module(src: &str, file: FileId) -> (Module, Vec<Diagnostic>) {
    with_passed(|| parse_module_inner(src, file))
}

fn parse_module_inner(src: &str, file: FileId) -> (Module, Vec<Diagnostic>) {
    let (tokens, lex_errors) = lex(src);
    let mut diags: Vec<Diagnostic> = lex_errors
        .into_iter()
        .map(|e| {
            Diagnostic::error("E0001", e.message.clone())
                .with_label(Label::primary(Span::new(file, e.start, e.end), e.message))
        })
        .collect();
    // Unknown characters were reported by the lexer; the parser should not report them again.
    let tokens: Vec<(Token, SimpleSpan)> = tokens
        .into_iter()
        .filter(|(t, _)| !matches!(t, Token::Error(_)))
        .map(|(t, r)| (t, SimpleSpan::from(r)))
        .collect();
    let eoi = SimpleSpan::from(src.len()..src.len());
    let (module, errors) = module_parser(file)
        .parse(tokens.as_slice().split_token_span(eoi))
        .into_output_errors();
    diags.extend(errors.into_iter().map(|e| rich_to_diag(e, file)));
    let mut module = module.unwrap_or_default();
    super::depth::limit_depth(&mut module, &mut diags);
    (module, diags)
}

/// Parses one expression (used for string interpolation and by the REPL). `offset` is
/// added to every span, so spans point into the enclosing file.
pub fn parse_expr(src: &str, file: FileId, offset: usize) -> (Expr, Vec<Diagnostic>) {
    with_passed(|| parse_expr_inner(src, file, offset))
}

fn parse_expr_inner(src: &str, file: FileId, offset: usize) -> (Expr, Vec<Diagnostic>) {
    let (tokens, lex_errors) = lex(src);
    let shift = |s: usize| s + offset;
    let mut diags: Vec<Diagnostic> = lex_errors
        .into_iter()
        .map(|e| {
            Diagnostic::error("E0001", e.message.clone()).with_label(Label::primary(
                Span::new(file, shift(e.start), shift(e.end)),
                e.message,
            ))
        })
        .collect();
    let tokens: Vec<(Token, SimpleSpan)> = tokens
        .into_iter()
        .filter(|(t, _)| !matches!(t, Token::Error(_)))
        .map(|(t, r)| (t, SimpleSpan::from(shift(r.start)..shift(r.end))))
        .collect();
    let eoi = SimpleSpan::from(shift(src.len())..shift(src.len()));
    let whole = Span::new(file, offset, offset + src.len());
    let (expr, errors) = grammar(file)
        .0
        .then_ignore(end())
        .parse(tokens.as_slice().split_token_span(eoi))
        .into_output_errors();
    diags.extend(errors.into_iter().map(|e| rich_to_diag(e, file)));
    let mut expr = expr.unwrap_or(Expr::error(whole));
    if let Some(span) = super::depth::limit_expr_depth(&mut expr) {
        diags.push(super::depth::nested_too_deeply(span));
    }
    (expr, diags)
}

fn rich_to_diag(e: Rich<'_, Token, SimpleSpan>, file: FileId) -> Diagnostic {
    let span = sp(file, *e.span());
    let found = e
        .found()
        .map(|t| format!("`{t}`"))
        .unwrap_or_else(|| "end of file".into());
    let message = match e.reason() {
        chumsky::error::RichReason::Custom(msg) => msg.clone(),
        _ => {
            let mut expected: Vec<String> = e
                .expected()
                .map(|p| match p {
                    chumsky::error::RichPattern::Token(t) => format!("`{}`", &**t),
                    chumsky::error::RichPattern::Label(l) => l.to_string(),
                    chumsky::error::RichPattern::EndOfInput => "end of file".into(),
                    chumsky::error::RichPattern::SomethingElse
                    | chumsky::error::RichPattern::Any => String::new(),
                    other => format!("{other:?}").to_lowercase(),
                })
                .collect();
            expected.retain(|e| !e.is_empty());
            expected.sort();
            expected.dedup();
            // `-x` and `!x` are expressions too: do not list their operators beside it.
            if expected.iter().any(|e| e == "expression") {
                expected.retain(|e| e != "`-`" && e != "`!`");
            }
            match expected.len() {
                0 => format!("unexpected {found}"),
                1 => format!("expected {}, found {found}", expected[0]),
                // A long list of alternatives helps no one; an unclosed bracket is the
                // likely story when a closer is among them.
                _ if expected.len() > 6 => match ["`)`", "`]`", "`}`"]
                    .iter()
                    .find(|c| expected.iter().any(|e| e == *c))
                {
                    Some(c) => format!("unexpected {found}: expected {c}"),
                    None => format!("unexpected {found}"),
                },
                _ => format!("expected one of {}, found {found}", expected.join(", ")),
            }
        }
    };
    let mut d = Diagnostic::error("E0002", message).with_label(Label::primary(span, "here"));
    if let Some((ctx, ctx_span)) = e.contexts().last() {
        let name = match ctx {
            chumsky::error::RichPattern::Label(l) => l.to_string(),
            other => format!("{other:?}"),
        };
        d = d.with_label(Label::secondary(
            sp(file, *ctx_span),
            format!("while parsing this {name}"),
        ));
    }
    d
}

fn sym<'t, I>(s: &'static str) -> impl Parser<'t, I, Token, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    just(Token::Sym(s))
}

fn kw<'t, I>(s: &'static str) -> impl Parser<'t, I, Token, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    just(Token::Kw(s))
}

/// `(` whether or not it starts a line: for groups and declarations, never for calls.
fn open<'t, I>(s: &'static str) -> impl Parser<'t, I, Token, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    just(Token::Sym(s)).or(just(Token::LineOpen(s)))
}

/// A closing delimiter. When it is missing but the next token closes an enclosing group
/// (or the file ends), the parser reports it and carries on as if it were there, so an
/// unclosed `(` or `{` is one error, not a cascade.
fn close<'t, I>(s: &'static str) -> impl Parser<'t, I, Token, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let outer = one_of([Token::Sym(")"), Token::Sym("]"), Token::Sym("}")])
        .rewind()
        .ignored()
        .or(end());
    sym(s).recover_with(via_parser(outer.to(Token::Error('}'))))
}

/// A call's closing `)`: when missing, the call ends where its arguments end (most often
/// the `)` was forgotten at the end of a line).
fn close_call<'t, I>() -> impl Parser<'t, I, Token, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    sym(")").recover_with(via_parser(empty().to(Token::Error(')'))))
}

/// A string literal, split into literal parts and `{expr}` interpolations.
fn string_lit<'t, I>(file: FileId) -> impl Parser<'t, I, Vec<StrPart>, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    select! { Token::Str(s) = e => (s, e.span()) }.validate(
        move |(s, span): (String, SimpleSpan), _, emitter| {
            let (parts, errors) = interpolate(&s, file, span.start + 1);
            for err in errors {
                // Syntax errors go through the parser (so recovery knows of them); other
                // diagnostics (nesting too deep) keep their codes.
                if err.code != "E0002" {
                    PASSED.with(|p| p.borrow_mut().push(err));
                    continue;
                }
                let at = err.labels.first().map(|l| l.span).unwrap_or(sp(file, span));
                let message = if err.message.starts_with(INTERPOLATION) {
                    err.message.clone()
                } else {
                    format!("{INTERPOLATION}{}", err.message)
                };
                emitter.emit(Rich::custom(SimpleSpan::from(at.start..at.end), message));
            }
            parts
        },
    )
}

/// A module name before `:`: a path of names and numbers (`conv1`, `features.1.0`), or a
/// string with `{int}` parts (`"encoder_layer_{i}"`). `self` is a path like any other;
/// the checker gives it its meaning.
fn label<'t, I>(file: FileId) -> impl Parser<'t, I, ModuleLabel, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let segment = select! {
        Token::Ident(name) => name,
        Token::Int(n) => n.to_string(),
    };
    let path = segment
        .separated_by(sym("."))
        .at_least(1)
        .collect::<Vec<String>>()
        .map(|segs| vec![StrPart::Lit(segs.join("."))]);
    path.or(string_lit(file))
        .map_with(move |parts, e| ModuleLabel {
            parts,
            span: sp(file, e.span()),
        })
        .labelled("label")
}

fn ident<'t, I>(file: FileId) -> impl Parser<'t, I, Ident, Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    // `in` is a keyword only between a `for` variable and its iterable, so it may name a
    // dimension (`f32[B, in]`) like any identifier.
    select! {
        Token::Ident(name) = e => Ident { name, span: sp(file, e.span()) },
        Token::Kw("in") = e => Ident { name: "in".into(), span: sp(file, e.span()) },
    }
    .labelled("identifier")
}

/// Chumsky gives an empty match an inverted span (end before start); ours are ordered.
fn sp(file: FileId, s: SimpleSpan) -> Span {
    Span::new(file, s.start.min(s.end), s.end.max(s.start))
}

/// One token, or a whole bracketed group: the unit that recovery skips over, so that it
/// never stops inside a nested block.
fn token_tree<'t, I>() -> impl Parser<'t, I, (), Ex<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    recursive(|tt| {
        let group = |o: &'static str, c: &'static str| {
            open(o)
                .ignore_then(tt.clone().repeated())
                .then_ignore(sym(c).or_not())
                .ignored()
        };
        choice((
            group("(", ")"),
            group("[", "]"),
            sym("{")
                .ignore_then(tt.clone().repeated())
                .then_ignore(sym("}").or_not())
                .ignored(),
            none_of([Token::Sym(")"), Token::Sym("]"), Token::Sym("}")]).ignored(),
        ))
    })
}

const STMT_START: &[&str] = &[
    "let", "var", "for", "while", "return", "param", "state", "break", "continue",
];
const ITEM_START: &[&str] = &[
    "fn", "layer", "net", "rule", "import", "record", "extern", "let", "var",
];

fn kws(list: &[&'static str]) -> Vec<Token> {
    list.iter().map(|k| Token::Kw(k)).collect()
}

/// The expression grammar and the block grammar, which need each other.
#[allow(clippy::type_complexity)]
fn grammar<'t, I>(
    file: FileId,
) -> (
    Boxed<'t, 't, I, Expr, Ex<'t>>,
    Boxed<'t, 't, I, Block, Ex<'t>>,
    Boxed<'t, 't, I, TypeExpr, Ex<'t>>,
)
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let mut expr = Recursive::declare();
    let mut block = Recursive::declare();
    let ty = type_parser(file);
    let id = ident(file);

    // ---- atoms ----
    let literal = select! {
        Token::Int(n) => ExprKind::Int(n),
        Token::Float(x) => ExprKind::Float(x),
        Token::Kw("true") => ExprKind::Bool(true),
        Token::Kw("false") => ExprKind::Bool(false),
    };
    let string = string_lit(file).map(ExprKind::Str);
    let items = expr
        .clone()
        .separated_by(sym(","))
        .allow_trailing()
        .collect::<Vec<Expr>>();
    let list = items
        .clone()
        .delimited_by(open("["), close("]"))
        .map(ExprKind::List);
    let record = id
        .clone()
        .filter(|i: &Ident| i.name.starts_with(|c: char| c.is_ascii_uppercase()))
        .then(
            id.clone()
                .then_ignore(sym(":"))
                .then(expr.clone())
                .separated_by(sym(","))
                .allow_trailing()
                .collect::<Vec<_>>()
                .delimited_by(sym("{"), sym("}")),
        )
        .map(|(name, fields)| ExprKind::Record { name, fields });
    let if_expr = recursive(|if_expr| {
        kw("if")
            .ignore_then(expr.clone())
            .then(block.clone())
            .then(
                kw("else")
                    .ignore_then(
                        if_expr
                            .map_with(move |k, e| Expr {
                                kind: k,
                                span: sp(file, e.span()),
                            })
                            .or(block.clone().map_with(move |b, e| Expr {
                                kind: ExprKind::Block(b),
                                span: sp(file, e.span()),
                            })),
                    )
                    .or_not(),
            )
            .map(
                |((cond, then), els): ((Expr, Block), Option<Expr>)| ExprKind::If {
                    cond: Box::new(cond),
                    then,
                    els: els.map(Box::new),
                },
            )
    });
    let group = expr
        .clone()
        .delimited_by(open("("), sym(")"))
        .map(|mut e: Expr| std::mem::replace(&mut e.kind, ExprKind::Error));
    let atom = choice((
        literal,
        string,
        record,
        id.clone().map(|i| ExprKind::Name(i.name)),
        list,
        if_expr,
        block.clone().map(ExprKind::Block),
        group,
    ))
    .map_with(move |kind, e| Expr {
        kind,
        span: sp(file, e.span()),
    })
    .recover_with(via_parser(nested_delimiters(
        Token::Sym("("),
        Token::Sym(")"),
        [
            (Token::Sym("["), Token::Sym("]")),
            (Token::Sym("{"), Token::Sym("}")),
        ],
        move |s| Expr::error(sp(file, s)),
    )))
    .labelled("expression")
    .boxed();

    // ---- postfix: calls, fields, indexing ----
    let arg = id
        .clone()
        .then_ignore(sym(":"))
        .then(expr.clone())
        .map(|(name, value)| Arg {
            name: Some(name),
            value,
        })
        .or(expr.clone().map(|value| Arg { name: None, value }));
    // `f(dy, w; stride, pad)` forwards attributes by name: `f(dy, w, stride: stride, pad: pad)`.
    let attr = ident(file)
        .then(sym(":").ignore_then(expr.clone()).or_not())
        .map(|(n, v): (Ident, Option<Expr>)| {
            let value = v.unwrap_or_else(|| Expr {
                kind: ExprKind::Name(n.name.clone()),
                span: n.span,
            });
            Arg {
                name: Some(n),
                value,
            }
        });
    let forwarded = sym(";")
        .ignore_then(
            attr.separated_by(sym(","))
                .allow_trailing()
                .collect::<Vec<_>>(),
        )
        .or_not()
        .map(Option::unwrap_or_default);
    let args = arg
        .separated_by(sym(","))
        .allow_trailing()
        .collect::<Vec<_>>()
        .then(forwarded)
        .map(|(mut a, f)| {
            a.extend(f);
            a
        })
        .delimited_by(sym("("), close_call())
        .recover_with(via_parser(nested_delimiters(
            Token::Sym("("),
            Token::Sym(")"),
            [
                (Token::Sym("["), Token::Sym("]")),
                (Token::Sym("{"), Token::Sym("}")),
            ],
            // One error argument, so the call is not also reported as missing arguments.
            move |s| {
                vec![Arg {
                    name: None,
                    value: Expr::error(sp(file, s)),
                }]
            },
        )));
    let index_item = expr
        .clone()
        .or_not()
        .then(sym(":").ignore_then(expr.clone().or_not()).or_not())
        .try_map(|(a, b), span| match (a, b) {
            (a, Some(b)) => Ok(IndexItem::Slice(a, b)),
            (Some(a), None) => Ok(IndexItem::At(a)),
            (None, None) => Err(Rich::custom(span, "expected an index or a slice")),
        });
    let index = index_item
        .separated_by(sym(","))
        .at_least(1)
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(sym("["), sym("]"));
    enum Post {
        Call(Vec<Arg>),
        Field(Ident),
        Index(Vec<IndexItem>),
    }
    let postfix = choice((
        args.map(Post::Call),
        sym(".").ignore_then(id.clone()).map(Post::Field),
        index.map(Post::Index),
    ));
    let call = atom.foldl_with(postfix.repeated(), move |base, post, e| {
        let span = sp(file, e.span());
        let kind = match post {
            Post::Call(args) => ExprKind::Call {
                callee: Box::new(base),
                args,
            },
            Post::Field(name) if name.name == "T" => ExprKind::Transpose(Box::new(base)),
            Post::Field(name) => ExprKind::Field {
                base: Box::new(base),
                name,
            },
            Post::Index(items) => ExprKind::Index {
                base: Box::new(base),
                items,
            },
        };
        Expr { kind, span }
    });

    // ---- operators, loosest last ----
    let unary = choice((sym("-").to(UnOp::Neg), sym("!").to(UnOp::Not)))
        .map_with(move |op, e| (op, sp(file, e.span())))
        .repeated()
        .foldr(call, |(op, span), rhs: Expr| {
            let span = span.to(rhs.span);
            Expr {
                kind: ExprKind::Unary(op, Box::new(rhs)),
                span,
            }
        })
        .boxed();
    let binary = |lower: Boxed<'t, 't, I, Expr, Ex<'t>>, ops: &'static [(&'static str, BinOp)]| {
        let op = choice(ops.iter().map(|(s, op)| sym(s).to(*op)).collect::<Vec<_>>());
        lower
            .clone()
            .foldl(
                op.then(lower).repeated(),
                |a: Expr, (op, b): (BinOp, Expr)| {
                    let span = a.span.to(b.span);
                    Expr {
                        kind: ExprKind::Binary(op, Box::new(a), Box::new(b)),
                        span,
                    }
                },
            )
            .boxed()
    };
    let product = binary(
        unary,
        &[
            ("*", BinOp::Mul),
            ("/", BinOp::Div),
            ("%", BinOp::Rem),
            ("@", BinOp::MatMul),
        ],
    );
    let sum = binary(product, &[("+", BinOp::Add), ("-", BinOp::Sub)]);
    let range = sum
        .clone()
        .then(sym("..").ignore_then(sum).or_not())
        .map(|(a, b)| match b {
            Some(b) => {
                let span = a.span.to(b.span);
                Expr {
                    kind: ExprKind::Range(Box::new(a), Box::new(b)),
                    span,
                }
            }
            None => a,
        })
        .boxed();
    let compare = binary(
        range,
        &[
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ],
    );
    let and = binary(compare, &[("&&", BinOp::And)]);
    let or = binary(and, &[("||", BinOp::Or)]);
    // `x |> conv1: conv(64, 3)`: a label names the layer's module.
    let step = label(file)
        .then_ignore(sym(":"))
        .or_not()
        .then(or.clone())
        .map(|(label, f): (Option<ModuleLabel>, Expr)| match label {
            Some(label) => {
                let span = label.span.to(f.span);
                Expr {
                    kind: ExprKind::Labelled(label, Box::new(f)),
                    span,
                }
            }
            None => f,
        });
    let pipe = or.clone().foldl(
        sym("|>").ignore_then(step).repeated(),
        |a: Expr, b: Expr| {
            let span = a.span.to(b.span);
            Expr {
                kind: ExprKind::Pipe(Box::new(a), Box::new(b)),
                span,
            }
        },
    );
    expr.define(pipe);

    // ---- statements and blocks ----
    let stmt = stmt_parser(
        file,
        expr.clone().boxed(),
        block.clone().boxed(),
        ty.clone(),
    );
    let stop: Vec<Token> = kws(STMT_START)
        .into_iter()
        .chain([Token::Sym(";")])
        .collect();
    let stray = one_of([Token::Sym(")"), Token::Sym("]")]).ignored();
    let stmt_recovery = token_tree()
        .or(stray)
        .then(none_of(stop).rewind().ignore_then(token_tree()).repeated())
        .map_with(move |_, e| Stmt {
            kind: StmtKind::Error,
            span: sp(file, e.span()),
        });
    let docs = select! { Token::Doc(_) => () }.repeated();
    block.define(
        docs.ignore_then(stmt.recover_with(via_parser(stmt_recovery)))
            .then_ignore(sym(";").repeated())
            .repeated()
            .collect::<Vec<_>>()
            .then(close("}"))
            .delimited_by(sym("{"), empty())
            .map_with(move |(mut stmts, closer), e| {
                // An unclosed block lost its end: mark it, so its value is not checked.
                if closer == Token::Error('}') {
                    stmts.push(Stmt {
                        kind: StmtKind::Error,
                        span: sp(file, e.span()),
                    });
                }
                Block {
                    stmts,
                    span: sp(file, e.span()),
                }
            }),
    );
    (expr.boxed(), block.boxed(), ty)
}

fn stmt_parser<'t, I>(
    file: FileId,
    expr: Boxed<'t, 't, I, Expr, Ex<'t>>,
    block: Boxed<'t, 't, I, Block, Ex<'t>>,
    ty: Boxed<'t, 't, I, TypeExpr, Ex<'t>>,
) -> Boxed<'t, 't, I, Stmt, Ex<'t>>
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let id = ident(file);
    let let_ = kw("let")
        .to(false)
        .or(kw("var").to(true))
        .then(id.clone())
        .then(sym(":").ignore_then(ty.clone()).or_not())
        .then_ignore(sym("="))
        .then(expr.clone())
        .map(|(((mutable, name), ty), value)| StmtKind::Let {
            name,
            ty,
            value,
            mutable,
        });
    let param = kw("param")
        .ignore_then(id.clone())
        .then_ignore(sym(":"))
        .then(ty.clone())
        .then(sym("=").ignore_then(expr.clone()).or_not())
        .then(kw("if").ignore_then(expr.clone()).or_not())
        .map(|(((name, ty), init), cond)| StmtKind::Param {
            name,
            ty,
            init,
            cond,
        });
    let state = kw("state")
        .ignore_then(id.clone())
        .then_ignore(sym(":"))
        .then(ty)
        .then(sym("=").ignore_then(expr.clone()).or_not())
        .map(|((name, ty), init)| StmtKind::State { name, ty, init });
    let for_ = kw("for")
        .ignore_then(id)
        .then_ignore(kw("in"))
        .then(expr.clone())
        .then(block.clone())
        .map(|((var, iter), body)| StmtKind::For { var, iter, body });
    let while_ = kw("while")
        .ignore_then(expr.clone())
        .then(block)
        .map(|(cond, body)| StmtKind::While { cond, body });
    let ret = kw("return")
        .ignore_then(expr.clone().or_not())
        .map(StmtKind::Return);
    let assign_op = choice((
        sym("=").to(None),
        sym("+=").to(Some(BinOp::Add)),
        sym("-=").to(Some(BinOp::Sub)),
        sym("*=").to(Some(BinOp::Mul)),
        sym("/=").to(Some(BinOp::Div)),
    ));
    let expr_or_assign = expr
        .clone()
        .then(assign_op.then(expr).or_not())
        .map(|(target, rest)| match rest {
            Some((op, value)) => StmtKind::Assign { target, op, value },
            None => StmtKind::Expr(target),
        });
    choice((
        let_,
        param,
        state,
        for_,
        while_,
        ret,
        kw("break").to(StmtKind::Break),
        kw("continue").to(StmtKind::Continue),
        expr_or_assign,
    ))
    .map_with(move |kind, e| Stmt {
        kind,
        span: sp(file, e.span()),
    })
    .labelled("statement")
    .boxed()
}

fn type_parser<'t, I>(file: FileId) -> Boxed<'t, 't, I, TypeExpr, Ex<'t>>
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let dim = recursive(|dim| {
        let atom = choice((
            select! { Token::Int(n) => DimKind::Int(n) },
            sym("...")
                .ignore_then(ident(file))
                .map(|i| DimKind::Pack(i.name)),
            ident(file).map(|i| DimKind::Name(i.name)),
            dim.delimited_by(open("("), sym(")"))
                .map(|mut d: DimExpr| std::mem::replace(&mut d.kind, DimKind::Error)),
        ))
        .map_with(move |kind, e| DimExpr {
            kind,
            span: sp(file, e.span()),
        })
        .labelled("dimension");
        let fold = |a: DimExpr, (op, b): (BinOp, DimExpr)| {
            let span = a.span.to(b.span);
            DimExpr {
                kind: DimKind::Bin(op, Box::new(a), Box::new(b)),
                span,
            }
        };
        let mul_op = choice((
            sym("*").to(BinOp::Mul),
            sym("/").to(BinOp::Div),
            sym("%").to(BinOp::Rem),
        ));
        let product = atom.clone().foldl(mul_op.then(atom).repeated(), fold);
        let add_op = choice((sym("+").to(BinOp::Add), sym("-").to(BinOp::Sub)));
        product.clone().foldl(add_op.then(product).repeated(), fold)
    });
    let dims = dim
        .separated_by(sym(","))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(sym("["), sym("]"))
        .recover_with(via_parser(nested_delimiters(
            Token::Sym("["),
            Token::Sym("]"),
            [(Token::Sym("("), Token::Sym(")"))],
            move |s| {
                vec![DimExpr {
                    kind: DimKind::Error,
                    span: sp(file, s),
                }]
            },
        )));
    recursive(|ty| {
        let named = ident(file)
            .then(dims.or_not())
            .map(|(name, dims)| match dims {
                Some(dims) => TypeKind::Tensor { dtype: name, dims },
                None => TypeKind::Named(name),
            });
        let list = ty
            .delimited_by(open("["), sym("]"))
            .map(|t| TypeKind::List(Box::new(t)));
        // `fn` as a type: a function value, such as a layer's activation argument.
        let func = kw("fn")
            .to("fn")
            .or(kw("net").to("net"))
            .map_with(move |k: &str, e| {
                TypeKind::Named(Ident {
                    name: k.into(),
                    span: sp(file, e.span()),
                })
            });
        choice((named, list, func))
            .map_with(move |kind, e| TypeExpr {
                kind,
                span: sp(file, e.span()),
            })
            .labelled("type")
    })
    .boxed()
}

fn module_parser<'t, I>(file: FileId) -> impl Parser<'t, I, Module, Ex<'t>>
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let (expr, block, ty) = grammar::<I>(file);
    let id = ident(file);
    let param = id
        .clone()
        .then(sym(":").ignore_then(ty.clone()).or_not())
        .then(sym("=").ignore_then(expr.clone()).or_not())
        .map_with(move |((name, ty), default), e| Param {
            name,
            ty,
            default,
            span: sp(file, e.span()),
        });
    let params = param
        .clone()
        .separated_by(sym(","))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(open("("), sym(")"));
    let ret = sym("->").ignore_then(ty.clone()).or_not();

    let import = kw("import")
        .ignore_then(
            id.clone()
                .separated_by(sym("."))
                .at_least(1)
                .collect::<Vec<_>>(),
        )
        .then(sym(".").then(sym("*")).or_not())
        .map(|(path, glob)| {
            ItemKind::Import(Import {
                path,
                glob: glob.is_some(),
            })
        });
    let where_ = kw("where")
        .ignore_then(
            expr.clone()
                .separated_by(sym(","))
                .at_least(1)
                .collect::<Vec<_>>(),
        )
        .or_not()
        .map(Option::unwrap_or_default);
    let func = kw("extern")
        .or_not()
        .then_ignore(kw("fn"))
        .then(id.clone())
        .then(params.clone())
        .then(ret.clone())
        .then(where_.clone())
        .then(block.clone().map_with(|b, e| (b, e.span())).or_not())
        .validate(
            move |(((((ext, name), params), ret), wheres), body), e, emitter| {
                match (ext.is_some(), &body) {
                    (true, Some((_, span))) => emitter.emit(Rich::custom(
                        *span,
                        "an `extern fn` is provided by the runtime and has no body",
                    )),
                    (false, None) => emitter.emit(Rich::custom(
                        e.span(),
                        format!("expected a body `{{ ... }}` for fn `{}`", name.name),
                    )),
                    _ => {}
                }
                // A missing body becomes an error statement, so the fn is not also reported as
                // returning nothing.
                let missing = move || Block {
                    stmts: vec![Stmt {
                        kind: StmtKind::Error,
                        span: sp(file, e.span()),
                    }],
                    span: sp(file, e.span()),
                };
                let body = if ext.is_some() {
                    None
                } else {
                    Some(body.map(|b| b.0).unwrap_or_else(missing))
                };
                ItemKind::Fn(FnDecl {
                    name,
                    params,
                    ret,
                    wheres,
                    body,
                })
            },
        );
    let extern_type = kw("extern")
        .ignore_then(kw("type"))
        .ignore_then(id.clone())
        .map(ItemKind::ExternType);
    let layer = kw("layer")
        .ignore_then(id.clone())
        .then(params.clone())
        .then(param.clone().delimited_by(open("("), sym(")")))
        .then(ret.clone())
        .then(where_)
        .then(block.clone())
        .map(|(((((name, args), input), ret), wheres), body)| {
            ItemKind::Layer(LayerDecl {
                name,
                args,
                input,
                ret,
                wheres,
                body,
            })
        });

    let stage = recursive(|stage| {
        let stages = stage
            .then_ignore(sym(";").repeated())
            .repeated()
            .collect::<Vec<Stage>>()
            .delimited_by(sym("{"), sym("}"));
        let as_ = select! { Token::Ident(w) if w == "as" => () };
        let repeat = kw("repeat")
            .ignore_then(expr.clone())
            .then(as_.ignore_then(id.clone()).or_not())
            .then(stages.clone())
            .map(|((count, index), body)| StageKind::Repeat { count, index, body });
        let group = stages.map(StageKind::Group);
        label(file)
            .then_ignore(sym(":"))
            .or_not()
            .then(choice((repeat, group, expr.clone().map(StageKind::Apply))))
            .map_with(move |(label, kind), e| Stage {
                kind,
                label,
                span: sp(file, e.span()),
            })
            .labelled("net stage")
    });
    let stage_recovery = token_tree()
        .or(one_of([Token::Sym(")"), Token::Sym("]")]).ignored())
        .map_with(move |_, e| Stage {
            kind: StageKind::Error,
            label: None,
            span: sp(file, e.span()),
        });
    let net = kw("net")
        .ignore_then(id.clone())
        .then_ignore(sym(":"))
        .then(ty.clone())
        .then_ignore(sym("->"))
        .then(ty.clone())
        .then(
            stage
                .recover_with(via_parser(stage_recovery))
                .then_ignore(sym(";").repeated())
                .repeated()
                .collect::<Vec<_>>()
                .delimited_by(sym("{"), close("}")),
        )
        .map(|(((name, input), output), stages)| {
            ItemKind::Net(NetDecl {
                name,
                input,
                output,
                stages,
            })
        });

    let rule = kw("rule")
        .ignore_then(id.clone())
        .then(
            id.clone()
                .separated_by(sym(","))
                .allow_trailing()
                .collect::<Vec<_>>()
                .then(
                    sym(";")
                        .ignore_then(
                            id.clone()
                                .separated_by(sym(","))
                                .allow_trailing()
                                .collect::<Vec<_>>(),
                        )
                        .or_not(),
                )
                .delimited_by(open("("), sym(")")),
        )
        .then(sym("->").ignore_then(id.clone()).or_not())
        .then(block.clone())
        .map(|(((name, (inputs, attrs)), output), body)| {
            ItemKind::Rule(RuleDecl {
                name,
                inputs,
                attrs: attrs.unwrap_or_default(),
                output,
                body,
            })
        });
    let record = kw("record")
        .ignore_then(id.clone())
        .then(
            select! { Token::Doc(_) => () }
                .repeated()
                .ignore_then(param)
                .separated_by(sym(",").or_not())
                .allow_trailing()
                .collect::<Vec<_>>()
                .delimited_by(sym("{"), sym("}")),
        )
        .map(|(name, fields)| ItemKind::Record(RecordDecl { name, fields }));
    let stmt = stmt_parser(file, expr, block, ty).map(ItemKind::Stmt);

    let docs = select! { Token::Doc(s) => s }
        .repeated()
        .collect::<Vec<String>>();
    let item = docs
        .then(choice((
            import,
            extern_type,
            func,
            layer,
            net,
            rule,
            record,
            stmt,
        )))
        .map_with(move |(docs, kind), e| Item {
            kind,
            doc: if docs.is_empty() {
                None
            } else {
                Some(docs.join("\n"))
            },
            span: sp(file, e.span()),
        });
    let item_stop: Vec<Token> = kws(ITEM_START);
    let item_recovery = any()
        .then(
            none_of(item_stop)
                .and_is(select! { Token::Doc(_) => () }.not())
                .rewind()
                .ignore_then(
                    token_tree()
                        .or(one_of([Token::Sym(")"), Token::Sym("]"), Token::Sym("}")]).ignored()),
                )
                .repeated(),
        )
        .map_with(move |_, e| Item {
            kind: ItemKind::Error,
            doc: None,
            span: sp(file, e.span()),
        });
    item.recover_with(via_parser(item_recovery))
        .then_ignore(sym(";").repeated())
        .repeated()
        .collect::<Vec<_>>()
        .then_ignore(end())
        .map(|items| Module { items })
}

/// Splits a string literal's raw text into literal parts and `{expr:fmt}` interpolations.
/// `offset` is the byte offset of the text in its file.
fn interpolate(raw: &str, file: FileId, offset: usize) -> (Vec<StrPart>, Vec<Diagnostic>) {
    let mut parts = Vec::new();
    let mut diags = Vec::new();
    let mut lit = String::new();
    let mut chars = raw.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next().map(|x| x.1) {
                Some('n') => lit.push('\n'),
                Some('t') => lit.push('\t'),
                Some(other) => lit.push(other),
                None => {}
            },
            '{' if chars.peek().map(|x| x.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|x| x.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let end = matching_brace(raw, i).unwrap_or(raw.len());
                let inner = &raw[i + 1..end];
                let (code, fmt) = split_format(inner);
                let (e, errs) =
                    super::depth::nested_interpolation(|| parse_expr(code, file, offset + i + 1))
                        .unwrap_or_else(|| {
                            let span = Span::new(file, offset + i + 1, offset + i + 1 + code.len());
                            (
                                Expr::error(span),
                                vec![super::depth::interpolation_too_deep(span)],
                            )
                        });
                diags.extend(errs);
                if !lit.is_empty() {
                    parts.push(StrPart::Lit(std::mem::take(&mut lit)));
                }
                parts.push(StrPart::Interp(e, fmt.map(str::to_string)));
                while chars.peek().is_some_and(|(j, _)| *j <= end) {
                    chars.next();
                }
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() || parts.is_empty() {
        parts.push(StrPart::Lit(lit));
    }
    (parts, diags)
}

fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut in_str = false;
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '"' => in_str = !in_str,
            '{' if !in_str => depth += 1,
            '}' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `x:.2%` → (`x`, `.2%`): the first colon outside brackets and strings starts the format.
fn split_format(s: &str) -> (&str, Option<&str>) {
    let mut depth = 0i32;
    let mut in_str = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '(' | '[' | '{' if !in_str => depth += 1,
            ')' | ']' | '}' if !in_str => depth -= 1,
            ':' if !in_str && depth == 0 => return (&s[..i], Some(&s[i + 1..])),
            _ => {}
        }
    }
    (s, None)
}
