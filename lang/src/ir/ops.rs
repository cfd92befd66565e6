//! The op table: every fact about each IR op that more than one pass needs, in one place.
//!
//! [`Op::row`] gives an op's textual name, arity, fusion class, flop count and derivative
//! rule; [`rule_args`] the attributes its rule is instantiated with; [`infer`] the dtype
//! and shape it gives its arguments. Read by the printer and parser (names), the IR
//! verifier (arity, inference), AD (rules), the rule checks (sample attributes), flop
//! counting, the scheduler (classes) and the backends (which ops they run as kernels).
//!
//! Adding a primitive: a variant of [`Op`], its row here (and its arm of [`infer`] and,
//! when it takes attributes, of [`rule_args`]), its rule in `std.rules`, and its kernels.
//! `Op::representatives` lists one op of every row, so the tests cover a new one.

use super::{Binary, Compare, Graph, Node, Op, Reduce, Unary, ValueId, Window};
use crate::check::lower::int_list;
use crate::check::ty::{DType, Ty};

/// How many arguments an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Fixed(usize),
    AtLeast(usize),
}

/// What a schedule may do with an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A graph input: its values come from outside.
    Input,
    /// A value made from nothing: constants, random numbers.
    Source,
    /// The same elements under a new name (reshape, stop_gradient): an alias.
    Alias,
    /// One result element from the operands' elements at the same index: fusible.
    Elementwise,
    /// Reads its operand through an index pattern; an alias when it adds only 1-sized
    /// dims, fusible when one pattern describes it.
    Broadcast,
    /// A sum or max over axes: may read a fused loop as it runs.
    Reduction,
    /// A matrix product: transposes fold into it, an update may be its epilogue.
    Contraction,
    /// Moves or selects elements (transpose, slice, pad, concat, gather, one_hot, argmax).
    Movement,
    /// Sliding windows: convolutions, poolings and their gradients.
    Window,
}

/// How an op's floating-point operations are counted: 2 per multiply-add of products
/// and convolutions, 1 per element of other arithmetic, none for data movement.
/// Convolutions count as the direct algorithm does, whatever a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    Free,
    /// One per output element.
    PerOutput,
    /// One per element of the first operand.
    PerInput,
    /// `2·out·k` for `[.., m, k] @ [.., k, n]`.
    MatMul,
    /// `2·out·taps`, taps the weights' `[_, C/groups, KH, KW]` per output.
    Conv,
    /// The convolution whose output gradient is operand 0 and weights operand 1.
    ConvInputGrad,
    /// The convolution whose output gradient is operand 1, weights' shape the node's.
    ConvWeightGrad,
}

/// How an op passes gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gradient {
    /// None: inputs, constants, integer and bool results, `stop_gradient`.
    Zero,
    /// Through the rule for the primal function `name` in `std.rules`.
    Rule(&'static str),
    /// Only the backward pass makes it: differentiating it is an error.
    Missing,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The op's name in the textual IR.
    pub name: &'static str,
    pub arity: Arity,
    pub class: Class,
    pub cost: Cost,
    pub gradient: Gradient,
}

const fn row(
    name: &'static str,
    arity: usize,
    class: Class,
    cost: Cost,
    gradient: Gradient,
) -> Row {
    Row {
        name,
        arity: Arity::Fixed(arity),
        class,
        cost,
        gradient,
    }
}

impl Unary {
    pub fn name(self) -> &'static str {
        match self {
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
        }
    }
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Max => "maximum",
            Binary::Min => "minimum",
            Binary::Pow => "pow",
        }
    }
}

impl Compare {
    pub fn name(self) -> &'static str {
        match self {
            Compare::Eq => "eq",
            Compare::Ne => "ne",
            Compare::Lt => "lt",
            Compare::Le => "le",
            Compare::Gt => "gt",
            Compare::Ge => "ge",
        }
    }
}

impl Op {
    /// The op's row of the table.
    pub fn row(&self) -> Row {
        use Class as C;
        use Cost::*;
        use Gradient::*;
        match self {
            Op::Input { .. } => row("input", 0, C::Input, Free, Zero),
            Op::Const(_) => row("const", 0, C::Source, Free, Zero),
            Op::RandomUniform { .. } => row("random_uniform", 0, C::Source, Free, Zero),
            Op::Unary(u) => row(u.name(), 1, C::Elementwise, PerOutput, Rule(u.name())),
            Op::Binary(b) => row(b.name(), 2, C::Elementwise, PerOutput, Rule(b.name())),
            Op::Compare(c) => row(c.name(), 2, C::Elementwise, PerOutput, Zero),
            Op::Select => row("select", 3, C::Elementwise, PerOutput, Rule("select")),
            Op::Cast => row("cast", 1, C::Elementwise, Free, Zero),
            Op::Reshape => row("reshape", 1, C::Alias, Free, Rule("reshape")),
            Op::StopGradient => row("stop_gradient", 1, C::Alias, Free, Zero),
            Op::Broadcast => row("broadcast", 1, C::Broadcast, Free, Rule("broadcast_to")),
            Op::Reduce {
                op: Reduce::Sum, ..
            } => row("sum", 1, C::Reduction, PerInput, Rule("sum")),
            Op::Reduce {
                op: Reduce::Max, ..
            } => row("max", 1, C::Reduction, PerInput, Rule("max")),
            Op::MatMul => row("matmul", 2, C::Contraction, MatMul, Rule("matmul")),
            Op::ArgMax { .. } => row("argmax", 1, C::Movement, Free, Zero),
            Op::Transpose { .. } => row("transpose", 1, C::Movement, Free, Rule("permute")),
            Op::Slice { .. } => row("slice", 1, C::Movement, Free, Rule("slice")),
            Op::Pad { .. } => row("pad", 1, C::Movement, Free, Rule("pad")),
            // Only a concat of two has a rule (`concat2`); longer ones are never
            // differentiated (see `rule_args`).
            Op::Concat { .. } => Row {
                arity: Arity::AtLeast(1),
                ..row("concat", 0, C::Movement, Free, Rule("concat2"))
            },
            Op::Gather => row("gather", 2, C::Movement, Free, Rule("gather")),
            Op::OneHot { .. } => row("one_hot", 1, C::Movement, Free, Zero),
            Op::Conv2d(_) => row("conv2d", 2, C::Window, Conv, Rule("conv2d")),
            Op::Conv2dInputGrad(_) => {
                row("conv2d_input_grad", 2, C::Window, ConvInputGrad, Missing)
            }
            Op::Conv2dWeightGrad(_) => {
                row("conv2d_weight_grad", 2, C::Window, ConvWeightGrad, Missing)
            }
            Op::MaxPool2d(_) => row("max_pool2d", 1, C::Window, Free, Rule("max_pool2d")),
            Op::MaxPool2dGrad(_) => row("max_pool2d_grad", 2, C::Window, Free, Missing),
            Op::AvgPool2d(_) => row("avg_pool2d", 1, C::Window, Free, Rule("avg_pool2d")),
            Op::AvgPool2dGrad(_) => row("avg_pool2d_grad", 1, C::Window, Free, Missing),
        }
    }

    /// One op of every row (attributes arbitrary), for tests that must cover them all.
    pub fn representatives() -> Vec<Op> {
        let w = Window {
            kernel: 2,
            stride: 2,
            pad: 0,
            dilation: 1,
            groups: 1,
        };
        let mut ops = vec![
            Op::Input {
                name: "x".into(),
                kind: super::InputKind::Data,
            },
            Op::Const(0.0),
            Op::RandomUniform { seed: 0 },
            Op::Select,
            Op::Cast,
            Op::Reshape,
            Op::StopGradient,
            Op::Broadcast,
            Op::MatMul,
            Op::ArgMax { axis: 0 },
            Op::Transpose { perm: vec![1, 0] },
            Op::Slice {
                axis: 0,
                start: 0,
                end: 1,
            },
            Op::Pad {
                axis: 0,
                before: 1,
                after: 1,
            },
            Op::Concat { axis: 0 },
            Op::Gather,
            Op::OneHot { classes: 2 },
            Op::Conv2d(w),
            Op::Conv2dInputGrad(w),
            Op::Conv2dWeightGrad(w),
            Op::MaxPool2d(w),
            Op::MaxPool2dGrad(w),
            Op::AvgPool2d(w),
            Op::AvgPool2dGrad(w),
        ];
        for op in [Reduce::Sum, Reduce::Max] {
            ops.push(Op::Reduce {
                op,
                axes: vec![0],
                keepdim: false,
            });
        }
        ops.extend(Unary::ALL.map(Op::Unary));
        ops.extend(Binary::ALL.map(Op::Binary));
        ops.extend(Compare::ALL.map(Op::Compare));
        ops
    }
}

/// The floating-point operations of node `n` of `g` (see [`Cost`]).
pub fn node_flops(g: &Graph, n: &Node) -> u64 {
    let out = n.numel() as u64;
    let arg = |i: usize| g.node(n.args[i]);
    let taps = |s: &[usize]| s[1..].iter().product::<usize>() as u64;
    match n.op.row().cost {
        Cost::Free => 0,
        Cost::PerOutput => out,
        Cost::PerInput => arg(0).numel() as u64,
        Cost::MatMul => {
            let a = &arg(0).shape;
            2 * out * a[a.len() - 1] as u64
        }
        Cost::Conv => 2 * out * taps(&arg(1).shape),
        Cost::ConvInputGrad => 2 * arg(0).numel() as u64 * taps(&arg(1).shape),
        Cost::ConvWeightGrad => 2 * arg(1).numel() as u64 * taps(&n.shape),
    }
}

/// The rule of node `v` with the attributes it is instantiated with: `Ok(None)` when the
/// op passes no gradient, `Err(name)` when it has no rule.
#[allow(clippy::type_complexity)]
pub fn rule_args(
    g: &Graph,
    v: ValueId,
) -> Result<Option<(&'static str, Vec<(String, Ty)>)>, String> {
    let n = g.node(v);
    let rule = match n.op.row().gradient {
        Gradient::Zero => return Ok(None),
        Gradient::Missing => return Err(n.op.name().to_string()),
        Gradient::Rule(rule) => rule,
    };
    let ints = |pairs: &[(&str, usize)]| {
        pairs
            .iter()
            .map(|(k, x)| (k.to_string(), Ty::int(*x as i64)))
            .collect::<Vec<_>>()
    };
    let window = |w: &Window| ints(&[("k", w.kernel), ("stride", w.stride), ("pad", w.pad)]);
    let args = match &n.op {
        Op::Reduce { axes, keepdim, .. } => vec![
            ("axis".into(), int_list(axes)),
            ("keepdim".into(), Ty::Bool(Some(*keepdim))),
        ],
        Op::Transpose { perm } => vec![("axes".into(), int_list(perm))],
        Op::Reshape | Op::Broadcast => vec![("shape".into(), int_list(&n.shape))],
        Op::Slice { axis, start, end } => {
            ints(&[("axis", *axis), ("start", *start), ("end", *end)])
        }
        Op::Concat { .. } if n.args.len() != 2 => return Err(n.op.name().to_string()),
        Op::Concat { axis } => ints(&[("axis", *axis)]),
        Op::Pad {
            axis,
            before,
            after,
        } => ints(&[("axis", *axis), ("before", *before), ("after", *after)]),
        Op::Conv2d(w) => ints(&[
            ("stride", w.stride),
            ("pad", w.pad),
            ("dilation", w.dilation),
            ("groups", w.groups),
        ]),
        Op::MaxPool2d(w) | Op::AvgPool2d(w) => window(w),
        _ => vec![],
    };
    Ok(Some((rule, args)))
}

/// Attributes a rule's gradient check instantiates it with (small but not trivial: a
/// stride and padding that leave windows partly outside).
pub fn sample_args(rule: &str) -> Vec<(String, Ty)> {
    let list = |k: &str, v: &[usize]| (k.to_string(), int_list(v));
    let int = |k: &str, v: i64| (k.to_string(), Ty::int(v));
    match rule {
        "sum" | "max" => vec![list("axis", &[1])],
        "reshape" => vec![list("shape", &[3, 2])],
        "permute" => vec![list("axes", &[1, 0])],
        "broadcast_to" => vec![list("shape", &[4, 2, 3])],
        "slice" => vec![int("axis", 1), int("start", 1), int("end", 3)],
        "pad" => vec![int("axis", 1), int("before", 1), int("after", 2)],
        "conv2d" => vec![int("stride", 2), int("pad", 1)],
        "max_pool2d" | "avg_pool2d" => vec![int("k", 2), int("stride", 2), int("pad", 1)],
        // Composite functions with their own rules.
        "dropout" => vec![("p".into(), Ty::Float(Some(0.3)))],
        _ => vec![],
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
pub fn infer(g: &Graph, op: &Op, args: &[ValueId]) -> Result<Option<(DType, Vec<usize>)>, String> {
    match op.row().arity {
        Arity::Fixed(n) if args.len() != n => {
            return Err(format!("takes {n} arguments, given {}", args.len()));
        }
        Arity::AtLeast(n) if args.len() < n => {
            return Err(format!(
                "takes at least {n} arguments, given {}",
                args.len()
            ));
        }
        _ => {}
    }
    let op = op.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Names identify ops in the textual IR: no two rows share one, and each parses back
    /// to its op (attributes included).
    #[test]
    fn every_row_has_its_own_name_and_parses_back() {
        let ops = Op::representatives();
        let mut names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        let all = names.len();
        names.dedup();
        assert_eq!(names.len(), all, "duplicate names");
        for op in ops {
            let mut g = Graph::default();
            let x = g.push(
                Op::Input {
                    name: "in".into(),
                    kind: super::super::InputKind::Data,
                },
                vec![],
                DType::F32,
                vec![2, 2],
            );
            let args = match op.row().arity {
                Arity::Fixed(n) | Arity::AtLeast(n) => vec![x; n],
            };
            let v = g.push(op.clone(), args, DType::F32, vec![2, 2]);
            g.outputs.push(("y".into(), v));
            let back = super::super::parse_graph(&super::super::print_graph(&g))
                .unwrap_or_else(|e| panic!("{}: {e:?}", op.name()));
            assert_eq!(back.nodes[1].op, op, "{}", op.name());
        }
    }
}
