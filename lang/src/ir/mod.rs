//! The tensor IR: a closed set of primitive ops over concrete shapes, in an arena of nodes
//! addressed by typed ids, in SSA form (each node is defined once, before its uses).
//!
//! A [`Graph`] is what the compiler differentiates, optimizes and hands to a backend, and
//! what the reference interpreter runs. Shapes are concrete (the batch is fixed when a
//! step is lowered): one compiled step per batch shape. Broadcasting is explicit
//! ([`Op::Broadcast`]), so every elementwise op has operands of its own shape, which keeps
//! AD and the backends simple.

mod print;
mod source;
mod verify;

use std::fmt;

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
        Unary::ALL
            .into_iter()
            .find(|u| Op::Unary(*u).name() == name)
    }
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
        Binary::ALL
            .into_iter()
            .find(|b| Op::Binary(*b).name() == name)
    }
}

impl Op {
    /// The op's name in the textual form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Const(_) => "const",
            Op::Unary(u) => match u {
                Unary::Neg => "neg",
                Unary::Exp => "exp",
                Unary::Log => "log",
                Unary::Tanh => "tanh",
                Unary::Sigmoid => "sigmoid",
                Unary::Relu => "relu",
                Unary::Sqrt => "sqrt",
                Unary::Rsqrt => "rsqrt",
                Unary::Abs => "abs",
                Unary::Erf => "erf",
                Unary::Sin => "sin",
                Unary::Cos => "cos",
                Unary::Sign => "sign",
            },
            Op::Binary(b) => match b {
                Binary::Add => "add",
                Binary::Sub => "sub",
                Binary::Mul => "mul",
                Binary::Div => "div",
                Binary::Max => "maximum",
                Binary::Min => "minimum",
                Binary::Pow => "pow",
            },
            Op::Compare(c) => match c {
                Compare::Eq => "eq",
                Compare::Ne => "ne",
                Compare::Lt => "lt",
                Compare::Le => "le",
                Compare::Gt => "gt",
                Compare::Ge => "ge",
            },
            Op::Select => "select",
            Op::Reduce {
                op: Reduce::Sum, ..
            } => "sum",
            Op::Reduce {
                op: Reduce::Max, ..
            } => "max",
            Op::ArgMax { .. } => "argmax",
            Op::MatMul => "matmul",
            Op::Transpose { .. } => "transpose",
            Op::Reshape => "reshape",
            Op::Broadcast => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::OneHot { .. } => "one_hot",
            Op::Conv2d(_) => "conv2d",
            Op::Conv2dInputGrad(_) => "conv2d_input_grad",
            Op::Conv2dWeightGrad(_) => "conv2d_weight_grad",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::MaxPool2dGrad(_) => "max_pool2d_grad",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::AvgPool2dGrad(_) => "avg_pool2d_grad",
            Op::RandomUniform { .. } => "random_uniform",
            Op::Cast => "cast",
            Op::StopGradient => "stop_gradient",
        }
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

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Floating-point operations of one run of `g`: 2 per multiply-add of matrix products and
/// convolutions (and their gradients), 1 per element of other arithmetic; data movement
/// counts nothing. Convolutions count as the direct algorithm does, whatever a backend
/// runs (the CPU backend's Winograd kernels do 2.25× fewer multiplies), so GFLOP/s built
/// on this number compare backends on the same work.
pub fn flops(g: &Graph) -> u64 {
    g.nodes
        .iter()
        .map(|n| {
            let out = n.numel() as u64;
            let arg = |i: usize| &g.nodes[n.args[i].index()];
            match &n.op {
                Op::MatMul => {
                    let a = &arg(0).shape;
                    2 * out * a[a.len() - 1] as u64
                }
                // Output elements × taps per output (weights' [_, C/groups, KH, KW]).
                Op::Conv2d(_) => 2 * out * arg(1).shape[1..].iter().product::<usize>() as u64,
                Op::Conv2dInputGrad(_) => {
                    2 * arg(0).numel() as u64 * arg(1).shape[1..].iter().product::<usize>() as u64
                }
                Op::Conv2dWeightGrad(_) => {
                    2 * arg(1).numel() as u64 * n.shape[1..].iter().product::<usize>() as u64
                }
                Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select => out,
                Op::Reduce { .. } => arg(0).numel() as u64,
                _ => 0,
            }
        })
        .sum()
}
