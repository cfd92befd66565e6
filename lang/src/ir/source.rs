//! Prints a graph as readable nabla source, for `nabla vjp`: one `let` per value used more
//! than once, everything used once inlined into its user, inputs by name, and each
//! output as `name = expr`. Implicit broadcasts of scalars are left implicit, as a person
//! would write them.

use std::collections::HashMap;

use super::{Binary, Compare, Graph, Op, Unary, ValueId};

fn prec(op: &Op) -> u8 {
    match op {
        Op::Compare(_) => 1,
        Op::Binary(Binary::Add | Binary::Sub) => 2,
        Op::Binary(Binary::Mul | Binary::Div) | Op::MatMul => 3,
        Op::Unary(Unary::Neg) => 4,
        _ => 5,
    }
}

/// The graph's outputs (those `keep` accepts) as nabla source.
pub fn print_source(g: &Graph, keep: &dyn Fn(&str) -> bool) -> String {
    let outputs: Vec<(String, ValueId)> =
        g.outputs.iter().filter(|(n, _)| keep(n)).cloned().collect();
    // Count uses among the nodes the kept outputs need.
    let mut live = vec![false; g.nodes.len()];
    for (_, v) in &outputs {
        live[v.index()] = true;
    }
    let mut uses = vec![0usize; g.nodes.len()];
    for i in (0..g.nodes.len()).rev() {
        if live[i] {
            for a in &g.nodes[i].args {
                live[a.index()] = true;
                uses[a.index()] += 1;
            }
        }
    }
    for (_, v) in &outputs {
        uses[v.index()] += 1;
    }
    let mut names: HashMap<ValueId, String> = HashMap::new();
    let mut exprs: HashMap<ValueId, (String, u8)> = HashMap::new();
    let mut lines = Vec::new();
    let mut next = 0;
    for (i, n) in g.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let v = ValueId(i as u32);
        let arg = |k: usize, min: u8| -> String {
            let a = n.args[k];
            if let Some(name) = names.get(&a) {
                return name.clone();
            }
            match exprs.get(&a) {
                Some((e, p)) if *p < min => format!("({e})"),
                Some((e, _)) => e.clone(),
                None => format!("{a}"),
            }
        };
        let p = prec(&n.op);
        let e = match &n.op {
            Op::Input { name, .. } => {
                names.insert(v, quoted(name));
                continue;
            }
            Op::Const(c) => format!("{c}"),
            Op::Broadcast if g.node(n.args[0]).shape.is_empty() => arg(0, 0),
            Op::Broadcast => format!("broadcast_to({}, {:?})", arg(0, 0), n.shape),
            Op::Unary(Unary::Neg) => format!("-{}", arg(0, 5)),
            Op::Unary(_) | Op::StopGradient => format!("{}({})", n.op.name(), arg(0, 0)),
            Op::Binary(b) => {
                let sym = match b {
                    Binary::Add => Some("+"),
                    Binary::Sub => Some("-"),
                    Binary::Mul => Some("*"),
                    Binary::Div => Some("/"),
                    _ => None,
                };
                match sym {
                    // Left-associative: the right operand needs parentheses at equal precedence.
                    Some(s) => format!("{} {s} {}", arg(0, p), arg(1, p + 1)),
                    None => format!("{}({}, {})", n.op.name(), arg(0, 0), arg(1, 0)),
                }
            }
            Op::Compare(c) => {
                let s = match c {
                    Compare::Eq => "==",
                    Compare::Ne => "!=",
                    Compare::Lt => "<",
                    Compare::Le => "<=",
                    Compare::Gt => ">",
                    Compare::Ge => ">=",
                };
                format!("{} {s} {}", arg(0, 2), arg(1, 2))
            }
            Op::Select => format!("select({}, {}, {})", arg(0, 0), arg(1, 0), arg(2, 0)),
            Op::MatMul => format!("{} @ {}", arg(0, 3), arg(1, 4)),
            Op::Transpose { perm }
                if perm.len() >= 2
                    && perm[..perm.len() - 2]
                        .iter()
                        .enumerate()
                        .all(|(i, p)| i == *p)
                    && perm[perm.len() - 1] == perm.len() - 2 =>
            {
                format!("{}.T", arg(0, 5))
            }
            Op::Transpose { perm } => format!("permute({}, {perm:?})", arg(0, 0)),
            Op::Reduce { axes, keepdim, .. } => {
                let kd = if *keepdim { ", keepdim: true" } else { "" };
                format!("{}({}, axis: {axes:?}{kd})", n.op.name(), arg(0, 0))
            }
            Op::ArgMax { axis } => format!("argmax({}, axis: {axis})", arg(0, 0)),
            Op::Reshape => format!("reshape({}, {:?})", arg(0, 0), n.shape),
            Op::Slice { axis, start, end } => {
                format!("slice({}, {axis}, {start}, {end})", arg(0, 0))
            }
            Op::Pad {
                axis,
                before,
                after,
            } => format!("pad({}, {axis}, {before}, {after})", arg(0, 0)),
            Op::OneHot { classes } => format!("one_hot({}, {classes})", arg(0, 0)),
            Op::Cast => format!("to_f32({})", arg(0, 0)),
            Op::RandomUniform { seed } => format!("random_uniform(seed: {seed})"),
            Op::Conv2d(w)
            | Op::Conv2dInputGrad(w)
            | Op::Conv2dWeightGrad(w)
            | Op::MaxPool2d(w)
            | Op::MaxPool2dGrad(w)
            | Op::AvgPool2d(w)
            | Op::AvgPool2dGrad(w) => {
                let args: Vec<String> = (0..n.args.len()).map(|k| arg(k, 0)).collect();
                format!(
                    "{}({}; k: {}, stride: {}, pad: {}, dilation: {}, groups: {})",
                    n.op.name(),
                    args.join(", "),
                    w.kernel,
                    w.stride,
                    w.pad,
                    w.dilation,
                    w.groups
                )
            }
            Op::Gather | Op::Concat { .. } => {
                let args: Vec<String> = (0..n.args.len()).map(|k| arg(k, 0)).collect();
                format!("{}({})", n.op.name(), args.join(", "))
            }
        };
        // Constants (broadcast or not) are as short as a name: always inline them.
        let constant = matches!(n.op, Op::Const(_))
            || (matches!(n.op, Op::Broadcast) && matches!(g.node(n.args[0]).op, Op::Const(_)));
        if uses[i] > 1 && !constant {
            let name = format!("t{next}");
            next += 1;
            lines.push(format!("let {name} = {e}"));
            names.insert(v, name);
        } else {
            exprs.insert(v, (e, p));
        }
    }
    for (name, v) in outputs {
        // A gradient output is `grad.` and its parameter's name.
        let name = match name.strip_prefix("grad.") {
            Some(p) => format!("grad.{}", quoted(p)),
            None => quoted(&name),
        };
        let e = names
            .get(&v)
            .cloned()
            .or_else(|| exprs.get(&v).map(|x| x.0.clone()))
            .unwrap_or_else(|| format!("{v}"));
        lines.push(format!("{name} = {e}"));
    }
    lines.join("\n") + "\n"
}

/// A name as source: as it is when it reads as one (`x`, `conv1.weight`), else in
/// backticks (`` `1.weight` ``, a parameter of an `nn.Sequential`'s stage 1), which would
/// otherwise read as the number `1.`.
fn quoted(name: &str) -> String {
    let plain = name.split('.').all(|seg| {
        seg.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    if plain {
        name.to_string()
    } else {
        format!("`{name}`")
    }
}
