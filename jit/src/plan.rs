//! From a graph to a schedule of kernels over a static memory plan.
//!
//! 1. **Aliases**: reshapes, `stop_gradient`, broadcasts that add only 1-sized dims and
//!    casts to a float type change no bytes (the CPU backend holds every dtype as f32):
//!    they name their source's storage.
//! 2. **Transposes into matmuls** are folded into the GEMM's strides; a transpose whose
//!    every user is such a matmul is never materialized.
//! 3. **Fusion**: elementwise nodes (unary, binary, compare, select, casts, broadcasts
//!    that read with a pattern [`Access`] supports) are grouped in reverse order: a node
//!    joins its users' group when all its users are in one group and none of them reads
//!    it through a broadcast; a broadcast whose users are all loops of other groups is
//!    read through its pattern by each of them instead of being stored (when the
//!    pattern reads four lanes at once). Each group is one Cranelift loop whose stores
//!    are its root and any member that is a graph output. Constants are immediates.
//!    A cheap node whose users are loops of several groups, and which reads at most one
//!    full-size tensor, is recomputed in each of them instead of stored (`recomputable`:
//!    batchnorm's `x − μ` and `x̂`).
//!    A group whose only use is one sum or max (over runs of at least 16 contiguous
//!    elements) is not stored at all: the reduction runs the loop run by run into a
//!    scratch buffer in cache (batchnorm's `sum(dy * x̂)` reads `dy` and `x̂` once and
//!    writes nothing but the result). Such loops feeding reductions of one op over the
//!    same axes of one shape become one loop with a store per reduction, when everything
//!    the later ones read exists before the first (batchnorm's backward sums).
//!    A group that is only `base − s·p`, `p` a matrix product read by nothing else and
//!    `s` a scalar (SGD's `w − lr·g` for a weight gradient), is no loop at all: the GEMM
//!    accumulates `−s·a·b` into `base`'s values ([`Update`]), so the gradient is never
//!    stored and the weights are read and written once, in place when the plan allows.
//! 4. **Schedule**: kernels in the order of their last node, which is topological.
//! 5. **Memory**: every materialized value gets an offset in one arena, assigned once:
//!    a value's space is reused after its last reader (best fit among freed blocks); a
//!    fused loop may write over a dying input it reads at the same index. A `state.N`
//!    output is written straight into input N's buffer when every other reader of N runs
//!    before it (parameter updates), else copied there after the run.

use std::collections::HashMap;

use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Graph, Op, ValueId};

use crate::fuse::{Access, Expr, Fused};

/// Where a value lives during a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loc {
    /// The buffer of graph input `i`.
    Input(usize),
    /// An offset (in f32s) into the arena.
    Arena(usize),
}

/// One step of the schedule.
#[derive(Clone, Debug)]
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
    /// A native kernel computing node `node` from its args (as written: aliases keep
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

/// The compiled form of a graph, independent of any run.
pub struct Plan {
    pub fused: Vec<Fused>,
    pub kernels: Vec<Kernel>,
    /// Storage of every value (after alias resolution; `None`: never materialized).
    pub loc: Vec<Option<Loc>>,
    /// Alias-resolved value of every node.
    pub root: Vec<ValueId>,
    pub arena: usize,
    /// Graph inputs: value, name, shape.
    pub inputs: Vec<(ValueId, String, Vec<usize>)>,
    /// Graph outputs: value, `Some(i)` when it is copied into input `i` after the run
    /// (a state output not written in place), `None` when returned; in-place state
    /// outputs are listed in `in_place`.
    pub outputs: Vec<(ValueId, Option<usize>)>,
    pub in_place: Vec<bool>,
    pub shapes: Vec<Vec<usize>>,
}

/// Whether a node only renames its argument's storage.
fn is_alias(g: &Graph, v: ValueId) -> bool {
    let n = g.node(v);
    match n.op {
        Op::Reshape | Op::StopGradient => true,
        Op::Broadcast => g.node(n.args[0]).numel() == n.numel(),
        Op::Cast => {
            n.dtype.is_float()
                || g.node(n.args[0]).dtype == n.dtype
                || (n.dtype != DType::Bool && !g.node(n.args[0]).dtype.is_float())
        }
        _ => false,
    }
}

/// How a broadcast from `from` to `to` reads its input at a flat output index.
pub fn broadcast_access(from: &[usize], to: &[usize]) -> Option<Access> {
    let numel: usize = from.iter().product();
    if numel == 1 {
        return Some(Access::Scalar);
    }
    let off = to.len() - from.len();
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

/// The last-two-dims transpose's input, when `v` is one.
fn swapped(g: &Graph, v: ValueId) -> Option<ValueId> {
    let n = g.node(v);
    match &n.op {
        Op::Transpose { perm } => {
            let r = perm.len();
            let ok = r >= 2
                && perm[r - 2] == r - 1
                && perm[r - 1] == r - 2
                && perm[..r - 2].iter().enumerate().all(|(i, p)| *p == i);
            ok.then_some(n.args[0])
        }
        _ => None,
    }
}

/// The contiguous run a reduction of `shape` over `axes` sums at a time: the product of
/// the innermost dims when they are all reduced, else 1 (see `kernels::reduce`).
pub fn reduced_run(shape: &[usize], axes: &[usize]) -> usize {
    let mut run = 1;
    for d in (0..shape.len()).rev() {
        if shape[d] == 1 {
            continue;
        }
        if !axes.contains(&d) {
            break;
        }
        run *= shape[d];
    }
    run
}

/// Whether reduction `u` can run fused loop `f` (which computes its input) run by run:
/// the runs must be long enough to amortize a call, and start where the loop's four-lane
/// broadcast reads stay aligned.
fn reducible(g: &Graph, u: ValueId, f: &Fused) -> bool {
    const MIN_RUN: usize = 16;
    let n = g.node(u);
    let Op::Reduce { axes, .. } = &n.op else {
        return false;
    };
    let shape = &g.node(n.args[0]).shape;
    let run = reduced_run(shape, axes);
    let aligned = run.is_multiple_of(4)
        || !f.vectorizes()
        || f.leaves
            .iter()
            .all(|a| matches!(a, Access::Linear | Access::Scalar));
    run >= MIN_RUN && aligned
}

/// Whether elementwise node `v` is recomputed inside every loop that uses it rather than
/// stored once: when it is cheap (no transcendental function) and reads at most one
/// full-size tensor (others are scalars, constants or broadcasts read through their
/// pattern), each loop reads that tensor instead of the stored value, the same bytes,
/// and the store and its own pass are saved. Batchnorm's `x − μ` and `x̂` are such
/// values: read by the variance, the output and three backward passes.
fn recomputable(g: &Graph, v: ValueId, root: &[ValueId]) -> bool {
    use nabla_lang::ir::Unary;
    let n = g.node(v);
    let cheap = match n.op {
        Op::Unary(u) => !matches!(
            u,
            Unary::Exp
                | Unary::Log
                | Unary::Tanh
                | Unary::Sigmoid
                | Unary::Erf
                | Unary::Sin
                | Unary::Cos
        ),
        Op::Binary(b) => b != Binary::Pow,
        Op::Compare(_) | Op::Select | Op::Cast => true,
        _ => false,
    };
    let streams = n
        .args
        .iter()
        .filter(|a| {
            let a = g.node(root[a.index()]);
            match a.op {
                Op::Const(_) => false,
                Op::Broadcast => broadcast_access(&g.node(a.args[0]).shape, &a.shape)
                    .is_none_or(|acc| !acc.vectorizes()),
                _ => a.numel() == n.numel(),
            }
        })
        .count();
    cheap && streams <= 1
}

fn fusible(g: &Graph, v: ValueId) -> bool {
    let n = g.node(v);
    match n.op {
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Cast => true,
        Op::Broadcast => broadcast_access(&g.node(n.args[0]).shape, &n.shape).is_some(),
        _ => false,
    }
}

/// Builds the plan of `g` (see the module doc).
pub fn plan(g: &Graph) -> Plan {
    let count = g.nodes.len();
    let mut root: Vec<ValueId> = (0..count as u32).map(ValueId).collect();
    for i in 0..count {
        let v = ValueId(i as u32);
        if is_alias(g, v) {
            root[i] = root[g.node(v).args[0].index()];
        }
    }
    let r = |v: ValueId| root[v.index()];
    // Users of each (resolved) value among non-alias nodes, and graph outputs.
    let mut users: Vec<Vec<ValueId>> = vec![Vec::new(); count];
    for (i, n) in g.nodes.iter().enumerate() {
        if root[i].index() != i {
            continue;
        }
        for a in &n.args {
            users[r(*a).index()].push(ValueId(i as u32));
        }
    }
    let mut is_output = vec![false; count];
    for (_, v) in &g.outputs {
        is_output[r(*v).index()] = true;
    }
    // Transposes folded into matmuls.
    let mut folded = vec![false; count];
    for i in 0..count {
        let v = ValueId(i as u32);
        if root[i] == v
            && swapped(g, v).is_some()
            && !is_output[i]
            && !users[i].is_empty()
            && users[i].iter().all(|u| matches!(g.node(*u).op, Op::MatMul))
        {
            folded[i] = true;
        }
    }
    // Fusion groups, in reverse order. A node is in one group, or in several when it is
    // recomputed by each (see `recomputable`).
    let mut group: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut inlined = vec![false; count];
    let mut groups: Vec<Vec<ValueId>> = Vec::new();
    for i in (0..count).rev() {
        let v = ValueId(i as u32);
        if root[i] != v || !fusible(g, v) {
            continue;
        }
        let us = &users[i];
        // A broadcast read by loops of several groups is read through its pattern by each
        // of them, not materialized at full size (batchnorm's scale is read by a forward
        // and a backward loop).
        if matches!(g.node(v).op, Op::Broadcast)
            && broadcast_access(&g.node(g.node(v).args[0]).shape, &g.node(v).shape)
                .is_some_and(|a| a.vectorizes())
            && !is_output[i]
            && !us.is_empty()
            && us.iter().all(|u| {
                !group[u.index()].is_empty()
                    && !matches!(g.node(*u).op, Op::Broadcast)
                    && g.node(*u).numel() == g.node(v).numel()
            })
        {
            inlined[i] = true;
            continue;
        }
        let all_in_loops = !us.is_empty()
            && us.iter().all(|u| {
                !group[u.index()].is_empty()
                    && !matches!(g.node(*u).op, Op::Broadcast)
                    && g.node(*u).numel() == g.node(v).numel()
            });
        let mut targets: Vec<usize> = us
            .iter()
            .flat_map(|u| group[u.index()].iter().copied())
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let join =
            all_in_loops && (targets.len() == 1 || (!is_output[i] && recomputable(g, v, &root)));
        if join {
            for gid in &targets {
                groups[*gid].push(v);
            }
            group[i] = targets;
        } else {
            group[i] = vec![groups.len()];
            groups.push(vec![v]);
        }
    }
    // Kernels, keyed by their last node.
    let mut at: Vec<Option<Kernel>> = vec![None; count];
    let mut fused = Vec::new();
    let mut absorbed = vec![false; count];
    // Loops whose only use is a reduction: (members, leaf count, args, the reduction).
    let mut reduced: Vec<(Vec<ValueId>, usize, Vec<ValueId>, ValueId)> = Vec::new();
    for members in groups.iter_mut() {
        members.sort();
    }
    for members in &groups {
        let Some(&last) = members.last() else {
            continue;
        };
        let (f, args) = fuse_group(g, members, &[], &root, &is_output, &inlined);
        let n = g.node(last).numel();
        if let Some((product, update)) = product_update(&f, &args).filter(|(pv, _)| {
            matches!(g.node(*pv).op, Op::MatMul)
                && !is_output[pv.index()]
                && users[pv.index()]
                    .iter()
                    .all(|u| group[u.index()] == group[last.index()])
        }) {
            absorbed[product.index()] = true;
            at[last.index()] = Some(matmul_kernel(
                g,
                product,
                last,
                &root,
                &folded,
                Some(update),
            ));
            continue;
        }
        // A loop whose only use is one reduction runs inside it (see `Kernel::Reduced`).
        let reducer = match users[last.index()].as_slice() {
            [u] if f.stores.len() == 1 && !is_output[last.index()] && reducible(g, *u, &f) => {
                Some(*u)
            }
            _ => None,
        };
        match reducer {
            Some(u) => reduced.push((members.clone(), f.leaves.len(), args, u)),
            None => {
                at[last.index()] = Some(Kernel::Fused {
                    func: fused.len(),
                    args,
                    n,
                });
                fused.push(f);
            }
        }
    }
    // Reductions of loops over the same axes of one shape run as one loop when every
    // value the later ones read exists before the first (batchnorm's backward sums).
    let made_by = |v: ValueId| -> usize {
        group[v.index()]
            .iter()
            .filter_map(|gid| groups[*gid].last())
            .map(|l| l.index())
            .max()
            .unwrap_or(v.index())
    };
    let signature = |u: ValueId| {
        let n = g.node(u);
        let Op::Reduce { op, axes, .. } = &n.op else {
            return None;
        };
        Some((*op, axes.clone(), g.node(n.args[0]).shape.clone()))
    };
    reduced.sort_by_key(|(_, _, _, u)| *u);
    let mut sets: Vec<Vec<usize>> = Vec::new();
    for (i, (_, leaves, args, u)) in reduced.iter().enumerate() {
        let home = sets.iter_mut().find(|set| {
            let first = reduced[set[0]].3;
            set.len() < MERGED_MAX
                && signature(first).is_some()
                && signature(first) == signature(*u)
                && args[..*leaves].iter().all(|a| made_by(*a) < first.index())
        });
        match home {
            Some(set) => set.push(i),
            None => sets.push(vec![i]),
        }
    }
    for set in sets {
        let mut members: Vec<ValueId> = set
            .iter()
            .flat_map(|i| reduced[*i].0.iter().copied())
            .collect();
        members.sort();
        members.dedup();
        let roots: Vec<ValueId> = set
            .iter()
            .filter_map(|i| reduced[*i].0.last().copied())
            .collect();
        let (f, args) = fuse_group(g, &members, &roots, &root, &is_output, &inlined);
        let first = reduced[set[0]].3;
        if set.len() > 1 && !reducible(g, first, &f) {
            // The merged loop's reads would not stay aligned: keep them apart.
            for i in set {
                let (members, _, _, u) = &reduced[i];
                let (f, args) = fuse_group(g, members, &[], &root, &is_output, &inlined);
                at[u.index()] = Some(reduced_kernel(g, &[*u], &f, args, fused.len()));
                fused.push(f);
            }
            continue;
        }
        // The loop stores its roots in member order; each feeds its own reduction.
        let mut stored: Vec<ValueId> = roots.clone();
        stored.sort();
        let nodes: Vec<ValueId> = stored
            .iter()
            .filter_map(|r| set.iter().find(|i| reduced[**i].0.last() == Some(r)))
            .map(|i| reduced[*i].3)
            .collect();
        for v in &nodes {
            absorbed[v.index()] = true;
        }
        at[first.index()] = Some(reduced_kernel(g, &nodes, &f, args, fused.len()));
        fused.push(f);
    }
    for i in 0..count {
        let v = ValueId(i as u32);
        if root[i] != v
            || !group[i].is_empty()
            || folded[i]
            || inlined[i]
            || absorbed[i]
            || at[i].is_some()
            || matches!(g.node(v).op, Op::Input { .. })
        {
            continue;
        }
        let n = g.node(v);
        if matches!(n.op, Op::Const(_))
            && !is_output[i]
            && users[i].iter().all(|u| !group[u.index()].is_empty())
        {
            continue; // an immediate in every loop that uses it
        }
        at[i] = Some(match n.op {
            Op::MatMul => matmul_kernel(g, v, v, &root, &folded, None),
            _ => Kernel::Node {
                node: v,
                args: n.args.clone(),
            },
        });
    }
    let kernels: Vec<Kernel> = at.into_iter().flatten().collect();
    let inputs: Vec<(ValueId, String, Vec<usize>)> = g
        .inputs()
        .map(|(v, n, _)| (v, n.to_string(), g.node(v).shape.clone()))
        .collect();
    let targets = nabla_lang::backend::state_targets(g);
    let mut p = Plan {
        fused,
        kernels,
        loc: vec![None; count],
        root,
        arena: 0,
        inputs,
        outputs: g
            .outputs
            .iter()
            .zip(&targets)
            .map(|((_, v), t)| (*v, *t))
            .collect(),
        in_place: vec![false; g.outputs.len()],
        shapes: g.nodes.iter().map(|n| n.shape.clone()).collect(),
    };
    allocate(g, &mut p);
    p
}

/// At most this many reductions share one loop.
const MERGED_MAX: usize = 4;

/// The kernel running reductions `nodes` over the stores of loop `f` (number `func`).
fn reduced_kernel(
    g: &Graph,
    nodes: &[ValueId],
    f: &Fused,
    args: Vec<ValueId>,
    func: usize,
) -> Kernel {
    debug_assert_eq!(f.stores.len(), nodes.len(), "{:?}", g.node(nodes[0]).op);
    Kernel::Reduced {
        nodes: nodes.to_vec(),
        func,
        args: args[..f.leaves.len()].to_vec(),
    }
}

/// The GEMM of matmul node `v`, writing `out` (`v` itself, or the update it feeds).
fn matmul_kernel(
    g: &Graph,
    v: ValueId,
    out: ValueId,
    root: &[ValueId],
    folded: &[bool],
    update: Option<Update>,
) -> Kernel {
    let r = |v: ValueId| root[v.index()];
    let n = g.node(v);
    let (a, b) = (r(n.args[0]), r(n.args[1]));
    let fa = swapped(g, a).filter(|_| folded[a.index()]).map(r);
    let fb = swapped(g, b).filter(|_| folded[b.index()]).map(r);
    let (rank, an) = (n.shape.len(), g.node(n.args[0]));
    Kernel::MatMul {
        a: fa.unwrap_or(a),
        b: fb.unwrap_or(b),
        out,
        ta: fa.is_some(),
        tb: fb.is_some(),
        batch: n.shape[..rank - 2].iter().product(),
        m: n.shape[rank - 2],
        k: an.shape[an.shape.len() - 1],
        n: n.shape[rank - 1],
        update,
    }
}

/// When fused loop `f` (with pointer arguments `args`) stores only `base − s·p` or
/// `base − p·s`, with `base` and `p` read linearly and `s` a scalar: `p` and the update.
fn product_update(f: &Fused, args: &[ValueId]) -> Option<(ValueId, Update)> {
    let [store] = f.stores[..] else { return None };
    let Expr::Binary(Binary::Sub, base, step) = f.exprs[store] else {
        return None;
    };
    let Expr::Binary(Binary::Mul, x, y) = f.exprs[step] else {
        return None;
    };
    let linear = |e: usize| match f.exprs[e] {
        Expr::Leaf(k) if f.leaves[k] == Access::Linear => Some(args[k]),
        _ => None,
    };
    let scale = |e: usize| match f.exprs[e] {
        Expr::Const(c) => Some(Scale::Const(c)),
        Expr::Leaf(k) if f.leaves[k] == Access::Scalar => Some(Scale::Value(args[k])),
        _ => None,
    };
    let (product, s) = match (linear(x), scale(y)) {
        (Some(p), Some(s)) => (p, s),
        _ => (linear(y)?, scale(x)?),
    };
    let base = linear(base)?;
    (base != product).then_some((product, Update { base, scale: s }))
}

/// The fused program of a group and its pointer arguments (leaves, then stores). The
/// group's last member is stored, and so are `roots` and graph outputs.
fn fuse_group(
    g: &Graph,
    members: &[ValueId],
    roots: &[ValueId],
    root: &[ValueId],
    is_output: &[bool],
    inlined: &[bool],
) -> (Fused, Vec<ValueId>) {
    let r = |v: ValueId| root[v.index()];
    let last = members[members.len() - 1];
    let mut f = Fused {
        leaves: Vec::new(),
        exprs: Vec::new(),
        stores: Vec::new(),
    };
    let mut leaf_vals: Vec<ValueId> = Vec::new();
    let mut expr_of: HashMap<ValueId, usize> = HashMap::new();
    let push = |f: &mut Fused, e: Expr| {
        f.exprs.push(e);
        f.exprs.len() - 1
    };
    let leaf = |f: &mut Fused, v: ValueId, access: Access, leaf_vals: &mut Vec<ValueId>| -> Expr {
        let k = match leaf_vals
            .iter()
            .zip(&f.leaves)
            .position(|(lv, la)| *lv == v && *la == access)
        {
            Some(k) => k,
            None => {
                leaf_vals.push(v);
                f.leaves.push(access);
                leaf_vals.len() - 1
            }
        };
        Expr::Leaf(k)
    };
    for &m in members {
        let n = g.node(m);
        let operand = |f: &mut Fused,
                       a: ValueId,
                       expr_of: &mut HashMap<ValueId, usize>,
                       leaf_vals: &mut Vec<ValueId>|
         -> usize {
            let a = r(a);
            if let Some(e) = expr_of.get(&a) {
                return *e;
            }
            let e = match g.node(a).op {
                Op::Const(c) => Expr::Const(c as f32),
                // An inlined broadcast: its source, read through the pattern.
                Op::Broadcast if inlined[a.index()] => {
                    let n = g.node(a);
                    let src = r(n.args[0]);
                    match g.node(src).op {
                        Op::Const(c) => Expr::Const(c as f32),
                        _ => leaf(
                            f,
                            src,
                            broadcast_access(&g.node(n.args[0]).shape, &n.shape)
                                .unwrap_or(Access::Linear),
                            leaf_vals,
                        ),
                    }
                }
                _ => leaf(f, a, Access::Linear, leaf_vals),
            };
            let k = push(f, e);
            expr_of.insert(a, k);
            k
        };
        let e = match &n.op {
            Op::Unary(u) => {
                Expr::Unary(*u, operand(&mut f, n.args[0], &mut expr_of, &mut leaf_vals))
            }
            Op::Binary(b) => {
                let x = operand(&mut f, n.args[0], &mut expr_of, &mut leaf_vals);
                Expr::Binary(
                    *b,
                    x,
                    operand(&mut f, n.args[1], &mut expr_of, &mut leaf_vals),
                )
            }
            Op::Compare(c) => {
                let x = operand(&mut f, n.args[0], &mut expr_of, &mut leaf_vals);
                Expr::Compare(
                    *c,
                    x,
                    operand(&mut f, n.args[1], &mut expr_of, &mut leaf_vals),
                )
            }
            Op::Select => {
                let c = operand(&mut f, n.args[0], &mut expr_of, &mut leaf_vals);
                let x = operand(&mut f, n.args[1], &mut expr_of, &mut leaf_vals);
                Expr::Select(
                    c,
                    x,
                    operand(&mut f, n.args[2], &mut expr_of, &mut leaf_vals),
                )
            }
            Op::Cast if n.dtype == DType::Bool => {
                Expr::NonZero(operand(&mut f, n.args[0], &mut expr_of, &mut leaf_vals))
            }
            Op::Cast => Expr::Trunc(operand(&mut f, n.args[0], &mut expr_of, &mut leaf_vals)),
            Op::Broadcast => {
                let a = r(n.args[0]);
                match g.node(a).op {
                    Op::Const(c) => Expr::Const(c as f32),
                    _ => {
                        let access = broadcast_access(&g.node(n.args[0]).shape, &n.shape)
                            .unwrap_or(Access::Linear);
                        leaf(&mut f, a, access, &mut leaf_vals)
                    }
                }
            }
            _ => Expr::Const(f32::NAN),
        };
        let k = push(&mut f, e);
        expr_of.insert(m, k);
        if m == last || roots.contains(&m) || is_output[m.index()] {
            f.stores.push(k);
        }
    }
    let stored: Vec<ValueId> = members
        .iter()
        .copied()
        .filter(|m| *m == last || roots.contains(m) || is_output[m.index()])
        .collect();
    let mut args = leaf_vals;
    args.extend(stored);
    (f, args)
}

/// What kernel `k` computes, in a few words: `conv2d [128, 32, 28, 28]`, `matmul
/// 128×784 · 784×512ᵀ`, `loop of 7 ops (mul, add, max) over 401408`.
pub fn describe(g: &Graph, p: &Plan, k: &Kernel) -> String {
    let t = |b: bool| if b { "ᵀ" } else { "" };
    match k {
        Kernel::Fused { func, n, .. } => {
            let f = &p.fused[*func];
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
                p.fused[*func].exprs.len(),
                n.shape
            )
        }
    }
}

/// The values kernel `k` reads (resolved) with how (`true`: only linearly, elementwise).
fn reads(p: &Plan, k: &Kernel) -> Vec<(ValueId, bool)> {
    match k {
        Kernel::Fused { func, args, .. } => {
            let f = &p.fused[*func];
            f.leaves
                .iter()
                .zip(args)
                .map(|(a, v)| (*v, *a == Access::Linear))
                .collect()
        }
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
        Kernel::Fused { func, args, .. } => args[p.fused[*func].leaves.len()..].to_vec(),
        Kernel::MatMul { out, .. } => vec![*out],
        Kernel::Node { node, .. } => vec![*node],
        Kernel::Reduced { nodes, .. } => nodes.clone(),
    }
}

/// Assigns every materialized value its storage (see the module doc, step 5).
fn allocate(g: &Graph, p: &mut Plan) {
    const ALIGN: usize = 16;
    let count = g.nodes.len();
    for (i, (v, _, _)) in p.inputs.iter().enumerate() {
        p.loc[v.index()] = Some(Loc::Input(i));
    }
    let kcount = p.kernels.len();
    let mut last_use = vec![0usize; count];
    let mut writer = vec![usize::MAX; count];
    for (k, kernel) in p.kernels.iter().enumerate() {
        for (v, _) in reads(p, kernel) {
            last_use[v.index()] = k;
        }
        for v in writes(p, kernel) {
            writer[v.index()] = k;
            last_use[v.index()] = last_use[v.index()].max(k);
        }
    }
    // Outputs live to the end.
    for (v, _) in &p.outputs {
        last_use[p.root[v.index()].index()] = kcount;
    }
    // State outputs written in place: the writer is a fused loop (or any kernel) that runs
    // after every other reader of the input, which it reads only at the same index.
    let mut in_place_of: HashMap<ValueId, usize> = HashMap::new();
    for (o, (v, target)) in p.outputs.iter().enumerate() {
        let (Some(i), v) = (target, p.root[v.index()]) else {
            continue;
        };
        let w = writer[v.index()];
        if w == usize::MAX
            || in_place_of.contains_key(&v)
            || p.outputs
                .iter()
                .filter(|(u, _)| p.root[u.index()] == v)
                .count()
                > 1
        {
            continue;
        }
        let input = p.inputs[*i].0;
        let safe = p.kernels.iter().enumerate().all(|(k, kernel)| {
            reads(p, kernel).iter().all(|(rv, linear)| {
                *rv != input
                    || k < w
                    || (k == w
                        && *linear
                        && matches!(
                            kernel,
                            Kernel::Fused { .. }
                                | Kernel::MatMul {
                                    update: Some(_),
                                    ..
                                }
                        ))
            })
        });
        if safe {
            in_place_of.insert(v, *i);
            p.in_place[o] = true;
        }
    }
    // Free blocks (offset, size), and the arena's end.
    let mut free: Vec<(usize, usize)> = Vec::new();
    let mut end = 0usize;
    let size = |v: ValueId| g.node(v).numel().max(1).div_ceil(ALIGN) * ALIGN;
    let mut dying: Vec<Vec<ValueId>> = vec![Vec::new(); kcount + 1];
    for k in 0..kcount {
        let kernel = p.kernels[k].clone();
        let ins = reads(p, &kernel);
        for v in writes(p, &kernel) {
            if let Some(i) = in_place_of.get(&v) {
                p.loc[v.index()] = Some(Loc::Input(*i));
                continue;
            }
            let need = size(v);
            // A fused loop may overwrite an input it reads only linearly and last.
            let reuse = match kernel {
                Kernel::Fused { .. } => ins.iter().find(|(u, lin)| {
                    *lin && last_use[u.index()] == k
                        && size(*u) == need
                        && matches!(p.loc[u.index()], Some(Loc::Arena(_)))
                        && ins.iter().filter(|(w, _)| w == u).all(|(_, l)| *l)
                        && !dying[k].contains(u)
                }),
                _ => None,
            };
            if let Some((u, _)) = reuse {
                p.loc[v.index()] = p.loc[u.index()];
                dying[k].push(*u); // handed over, not freed
                last_use[u.index()] = usize::MAX;
                continue;
            }
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, (_, s))| *s >= need)
                .min_by_key(|(_, (_, s))| *s)
                .map(|(j, _)| j);
            let off = match best {
                Some(j) => {
                    let (off, s) = free.remove(j);
                    if s > need {
                        free.push((off + need, s - need));
                    }
                    off
                }
                None => {
                    end += need;
                    end - need
                }
            };
            p.loc[v.index()] = Some(Loc::Arena(off));
        }
        // Values whose last reader is this kernel are free for later kernels.
        let mut seen = Vec::new();
        for (v, _) in ins
            .iter()
            .copied()
            .chain(writes(p, &kernel).into_iter().map(|v| (v, false)))
        {
            if last_use[v.index()] == k && !seen.contains(&v) {
                seen.push(v);
                if let Some(Loc::Arena(off)) = p.loc[v.index()] {
                    free.push((off, size(v)));
                }
            }
        }
    }
    p.arena = end;
}
