//! Whole steps as single graphs: the train step (forward, loss, derived backward and the
//! optimizer update, as the book compiles one fused step) and the evaluation step.
//!
//! A step graph follows the state convention of the IR: an output named `state.N` is the
//! new value of input `N`, which the caller (or the backend, in place) replaces after a
//! run. Parameters, batchnorm statistics and optimizer slots (`opt.m.<param>`, ...) are all
//! state. Hyperparameters that change during training are scalar inputs, so a schedule
//! never recompiles the step: `lr`, and for Adam the bias-corrected `lr_hat` and `eps_hat`
//! (computed by the host from the step count).

use crate::check::Program;
use crate::check::lower::{lower_net_at, lower_net_loss};
use crate::check::ty::DType;
use crate::diag::Diagnostic;
use crate::ir::{Binary, Compare, Graph, InputKind, Mode, Op, Reduce, Unary, ValueId};

/// How parameters move along their gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update {
    /// `buf = momentum·buf + g; w -= lr·(nesterov ? g + momentum·buf : buf)` (PyTorch's
    /// SGD; momentum 0 is plain SGD and keeps no buffer).
    Sgd { momentum: f64, nesterov: bool },
    /// Adam; `decoupled` is AdamW's weight decay (`w -= lr·wd·w` before the step).
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        decoupled: bool,
    },
}

/// An optimizer as the step compiles it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimizer {
    pub update: Update,
    /// L2 added to the gradient (SGD, Adam) or decoupled decay (AdamW).
    pub weight_decay: f64,
}

impl Optimizer {
    pub fn sgd() -> Optimizer {
        Optimizer {
            update: Update::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            weight_decay: 0.0,
        }
    }
    pub fn adam() -> Optimizer {
        Optimizer {
            update: Update::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decoupled: false,
            },
            weight_decay: 0.0,
        }
    }
    /// The step's scalar inputs for optimizer step `t` (counting from 1) at rate `lr`:
    /// `(name, value)` pairs.
    pub fn scalars(&self, lr: f64, t: u64) -> Vec<(&'static str, f64)> {
        match self.update {
            Update::Sgd { .. } => vec![(Hyper::Lr.name(), lr)],
            Update::Adam {
                beta1, beta2, eps, ..
            } => {
                // m̂/(√v̂ + ε) = m·√(1-β2ᵗ)/(1-β1ᵗ) / (√v + ε·√(1-β2ᵗ)).
                let t = t.min(i32::MAX as u64) as i32;
                let (c1, c2) = (1.0 - beta1.powi(t), (1.0 - beta2.powi(t)).sqrt());
                vec![
                    (Hyper::Lr.name(), lr),
                    (Hyper::LrHat.name(), lr * c2 / c1),
                    (Hyper::EpsHat.name(), eps * c2),
                ]
            }
        }
    }
}

/// A hyper-parameter a step takes as a scalar input, set by the host every step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hyper {
    /// The learning rate.
    Lr,
    /// Adam's bias-corrected rate, `lr·√(1-β2ᵗ)/(1-β1ᵗ)`.
    LrHat,
    /// Adam's bias-corrected epsilon, `ε·√(1-β2ᵗ)`.
    EpsHat,
}

impl Hyper {
    pub const ALL: [Hyper; 3] = [Hyper::Lr, Hyper::LrHat, Hyper::EpsHat];

    /// The input's name in the step graph.
    pub fn name(self) -> &'static str {
        match self {
            Hyper::Lr => "lr",
            Hyper::LrHat => "lr_hat",
            Hyper::EpsHat => "eps_hat",
        }
    }
}

/// What an input of a step is, so a runtime knows what to feed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InRole {
    /// The batch of examples.
    Images,
    /// The batch's labels.
    Labels,
    Hyper(Hyper),
    /// A trained parameter.
    Param,
    /// Net state (batchnorm running statistics).
    State,
    /// An optimizer slot (momentum, Adam's moments): state that starts at zero.
    Slot,
}

/// What an output of a step is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutRole {
    /// The batch's mean loss.
    Loss,
    /// How many predictions equal the labels (as f32).
    Correct,
    /// The gradient of the loss for the named parameter.
    Gradient(String),
    /// Class probabilities, `[batch, classes]` (the prediction step).
    Probabilities,
    /// The net's output before the softmax, `[batch, classes]` (the prediction step).
    Logits,
    /// The new value of input `input` (by position among the graph's inputs), which
    /// replaces it after a run (the IR's state convention).
    Update { input: usize },
}

/// A step's inputs and outputs with their roles, in graph order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<(String, InRole)>,
    pub outputs: Vec<(String, OutRole)>,
}

impl Signature {
    /// Outputs a run returns (every one but the updates), in order.
    pub fn returned(&self) -> impl Iterator<Item = &OutRole> {
        self.outputs
            .iter()
            .map(|(_, r)| r)
            .filter(|r| !matches!(r, OutRole::Update { .. }))
    }
}

/// The signature of step graph `g` made here: its data inputs are the batch `x` and
/// the hyper-parameters; state inputs in `slots` are optimizer slots; outputs are what
/// `role` says of each name, or an update where the IR's state convention says so.
fn signature(
    g: &Graph,
    slots: &[String],
    role: impl Fn(&str) -> Option<OutRole>,
) -> Result<Signature, Diagnostic> {
    let inputs = g
        .inputs()
        .map(|(_, name, kind)| {
            let role = match kind {
                InputKind::Data => Hyper::ALL
                    .into_iter()
                    .find(|h| h.name() == name)
                    .map_or(InRole::Images, InRole::Hyper),
                InputKind::Label => InRole::Labels,
                InputKind::Param => InRole::Param,
                InputKind::State if slots.iter().any(|s| s == name) => InRole::Slot,
                InputKind::State | InputKind::Cotangent => InRole::State,
            };
            (name.to_string(), role)
        })
        .collect();
    let updates = g.state_targets();
    let mut outputs = Vec::new();
    for ((name, _), target) in g.outputs.iter().zip(updates) {
        let role = match target {
            Some(input) => OutRole::Update { input },
            None => role(name).ok_or_else(|| {
                Diagnostic::error("E0411", format!("the step has an unknown output `{name}`"))
            })?,
        };
        outputs.push((name.clone(), role));
    }
    Ok(Signature { inputs, outputs })
}

/// A compiled-to-be step: its graph, its signature and what its inputs are.
#[derive(Clone, Debug)]
pub struct Step {
    pub graph: Graph,
    pub signature: Signature,
    /// Parameter names, in graph order.
    pub params: Vec<String>,
    /// Optimizer slots (`opt.m.<param>`, ...): state inputs that start at zero.
    pub slots: Vec<String>,
    /// How each parameter and net state (batchnorm statistics) starts, by name.
    pub inits: Vec<(String, crate::check::lower::InitSpec)>,
}

impl Step {
    /// The step with its products (matmuls and convolutions, forward and backward) at
    /// precision `p` (see [`crate::opt::precision`]); inputs and outputs are unchanged.
    pub fn with_products(mut self, p: crate::opt::precision::Products) -> Result<Step, Diagnostic> {
        if p == crate::opt::precision::Products::F32 {
            return Ok(self);
        }
        let graph = crate::opt::optimize(&crate::opt::precision::with_products(&self.graph, p));
        crate::ir::verify(&graph).map_err(|e| {
            Diagnostic::error(
                "E0411",
                format!("the {} step does not verify: {e:?}", p.name()),
            )
        })?;
        let same = |a: &Graph, b: &Graph| {
            a.inputs()
                .map(|(_, n, _)| n.to_string())
                .collect::<Vec<_>>()
                == b.inputs()
                    .map(|(_, n, _)| n.to_string())
                    .collect::<Vec<_>>()
                && a.outputs
                    .iter()
                    .map(|(n, _)| n)
                    .eq(b.outputs.iter().map(|(n, _)| n))
        };
        if !same(&self.graph, &graph) {
            return Err(Diagnostic::error(
                "E0411",
                "internal error: the precision rewrite changed the step's inputs or outputs",
            ));
        }
        self.graph = graph;
        Ok(self)
    }
}

/// Scalar helpers over a graph being extended.
struct Builder<'g> {
    g: &'g mut Graph,
}

impl Builder<'_> {
    fn scalar(&mut self, x: f64, like: ValueId) -> ValueId {
        let n = self.g.node(like);
        let (dt, shape) = (n.dtype, n.shape.clone());
        let c = self.g.push(Op::Const(x), vec![], dt, vec![]);
        if shape.is_empty() {
            c
        } else {
            self.g.push(Op::Broadcast, vec![c], dt, shape)
        }
    }
    fn spread(&mut self, s: ValueId, like: ValueId) -> ValueId {
        let n = self.g.node(like);
        let (dt, shape) = (n.dtype, n.shape.clone());
        if shape.is_empty() {
            s
        } else {
            self.g.push(Op::Broadcast, vec![s], dt, shape)
        }
    }
    fn bin(&mut self, b: Binary, x: ValueId, y: ValueId) -> ValueId {
        let n = self.g.node(x);
        let (dt, shape) = (n.dtype, n.shape.clone());
        self.g.push(Op::Binary(b), vec![x, y], dt, shape)
    }
    fn un(&mut self, u: Unary, x: ValueId) -> ValueId {
        let n = self.g.node(x);
        let (dt, shape) = (n.dtype, n.shape.clone());
        self.g.push(Op::Unary(u), vec![x], dt, shape)
    }
    /// `a·x + b·y` for constants a, b.
    fn lerp(&mut self, a: f64, x: ValueId, b: f64, y: ValueId) -> ValueId {
        let (ca, cb) = (self.scalar(a, x), self.scalar(b, y));
        let (ax, by) = (self.bin(Binary::Mul, ca, x), self.bin(Binary::Mul, cb, y));
        self.bin(Binary::Add, ax, by)
    }
    fn input(&mut self, name: String, kind: InputKind, like: ValueId) -> ValueId {
        let n = self.g.node(like);
        let (dt, shape) = (n.dtype, n.shape.clone());
        self.g.push(Op::Input { name, kind }, vec![], dt, shape)
    }
}

/// The train step of net `net` (module 0) for batches of `batch`, with `loss` and `opt`:
/// inputs `x`, `y`, the scalars of [`Optimizer::scalars`] and the state; outputs `loss`
/// and `state.*`.
pub fn train_step(
    p: &Program,
    net: &str,
    batch: usize,
    loss: &str,
    opt: &Optimizer,
    input: Option<&[usize]>,
) -> Result<Step, Diagnostic> {
    train_step_with(p, net, batch, (loss, &[]), opt, input)
}

/// [`train_step`] with scalar arguments for the loss, by name (`("eps", 0.1)` for
/// `smoothed_cross_entropy`).
pub fn train_step_with(
    p: &Program,
    net: &str,
    batch: usize,
    loss: (&str, &[(&str, f64)]),
    opt: &Optimizer,
    input: Option<&[usize]>,
) -> Result<Step, Diagnostic> {
    let l = lower_net_loss(p, 0, net, batch, Mode::Train, Some(loss), input)?;
    let lv = l
        .loss
        .ok_or_else(|| Diagnostic::error("E0411", "the net has no loss"))?;
    let inits = l.inits.clone();
    let params = crate::ad::inputs_of(&l.graph, InputKind::Param);
    let mut g = crate::ad::grad(p, &l.graph, lv, &params).map_err(|e| e.to_diagnostic())?;
    let names: Vec<String> = params
        .iter()
        .filter_map(|v| g.input_name(*v).map(str::to_string))
        .collect();
    let grads: Vec<ValueId> = names
        .iter()
        .filter_map(|n| g.output(&crate::ad::grad_name(n)))
        .collect();
    g.outputs
        .retain(|(n, _)| n == "loss" || Graph::replaced(n).is_some());
    let mut b = Builder { g: &mut g };
    let scalar_input = |b: &mut Builder, name: &str| {
        b.g.push(
            Op::Input {
                name: name.into(),
                kind: InputKind::Data,
            },
            vec![],
            DType::F32,
            vec![],
        )
    };
    let lr = scalar_input(&mut b, Hyper::Lr.name());
    let hats = match opt.update {
        Update::Adam { .. } => Some((
            scalar_input(&mut b, Hyper::LrHat.name()),
            scalar_input(&mut b, Hyper::EpsHat.name()),
        )),
        Update::Sgd { .. } => None,
    };
    let mut slots = Vec::new();
    let mut updates = Vec::new();
    for ((w, name), gr) in params.iter().zip(&names).zip(&grads) {
        let (w, mut gr) = (*w, *gr);
        let decoupled = matches!(
            opt.update,
            Update::Adam {
                decoupled: true,
                ..
            }
        );
        if opt.weight_decay != 0.0 && !decoupled {
            let wd = b.scalar(opt.weight_decay, w);
            let d = b.bin(Binary::Mul, wd, w);
            gr = b.bin(Binary::Add, gr, d);
        }
        let lr_w = b.spread(lr, w);
        let new_w = match (opt.update, hats) {
            (Update::Sgd { momentum, nesterov }, _) => {
                let dir = if momentum == 0.0 {
                    gr
                } else {
                    let slot = format!("opt.momentum.{name}");
                    let buf = b.input(slot.clone(), InputKind::State, w);
                    let m = b.scalar(momentum, w);
                    let mb = b.bin(Binary::Mul, m, buf);
                    let nb = b.bin(Binary::Add, mb, gr);
                    updates.push((Graph::state_output(&slot), nb));
                    slots.push(slot);
                    if nesterov {
                        let m2 = b.scalar(momentum, w);
                        let t = b.bin(Binary::Mul, m2, nb);
                        b.bin(Binary::Add, gr, t)
                    } else {
                        nb
                    }
                };
                let step = b.bin(Binary::Mul, lr_w, dir);
                b.bin(Binary::Sub, w, step)
            }
            (Update::Adam { beta1, beta2, .. }, Some((lr_hat, eps_hat))) => {
                let (ms, vs) = (format!("opt.m.{name}"), format!("opt.v.{name}"));
                let m = b.input(ms.clone(), InputKind::State, w);
                let v = b.input(vs.clone(), InputKind::State, w);
                let nm = b.lerp(beta1, m, 1.0 - beta1, gr);
                let g2 = b.bin(Binary::Mul, gr, gr);
                let nv = b.lerp(beta2, v, 1.0 - beta2, g2);
                updates.push((Graph::state_output(&ms), nm));
                updates.push((Graph::state_output(&vs), nv));
                slots.extend([ms, vs]);
                let root = b.un(Unary::Sqrt, nv);
                let e = b.spread(eps_hat, w);
                let den = b.bin(Binary::Add, root, e);
                let ratio = b.bin(Binary::Div, nm, den);
                let lh = b.spread(lr_hat, w);
                let step = b.bin(Binary::Mul, lh, ratio);
                let base = if decoupled && opt.weight_decay != 0.0 {
                    // w·(1 - lr·wd), as torch.optim.AdamW.
                    let wd = b.scalar(opt.weight_decay, w);
                    let lwd = b.bin(Binary::Mul, lr_w, wd);
                    let d = b.bin(Binary::Mul, lwd, w);
                    b.bin(Binary::Sub, w, d)
                } else {
                    w
                };
                b.bin(Binary::Sub, base, step)
            }
            (Update::Adam { .. }, None) => w,
        };
        updates.push((Graph::state_output(name), new_w));
    }
    g.outputs.extend(updates);
    let graph = crate::opt::optimize(&g);
    crate::ir::verify(&graph).map_err(|e| {
        Diagnostic::error("E0411", format!("the train step does not verify: {e:?}"))
    })?;
    let signature = signature(&graph, &slots, |n| (n == "loss").then_some(OutRole::Loss))?;
    Ok(Step {
        graph,
        signature,
        params: names,
        slots,
        inits,
    })
}

/// The gradient step: the loss of net `net` on a batch and its gradient with respect to
/// every parameter, with no update. Inputs `x`, `y` and the state; outputs `loss` then
/// `grad.<param>` in parameter order. The forward pass runs in train mode (batch
/// statistics, as PyTorch's `model.train()`), but batchnorm's running statistics are left
/// as they were: asking for a gradient changes nothing.
pub fn grad_step(
    p: &Program,
    net: &str,
    batch: usize,
    loss: (&str, &[(&str, f64)]),
    input: Option<&[usize]>,
) -> Result<Step, Diagnostic> {
    grad_step_with(p, net, batch, loss, input, true)
}

/// [`grad_step`], with dropout the identity when `dropout` is false: a train-mode
/// gradient (batch statistics) that another tool can reproduce exactly.
pub fn grad_step_with(
    p: &Program,
    net: &str,
    batch: usize,
    loss: (&str, &[(&str, f64)]),
    input: Option<&[usize]>,
    dropout: bool,
) -> Result<Step, Diagnostic> {
    let l = crate::check::lower::lower_net_with(
        p,
        0,
        net,
        batch,
        Mode::Train,
        Some(loss),
        input,
        dropout,
    )?;
    let lv = l
        .loss
        .ok_or_else(|| Diagnostic::error("E0411", "the net has no loss"))?;
    let params = crate::ad::inputs_of(&l.graph, InputKind::Param);
    let mut g = crate::ad::grad(p, &l.graph, lv, &params).map_err(|e| e.to_diagnostic())?;
    let names: Vec<String> = params
        .iter()
        .filter_map(|v| g.input_name(*v).map(str::to_string))
        .collect();
    let mut outputs = Vec::with_capacity(names.len() + 1);
    let mut roles = vec![("loss".to_string(), OutRole::Loss)];
    for name in &names {
        roles.push((crate::ad::grad_name(name), OutRole::Gradient(name.clone())));
    }
    for (name, _) in &roles {
        let v = g.output(name).ok_or_else(|| {
            Diagnostic::error("E0411", format!("the gradient step has no output `{name}`"))
        })?;
        outputs.push((name.clone(), v));
    }
    g.outputs = outputs;
    let graph = crate::opt::optimize(&g);
    crate::ir::verify(&graph).map_err(|e| {
        Diagnostic::error("E0411", format!("the gradient step does not verify: {e:?}"))
    })?;
    let signature = signature(&graph, &[], |n| {
        roles
            .iter()
            .find(|(r, _)| r == n)
            .map(|(_, role)| role.clone())
    })?;
    Ok(Step {
        graph,
        signature,
        params: names,
        slots: vec![],
        inits: l.inits,
    })
}

/// The prediction step: the class probabilities of net `net` (module 0) for a batch of
/// `batch` examples, in eval mode (batchnorm with its running statistics, no dropout):
/// the softmax of its logits over the last axis, computed as `exp(z − max z) / Σ`.
/// Inputs `x`, the parameters and the state; one output, `probs`.
pub fn predict_step(
    p: &Program,
    net: &str,
    batch: usize,
    input: Option<&[usize]>,
) -> Result<Step, Diagnostic> {
    let l = lower_net_at(p, 0, net, batch, Mode::Eval, None, input)?;
    let mut g = l.graph;
    let z = l.output;
    let shape = g.node(z).shape.clone();
    let axis = shape.len().saturating_sub(1);
    let mut kept = shape.clone();
    if let Some(k) = kept.get_mut(axis) {
        *k = 1;
    }
    let reduce = |g: &mut Graph, op: Reduce, v: ValueId| {
        let r = g.push(
            Op::Reduce {
                op,
                axes: vec![axis],
                keepdim: true,
            },
            vec![v],
            DType::F32,
            kept.clone(),
        );
        g.push(Op::Broadcast, vec![r], DType::F32, shape.clone())
    };
    let top = reduce(&mut g, Reduce::Max, z);
    let shifted = g.push(
        Op::Binary(Binary::Sub),
        vec![z, top],
        DType::F32,
        shape.clone(),
    );
    let e = g.push(
        Op::Unary(Unary::Exp),
        vec![shifted],
        DType::F32,
        shape.clone(),
    );
    let total = reduce(&mut g, Reduce::Sum, e);
    let probs = g.push(
        Op::Binary(Binary::Div),
        vec![e, total],
        DType::F32,
        shape.clone(),
    );
    g.outputs = vec![("logits".into(), z), ("probs".into(), probs)];
    let graph = crate::opt::optimize(&g);
    crate::ir::verify(&graph).map_err(|e| {
        Diagnostic::error(
            "E0411",
            format!("the prediction step does not verify: {e:?}"),
        )
    })?;
    let signature = signature(&graph, &[], |n| match n {
        "logits" => Some(OutRole::Logits),
        "probs" => Some(OutRole::Probabilities),
        _ => None,
    })?;
    Ok(Step {
        graph,
        signature,
        params: vec![],
        slots: vec![],
        inits: l.inits,
    })
}

/// The evaluation step: inputs `x`, `y` and the state; outputs `loss` (the batch mean) and
/// `correct` (how many predictions equal the labels, as f32).
pub fn eval_step(
    p: &Program,
    net: &str,
    batch: usize,
    loss: &str,
    input: Option<&[usize]>,
) -> Result<Step, Diagnostic> {
    let l = lower_net_at(p, 0, net, batch, Mode::Eval, Some(loss), input)?;
    let mut g = l.graph;
    let logits = l.output;
    let shape = g.node(logits).shape.clone();
    let axis = shape.len().saturating_sub(1);
    let pred = g.push(
        Op::ArgMax { axis },
        vec![logits],
        DType::I32,
        shape[..axis].to_vec(),
    );
    let y = g
        .inputs()
        .find(|(_, n, _)| *n == "y")
        .map(|(v, _, _)| v)
        .ok_or_else(|| Diagnostic::error("E0411", "the loss takes no labels"))?;
    let hit = g.push(
        Op::Compare(Compare::Eq),
        vec![pred, y],
        DType::Bool,
        shape[..axis].to_vec(),
    );
    let hit = g.push(Op::Cast, vec![hit], DType::F32, shape[..axis].to_vec());
    let correct = g.push(
        Op::Reduce {
            op: Reduce::Sum,
            axes: (0..axis).collect(),
            keepdim: false,
        },
        vec![hit],
        DType::F32,
        vec![],
    );
    g.outputs.retain(|(n, _)| n == "loss");
    g.outputs.push(("correct".into(), correct));
    let graph = crate::opt::optimize(&g);
    crate::ir::verify(&graph).map_err(|e| {
        Diagnostic::error(
            "E0411",
            format!("the evaluation step does not verify: {e:?}"),
        )
    })?;
    let signature = signature(&graph, &[], |n| match n {
        "loss" => Some(OutRole::Loss),
        "correct" => Some(OutRole::Correct),
        _ => None,
    })?;
    Ok(Step {
        graph,
        signature,
        params: vec![],
        slots: vec![],
        inits: l.inits,
    })
}
