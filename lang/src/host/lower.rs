//! From checked host code to the typed tree of [`super`]: resolves names to slots,
//! functions and builtins, places named and default arguments, promotes ints to floats
//! where floats are wanted, and gives every expression its type.
//!
//! It runs only on programs that checked without errors, so it trusts the checker's
//! verdict on types; what it reports (E06xx) are constructs the host compiler does not run
//! yet, each at its span.

use std::collections::HashMap;

use super::*;
use crate::check::{DefKind, Program};
use crate::diag::Diagnostic;
use crate::syntax::ast::{
    self, Block, Expr, ExprKind, ItemKind, Param, StmtKind, StrPart, TypeExpr, TypeKind,
};

/// Lowers the host code of the program: the top-level statements of module `root` become
/// `main`, and every host function they reach is lowered once.
pub fn lower_program(p: &Program, root: usize) -> Result<HostProgram, Vec<Diagnostic>> {
    lower_session(p, root, 0, &[], false).map(|(prog, _)| prog)
}

/// Lowers one input of a REPL session whose text is module `root`: its first `done`
/// top-level statements ran in earlier inputs and are not run again; their bindings are
/// read from the session's globals (`globals`: names by index). The input's own statements
/// run; every top-level binding is stored back (see [`HostProgram::globals`]). When the
/// input ends with an expression of a type other than `()`, its value is shown (the
/// second result says so).
pub fn lower_session(
    p: &Program,
    root: usize,
    done: usize,
    globals: &[String],
    repl: bool,
) -> Result<(HostProgram, bool), Vec<Diagnostic>> {
    let mut l = Lowerer {
        p,
        prog: HostProgram::default(),
        fn_ids: HashMap::new(),
        diags: vec![],
    };
    let stmts: Vec<&ast::Stmt> = p.modules[root]
        .ast
        .items
        .iter()
        .filter_map(|i| match &i.kind {
            ItemKind::Stmt(s) => Some(s),
            _ => None,
        })
        .collect();
    let span = stmts.first().map(|s| s.span).unwrap_or_default();
    let mut cx = FnCx::new(root, HTy::Unit);
    let mut names: Vec<String> = globals.to_vec();
    let mut items = Vec::new();
    let mut shown = false;
    for (k, s) in stmts.iter().enumerate() {
        if k < done {
            // Already run: only its binding's type matters; the value is the global's.
            if let StmtKind::Let { name, .. } = &s.kind {
                let HExpr {
                    kind: HKind::Set(slot, value),
                    ..
                } = l.stmt(&mut cx, s)
                else {
                    continue;
                };
                let g = names
                    .iter()
                    .position(|n| *n == name.name)
                    .unwrap_or_else(|| {
                        names.push(name.name.clone());
                        names.len() - 1
                    });
                let load = HExpr::new(HKind::Global(g), value.ty.clone(), s.span);
                items.push(HExpr::new(
                    HKind::Set(slot, Box::new(load)),
                    HTy::Unit,
                    s.span,
                ));
            }
            continue;
        }
        let mut e = l.stmt(&mut cx, s);
        if repl && k + 1 == stmts.len() {
            if matches!(s.kind, StmtKind::Expr(_)) && !matches!(e.ty, HTy::Unit) {
                let span = e.span;
                e = HExpr::new(
                    HKind::Format(vec![Piece::Value(e, FormatSpec::default())]),
                    HTy::Str,
                    span,
                );
                e = l.builtin_call("__echo", vec![HTy::Str], HTy::Unit, vec![e], span);
                shown = true;
            }
        }
        items.push(e);
    }
    // Store every top-level binding for the next input.
    if let Some(top) = cx.scopes.first().cloned().filter(|_| repl) {
        let mut bound: Vec<(String, LocalId)> = top.into_iter().collect();
        bound.sort_by_key(|(_, slot)| *slot);
        for (name, slot) in bound {
            let g = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                names.push(name.clone());
                names.len() - 1
            });
            let ty = cx.locals[slot].clone();
            let v = HExpr::new(HKind::Local(slot), ty, span);
            items.push(HExpr::new(
                HKind::SetGlobal(g, Box::new(v)),
                HTy::Unit,
                span,
            ));
        }
    }
    l.prog.globals = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                cx.get(n).map(|s| cx.locals[s].clone()).unwrap_or(HTy::Unit),
            )
        })
        .collect();
    let body = HExpr::new(HKind::Block(items), HTy::Unit, span);
    l.prog.funcs.push(HFunc {
        name: "main".into(),
        params: 0,
        locals: cx.locals,
        ret: HTy::Unit,
        body,
        span,
    });
    l.prog.main = l.prog.funcs.len() - 1;
    if l.diags.is_empty() {
        Ok((l.prog, shown))
    } else {
        Err(l.diags)
    }
}

/// The primitives host code may apply to numbers (as `f64` math).
const MATH: &[&str] = &[
    "exp", "log", "sqrt", "sin", "cos", "tanh", "abs", "pow", "maximum", "minimum",
];

struct Lowerer<'p> {
    p: &'p Program,
    prog: HostProgram,
    /// Host functions already given an id (their bodies may still be being lowered).
    fn_ids: HashMap<ItemId, FuncId>,
    diags: Vec<Diagnostic>,
}

/// One function being lowered: its module, slots and scopes.
struct FnCx {
    module: usize,
    locals: Vec<HTy>,
    scopes: Vec<HashMap<String, LocalId>>,
    ret: HTy,
}

impl FnCx {
    fn new(module: usize, ret: HTy) -> FnCx {
        FnCx {
            module,
            locals: vec![],
            scopes: vec![HashMap::new()],
            ret,
        }
    }
    fn slot(&mut self, ty: HTy) -> LocalId {
        self.locals.push(ty);
        self.locals.len() - 1
    }
    fn bind(&mut self, name: &str, ty: HTy) -> LocalId {
        let id = self.slot(ty);
        if let Some(s) = self.scopes.last_mut() {
            s.insert(name.to_string(), id);
        }
        id
    }
    fn get(&self, name: &str) -> Option<LocalId> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }
}

fn unit(span: crate::span::Span) -> HExpr {
    HExpr::new(HKind::Unit, HTy::Unit, span)
}

impl Lowerer<'_> {
    fn unsupported(&mut self, span: crate::span::Span, what: impl Into<String>) -> HExpr {
        self.diags.push(
            Diagnostic::error("E0601", format!("{} is not supported in host code yet", what.into()))
                .primary(span, "the host compiler cannot run this")
                .with_help("host code runs ints, floats, bools, strings, records, lists and calls; tensor code belongs in a `fn`, `layer` or `net`"),
        );
        HExpr::new(HKind::Unit, HTy::Unit, span)
    }

    fn site(&mut self, span: crate::span::Span) -> SiteId {
        self.prog.sites.push(span);
        self.prog.sites.len() - 1
    }

    // ------------------------------------------------------------------ types

    fn ty(&mut self, module: usize, t: &TypeExpr) -> Option<HTy> {
        match &t.kind {
            TypeKind::Named(n) => Some(match n.name.as_str() {
                "int" => HTy::Int,
                "float" => HTy::Float,
                "bool" => HTy::Bool,
                "str" | "any" => HTy::Str,
                "net" => HTy::Net,
                other => match self
                    .p
                    .lookup(module, other)
                    .map(|id| (id, self.p.items[id].kind))
                {
                    Some((id, DefKind::Record)) => {
                        self.layout(id);
                        HTy::Record(id)
                    }
                    Some((id, DefKind::ExternType)) => HTy::Opaque(id),
                    _ => return None,
                },
            }),
            TypeKind::List(inner) => Some(HTy::List(Box::new(self.ty(module, inner)?))),
            TypeKind::Tensor { .. } | TypeKind::Error => None,
        }
    }

    /// Registers a record's layout (once) and returns its fields.
    fn layout(&mut self, id: ItemId) -> Vec<Param> {
        let Some(ast::Item {
            kind: ItemKind::Record(r),
            ..
        }) = self.p.item_ast(id)
        else {
            return vec![];
        };
        if !self.prog.records.contains_key(&id) {
            // Insert first: a record may mention itself through a list.
            self.prog.records.insert(
                id,
                RecordLayout {
                    name: r.name.name.clone(),
                    fields: vec![],
                },
            );
            let module = self.p.items[id].module;
            let fields: Vec<(String, HTy)> = r
                .fields
                .iter()
                .map(|f| {
                    (
                        f.name.name.clone(),
                        f.ty.as_ref()
                            .and_then(|t| self.ty(module, t))
                            .unwrap_or(HTy::Unit),
                    )
                })
                .collect();
            if let Some(l) = self.prog.records.get_mut(&id) {
                l.fields = fields;
            }
        }
        r.fields.clone()
    }

    /// `e` as a value of type `want`: ints become floats, anything becomes a string where
    /// a string is wanted from `any`.
    fn coerce(&mut self, e: HExpr, want: &HTy) -> HExpr {
        match (&e.ty, want) {
            (HTy::Int, HTy::Float) => {
                let span = e.span;
                HExpr::new(HKind::IntToFloat(Box::new(e)), HTy::Float, span)
            }
            (t, HTy::Str) if *t != HTy::Str => {
                let span = e.span;
                HExpr::new(
                    HKind::Format(vec![Piece::Value(e, FormatSpec::default())]),
                    HTy::Str,
                    span,
                )
            }
            (HTy::List(a), HTy::List(b)) if a != b => {
                if let HKind::List(items) = e.kind {
                    let span = e.span;
                    let items = items.into_iter().map(|i| self.coerce(i, b)).collect();
                    HExpr::new(HKind::List(items), want.clone(), span)
                } else {
                    e
                }
            }
            _ => e,
        }
    }

    // ------------------------------------------------------------------ statements

    fn block(&mut self, cx: &mut FnCx, b: &Block) -> HExpr {
        cx.scopes.push(HashMap::new());
        let items: Vec<HExpr> = b.stmts.iter().map(|s| self.stmt(cx, s)).collect();
        cx.scopes.pop();
        let ty = match b.stmts.last().map(|s| &s.kind) {
            Some(StmtKind::Expr(_)) => items.last().map(|e| e.ty.clone()).unwrap_or(HTy::Unit),
            _ => HTy::Unit,
        };
        HExpr::new(HKind::Block(items), ty, b.span)
    }

    fn stmt(&mut self, cx: &mut FnCx, s: &ast::Stmt) -> HExpr {
        let span = s.span;
        match &s.kind {
            StmtKind::Let {
                name, ty, value, ..
            } => {
                let mut v = self.expr(cx, value);
                let t = match ty.as_ref().map(|t| self.ty(cx.module, t)) {
                    Some(Some(t)) => {
                        v = self.coerce(v, &t);
                        t
                    }
                    Some(None) => return self.unsupported(span, "a tensor-typed binding"),
                    None => v.ty.clone(),
                };
                let slot = cx.bind(&name.name, t);
                HExpr::new(HKind::Set(slot, Box::new(v)), HTy::Unit, span)
            }
            StmtKind::Assign { target, op, value } => {
                let ExprKind::Name(n) = &target.kind else {
                    return self.unsupported(target.span, "assigning to a field or element");
                };
                let Some(slot) = cx.get(n) else {
                    return self.unsupported(target.span, format!("assigning to `{n}`"));
                };
                let t = cx.locals[slot].clone();
                let mut v = self.expr(cx, value);
                if let Some(op) = op {
                    let cur = HExpr::new(HKind::Local(slot), t.clone(), target.span);
                    v = self.binary(*op, cur, v, span);
                }
                let v = self.coerce(v, &t);
                HExpr::new(HKind::Set(slot, Box::new(v)), HTy::Unit, span)
            }
            StmtKind::For { var, iter, body } => self.for_loop(cx, var, iter, body, span),
            StmtKind::While { cond, body } => {
                let c = self.expr(cx, cond);
                let b = self.block(cx, body);
                HExpr::new(HKind::While(Box::new(c), Box::new(b)), HTy::Unit, span)
            }
            StmtKind::Return(v) => {
                let v = v.as_ref().map(|v| {
                    let e = self.expr(cx, v);
                    let want = cx.ret.clone();
                    Box::new(self.coerce(e, &want))
                });
                HExpr::new(HKind::Return(v), HTy::Unit, span)
            }
            StmtKind::Break => HExpr::new(HKind::Break, HTy::Unit, span),
            StmtKind::Continue => HExpr::new(HKind::Continue, HTy::Unit, span),
            StmtKind::Expr(e) => self.expr(cx, e),
            StmtKind::Param { .. } | StmtKind::State { .. } => {
                self.unsupported(span, "`param`/`state`")
            }
            StmtKind::Error => unit(span),
        }
    }

    fn for_loop(
        &mut self,
        cx: &mut FnCx,
        var: &ast::Ident,
        iter: &Expr,
        body: &Block,
        span: crate::span::Span,
    ) -> HExpr {
        if let ExprKind::Range(a, b) = &iter.kind {
            let start = self.expr(cx, a);
            let end = self.expr(cx, b);
            if start.ty != HTy::Int || end.ty != HTy::Int {
                return self.unsupported(iter.span, "a range over non-ints");
            }
            let end_slot = cx.slot(HTy::Int);
            cx.scopes.push(HashMap::new());
            let v = cx.bind(&var.name, HTy::Int);
            let b = self.block(cx, body);
            cx.scopes.pop();
            return HExpr::new(
                HKind::ForRange {
                    var: v,
                    end_slot,
                    start: Box::new(start),
                    end: Box::new(end),
                    body: Box::new(b),
                },
                HTy::Unit,
                span,
            );
        }
        let list = self.expr(cx, iter);
        let HTy::List(elem) = list.ty.clone() else {
            return self.unsupported(
                iter.span,
                "a `for` over something other than a range or a list",
            );
        };
        let list_slot = cx.slot(list.ty.clone());
        let index_slot = cx.slot(HTy::Int);
        let end_slot = cx.slot(HTy::Int);
        cx.scopes.push(HashMap::new());
        let v = cx.bind(&var.name, *elem);
        let b = self.block(cx, body);
        cx.scopes.pop();
        let site = self.site(iter.span);
        HExpr::new(
            HKind::ForList {
                var: v,
                list_slot,
                index_slot,
                end_slot,
                list: Box::new(list),
                body: Box::new(b),
                site,
            },
            HTy::Unit,
            span,
        )
    }

    // ------------------------------------------------------------------ expressions

    fn expr(&mut self, cx: &mut FnCx, e: &Expr) -> HExpr {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(n) => HExpr::new(HKind::Int(*n), HTy::Int, span),
            ExprKind::Float(x) => HExpr::new(HKind::Float(*x), HTy::Float, span),
            ExprKind::Bool(b) => HExpr::new(HKind::Bool(*b), HTy::Bool, span),
            ExprKind::Str(parts) => self.string(cx, parts, span),
            ExprKind::Name(n) => {
                if let Some(slot) = cx.get(n) {
                    return HExpr::new(HKind::Local(slot), cx.locals[slot].clone(), span);
                }
                match self.p.lookup(cx.module, n).map(|id| self.p.items[id].kind) {
                    Some(DefKind::Net) => HExpr::new(HKind::Net(n.clone()), HTy::Net, span),
                    _ => self.unsupported(span, format!("`{n}` as a value")),
                }
            }
            ExprKind::Call { callee, args } => {
                let ExprKind::Name(n) = &callee.kind else {
                    return self.unsupported(callee.span, "calling a computed function");
                };
                let args: Vec<(Option<String>, &Expr)> = args
                    .iter()
                    .map(|a| (a.name.as_ref().map(|i| i.name.clone()), &a.value))
                    .collect();
                self.call(cx, n, callee.span, &args, span)
            }
            ExprKind::Labelled(label, _) => {
                self.unsupported(label.span, "a label outside tensor code")
            }
            ExprKind::Pipe(x, f) => match &f.kind {
                ExprKind::Name(n) => self.call(cx, n, f.span, &[(None, x)], span),
                ExprKind::Call { callee, args } => {
                    let ExprKind::Name(n) = &callee.kind else {
                        return self.unsupported(f.span, "piping into a computed function");
                    };
                    let mut all: Vec<(Option<String>, &Expr)> = vec![(None, x)];
                    all.extend(
                        args.iter()
                            .map(|a| (a.name.as_ref().map(|i| i.name.clone()), &a.value)),
                    );
                    self.call(cx, n, callee.span, &all, span)
                }
                _ => self.unsupported(f.span, "piping into this"),
            },
            ExprKind::Field { base, name } => {
                let b = self.expr(cx, base);
                let HTy::Record(id) = b.ty else {
                    return self.unsupported(span, "a field of a non-record");
                };
                let fields = self
                    .prog
                    .records
                    .get(&id)
                    .map(|l| l.fields.clone())
                    .unwrap_or_default();
                let Some(i) = fields.iter().position(|(f, _)| *f == name.name) else {
                    return self.unsupported(name.span, format!("field `{}`", name.name));
                };
                HExpr::new(HKind::Field(Box::new(b), i), fields[i].1.clone(), span)
            }
            ExprKind::Index { base, items } => {
                let b = self.expr(cx, base);
                let (HTy::List(elem), [ast::IndexItem::At(i)]) = (b.ty.clone(), items.as_slice())
                else {
                    return self.unsupported(span, "this indexing");
                };
                let i = self.expr(cx, i);
                let site = self.site(span);
                HExpr::new(HKind::Index(Box::new(b), Box::new(i), site), *elem, span)
            }
            ExprKind::Unary(op, x) => {
                let x = self.expr(cx, x);
                let ty = x.ty.clone();
                HExpr::new(HKind::Unary(*op, Box::new(x)), ty, span)
            }
            ExprKind::Binary(op, a, b) => {
                let a = self.expr(cx, a);
                let b = self.expr(cx, b);
                self.binary(*op, a, b, span)
            }
            ExprKind::If { cond, then, els } => {
                let c = self.expr(cx, cond);
                let t = self.block(cx, then);
                let e = els.as_ref().map(|e| self.expr(cx, e));
                let ty = match &e {
                    Some(e) if t.ty == HTy::Int && e.ty == HTy::Float => HTy::Float,
                    Some(_) => t.ty.clone(),
                    None => HTy::Unit,
                };
                let t = self.coerce(t, &ty);
                let e = e.map(|e| Box::new(self.coerce(e, &ty)));
                HExpr::new(HKind::If(Box::new(c), Box::new(t), e), ty, span)
            }
            ExprKind::Block(b) => self.block(cx, b),
            ExprKind::Record { name, fields } => self.record(cx, name, fields, span),
            ExprKind::List(items) => {
                let items: Vec<HExpr> = items.iter().map(|i| self.expr(cx, i)).collect();
                let elem = if items.iter().any(|i| i.ty == HTy::Float) {
                    HTy::Float
                } else {
                    items.first().map(|i| i.ty.clone()).unwrap_or(HTy::Unit)
                };
                let items: Vec<HExpr> = items.into_iter().map(|i| self.coerce(i, &elem)).collect();
                HExpr::new(HKind::List(items), HTy::List(Box::new(elem)), span)
            }
            ExprKind::Range(..) => self.unsupported(span, "a range outside a `for`"),
            ExprKind::Transpose(_) => self.unsupported(span, "`.T`"),
            ExprKind::Error => unit(span),
        }
    }

    fn string(&mut self, cx: &mut FnCx, parts: &[StrPart], span: crate::span::Span) -> HExpr {
        if let [StrPart::Lit(s)] = parts {
            return HExpr::new(HKind::Str(s.clone()), HTy::Str, span);
        }
        if parts.is_empty() {
            return HExpr::new(HKind::Str(String::new()), HTy::Str, span);
        }
        let mut pieces = Vec::new();
        for part in parts {
            match part {
                StrPart::Lit(s) => pieces.push(Piece::Lit(s.clone())),
                StrPart::Interp(x, spec) => {
                    let v = self.expr(cx, x);
                    let parsed = match spec {
                        Some(s) => match FormatSpec::parse(s) {
                            Ok(f) => f,
                            Err(FormatError::Unknown) => {
                                self.diags.push(
                                    Diagnostic::error("E0602", format!("unknown format `{s}`"))
                                        .primary(x.span, "formatted here")
                                        .with_help("formats are `.N` (digits after the point), `.N%` (percent), `e` or `.Ne` (scientific)"),
                                );
                                FormatSpec::default()
                            }
                            Err(FormatError::TooPrecise(digits)) => {
                                self.diags.push(
                                    Diagnostic::error(
                                        "E0602",
                                        format!("format `{s}` asks for {digits} digits after the point; at most {MAX_PRECISION} can be shown"),
                                    )
                                    .primary(x.span, "formatted here")
                                    .with_help(format!("an f64 has at most {MAX_PRECISION} digits after the point")),
                                );
                                FormatSpec::default()
                            }
                        },
                        None => FormatSpec::default(),
                    };
                    pieces.push(Piece::Value(v, parsed));
                }
            }
        }
        HExpr::new(HKind::Format(pieces), HTy::Str, span)
    }

    fn binary(&mut self, op: ast::BinOp, a: HExpr, b: HExpr, span: crate::span::Span) -> HExpr {
        use ast::BinOp::*;
        if a.ty == HTy::Str && b.ty == HTy::Str {
            let eq = |l: &mut Self, a, b| {
                l.builtin_call(
                    "__str_eq",
                    vec![HTy::Str, HTy::Str],
                    HTy::Bool,
                    vec![a, b],
                    span,
                )
            };
            return match op {
                Add => self.builtin_call(
                    "__str_concat",
                    vec![HTy::Str, HTy::Str],
                    HTy::Str,
                    vec![a, b],
                    span,
                ),
                Eq => eq(self, a, b),
                Ne => {
                    let e = eq(self, a, b);
                    HExpr::new(HKind::Unary(ast::UnOp::Not, Box::new(e)), HTy::Bool, span)
                }
                _ => self.unsupported(span, format!("`{}` on strings", op.symbol())),
            };
        }
        let float = a.ty == HTy::Float || b.ty == HTy::Float;
        let operand = if float { HTy::Float } else { a.ty.clone() };
        let (a, b) = (self.coerce(a, &operand), self.coerce(b, &operand));
        if !matches!(operand, HTy::Int | HTy::Float | HTy::Bool) {
            return self.unsupported(span, format!("`{}` on these values", op.symbol()));
        }
        let ty = if op.is_comparison() || matches!(op, And | Or) {
            HTy::Bool
        } else {
            operand
        };
        if op == MatMul {
            return self.unsupported(span, "`@` on scalars");
        }
        let site = self.site(span);
        HExpr::new(HKind::Binary(op, Box::new(a), Box::new(b), site), ty, span)
    }

    fn record(
        &mut self,
        cx: &mut FnCx,
        name: &ast::Ident,
        fields: &[(ast::Ident, Expr)],
        span: crate::span::Span,
    ) -> HExpr {
        let Some(id) = self
            .p
            .lookup(cx.module, &name.name)
            .filter(|id| self.p.items[*id].kind == DefKind::Record)
        else {
            return self.unsupported(name.span, format!("record `{}`", name.name));
        };
        let decls = self.layout(id);
        let types: Vec<HTy> = self
            .prog
            .records
            .get(&id)
            .map(|l| l.fields.iter().map(|(_, t)| t.clone()).collect())
            .unwrap_or_default();
        let module = self.p.items[id].module;
        let mut values = Vec::new();
        for (decl, ty) in decls.iter().zip(&types) {
            let v = match fields.iter().find(|(n, _)| n.name == decl.name.name) {
                Some((_, e)) => self.expr(cx, e),
                None => match &decl.default {
                    Some(d) => self.in_module(cx, module, |l, cx| l.expr(cx, d)),
                    None => {
                        return self.unsupported(
                            span,
                            format!("record `{}` without field `{}`", name.name, decl.name.name),
                        );
                    }
                },
            };
            let v = self.coerce_or_empty(v, ty);
            values.push(v);
        }
        HExpr::new(HKind::Record(values), HTy::Record(id), span)
    }

    /// Like `coerce`, and gives an empty list literal its wanted element type.
    fn coerce_or_empty(&mut self, v: HExpr, want: &HTy) -> HExpr {
        match (&v.kind, want) {
            (HKind::List(items), HTy::List(_)) if items.is_empty() => {
                HExpr::new(HKind::List(vec![]), want.clone(), v.span)
            }
            _ => self.coerce(v, want),
        }
    }

    /// Lowers `f` with the names of `module` in scope and no locals (default values).
    fn in_module(
        &mut self,
        cx: &mut FnCx,
        module: usize,
        f: impl FnOnce(&mut Self, &mut FnCx) -> HExpr,
    ) -> HExpr {
        let saved = (
            cx.module,
            std::mem::replace(&mut cx.scopes, vec![HashMap::new()]),
        );
        cx.module = module;
        let out = f(self, cx);
        cx.module = saved.0;
        cx.scopes = saved.1;
        out
    }

    // ------------------------------------------------------------------ calls

    fn call(
        &mut self,
        cx: &mut FnCx,
        name: &str,
        name_span: crate::span::Span,
        args: &[(Option<String>, &Expr)],
        span: crate::span::Span,
    ) -> HExpr {
        let Some(id) = self.p.lookup(cx.module, name) else {
            return self.unsupported(name_span, format!("`{name}`"));
        };
        let Some(ast::Item {
            kind: ItemKind::Fn(f),
            ..
        }) = self.p.item_ast(id)
        else {
            return self.unsupported(
                name_span,
                format!(
                    "calling {} `{name}` from host code",
                    self.p.items[id].kind.word()
                ),
            );
        };
        let module = self.p.items[id].module;
        if f.body.is_none() && self.p.modules[module].name == "std.core" && MATH.contains(&name) {
            return self.math(cx, name, name_span, args, span);
        }
        let mut param_tys = Vec::new();
        for prm in &f.params {
            match prm.ty.as_ref().and_then(|t| self.ty(module, t)) {
                Some(t) => param_tys.push(t),
                None => {
                    return self.unsupported(
                        name_span,
                        format!("calling tensor function `{name}` from host code"),
                    );
                }
            }
        }
        // Place the arguments: positional first, then by name, then defaults.
        let mut placed: Vec<Option<HExpr>> = vec![None; f.params.len()];
        let mut next = 0;
        for (n, e) in args {
            let i = match n {
                Some(n) => f.params.iter().position(|p| p.name.name == *n),
                None => {
                    let i = next;
                    next += 1;
                    Some(i)
                }
            };
            let Some(i) = i.filter(|i| *i < placed.len()) else {
                return self.unsupported(e.span, "this argument");
            };
            let v = self.expr(cx, e);
            placed[i] = Some(self.coerce_or_empty(v, &param_tys[i]));
        }
        let mut values = Vec::new();
        for ((slot, prm), ty) in placed.into_iter().zip(&f.params).zip(&param_tys) {
            let v = match (slot, &prm.default) {
                (Some(v), _) => v,
                (None, Some(d)) => {
                    let v = self.in_module(cx, module, |l, cx| l.expr(cx, d));
                    self.coerce_or_empty(v, ty)
                }
                (None, None) => {
                    return self.unsupported(
                        span,
                        format!("a call of `{name}` without `{}`", prm.name.name),
                    );
                }
            };
            values.push(v);
        }
        let ret = match f.ret.as_ref().map(|t| self.ty(module, t)) {
            Some(Some(t)) => t,
            Some(None) => {
                return self.unsupported(
                    name_span,
                    format!("calling tensor function `{name}` from host code"),
                );
            }
            None => HTy::Unit,
        };
        match &f.body {
            // Conversions are instructions, not calls.
            None if name == "float" && values.len() == 1 && values[0].ty == HTy::Int => {
                let v = values.remove(0);
                HExpr::new(HKind::IntToFloat(Box::new(v)), HTy::Float, span)
            }
            None if name == "str_of" && values.len() == 1 => {
                let v = values.remove(0);
                HExpr::new(v.kind, HTy::Str, span)
            }
            // Runtime operations every host runtime has, not library builtins.
            None if name == "int" => self.builtin_call("__int", param_tys, ret, values, span),
            None => self.builtin_call(name, param_tys, ret, values, span),
            Some(body) => {
                let fid = self.function(id, f, module, &param_tys, ret.clone(), body);
                let site = self.site(span);
                HExpr::new(HKind::Call(fid, values, site), ret, span)
            }
        }
    }

    /// A primitive of tensor code applied to host numbers: `cos(x)` on a float is the
    /// runtime's `__math_cos`.
    fn math(
        &mut self,
        cx: &mut FnCx,
        name: &str,
        name_span: crate::span::Span,
        args: &[(Option<String>, &Expr)],
        span: crate::span::Span,
    ) -> HExpr {
        let mut values = Vec::new();
        for (n, e) in args {
            let v = self.expr(cx, e);
            if n.is_some() || !matches!(v.ty, HTy::Int | HTy::Float) {
                return self.unsupported(
                    name_span,
                    format!("calling tensor function `{name}` from host code"),
                );
            }
            values.push(self.coerce(v, &HTy::Float));
        }
        let params = vec![HTy::Float; values.len()];
        self.builtin_call(&format!("__math_{name}"), params, HTy::Float, values, span)
    }

    fn builtin_call(
        &mut self,
        name: &str,
        params: Vec<HTy>,
        ret: HTy,
        args: Vec<HExpr>,
        span: crate::span::Span,
    ) -> HExpr {
        let id = match self.prog.builtin(name) {
            Some(id) => id,
            None => {
                self.prog.builtins.push(BuiltinDecl {
                    name: name.to_string(),
                    params,
                    ret: ret.clone(),
                    span,
                });
                self.prog.builtins.len() - 1
            }
        };
        let site = self.site(span);
        HExpr::new(HKind::Builtin(id, args, site), ret, span)
    }

    /// The id of host function `id`, lowering its body the first time.
    fn function(
        &mut self,
        id: ItemId,
        f: &ast::FnDecl,
        module: usize,
        params: &[HTy],
        ret: HTy,
        body: &Block,
    ) -> FuncId {
        if let Some(fid) = self.fn_ids.get(&id) {
            return *fid;
        }
        let fid = self.prog.funcs.len();
        let span = self.p.items[id].span;
        self.prog.funcs.push(HFunc {
            name: f.name.name.clone(),
            params: params.len(),
            locals: vec![],
            ret: ret.clone(),
            body: unit(span),
            span,
        });
        self.fn_ids.insert(id, fid);
        let mut cx = FnCx::new(module, ret.clone());
        for (prm, t) in f.params.iter().zip(params) {
            cx.bind(&prm.name.name, t.clone());
        }
        let b = self.block(&mut cx, body);
        let b = if ret == HTy::Unit {
            b
        } else {
            self.coerce(b, &ret)
        };
        if let Some(func) = self.prog.funcs.get_mut(fid) {
            func.locals = cx.locals;
            func.body = b;
        }
        fid
    }
}
