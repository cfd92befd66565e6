//! Expressions: the hook every expression passes through (which records its type for
//! editors), names, fields, indexing and slicing, `if`, and record literals. Operators
//! are in `ops.rs` and calls in `calls.rs`.

use std::collections::HashMap;

use super::{Cx, Env, PendingLabel, closest};
use crate::check::dim::Dim;
use crate::check::facts::Target;
use crate::check::names::DefKind;
use crate::check::ty::{DType, ShapeFmt, Ty};
use crate::diag::Diagnostic;
use crate::ir::{Compare, Op, Unary};
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    /// Every expression passes through here: it is the expression IR nodes are lowered
    /// from while it is evaluated, and its type is a fact for editors.
    pub(in crate::check) fn expr(&mut self, e: &Expr, env: &mut Env) -> Ty {
        let outer = self.cur_span.replace(e.span);
        let t = self.expr_kind(e, env);
        self.cur_span = outer;
        self.facts.expr_type(self.p, e.span, &t);
        t
    }

    fn expr_kind(&mut self, e: &Expr, env: &mut Env) -> Ty {
        match &e.kind {
            ExprKind::Int(n) => Ty::int(*n),
            ExprKind::Float(x) => Ty::Float(Some(*x)),
            ExprKind::Bool(b) => Ty::Bool(Some(*b)),
            ExprKind::Str(parts) => {
                for p in parts {
                    if let StrPart::Interp(x, _) = p {
                        self.expr(x, env);
                    }
                }
                Ty::Str
            }
            ExprKind::Name(n) => self.name(n, e.span, env),
            ExprKind::Call { callee, args } => self.call_expr(callee, args, e.span, env),
            ExprKind::Field { base, name } => {
                let b = self.expr(base, env);
                self.field(&b, name, base.span)
            }
            ExprKind::Index { base, items } => {
                let b = self.expr(base, env);
                self.index(&b, items, base.span, e.span, env)
            }
            ExprKind::Transpose(base) => {
                let b = self.expr(base, env);
                match b {
                    Ty::Tensor(dt, mut dims, v) if dims.len() >= 2 => {
                        let n = dims.len();
                        dims.swap(n - 1, n - 2);
                        let mut perm: Vec<usize> = (0..n).collect();
                        perm.swap(n - 1, n - 2);
                        let v = self.emit(Op::Transpose { perm }, &[v], dt, &dims);
                        Ty::Tensor(dt, dims, v)
                    }
                    Ty::Err => Ty::Err,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error("E0301", format!("`.T` swaps the last two axes and needs a tensor of rank 2 or more, found {shown}"))
                                .primary(e.span, "here"),
                        );
                        Ty::Err
                    }
                }
            }
            ExprKind::Unary(op, x) => {
                let v = self.expr(x, env);
                match (op, v) {
                    (UnOp::Neg, Ty::Int(Some(d))) => {
                        match self.arith(d.neg(), e.span, || format!("`-({d})`")) {
                            Some(n) => Ty::Int(Some(n)),
                            None => Ty::Err,
                        }
                    }
                    (UnOp::Neg, Ty::Int(None)) => Ty::Int(None),
                    (UnOp::Neg, Ty::Float(v)) => Ty::Float(v.map(|x| -x)),
                    (UnOp::Neg, Ty::Err) => Ty::Err,
                    (UnOp::Neg, Ty::Tensor(dt, s, v))
                        if dt.is_float() || dt == DType::I32 || dt == DType::I64 =>
                    {
                        let v = self.emit_unary(Unary::Neg, v, dt, &s);
                        Ty::Tensor(dt, s, v)
                    }
                    (UnOp::Not, Ty::Bool(b)) => Ty::Bool(b.map(|b| !b)),
                    (UnOp::Not, t @ Ty::Tensor(DType::Bool, ..)) => {
                        let Ty::Tensor(_, s, _) = &t else {
                            return Ty::Err;
                        };
                        let s = s.clone();
                        let v = self.emit_compare(
                            Compare::Eq,
                            &t,
                            &Ty::Bool(Some(false)),
                            DType::Bool,
                            &s,
                        );
                        Ty::Tensor(DType::Bool, s, v)
                    }
                    (UnOp::Not, Ty::Err) => Ty::Err,
                    (op, other) => {
                        let shown = self.show(&other);
                        let sym = if *op == UnOp::Neg { "-" } else { "!" };
                        self.report(
                            Diagnostic::error("E0207", format!("cannot apply `{sym}` to {shown}"))
                                .primary(e.span, "here"),
                        );
                        Ty::Err
                    }
                }
            }
            ExprKind::Binary(op, a, b) => {
                let x = self.expr(a, env);
                let y = self.expr(b, env);
                self.binary(*op, &x, &y, a.span, b.span, e.span, env)
            }
            ExprKind::Pipe(a, f) => {
                let x = self.expr(a, env);
                match &f.kind {
                    ExprKind::Labelled(label, inner) => self.labelled(label, inner, x, a.span, env),
                    _ => self.apply(f, x, a.span, env),
                }
            }
            ExprKind::Labelled(label, inner) => {
                self.report(
                    Diagnostic::error("E0316", "a label names a layer applied with `|>`")
                        .primary(label.span, "nothing is applied here")
                        .with_help("write `x |> label: layer(...)`"),
                );
                self.expr(inner, env)
            }
            ExprKind::If { cond, then, els } => {
                self.if_expr(cond, then, els.as_deref(), e.span, env)
            }
            ExprKind::Block(b) => self.block(b, env),
            ExprKind::Record { name, fields } => self.record_lit(name, fields, e.span, env),
            ExprKind::List(items) => Ty::Items(items.iter().map(|i| self.expr(i, env)).collect()),
            ExprKind::Range(a, b) => {
                for x in [a, b] {
                    let t = self.expr(x, env);
                    if !matches!(t, Ty::Int(_) | Ty::Err) {
                        let shown = self.show(&t);
                        self.report(
                            Diagnostic::error(
                                "E0201",
                                format!("a range bound must be an int, found {shown}"),
                            )
                            .primary(x.span, "here"),
                        );
                    }
                }
                Ty::Range
            }
            ExprKind::Error => Ty::Err,
        }
    }

    /// `x |> label: f`: applies `f`, whose layer takes the label as its module name.
    fn labelled(
        &mut self,
        label: &ModuleLabel,
        f: &Expr,
        x: Ty,
        origin: Span,
        env: &mut Env,
    ) -> Ty {
        let name = self.label_name(label, env);
        let outer = self.label.take();
        if let Some(name) = name {
            self.label = Some(PendingLabel {
                name,
                span: label.span,
                target: f.span,
            });
        }
        let y = self.apply(f, x, origin, env);
        let unused = std::mem::replace(&mut self.label, outer);
        // A label nothing took names a function or an expression, which has no module; a
        // failed application has been reported already.
        if let (Some(l), false) = (unused, y.is_err()) {
            self.report(
                Diagnostic::error("E0316", "only a layer can be labelled")
                    .primary(l.span, "this label")
                    .secondary(f.span, "is not a layer")
                    .with_help("labels name the module of a layer's parameters; remove it"),
            );
        }
        y
    }

    pub(super) fn name(&mut self, n: &str, span: Span, env: &mut Env) -> Ty {
        if let Some(l) = env.get(n) {
            let (def, ty) = (l.span, l.ty.clone());
            self.facts.name_use(span, Target::Local(def));
            return ty;
        }
        if n == "training" {
            return Ty::Bool(self.mode().map(|m| m == crate::ir::Mode::Train));
        }
        let found = self.p.lookup(env.module, n);
        if let Some(id) = found {
            self.facts.name_use(span, Target::Item(id));
        }
        match found {
            Some(id) => match self.p.items[id].kind {
                DefKind::Net => Ty::Net(id),
                DefKind::Rule => Ty::Err,
                DefKind::ExternType => {
                    self.report(
                        Diagnostic::error("E0109", format!("`{n}` is a type, not a value"))
                            .primary(span, "used as a value"),
                    );
                    Ty::Err
                }
                _ => Ty::Item(id),
            },
            None => {
                let mut names: Vec<String> =
                    env.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
                names.extend(self.p.visible_names(env.module));
                let mut d = Diagnostic::error("E0101", format!("cannot find `{n}` in this scope"))
                    .primary(span, "not found");
                if let Some(s) = closest(n, names.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else if [
                    "dense",
                    "conv",
                    "relu",
                    "flatten",
                    "batchnorm",
                    "maxpool",
                    "layernorm",
                    "linear",
                ]
                .contains(&n)
                {
                    d = d.with_help("add `import std.nn.*`");
                } else if ["mnist", "fashion_mnist", "cifar10"].contains(&n) {
                    d = d.with_help(format!("add `import std.data.{n}`"));
                }
                self.report(d);
                Ty::Err
            }
        }
    }

    pub(super) fn field(&mut self, base: &Ty, name: &Ident, base_span: Span) -> Ty {
        match base {
            Ty::Record(id) => {
                let Some(Item {
                    kind: ItemKind::Record(r),
                    ..
                }) = self.p.item_ast(*id)
                else {
                    return Ty::Err;
                };
                if let Some(f) = r.fields.iter().find(|f| f.name.name == name.name) {
                    self.facts
                        .name_use(name.span, Target::Field(*id, name.name.clone()));
                    let module = self.p.items[*id].module;
                    let mut env = Env::new(module, false, false);
                    return match &f.ty {
                        Some(t) => self.eval_type(&mut env, t),
                        None => Ty::Err,
                    };
                }
                let mut d = Diagnostic::error(
                    "E0108",
                    format!("record `{}` has no field `{}`", r.name.name, name.name),
                )
                .primary(name.span, "unknown field");
                if let Some(s) = closest(&name.name, r.fields.iter().map(|f| f.name.name.as_str()))
                {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else {
                    let all: Vec<&str> = r.fields.iter().map(|f| f.name.name.as_str()).collect();
                    d = d.with_help(format!("its fields are: {}", all.join(", ")));
                }
                self.report(d);
                Ty::Err
            }
            Ty::Tensor(_, dims, _) if name.name == "shape" => {
                Ty::Items(dims.iter().map(|d| Ty::Int(Some(d.clone()))).collect())
            }
            Ty::Err | Ty::Any => Ty::Err,
            other => {
                let shown = self.show(other);
                self.report(
                    Diagnostic::error("E0108", format!("{shown} has no field `{}`", name.name))
                        .primary(name.span, "unknown field")
                        .secondary(base_span, format!("this is {shown}")),
                );
                Ty::Err
            }
        }
    }

    fn index(
        &mut self,
        base: &Ty,
        items: &[IndexItem],
        base_span: Span,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        match base {
            Ty::Tensor(dt, dims, v) => {
                if items.len() > dims.len() {
                    self.report(
                        Diagnostic::error(
                            "E0307",
                            format!(
                                "too many indices: {} for a tensor of rank {}",
                                items.len(),
                                dims.len()
                            ),
                        )
                        .primary(span, "here")
                        .secondary(base_span, format!("this is {}", ShapeFmt(*dt, dims))),
                    );
                    return Ty::Err;
                }
                let mut out = Vec::new();
                // While lowering: each index is a slice of length 1, dropped by a final reshape.
                let mut cur = *v;
                let mut full = dims.clone();
                let mut dropped = false;
                for (axis, (item, d)) in items.iter().zip(dims).enumerate() {
                    match item {
                        IndexItem::At(e) => {
                            let v = self.expr(e, env);
                            match v {
                                Ty::Int(Some(i)) => {
                                    self.check_bound(&i, d, axis, e.span, true);
                                    if let (Some(i), Some(n)) = (i.as_const(), d.as_const()) {
                                        let i = if i < 0 { i + n } else { i };
                                        full[axis] = Dim::konst(1);
                                        cur = self.emit(
                                            Op::Slice {
                                                axis,
                                                start: i as usize,
                                                end: i as usize + 1,
                                            },
                                            &[cur],
                                            *dt,
                                            &full,
                                        );
                                        dropped = true;
                                    }
                                }
                                Ty::Int(None) | Ty::Err => {}
                                other => {
                                    let shown = self.show(&other);
                                    self.report(
                                        Diagnostic::error(
                                            "E0201",
                                            format!("an index must be an int, found {shown}"),
                                        )
                                        .primary(e.span, "here"),
                                    );
                                }
                            }
                        }
                        IndexItem::Slice(a, b) => {
                            let lo = match a {
                                Some(a) => self.slice_bound(a, d, axis, env),
                                None => Some(Dim::konst(0)),
                            };
                            let hi = match b {
                                Some(b) => self.slice_bound(b, d, axis, env),
                                None => Some(d.clone()),
                            };
                            match (lo, hi) {
                                (Some(lo), Some(hi)) => {
                                    let Some(len) =
                                        self.arith(hi.sub(&lo), span, || format!("`{hi} - {lo}`"))
                                    else {
                                        return Ty::Err;
                                    };
                                    if len.as_const().is_some_and(|n| n < 0) {
                                        self.report(
                                            Diagnostic::error(
                                                "E0307",
                                                format!("empty slice: {lo}..{hi}"),
                                            )
                                            .primary(span, "here"),
                                        );
                                        return Ty::Err;
                                    }
                                    if len != *d
                                        && let (Some(a), Some(b)) = (lo.as_const(), hi.as_const())
                                    {
                                        full[axis] = len.clone();
                                        cur = self.emit(
                                            Op::Slice {
                                                axis,
                                                start: a as usize,
                                                end: b as usize,
                                            },
                                            &[cur],
                                            *dt,
                                            &full,
                                        );
                                    }
                                    out.push(len);
                                }
                                _ => return Ty::Err,
                            }
                        }
                    }
                }
                out.extend(dims[items.len()..].iter().cloned());
                if dropped {
                    cur = self.emit(Op::Reshape, &[cur], *dt, &out);
                }
                Ty::Tensor(*dt, out, cur)
            }
            Ty::List(t) => {
                for i in items {
                    if let IndexItem::At(e) = i {
                        self.expr(e, env);
                    }
                }
                (**t).clone()
            }
            Ty::Items(list) => match items.first() {
                Some(IndexItem::At(e)) => match self.expr(e, env).dim().and_then(Dim::as_const) {
                    Some(i) if i >= 0 && (i as usize) < list.len() => list[i as usize].clone(),
                    _ => list.first().cloned().unwrap_or(Ty::Err),
                },
                _ => Ty::Err,
            },
            Ty::Err | Ty::Any => Ty::Err,
            other => {
                let shown = self.show(other);
                self.report(
                    Diagnostic::error("E0201", format!("cannot index into {shown}"))
                        .primary(span, "here"),
                );
                Ty::Err
            }
        }
    }

    fn slice_bound(&mut self, e: &Expr, d: &Dim, axis: usize, env: &mut Env) -> Option<Dim> {
        match self.expr(e, env) {
            Ty::Int(Some(i)) => {
                let i = if i.as_const().is_some_and(|n| n < 0) {
                    self.arith(d.add(&i), e.span, || format!("`{d} + {i}`"))?
                } else {
                    i
                };
                self.check_bound(&i, d, axis, e.span, false);
                Some(i)
            }
            Ty::Err => None,
            other => {
                let shown = self.show(&other);
                self.report(
                    Diagnostic::error(
                        "E0310",
                        format!("a slice bound in tensor code must be a known int, found {shown}"),
                    )
                    .primary(e.span, "here"),
                );
                None
            }
        }
    }

    fn check_bound(&mut self, i: &Dim, d: &Dim, axis: usize, span: Span, exclusive: bool) {
        if let (Some(i), Some(n)) = (i.as_const(), d.as_const()) {
            let ok = if exclusive {
                i >= -n && i < n
            } else {
                i >= 0 && i <= n
            };
            if !ok {
                self.report(
                    Diagnostic::error(
                        "E0307",
                        format!("index {i} is out of range for axis {axis} of size {n}"),
                    )
                    .primary(span, "out of range"),
                );
            }
        }
    }

    fn if_expr(
        &mut self,
        cond: &Expr,
        then: &Block,
        els: Option<&Expr>,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        let c = self.expr(cond, env);
        self.expect_bool(&c, cond.span);
        if env.tensor {
            match c {
                Ty::Bool(Some(true)) => return self.block(then, env),
                Ty::Bool(Some(false)) => return els.map(|e| self.expr(e, env)).unwrap_or(Ty::Unit),
                _ => {}
            }
        }
        let a = self.block(then, env);
        let Some(e) = els else { return Ty::Unit };
        let b = self.expr(e, env);
        match (&a, &b) {
            (Ty::Tensor(da, x, _), Ty::Tensor(db, y, _)) => {
                if da != db || x.len() != y.len() || (env.strict && !self.shapes_equal(x, y, true))
                {
                    self.report(
                        Diagnostic::error(
                            "E0312",
                            format!(
                                "the branches give different shapes: {} and {}",
                                ShapeFmt(*da, x),
                                ShapeFmt(*db, y)
                            ),
                        )
                        .primary(span, "this `if`")
                        .secondary(then.span, format!("{}", ShapeFmt(*da, x)))
                        .secondary(e.span, format!("{}", ShapeFmt(*db, y))),
                    );
                    return Ty::Err;
                }
                a
            }
            _ if self.assignable(&a, &b) => {
                if matches!(a, Ty::Int(_)) && matches!(b, Ty::Float(_)) {
                    b
                } else {
                    a
                }
            }
            _ if self.assignable(&b, &a) => b,
            _ => {
                let (x, y) = (self.show(&a), self.show(&b));
                self.report(
                    Diagnostic::error(
                        "E0201",
                        format!("`if` and `else` have different types: {x} and {y}"),
                    )
                    .primary(span, "this `if`")
                    .secondary(then.span, x)
                    .secondary(e.span, y),
                );
                Ty::Err
            }
        }
    }

    fn record_lit(
        &mut self,
        name: &Ident,
        fields: &[(Ident, Expr)],
        span: Span,
        env: &mut Env,
    ) -> Ty {
        let id = match self.p.lookup(env.module, &name.name) {
            Some(id) if self.p.items[id].kind == DefKind::Record => id,
            other => {
                for (_, e) in fields {
                    self.expr(e, env);
                }
                let mut d =
                    Diagnostic::error("E0107", format!("`{}` is not a record type", name.name))
                        .primary(name.span, "not a record");
                if other.is_none() {
                    let names = self.p.visible_names(env.module);
                    if let Some(s) = closest(&name.name, names.iter().map(String::as_str)) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                }
                self.report(d);
                return Ty::Err;
            }
        };
        self.facts.name_use(name.span, Target::Item(id));
        let Some(Item {
            kind: ItemKind::Record(r),
            ..
        }) = self.p.item_ast(id)
        else {
            return Ty::Err;
        };
        let module = self.p.items[id].module;
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for (f, e) in fields {
            let v = self.expr(e, env);
            if let Some(prev) = seen.insert(&f.name, f.span) {
                self.report(
                    Diagnostic::error("E0205", format!("field `{}` is given twice", f.name))
                        .primary(f.span, "given again here")
                        .secondary(prev, "first given here"),
                );
                continue;
            }
            match r.fields.iter().find(|d| d.name.name == f.name) {
                Some(decl) => {
                    self.facts
                        .name_use(f.span, Target::Field(id, f.name.clone()));
                    if let Some(t) = &decl.ty {
                        let mut fenv = Env::new(module, false, false);
                        let want = self.eval_type(&mut fenv, t);
                        self.expect_assignable(&want, &v, e.span, &format!("field `{}`", f.name));
                    }
                }
                None => {
                    let mut d = Diagnostic::error(
                        "E0108",
                        format!("record `{}` has no field `{}`", r.name.name, f.name),
                    )
                    .primary(f.span, "unknown field");
                    if let Some(s) = closest(&f.name, r.fields.iter().map(|f| f.name.name.as_str()))
                    {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                    self.report(d);
                }
            }
        }
        let missing: Vec<&str> = r
            .fields
            .iter()
            .filter(|d| d.default.is_none() && !seen.contains_key(d.name.name.as_str()))
            .map(|d| d.name.name.as_str())
            .collect();
        if !missing.is_empty() {
            self.report(
                Diagnostic::error(
                    "E0203",
                    format!(
                        "missing field{} {} in `{}`",
                        if missing.len() > 1 { "s" } else { "" },
                        missing
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.name.name
                    ),
                )
                .primary(span, "this record")
                .secondary(r.name.span, "declared here"),
            );
        }
        Ty::Record(id)
    }
}
