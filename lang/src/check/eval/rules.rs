//! Derivative rules in the walk: instantiating a rule at concrete values while lowering
//! (for AD, through `lower::apply_rule`), and the small entry points `check/rules.rs`
//! uses to check a rule on symbolic shapes.

use std::collections::HashMap;

use super::{ArgV, Collector, Cx, Env};
use crate::check::names::ItemId;
use crate::check::ty::{Ty, Val};
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    /// Instantiates the rule of `primal` at concrete tensors (while lowering): binds the
    /// primal's parameters to `inputs` (tensor parameters, in order) and `attrs`, the
    /// rule's names to them, `dy` to the cotangent, and evaluates the rule's body. Returns
    /// the gradient of each tensor input, `None` where the rule gives none.
    pub(in crate::check) fn instantiate_rule(
        &mut self,
        primal: &str,
        inputs: &[Ty],
        attrs: &[(String, Ty)],
        y: Ty,
        dy: Ty,
    ) -> Result<Vec<Option<Val>>, String> {
        let p = self.p;
        let rid = self
            .rule_for(primal)
            .ok_or_else(|| format!("no derivative rule for `{primal}`"))?;
        let m = p.items[rid].module;
        let Some(Item {
            kind: ItemKind::Rule(rule),
            ..
        }) = p.item_ast(rid)
        else {
            return Err("not a rule".into());
        };
        let fid = p
            .lookup(m, primal)
            .ok_or_else(|| format!("no function `{primal}`"))?;
        let Some(Item {
            kind: ItemKind::Fn(f),
            ..
        }) = p.item_ast(fid)
        else {
            return Err(format!("`{primal}` is not a function"));
        };
        let span = p.items[rid].span;
        // The primal's parameters, as a call would give them: tensors from `inputs` in
        // order, attributes by name, the rest left to their defaults.
        let mut tensors = inputs.iter();
        let mut given = Vec::with_capacity(f.params.len());
        for prm in &f.params {
            let is_tensor = matches!(
                prm.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            );
            let v = if is_tensor {
                Some(
                    tensors
                        .next()
                        .cloned()
                        .ok_or("too few inputs for the rule")?,
                )
            } else if let Some((_, t)) = attrs.iter().find(|(n, _)| *n == prm.name.name) {
                Some(t.clone())
            } else if prm.default.is_some() {
                None
            } else {
                return Err(format!(
                    "attribute `{}` of `{primal}` is not given",
                    prm.name.name
                ));
            };
            given.push(v.map(|ty| ArgV {
                name: None,
                ty,
                span,
            }));
        }
        let mut env = Env::new(m, true, true);
        // A value that does not fit is reported like any error, and then the rule does not
        // apply (found below, with the body's errors).
        self.bind_params(primal, &mut env, &f.params, &given, None, span);
        for (local, t) in rule.inputs.iter().zip(inputs) {
            env.bind(&local.name, t.clone(), local.span, false);
        }
        if let Some(yn) = &rule.output {
            env.bind(&yn.name, y, yn.span, false);
        }
        env.bind("dy", dy, span, false);
        let mut grads: HashMap<String, Ty> = HashMap::new();
        self.collectors.push(Collector::default());
        for s in &rule.body.stmts {
            match &s.kind {
                StmtKind::Assign {
                    target:
                        Expr {
                            kind: ExprKind::Name(dn),
                            ..
                        },
                    op: None,
                    value,
                } => {
                    let v = self.expr(value, &mut env);
                    grads.insert(dn.clone(), v);
                }
                _ => self.stmt(s, &mut env),
            }
        }
        self.collectors.pop();
        if let Some(d) = self.diags.iter().find(|d| d.is_error()) {
            return Err(format!(
                "the rule for `{primal}` does not apply here: {}",
                d.message
            ));
        }
        Ok(rule
            .inputs
            .iter()
            .map(|l| match grads.get(&format!("d{}", l.name)) {
                Some(Ty::Tensor(_, _, v)) => Some(*v),
                _ => None,
            })
            .collect())
    }

    pub(in crate::check) fn rule_env(&mut self, module: usize) -> Env {
        Env::new(module, true, true)
    }

    pub(in crate::check) fn bind_local(&mut self, env: &mut Env, name: &str, ty: Ty, span: Span) {
        env.bind(name, ty, span, false);
    }

    pub(in crate::check) fn local_ty(&self, env: &Env, name: &str) -> Option<Ty> {
        env.get(name).map(|l| l.ty.clone())
    }

    pub(in crate::check) fn call_for_rule(
        &mut self,
        id: ItemId,
        args: &[ArgV],
        span: Span,
        env: &mut Env,
    ) -> Ty {
        self.collectors.push(Collector::default());
        let out = self.call_fn(id, args, span, env);
        self.collectors.pop();
        out
    }

    pub(in crate::check) fn with_collector<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.collectors.push(Collector::default());
        let out = f(self);
        self.collectors.pop();
        out
    }
}
