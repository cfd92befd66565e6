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

use super::{Graph, Op, ValueId};

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
        let want = super::ops::infer(g, &n.op, &n.args).map_err(&err)?;
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
        let Some(target) = Graph::replaced(name) else {
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
