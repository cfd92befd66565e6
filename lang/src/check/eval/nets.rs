//! Nets and their stages: a net's input gets the batch dim (symbolic `B`, or the batch
//! being lowered for), each stage is applied to the running value, and each stage's
//! output shape, parameters (with their module names, `features.1.0.weight`), state and
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
            state_names: vec![],
            ok: true,
        };
        let mut x = input;
        let mut origin = n.input.span;
        let (mut names, mut state_names) = (Vec::new(), Vec::new());
        let mut position = 0;
        for stage in &n.stages {
            self.collectors.push(Collector::default());
            x = self.stage(stage, x, origin, &mut env, &mut position);
            let c = self.collectors.pop().unwrap_or_default();
            let count = |list: &[(String, Vec<Dim>, Val)]| {
                list.iter()
                    .map(|(_, d, _)| per_example(&numel(d)))
                    .sum::<u64>()
            };
            let (params, state) = (count(&c.params), count(&c.states));
            // Each stage's names are checked within it as they are merged; across
            // stages, here.
            if let Some((n, _, _)) = c
                .params
                .iter()
                .chain(&c.states)
                .find(|(n, _, _)| names.iter().chain(&state_names).any(|(m, _)| m == n))
            {
                let at = stage.label.as_ref().map_or(stage.span, |l| l.span);
                self.report(duplicate_name(n, at));
            }
            let shape = |d: &[Dim]| -> Vec<u64> {
                d.iter()
                    .map(|x| x.as_const().unwrap_or(0).max(0) as u64)
                    .collect()
            };
            names.extend(c.params.iter().map(|(n, d, _)| (n.clone(), shape(d))));
            state_names.extend(c.states.iter().map(|(n, d, _)| (n.clone(), shape(d))));
            self.name_inputs(&c.params, &c.states);
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
        info.state_names = state_names;
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

    /// Applies one stage to the running value and adds its parameters and state, named
    /// relative to the enclosing sequence, to the collector on top. A sequence (the net, a
    /// `{ }` group, a labelled `repeat`) numbers its stages from 0 as an `nn.Sequential`
    /// would, `position` counting; a stage's label replaces its number, and an unlabelled
    /// `repeat` is its body written out, so its stages take the sequence's next numbers.
    fn stage(&mut self, s: &Stage, x: Ty, origin: Span, env: &mut Env, position: &mut usize) -> Ty {
        let at = s.label.as_ref().map_or(s.span, |l| l.span);
        match &s.kind {
            StageKind::Apply(e) => {
                let name = self.stage_name(s, env, position);
                self.collectors.push(Collector::default());
                let y = self.apply(e, x, origin, env);
                let c = strip_single(self.collectors.pop().unwrap_or_default());
                self.merge(c, &name, at);
                y
            }
            StageKind::Group(body) => {
                let name = self.stage_name(s, env, position);
                self.collectors.push(Collector::default());
                let y = self.sequence(body, x, origin, env, &mut 0);
                let c = self.collectors.pop().unwrap_or_default();
                self.merge(c, &name, at);
                y
            }
            StageKind::Repeat { count, index, body } => {
                let Some(n) = self.repeat_count(count, env) else {
                    return Ty::Err;
                };
                let name = s.label.as_ref().map(|_| self.stage_name(s, env, position));
                if name.is_some() {
                    self.collectors.push(Collector::default());
                }
                let mut inner = 0;
                let counter = if name.is_some() { &mut inner } else { position };
                let (mut x, mut origin) = (x, origin);
                for r in 0..n {
                    env.scopes.push(Default::default());
                    if let Some(i) = index {
                        env.bind(&i.name, Ty::Int(Some(Dim::konst(r))), i.span, false);
                    }
                    x = self.sequence(body, x, origin, env, counter);
                    env.scopes.pop();
                    origin = body.last().map_or(origin, |st| st.span);
                }
                if let Some(name) = name {
                    let c = self.collectors.pop().unwrap_or_default();
                    self.merge(c, &name, at);
                }
                x
            }
            StageKind::Error => Ty::Err,
        }
    }

    /// Applies stages in order, numbering them from `position`.
    fn sequence(
        &mut self,
        stages: &[Stage],
        mut x: Ty,
        mut origin: Span,
        env: &mut Env,
        position: &mut usize,
    ) -> Ty {
        for st in stages {
            x = self.stage(st, x, origin, env, position);
            origin = st.span;
        }
        x
    }

    /// A stage's module name: its label, else its number in the sequence. Takes a number
    /// either way, so that numbers are positions, as in an `nn.Sequential`.
    fn stage_name(&mut self, s: &Stage, env: &mut Env, position: &mut usize) -> String {
        let n = *position;
        *position += 1;
        s.label
            .as_ref()
            .and_then(|l| self.label_name(l, env))
            .unwrap_or_else(|| n.to_string())
    }

    /// A label's module name (empty for `self`), or `None` after reporting why it is not one.
    pub(super) fn label_name(&mut self, l: &ModuleLabel, env: &mut Env) -> Option<String> {
        let mut text = String::new();
        for part in &l.parts {
            match part {
                StrPart::Lit(t) => text.push_str(t),
                StrPart::Interp(e, _) => match self.expr(e, env) {
                    Ty::Int(Some(d)) if d.as_const().is_some() => {
                        text.push_str(&d.as_const().unwrap_or(0).to_string())
                    }
                    // Symbolic in a layer's generic check: every use has the number.
                    Ty::Int(Some(_)) if self.generic => text.push('0'),
                    Ty::Err => return None,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error(
                                "E0316",
                                format!("a label's `{{...}}` must be a known int, found {shown}"),
                            )
                            .primary(e.span, "not a known int")
                            .with_help(
                                "a repeat's index (`repeat 12 as i`) or a layer's int argument",
                            ),
                        );
                        return None;
                    }
                },
            }
        }
        if text == "self" {
            return Some(String::new());
        }
        let segment_ok = |seg: &str| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !text.split('.').all(segment_ok) {
            self.report(
                Diagnostic::error("E0316", format!("`{text}` is not a module name"))
                    .primary(l.span, "this label")
                    .with_help(
                        "a module name is names or numbers joined by dots (`features.1.0`, `conv1`), or `self`",
                    ),
            );
            return None;
        }
        Some(text)
    }

    /// Adds a module's parameters and state to the collector on top, under `prefix`
    /// (nothing for `self`).
    pub(super) fn merge(&mut self, c: Collector, prefix: &str, span: Span) {
        let Some(parent) = self.collectors.last_mut() else {
            return;
        };
        let full = |n: String| {
            if prefix.is_empty() {
                n
            } else {
                format!("{prefix}.{n}")
            }
        };
        let mut taken = None;
        for (state, list) in [(false, c.params), (true, c.states)] {
            for (n, d, v) in list {
                if let Err(t) = parent.add(state, full(n), d, v) {
                    taken.get_or_insert(t);
                }
            }
        }
        parent.macs = parent.macs.saturating_add(&c.macs);
        if let Some(t) = taken {
            self.report(duplicate_name(&t, span));
        }
    }

    /// A `repeat`'s count, which must be a known non-negative int.
    fn repeat_count(&mut self, count: &Expr, env: &mut Env) -> Option<i64> {
        match self.expr(count, env) {
            Ty::Int(Some(d)) => match d.as_const() {
                Some(n) if n >= 0 => Some(n),
                _ => {
                    self.report(
                        Diagnostic::error(
                            "E0310",
                            format!("`repeat` needs a known non-negative count, found {d}"),
                        )
                        .primary(count.span, "here"),
                    );
                    None
                }
            },
            Ty::Err => None,
            other => {
                let shown = self.show(&other);
                self.report(
                    Diagnostic::error(
                        "E0201",
                        format!("`repeat` needs an int count, found {shown}"),
                    )
                    .primary(count.span, "here"),
                );
                None
            }
        }
    }
}

/// Two parameters or states of one module have the same name.
pub(super) fn duplicate_name(name: &str, span: Span) -> Diagnostic {
    Diagnostic::error(
        "E0317",
        format!("two parameters or states would both be named `{name}`"),
    )
    .primary(span, "this gives the second")
    .with_help("give each layer its own label (`conv1: conv(64, 3)`)")
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

/// A stage that is one unlabelled layer names its parameters by the stage (`1.weight`), not
/// by the layer inside it (`1.dense0.weight`).
fn strip_single(mut c: Collector) -> Collector {
    if c.sub == 1 && !c.labelled {
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
