//! Finite-difference gradient checks in f64: the derived VJP against central differences.
//!
//! For each input checked, the gradient is compared (a) along two random directions of
//! the whole tensor, `<grad, v>` against `(f(x + h v) - f(x - h v)) / 2h`, and (b) on a few
//! sampled coordinates. The relative error of a pair is `|a - n| / max(|a|, |n|, floor)`,
//! where `floor` is 1e-6 times the tensor's largest gradient entry, so entries that are
//! zero up to rounding do not divide by zero. The difference quotient is Richardson's
//! extrapolation of central differences, `(4 D(h/2) - D(h)) / 3` with `h = 1e-3`:
//! truncation error O(h⁴) ≈ 1e-12 and rounding O(ε/h) ≈ 1e-13, far below the 1e-6 bar.

use std::collections::HashMap;

use crate::interp::{run, uniform, Precision, RunError, Tensor};
use crate::ir::{Graph, InputKind, ValueId};

/// The worst relative error found for one checked input.
#[derive(Clone, Debug)]
pub struct Finding {
    pub input: String,
    pub worst: f64,
    pub checks: usize,
}

/// Deterministic normal samples (Box–Muller over the counter-based generator).
pub fn normal(seed: u64, i: u64) -> f64 {
    let u1 = uniform(seed, 2 * i).max(1e-300);
    let u2 = uniform(seed, 2 * i + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Random inputs for every input of `g`: floats N(0, scale²) (params scaled by fan-in),
/// labels uniform in `0..classes`, running variances positive.
pub fn random_inputs(g: &Graph, seed: u64, classes: usize) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (k, (v, name, kind)) in g.inputs().enumerate() {
        let node = g.node(v);
        let n = node.numel();
        let s = seed.wrapping_mul(1000).wrapping_add(k as u64);
        let data: Vec<f64> = match kind {
            InputKind::Label => (0..n).map(|i| (uniform(s, i as u64) * classes as f64).floor().min(classes as f64 - 1.0)).collect(),
            InputKind::Param => {
                let fan_in: usize = node.shape.iter().skip(1).product::<usize>().max(1);
                let scale = if node.shape.len() <= 1 { 0.5 } else { (2.0 / fan_in as f64).sqrt() };
                (0..n).map(|i| scale * normal(s, i as u64) + if node.shape.len() <= 1 && name.ends_with("gamma") { 1.0 } else { 0.0 }).collect()
            }
            InputKind::State if name.ends_with("var") => (0..n).map(|i| 0.5 + uniform(s, i as u64)).collect(),
            _ => (0..n).map(|i| normal(s, i as u64)).collect(),
        };
        out.insert(name.to_string(), Tensor::new(node.dtype, node.shape.clone(), data));
    }
    out
}

fn eval(g: &Graph, inputs: &HashMap<String, Tensor>, out: ValueId) -> Result<Vec<Tensor>, RunError> {
    let vals = run(g, &|name, _| inputs.get(name).cloned(), Precision::F64)?;
    let _ = out;
    Ok(vals)
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
    let vals = eval(g_with_grads, inputs, loss)?;
    let f = |ins: &HashMap<String, Tensor>| -> Result<f64, RunError> { Ok(eval(forward, ins, loss)?[loss.index()].data[0]) };
    let h = 1e-3;
    let mut findings = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let Some(gv) = g_with_grads.output(&format!("grad.{name}")) else { continue };
        let grad = &vals[gv.index()];
        let Some(x) = inputs.get(name) else { continue };
        let floor = 1e-6 * grad.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        let rel = |a: f64, n: f64| (a - n).abs() / a.abs().max(n.abs()).max(floor);
        let mut worst = 0.0f64;
        let mut checks = 0;
        let mut probe = |dir: &dyn Fn(usize) -> f64, analytic: f64| -> Result<(), RunError> {
            let central = |step: f64| -> Result<f64, RunError> {
                let mut plus = inputs.clone();
                let mut minus = inputs.clone();
                for i in 0..x.numel() {
                    let d = dir(i);
                    if d != 0.0 {
                        if let Some(t) = plus.get_mut(name) {
                            t.data[i] += step * d;
                        }
                        if let Some(t) = minus.get_mut(name) {
                            t.data[i] -= step * d;
                        }
                    }
                }
                Ok((f(&plus)? - f(&minus)?) / (2.0 * step))
            };
            let numeric = (4.0 * central(h / 2.0)? - central(h)?) / 3.0;
            worst = worst.max(rel(analytic, numeric));
            checks += 1;
            Ok(())
        };
        for r in 0..2u64 {
            let s = seed ^ (k as u64 * 7919 + r * 104_729);
            // A unit direction, so the step is h whatever the tensor's size.
            let norm = (0..x.numel()).map(|i| normal(s, i as u64).powi(2)).sum::<f64>().sqrt().max(1e-300);
            let dir = |i: usize| normal(s, i as u64) / norm;
            let analytic: f64 = (0..x.numel()).map(|i| grad.data[i] * dir(i)).sum();
            probe(&dir, analytic)?;
        }
        for c in 0..coords.min(x.numel()) {
            let i = (uniform(seed ^ 0x5eed, (k * 1000 + c) as u64) * x.numel() as f64) as usize % x.numel();
            let dir = move |j: usize| if j == i { 1.0 } else { 0.0 };
            probe(&dir, grad.data[i])?;
        }
        findings.push(Finding { input: name.clone(), worst, checks });
    }
    Ok(findings)
}
