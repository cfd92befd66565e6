//! Nets and their stages: a net's input gets the batch dim (symbolic `B`, or the batch
//! being lowered for), each stage is applied to the running value, and each stage's
//! output shape, parameters (with their structural names, `layers.1.w`), state and
//! multiply-adds are collected for `nabla info`, inlay hints and lowering.

use super::{Collector, Cx, Env, NetInfo, StageInfo};
use crate::check::dim::Dim;
use crate::check::ty::{Ty, Val};
use crate::diag::Diagnostic;
use crate::ir::Op;
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    /// Checks (and, when lowering, lowers) a net: its info, and the value of its last
    /// stage (which carries the net's output while lowering).
    pub(in crate::check) fn check_net(&mut self, m: usize, n: &NetDecl) -> (NetInfo, Ty) {
        let mut env = Env::new(m, true, true);
        let batch = match self.ir.batch() {
            Some(b) => Dim::konst(b),
            None => Dim::sym("B"),
        };
        let with_batch = |cx: &mut Self, env: &mut Env, t: &TypeExpr| -> Ty {
            match cx.eval_type(env, t) {
                Ty::Tensor(dt, mut dims, _) => {
                    dims.insert(0, batch.clone());
                    Ty::Tensor(dt, dims, None)
                }
                Ty::Err => Ty::Err,
                other => {
                    let shown = cx.show(&other);
                    cx.report(
                        Diagnostic::error(
                            "E0201",
                            format!("a net's input and output are tensors, found {shown}"),
                        )
                        .primary(t.span, "not a tensor type"),
                    );
                    Ty::Err
                }
            }
        };
        let input = match with_batch(self, &mut env, &n.input) {
            Ty::Tensor(dt, mut dims, _) => {
                if let Some(shape) = self.ir.input_shape() {
                    dims.truncate(1);
                    dims.extend(shape.iter().map(|d| Dim::konst(*d as i64)));
                }
                let v = self.emit(
                    Op::Input {
                        name: "x".into(),
                        kind: crate::ir::InputKind::Data,
                    },
                    &[],
                    dt,
                    &dims,
                );
                Ty::Tensor(dt, dims, v)
            }
            other => other,
        };
        let output = with_batch(self, &mut env, &n.output);
        let mut info = NetInfo {
            name: n.name.name.clone(),
            span: n.name.span,
            input: self.show(&input),
            output: self.show(&output),
            stages: vec![],
            params: 0,
            state: 0,
            macs: 0,
            param_names: vec![],
            ok: true,
        };
        let mut x = input;
        let mut origin = n.input.span;
        let mut names = Vec::new();
        for (i, stage) in n.stages.iter().enumerate() {
            let label = stage
                .label
                .as_ref()
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("layers.{i}"));
            self.collectors.push(Collector::default());
            x = self.stage(stage, x, origin, &mut env);
            let c = strip_single(self.collectors.pop().unwrap_or_default());
            let count = |list: &[(String, Vec<Dim>, Val)]| {
                list.iter()
                    .map(|(_, d, _)| per_example(&numel(d)))
                    .sum::<u64>()
            };
            let (params, state) = (count(&c.params), count(&c.states));
            for (pn, d, _) in &c.params {
                names.push((
                    format!("{label}.{pn}"),
                    d.iter()
                        .map(|x| x.as_const().unwrap_or(0).max(0) as u64)
                        .collect(),
                ));
            }
            self.name_inputs(&label, &c.params, &c.states);
            let macs = per_example(&c.macs);
            info.params += params;
            info.state += state;
            info.macs += macs;
            info.stages.push(StageInfo {
                span: stage.span,
                output: self.show(&x),
                params,
                state,
                macs,
            });
            origin = stage.span;
        }
        info.param_names = names;
        match (&x, &output) {
            (Ty::Err, _) | (_, Ty::Err) => info.ok = false,
            (Ty::Tensor(da, a, _), Ty::Tensor(db, b, _))
                if da == db && self.shapes_equal(a, b, true) => {}
            _ => {
                info.ok = false;
                let (got, want) = (self.show(&x), self.show(&output));
                let mut d = Diagnostic::error(
                    "E0308",
                    format!(
                        "`{}` must output {want}, but its last stage gives {got}",
                        n.name.name
                    ),
                )
                .primary(origin, format!("this gives {got}"))
                .secondary(n.output.span, "declared output");
                if let (Ty::Tensor(_, a, _), Ty::Tensor(_, b, _)) = (&x, &output) {
                    if a.len() > b.len() && b.len() == 2 {
                        d = d.with_help(
                            "end with `global_avg_pool` or `flatten` and a `dense` layer",
                        );
                    } else if a.len() == b.len() {
                        d = d.with_help(format!(
                            "end with `dense({})`",
                            b.last().map(|d| d.to_string()).unwrap_or_default()
                        ));
                    }
                }
                self.report(d);
            }
        }
        (info, x)
    }

    fn stage(&mut self, s: &Stage, x: Ty, origin: Span, env: &mut Env) -> Ty {
        match &s.kind {
            StageKind::Apply(e) => self.apply(e, x, origin, env),
            StageKind::Repeat { count, body } => {
                let n = match self.expr(count, env) {
                    Ty::Int(Some(d)) => match d.as_const() {
                        Some(n) if n >= 0 => n,
                        _ => {
                            self.report(
                                Diagnostic::error(
                                    "E0310",
                                    format!("`repeat` needs a known non-negative count, found {d}"),
                                )
                                .primary(count.span, "here"),
                            );
                            return Ty::Err;
                        }
                    },
                    Ty::Err => return Ty::Err,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error(
                                "E0201",
                                format!("`repeat` needs an int count, found {shown}"),
                            )
                            .primary(count.span, "here"),
                        );
                        return Ty::Err;
                    }
                };
                let mut x = x;
                let mut origin = origin;
                for r in 0..n {
                    for (j, st) in body.iter().enumerate() {
                        if let Some(c) = self.collectors.last_mut() {
                            c.sub = 0;
                        }
                        self.collectors.push(Collector::default());
                        x = self.stage(st, x, origin, env);
                        let c = strip_single(self.collectors.pop().unwrap_or_default());
                        let prefix = if body.len() == 1 {
                            format!("{r}")
                        } else {
                            format!("{r}.{j}")
                        };
                        if let Some(parent) = self.collectors.last_mut() {
                            parent.params.extend(
                                c.params
                                    .into_iter()
                                    .map(|(n, d, v)| (format!("{prefix}.{n}"), d, v)),
                            );
                            parent.states.extend(
                                c.states
                                    .into_iter()
                                    .map(|(n, d, v)| (format!("{prefix}.{n}"), d, v)),
                            );
                            parent.macs = parent.macs.saturating_add(&c.macs);
                        }
                        origin = st.span;
                    }
                }
                x
            }
            StageKind::Error => Ty::Err,
        }
    }
}

/// An element count, for the counts `info` shows (saturating: see [`Dim::saturating_mul`]).
fn numel(dims: &[Dim]) -> Dim {
    dims.iter()
        .fold(Dim::konst(1), |acc, d| acc.saturating_mul(d))
}

fn per_example(d: &Dim) -> u64 {
    match d.subst(&|s| (s == "B").then(|| Dim::konst(1))) {
        Ok(d) => d.as_const().map(|n| n.max(0) as u64).unwrap_or(0),
        Err(_) => u64::MAX,
    }
}

/// A stage that is one layer names its parameters by the stage (`layers.1.w`), not by the
/// layer inside it (`layers.1.dense0.w`).
fn strip_single(mut c: Collector) -> Collector {
    if c.sub == 1 {
        let strip = |n: &mut String| {
            if let Some(i) = n.find('.') {
                *n = n[i + 1..].to_string();
            }
        };
        c.params.iter_mut().for_each(|(n, _, _)| strip(n));
        c.states.iter_mut().for_each(|(n, _, _)| strip(n));
    }
    c
}
