//! Optimization passes over the IR, each keeping the graph valid (the verifier runs after
//! each in tests):
//!
//! - [`simplify`]: constant folding and algebraic identities (`x·1 = x`, `x + 0 = x`,
//!   `--x = x`, a broadcast or reshape to the same shape is `x`, chains of reshapes,
//!   broadcasts and transposes collapse, `(Aᵀ B)ᵀ = Bᵀ A`, two zero-padded pieces
//!   side by side summed are one padded concatenation, constant factors of a product
//!   gathered: `(a·c₁)·b·c₂ = (a·b)·c₁c₂`);
//! - [`cse`]: common subexpression elimination (same op, same arguments);
//! - [`dce`]: dead code elimination (only what an output needs), renumbering in order.
//!
//! [`optimize`] runs them to a fixed point. [`precision`] rewrites a step's products for
//! mixed precision.

pub mod precision;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::ir::{Binary, Graph, Node, NodeKey, Op, Unary, ValueId};

/// Runs simplify, CSE and DCE until nothing changes.
pub fn optimize(g: &Graph) -> Graph {
    let mut g = dce(g);
    for _ in 0..8 {
        let next = dce(&cse(&simplify(&g)));
        if next == g {
            break;
        }
        g = next;
    }
    g
}

/// The scalar a value always holds, if it is a constant (possibly broadcast).
fn constant(g: &Graph, v: ValueId) -> Option<f64> {
    match &g.node(v).op {
        Op::Const(c) => Some(*c),
        Op::Broadcast | Op::Reshape => constant(g, g.node(v).args[0]),
        _ => None,
    }
}

/// Rewrites each node to a simpler equivalent, recording replacements; uses are
/// redirected through `map` so later nodes see the simplified values.
pub fn simplify(g: &Graph) -> Graph {
    let mut out = Graph {
        mode: g.mode,
        ..Graph::default()
    };
    let mut map: Vec<ValueId> = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let args: Vec<ValueId> = n.args.iter().map(|a| map[a.index()]).collect();
        let v = rewrite(&mut out, n, args);
        map.push(v);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, v)| (name.clone(), map[v.index()]))
        .collect();
    out
}

fn rewrite(out: &mut Graph, n: &Node, args: Vec<ValueId>) -> ValueId {
    let same_shape =
        |out: &Graph, v: ValueId| out.node(v).shape == n.shape && out.node(v).dtype == n.dtype;
    // Rewritten nodes keep the span of the node they replace (errors at run time point there).
    let push = |out: &mut Graph, op: Op, args: Vec<ValueId>| {
        out.push_at(op, args, n.dtype, n.shape.clone(), n.span)
    };
    let c = |out: &Graph, i: usize| args.get(i).and_then(|a| constant(out, *a));
    match &n.op {
        Op::Binary(b) => {
            let (x, y) = (args[0], args[1]);
            // Fold constants.
            if let (Some(a), Some(b2)) = (c(out, 0), c(out, 1)) {
                return splat(out, crate::interp::binary(*b, a, b2), n);
            }
            match (b, c(out, 0), c(out, 1)) {
                (Binary::Add, _, Some(z)) if z == 0.0 && same_shape(out, x) => return x,
                (Binary::Add, Some(z), _) if z == 0.0 && same_shape(out, y) => return y,
                (Binary::Sub, _, Some(z)) if z == 0.0 && same_shape(out, x) => return x,
                (Binary::Sub, Some(z), _) if z == 0.0 => {
                    return push(out, Op::Unary(Unary::Neg), vec![y]);
                }
                (Binary::Mul, _, Some(o)) if o == 1.0 && same_shape(out, x) => return x,
                (Binary::Mul, Some(o), _) if o == 1.0 && same_shape(out, y) => return y,
                (Binary::Mul, _, Some(m)) if m == -1.0 => {
                    return push(out, Op::Unary(Unary::Neg), vec![x]);
                }
                (Binary::Mul, Some(m), _) if m == -1.0 => {
                    return push(out, Op::Unary(Unary::Neg), vec![y]);
                }
                (Binary::Mul, _, Some(z)) | (Binary::Mul, Some(z), _) if z == 0.0 => {
                    return splat(out, 0.0, n);
                }
                (Binary::Div, _, Some(o)) if o == 1.0 && same_shape(out, x) => return x,
                _ => {}
            }
            if *b == Binary::Mul
                && let Some(v) = gather_constants(out, x, y, n)
            {
                return v;
            }
            if *b == Binary::Add
                && let Some(v) = adjacent_pads(out, x, y, n)
            {
                return v;
            }
            // (w + pad(a)) + pad(b) = w + (pad(a) + pad(b)), exactly: where the pads are
            // side by side, every element adds at most one of them.
            if *b == Binary::Add
                && let Op::Binary(Binary::Add) = out.node(x).op
                && out.node(x).shape == n.shape
            {
                let (u, w) = (out.node(x).args[0], out.node(x).args[1]);
                for (pad, rest) in [(u, w), (w, u)] {
                    if let Some(v) = adjacent_pads(out, pad, y, n) {
                        return push(out, Op::Binary(Binary::Add), vec![rest, v]);
                    }
                }
            }
            // a - (-b) = a + b; a + (-b) = a - b
            if let Op::Unary(Unary::Neg) = out.node(y).op {
                let inner = out.node(y).args[0];
                match b {
                    Binary::Add => return push(out, Op::Binary(Binary::Sub), vec![x, inner]),
                    Binary::Sub => return push(out, Op::Binary(Binary::Add), vec![x, inner]),
                    _ => {}
                }
            }
            push(out, n.op.clone(), args)
        }
        Op::Unary(Unary::Neg) => match &out.node(args[0]).op {
            Op::Unary(Unary::Neg) => out.node(args[0]).args[0],
            _ => match c(out, 0) {
                Some(v) => splat(out, -v, n),
                None => push(out, n.op.clone(), args),
            },
        },
        Op::Broadcast | Op::Reshape if same_shape(out, args[0]) => args[0],
        Op::Broadcast => match (&out.node(args[0]).op, c(out, 0)) {
            (_, Some(v)) => splat(out, v, n),
            (Op::Broadcast, _) => {
                let inner = out.node(args[0]).args[0];
                push(out, Op::Broadcast, vec![inner])
            }
            _ => push(out, n.op.clone(), args),
        },
        Op::Reshape => match &out.node(args[0]).op {
            Op::Reshape => {
                let inner = out.node(args[0]).args[0];
                if same_shape(out, inner) {
                    inner
                } else {
                    push(out, Op::Reshape, vec![inner])
                }
            }
            _ => push(out, n.op.clone(), args),
        },
        Op::Transpose { perm } => {
            if perm.iter().enumerate().all(|(i, p)| i == *p) {
                return args[0];
            }
            let inner = out.node(args[0]).clone();
            match &inner.op {
                // (xᵀ)ᵀ with composed permutations.
                Op::Transpose { perm: p0 } => {
                    let composed: Vec<usize> = perm.iter().map(|i| p0[*i]).collect();
                    if composed.iter().enumerate().all(|(i, p)| i == *p) {
                        inner.args[0]
                    } else {
                        push(out, Op::Transpose { perm: composed }, vec![inner.args[0]])
                    }
                }
                // (A B)ᵀ = Bᵀ Aᵀ for matrices: keeps an outer product an outer product.
                Op::MatMul if perm == &[1, 0] => {
                    let (a, b) = (inner.args[0], inner.args[1]);
                    let bt = transpose2(out, b);
                    let at = transpose2(out, a);
                    push(out, Op::MatMul, vec![bt, at])
                }
                _ => push(out, n.op.clone(), args),
            }
        }
        // A pad by nothing (left by `adjacent_pads` once the pieces cover the axis).
        Op::Pad { .. } if same_shape(out, args[0]) => args[0],
        Op::Select if args[1] == args[2] => args[1],
        _ => push(out, n.op.clone(), args),
    }
}

/// Constant factors of a product gathered into one: `(a·c₁)·c₂ = a·(c₁c₂)`, and
/// `(a·c)·y = (a·y)·c` so that the next constant folds in too. A derived backward pass
/// multiplies by every constant of the forward pass one at a time (GELU's gradient
/// `dy·(0.5·x)·1.128·e·0.707` costs a fused loop four multiplies, one after this). Only
/// for floats, where the products differ from the original in the last bit at most
/// (`c₁c₂` is rounded once).
fn gather_constants(out: &mut Graph, x: ValueId, y: ValueId, n: &Node) -> Option<ValueId> {
    if !n.dtype.is_float() {
        return None;
    }
    // `v` as `a·c` (either way round) with `a` of the product's shape: (a, c).
    let scaled = |out: &Graph, v: ValueId| {
        let node = out.node(v);
        if node.op != Op::Binary(Binary::Mul) || node.shape != n.shape || node.dtype != n.dtype {
            return None;
        }
        let (p, q) = (node.args[0], node.args[1]);
        match (constant(out, p), constant(out, q)) {
            (None, Some(c)) if out.node(p).shape == n.shape => Some((p, c)),
            (Some(c), None) if out.node(q).shape == n.shape => Some((q, c)),
            _ => None,
        }
    };
    let mul = |out: &mut Graph, a: ValueId, b: ValueId| {
        out.push_at(
            Op::Binary(Binary::Mul),
            vec![a, b],
            n.dtype,
            n.shape.clone(),
            n.span,
        )
    };
    match (constant(out, x), constant(out, y)) {
        // (a·c₁)·c₂, either way round.
        (None, Some(c2)) | (Some(c2), None) => {
            let v = if constant(out, x).is_some() { y } else { x };
            let (a, c1) = scaled(out, v)?;
            let c = splat(out, c1 * c2, n);
            Some(mul(out, a, c))
        }
        // (a·c)·y or x·(a·c): the constant moves out.
        (None, None) => {
            let ((a, c), other) = match scaled(out, x) {
                Some(s) => (s, y),
                None => (scaled(out, y)?, x),
            };
            let inner = mul(out, a, other);
            let c = splat(out, c, n);
            Some(mul(out, inner, c))
        }
        (Some(_), Some(_)) => None,
    }
}

/// `pad(a) + pad(b)` where the two pads place `a` and `b` side by side along one axis is
/// `pad(concat(a, b))`: the backward pass of slices that split an axis (attention's
/// `qkv[0]`, `qkv[1]`, `qkv[2]`) sums one zero-padded gradient per slice, and after two
/// rewrites that is one concatenation, without writing and adding the zeros.
fn adjacent_pads(out: &mut Graph, x: ValueId, y: ValueId, n: &Node) -> Option<ValueId> {
    let pad = |v: ValueId| match out.node(v).op {
        Op::Pad {
            axis,
            before,
            after,
        } => Some((axis, before, after, out.node(v).args[0])),
        _ => None,
    };
    let (p, q) = (pad(x)?, pad(y)?);
    let axis = p.0;
    if q.0 != axis || out.node(x).shape != n.shape || out.node(y).shape != n.shape {
        return None;
    }
    let len = |v: ValueId| out.node(v).shape[axis];
    // The first piece ends where the second begins.
    let (first, second) = if p.1 + len(p.3) == q.1 {
        (p, q)
    } else if q.1 + len(q.3) == p.1 {
        (q, p)
    } else {
        return None;
    };
    let (before, after, l1, l2) = (first.1, second.2, len(first.3), len(second.3));
    let (first, second) = (first.3, second.3);
    if out.node(first).dtype != n.dtype || out.node(second).dtype != n.dtype {
        return None;
    }
    let mut shape = n.shape.clone();
    shape[axis] = l1 + l2;
    let cat = out.push_at(
        Op::Concat { axis },
        vec![first, second],
        n.dtype,
        shape,
        n.span,
    );
    if before == 0 && after == 0 {
        return Some(cat);
    }
    Some(out.push_at(
        Op::Pad {
            axis,
            before,
            after,
        },
        vec![cat],
        n.dtype,
        n.shape.clone(),
        n.span,
    ))
}

fn transpose2(out: &mut Graph, v: ValueId) -> ValueId {
    let node = out.node(v).clone();
    if let Op::Transpose { perm } = &node.op
        && perm == &[1, 0]
    {
        return node.args[0];
    }
    let shape = vec![node.shape[1], node.shape[0]];
    out.push(
        Op::Transpose { perm: vec![1, 0] },
        vec![v],
        node.dtype,
        shape,
    )
}

/// A constant `v` of `n`'s type.
fn splat(out: &mut Graph, v: f64, n: &Node) -> ValueId {
    let c = out.push_at(Op::Const(v), vec![], n.dtype, vec![], n.span);
    if n.shape.is_empty() {
        c
    } else {
        out.push_at(Op::Broadcast, vec![c], n.dtype, n.shape.clone(), n.span)
    }
}

/// Merges nodes with the same op, arguments and type.
pub fn cse(g: &Graph) -> Graph {
    let mut out = Graph {
        mode: g.mode,
        ..Graph::default()
    };
    let mut map: Vec<ValueId> = Vec::with_capacity(g.nodes.len());
    // Each kept node by value (see `NodeKey`), keyed by its index in `out`: inputs are
    // distinct by name; everything else is a pure function of its args.
    let mut seen: HashMap<u64, Vec<ValueId>> = HashMap::new();
    for n in &g.nodes {
        let node = crate::ir::Node {
            args: n.args.iter().map(|a| map[a.index()]).collect(),
            ..n.clone()
        };
        let hash = {
            let mut h = std::hash::DefaultHasher::new();
            NodeKey(&node).hash(&mut h);
            h.finish()
        };
        let same = seen
            .get(&hash)
            .and_then(|vs| vs.iter().find(|v| NodeKey(out.node(**v)) == NodeKey(&node)));
        let v = match same {
            Some(v) => *v,
            None => {
                let v = out.push_at(node.op, node.args, node.dtype, node.shape, node.span);
                seen.entry(hash).or_default().push(v);
                v
            }
        };
        map.push(v);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, v)| (name.clone(), map[v.index()]))
        .collect();
    out
}

/// Keeps what the outputs need (and every input, so a graph's signature never changes).
pub fn dce(g: &Graph) -> Graph {
    let mut live = vec![false; g.nodes.len()];
    for (_, v) in &g.outputs {
        live[v.index()] = true;
    }
    for i in (0..g.nodes.len()).rev() {
        if matches!(g.nodes[i].op, Op::Input { .. }) {
            live[i] = true;
        }
        if live[i] {
            for a in &g.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    let mut out = Graph {
        mode: g.mode,
        ..Graph::default()
    };
    let mut map: Vec<Option<ValueId>> = vec![None; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if live[i] {
            let args = n.args.iter().filter_map(|a| map[a.index()]).collect();
            map[i] = Some(out.push_at(n.op.clone(), args, n.dtype, n.shape.clone(), n.span));
        }
    }
    out.outputs = g
        .outputs
        .iter()
        .filter_map(|(name, v)| map[v.index()].map(|m| (name.clone(), m)))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::ty::DType;
    use crate::interp::{Precision, Tensor};
    use crate::ir::InputKind;

    /// A [3, 2, 4] input split in three along axis 0, the pieces scaled and put back
    /// with pads in the order (2, 0, 1), as a backward pass would sum them.
    fn split_and_pad() -> Graph {
        let mut g = Graph::default();
        let f = DType::F32;
        let x = g.push(
            Op::Input {
                name: "x".into(),
                kind: InputKind::Data,
            },
            vec![],
            f,
            vec![3, 2, 4],
        );
        let two = g.push(Op::Const(2.0), vec![], f, vec![]);
        let two = g.push(Op::Broadcast, vec![two], f, vec![1, 2, 4]);
        let mut padded = Vec::new();
        for i in [2, 0, 1] {
            let s = g.push(
                Op::Slice {
                    axis: 0,
                    start: i,
                    end: i + 1,
                },
                vec![x],
                f,
                vec![1, 2, 4],
            );
            let s = g.push(Op::Binary(Binary::Mul), vec![s, two], f, vec![1, 2, 4]);
            padded.push(g.push(
                Op::Pad {
                    axis: 0,
                    before: i,
                    after: 2 - i,
                },
                vec![s],
                f,
                vec![3, 2, 4],
            ));
        }
        let sum = g.push(
            Op::Binary(Binary::Add),
            vec![padded[0], padded[1]],
            f,
            vec![3, 2, 4],
        );
        let sum = g.push(
            Op::Binary(Binary::Add),
            vec![sum, padded[2]],
            f,
            vec![3, 2, 4],
        );
        g.outputs.push(("y".into(), sum));
        g
    }

    /// The graph's output before and after [`optimize`], on the interpreter in f64.
    fn outputs(g: &Graph, o: &Graph) -> (Vec<f64>, Vec<f64>) {
        let x = Tensor {
            dtype: DType::F32,
            shape: vec![3, 2, 4],
            data: (0..24).map(|i| i as f64 - 7.5).collect(),
        };
        let input = |_: &str, _: InputKind| Some(x.clone());
        let y = |g: &Graph| {
            let vals = crate::interp::run(g, &input, Precision::F64).expect("runs");
            vals[g.outputs[0].1.index()].data.clone()
        };
        (y(g), y(o))
    }

    #[test]
    fn padded_pieces_side_by_side_become_one_concatenation() {
        let g = split_and_pad();
        let o = optimize(&g);
        crate::ir::verify(&o).expect("the optimized graph verifies");
        let count = |op: &str| o.nodes.iter().filter(|n| n.op.name() == op).count();
        // Pieces 2 and 0 are not neighbours; piece 1 meets one of them, then the other.
        assert_eq!(
            (count("pad"), count("concat"), count("add")),
            (0, 2, 0),
            "{o:?}"
        );
        let (before, after) = outputs(&g, &o);
        assert_eq!(before, after);
        assert_eq!(
            after,
            (0..24).map(|i| 2.0 * (i as f64 - 7.5)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn overlapping_pads_are_added() {
        let mut g = split_and_pad();
        // Move piece 2 to position 1, over piece 1: only it and piece 0 are neighbours.
        if let Op::Pad { before, after, .. } = &mut g.nodes[5].op {
            (*before, *after) = (1, 1);
        } else {
            panic!("node 5 is the first pad: {:?}", g.nodes[5].op);
        }
        let o = optimize(&g);
        crate::ir::verify(&o).expect("the optimized graph verifies");
        let count = |op: &str| o.nodes.iter().filter(|n| n.op.name() == op).count();
        assert_eq!(
            (count("pad"), count("concat"), count("add")),
            (2, 1, 1),
            "{o:?}"
        );
        let (before, after) = outputs(&g, &o);
        assert_eq!(before, after);
    }

    /// `((x·0.5)·x·1.25)·(x·−3)`: the three constants become one factor, −1.875, applied
    /// once, and the value on the interpreter is the original's to the last bits of f64.
    #[test]
    fn constant_factors_of_a_product_are_gathered() {
        let mut g = Graph::default();
        let f = DType::F32;
        let shape = vec![3, 2, 4];
        let x = g.push(
            Op::Input {
                name: "x".into(),
                kind: InputKind::Data,
            },
            vec![],
            f,
            shape.clone(),
        );
        let mut konst = |g: &mut Graph, c: f64| {
            let k = g.push(Op::Const(c), vec![], f, vec![]);
            g.push(Op::Broadcast, vec![k], f, shape.clone())
        };
        let (half, five_quarters, minus_three) =
            (konst(&mut g, 0.5), konst(&mut g, 1.25), konst(&mut g, -3.0));
        let mul = |g: &mut Graph, a: ValueId, b: ValueId| {
            g.push(Op::Binary(Binary::Mul), vec![a, b], f, vec![3, 2, 4])
        };
        let a = mul(&mut g, x, half);
        let b = mul(&mut g, a, x);
        let c = mul(&mut g, five_quarters, b);
        let d = mul(&mut g, x, minus_three);
        let y = mul(&mut g, c, d);
        g.outputs.push(("y".into(), y));
        let o = optimize(&g);
        crate::ir::verify(&o).expect("the optimized graph verifies");
        let consts: Vec<f64> = o
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Const(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(consts, vec![-1.875], "{o:?}");
        let muls = o
            .nodes
            .iter()
            .filter(|n| n.op == Op::Binary(Binary::Mul))
            .count();
        assert_eq!(muls, 3, "x·x·x and one constant: {o:?}");
        let (before, after) = outputs(&g, &o);
        for (b, a) in before.iter().zip(&after) {
            assert!((a - b).abs() <= 1e-12 * b.abs(), "{b} vs {a}");
        }
    }
}
