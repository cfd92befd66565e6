//! Checking derivative rules against their primal's signature.
//!
//! A rule `rule f(x, w; stride) -> y { dx = ...; dw = ... }` is checked on symbolic
//! shapes: the primal's parameters get symbolic dims, `y` and `dy` the primal's result,
//! and every `d<input>` must be assigned once with exactly its input's shape. Because the
//! dims are symbols, a rule that checks here is shape-correct for every instance.

use std::collections::HashMap;

use super::eval::{ArgV, Cx, closest};
use super::names::DefKind;
use super::ty::{ShapeFmt, Ty};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    pub(super) fn check_rule(&mut self, m: usize, r: &RuleDecl) {
        let p = self.p;
        let name = &r.name.name;
        let Some(id) = p
            .lookup(m, name)
            .filter(|id| matches!(p.items[*id].kind, DefKind::Fn | DefKind::ExternFn))
        else {
            let mut d = Diagnostic::error(
                "E0401",
                format!("a derivative rule for `{name}`, which is not a function"),
            )
            .primary(r.name.span, "no function of this name");
            let names = p.visible_names(m);
            if let Some(s) = closest(name, names.iter().map(String::as_str)) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            self.report(d);
            return;
        };
        let Some(Item {
            kind: ItemKind::Fn(f),
            ..
        }) = p.item_ast(id)
        else {
            return;
        };
        let is_tensor = |p: &Param| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            )
        };
        let inputs: Vec<&Param> = f.params.iter().filter(|p| is_tensor(p)).collect();
        if inputs.len() != r.inputs.len() {
            let names: Vec<&str> = inputs.iter().map(|p| p.name.name.as_str()).collect();
            self.report(
                Diagnostic::error(
                    "E0402",
                    format!(
                        "`{name}` has {} tensor input{} ({}), but the rule names {}",
                        inputs.len(),
                        if inputs.len() == 1 { "" } else { "s" },
                        names.join(", "),
                        r.inputs.len()
                    ),
                )
                .primary(
                    r.name
                        .span
                        .to(r.inputs.last().map(|i| i.span).unwrap_or(r.name.span)),
                    "this rule's inputs",
                )
                .secondary(p.items[id].span, "primal declared here"),
            );
            return;
        }
        let mut env = self.rule_env(m);
        let all: Vec<&Param> = f.params.iter().collect();
        self.bind_symbolic(&mut env, &all);
        let args: Vec<ArgV> = f
            .params
            .iter()
            .map(|prm| ArgV {
                name: Some(prm.name.name.clone()),
                ty: self.local_ty(&env, &prm.name.name).unwrap_or(Ty::Err),
                span: prm.span,
            })
            .collect();
        for a in &r.attrs {
            match f.params.iter().find(|p| p.name.name == a.name) {
                Some(prm) if !is_tensor(prm) => {}
                _ => {
                    let attrs: Vec<&str> = f
                        .params
                        .iter()
                        .filter(|p| !is_tensor(p))
                        .map(|p| p.name.name.as_str())
                        .collect();
                    let mut d = Diagnostic::error(
                        "E0403",
                        format!("`{}` is not an attribute of `{name}`", a.name),
                    )
                    .primary(a.span, "unknown attribute");
                    d = if attrs.is_empty() {
                        d.with_help(format!("`{name}` has no attributes"))
                    } else {
                        d.with_help(format!("its attributes are: {}", attrs.join(", ")))
                    };
                    self.report(d);
                }
            }
        }
        let mut input_tys = Vec::new();
        for (local, prm) in r.inputs.iter().zip(&inputs) {
            let t = self.local_ty(&env, &prm.name.name).unwrap_or(Ty::Err);
            self.bind_local(&mut env, &local.name, t.clone(), local.span);
            input_tys.push((local, t));
        }
        let out = match &f.ret {
            Some(t) => self.eval_type(&mut env, t),
            None => self.call_for_rule(id, &args, r.name.span, &mut env),
        };
        if let Some(y) = &r.output {
            self.bind_local(&mut env, &y.name, out.clone(), y.span);
        }
        self.bind_local(&mut env, "dy", out, r.name.span);
        let mut given: HashMap<String, Span> = HashMap::new();
        self.with_collector(|cx| {
            for s in &r.body.stmts {
                match &s.kind {
                    StmtKind::Assign { target: Expr { kind: ExprKind::Name(dn), span: tspan }, op: None, value } => {
                        let v = cx.expr(value, &mut env);
                        let target = dn.strip_prefix('d').and_then(|x| input_tys.iter().find(|(l, _)| l.name == x));
                        let Some((local, want)) = target else {
                            let names: Vec<String> = input_tys.iter().map(|(l, _)| format!("d{}", l.name)).collect();
                            cx.report(
                                Diagnostic::error("E0404", format!("`{dn}` is not the gradient of an input of `{name}`"))
                                    .primary(*tspan, "not an input's gradient")
                                    .with_help(format!("this rule assigns {}", names.join(", "))),
                            );
                            continue;
                        };
                        if let Some(prev) = given.insert(dn.clone(), *tspan) {
                            cx.report(
                                Diagnostic::error("E0205", format!("`{dn}` is assigned twice"))
                                    .primary(*tspan, "assigned again")
                                    .secondary(prev, "first assigned here"),
                            );
                            continue;
                        }
                        if let (Ty::Tensor(da, a, _), Ty::Tensor(db, b, _)) = (want, &v) {
                            if da != db || !cx.shapes_equal(a, b, true) {
                                cx.report(
                                    Diagnostic::error("E0406", format!("`{dn}` must have the shape of `{}`, {}, but this is {}", local.name, ShapeFmt(*da, a), ShapeFmt(*db, b)))
                                        .primary(value.span, format!("this is {}", ShapeFmt(*db, b)))
                                        .secondary(local.span, format!("`{}` is {}", local.name, ShapeFmt(*da, a))),
                                );
                            }
                        } else if !v.is_err() && !want.is_err() {
                            let shown = cx.show(&v);
                            cx.report(
                                Diagnostic::error("E0406", format!("`{dn}` must be a tensor like `{}`, found {shown}", local.name))
                                    .primary(value.span, "here"),
                            );
                        }
                    }
                    StmtKind::Let { .. } => cx.stmt_in_rule(s, &mut env),
                    StmtKind::Error => {}
                    _ => cx.report(
                        Diagnostic::error("E0404", "a rule body binds `let`s and assigns gradients `dx = ...`")
                            .primary(s.span, "not allowed in a rule"),
                    ),
                }
            }
        });
        for (local, t) in &input_tys {
            let needs = matches!(t, Ty::Tensor(dt, _, _) if dt.is_float());
            if needs && !given.contains_key(&format!("d{}", local.name)) {
                self.report(
                    Diagnostic::error(
                        "E0405",
                        format!(
                            "the rule for `{name}` gives no gradient for `{}`",
                            local.name
                        ),
                    )
                    .primary(r.name.span, "in this rule")
                    .secondary(local.span, "this input")
                    .with_help(format!(
                        "assign `d{} = ...`, or `d{} = zeros_like({})` if it truly has none",
                        local.name, local.name, local.name
                    )),
                );
            }
        }
    }
}
