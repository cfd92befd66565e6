//! Reverse-mode AD as an IR → IR pass. Walking the graph backwards from the loss, it
//! instantiates each primitive's derivative rule (nabla source in `std.rules`) at the
//! node's concrete values, sums cotangents where a value fans out, and skips what does
//! not reach the loss or does not depend on the requested inputs. A composite call with
//! its own rule (`softmax_cross_entropy`) is differentiated by that rule. AD never
//! special-cases a layer: it only knows ops and the rule table.

use std::collections::HashSet;

use crate::check::Program;
use crate::check::lower::apply_rule;
use crate::check::ty::{DType, Ty};
use crate::ir::{Binary, Graph, Op, ValueId};

/// Why a gradient cannot be derived: the op, and the path from it to the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct AdError {
    pub op: String,
    pub path: Vec<String>,
    pub message: String,
    /// Where the op comes from in the source, when known.
    pub span: Option<crate::span::Span>,
}

impl AdError {
    /// The error as a diagnostic (E0410).
    pub fn to_diagnostic(&self) -> crate::diag::Diagnostic {
        let mut d = crate::diag::Diagnostic::error("E0410", self.message.clone());
        if let Some(s) = self.span {
            d = d.primary(s, format!("`{}` is computed here", self.op));
        }
        if !self.path.is_empty() {
            d = d.with_note(format!("path to the loss: {}", self.path.join(" -> ")));
        }
        d.with_help("give the op a rule in std.rules, or cut the path with `stop_gradient(x)` if no gradient should flow")
    }
}

impl std::fmt::Display for AdError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.path.is_empty() {
            write!(f, " (path to the loss: {})", self.path.join(" -> "))?;
        }
        Ok(())
    }
}

/// The output holding the gradient for input `name`: `grad.<name>`.
pub fn grad_name(name: &str) -> String {
    format!("grad.{name}")
}

/// The input whose gradient output `name` holds, when it holds one.
pub fn gradient_of(name: &str) -> Option<&str> {
    name.strip_prefix("grad.")
}

/// Appends the gradient of the scalar `loss` with respect to each of `wrt` to a copy of
/// `g`, as outputs `grad.<input name>`.
pub fn grad(p: &Program, g: &Graph, loss: ValueId, wrt: &[ValueId]) -> Result<Graph, AdError> {
    grad_with(p, g, loss, wrt, true)
}

/// [`grad`], optionally deriving through composite functions' bodies instead of using
/// their own rules (to check those rules against the derivation).
pub fn grad_with(
    p: &Program,
    g: &Graph,
    loss: ValueId,
    wrt: &[ValueId],
    composite_rules: bool,
) -> Result<Graph, AdError> {
    let err = |op: &str, path: Vec<String>, message: String| AdError {
        op: op.to_string(),
        path,
        message,
        span: None,
    };
    if !g.node(loss).shape.is_empty() {
        return Err(err(
            "",
            vec![],
            format!(
                "the loss must be a scalar, but it is {:?}",
                g.node(loss).shape
            ),
        ));
    }
    let n = g.nodes.len();
    // Which values depend on a requested input, and which reach the loss.
    let wanted: HashSet<ValueId> = wrt.iter().copied().collect();
    let mut depends = vec![false; n];
    for (i, node) in g.nodes.iter().enumerate() {
        let v = ValueId(i as u32);
        depends[i] = node.dtype.is_float()
            && (wanted.contains(&v)
                || (!matches!(node.op, Op::StopGradient)
                    && node.args.iter().any(|a| depends[a.index()])));
    }
    let mut reaches = vec![false; n];
    reaches[loss.index()] = true;
    for i in (0..n).rev() {
        if reaches[i] {
            for a in &g.nodes[i].args {
                reaches[a.index()] = true;
            }
        }
    }
    let active = |v: ValueId| depends[v.index()] && reaches[v.index()];
    // Nodes inside a composite with its own rule are differentiated by that rule.
    let mut inside = vec![false; n];
    let composites: &[crate::ir::Composite] = if composite_rules { &g.composites } else { &[] };
    for c in composites {
        if active(c.output) {
            for flag in inside.iter_mut().take(c.end).skip(c.start) {
                *flag = true;
            }
            inside[c.output.index()] = false;
        }
    }
    let mut out = g.clone();
    let mut cot: Vec<Option<ValueId>> = vec![None; n];
    cot[loss.index()] = Some(out.push(Op::Const(1.0), vec![], g.node(loss).dtype, vec![]));
    for i in (0..n).rev() {
        let v = ValueId(i as u32);
        let Some(dy) = cot[i] else { continue };
        if !active(v) || inside[i] {
            continue;
        }
        let (rule, attrs, inputs) = match composites.iter().find(|c| c.output == v && !inside[i]) {
            Some(c) => {
                let attrs = c
                    .attrs
                    .iter()
                    .map(|(n, a)| {
                        let t = match a {
                            crate::ir::Attr::Int(i) => Ty::int(*i),
                            crate::ir::Attr::Float(x) => Ty::Float(Some(*x)),
                            crate::ir::Attr::Bool(b) => Ty::Bool(Some(*b)),
                        };
                        (n.clone(), t)
                    })
                    .collect();
                (c.rule.clone(), attrs, c.inputs.clone())
            }
            None => match crate::ir::ops::rule_args(g, v) {
                Ok(None) => continue,
                Ok(Some((r, a))) => (r.to_string(), a, g.node(v).args.clone()),
                Err(op) => {
                    let path = path_to(g, v, loss);
                    let mut e = err(
                        &op,
                        path,
                        format!("`{op}` has no derivative rule, and the gradient flows through it"),
                    );
                    e.span = g.node(v).span;
                    return Err(e);
                }
            },
        };
        let first_new = out.nodes.len();
        let grads = apply_rule(p, &mut out, &rule, &inputs, &attrs, v, dy)
            .map_err(|m| err(&rule, path_to(g, v, loss), m))?;
        // The backward nodes of an op point at the source of the op (not into the rule).
        for node in &mut out.nodes[first_new..] {
            node.span = g.node(v).span;
        }
        for (a, gr) in inputs.iter().zip(grads) {
            let (Some(gr), true) = (gr, active(*a)) else {
                continue;
            };
            cot[a.index()] = Some(match cot[a.index()] {
                None => gr,
                Some(prev) => {
                    let node = out.node(gr).clone();
                    out.push(
                        Op::Binary(Binary::Add),
                        vec![prev, gr],
                        node.dtype,
                        node.shape,
                    )
                }
            });
        }
    }
    for w in wrt {
        let node = g.node(*w).clone();
        let name = match &node.op {
            Op::Input { name, .. } => name.clone(),
            _ => format!("{w}"),
        };
        let value = match cot[w.index()] {
            Some(c) => c,
            None => {
                // No path from this input to the loss: its gradient is zero.
                let z = out.push(Op::Const(0.0), vec![], node.dtype, vec![]);
                if node.shape.is_empty() {
                    z
                } else {
                    out.push(Op::Broadcast, vec![z], node.dtype, node.shape.clone())
                }
            }
        };
        out.outputs.push((grad_name(&name), value));
    }
    out.composites.clear();
    Ok(out)
}

/// The ops from `v` to the loss, following the first consumer that carries gradient to it.
fn path_to(g: &Graph, v: ValueId, loss: ValueId) -> Vec<String> {
    let mut reaches = vec![false; g.nodes.len()];
    reaches[loss.index()] = true;
    for i in (0..g.nodes.len()).rev() {
        if reaches[i] && !matches!(g.nodes[i].op, Op::StopGradient) {
            for a in &g.nodes[i].args {
                reaches[a.index()] = true;
            }
        }
    }
    let mut path = vec![format!("{v} {}", g.node(v).op.name())];
    let mut cur = v;
    while cur != loss && path.len() < 64 {
        let carries = |j: &usize| {
            g.nodes[*j].args.contains(&cur)
                && reaches[*j]
                && !matches!(g.nodes[*j].op, Op::StopGradient)
        };
        let Some(next) = (cur.index() + 1..g.nodes.len()).find(carries) else {
            break;
        };
        cur = ValueId(next as u32);
        path.push(format!("{cur} {}", g.node(cur).op.name()));
    }
    path
}

/// Every float input of kind `kind`.
pub fn inputs_of(g: &Graph, kind: crate::ir::InputKind) -> Vec<ValueId> {
    g.inputs()
        .filter(|(v, _, k)| *k == kind && g.node(*v).dtype != DType::Bool)
        .map(|(v, _, _)| v)
        .collect()
}
