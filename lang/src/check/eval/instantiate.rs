//! Instantiation: a tensor function or layer is expanded at each distinct use, the way a
//! template is. A call binds the parameters (`calls.rs`), checks the `where` conditions,
//! and evaluates the body in the callee's environment, once per distinct instance: the
//! cache is keyed by [`InstKey`] (the item and its parameters' values). Instantiation
//! also detects definitions that use themselves, and adds the parameters, state and
//! multiply-adds an instance collects to the enclosing collector. Primitives without a
//! body go to `prims.rs` for their shapes, work and IR.

use super::{ArgV, Collector, Cx, Env, Inst, PendingLabel};
use crate::check::dim::Dim;
use crate::check::names::ItemId;
use crate::check::prims;
use crate::check::ty::{LayerValue, Ty, Val};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::*;

/// What makes two uses of a tensor function or layer the same instance, so that the second
/// is not checked again: the item, whether it is checked strictly, and the value bound to
/// each of its parameters (in order; a layer's input last).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct InstKey {
    item: ItemId,
    strict: bool,
    params: Vec<Option<Bound>>,
}

/// A parameter's value in an [`InstKey`], told apart as the checker tells values apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Bound {
    /// A function or layer passed as a value.
    Item(ItemId),
    /// A configured layer: the layer and its arguments (name if given, value as shown).
    Layer(ItemId, Vec<(Option<String>, String)>),
    /// Any other value, as [`show`](super::show) writes it: a tensor by its shape, an int
    /// by its value when known. A float or a bool is written without its value, so uses
    /// that differ only there are one instance.
    Shown(String),
}

impl Cx<'_> {
    pub(super) fn call_fn(&mut self, id: ItemId, args: &[ArgV], span: Span, env: &mut Env) -> Ty {
        let p = self.p;
        let Some(Item {
            kind: ItemKind::Fn(f),
            ..
        }) = p.item_ast(id)
        else {
            return Ty::Err;
        };
        let name = f.name.name.clone();
        let Some(bound) = self.bind_args(&name, &f.params, args, span) else {
            return self.fallback_result(f, env);
        };
        let module = p.items[id].module;
        let tensor = self.is_tensor_fn(f);
        // A tensor argument already reported as wrong: the call's shapes cannot be known,
        // and checking them would only report the same error again.
        let poisoned = f.params.iter().zip(&bound).any(|(p, a)| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            ) && a.as_ref().is_some_and(|a| matches!(a.ty, Ty::Err))
        });
        if poisoned {
            return self.fallback_result(f, env);
        }
        if f.body.is_none()
            && p.modules[module].is_std
            && let Some(t) = prims::apply(self, &name, &f.params, &bound, span, env)
        {
            return t;
        }
        let mut callee = Env::new(module, tensor || env.tensor, env.strict);
        let ok = self.bind_params(&name, &mut callee, &f.params, &bound, None, span);
        if !ok || !self.where_clauses(&name, &f.wheres, &mut callee, span) {
            return Ty::Err;
        }
        let declared = f.ret.as_ref().map(|t| self.eval_type(&mut callee, t));
        match (&f.body, tensor) {
            (Some(body), true) => {
                let key = self.inst_key(id, &callee, f.params.iter());
                // Where the call's region of the graph starts, if it is being built.
                let start = self.ir.nodes();
                let inputs: Vec<Val> = bound
                    .iter()
                    .flatten()
                    .filter_map(|a| match &a.ty {
                        Ty::Tensor(_, _, v) => Some(*v),
                        _ => None,
                    })
                    .collect();
                let out = self.instantiate(key, span, None, |cx| {
                    let got = cx.block(body, &mut callee);
                    if let Some(want) = &declared {
                        let tail = body.tail().map(|e| e.span).unwrap_or(body.span);
                        cx.expect_result(want, &got, tail, f.ret.as_ref().map(|t| t.span), &callee);
                        with_value(want, &got)
                    } else {
                        got
                    }
                });
                let attrs: Vec<(String, Ty)> = f
                    .params
                    .iter()
                    .filter_map(|p| {
                        callee
                            .get(&p.name.name)
                            .map(|l| (p.name.name.clone(), l.ty.clone()))
                    })
                    .collect();
                self.mark_composite(&name, start, &inputs, &attrs, &out);
                out
            }
            _ => {
                let mut out = declared.unwrap_or(Ty::Unit);
                if f.body.is_none() {
                    if let Some(m) = prims::count_macs(&name, &f.params, &bound, &out) {
                        self.add_macs(m);
                    }
                    if self.lowering() {
                        let attr = |n: &str| callee.get(n).map(|l| l.ty.clone());
                        let v = prims::lower_extern(self, &name, &f.params, &bound, &attr, &out);
                        if let Ty::Tensor(_, _, slot) = &mut out {
                            *slot = v;
                        }
                    }
                }
                out
            }
        }
    }

    fn fallback_result(&mut self, f: &FnDecl, env: &Env) -> Ty {
        match &f.ret {
            Some(TypeExpr {
                kind: TypeKind::Named(n),
                ..
            }) if !matches!(n.name.as_str(), "int" | "dim") => {
                let mut e = Env::new(env.module, false, false);
                let t = f
                    .ret
                    .as_ref()
                    .map(|t| self.eval_type(&mut e, t))
                    .unwrap_or(Ty::Err);
                if matches!(
                    t,
                    Ty::Record(_) | Ty::Opaque(_) | Ty::Float(_) | Ty::Str | Ty::Bool(_)
                ) {
                    t
                } else {
                    Ty::Err
                }
            }
            _ => Ty::Err,
        }
    }

    /// The instance of item `id` that the parameters bound in `env` make.
    fn inst_key<'p>(
        &self,
        id: ItemId,
        env: &Env,
        params: impl Iterator<Item = &'p Param>,
    ) -> InstKey {
        let value = |t: &Ty| match t {
            Ty::Item(id) => Bound::Item(*id),
            Ty::Layer(lv) => Bound::Layer(
                lv.item,
                lv.args
                    .iter()
                    .map(|(name, t, _)| (name.clone(), self.show(t)))
                    .collect(),
            ),
            t => Bound::Shown(self.show(t)),
        };
        InstKey {
            item: id,
            strict: env.strict,
            params: params
                .map(|p| env.get(&p.name.name).map(|l| value(&l.ty)))
                .collect(),
        }
    }

    /// Runs `body` as an instantiation of `key`'s item, with cycle detection and a cache,
    /// and adds the parameters and work it collects to the enclosing collector.
    pub(super) fn instantiate(
        &mut self,
        key: InstKey,
        span: Span,
        label: Option<PendingLabel>,
        body: impl FnOnce(&mut Self) -> Ty,
    ) -> Ty {
        let id = key.item;
        let inst = match self.cache.get(&key) {
            Some(i) => i.clone(),
            None => {
                if self.stack.contains(&id) {
                    let name = self.p.items[id].name.clone();
                    let chain: Vec<String> = self
                        .stack
                        .iter()
                        .skip_while(|s| **s != id)
                        .map(|s| self.p.items[*s].name.clone())
                        .collect();
                    let mut members: Vec<ItemId> = self
                        .stack
                        .iter()
                        .skip_while(|s| **s != id)
                        .copied()
                        .collect();
                    members.sort();
                    if !self.cycles.insert(members) {
                        return Ty::Err;
                    }
                    self.report(
                        Diagnostic::error("E0104", format!("`{name}` is defined in terms of itself: {} -> {name}", chain.join(" -> ")))
                            .primary(span, "this use closes the cycle")
                            .secondary(self.p.items[id].span, "defined here")
                            .with_help("tensor code is expanded at compile time, so a layer or tensor function cannot use itself"),
                    );
                    return Ty::Err;
                }
                if self.stack.len() > 64 {
                    return Ty::Err;
                }
                self.stack.push(id);
                self.use_sites.push(span);
                self.collectors.push(Collector::default());
                let out = body(self);
                let c = self.collectors.pop().unwrap_or_default();
                self.use_sites.pop();
                self.stack.pop();
                let inst = Inst {
                    out,
                    params: c.params,
                    states: c.states,
                    macs: c.macs,
                };
                if !self.lowering() {
                    self.cache.insert(key, inst.clone());
                }
                inst
            }
        };
        let name = self.p.items[id].name.clone();
        let has_names = !(inst.params.is_empty() && inst.states.is_empty());
        let (prefix, at) = match label {
            Some(l) => {
                if let Some(parent) = self.collectors.last_mut() {
                    parent.labelled |= has_names;
                }
                (l.name, l.span)
            }
            // An unlabelled sublayer is `{layer}{k}`, counting those with names.
            None => match self.collectors.last_mut() {
                Some(parent) if has_names => {
                    parent.sub += 1;
                    (format!("{name}{}", parent.sub - 1), span)
                }
                _ => (String::new(), span),
            },
        };
        let c = Collector {
            params: inst.params.clone(),
            states: inst.states.clone(),
            macs: inst.macs.clone(),
            ..Collector::default()
        };
        self.merge(c, &prefix, at);
        inst.out
    }

    pub(in crate::check) fn add_macs(&mut self, m: Dim) {
        if let Some(c) = self.collectors.last_mut() {
            c.macs = c.macs.saturating_add(&m);
        }
    }

    /// Applies a configured layer to its input.
    pub(super) fn apply_layer(
        &mut self,
        lv: &LayerValue,
        input: Ty,
        origin: Span,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        let p = self.p;
        let Some(Item {
            kind: ItemKind::Layer(l),
            ..
        }) = p.item_ast(lv.item)
        else {
            return Ty::Err;
        };
        // A label on this application (`|> conv1: conv(64, 3)`) names its module.
        let label = match &self.label {
            Some(pending) if pending.target == span => self.label.take(),
            _ => None,
        };
        let name = l.name.name.clone();
        let args: Vec<ArgV> = lv
            .args
            .iter()
            .map(|(n, t, s)| ArgV {
                name: n.clone(),
                ty: t.clone(),
                span: *s,
            })
            .collect();
        let Some(bound) = self.bind_args(&name, &l.args, &args, span) else {
            return Ty::Err;
        };
        let mut callee = Env::new(p.items[lv.item].module, true, env.strict);
        callee.layer = true;
        let input = Some((&l.input, input, origin));
        let ok = self.bind_params(&name, &mut callee, &l.args, &bound, input, span);
        if !ok || !self.where_clauses(&name, &l.wheres, &mut callee, span) {
            return Ty::Err;
        }
        let key = self.inst_key(lv.item, &callee, l.args.iter().chain([&l.input]));
        let declared = l.ret.as_ref().map(|t| self.eval_type(&mut callee, t));
        self.instantiate(key, span, label, |cx| {
            let got = match cx.block(&l.body, &mut callee) {
                Ty::Unit => Ty::Err,
                t => t,
            };
            match declared {
                Some(want) => {
                    let tail = l.body.tail().map(|e| e.span).unwrap_or(l.body.span);
                    cx.expect_result(&want, &got, tail, l.ret.as_ref().map(|t| t.span), &callee);
                    if got.is_err() {
                        got
                    } else {
                        with_value(&want, &got)
                    }
                }
                None => got,
            }
        })
    }
}

/// The declared type, carrying the IR value computed for it.
fn with_value(want: &Ty, got: &Ty) -> Ty {
    match (want, got) {
        (Ty::Tensor(dt, d, _), Ty::Tensor(_, _, v)) => Ty::Tensor(*dt, d.clone(), *v),
        _ => want.clone(),
    }
}
