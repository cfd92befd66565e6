//! Finite-difference gradient checks in f64: the derived VJP against central differences.
//!
//! For each input checked, the gradient is compared (a) along two random unit directions
//! of the whole tensor, `<grad, v>` against the difference quotient of `f(x + h v)`, and
//! (b) on a few sampled coordinates. The relative error of a pair is
//! `|a - n| / max(|a|, |n|, floor)`, where `floor` is 1e-6 times the largest gradient
//! entry of all the inputs checked together (and at least 1e-6): smaller values must
//! agree absolutely, to 1e-12 times that scale. Central differences of a loss cannot
//! resolve less in f64, and a deep net's loss carries rounding noise well above ε; a
//! gradient that vanishes identically (a batchnorm shift that the next batchnorm
//! removes) is that noise on both sides.
//!
//! The difference quotient is Richardson's extrapolation of central differences,
//! `(4 D(h/2) - D(h)) / 3`: truncation error O(h⁴), rounding O(ε/h). It is taken at nine
//! steps, h = 1e-3 down to 1e-7 at ratios of √10 (stopping at the first that agrees to
//! 1e-9), and the closest to the derived value counts (a derived value below the floor is
//! also probed at h = 1e-2 and 1e-1, see `check_each`). A step that crosses a kink (a
//! ReLU input at 0, a max-pool window changing its maximum) measures a secant, not the
//! derivative: with batchnorm before ReLU some inputs sit within 1e-3 of the kink, and a
//! step in a deep net's early layers moves a million activations, so that in MobileNetV2
//! even 1e-5 usually crosses one, while at 1e-7 rounding noise is already about 1e-6 of
//! the derivative. A wrong gradient is wrong at every step, so taking the best cannot
//! make one pass.

use std::collections::HashMap;

use crate::interp::{Precision, RunError, Tensor, rerun, run, uniform};
use crate::ir::{Graph, InputKind, ValueId};

/// The steps tried, 1e-3 down to 1e-7 at ratios of √10: in a deep net a step of 1e-6
/// can already cross a kink somewhere, while at 1e-7 rounding noise is about 1e-6 of the
/// derivative; the steps between are often clean and still quiet.
const STEPS: [f64; 9] = [
    1e-3, 3.162e-4, 1e-4, 3.162e-5, 1e-5, 3.162e-6, 1e-6, 3.162e-7, 1e-7,
];

/// A relative error this small ends the search over steps.
const AGREED: f64 = 1e-9;

/// The bar a gradient must meet: its worst relative error against finite differences.
pub const BAR: f64 = 1e-6;

/// Two difference quotients at neighbouring steps agreeing this closely are a plateau:
/// finite differences have found the derivative there (whether or not the derived value
/// agrees with it).
const SETTLED: f64 = 1e-4;

/// The worst relative error found for one checked input.
#[derive(Clone, Debug)]
pub struct Finding {
    pub input: String,
    pub worst: f64,
    pub checks: usize,
    /// False when the input missed [`BAR`] at an instance where finite differences cannot
    /// judge it: its difference quotients never settled (no two neighbouring steps agreed
    /// to [`SETTLED`]), or it feeds a variance over few values
    /// ([`few_value_normalizations`]: normalizing two values per channel makes the loss
    /// nearly a step function of width √ε, and its gradients sit in rounding noise). The
    /// miss then says nothing about the gradient; a larger instance decides.
    pub settled: bool,
}

impl Finding {
    /// Whether the gradient disagrees with finite differences that settled.
    pub fn failed(&self) -> bool {
        self.worst > BAR && self.settled
    }

    /// Whether this instance could not decide (see [`Finding::settled`]).
    pub fn inconclusive(&self) -> bool {
        self.worst > BAR && !self.settled
    }
}

/// A variance taken over few values (as a normalization computes it): its node, how many
/// values each output sees, and the shape it reduces.
#[derive(Clone, Debug, PartialEq)]
pub struct FewValues {
    pub node: ValueId,
    pub count: usize,
    pub shape: Vec<usize>,
}

/// The most values per output below which a variance makes an instance degenerate for
/// finite differences.
pub const FEW_VALUES: usize = 4;

/// The variances of `g` taken over at most [`FEW_VALUES`] values per output: a sum over
/// axes of a square of a difference (`sum((x - m)²)`, the form batchnorm, layernorm and
/// their kin lower to). Normalizing by such a variance makes the output nearly a step
/// function of its inputs, which finite differences cannot follow.
pub fn few_value_normalizations(g: &Graph) -> Vec<FewValues> {
    use crate::ir::{Binary, Op};
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::Reduce {
            op: crate::ir::Reduce::Sum,
            ..
        } = &n.op
        else {
            continue;
        };
        let Some(arg) = n.args.first().map(|a| g.node(*a)) else {
            continue;
        };
        let square = matches!(arg.op, Op::Binary(Binary::Mul))
            && arg.args.len() == 2
            && arg.args[0] == arg.args[1]
            && matches!(g.node(arg.args[0]).op, Op::Binary(Binary::Sub));
        let (inner, outer) = (arg.numel(), n.numel().max(1));
        let count = inner / outer;
        if square && count <= FEW_VALUES {
            out.push(FewValues {
                node: ValueId(i as u32),
                count,
                shape: arg.shape.clone(),
            });
        }
    }
    out
}

/// Deterministic normal samples (Box–Muller over the counter-based generator).
pub fn normal(seed: u64, i: u64) -> f64 {
    let u1 = uniform(seed, 2 * i).max(1e-300);
    let u2 = uniform(seed, 2 * i + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Random inputs for every input of `g`: floats N(0, scale²) (params scaled by fan-in),
/// indices uniform over what reads them (a label below the classes of its `one_hot`, a
/// token below the rows of its table: [`Graph::index_bound`]; `0..classes` when nothing
/// bounds one), running variances positive.
pub fn random_inputs(g: &Graph, seed: u64, classes: usize) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (k, (v, name, kind)) in g.inputs().enumerate() {
        let node = g.node(v);
        let n = node.numel();
        let s = seed.wrapping_mul(1000).wrapping_add(k as u64);
        let classes = if node.dtype.is_float() {
            classes
        } else {
            g.index_bound(v).unwrap_or(classes).max(1)
        };
        let data: Vec<f64> = match kind {
            // Integer inputs are indices (labels, tokens): valid ones.
            _ if !node.dtype.is_float() => (0..n)
                .map(|i| {
                    (uniform(s, i as u64) * classes as f64)
                        .floor()
                        .min(classes as f64 - 1.0)
                })
                .collect(),
            InputKind::Param => {
                let fan_in: usize = node.shape.iter().skip(1).product::<usize>().max(1);
                let scale = if node.shape.len() <= 1 {
                    0.5
                } else {
                    (2.0 / fan_in as f64).sqrt()
                };
                (0..n)
                    .map(|i| {
                        scale * normal(s, i as u64)
                            + if node.shape.len() <= 1 && name.ends_with("weight") {
                                1.0
                            } else {
                                0.0
                            }
                    })
                    .collect()
            }
            InputKind::State if name.ends_with("var") => {
                (0..n).map(|i| 0.5 + uniform(s, i as u64)).collect()
            }
            _ => (0..n).map(|i| normal(s, i as u64)).collect(),
        };
        out.insert(
            name.to_string(),
            Tensor::new(node.dtype, node.shape.clone(), data),
        );
    }
    out
}

fn eval(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunError> {
    run(g, &|name, _| inputs.get(name).cloned(), Precision::F64)
}

/// Checks the gradients `grads` (values of `g_with_grads`, one per name in `names`) of the
/// scalar output `loss` of `forward` against central differences.
pub fn check(
    forward: &Graph,
    loss: ValueId,
    g_with_grads: &Graph,
    names: &[String],
    inputs: &HashMap<String, Tensor>,
    coords: usize,
    seed: u64,
) -> Result<Vec<Finding>, RunError> {
    check_each(
        forward,
        loss,
        g_with_grads,
        names,
        inputs,
        coords,
        seed,
        &|_| true,
        &mut |_| {},
    )
}

/// [`check`] of the inputs among `names` that `wanted` selects, calling `report` with each
/// finding as soon as it is known (a large net takes minutes). The random directions of
/// an input and the floor depend on `names` only, not on the selection, so checking one
/// tensor alone measures what checking them all does.
#[allow(clippy::too_many_arguments)]
pub fn check_each(
    forward: &Graph,
    loss: ValueId,
    g_with_grads: &Graph,
    names: &[String],
    inputs: &HashMap<String, Tensor>,
    coords: usize,
    seed: u64,
    wanted: &dyn Fn(&str) -> bool,
    report: &mut dyn FnMut(&Finding),
) -> Result<Vec<Finding>, RunError> {
    let vals = eval(g_with_grads, inputs)?;
    let base = eval(forward, inputs)?;
    // The loss with input `name` replaced by `x`: only the nodes downstream of it are
    // computed again (see `interp::rerun`).
    let f = |name: &str, x: Tensor| -> Result<f64, RunError> {
        let Some((v, _, _)) = forward.inputs().find(|(_, n, _)| *n == name) else {
            return Err(RunError::MissingInput(name.to_string()));
        };
        let out = rerun(forward, &base, v, x, loss, Precision::F64)?;
        Ok(out.data.first().copied().unwrap_or(f64::NAN))
    };
    let h = 1e-3;
    let mut findings = Vec::new();
    let few: Vec<ValueId> = few_value_normalizations(forward)
        .into_iter()
        .map(|f| f.node)
        .collect();
    let scale = names
        .iter()
        .filter_map(|n| g_with_grads.output(&format!("grad.{n}")))
        .flat_map(|v| vals[v.index()].data.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    for (k, name) in names.iter().enumerate() {
        if !wanted(name) {
            continue;
        }
        let Some(gv) = g_with_grads.output(&format!("grad.{name}")) else {
            continue;
        };
        let grad = &vals[gv.index()];
        let Some(x) = inputs.get(name) else { continue };
        // See the module doc.
        let floor = (1e-6 * scale).max(1e-6);
        let rel = |a: f64, n: f64| (a - n).abs() / a.abs().max(n.abs()).max(floor);
        let mut worst = 0.0f64;
        let mut checks = 0;
        let mut settled = true;
        let degenerate = forward
            .inputs()
            .find(|(_, n, _)| n == name)
            .is_some_and(|(v, _, _)| reaches(forward, v, &few));
        let mut probe = |dir: &dyn Fn(usize) -> f64, analytic: f64| -> Result<(), RunError> {
            let central = |step: f64| -> Result<f64, RunError> {
                let mut plus = x.clone();
                let mut minus = x.clone();
                for i in 0..x.numel() {
                    let d = dir(i);
                    plus.data[i] += step * d;
                    minus.data[i] -= step * d;
                }
                Ok((f(name, plus)? - f(name, minus)?) / (2.0 * step))
            };
            let mut best = f64::INFINITY;
            // Whether two neighbouring quotients agreed (a plateau), and the last one.
            let (mut plateau, mut last) = (false, None::<f64>);
            // A gradient that vanishes (below the floor) is also probed at larger steps:
            // if the loss is flat along `dir` (a batchnorm shift that the next batchnorm
            // removes), the quotient is rounding noise over h and shrinks as h grows; if
            // it is not flat, a larger step shows the slope all the more.
            let wider: &[f64] = if analytic.abs() < floor {
                &[h * 10.0, h * 100.0]
            } else {
                &[]
            };
            for &step in STEPS.iter().chain(wider) {
                let numeric = (4.0 * central(step / 2.0)? - central(step)?) / 3.0;
                best = best.min(rel(analytic, numeric));
                plateau |= last.is_some_and(|l| rel(l, numeric) <= SETTLED);
                last = Some(numeric);
                // Agreement to 1e-9 is not improved upon by smaller steps (it saves four
                // fifths of the evaluations on smooth functions).
                if best <= AGREED {
                    break;
                }
            }
            worst = worst.max(best);
            if best > BAR && (!plateau || degenerate) {
                settled = false;
            }
            checks += 1;
            Ok(())
        };
        for r in 0..2u64 {
            let s = seed ^ (k as u64 * 7919 + r * 104_729);
            // A unit direction, so the step is h whatever the tensor's size.
            let norm = (0..x.numel())
                .map(|i| normal(s, i as u64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-300);
            let dir = |i: usize| normal(s, i as u64) / norm;
            let analytic: f64 = (0..x.numel()).map(|i| grad.data[i] * dir(i)).sum();
            probe(&dir, analytic)?;
        }
        for c in 0..coords.min(x.numel()) {
            let i = (uniform(seed ^ 0x5eed, (k * 1000 + c) as u64) * x.numel() as f64) as usize
                % x.numel();
            let dir = move |j: usize| if j == i { 1.0 } else { 0.0 };
            probe(&dir, grad.data[i])?;
        }
        let finding = Finding {
            input: name.clone(),
            worst,
            checks,
            settled,
        };
        report(&finding);
        findings.push(finding);
    }
    Ok(findings)
}

/// Whether any of `targets` depends on `from` (nodes are in SSA order: one pass).
fn reaches(g: &Graph, from: ValueId, targets: &[ValueId]) -> bool {
    if targets.is_empty() {
        return false;
    }
    let mut on = vec![false; g.nodes.len()];
    on[from.index()] = true;
    for (i, n) in g.nodes.iter().enumerate().skip(from.index() + 1) {
        on[i] = n.args.iter().any(|a| on[a.index()]);
    }
    targets.iter().any(|t| on[t.index()])
}

/// Small shapes for a primal's dim variables, and attributes for the primals that need
/// them, so every rule can be checked on a concrete instance.
fn dim_value(name: &str) -> usize {
    match name {
        "B" | "M" => 2,
        "C" | "K" | "KH" | "KW" | "D" => 3,
        "H" | "W" | "V" => 5,
        "O" | "N" => 4,
        _ => 3,
    }
}

/// What [`check_rules`] says of `stop_gradient`.
pub const NOT_DIFFERENTIATED: &str = "not checked: its gradient is zero by definition";

/// Rules whose inputs must be positive (logarithms, roots, powers).
const POSITIVE: &[&str] = &["log", "sqrt", "rsqrt", "pow"];

/// The worst relative error of one rule, over all its float inputs.
#[derive(Clone, Debug)]
pub struct RuleFinding {
    pub rule: String,
    pub result: Result<Vec<Finding>, String>,
}

/// A small instance of a rule's primal: a graph computing `loss = sum(y * r)` for a fixed
/// random `r` (so the cotangent of `y` is `r`), the float inputs to differentiate, and
/// their names.
pub struct RuleInstance {
    pub graph: Graph,
    pub loss: ValueId,
    pub wrt: Vec<ValueId>,
    pub names: Vec<String>,
    pub inputs: HashMap<String, Tensor>,
}

/// Builds the instance of the rule `rid` (see [`RuleInstance`]).
pub fn rule_instance(p: &crate::check::Program, rid: usize) -> Result<RuleInstance, String> {
    let name = p.items[rid].name.clone();
    let fid = p.lookup(p.items[rid].module, &name).ok_or("no primal")?;
    call_instance(p, fid)
}

/// A small instance of function `fid` with a cotangent input `r` (see [`RuleInstance`]):
/// its dims get small sizes (B = 2, C = 3, H = W = 5, ...).
pub fn call_instance(p: &crate::check::Program, fid: usize) -> Result<RuleInstance, String> {
    use crate::check::lower::{CallInput, lower_call};
    use crate::check::ty::DType;
    use crate::ir::{Binary, Op, Reduce};
    use crate::syntax::ast::{DimKind, ItemKind, TypeKind};
    let name = p.items[fid].name.clone();
    let Some(crate::syntax::ast::Item {
        kind: ItemKind::Fn(f),
        ..
    }) = p.item_ast(fid)
    else {
        return Err("not a function".into());
    };
    let mut attrs = crate::ir::ops::sample_args(&name);
    // Required non-tensor parameters get small values: ints 2, floats 0.3, 0.7, ... in
    // order (so a pair like lo, hi is ordered), bools false.
    let mut floats = 0;
    let given: Vec<String> = attrs.iter().map(|(n, _)| n.clone()).collect();
    for prm in f
        .params
        .iter()
        .filter(|p| p.default.is_none() && !given.contains(&p.name.name))
    {
        use crate::check::ty::Ty;
        let v = match prm.ty.as_ref().map(|t| &t.kind) {
            Some(TypeKind::Named(t)) if matches!(t.name.as_str(), "int" | "dim" | "axis") => {
                Ty::int(2)
            }
            Some(TypeKind::Named(t)) if t.name == "float" => {
                floats += 1;
                Ty::Float(Some(0.3 + 0.4 * (floats - 1) as f64))
            }
            Some(TypeKind::Named(t)) if t.name == "bool" => Ty::Bool(Some(false)),
            _ => continue,
        };
        attrs.push((prm.name.name.clone(), v));
    }
    let mut dims: HashMap<String, usize> = HashMap::new();
    let mut inputs = Vec::new();
    for prm in &f.params {
        let Some(TypeKind::Tensor { dtype, dims: ds }) = prm.ty.as_ref().map(|t| &t.kind) else {
            continue;
        };
        let mut shape = Vec::new();
        for d in ds {
            match &d.kind {
                DimKind::Int(n) => shape.push(*n as usize),
                DimKind::Name(v) => {
                    shape.push(*dims.entry(v.clone()).or_insert_with(|| dim_value(v)))
                }
                DimKind::Pack(_) => shape.extend([2, 3]),
                // `C / groups` and the like: groups is 1 in these instances.
                DimKind::Bin(_, a, _) => match &a.kind {
                    DimKind::Name(v) => {
                        shape.push(*dims.entry(v.clone()).or_insert_with(|| dim_value(v)))
                    }
                    _ => shape.push(3),
                },
                DimKind::Error => return Err("bad type".into()),
            }
        }
        let dt = DType::parse(&dtype.name).unwrap_or(DType::F32);
        let kind = if dt.is_float() {
            InputKind::Data
        } else if dt == DType::Bool {
            InputKind::State
        } else {
            InputKind::Label
        };
        inputs.push(CallInput {
            name: prm.name.name.clone(),
            dtype: dt,
            shape,
            kind,
        });
    }
    let mut l = lower_call(
        p,
        p.items[fid].module,
        &name,
        &inputs,
        &attrs,
        crate::ir::Mode::Train,
    )
    .map_err(|d| d.message)?;
    let g = &mut l.graph;
    let y = l.output;
    let (dt, shape) = (g.node(y).dtype, g.node(y).shape.clone());
    let r = g.push(
        Op::Input {
            name: "r".into(),
            kind: InputKind::Data,
        },
        vec![],
        dt,
        shape.clone(),
    );
    let prod = g.push(Op::Binary(Binary::Mul), vec![y, r], dt, shape.clone());
    let loss = g.push(
        Op::Reduce {
            op: Reduce::Sum,
            axes: (0..shape.len()).collect(),
            keepdim: false,
        },
        vec![prod],
        dt,
        vec![],
    );
    g.outputs.push(("loss".into(), loss));
    let wrt: Vec<ValueId> = g
        .inputs()
        .filter(|(_, n, k)| *k == InputKind::Data && *n != "r")
        .map(|(v, _, _)| v)
        .collect();
    let names: Vec<String> = wrt
        .iter()
        .filter_map(|v| g.input_name(*v).map(str::to_string))
        .collect();
    let classes = dims.get("V").or(dims.get("K")).copied().unwrap_or(3);
    let mut vals = random_inputs(g, 3, classes);
    if POSITIVE.contains(&name.as_str()) {
        for (k, t) in vals.iter_mut() {
            if k != "r" {
                t.data.iter_mut().for_each(|x| *x = x.abs() + 0.5);
            }
        }
    }
    if name == "select" {
        if let Some(c) = vals.get_mut("cond") {
            c.data
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = f64::from(u8::from(i % 3 != 0)));
        }
    }
    Ok(RuleInstance {
        graph: l.graph,
        loss,
        wrt,
        names,
        inputs: vals,
    })
}

/// Checks every derivative rule of the program on a small instance of its primal: the
/// loss is `sum(y * r)` for a fixed random `r`, so the cotangent is `r`.
pub fn check_rules(p: &crate::check::Program, only: Option<&str>) -> Vec<RuleFinding> {
    let mut out = Vec::new();
    for m in &p.modules {
        for rid in &m.rules {
            let name = p.items[*rid].name.clone();
            if only.is_some_and(|o| o != name) {
                continue;
            }
            if name == "stop_gradient" {
                // Its gradient is zero by definition, not the derivative of the identity.
                out.push(RuleFinding {
                    rule: name,
                    result: Err(NOT_DIFFERENTIATED.into()),
                });
                continue;
            }
            let result = rule_instance(p, *rid).and_then(|i| {
                let with =
                    crate::ad::grad(p, &i.graph, i.loss, &i.wrt).map_err(|e| e.to_string())?;
                check(&i.graph, i.loss, &with, &i.names, &i.inputs, 4, 5).map_err(|e| e.to_string())
            });
            out.push(RuleFinding { rule: name, result });
        }
    }
    out
}

/// How far a composite function's own rule is from the VJP derived through its body, at
/// random points of a small instance: the largest relative difference over all input
/// gradients. `None` when the rule's primal is a primitive (nothing to derive).
pub fn composite_discrepancy(
    p: &crate::check::Program,
    rid: usize,
) -> Option<Result<(f64, String), String>> {
    use crate::syntax::ast::ItemKind;
    let name = &p.items[rid].name;
    let fid = p.lookup(p.items[rid].module, name)?;
    match p.item_ast(fid).map(|i| &i.kind) {
        Some(ItemKind::Fn(f)) if f.body.is_some() => {}
        _ => return None,
    }
    Some((|| {
        let i = rule_instance(p, rid)?;
        let by_rule =
            crate::ad::grad_with(p, &i.graph, i.loss, &i.wrt, true).map_err(|e| e.to_string())?;
        let derived =
            crate::ad::grad_with(p, &i.graph, i.loss, &i.wrt, false).map_err(|e| e.to_string())?;
        let a = run(&by_rule, &|n, _| i.inputs.get(n).cloned(), Precision::F64)
            .map_err(|e| e.to_string())?;
        let b = run(&derived, &|n, _| i.inputs.get(n).cloned(), Precision::F64)
            .map_err(|e| e.to_string())?;
        let mut worst = (0.0f64, String::new());
        for n in &i.names {
            let key = format!("grad.{n}");
            let (Some(x), Some(y)) = (by_rule.output(&key), derived.output(&key)) else {
                continue;
            };
            let (x, y) = (&a[x.index()].data, &b[y.index()].data);
            let scale = y
                .iter()
                .chain(x.iter())
                .fold(0.0f64, |m, v| m.max(v.abs()))
                .max(1e-300);
            let d = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() / scale)
                .fold(0.0, f64::max);
            if d > worst.0 || worst.1.is_empty() {
                worst = (d, format!("d{n}"));
            }
        }
        Ok(worst)
    })())
}
