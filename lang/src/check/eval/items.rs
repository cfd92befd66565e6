//! Items: the walk over each module's items, and the generic checks.
//!
//! A function or layer is checked here once on its own, with stand-in values for its
//! parameters (`bind_symbolic`: dims become variables named after them), so only errors
//! that hold whatever the arguments are reported; each concrete use is checked again
//! where it is called (`instantiate.rs`). Records' fields and the one-rule-per-function
//! check across modules are here too.

use std::collections::HashMap;

use super::{Collector, Cx, Env, NetInfo};
use crate::check::dim::Dim;
use crate::check::names::ItemId;
use crate::check::ty::{DType, Ty};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    pub(super) fn check_module(&mut self, m: usize, root: bool, nets: &mut Vec<NetInfo>) {
        let p = self.p;
        let module = &p.modules[m];
        let mut env = Env::new(m, false, false);
        for (index, item) in module.ast.items.iter().enumerate() {
            match &item.kind {
                ItemKind::Fn(f) => self.check_fn_generic(m, f),
                ItemKind::Layer(l) => self.check_layer_generic(m, l),
                ItemKind::Net(n) => {
                    let id = p
                        .items
                        .iter()
                        .position(|d| d.module == m && d.index == index);
                    let (info, _) = self.check_net(m, n);
                    if root && id.is_some() {
                        nets.push(info);
                    }
                }
                ItemKind::Rule(r) => self.check_rule(m, r),
                ItemKind::Record(r) => self.check_record(m, r),
                ItemKind::Stmt(s) => self.stmt(s, &mut env),
                ItemKind::Import(_) | ItemKind::ExternType(_) | ItemKind::Error => {}
            }
        }
    }

    /// A function has at most one derivative rule in the whole program (rules in one
    /// module are compared when the module's items are registered).
    pub(super) fn duplicate_rules(&mut self) {
        let p = self.p;
        let mut first: HashMap<ItemId, (usize, Span)> = HashMap::new();
        // The standard library's rules come first: a user's second rule is the one flagged.
        let mut order: Vec<(usize, &crate::check::names::ModuleData)> =
            p.modules.iter().enumerate().collect();
        order.sort_by_key(|(_, m)| !m.is_std);
        for (m, module) in order {
            for r in &module.rules {
                let def = &p.items[*r];
                let Some(primal) = p.lookup(m, &def.name) else {
                    continue;
                };
                match first.get(&primal) {
                    Some((pm, prev)) if *pm != m => {
                        self.report(
                            Diagnostic::error("E0407", format!("a second derivative rule for `{}`", def.name))
                                .primary(def.span, "second rule")
                                .secondary(*prev, "the rule in use is here")
                                .with_help("a function has exactly one rule: remove this one, or define a new function with its own rule"),
                        );
                    }
                    Some(_) => {}
                    None => {
                        first.insert(primal, (m, def.span));
                    }
                }
            }
        }
    }

    fn check_record(&mut self, m: usize, r: &RecordDecl) {
        let mut env = Env::new(m, false, false);
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for f in &r.fields {
            if let Some(prev) = seen.insert(&f.name.name, f.name.span) {
                self.report(
                    Diagnostic::error(
                        "E0103",
                        format!("field `{}` is declared twice", f.name.name),
                    )
                    .primary(f.name.span, "declared again here")
                    .secondary(prev, "first declared here"),
                );
            }
            let declared = f.ty.as_ref().map(|t| self.eval_type(&mut env, t));
            if let Some(t) = declared.as_ref()
                && let Ty::Record(id) = t
                && self.p.items[*id].name == r.name.name
            {
                self.report(
                    Diagnostic::error("E0104", format!("record `{}` contains itself", r.name.name))
                        .primary(f.span, "this field makes the record infinitely large")
                        .with_help("use a list `[T]` for a recursive structure"),
                );
            }
            if let Some(d) = &f.default {
                let v = self.expr(d, &mut env);
                if let Some(t) = declared {
                    self.expect_assignable(&t, &v, d.span, "this default");
                }
            }
        }
    }

    pub(super) fn is_tensor_fn(&self, f: &FnDecl) -> bool {
        f.params.iter().chain(std::iter::empty()).any(|p| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            )
        }) || matches!(
            f.ret.as_ref().map(|t| &t.kind),
            Some(TypeKind::Tensor { .. })
        )
    }

    fn check_fn_generic(&mut self, m: usize, f: &FnDecl) {
        let tensor = self.is_tensor_fn(f);
        let mut env = Env::new(m, tensor, false);
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in &f.params {
            if let Some(prev) = seen.insert(&p.name.name, p.name.span) {
                self.report(
                    Diagnostic::error(
                        "E0103",
                        format!("parameter `{}` is declared twice", p.name.name),
                    )
                    .primary(p.name.span, "declared again here")
                    .secondary(prev, "first declared here"),
                );
            }
        }
        let params: Vec<&Param> = f.params.iter().collect();
        self.bind_symbolic(&mut env, &params);
        for w in &f.wheres {
            self.expr(w, &mut env);
        }
        let Some(body) = &f.body else {
            if let Some(t) = &f.ret {
                self.eval_type(&mut env, t);
            }
            return;
        };
        let ret = f.ret.as_ref().map(|t| self.eval_type(&mut env, t));
        env.ret = ret.clone();
        let got = self.block(body, &mut env);
        if let Some(ret) = ret {
            let span = body.tail().map(|e| e.span).unwrap_or(body.span);
            self.expect_result(&ret, &got, span, f.ret.as_ref().map(|t| t.span), &env);
        }
    }

    fn check_layer_generic(&mut self, m: usize, l: &LayerDecl) {
        let mut env = Env::new(m, true, false);
        env.layer = true;
        let params: Vec<&Param> = l.args.iter().chain([&l.input]).collect();
        self.bind_symbolic(&mut env, &params);
        for w in &l.wheres {
            self.expr(w, &mut env);
        }
        self.collectors.push(Collector::default());
        let outer = std::mem::replace(&mut self.generic, true);
        let out = self.block(&l.body, &mut env);
        self.generic = outer;
        self.collectors.pop();
        if let Some(t) = &l.ret {
            let ret = self.eval_type(&mut env, t);
            let span = l.body.tail().map(|e| e.span).unwrap_or(l.body.span);
            self.expect_result(&ret, &out, span, Some(t.span), &env);
        }
    }

    /// Binds stand-in values for parameters: first the non-tensor ones, then every dim
    /// variable of the tensor ones, then the tensors (whose dims may be expressions of both).
    pub(in crate::check) fn bind_symbolic(&mut self, env: &mut Env, params: &[&Param]) {
        let is_tensor = |p: &Param| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            )
        };
        for p in params.iter().filter(|p| !is_tensor(p)) {
            let v = self.symbolic_value(env, p);
            env.bind(&p.name.name, v, p.name.span, false);
        }
        for p in params.iter().filter(|p| is_tensor(p)) {
            if let Some(TypeKind::Tensor { dims, .. }) = p.ty.as_ref().map(|t| &t.kind) {
                for d in dims {
                    match &d.kind {
                        DimKind::Name(v) if env.get(v).is_none() => {
                            env.bind(v, Ty::Int(Some(Dim::sym(v))), d.span, false)
                        }
                        DimKind::Pack(s) if !env.packs.contains_key(s) => {
                            env.packs
                                .insert(s.clone(), vec![Dim::sym(&format!("{s}.0"))]);
                        }
                        _ => {}
                    }
                }
            }
        }
        for p in params.iter().filter(|p| is_tensor(p)) {
            let v = self.symbolic_value(env, p);
            env.bind(&p.name.name, v, p.name.span, false);
        }
    }

    /// A stand-in value for a parameter when checking a definition on its own: dims
    /// become variables named after the parameter.
    fn symbolic_value(&mut self, env: &mut Env, p: &Param) -> Ty {
        let Some(t) = &p.ty else {
            return match &p.default {
                Some(d) => {
                    let v = self.expr(d, env);
                    match v {
                        Ty::Int(_) => Ty::Int(Some(Dim::sym(&p.name.name))),
                        other => other,
                    }
                }
                None => Ty::Err,
            };
        };
        match &t.kind {
            TypeKind::Named(n) if (n.name == "int" || n.name == "dim") && !env.tensor => {
                Ty::Int(None)
            }
            TypeKind::Named(n) if n.name == "int" || n.name == "dim" => {
                Ty::Int(Some(Dim::sym(&p.name.name)))
            }
            // Axes are structure, not sizes: a generic check uses the default axis (and
            // the default of an `any`, which is how the primitives take axis lists).
            TypeKind::Named(n) if n.name == "axis" || (n.name == "any" && p.default.is_some()) => {
                match &p.default {
                    Some(d) => self.expr(d, env),
                    None => Ty::int(0),
                }
            }
            TypeKind::Named(n) if n.name == "fn" => Ty::Err,
            TypeKind::Named(n) if n.name == "bool" => Ty::Bool(None),
            TypeKind::Tensor { dtype, dims } => {
                let Some(dt) = DType::parse(&dtype.name) else {
                    return self.eval_type(env, t);
                };
                let mut out = Vec::new();
                for d in dims {
                    match &d.kind {
                        DimKind::Name(v) if env.get(v).is_none() => {
                            let sym = Dim::sym(v);
                            env.bind(v, Ty::Int(Some(sym.clone())), d.span, false);
                            out.push(sym);
                        }
                        DimKind::Pack(s) => {
                            let dims = env
                                .packs
                                .entry(s.clone())
                                .or_insert_with(|| vec![Dim::sym(&format!("{s}.0"))])
                                .clone();
                            out.extend(dims);
                        }
                        _ => match self.eval_dim(env, d) {
                            Some(x) => out.push(x),
                            None => return Ty::Err,
                        },
                    }
                }
                Ty::Tensor(dt, out, None)
            }
            _ => self.eval_type(env, t),
        }
    }
}
