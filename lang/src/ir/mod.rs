//! The tensor IR: a closed set of primitive ops over concrete shapes, in an arena of nodes
//! addressed by typed ids, in SSA form (each node is defined once, before its uses).
//!
//! A [`Graph`] is what the compiler differentiates, optimizes and hands to a backend, and
//! what the reference interpreter runs. Shapes are concrete (the batch is fixed when a
//! step is lowered): one compiled step per batch shape. Broadcasting is explicit
//! ([`Op::Broadcast`]), so every elementwise op has operands of its own shape, which keeps
//! AD and the backends simple.

mod key;
pub mod ops;
mod print;
mod source;
mod verify;

use std::fmt;

pub use key::NodeKey;
pub use print::{parse_graph, print_graph};
pub use source::print_source;
pub use verify::verify;

use crate::check::ty::DType;

/// A value in a [`Graph`]: the index of the node that defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// What an input of the graph is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// A batch of examples.
    Data,
    /// Labels or other integer data.
    Label,
    /// A trained parameter.
    Param,
    /// Non-trained state (batchnorm running statistics).
    State,
    /// The cotangent of an output, in a backward graph.
    Cotangent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Relu,
    Sqrt,
    Rsqrt,
    Abs,
    Erf,
    Sin,
    Cos,
    Sign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Max,
}

/// Convolution and pooling geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub dilation: usize,
    pub groups: usize,
}

/// The closed set of primitive ops. Each has one derivative rule in `std.rules` (or none:
/// then it is not differentiable and AD says so).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input {
        name: String,
        kind: InputKind,
    },
    /// A scalar constant (shape `[]`); broadcast it to use it with a tensor.
    Const(f64),
    Unary(Unary),
    Binary(Binary),
    /// Elementwise comparison to a `bool` tensor.
    Compare(Compare),
    /// `select(cond, a, b)`: `a` where `cond`, else `b`.
    Select,
    Reduce {
        op: Reduce,
        axes: Vec<usize>,
        keepdim: bool,
    },
    ArgMax {
        axis: usize,
    },
    /// `[..., m, k] @ [..., k, n]` with equal leading dims.
    MatMul,
    Transpose {
        perm: Vec<usize>,
    },
    /// Same elements, the node's shape.
    Reshape,
    /// Stretches 1-sized or missing (leading) dims to the node's shape.
    Broadcast,
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Zeros before and after one axis.
    Pad {
        axis: usize,
        before: usize,
        after: usize,
    },
    Concat {
        axis: usize,
    },
    /// `gather(table [V, D], idx [...]) -> [..., D]`.
    Gather,
    OneHot {
        classes: usize,
    },
    Conv2d(Window),
    /// Gradient of conv2d for its input (args: dy, w).
    Conv2dInputGrad(Window),
    /// Gradient of conv2d for its weights (args: x, dy).
    Conv2dWeightGrad(Window),
    MaxPool2d(Window),
    /// args: x, dy.
    MaxPool2dGrad(Window),
    AvgPool2d(Window),
    /// args: dy.
    AvgPool2dGrad(Window),
    /// Uniform [0, 1) numbers from a counter-based generator: `seed` and the element index.
    RandomUniform {
        seed: u64,
    },
    Cast,
    /// The identity forward; AD stops here.
    StopGradient,
}

impl Unary {
    pub const ALL: [Unary; 13] = [
        Unary::Neg,
        Unary::Exp,
        Unary::Log,
        Unary::Tanh,
        Unary::Sigmoid,
        Unary::Relu,
        Unary::Sqrt,
        Unary::Rsqrt,
        Unary::Abs,
        Unary::Erf,
        Unary::Sin,
        Unary::Cos,
        Unary::Sign,
    ];
    /// The op of a primitive's name (`"exp"`), the inverse of [`Op::name`].
    pub fn from_name(name: &str) -> Option<Unary> {
        Unary::ALL.into_iter().find(|u| u.name() == name)
    }
}

impl Compare {
    pub const ALL: [Compare; 6] = [
        Compare::Eq,
        Compare::Ne,
        Compare::Lt,
        Compare::Le,
        Compare::Gt,
        Compare::Ge,
    ];
}

impl Binary {
    pub const ALL: [Binary; 7] = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
        Binary::Min,
        Binary::Pow,
    ];
    /// The op of a primitive's name (`"add"`, `"maximum"`), the inverse of [`Op::name`].
    pub fn from_name(name: &str) -> Option<Binary> {
        Binary::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl Op {
    /// The op's name in the textual form (its row of the op table).
    pub fn name(&self) -> &'static str {
        self.row().name
    }
}

/// One node: an op, its arguments, and the type of the value it defines.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The source expression the node was lowered from, for diagnostics (not printed).
    pub span: Option<crate::span::Span>,
}

impl Node {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Whether a graph computes a training step (batch statistics, dropout) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Train,
    Eval,
}

/// A compile-time argument value recorded in the IR.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A call of a composite function that has its own derivative rule: the nodes
/// `start..end` compute `output` from `inputs`. AD applies the rule here instead of
/// deriving through the body.
#[derive(Clone, Debug, PartialEq)]
pub struct Composite {
    pub rule: String,
    pub inputs: Vec<ValueId>,
    /// The call's non-tensor arguments, which the rule may use.
    pub attrs: Vec<(String, Attr)>,
    pub output: ValueId,
    pub start: usize,
    pub end: usize,
}

/// A function from named inputs to named outputs, as an arena of nodes in SSA order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub outputs: Vec<(String, ValueId)>,
    pub mode: Mode,
    pub composites: Vec<Composite>,
}

impl Graph {
    /// How many values integer input `v` may take: the fewest classes of a `one_hot` or rows
    /// of a `gather` table reading it (through casts and reshapes), `None` if nothing bounds it.
    pub fn index_bound(&self, v: ValueId) -> Option<usize> {
        let mut bound: Option<usize> = None;
        let mut seen = vec![v];
        let mut i = 0;
        while let Some(&u) = seen.get(i) {
            i += 1;
            for (w, n) in self.nodes.iter().enumerate() {
                let w = ValueId(w as u32);
                let Some(at) = n.args.iter().position(|a| *a == u) else {
                    continue;
                };
                let here = match n.op {
                    Op::OneHot { classes } => Some(classes),
                    Op::Gather if at == 1 => self.node(n.args[0]).shape.first().copied(),
                    Op::Cast | Op::Reshape | Op::StopGradient => {
                        if !seen.contains(&w) {
                            seen.push(w);
                        }
                        None
                    }
                    _ => None,
                };
                bound = match (bound, here) {
                    (Some(b), Some(h)) => Some(b.min(h)),
                    (b, h) => b.or(h),
                };
            }
        }
        bound
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    /// Appends a node (its args must already exist) and returns its value.
    pub fn push(&mut self, op: Op, args: Vec<ValueId>, dtype: DType, shape: Vec<usize>) -> ValueId {
        self.push_at(op, args, dtype, shape, None)
    }

    /// [`Graph::push`] with the source span the node comes from.
    pub fn push_at(
        &mut self,
        op: Op,
        args: Vec<ValueId>,
        dtype: DType,
        shape: Vec<usize>,
        span: Option<crate::span::Span>,
    ) -> ValueId {
        self.nodes.push(Node {
            op,
            args,
            dtype,
            shape,
            span,
        });
        ValueId(self.nodes.len() as u32 - 1)
    }

    /// The graph's inputs, in order.
    pub fn inputs(&self) -> impl Iterator<Item = (ValueId, &str, InputKind)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name, kind } => Some((ValueId(i as u32), name.as_str(), *kind)),
                _ => None,
            })
    }

    /// The name of input `v` (`None` when `v` is not an input).
    pub fn input_name(&self, v: ValueId) -> Option<&str> {
        match &self.node(v).op {
            Op::Input { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The IR's state convention, defined here alone: an output named `state.N` is the
    /// new value of input `N`, which replaces it after a run. For each output, the
    /// position among the inputs of the one it replaces.
    pub fn state_targets(&self) -> Vec<Option<usize>> {
        let inputs: Vec<&str> = self.inputs().map(|(_, n, _)| n).collect();
        self.outputs
            .iter()
            .map(|(name, _)| Self::replaced(name).and_then(|n| inputs.iter().position(|i| *i == n)))
            .collect()
    }

    /// The input an output named `name` replaces under the state convention.
    pub fn replaced(name: &str) -> Option<&str> {
        name.strip_prefix("state.")
    }

    /// The name of the output that replaces input `input`.
    pub fn state_output(input: &str) -> String {
        format!("state.{input}")
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Floating-point operations of one run of `g`: the sum of its nodes' costs in the op
/// table ([`ops::Cost`]), so GFLOP/s built on this number compare backends on the same
/// work.
pub fn flops(g: &Graph) -> u64 {
    g.nodes.iter().map(|n| ops::node_flops(g, n)).sum()
}
