//! Blocks and statements: `let`, assignment (a `state` update becomes an output of the
//! lowered step), loops and `return` (host code only), and a layer's `param` and `state`
//! declarations, which become graph inputs while lowering and are collected for the net
//! that uses the layer (`nets.rs` names them).

use std::collections::HashMap;

use super::nets::duplicate_name;
use super::{Cx, Env, Local};
use crate::check::ty::{DType, Ty};
use crate::diag::Diagnostic;
use crate::ir::Op;
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    pub(super) fn block(&mut self, b: &Block, env: &mut Env) -> Ty {
        env.scopes.push(HashMap::new());
        let mut last = Ty::Unit;
        for (i, s) in b.stmts.iter().enumerate() {
            if i + 1 == b.stmts.len()
                && let StmtKind::Expr(e) = &s.kind
            {
                last = self.expr(e, env);
                continue;
            }
            self.stmt(s, env);
        }
        env.scopes.pop();
        // A block that lost statements to a parse error has no meaningful value.
        if matches!(last, Ty::Unit) && b.stmts.iter().any(|s| matches!(s.kind, StmtKind::Error)) {
            return Ty::Err;
        }
        last
    }

    pub(in crate::check) fn stmt_in_rule(&mut self, s: &Stmt, env: &mut Env) {
        self.stmt(s, env)
    }

    pub(super) fn stmt(&mut self, s: &Stmt, env: &mut Env) {
        match &s.kind {
            StmtKind::Let {
                name,
                ty,
                value,
                mutable,
            } => {
                if *mutable && env.tensor {
                    self.report(
                        Diagnostic::error("E0208", "`var` is host code; tensor code is pure")
                            .primary(s.span, "a mutable binding in tensor code")
                            .with_help("use `let` and a new name for each value"),
                    );
                }
                let v = self.expr(value, env);
                let v = match ty {
                    Some(t) => {
                        let want = self.eval_type(env, t);
                        if let (Ty::Tensor(..), Ty::Tensor(..)) = (&want, &v) {
                            self.expect_result(&want, &v, value.span, Some(t.span), env);
                            v
                        } else if self.expect_assignable(&want, &v, value.span, "this value") {
                            if matches!(want, Ty::Float(_)) {
                                Ty::Float(v.scalar())
                            } else {
                                v
                            }
                        } else {
                            want
                        }
                    }
                    None => v,
                };
                self.facts.binding(self.p, name, &v);
                env.bind(&name.name, v, name.span, *mutable);
            }
            StmtKind::Assign { target, op, value } => self.assign(target, *op, value, s.span, env),
            StmtKind::Param {
                name,
                ty,
                init,
                cond,
            } => self.param_decl(name, ty, init.as_ref(), cond.as_ref(), s.span, env, false),
            StmtKind::State { name, ty, init } => {
                self.param_decl(name, ty, init.as_ref(), None, s.span, env, true)
            }
            StmtKind::For { var, iter, body } => {
                self.host_only(env, s.span, "`for` loops");
                let it = self.expr(iter, env);
                let elem = match it {
                    Ty::Range => Ty::Int(None),
                    Ty::List(t) => *t,
                    Ty::Items(items) => items.first().cloned().unwrap_or(Ty::Err),
                    Ty::Err | Ty::Any => Ty::Err,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error("E0201", format!("cannot iterate over {shown}"))
                                .primary(iter.span, "not a list or range")
                                .with_help("iterate over a range `0..n` or a list"),
                        );
                        Ty::Err
                    }
                };
                env.scopes.push(HashMap::new());
                env.bind(&var.name, elem, var.span, false);
                self.block(body, env);
                env.scopes.pop();
            }
            StmtKind::While { cond, body } => {
                self.host_only(env, s.span, "`while` loops");
                let c = self.expr(cond, env);
                self.expect_bool(&c, cond.span);
                self.block(body, env);
            }
            StmtKind::Return(v) => {
                let got = v.as_ref().map(|e| self.expr(e, env)).unwrap_or(Ty::Unit);
                if let Some(ret) = env.ret.clone() {
                    let span = v.as_ref().map(|e| e.span).unwrap_or(s.span);
                    self.expect_result(&ret, &got, span, None, env);
                }
            }
            StmtKind::Break | StmtKind::Continue => self.host_only(env, s.span, "loop control"),
            StmtKind::Expr(e) => {
                self.expr(e, env);
            }
            StmtKind::Error => {}
        }
    }

    fn host_only(&mut self, env: &Env, span: Span, what: &str) {
        if env.tensor {
            self.report(
                Diagnostic::error("E0208", format!("{what} are host code and cannot appear in tensor code"))
                    .primary(span, "in a tensor function or layer")
                    .with_help("tensor code is a pure expression of its inputs; use `repeat` in a net, or a host `fn`"),
            );
        }
    }

    pub(super) fn expect_bool(&mut self, t: &Ty, span: Span) {
        if !matches!(t, Ty::Bool(_) | Ty::Err) {
            let shown = self.show(t);
            self.report(
                Diagnostic::error(
                    "E0209",
                    format!("a condition must be a bool, found {shown}"),
                )
                .primary(span, "not a bool"),
            );
        }
    }

    fn assign(
        &mut self,
        target: &Expr,
        op: Option<BinOp>,
        value: &Expr,
        span: Span,
        env: &mut Env,
    ) {
        let v = self.expr(value, env);
        match &target.kind {
            ExprKind::Name(n) => {
                let Some(local) = env.get(n).cloned() else {
                    self.expr(target, env);
                    return;
                };
                if env.tensor && !local.state {
                    self.report(
                        Diagnostic::error("E0208", format!("cannot assign to `{n}` in tensor code"))
                            .primary(span, "assignment")
                            .secondary(local.span, "declared here")
                            .with_help("only `state` (such as running statistics) is updated in tensor code; bind a new name with `let`"),
                    );
                    return;
                }
                if !env.tensor && !local.mutable {
                    self.report(
                        Diagnostic::error(
                            "E0206",
                            format!("cannot assign twice to immutable binding `{n}`"),
                        )
                        .primary(target.span, "assigned here")
                        .secondary(local.span, "declared with `let`")
                        .with_help(format!("declare it with `var {n}` to make it mutable")),
                    );
                    return;
                }
                let combined = match op {
                    Some(op) => self.binary(op, &local.ty, &v, target.span, value.span, span, env),
                    None => v,
                };
                if let (Ty::Tensor(_, _, old), Ty::Tensor(_, _, new)) = (&local.ty, &combined) {
                    self.expect_result(&local.ty, &combined, value.span, Some(local.span), env);
                    // A state update becomes an output of the lowered step.
                    if let (true, Some(old), Some(new)) = (local.state, old, new) {
                        self.ir.state_update(*old, *new);
                    }
                } else {
                    self.expect_assignable(&local.ty, &combined, value.span, "the new value");
                }
            }
            ExprKind::Field { .. } | ExprKind::Index { .. } => {
                let t = self.expr(target, env);
                if env.tensor {
                    self.report(
                        Diagnostic::error("E0208", "cannot assign into a value in tensor code")
                            .primary(span, "assignment"),
                    );
                } else {
                    self.expect_assignable(&t, &v, value.span, "the new value");
                }
            }
            _ => {
                self.report(
                    Diagnostic::error("E0206", "cannot assign to this expression")
                        .primary(target.span, "not a variable, field or element"),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn param_decl(
        &mut self,
        name: &Ident,
        ty: &TypeExpr,
        init: Option<&Expr>,
        cond: Option<&Expr>,
        span: Span,
        env: &mut Env,
        state: bool,
    ) {
        let what = if state { "state" } else { "param" };
        if !env.layer {
            self.report(
                Diagnostic::error("E0208", format!("`{what}` belongs in a layer body"))
                    .primary(span, "outside a layer")
                    .with_help("declare parameters inside `layer name(...)(x: ...) { ... }`"),
            );
        }
        let mut t = self.eval_type(env, ty);
        if let Some(i) = init {
            self.expr(i, env);
        }
        let present = match cond {
            Some(c) => {
                let v = self.expr(c, env);
                self.expect_bool(&v, c.span);
                !matches!(v, Ty::Bool(Some(false)))
            }
            None => true,
        };
        if let Ty::Tensor(_, dims, _) = &t {
            if env.strict && present {
                if let Some(bad) = dims.iter().find(|d| d.as_const().is_none()) {
                    self.report(
                        Diagnostic::error("E0310", format!("the shape of {what} `{}` must be known, but a dim is `{bad}`", name.name))
                            .primary(ty.span, "this shape depends on the batch or an unknown value")
                            .with_help("parameter shapes may depend on layer arguments and input dims other than the batch `B`"),
                    );
                } else {
                    // While lowering, a parameter is a graph input; it is named by its place
                    // in the net when the net is done (see `check_net`).
                    let dims = dims.clone();
                    let kind = if state {
                        crate::ir::InputKind::State
                    } else {
                        crate::ir::InputKind::Param
                    };
                    let provisional = format!("{}#{}", name.name, self.ir.nodes().unwrap_or(0));
                    let dt = if let Ty::Tensor(dt, ..) = &t {
                        *dt
                    } else {
                        DType::F32
                    };
                    let v = self.emit(
                        Op::Input {
                            name: provisional,
                            kind,
                        },
                        &[],
                        dt,
                        &dims,
                    );
                    // Only a built input has an initializer to record (and evaluating its
                    // arguments again when only checking would report their errors twice).
                    if let (Some(v), Some(i)) = (v, init) {
                        let spec = self.init_spec(i, env);
                        self.ir.init(v, spec);
                    }
                    t = Ty::Tensor(dt, dims.clone(), v);
                    let added = match self.collectors.last_mut() {
                        Some(c) => c.add(state, name.name.clone(), dims, v),
                        None => Ok(()),
                    };
                    if let Err(taken) = added {
                        self.report(duplicate_name(&taken, name.span));
                    }
                }
            }
        } else if !t.is_err() {
            let shown = self.show(&t);
            self.report(
                Diagnostic::error("E0201", format!("a {what} must be a tensor, found {shown}"))
                    .primary(ty.span, "not a tensor type"),
            );
        }
        if let Some(s) = env.scopes.last_mut() {
            s.insert(
                name.name.clone(),
                Local {
                    ty: t,
                    span: name.span,
                    mutable: false,
                    state,
                },
            );
        }
    }

    /// A parameter initializer's name and argument values (`he_normal(fan_in: 784)`), with
    /// the initializer's literal defaults for arguments not given.
    fn init_spec(&mut self, e: &Expr, env: &mut Env) -> crate::check::lower::InitSpec {
        let (kind, args) = match &e.kind {
            ExprKind::Name(k) => (k.clone(), &[][..]),
            ExprKind::Call { callee, args } => match &callee.kind {
                ExprKind::Name(k) => (k.clone(), args.as_slice()),
                _ => (String::new(), &[][..]),
            },
            _ => (String::new(), &[][..]),
        };
        let decl = self.p.lookup(env.module, &kind).and_then(|id| {
            match self.p.item_ast(id).map(|i| &i.kind) {
                Some(ItemKind::Fn(f)) => Some(f.params.clone()),
                _ => None,
            }
        });
        let params = decl.unwrap_or_default();
        let mut out = Vec::new();
        for (i, a) in args.iter().enumerate() {
            let name = a
                .name
                .as_ref()
                .map(|n| n.name.clone())
                .or_else(|| params.get(i).map(|p| p.name.name.clone()))
                .unwrap_or_default();
            if let Some(v) = self.expr(&a.value, env).scalar() {
                out.push((name, v));
            }
        }
        for p in &params {
            if out.iter().any(|(n, _)| *n == p.name.name) {
                continue;
            }
            match p.default.as_ref().map(|d| &d.kind) {
                Some(ExprKind::Float(x)) => out.push((p.name.name.clone(), *x)),
                Some(ExprKind::Int(n)) => out.push((p.name.name.clone(), *n as f64)),
                _ => {}
            }
        }
        crate::check::lower::InitSpec { kind, args: out }
    }
}
