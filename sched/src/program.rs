//! Fused loop programs: the device-independent description of one elementwise loop.
//!
//! A [`Program`] runs over one iteration space of `n` elements: its leaves are
//! materialized tensors read at the loop index `i` through an [`Access`] pattern, its
//! expressions are an SSA of scalar ops over them (each operand an earlier expression),
//! and its stores are the expressions written to outputs at `i`. A backend's emitter
//! turns it into machine code (Cranelift on the CPU) or a kernel (CubeCL on a GPU); the
//! meaning is the same everywhere: for every `i` in `0..n`, evaluate the expressions and
//! store.

use std::collections::HashMap;

use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Compare, Graph, Op, Unary, ValueId};

use crate::target::Target;

/// How a loop reads a leaf at loop index `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Element `i`.
    Linear,
    /// One value for every `i`.
    Scalar,
    /// Element `(i / inner) % len` (a broadcast along leading and trailing dims).
    Bcast { inner: usize, len: usize },
}

impl Access {
    /// Whether `lanes` consecutive indices starting at a multiple of `lanes` read one
    /// vector (or one splatted scalar).
    pub fn vectorizes(self, lanes: usize) -> bool {
        match self {
            Access::Linear | Access::Scalar => true,
            Access::Bcast { inner, len } => {
                inner.is_multiple_of(lanes) || (inner == 1 && len.is_multiple_of(lanes))
            }
        }
    }
}

/// One expression of a program; operands are indices of earlier expressions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expr {
    Leaf(usize),
    Const(f32),
    Unary(Unary, usize),
    Binary(Binary, usize, usize),
    /// 1.0 where the comparison holds, else 0.0.
    Compare(Compare, usize, usize),
    /// `c != 0 ? a : b`.
    Select(usize, usize, usize),
    /// Rounds toward zero (a cast to an integer type).
    Trunc(usize),
    /// 1.0 where nonzero (a cast to bool).
    NonZero(usize),
    /// Rounds to the nearest bfloat16, ties to even (a cast to bf16; see
    /// `nabla_lang::interp::round_bf16`).
    RoundBf16(usize),
}

/// A fused elementwise loop (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub leaves: Vec<Access>,
    pub exprs: Vec<Expr>,
    /// The expression stored to each output, in order (outputs follow the leaves in the
    /// kernel's arguments).
    pub stores: Vec<usize>,
}

impl Program {
    /// Whether the loop runs `target.lanes` elements at a time: no function it uses runs
    /// lane by lane and every leaf's pattern repeats with the vector's period.
    pub fn vectorizes(&self, target: &Target) -> bool {
        !self.calls_scalar(target) && self.leaves.iter().all(|a| a.vectorizes(target.lanes))
    }

    /// Whether the loop uses a function the target evaluates one lane at a time.
    pub fn calls_scalar(&self, target: &Target) -> bool {
        self.exprs.iter().any(|e| match e {
            Expr::Unary(u, _) => target.scalar_unary.contains(u),
            Expr::Binary(b, _, _) => target.scalar_binary.contains(b),
            _ => false,
        })
    }
}

/// How a broadcast from `from` to `to` reads its input at a flat output index (`None`:
/// the stretched dims are not one run, so no single pattern describes it).
pub fn broadcast_access(from: &[usize], to: &[usize]) -> Option<Access> {
    let numel: usize = from.iter().product();
    if numel == 1 {
        return Some(Access::Scalar);
    }
    let off = to.len().checked_sub(from.len())?;
    // Output dims that come from the input (not stretched, larger than 1).
    let kept: Vec<usize> = (0..to.len())
        .filter(|d| *d >= off && from[*d - off] != 1 && to[*d] != 1)
        .collect();
    let (first, last) = (*kept.first()?, *kept.last()?);
    // They must be one run, with no stretched dim inside it.
    if (first..=last).any(|d| to[d] != 1 && !kept.contains(&d)) {
        return None;
    }
    let inner: usize = to[last + 1..].iter().product();
    Some(Access::Bcast { inner, len: numel })
}

/// What a program is built from: the group's members in order, and which of them are
/// stored besides the last.
pub(crate) struct Group<'a> {
    pub members: &'a [ValueId],
    /// Members stored because a reduction reads them (see `Kernel::Reduced`).
    pub roots: &'a [ValueId],
}

/// What the schedule knows about every value when it builds programs.
pub(crate) struct Facts<'a> {
    pub root: &'a [ValueId],
    pub is_output: &'a [bool],
    /// Broadcasts read through their pattern by every loop that uses them.
    pub inlined: &'a [bool],
}

/// The program of a group and its kernel arguments (leaves, then stores). The group's
/// last member is stored, and so are its roots and graph outputs. A member that is no
/// elementwise op is an error: the grouping admits only fusible nodes.
pub(crate) fn build(
    g: &Graph,
    group: Group,
    facts: &Facts,
) -> Result<(Program, Vec<ValueId>), String> {
    let r = |v: ValueId| facts.root[v.index()];
    let Some(&last) = group.members.last() else {
        return Err("an empty fusion group".into());
    };
    let stored = |m: ValueId| m == last || group.roots.contains(&m) || facts.is_output[m.index()];
    let mut b = Builder {
        f: Program {
            leaves: Vec::new(),
            exprs: Vec::new(),
            stores: Vec::new(),
        },
        leaf_vals: Vec::new(),
        expr_of: HashMap::new(),
    };
    for &m in group.members {
        let n = g.node(m);
        let arg = |b: &mut Builder, i: usize| b.operand(g, r(n.args[i]), facts);
        let e = match &n.op {
            Op::Unary(u) => Expr::Unary(*u, arg(&mut b, 0)),
            Op::Binary(op) => {
                let x = arg(&mut b, 0);
                Expr::Binary(*op, x, arg(&mut b, 1))
            }
            Op::Compare(c) => {
                let x = arg(&mut b, 0);
                Expr::Compare(*c, x, arg(&mut b, 1))
            }
            Op::Select => {
                let c = arg(&mut b, 0);
                let x = arg(&mut b, 1);
                Expr::Select(c, x, arg(&mut b, 2))
            }
            Op::Cast if n.dtype == DType::Bool => Expr::NonZero(arg(&mut b, 0)),
            Op::Cast if n.dtype == DType::BF16 => Expr::RoundBf16(arg(&mut b, 0)),
            Op::Cast => Expr::Trunc(arg(&mut b, 0)),
            Op::Broadcast => b.broadcast(g, m, facts),
            op => {
                debug_assert!(false, "`{}` in a fusion group", op.name());
                return Err(format!("`{}` in a fusion group", op.name()));
            }
        };
        let k = b.push(e);
        b.expr_of.insert(m, k);
        if stored(m) {
            b.f.stores.push(k);
        }
    }
    let mut args = b.leaf_vals;
    args.extend(group.members.iter().copied().filter(|m| stored(*m)));
    Ok((b.f, args))
}

/// A program under construction: its expressions and the value each leaf reads.
struct Builder {
    f: Program,
    leaf_vals: Vec<ValueId>,
    /// The expression computing each value already in the program.
    expr_of: HashMap<ValueId, usize>,
}

impl Builder {
    fn push(&mut self, e: Expr) -> usize {
        self.f.exprs.push(e);
        self.f.exprs.len() - 1
    }

    /// The leaf reading `v` with `access` (one leaf per value and pattern).
    fn leaf(&mut self, v: ValueId, access: Access) -> Expr {
        let found = self
            .leaf_vals
            .iter()
            .zip(&self.f.leaves)
            .position(|(lv, la)| *lv == v && *la == access);
        Expr::Leaf(found.unwrap_or_else(|| {
            self.leaf_vals.push(v);
            self.f.leaves.push(access);
            self.leaf_vals.len() - 1
        }))
    }

    /// A broadcast member (or an inlined broadcast operand): its source read through
    /// the pattern, or an immediate when the source is a constant.
    fn broadcast(&mut self, g: &Graph, v: ValueId, facts: &Facts) -> Expr {
        let n = g.node(v);
        let src = facts.root[n.args[0].index()];
        match g.node(src).op {
            Op::Const(c) => Expr::Const(c as f32),
            _ => {
                let access =
                    broadcast_access(&g.node(n.args[0]).shape, &n.shape).unwrap_or(Access::Linear);
                self.leaf(src, access)
            }
        }
    }

    /// The expression of operand `a` (resolved): computed by an earlier member, an
    /// immediate, an inlined broadcast's pattern, or a linear leaf.
    fn operand(&mut self, g: &Graph, a: ValueId, facts: &Facts) -> usize {
        if let Some(e) = self.expr_of.get(&a) {
            return *e;
        }
        let e = match g.node(a).op {
            Op::Const(c) => Expr::Const(c as f32),
            Op::Broadcast if facts.inlined[a.index()] => self.broadcast(g, a, facts),
            _ => self.leaf(a, Access::Linear),
        };
        let k = self.push(e);
        self.expr_of.insert(a, k);
        k
    }
}
