//! Graphs and nodes as keys: hashing and equality by value, floats by their bits, spans
//! ignored. Common-subexpression elimination keys nodes this way, and backends key their
//! compiled graphs by [`Graph::fingerprint`] (confirmed by [`Graph::same_computation`])
//! instead of printing the graph on every compile.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::{Graph, Node, Op};

impl Hash for Op {
    fn hash<H: Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            Op::Input { name, kind } => (name, kind).hash(h),
            Op::Const(c) => c.to_bits().hash(h),
            Op::Unary(u) => u.hash(h),
            Op::Binary(b) => b.hash(h),
            Op::Compare(c) => c.hash(h),
            Op::Reduce { op, axes, keepdim } => (op, axes, keepdim).hash(h),
            Op::ArgMax { axis } | Op::Concat { axis } => axis.hash(h),
            Op::Transpose { perm } => perm.hash(h),
            Op::Slice { axis, start, end } => (axis, start, end).hash(h),
            Op::Pad {
                axis,
                before,
                after,
            } => (axis, before, after).hash(h),
            Op::OneHot { classes } => classes.hash(h),
            Op::Conv2d(w)
            | Op::Conv2dInputGrad(w)
            | Op::Conv2dWeightGrad(w)
            | Op::MaxPool2d(w)
            | Op::MaxPool2dGrad(w)
            | Op::AvgPool2d(w)
            | Op::AvgPool2dGrad(w) => w.hash(h),
            Op::RandomUniform { seed } => seed.hash(h),
            Op::Select
            | Op::MatMul
            | Op::Reshape
            | Op::Broadcast
            | Op::Gather
            | Op::Cast
            | Op::StopGradient => {}
        }
    }
}

impl Op {
    /// Equality consistent with [`Hash`]: constants are equal when their bits are (so
    /// `-0.0` is not `0.0`, and a NaN is itself).
    pub fn same(&self, other: &Op) -> bool {
        match (self, other) {
            (Op::Const(a), Op::Const(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }
}

/// A node by value, as common-subexpression elimination compares them: op, arguments
/// and type (the span is where it came from, not what it computes).
#[derive(Clone, Debug)]
pub struct NodeKey<'a>(pub &'a Node);

impl PartialEq for NodeKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0, other.0);
        a.op.same(&b.op) && a.args == b.args && a.dtype == b.dtype && a.shape == b.shape
    }
}

impl Eq for NodeKey<'_> {}

impl Hash for NodeKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let n = self.0;
        (&n.op, &n.args, n.dtype, &n.shape).hash(h);
    }
}

impl Graph {
    /// A hash of what the graph computes (nodes by value, outputs, mode); equal for
    /// graphs that [`Graph::same_computation`] says are the same.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.nodes.len().hash(&mut h);
        for n in &self.nodes {
            NodeKey(n).hash(&mut h);
        }
        self.outputs.hash(&mut h);
        self.mode.hash(&mut h);
        h.finish()
    }

    /// Whether two graphs compute the same thing in the same way: the same nodes by
    /// value, outputs and mode (spans and composite annotations aside).
    pub fn same_computation(&self, other: &Graph) -> bool {
        self.nodes.len() == other.nodes.len()
            && self
                .nodes
                .iter()
                .zip(&other.nodes)
                .all(|(a, b)| NodeKey(a) == NodeKey(b))
            && self.outputs == other.outputs
            && self.mode == other.mode
    }
}
