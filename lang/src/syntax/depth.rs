//! How deep a syntax tree may be, and dropping deep trees without deep recursion.
//!
//! Every later stage (names, the checker, lowering, the host compiler, the editor's
//! queries) walks the tree recursively, one stack frame or a few per level. So that no
//! input can exhaust the stack, [`limit_depth`] measures each item's nesting after parsing,
//! without recursing; a node more than [`MAX_DEPTH`] levels deep becomes an error node
//! (which later stages accept without reporting anything more), with diagnostic E0003 at
//! the first one. Chains count: `a +
//! b + c` is two levels of `+`, so a sum of thousands of terms is as deep as thousands of
//! parentheses. The limit is far above what people write (the standard library and the
//! examples stay under 20) and low enough that every stage runs it in well under a
//! megabyte of stack (tested at the limit, in debug builds, on 2 MiB test threads).
//!
//! The parser itself builds chains with folds and guards its own recursion (chumsky grows
//! its stack on the heap), so a tree deeper than the limit does exist for a moment. Its
//! nodes ([`Expr`], [`Stage`], [`TypeExpr`], [`DimExpr`]) drop through [`drop_deep`],
//! which hands children past [`DROP_DEPTH`] levels to a queue that the outermost drop
//! empties: dropping a tree of any depth takes a bounded stack.

use std::any::Any;
use std::cell::{Cell, RefCell};

use super::ast::*;
use crate::diag::{Diagnostic, Label};
use crate::span::Span;

/// The deepest nesting an item may have: expressions, statements, blocks, stages, types
/// and dims each count one level.
pub const MAX_DEPTH: usize = 256;

/// How many levels of a tree drop recursively before the rest is queued.
const DROP_DEPTH: u32 = 64;

thread_local! {
    static DROPPING: Cell<u32> = const { Cell::new(0) };
    static QUEUE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Drops `value` (a node's contents) recursively up to [`DROP_DEPTH`] levels below the
/// outermost drop in progress, and queues it beyond; the outermost drop then empties the
/// queue one node at a time.
pub(crate) fn drop_deep<T: 'static>(value: T) {
    let depth = DROPPING.with(Cell::get);
    if depth >= DROP_DEPTH {
        // `try_with`: during thread teardown the queue may be gone; then drop in place.
        let mut value = Some(value);
        let _ = QUEUE.try_with(|q| {
            if let (Ok(mut q), Some(v)) = (q.try_borrow_mut(), value.take()) {
                q.push(Box::new(v));
            }
        });
        drop(value);
        return;
    }
    DROPPING.with(|d| d.set(depth + 1));
    drop(value);
    if depth == 0 {
        while let Some(next) = QUEUE
            .try_with(|q| q.try_borrow_mut().ok().and_then(|mut q| q.pop()))
            .ok()
            .flatten()
        {
            drop(next);
        }
    }
    DROPPING.with(|d| d.set(depth));
}

impl Drop for Expr {
    fn drop(&mut self) {
        if !matches!(
            self.kind,
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Error
        ) {
            drop_deep(std::mem::replace(&mut self.kind, ExprKind::Error));
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        drop_deep(std::mem::replace(&mut self.kind, StageKind::Error));
    }
}

impl Drop for TypeExpr {
    fn drop(&mut self) {
        if let TypeKind::List(_) | TypeKind::Tensor { .. } = self.kind {
            drop_deep(std::mem::replace(&mut self.kind, TypeKind::Error));
        }
    }
}

impl Drop for DimExpr {
    fn drop(&mut self) {
        if let DimKind::Bin(..) = self.kind {
            drop_deep(std::mem::replace(&mut self.kind, DimKind::Error));
        }
    }
}

/// A node of any kind, for the depth walk.
enum Node<'a> {
    Expr(&'a mut Expr),
    Stmt(&'a mut Stmt),
    Block(&'a mut Block),
    Stage(&'a mut Stage),
    Type(&'a mut TypeExpr),
    Dim(&'a mut DimExpr),
    Param(&'a mut Param),
}

impl<'a> Node<'a> {
    /// Makes the node an error node (dropping what it held) and returns its span.
    fn cut(self) -> Span {
        match self {
            Node::Expr(e) => {
                drop_deep(std::mem::replace(&mut e.kind, ExprKind::Error));
                e.span
            }
            Node::Stmt(s) => {
                drop_deep(std::mem::replace(&mut s.kind, StmtKind::Error));
                s.span
            }
            Node::Block(b) => {
                drop_deep(std::mem::take(&mut b.stmts));
                b.span
            }
            Node::Stage(s) => {
                drop_deep(std::mem::replace(&mut s.kind, StageKind::Error));
                s.span
            }
            Node::Type(t) => {
                drop_deep(std::mem::replace(&mut t.kind, TypeKind::Error));
                t.span
            }
            Node::Dim(d) => {
                drop_deep(std::mem::replace(&mut d.kind, DimKind::Error));
                d.span
            }
            Node::Param(p) => {
                drop_deep((p.ty.take(), p.default.take()));
                p.span
            }
        }
    }

    /// Pushes the node's children onto `out`.
    fn children(self, out: &mut Vec<Node<'a>>) {
        match self {
            Node::Expr(e) => expr_children(e, out),
            Node::Stmt(s) => match &mut s.kind {
                StmtKind::Let { ty, value, .. } => {
                    out.extend(ty.as_mut().map(Node::Type));
                    out.push(Node::Expr(value));
                }
                StmtKind::Assign { target, value, .. } => {
                    out.push(Node::Expr(target));
                    out.push(Node::Expr(value));
                }
                StmtKind::Param { ty, init, cond, .. } => {
                    out.push(Node::Type(ty));
                    out.extend(init.iter_mut().chain(cond).map(Node::Expr));
                }
                StmtKind::State { ty, init, .. } => {
                    out.push(Node::Type(ty));
                    out.extend(init.iter_mut().map(Node::Expr));
                }
                StmtKind::For { iter, body, .. } => {
                    out.push(Node::Expr(iter));
                    out.push(Node::Block(body));
                }
                StmtKind::While { cond, body } => {
                    out.push(Node::Expr(cond));
                    out.push(Node::Block(body));
                }
                StmtKind::Return(e) => out.extend(e.iter_mut().map(Node::Expr)),
                StmtKind::Expr(e) => out.push(Node::Expr(e)),
                StmtKind::Break | StmtKind::Continue | StmtKind::Error => {}
            },
            Node::Block(b) => out.extend(b.stmts.iter_mut().map(Node::Stmt)),
            Node::Stage(s) => {
                if let Some(label) = &mut s.label {
                    out.extend(interpolated(&mut label.parts));
                }
                match &mut s.kind {
                    StageKind::Apply(e) => out.push(Node::Expr(e)),
                    StageKind::Repeat { count, body, .. } => {
                        out.push(Node::Expr(count));
                        out.extend(body.iter_mut().map(Node::Stage));
                    }
                    StageKind::Group(body) => out.extend(body.iter_mut().map(Node::Stage)),
                    StageKind::Error => {}
                }
            }
            Node::Type(t) => match &mut t.kind {
                TypeKind::Tensor { dims, .. } => out.extend(dims.iter_mut().map(Node::Dim)),
                TypeKind::List(inner) => out.push(Node::Type(inner)),
                TypeKind::Named(_) | TypeKind::Error => {}
            },
            Node::Dim(d) => {
                if let DimKind::Bin(_, a, b) = &mut d.kind {
                    out.push(Node::Dim(a));
                    out.push(Node::Dim(b));
                }
            }
            Node::Param(p) => {
                out.extend(p.ty.as_mut().map(Node::Type));
                out.extend(p.default.as_mut().map(Node::Expr));
            }
        }
    }
}

fn expr_children<'a>(e: &'a mut Expr, out: &mut Vec<Node<'a>>) {
    match &mut e.kind {
        ExprKind::Int(_)
        | ExprKind::Float(_)
        | ExprKind::Bool(_)
        | ExprKind::Name(_)
        | ExprKind::Error => {}
        ExprKind::Str(parts) => out.extend(interpolated(parts)),
        ExprKind::Labelled(label, x) => {
            out.extend(interpolated(&mut label.parts));
            out.push(Node::Expr(x));
        }
        ExprKind::Call { callee, args } => {
            out.push(Node::Expr(callee));
            out.extend(args.iter_mut().map(|a| Node::Expr(&mut a.value)));
        }
        ExprKind::Field { base, .. } | ExprKind::Transpose(base) | ExprKind::Unary(_, base) => {
            out.push(Node::Expr(base))
        }
        ExprKind::Index { base, items } => {
            out.push(Node::Expr(base));
            for i in items {
                match i {
                    IndexItem::At(x) => out.push(Node::Expr(x)),
                    IndexItem::Slice(a, b) => out.extend(a.iter_mut().chain(b).map(Node::Expr)),
                }
            }
        }
        ExprKind::Binary(_, a, b) | ExprKind::Pipe(a, b) | ExprKind::Range(a, b) => {
            out.push(Node::Expr(a));
            out.push(Node::Expr(b));
        }
        ExprKind::If { cond, then, els } => {
            out.push(Node::Expr(cond));
            out.push(Node::Block(then));
            out.extend(els.as_deref_mut().map(Node::Expr));
        }
        ExprKind::Block(b) => out.push(Node::Block(b)),
        ExprKind::Record { fields, .. } => {
            out.extend(fields.iter_mut().map(|(_, x)| Node::Expr(x)))
        }
        ExprKind::List(xs) => out.extend(xs.iter_mut().map(Node::Expr)),
    }
}

/// The expressions inside a string's (or a label's) `{...}` parts.
fn interpolated(parts: &mut [StrPart]) -> impl Iterator<Item = Node<'_>> {
    parts.iter_mut().filter_map(|p| match p {
        StrPart::Interp(x, _) => Some(Node::Expr(x)),
        StrPart::Lit(_) => None,
    })
}

/// The roots of an item's tree.
fn item_roots<'a>(item: &'a mut Item, out: &mut Vec<Node<'a>>) {
    match &mut item.kind {
        ItemKind::Fn(f) => {
            out.extend(f.params.iter_mut().map(Node::Param));
            out.extend(f.ret.as_mut().map(Node::Type));
            out.extend(f.wheres.iter_mut().map(Node::Expr));
            out.extend(f.body.as_mut().map(Node::Block));
        }
        ItemKind::Layer(l) => {
            out.extend(l.args.iter_mut().map(Node::Param));
            out.push(Node::Param(&mut l.input));
            out.extend(l.ret.as_mut().map(Node::Type));
            out.extend(l.wheres.iter_mut().map(Node::Expr));
            out.push(Node::Block(&mut l.body));
        }
        ItemKind::Net(n) => {
            out.push(Node::Type(&mut n.input));
            out.push(Node::Type(&mut n.output));
            out.extend(n.stages.iter_mut().map(Node::Stage));
        }
        ItemKind::Rule(r) => out.push(Node::Block(&mut r.body)),
        ItemKind::Record(r) => out.extend(r.fields.iter_mut().map(Node::Param)),
        ItemKind::Stmt(s) => out.push(Node::Stmt(s)),
        ItemKind::Import(_) | ItemKind::ExternType(_) | ItemKind::Error => {}
    }
}

/// Cuts every node deeper than [`MAX_DEPTH`] below `roots` (level 1) into an error node,
/// without recursion; the span of the first one cut.
fn cut_past_limit(roots: Vec<Node>) -> Option<Span> {
    let mut stack: Vec<(Node, usize)> = roots.into_iter().map(|n| (n, 1)).collect();
    let mut kids = Vec::new();
    let mut first = None;
    while let Some((node, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            let span = node.cut();
            first.get_or_insert(span);
            continue;
        }
        node.children(&mut kids);
        stack.extend(kids.drain(..).map(|k| (k, depth + 1)));
    }
    first
}

/// Cuts the nodes of an expression parsed on its own (the REPL's, an interpolation's)
/// deeper than [`MAX_DEPTH`]; the span of the first one cut.
pub fn limit_expr_depth(e: &mut Expr) -> Option<Span> {
    cut_past_limit(vec![Node::Expr(e)])
}

/// How many string interpolations may nest (`"{f("{x}")}"`): each level parses its code
/// anew, so the nesting is bounded before the tree exists.
pub const MAX_INTERPOLATION_DEPTH: u32 = 16;

thread_local! {
    static INTERPOLATING: Cell<u32> = const { Cell::new(0) };
}

/// Runs `parse` (an interpolation's parse) one interpolation level deeper; `None` past
/// [`MAX_INTERPOLATION_DEPTH`].
pub(crate) fn nested_interpolation<R>(parse: impl FnOnce() -> R) -> Option<R> {
    let depth = INTERPOLATING.with(Cell::get);
    if depth >= MAX_INTERPOLATION_DEPTH {
        return None;
    }
    INTERPOLATING.with(|d| d.set(depth + 1));
    let out = parse();
    INTERPOLATING.with(|d| d.set(depth));
    Some(out)
}

/// Cuts every node nested deeper than [`MAX_DEPTH`] into an error node (which later
/// stages accept without further errors) and reports E0003, once per item, at the first.
pub fn limit_depth(module: &mut Module, diags: &mut Vec<Diagnostic>) {
    for item in &mut module.items {
        let mut roots = Vec::new();
        item_roots(item, &mut roots);
        if let Some(span) = cut_past_limit(roots) {
            diags.push(nested_too_deeply(span));
        }
    }
}

/// Diagnostic E0003 for string interpolations nested too deeply, at `span`.
pub fn interpolation_too_deep(span: Span) -> Diagnostic {
    Diagnostic::error(
        "E0003",
        format!("string interpolations nest more than {MAX_INTERPOLATION_DEPTH} deep here"),
    )
    .with_label(Label::primary(span, "too deep"))
    .with_help("build the inner strings with `let` bindings first")
}

/// Diagnostic E0003 at `span`.
pub fn nested_too_deeply(span: Span) -> Diagnostic {
    Diagnostic::error(
        "E0003",
        format!("this is nested more than {MAX_DEPTH} levels deep"),
    )
    .with_label(Label::primary(span, "too deep"))
    .with_help(
        "each operator of a chain (`a + b + c`), bracket, call, block or `else if` is one level; split the expression with `let` bindings or a loop",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::FileId;
    use crate::syntax::parse_module;

    #[test]
    fn deep_trees_are_cut_and_dropped_without_deep_recursion() {
        // A chain far deeper than the limit: measured, reported, and dropped on this
        // test thread's stack (2 MiB) without overflowing it.
        let src = format!("let x = {}\n", vec!["1"; 200_000].join(" + "));
        let (m, diags) = parse_module(&src, FileId(0));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].code, "E0003");
        let ItemKind::Stmt(s) = &m.items[0].kind else {
            panic!("the statement stays")
        };
        assert!(matches!(s.kind, StmtKind::Let { .. }));
        // At the limit it is kept.
        let ok = format!("let x = {}\n", vec!["1"; MAX_DEPTH - 2].join(" + "));
        let (m, diags) = parse_module(&ok, FileId(0));
        assert!(diags.is_empty(), "{diags:?}");
        assert!(matches!(m.items[0].kind, ItemKind::Stmt(_)));
    }
}
