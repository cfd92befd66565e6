//! The IR verifier. It checks that:
//!
//! 1. every argument refers to an earlier node (SSA order, no cycles, no dangling ids);
//! 2. every op has its number of arguments;
//! 3. every node's dtype and shape are the ones its op gives for its arguments' types —
//!    elementwise ops have operands of their own shape, matmul's inner dims agree,
//!    reductions, transposes, reshapes (same element count), broadcasts (only 1-sized or
//!    missing dims stretch), slices, concats, convolutions and poolings have consistent
//!    geometry;
//! 4. inputs have unique names, and every output refers to an existing node;
//! 5. an output `state.N` that names input `N` (the state convention: it replaces the
//!    input after a run) has that input's dtype and shape.
//!
//! Every pass keeps a graph valid; tests run the verifier after each one.

use std::collections::HashSet;

use super::{Graph, Op, ValueId, Window};
use crate::check::ty::DType;

/// A verifier finding: the node and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub node: Option<ValueId>,
    pub message: String,
}

pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let mut names = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        let err = |m: String| VerifyError {
            node: Some(id),
            message: format!("{id} = {}: {m}", n.op.name()),
        };
        for a in &n.args {
            if a.index() >= i {
                return Err(err(format!("argument {a} is not defined before its use")));
            }
        }
        if let Op::Input { name, .. } = &n.op
            && !names.insert(name.clone())
        {
            return Err(err(format!("input `{name}` is defined twice")));
        }
        let want = expected(g, n.op.clone(), &n.args).map_err(&err)?;
        if let Some((dt, shape)) = want
            && (dt != n.dtype || shape != n.shape)
        {
            return Err(err(format!(
                "declared {}{:?}, but its arguments give {}{:?}",
                n.dtype.name(),
                n.shape,
                dt.name(),
                shape
            )));
        }
    }
    for (name, v) in &g.outputs {
        if v.index() >= g.nodes.len() {
            return Err(VerifyError {
                node: None,
                message: format!("output `{name}` refers to missing {v}"),
            });
        }
        let Some(target) = name.strip_prefix("state.") else {
            continue;
        };
        if let Some((i, _, _)) = g.inputs().find(|(_, n, _)| *n == target) {
            let (a, b) = (g.node(*v), g.node(i));
            if a.dtype != b.dtype || a.shape != b.shape {
                return Err(VerifyError {
                    node: Some(*v),
                    message: format!(
                        "output `{name}` is {}{:?}, but input `{target}` is {}{:?}",
                        a.dtype.name(),
                        a.shape,
                        b.dtype.name(),
                        b.shape
                    ),
                });
            }
        }
    }
    Ok(())
}

fn arity(op: &Op) -> usize {
    match op {
        Op::Input { .. } | Op::Const(_) | Op::RandomUniform { .. } => 0,
        Op::Binary(_) | Op::Compare(_) | Op::MatMul | Op::Gather => 2,
        Op::Conv2d(_) | Op::Conv2dInputGrad(_) | Op::Conv2dWeightGrad(_) | Op::MaxPool2dGrad(_) => {
            2
        }
        Op::Select => 3,
        Op::Concat { .. } => usize::MAX,
        _ => 1,
    }
}

fn conv_out(size: usize, w: &Window) -> Option<usize> {
    let span = w.dilation * (w.kernel.checked_sub(1)?) + 1;
    (size + 2 * w.pad)
        .checked_sub(span)
        .map(|x| x / w.stride.max(1) + 1)
}

/// The (dtype, shape) an op gives, or `None` when the node's own type is authoritative
/// (inputs, reshapes, broadcasts, gradients that reconstruct an input's shape, casts), after
/// checking what can be checked.
#[allow(clippy::type_complexity)]
fn expected(g: &Graph, op: Op, args: &[ValueId]) -> Result<Option<(DType, Vec<usize>)>, String> {
    let n = arity(&op);
    if n != usize::MAX && args.len() != n {
        return Err(format!("takes {n} arguments, given {}", args.len()));
    }
    let a = |i: usize| g.node(args[i]);
    Ok(match op {
        Op::Input { .. } | Op::Reshape | Op::Broadcast | Op::Cast | Op::RandomUniform { .. } => {
            None
        }
        Op::Const(_) => None,
        Op::Unary(_) | Op::StopGradient => Some((a(0).dtype, a(0).shape.clone())),
        Op::Binary(_) => {
            if a(0).shape != a(1).shape || a(0).dtype != a(1).dtype {
                return Err(format!(
                    "operands differ: {:?} and {:?} (broadcast explicitly)",
                    a(0).shape,
                    a(1).shape
                ));
            }
            Some((a(0).dtype, a(0).shape.clone()))
        }
        Op::Compare(_) => {
            if a(0).shape != a(1).shape {
                return Err(format!(
                    "operands differ: {:?} and {:?}",
                    a(0).shape,
                    a(1).shape
                ));
            }
            Some((DType::Bool, a(0).shape.clone()))
        }
        Op::Select => {
            if a(0).dtype != DType::Bool || a(0).shape != a(1).shape || a(1).shape != a(2).shape {
                return Err("select needs a bool condition and three equal shapes".into());
            }
            Some((a(1).dtype, a(1).shape.clone()))
        }
        Op::Reduce { axes, keepdim, .. } => {
            let x = a(0);
            if axes.iter().any(|ax| *ax >= x.shape.len()) {
                return Err(format!(
                    "axes {axes:?} out of range for rank {}",
                    x.shape.len()
                ));
            }
            let shape = x
                .shape
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    if axes.contains(&i) {
                        keepdim.then_some(1)
                    } else {
                        Some(*d)
                    }
                })
                .collect();
            Some((x.dtype, shape))
        }
        Op::ArgMax { axis } => {
            let x = a(0);
            if axis >= x.shape.len() {
                return Err("axis out of range".into());
            }
            let mut s = x.shape.clone();
            s.remove(axis);
            Some((DType::I32, s))
        }
        Op::MatMul => {
            let (x, y) = (a(0), a(1));
            let (r, q) = (x.shape.len(), y.shape.len());
            if r < 2
                || r != q
                || x.shape[..r - 2] != y.shape[..q - 2]
                || x.shape[r - 1] != y.shape[q - 2]
            {
                return Err(format!("cannot multiply {:?} @ {:?}", x.shape, y.shape));
            }
            let mut s = x.shape[..r - 1].to_vec();
            s.push(y.shape[q - 1]);
            Some((x.dtype, s))
        }
        Op::Transpose { perm } => {
            let x = a(0);
            let mut sorted = perm.clone();
            sorted.sort();
            if sorted != (0..x.shape.len()).collect::<Vec<_>>() {
                return Err(format!(
                    "{perm:?} is not a permutation of {} axes",
                    x.shape.len()
                ));
            }
            Some((x.dtype, perm.iter().map(|p| x.shape[*p]).collect()))
        }
        Op::Slice { axis, start, end } => {
            let x = a(0);
            if axis >= x.shape.len() || start > end || end > x.shape[axis] {
                return Err(format!(
                    "slice {start}..{end} of axis {axis} out of range for {:?}",
                    x.shape
                ));
            }
            let mut s = x.shape.clone();
            s[axis] = end - start;
            Some((x.dtype, s))
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let x = a(0);
            if axis >= x.shape.len() {
                return Err("axis out of range".into());
            }
            let mut s = x.shape.clone();
            s[axis] += before + after;
            Some((x.dtype, s))
        }
        Op::Concat { axis } => {
            let first = a(0);
            let mut s = first.shape.clone();
            if axis >= s.len() {
                return Err("axis out of range".into());
            }
            s[axis] = 0;
            for v in args {
                let n = g.node(*v);
                if n.shape.len() != first.shape.len() || n.dtype != first.dtype {
                    return Err("concat of different ranks or dtypes".into());
                }
                s[axis] += n.shape[axis];
            }
            Some((first.dtype, s))
        }
        Op::Gather => {
            let (t, idx) = (a(0), a(1));
            if t.shape.len() != 2 {
                return Err("gather's table must be [V, D]".into());
            }
            let mut s = idx.shape.clone();
            s.push(t.shape[1]);
            Some((t.dtype, s))
        }
        Op::OneHot { classes } => {
            let mut s = a(0).shape.clone();
            s.push(classes);
            Some((DType::F32, s))
        }
        Op::Conv2d(w) => {
            let (x, k) = (a(0), a(1));
            if x.shape.len() != 4
                || k.shape.len() != 4
                || x.shape[1] != k.shape[1] * w.groups
                || w.groups == 0
                || !k.shape[0].is_multiple_of(w.groups)
                || k.shape[2] != w.kernel
            {
                return Err(format!(
                    "conv2d of {:?} with weights {:?}, groups {}",
                    x.shape, k.shape, w.groups
                ));
            }
            let oh = conv_out(x.shape[2], &w).ok_or("window larger than the padded input")?;
            let ow = conv_out(x.shape[3], &w).ok_or("window larger than the padded input")?;
            Some((x.dtype, vec![x.shape[0], k.shape[0], oh, ow]))
        }
        Op::MaxPool2d(w) | Op::AvgPool2d(w) => {
            let x = a(0);
            if x.shape.len() != 4 {
                return Err("pooling needs [B, C, H, W]".into());
            }
            let oh = conv_out(x.shape[2], &w).ok_or("window larger than the padded input")?;
            let ow = conv_out(x.shape[3], &w).ok_or("window larger than the padded input")?;
            Some((x.dtype, vec![x.shape[0], x.shape[1], oh, ow]))
        }
        Op::Conv2dInputGrad(_)
        | Op::Conv2dWeightGrad(_)
        | Op::MaxPool2dGrad(_)
        | Op::AvgPool2dGrad(_) => None,
    })
}
