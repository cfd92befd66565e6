//! What a schedule is: kernels in order over a static memory plan, and what each kernel
//! reads and writes. Built by [`crate::plan`], checked by [`crate::verify`], run by a
//! backend.

use nabla_lang::ir::{Graph, ValueId};

use crate::program::{Access, Program};

/// Where a value lives during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// The buffer of graph input `i`.
    Input(usize),
    /// A byte offset into the arena.
    Arena(usize),
}

/// One step of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// Fused loop `func` over `n` elements; `args` are its leaves then its stores.
    Fused {
        func: usize,
        args: Vec<ValueId>,
        n: usize,
    },
    /// `out = op(a) @ op(b)` over `batch` products of `[m, k] @ [k, n]`, `op` transposing
    /// the last two dims when flagged.
    MatMul {
        a: ValueId,
        b: ValueId,
        out: ValueId,
        ta: bool,
        tb: bool,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        /// `out = base − scale·(a @ b)` instead: an update such as SGD's `w − lr·g`,
        /// accumulated by the GEMM into `base`'s values, so the product is never stored.
        update: Option<Update>,
    },
    /// A device kernel computing node `node` from its args (as written: aliases keep
    /// their own shapes).
    Node { node: ValueId, args: Vec<ValueId> },
    /// Reductions `nodes` (one op over the same axes of inputs of one shape) of the values
    /// fused loop `func` stores, in order, which are never stored: the loop runs over each
    /// contiguous run of the reduced inputs into a small scratch buffer that is reduced
    /// at once. `args` are the loop's leaves.
    Reduced {
        nodes: Vec<ValueId>,
        func: usize,
        args: Vec<ValueId>,
    },
}

/// The epilogue of a matrix product that is only ever subtracted, scaled, from a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    /// The value the scaled product is subtracted from (read at the index it writes).
    pub base: ValueId,
    pub scale: Scale,
}

/// A scale known when compiling, or a rank-0 value read when the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Const(f32),
    Value(ValueId),
}

/// The schedule of a graph for one target, independent of any run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The fused loops kernels refer to by index.
    pub programs: Vec<Program>,
    pub kernels: Vec<Kernel>,
    /// Storage of every value (after alias resolution; `None`: never materialized).
    pub loc: Vec<Option<Loc>>,
    /// Alias-resolved value of every node.
    pub root: Vec<ValueId>,
    /// Bytes of the arena.
    pub arena: usize,
    /// Bytes of every value's region (0 for values not in the arena).
    pub size: Vec<usize>,
    /// Graph inputs: value, name, shape.
    pub inputs: Vec<(ValueId, String, Vec<usize>)>,
    /// Graph outputs: value, `Some(i)` when it is copied into input `i` after the run
    /// (a state output not written in place), `None` when returned; in-place state
    /// outputs are listed in `in_place`.
    pub outputs: Vec<(ValueId, Option<usize>)>,
    pub in_place: Vec<bool>,
    pub shapes: Vec<Vec<usize>>,
}

/// The values kernel `k` reads (resolved), each with whether it is read only at the
/// index the kernel writes (elementwise).
pub fn reads(p: &Plan, k: &Kernel) -> Vec<(ValueId, bool)> {
    match k {
        Kernel::Fused { func, args, .. } => p.programs[*func]
            .leaves
            .iter()
            .zip(args)
            .map(|(a, v)| (*v, *a == Access::Linear))
            .collect(),
        Kernel::MatMul { a, b, update, .. } => {
            let mut r = vec![(*a, false), (*b, false)];
            if let Some(u) = update {
                // The base is read at the index the product's element is written.
                r.push((u.base, true));
                if let Scale::Value(s) = u.scale {
                    r.push((s, false));
                }
            }
            r
        }
        Kernel::Node { args, .. } => args.iter().map(|a| (p.root[a.index()], false)).collect(),
        Kernel::Reduced { args, .. } => args.iter().map(|a| (*a, false)).collect(),
    }
}

/// The values kernel `k` writes.
pub fn writes(p: &Plan, k: &Kernel) -> Vec<ValueId> {
    match k {
        Kernel::Fused { func, args, .. } => args[p.programs[*func].leaves.len()..].to_vec(),
        Kernel::MatMul { out, .. } => vec![*out],
        Kernel::Node { node, .. } => vec![*node],
        Kernel::Reduced { nodes, .. } => nodes.clone(),
    }
}

/// What kernel `k` computes, in a few words: `conv2d [128, 32, 28, 28]`, `matmul
/// 128×784 · 784×512ᵀ`, `loop of 7 ops (mul, add, max) over 401408`.
pub fn describe(g: &Graph, p: &Plan, k: &Kernel) -> String {
    use crate::program::Expr;
    let t = |b: bool| if b { "ᵀ" } else { "" };
    match k {
        Kernel::Fused { func, n, .. } => {
            let f = &p.programs[*func];
            let mut names: Vec<String> = Vec::new();
            for e in &f.exprs {
                let name = match e {
                    Expr::Unary(u, _) => format!("{u:?}"),
                    Expr::Binary(b, _, _) => format!("{b:?}"),
                    Expr::Compare(c, _, _) => format!("{c:?}"),
                    Expr::Select(..) => "select".into(),
                    _ => continue,
                };
                let name = name.to_lowercase();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            format!(
                "loop of {} ops ({}) over {n}, {} reads, {} writes",
                f.exprs.len(),
                names.join(", "),
                f.leaves.len(),
                f.stores.len()
            )
        }
        Kernel::MatMul {
            ta,
            tb,
            batch,
            m,
            k,
            n,
            update,
            ..
        } => {
            let b = if *batch > 1 {
                format!("{batch} × ")
            } else {
                String::new()
            };
            let into = if update.is_some() {
                ", subtracted from its base in place"
            } else {
                ""
            };
            format!("matmul {b}{m}×{k}{} · {k}×{n}{}{into}", t(*ta), t(*tb))
        }
        Kernel::Node { node, args } => {
            let shapes: Vec<String> = args
                .iter()
                .map(|a| format!("{:?}", g.node(*a).shape))
                .collect();
            format!(
                "{} {} -> {:?}",
                g.node(*node).op.name(),
                shapes.join(" "),
                g.node(*node).shape
            )
        }
        Kernel::Reduced { nodes, func, .. } => {
            let Some(node) = nodes.first() else {
                return String::new();
            };
            let n = g.node(*node);
            let many = if nodes.len() > 1 {
                format!("{} ", nodes.len())
            } else {
                String::new()
            };
            let from = n
                .args
                .first()
                .map(|a| format!("{:?}", g.node(*a).shape))
                .unwrap_or_default();
            format!(
                "{many}{}{} of a loop of {} ops {from} -> {:?}",
                n.op.name(),
                if nodes.len() > 1 { "s" } else { "" },
                p.programs[*func].exprs.len(),
                n.shape
            )
        }
    }
}
