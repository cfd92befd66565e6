//! From a plan's kernels to device launches: what each launch reads and writes (values
//! of the graph, resolved to storage when the step runs) and its geometry, computed once
//! when the step is compiled. The plan is the shared schedule (`nabla-sched`); nothing
//! here decides what to fuse, where values live or in which order kernels run.

use nabla_lang::ir::{Binary, Compare, Graph, Op, Reduce, Unary, ValueId, Window};
use nabla_sched::{Access, Expr, Kernel, Plan, Program, Scale};

use crate::kernels::{Leaf, Op as KOp, Prog, code};

/// One kernel launch of a step.
#[derive(Clone, Debug)]
pub enum Step {
    Fused {
        prog: Prog,
        leaves: Vec<ValueId>,
        stores: Vec<ValueId>,
        n: u32,
    },
    Fill {
        out: ValueId,
        value: f32,
        n: u32,
    },
    /// A strided read (`put: false`) or write (`put: true`); see [`crate::kernels::take`].
    Strided {
        src: ValueId,
        out: ValueId,
        geo: Vec<u32>,
        n: u32,
        rank: u32,
        base: u32,
        put: bool,
    },
    Reduce {
        src: ValueId,
        out: ValueId,
        geo: Vec<u32>,
        n: u32,
        nk: u32,
        nr: u32,
        count: u32,
        max: bool,
    },
    ArgMax {
        src: ValueId,
        out: ValueId,
        n: u32,
        len: u32,
        inner: u32,
    },
    MatMul {
        a: ValueId,
        b: ValueId,
        out: ValueId,
        /// `out = base − scale·(a·b)`.
        update: Option<(ValueId, Scale)>,
        geo: Vec<u32>,
        total: u32,
    },
    /// Convolution (`kind` 0), its input gradient (1) or weight gradient (2): args in the
    /// op's order.
    Conv {
        kind: u8,
        a: ValueId,
        b: ValueId,
        out: ValueId,
        geo: Vec<u32>,
        total: u32,
    },
    Pool {
        x: ValueId,
        out: ValueId,
        geo: Vec<u32>,
        total: u32,
        max: bool,
    },
    MaxPoolGrad {
        x: ValueId,
        dy: ValueId,
        out: ValueId,
        geo: Vec<u32>,
        total: u32,
    },
    AvgPoolGrad {
        dy: ValueId,
        out: ValueId,
        geo: Vec<u32>,
        total: u32,
    },
    Gather {
        table: ValueId,
        idx: ValueId,
        out: ValueId,
        n: u32,
        d: u32,
        v: u32,
    },
    OneHot {
        idx: ValueId,
        out: ValueId,
        n: u32,
        classes: u32,
    },
    Uniform {
        out: ValueId,
        n: u32,
        zh: u32,
        zl: u32,
    },
}

/// Why a plan has no launches on this backend (an op it cannot run, or a size its `u32`
/// indices cannot address).
pub type StepError = String;

fn u32_of(x: usize, what: &str) -> Result<u32, StepError> {
    u32::try_from(x).map_err(|_| format!("{what} ({x}) is beyond the GPU backend's 32-bit indices"))
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// `[sizes.., strides..]` as `u32`.
fn geometry(sizes: &[usize], strides: &[usize]) -> Result<Vec<u32>, StepError> {
    sizes
        .iter()
        .chain(strides)
        .map(|x| u32_of(*x, "a dimension"))
        .collect()
}

/// The kernel's view of a fused program.
pub fn prog(p: &Program) -> Result<Prog, StepError> {
    let leaves = p
        .leaves
        .iter()
        .map(|a| {
            Ok(match a {
                Access::Linear => Leaf {
                    kind: 0,
                    inner: 0,
                    len: 0,
                },
                Access::Scalar => Leaf {
                    kind: 1,
                    inner: 0,
                    len: 0,
                },
                Access::Bcast { inner, len } => Leaf {
                    kind: 2,
                    inner: u32_of((*inner).max(1), "a broadcast period")?,
                    len: u32_of((*len).max(1), "a broadcast length")?,
                },
            })
        })
        .collect::<Result<Vec<_>, StepError>>()?;
    let op = |code: u32, a: usize, b: usize, c: usize, bits: u32| KOp {
        code,
        a: a as u32,
        b: b as u32,
        c: c as u32,
        bits,
    };
    let ops = p
        .exprs
        .iter()
        .map(|e| match *e {
            Expr::Leaf(k) => op(code::LEAF, k, 0, 0, 0),
            Expr::Const(c) => op(code::CONST, 0, 0, 0, c.to_bits()),
            Expr::Unary(u, a) => op(unary_code(u), a, 0, 0, 0),
            Expr::Binary(b, x, y) => op(binary_code(b), x, y, 0, 0),
            Expr::Compare(c, x, y) => op(compare_code(c), x, y, 0, 0),
            Expr::Select(c, x, y) => op(code::SELECT, c, x, y, 0),
            Expr::Trunc(a) => op(code::TRUNC, a, 0, 0, 0),
            Expr::NonZero(a) => op(code::NONZERO, a, 0, 0, 0),
            Expr::RoundBf16(a) => op(code::ROUND_BF16, a, 0, 0, 0),
        })
        .collect();
    Ok(Prog {
        leaves,
        ops,
        stores: p.stores.iter().map(|s| *s as u32).collect(),
    })
}

fn unary_code(u: Unary) -> u32 {
    match u {
        Unary::Neg => code::NEG,
        Unary::Exp => code::EXP,
        Unary::Log => code::LOG,
        Unary::Tanh => code::TANH,
        Unary::Sigmoid => code::SIGMOID,
        Unary::Relu => code::RELU,
        Unary::Sqrt => code::SQRT,
        Unary::Rsqrt => code::RSQRT,
        Unary::Abs => code::ABS,
        Unary::Erf => code::ERF,
        Unary::Sin => code::SIN,
        Unary::Cos => code::COS,
        Unary::Sign => code::SIGN,
    }
}

fn binary_code(b: Binary) -> u32 {
    match b {
        Binary::Add => code::ADD,
        Binary::Sub => code::SUB,
        Binary::Mul => code::MUL,
        Binary::Div => code::DIV,
        Binary::Max => code::MAX,
        Binary::Min => code::MIN,
        Binary::Pow => code::POW,
    }
}

fn compare_code(c: Compare) -> u32 {
    match c {
        Compare::Eq => code::EQ,
        Compare::Ne => code::NE,
        Compare::Lt => code::LT,
        Compare::Le => code::LE,
        Compare::Gt => code::GT,
        Compare::Ge => code::GE,
    }
}

fn conv_geo(x: &[usize], k: &[usize], y: &[usize], w: Window) -> Result<Vec<u32>, StepError> {
    [
        x[0],
        x[1],
        x[2],
        x[3],
        k[0],
        k[2],
        k[3],
        y[2],
        y[3],
        w.stride,
        w.pad,
        w.dilation,
        w.groups.max(1),
    ]
    .iter()
    .map(|v| u32_of(*v, "a convolution dimension"))
    .collect()
}

/// `x` [b, c, h, w] pooled to [b, c, oh, ow].
fn pool_geo(x: &[usize], y: &[usize], w: Window) -> Result<Vec<u32>, StepError> {
    [
        x[0] * x[1],
        x[2],
        x[3],
        y[2],
        y[3],
        w.kernel,
        w.stride,
        w.pad,
        w.dilation,
    ]
    .iter()
    .map(|v| u32_of(*v, "a pooling dimension"))
    .collect()
}

/// The launches of kernel `k` of plan `p` of graph `g`, in order.
pub fn kernel_steps(g: &Graph, p: &Plan, k: &Kernel) -> Result<Vec<Step>, StepError> {
    let mut out = Vec::new();
    match k {
        Kernel::Fused { func, args, n } => {
            let f = &p.programs[*func];
            let split = f.leaves.len();
            out.push(Step::Fused {
                prog: prog(f)?,
                leaves: args[..split].to_vec(),
                stores: args[split..].to_vec(),
                n: u32_of(*n, "a loop's length")?,
            });
        }
        Kernel::MatMul {
            a,
            b,
            out: o,
            ta,
            tb,
            batch,
            m,
            k,
            n,
            update,
        } => {
            // Strides of A[i, t] and B[t, j] inside one product.
            let (ai, at) = if *ta { (1, *m) } else { (*k, 1) };
            let (bt, bj) = if *tb { (1, *k) } else { (*n, 1) };
            let geo = [*batch, *m, *k, *n, ai, at, bt, bj]
                .iter()
                .map(|v| u32_of(*v, "a matrix dimension"))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Step::MatMul {
                a: *a,
                b: *b,
                out: *o,
                update: update.map(|u| (u.base, u.scale)),
                geo,
                total: u32_of(batch * m * n, "a product's size")?,
            });
        }
        Kernel::Node { node, args } => node_steps(g, *node, args, &mut out)?,
        Kernel::Reduced { .. } => {
            // The GPU target never asks for reductions on read.
            debug_assert!(false, "a reduced kernel on the GPU");
            return Err("internal error: a reduction on read in a GPU plan".into());
        }
    }
    Ok(out)
}

fn node_steps(
    g: &Graph,
    node: ValueId,
    args: &[ValueId],
    out: &mut Vec<Step>,
) -> Result<(), StepError> {
    let n = g.node(node);
    let sh = |i: usize| g.node(args[i]).shape.as_slice();
    let total = u32_of(n.numel(), "a tensor's size")?;
    match &n.op {
        Op::Const(c) => out.push(Step::Fill {
            out: node,
            value: *c as f32,
            n: total,
        }),
        Op::Reduce { op, axes, .. } => {
            let s = sh(0);
            let st = strides(s);
            let kept: Vec<usize> = (0..s.len()).filter(|d| !axes.contains(d)).collect();
            let ks: Vec<usize> = kept.iter().map(|d| s[*d]).collect();
            let kt: Vec<usize> = kept.iter().map(|d| st[*d]).collect();
            let rs: Vec<usize> = axes.iter().map(|d| s[*d]).collect();
            let rt: Vec<usize> = axes.iter().map(|d| st[*d]).collect();
            let mut geo = geometry(&ks, &kt)?;
            geo.extend(geometry(&rs, &rt)?);
            // A geometry buffer is never empty (a full reduction of a scalar has none).
            geo.push(0);
            out.push(Step::Reduce {
                src: args[0],
                out: node,
                geo,
                n: total,
                nk: kept.len() as u32,
                nr: axes.len() as u32,
                count: u32_of(numel(&rs), "a reduction's length")?,
                max: *op == Reduce::Max,
            });
        }
        Op::ArgMax { axis } => {
            let s = sh(0);
            out.push(Step::ArgMax {
                src: args[0],
                out: node,
                n: total,
                len: u32_of(s[*axis], "an axis")?,
                inner: u32_of(numel(&s[axis + 1..]).max(1), "an axis")?,
            });
        }
        Op::Transpose { perm } => {
            let s = sh(0);
            let st = strides(s);
            let os: Vec<usize> = perm.iter().map(|p| s[*p]).collect();
            let src: Vec<usize> = perm.iter().map(|p| st[*p]).collect();
            out.push(strided(args[0], node, &os, &src, 0, false, total)?);
        }
        Op::Broadcast => {
            let (s, os) = (sh(0), &n.shape);
            let off = os.len() - s.len();
            let st = strides(s);
            let src: Vec<usize> = (0..os.len())
                .map(|d| {
                    if d < off || s[d - off] == 1 {
                        0
                    } else {
                        st[d - off]
                    }
                })
                .collect();
            out.push(strided(args[0], node, os, &src, 0, false, total)?);
        }
        Op::Slice { axis, start, .. } => {
            let st = strides(sh(0));
            out.push(strided(
                args[0],
                node,
                &n.shape,
                &st,
                start * st[*axis],
                false,
                total,
            )?);
        }
        Op::Pad { axis, before, .. } => {
            let ot = strides(&n.shape);
            out.push(Step::Fill {
                out: node,
                value: 0.0,
                n: total,
            });
            let s = sh(0);
            let count = u32_of(numel(s), "a tensor's size")?;
            out.push(strided(
                args[0],
                node,
                s,
                &ot,
                before * ot[*axis],
                true,
                count,
            )?);
        }
        Op::Concat { axis } => {
            let ot = strides(&n.shape);
            let mut at = 0;
            for (i, a) in args.iter().enumerate() {
                let s = sh(i);
                let count = u32_of(numel(s), "a tensor's size")?;
                out.push(strided(*a, node, s, &ot, at * ot[*axis], true, count)?);
                at += s[*axis];
            }
        }
        Op::Gather => {
            let s = sh(0);
            out.push(Step::Gather {
                table: args[0],
                idx: args[1],
                out: node,
                n: total,
                d: u32_of(s[1].max(1), "a table's width")?,
                v: u32_of(s[0].max(1), "a table's length")?,
            });
        }
        Op::OneHot { classes } => out.push(Step::OneHot {
            idx: args[0],
            out: node,
            n: total,
            classes: u32_of((*classes).max(1), "a class count")?,
        }),
        Op::Conv2d(w) => out.push(Step::Conv {
            kind: 0,
            a: args[0],
            b: args[1],
            out: node,
            geo: conv_geo(sh(0), sh(1), &n.shape, *w)?,
            total,
        }),
        Op::Conv2dInputGrad(w) => out.push(Step::Conv {
            kind: 1,
            a: args[0],
            b: args[1],
            out: node,
            geo: conv_geo(&n.shape, sh(1), sh(0), *w)?,
            total,
        }),
        Op::Conv2dWeightGrad(w) => out.push(Step::Conv {
            kind: 2,
            a: args[0],
            b: args[1],
            out: node,
            geo: conv_geo(sh(0), &n.shape, sh(1), *w)?,
            total,
        }),
        Op::MaxPool2d(w) | Op::AvgPool2d(w) => out.push(Step::Pool {
            x: args[0],
            out: node,
            geo: pool_geo(sh(0), &n.shape, *w)?,
            total,
            max: matches!(n.op, Op::MaxPool2d(_)),
        }),
        Op::MaxPool2dGrad(w) => out.push(Step::MaxPoolGrad {
            x: args[0],
            dy: args[1],
            out: node,
            geo: pool_geo(sh(0), sh(1), *w)?,
            total,
        }),
        Op::AvgPool2dGrad(w) => out.push(Step::AvgPoolGrad {
            dy: args[0],
            out: node,
            geo: pool_geo(&n.shape, sh(0), *w)?,
            total,
        }),
        Op::RandomUniform { seed } => {
            const PHI: u64 = 0x9e37_79b9_7f4a_7c15;
            let z = seed.wrapping_mul(PHI).wrapping_add(PHI);
            out.push(Step::Uniform {
                out: node,
                n: total,
                zh: (z >> 32) as u32,
                zl: z as u32,
            });
        }
        op => return Err(format!("the GPU backend has no kernel for `{}`", op.name())),
    }
    Ok(())
}

fn strided(
    src: ValueId,
    out: ValueId,
    sizes: &[usize],
    strides: &[usize],
    base: usize,
    put: bool,
    n: u32,
) -> Result<Step, StepError> {
    let mut geo = geometry(sizes, strides)?;
    // A geometry buffer is never empty (a scalar has no dims).
    geo.push(0);
    Ok(Step::Strided {
        src,
        out,
        geo,
        n,
        rank: sizes.len() as u32,
        base: u32_of(base, "an offset")?,
        put,
    })
}

impl Step {
    /// What the launch computes, for errors: `fused loop (exp, mul) over 1024`.
    pub fn describe(&self) -> String {
        match self {
            Step::Fused { prog, n, .. } => {
                let mut names: Vec<&str> = Vec::new();
                for op in &prog.ops {
                    let name = code::name(op.code);
                    if !matches!(name, "leaf" | "const") && !names.contains(&name) {
                        names.push(name);
                    }
                }
                format!("the fused loop ({}) over {n} elements", names.join(", "))
            }
            Step::Fill { n, .. } => format!("a fill of {n} elements"),
            Step::Strided { put, n, .. } => {
                format!(
                    "a strided {} of {n} elements",
                    if *put { "write" } else { "read" }
                )
            }
            Step::Reduce { max, n, count, .. } => format!(
                "a {} of {count} values into each of {n}",
                if *max { "max" } else { "sum" }
            ),
            Step::ArgMax { n, .. } => format!("an argmax into {n} elements"),
            Step::MatMul { geo, .. } => format!(
                "a matrix product {} × {}×{} · {}×{}",
                geo[0], geo[1], geo[2], geo[2], geo[3]
            ),
            Step::Conv { kind, total, .. } => format!(
                "a convolution{} into {total} elements",
                ["", " input gradient", " weight gradient"][usize::from(*kind).min(2)]
            ),
            Step::Pool { max, total, .. } => {
                format!(
                    "{} pooling into {total} elements",
                    if *max { "max" } else { "average" }
                )
            }
            Step::MaxPoolGrad { total, .. } => {
                format!("a max-pooling gradient of {total} elements")
            }
            Step::AvgPoolGrad { total, .. } => {
                format!("an average-pooling gradient of {total} elements")
            }
            Step::Gather { n, .. } => format!("a gather of {n} elements"),
            Step::OneHot { n, .. } => format!("a one-hot of {n} elements"),
            Step::Uniform { n, .. } => format!("{n} random numbers"),
        }
    }
}
