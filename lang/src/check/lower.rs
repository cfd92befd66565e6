//! Lowering: the checker, run with concrete arguments and a fixed batch, emits the tensor
//! IR as it evaluates. Checking and lowering are one walk over the same code, so the IR is
//! exactly what was checked (TorchLean's "one IR for running and checking").
//!
//! While lowering, every tensor value ([`Ty::Tensor`]) carries the IR value that holds it.
//! The helpers here turn checked operations into IR nodes, making broadcasting explicit.
//!
//! The walk writes IR to an `IrSink`: a [`Lowering`] when lowering, `NoIr` when only
//! checking. `NoIr` keeps nothing and gives no values, so the walk writes unconditionally
//! and tensor values simply carry no IR value; the helpers ask `Cx::lowering` only to
//! skip work whose result nothing would read.

use super::dim::Dim;
use super::eval::Cx;
use super::facts::NoFacts;
use super::ty::{DType, Ty, Val};
use crate::diag::Diagnostic;
use crate::ir::{Binary, Compare, Composite, Graph, Mode, Op, Reduce, Unary, ValueId};
use crate::span::Span;

/// A lowering problem with no better place: code E0411.
fn lower_error(message: impl Into<String>) -> Diagnostic {
    Diagnostic::error("E0411", message)
}

/// The graph being built, and the first reason lowering could not continue.
#[derive(Default)]
pub struct Lowering {
    pub graph: Graph,
    /// E0411, at the expression being lowered when it happened.
    pub failure: Option<Diagnostic>,
    /// Counter for `random_uniform` seeds, so each dropout draws its own numbers.
    pub rng: u64,
    /// The batch size the net is lowered for.
    pub batch: Option<i64>,
    /// (state input, its new value) for each state assignment, in order.
    pub state_updates: Vec<(ValueId, ValueId)>,
    /// A per-example input shape replacing the net's declared one.
    pub input: Option<Vec<usize>>,
    /// How each parameter and state input starts (its declaration's initializer).
    pub inits: Vec<(ValueId, InitSpec)>,
    /// Dropout is the identity even in training: for comparing a train-mode gradient
    /// with another tool's, which cannot draw the same random numbers.
    pub no_dropout: bool,
}

/// A parameter's initializer as declared (`he_normal(fan_in: 784)`): the initializer's
/// name and its arguments by name, at the lowered instance's values.
#[derive(Clone, Debug, PartialEq)]
pub struct InitSpec {
    pub kind: String,
    pub args: Vec<(String, f64)>,
}

impl InitSpec {
    pub fn arg(&self, name: &str) -> Option<f64> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Where the checker's walk writes the IR it lowers (see the module doc). Every value it
/// gives back is `None` from [`NoIr`], the sink of a check that lowers nothing.
pub(super) trait IrSink {
    /// Whether nodes are being built: only to skip work whose result nothing would read.
    fn building(&self) -> bool;
    /// Train or eval, while building (`training` is unknown otherwise).
    fn mode(&self) -> Option<Mode>;
    /// The batch size a net is lowered for.
    fn batch(&self) -> Option<i64>;
    /// A per-example input shape replacing the net's declared one.
    fn input_shape(&self) -> Option<&[usize]>;
    /// How many nodes have been built (where a region of the graph starts).
    fn nodes(&self) -> Option<usize>;
    /// Appends a node computed at `span`, giving its value.
    fn push(
        &mut self,
        op: Op,
        args: Vec<ValueId>,
        dt: DType,
        shape: Vec<usize>,
        span: Option<Span>,
    ) -> Option<ValueId>;
    /// Records why lowering cannot go on, at `span`; the first reason is the one kept.
    fn fail(&mut self, why: String, span: Option<Span>);
    /// A `state` input's new value (an output of the lowered step).
    fn state_update(&mut self, old: ValueId, new: ValueId);
    /// How a parameter or state input starts.
    fn init(&mut self, input: ValueId, spec: InitSpec);
    /// Gives a parameter or state input its structural name.
    fn name_input(&mut self, input: ValueId, name: String);
    /// A call of a function that has its own rule: the region of the graph it lowered to.
    fn composite(&mut self, c: Composite);
    /// A fresh seed for a random op, so that each draws its own numbers.
    fn next_seed(&mut self) -> u64;
    /// Whether `dropout` drops (in training); see [`Lowering::no_dropout`].
    fn dropout(&self) -> bool {
        true
    }
}

/// The sink of a check that lowers nothing: it keeps nothing and gives no values.
pub(super) struct NoIr;

impl IrSink for NoIr {
    fn building(&self) -> bool {
        false
    }
    fn mode(&self) -> Option<Mode> {
        None
    }
    fn batch(&self) -> Option<i64> {
        None
    }
    fn input_shape(&self) -> Option<&[usize]> {
        None
    }
    fn nodes(&self) -> Option<usize> {
        None
    }
    fn push(
        &mut self,
        _: Op,
        _: Vec<ValueId>,
        _: DType,
        _: Vec<usize>,
        _: Option<Span>,
    ) -> Option<ValueId> {
        None
    }
    fn fail(&mut self, _: String, _: Option<Span>) {}
    fn state_update(&mut self, _: ValueId, _: ValueId) {}
    fn init(&mut self, _: ValueId, _: InitSpec) {}
    fn name_input(&mut self, _: ValueId, _: String) {}
    fn composite(&mut self, _: Composite) {}
    fn next_seed(&mut self) -> u64 {
        0
    }
}

impl IrSink for Lowering {
    fn building(&self) -> bool {
        true
    }
    fn dropout(&self) -> bool {
        !self.no_dropout
    }
    fn mode(&self) -> Option<Mode> {
        Some(self.graph.mode)
    }
    fn batch(&self) -> Option<i64> {
        self.batch
    }
    fn input_shape(&self) -> Option<&[usize]> {
        self.input.as_deref()
    }
    fn nodes(&self) -> Option<usize> {
        Some(self.graph.nodes.len())
    }
    fn push(
        &mut self,
        op: Op,
        args: Vec<ValueId>,
        dt: DType,
        shape: Vec<usize>,
        span: Option<Span>,
    ) -> Option<ValueId> {
        Some(self.graph.push_at(op, args, dt, shape, span))
    }
    fn fail(&mut self, why: String, span: Option<Span>) {
        // Later failures are usually consequences of the first.
        self.failure.get_or_insert_with(|| {
            let d = lower_error(why).with_help("this checks, but the compiler cannot run it yet");
            match span {
                Some(s) => d.primary(s, "cannot be lowered"),
                None => d,
            }
        });
    }
    fn state_update(&mut self, old: ValueId, new: ValueId) {
        self.state_updates.push((old, new));
    }
    fn init(&mut self, input: ValueId, spec: InitSpec) {
        self.inits.push((input, spec));
    }
    fn name_input(&mut self, input: ValueId, new: String) {
        if let Op::Input { name, .. } = &mut self.graph.nodes[input.index()].op {
            *name = new;
        }
    }
    fn composite(&mut self, c: Composite) {
        self.graph.composites.push(c);
    }
    fn next_seed(&mut self) -> u64 {
        self.rng += 1;
        self.rng
    }
}

impl Cx<'_> {
    /// Whether IR is being built.
    pub(super) fn lowering(&self) -> bool {
        self.ir.building()
    }

    pub(super) fn mode(&self) -> Option<Mode> {
        self.ir.mode()
    }

    pub(super) fn lower_fail(&mut self, why: impl Into<String>) {
        self.ir.fail(why.into(), self.cur_span);
    }

    pub(super) fn concrete(&mut self, dims: &[Dim]) -> Option<Vec<usize>> {
        let out: Option<Vec<usize>> = dims
            .iter()
            .map(|d| d.as_const().and_then(|n| usize::try_from(n).ok()))
            .collect();
        if out.is_none() {
            self.lower_fail(format!("a shape is not known when lowering: {dims:?}"));
        }
        out
    }

    /// Appends a node when lowering; `None` when only checking or an argument is missing.
    pub(super) fn emit(&mut self, op: Op, args: &[Val], dt: DType, dims: &[Dim]) -> Val {
        if !self.lowering() {
            return None;
        }
        let args: Vec<ValueId> = args.iter().copied().collect::<Option<_>>()?;
        let shape = self.concrete(dims)?;
        self.ir.push(op, args, dt, shape, self.cur_span)
    }

    /// A scalar constant broadcast to `dims`.
    pub(super) fn constant(&mut self, x: f64, dt: DType, dims: &[Dim]) -> Val {
        let c = self.emit(Op::Const(x), &[], dt, &[]);
        if dims.is_empty() {
            c
        } else {
            self.emit(Op::Broadcast, &[c], dt, dims)
        }
    }

    /// The IR value of `t` stretched to `dims` (scalars become constants).
    pub(super) fn value_as(&mut self, t: &Ty, dt: DType, dims: &[Dim]) -> Val {
        if !self.lowering() {
            return None;
        }
        match t {
            Ty::Tensor(_, d, v) if d == dims => *v,
            Ty::Tensor(_, _, v) => self.emit(Op::Broadcast, &[*v], dt, dims),
            Ty::Bool(Some(b)) => self.constant(f64::from(u8::from(*b)), dt, dims),
            other => match other.scalar() {
                Some(x) => self.constant(x, dt, dims),
                None => {
                    self.lower_fail("a scalar's value is not known when lowering");
                    None
                }
            },
        }
    }

    /// An elementwise binary op with broadcasting, lowered.
    pub(super) fn emit_binary(
        &mut self,
        op: Binary,
        x: &Ty,
        y: &Ty,
        dt: DType,
        dims: &[Dim],
    ) -> Val {
        if !self.lowering() {
            return None;
        }
        let a = self.value_as(x, dt, dims);
        let b = self.value_as(y, dt, dims);
        self.emit(Op::Binary(op), &[a, b], dt, dims)
    }

    pub(super) fn emit_compare(
        &mut self,
        op: Compare,
        x: &Ty,
        y: &Ty,
        operand: DType,
        dims: &[Dim],
    ) -> Val {
        if !self.lowering() {
            return None;
        }
        let a = self.value_as(x, operand, dims);
        let b = self.value_as(y, operand, dims);
        self.emit(Op::Compare(op), &[a, b], DType::Bool, dims)
    }

    pub(super) fn emit_unary(&mut self, op: Unary, x: Val, dt: DType, dims: &[Dim]) -> Val {
        self.emit(Op::Unary(op), &[x], dt, dims)
    }

    /// A reduction over `axes`, lowered; `mean` divides by the count.
    pub(super) fn emit_reduce(
        &mut self,
        name: &str,
        x: Val,
        dt: DType,
        in_dims: &[Dim],
        axes: &[usize],
        keep: bool,
        out: &[Dim],
    ) -> Val {
        if !self.lowering() {
            return None;
        }
        let op = if name == "max" {
            Reduce::Max
        } else {
            Reduce::Sum
        };
        match name {
            "sum" | "max" => self.emit(
                Op::Reduce {
                    op,
                    axes: axes.to_vec(),
                    keepdim: keep,
                },
                &[x],
                dt,
                out,
            ),
            "min" => {
                // min(x) = -max(-x)
                let n = self.emit(Op::Unary(Unary::Neg), &[x], dt, in_dims);
                let m = self.emit(
                    Op::Reduce {
                        op: Reduce::Max,
                        axes: axes.to_vec(),
                        keepdim: keep,
                    },
                    &[n],
                    dt,
                    out,
                );
                self.emit(Op::Unary(Unary::Neg), &[m], dt, out)
            }
            "mean" => {
                let s = self.emit(
                    Op::Reduce {
                        op,
                        axes: axes.to_vec(),
                        keepdim: keep,
                    },
                    &[x],
                    dt,
                    out,
                );
                let count: i64 = axes.iter().filter_map(|a| in_dims[*a].as_const()).product();
                let c = self.constant(count as f64, dt, out);
                self.emit(Op::Binary(Binary::Div), &[s, c], dt, out)
            }
            "logsumexp" => {
                // m + log(sum(exp(x - m))), with m the max kept as a broadcastable dim.
                let kept: Vec<Dim> = in_dims
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        if axes.contains(&i) {
                            Dim::konst(1)
                        } else {
                            d.clone()
                        }
                    })
                    .collect();
                let m = self.emit(
                    Op::Reduce {
                        op: Reduce::Max,
                        axes: axes.to_vec(),
                        keepdim: true,
                    },
                    &[x],
                    dt,
                    &kept,
                );
                let m = self.emit(Op::StopGradient, &[m], dt, &kept);
                let mb = self.emit(Op::Broadcast, &[m], dt, in_dims);
                let d = self.emit(Op::Binary(Binary::Sub), &[x, mb], dt, in_dims);
                let e = self.emit(Op::Unary(Unary::Exp), &[d], dt, in_dims);
                let s = self.emit(
                    Op::Reduce {
                        op: Reduce::Sum,
                        axes: axes.to_vec(),
                        keepdim: true,
                    },
                    &[e],
                    dt,
                    &kept,
                );
                let l = self.emit(Op::Unary(Unary::Log), &[s], dt, &kept);
                let r = self.emit(Op::Binary(Binary::Add), &[l, m], dt, &kept);
                if keep {
                    r
                } else {
                    self.emit(Op::Reshape, &[r], dt, out)
                }
            }
            _ => {
                self.lower_fail(format!("`{name}` cannot be lowered yet"));
                None
            }
        }
    }

    /// `argmax` over one axis.
    pub(super) fn emit_argmax(&mut self, x: Val, axes: &[usize], keep: bool, out: &[Dim]) -> Val {
        let [axis] = axes else {
            self.lower_fail("`argmax` over several axes cannot be lowered");
            return None;
        };
        if keep {
            let mut dropped = out.to_vec();
            dropped.remove(*axis);
            let a = self.emit(Op::ArgMax { axis: *axis }, &[x], DType::I32, &dropped);
            self.emit(Op::Reshape, &[a], DType::I32, out)
        } else {
            self.emit(Op::ArgMax { axis: *axis }, &[x], DType::I32, out)
        }
    }

    /// Gives the parameters and state of net stage `label` their structural names.
    pub(super) fn name_inputs(
        &mut self,
        params: &[(String, Vec<Dim>, Val)],
        states: &[(String, Vec<Dim>, Val)],
    ) {
        for (n, _, v) in params.iter().chain(states) {
            // Only inputs that were built have a value to name.
            if let Some(v) = v {
                self.ir.name_input(*v, n.clone());
            }
        }
    }

    /// Records a lowered call of a function that has its own rule (see [`Composite`]).
    ///
    /// [`Composite`]: crate::ir::Composite
    pub(super) fn mark_composite(
        &mut self,
        name: &str,
        start: Option<usize>,
        inputs: &[Val],
        attrs: &[(String, Ty)],
        out: &Ty,
    ) {
        let (Some(start), Ty::Tensor(_, _, Some(output))) = (start, out) else {
            return;
        };
        let Some(inputs) = inputs.iter().copied().collect::<Option<Vec<ValueId>>>() else {
            return;
        };
        if self.rule_for(name).is_none() {
            return;
        }
        let attrs = attrs
            .iter()
            .filter_map(|(n, t)| {
                let a = match t {
                    Ty::Int(Some(d)) => crate::ir::Attr::Int(d.as_const()?),
                    Ty::Float(Some(x)) => crate::ir::Attr::Float(*x),
                    Ty::Bool(Some(b)) => crate::ir::Attr::Bool(*b),
                    _ => return None,
                };
                Some((n.clone(), a))
            })
            .collect();
        self.ir.composite(Composite {
            rule: name.to_string(),
            inputs,
            attrs,
            output: *output,
            start,
            // The region is every node built since `start`.
            end: self.ir.nodes().unwrap_or(start),
        });
    }

    /// The derivative rule for function `name`, anywhere in the program.
    pub(super) fn rule_for(&self, name: &str) -> Option<super::names::ItemId> {
        self.p
            .modules
            .iter()
            .flat_map(|m| m.rules.iter())
            .copied()
            .find(|r| self.p.items[*r].name == name)
    }

    pub(super) fn next_seed(&mut self) -> u64 {
        self.ir.next_seed()
    }

    pub(super) fn dropout(&self) -> bool {
        self.ir.dropout()
    }
}

/// A net lowered for one batch size and mode: the graph and where things are in it.
#[derive(Debug)]
pub struct Lowered {
    pub graph: Graph,
    /// The net's output (logits).
    pub output: ValueId,
    /// The scalar loss, when a loss was lowered with the net.
    pub loss: Option<ValueId>,
    /// Each parameter's and state's initializer, by input name.
    pub inits: Vec<(String, InitSpec)>,
}

/// Why a lowering failed, if it did: the checker's first error, else the first lowering
/// failure.
fn finish(diags: &[Diagnostic], lowering: &mut Lowering) -> Result<(), Diagnostic> {
    if let Some(d) = diags.iter().find(|d| d.is_error()) {
        return Err(d.clone());
    }
    match lowering.failure.take() {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Lowers net `net` of module `module` for a batch of `batch`, in `mode`; with `loss`
/// (the name of a function `loss(logits, labels: i32[B])`), appends the loss of a batch of
/// integer labels, named input `y`. Outputs: `logits`, `loss`, and `state.<name>` for every
/// updated state.
pub fn lower_net(
    p: &super::Program,
    module: usize,
    net: &str,
    batch: usize,
    mode: Mode,
    loss: Option<&str>,
) -> Result<Lowered, Diagnostic> {
    lower_net_at(p, module, net, batch, mode, loss, None)
}

/// [`lower_net`] with the per-example input shape replaced (a smaller image, for
/// gradient checks of nets whose layers allow it).
pub fn lower_net_at(
    p: &super::Program,
    module: usize,
    net: &str,
    batch: usize,
    mode: Mode,
    loss: Option<&str>,
    input: Option<&[usize]>,
) -> Result<Lowered, Diagnostic> {
    lower_net_loss(
        p,
        module,
        net,
        batch,
        mode,
        loss.map(|l| (l, &[][..])),
        input,
    )
}

/// [`lower_net_at`] with scalar arguments for the loss, passed by name after the logits
/// and labels (`smoothed_cross_entropy` with `eps`).
pub fn lower_net_loss(
    p: &super::Program,
    module: usize,
    net: &str,
    batch: usize,
    mode: Mode,
    loss: Option<(&str, &[(&str, f64)])>,
    input: Option<&[usize]>,
) -> Result<Lowered, Diagnostic> {
    lower_net_with(p, module, net, batch, mode, loss, input, true)
}

/// [`lower_net_loss`], with dropout turned off when `dropout` is false (see
/// [`Lowering::no_dropout`]).
#[allow(clippy::too_many_arguments)]
pub fn lower_net_with(
    p: &super::Program,
    module: usize,
    net: &str,
    batch: usize,
    mode: Mode,
    loss: Option<(&str, &[(&str, f64)])>,
    input: Option<&[usize]>,
    dropout: bool,
) -> Result<Lowered, Diagnostic> {
    let id = p
        .lookup(module, net)
        .ok_or_else(|| lower_error(format!("no net `{net}`")))?;
    let Some(crate::syntax::ast::Item {
        kind: crate::syntax::ast::ItemKind::Net(decl),
        ..
    }) = p.item_ast(id)
    else {
        return Err(
            lower_error(format!("`{net}` is not a net")).primary(p.items[id].span, "defined here")
        );
    };
    let mut lowering = Lowering {
        batch: Some(batch as i64),
        input: input.map(|s| s.to_vec()),
        no_dropout: !dropout,
        ..Lowering::default()
    };
    lowering.graph.mode = mode;
    let mut diags = Vec::new();
    let mut no_facts = NoFacts;
    let mut cx = Cx::new(p, &mut diags, &mut lowering, &mut no_facts);
    let (info, out) = cx.check_net(p.items[id].module, decl);
    let mut loss_val = None;
    if let (Some((loss, loss_args)), Ty::Tensor(_, dims, Some(_))) = (loss, &out) {
        let y_dims = vec![dims[0].clone()];
        let y = cx.emit(
            Op::Input {
                name: "y".into(),
                kind: crate::ir::InputKind::Label,
            },
            &[],
            DType::I32,
            &y_dims,
        );
        let labels = Ty::Tensor(DType::I32, y_dims, y);
        let l = if loss_args.is_empty() {
            cx.call_named(p.items[id].module, loss, vec![out.clone(), labels])
        } else {
            let m = p.items[id].module;
            let Some(fid) = p.lookup(m, loss).or_else(|| {
                p.module_by_path("std.nn")
                    .and_then(|n| p.modules[n].defs.get(loss).copied())
            }) else {
                return Err(lower_error(format!("no loss function `{loss}`")));
            };
            let mut args = vec![(None, out.clone()), (None, labels)];
            args.extend(
                loss_args
                    .iter()
                    .map(|(n, v)| (Some(n.to_string()), Ty::Float(Some(*v)))),
            );
            cx.call_with(fid, args)
        };
        match l {
            Ty::Tensor(_, d, Some(v)) if d.is_empty() => loss_val = Some(v),
            other => {
                let shown = cx.show(&other);
                return Err(lower_error(format!(
                    "the loss `{loss}` must give a scalar f32[], but it gives {shown}"
                ))
                .primary(decl.output.span, "the net's output"));
            }
        }
    }
    drop(cx);
    // A net that does not check says why, with the checker's own diagnostic.
    finish(&diags, &mut lowering)?;
    let Ty::Tensor(_, _, Some(output)) = out else {
        return Err(
            lower_error(format!("`{net}` gave no value")).primary(p.items[id].span, "this net")
        );
    };
    if !info.ok {
        return Err(
            lower_error(format!("`{net}` does not check")).primary(p.items[id].span, "this net")
        );
    }
    lowering.graph.outputs.push(("logits".into(), output));
    if let Some(l) = loss_val {
        lowering.graph.outputs.push(("loss".into(), l));
    }
    for (old, new) in &lowering.state_updates {
        if let Op::Input { name, .. } = &lowering.graph.nodes[old.index()].op {
            let name = Graph::state_output(&name);
            lowering.graph.outputs.retain(|(n, _)| *n != name);
            lowering.graph.outputs.push((name, *new));
        }
    }
    let inits = lowering
        .inits
        .iter()
        .filter_map(|(v, spec)| match &lowering.graph.nodes.get(v.index())?.op {
            Op::Input { name, .. } => Some((name.clone(), spec.clone())),
            _ => None,
        })
        .collect();
    Ok(Lowered {
        graph: lowering.graph,
        output,
        loss: loss_val,
        inits,
    })
}

/// Appends to `graph` the nodes of `primal`'s derivative rule at concrete values: the
/// tensor inputs `inputs`, attributes `attrs`, result `y` and its cotangent `dy`. Returns
/// each input's gradient (`None` where the rule gives none).
pub fn apply_rule(
    p: &super::Program,
    graph: &mut Graph,
    primal: &str,
    inputs: &[ValueId],
    attrs: &[(String, Ty)],
    y: ValueId,
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>, String> {
    let tensor = |g: &Graph, v: ValueId| {
        let n = g.node(v);
        Ty::Tensor(
            n.dtype,
            n.shape.iter().map(|d| Dim::konst(*d as i64)).collect(),
            Some(v),
        )
    };
    let ins: Vec<Ty> = inputs.iter().map(|v| tensor(graph, *v)).collect();
    let (yt, dyt) = (tensor(graph, y), tensor(graph, dy));
    let mut lowering = Lowering {
        graph: std::mem::take(graph),
        ..Lowering::default()
    };
    let mut diags = Vec::new();
    let result = Cx::new(p, &mut diags, &mut lowering, &mut NoFacts)
        .instantiate_rule(primal, &ins, attrs, yt, dyt);
    *graph = lowering.graph;
    if let Some(f) = lowering.failure {
        return Err(f.message);
    }
    result.map(|gs| gs.into_iter().map(|g| g.flatten()).collect())
}

/// A list of ints as a compile-time value (for rule attributes).
pub fn int_list(xs: &[usize]) -> Ty {
    Ty::Items(xs.iter().map(|x| Ty::int(*x as i64)).collect())
}

/// One tensor argument of [`lower_call`].
pub struct CallInput {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub kind: crate::ir::InputKind,
}

/// Lowers one call of function `name` (seen from `module`): each of `inputs` becomes a
/// graph input passed positionally, `attrs` are passed by name. The result is output
/// `y`.
pub fn lower_call(
    p: &super::Program,
    module: usize,
    name: &str,
    inputs: &[CallInput],
    attrs: &[(String, Ty)],
    mode: Mode,
) -> Result<Lowered, Diagnostic> {
    let id = p
        .lookup(module, name)
        .ok_or_else(|| lower_error(format!("no function `{name}`")))?;
    let mut lowering = Lowering::default();
    lowering.graph.mode = mode;
    let mut diags = Vec::new();
    let mut no_facts = NoFacts;
    let mut cx = Cx::new(p, &mut diags, &mut lowering, &mut no_facts);
    let mut args = Vec::new();
    for i in inputs {
        let dims: Vec<Dim> = i.shape.iter().map(|d| Dim::konst(*d as i64)).collect();
        let v = cx.emit(
            Op::Input {
                name: i.name.clone(),
                kind: i.kind,
            },
            &[],
            i.dtype,
            &dims,
        );
        args.push((None, Ty::Tensor(i.dtype, dims, v)));
    }
    args.extend(attrs.iter().map(|(n, t)| (Some(n.clone()), t.clone())));
    let out = cx.call_with(id, args);
    drop(cx);
    finish(&diags, &mut lowering)?;
    let Ty::Tensor(_, _, Some(output)) = out else {
        return Err(lower_error(format!("`{name}` gave no tensor"))
            .primary(p.items[id].span, "this function"));
    };
    lowering.graph.outputs.push(("y".into(), output));
    Ok(Lowered {
        graph: lowering.graph,
        output,
        loss: None,
        inits: vec![],
    })
}
