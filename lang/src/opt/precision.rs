//! Mixed precision as a rewrite: every product (matmul and the three convolutions, in
//! the forward and the backward pass alike) reads its operands rounded to bfloat16, and
//! accumulates and returns f32. Everything else — the loss, the optimizer, the master
//! weights — stays f32.
//!
//! A rounded operand is `cast<f32>(cast<bf16>(x))`: the product of two bf16 values is
//! exact in f32, so an f32 product of rounded operands is exactly a bf16 product with
//! f32 accumulation, on any backend; a device with bf16 units may run it on them. A
//! transpose between the operand and its source is kept after the rounding, so that it
//! still folds into the product's strides.

use crate::check::ty::DType;
use crate::ir::{Graph, Op, ValueId};

/// The precision of a step's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Products {
    /// f32 operands (the default).
    #[default]
    F32,
    /// Operands rounded to bfloat16, f32 accumulation.
    Bf16,
}

impl Products {
    /// `"f32"` or `"bf16"`, as recipes and the command line spell it.
    pub fn parse(s: &str) -> Option<Products> {
        match s {
            "f32" => Some(Products::F32),
            "bf16" => Some(Products::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Products::F32 => "f32",
            Products::Bf16 => "bf16",
        }
    }
}

/// `g` with its products at precision `p` (see the module doc); `g` itself for f32.
pub fn with_products(g: &Graph, p: Products) -> Graph {
    if p == Products::F32 {
        return g.clone();
    }
    let mut out = Graph {
        mode: g.mode,
        ..Graph::default()
    };
    let mut map: Vec<ValueId> = Vec::with_capacity(g.nodes.len());
    // The rounded version of each new value, made once.
    let mut rounded: Vec<Option<ValueId>> = Vec::new();
    for n in &g.nodes {
        let mut args: Vec<ValueId> = n.args.iter().map(|a| map[a.index()]).collect();
        if is_product(&n.op) {
            for a in args.iter_mut().take(2) {
                *a = round(&mut out, *a, &mut rounded);
            }
        }
        let v = out.push_at(n.op.clone(), args, n.dtype, n.shape.clone(), n.span);
        map.push(v);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, v)| (name.clone(), map[v.index()]))
        .collect();
    out
}

/// Whether `op` multiplies two float tensors and sums the products.
fn is_product(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul | Op::Conv2d(_) | Op::Conv2dInputGrad(_) | Op::Conv2dWeightGrad(_)
    )
}

/// `v` rounded to bf16 and held as f32 (through a transpose: the transpose of the
/// rounded source).
fn round(out: &mut Graph, v: ValueId, rounded: &mut Vec<Option<ValueId>>) -> ValueId {
    if let Some(Some(r)) = rounded.get(v.index()) {
        return *r;
    }
    let n = out.node(v).clone();
    let r = match n.op {
        Op::Transpose { .. } => {
            let src = round(out, n.args[0], rounded);
            out.push_at(n.op.clone(), vec![src], n.dtype, n.shape.clone(), n.span)
        }
        _ if n.dtype != DType::F32 => v,
        _ => {
            let b = out.push_at(Op::Cast, vec![v], DType::BF16, n.shape.clone(), n.span);
            out.push_at(Op::Cast, vec![b], DType::F32, n.shape.clone(), n.span)
        }
    };
    if rounded.len() <= v.index() {
        rounded.resize(v.index() + 1, None);
    }
    rounded[v.index()] = Some(r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::InputKind;

    fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
        g.push(
            Op::Input {
                name: name.into(),
                kind: InputKind::Data,
            },
            vec![],
            DType::F32,
            shape.to_vec(),
        )
    }

    /// Both operands of a product are rounded once (a value read by two products is
    /// rounded once), a transpose stays next to the product, and nothing else changes.
    #[test]
    fn products_read_rounded_operands() {
        let mut g = Graph::default();
        let x = input(&mut g, "x", &[4, 3]);
        let w = input(&mut g, "w", &[5, 3]);
        let wt = g.push(
            Op::Transpose { perm: vec![1, 0] },
            vec![w],
            DType::F32,
            vec![3, 5],
        );
        let y = g.push(Op::MatMul, vec![x, wt], DType::F32, vec![4, 5]);
        // `y` is read by two products (this one and `gw`'s), `w` by two: rounded once.
        g.push(Op::MatMul, vec![y, w], DType::F32, vec![4, 3]);
        let xt = g.push(
            Op::Transpose { perm: vec![1, 0] },
            vec![x],
            DType::F32,
            vec![3, 4],
        );
        let gw = g.push(Op::MatMul, vec![xt, y], DType::F32, vec![3, 5]);
        g.outputs.push(("y".into(), y));
        g.outputs.push(("gw".into(), gw));
        assert_eq!(with_products(&g, Products::F32), g);
        let r = with_products(&g, Products::Bf16);
        crate::ir::verify(&r).expect("verifies");
        let casts = r.nodes.iter().filter(|n| n.op == Op::Cast).count();
        // x, w, y each rounded once: two casts each.
        assert_eq!(casts, 6, "{r:?}");
        for n in r.nodes.iter().filter(|n| n.op == Op::MatMul) {
            for a in &n.args {
                let a = r.node(*a);
                let src = match a.op {
                    Op::Transpose { .. } => r.node(a.args[0]),
                    _ => a,
                };
                assert_eq!(src.op, Op::Cast);
                assert_eq!(src.dtype, DType::F32);
                assert_eq!(r.node(src.args[0]).dtype, DType::BF16);
            }
        }
    }
}
