//! From a graph to a schedule of kernels (see the crate doc for the steps).

use nabla_lang::check::ty::DType;
use nabla_lang::ir::ops::Class;
use nabla_lang::ir::{Binary, Graph, Op, ValueId};

use crate::PlanError;
use crate::alloc::allocate;
use crate::plan::{Kernel, Plan, Scale, Update, reads, writes};
use crate::program::{self, Access, Expr, Facts, Group, Program, broadcast_access};
use crate::target::Target;

/// Whether a node only renames its argument's storage on `t`: reshapes, `stop_gradient`,
/// broadcasts that add only 1-sized dims, and casts between dtypes held alike that
/// change no value (to a float type other than bf16, which rounds, or between integer
/// types).
fn is_alias(g: &Graph, v: ValueId, t: &Target) -> bool {
    let n = g.node(v);
    match n.op.row().class {
        Class::Alias => true,
        Class::Broadcast => g.node(n.args[0]).numel() == n.numel(),
        Class::Elementwise if n.op == Op::Cast => {
            let from = g.node(n.args[0]).dtype;
            (t.storage)(from) == (t.storage)(n.dtype)
                && (from == n.dtype
                    || (n.dtype.is_float() && n.dtype != DType::BF16)
                    || (n.dtype != DType::Bool && !from.is_float()))
        }
        _ => false,
    }
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
/// the innermost dims when they are all reduced, else 1.
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

/// Whether reduction `u` can run loop `f` (which computes its input) run by run: the
/// target allows it, the runs are long enough to amortize a call, and start where the
/// loop's vector reads of broadcasts stay aligned.
fn reducible(g: &Graph, u: ValueId, f: &Program, t: &Target) -> bool {
    let Some(terms) = t.reduce_on_read else {
        return false;
    };
    let n = g.node(u);
    let Op::Reduce { axes, .. } = &n.op else {
        return false;
    };
    let run = reduced_run(&g.node(n.args[0]).shape, axes);
    let aligned = run.is_multiple_of(t.lanes)
        || !f.vectorizes(t)
        || f.leaves
            .iter()
            .all(|a| matches!(a, Access::Linear | Access::Scalar));
    run >= terms.min_run && aligned
}

/// Whether elementwise node `v` is recomputed inside every loop that uses it rather than
/// stored once: when it is cheap on `t` and reads at most one full-size tensor (others
/// are scalars, constants or broadcasts read through their pattern), each loop reads
/// that tensor instead of the stored value, the same bytes, and the store and its own
/// pass are saved. Batchnorm's `x − μ` and `x̂` are such values: read by the variance,
/// the output and three backward passes.
fn recomputable(g: &Graph, v: ValueId, root: &[ValueId], t: &Target) -> bool {
    let n = g.node(v);
    let cheap = n.op.row().class == Class::Elementwise
        && match n.op {
            Op::Unary(u) => !t.costly_unary.contains(&u),
            Op::Binary(b) => !t.costly_binary.contains(&b),
            _ => true,
        };
    let streams = n
        .args
        .iter()
        .filter(|a| {
            let a = g.node(root[a.index()]);
            match a.op {
                Op::Const(_) => false,
                Op::Broadcast => broadcast_access(&g.node(a.args[0]).shape, &a.shape)
                    .is_none_or(|acc| !acc.vectorizes(t.lanes)),
                _ => a.numel() == n.numel(),
            }
        })
        .count();
    cheap && streams <= 1
}

/// Whether `v` may join a fused loop: an elementwise op, or a broadcast one pattern reads.
fn fusible(g: &Graph, v: ValueId) -> bool {
    let n = g.node(v);
    match n.op.row().class {
        Class::Elementwise => true,
        Class::Broadcast => broadcast_access(&g.node(n.args[0]).shape, &n.shape).is_some(),
        _ => false,
    }
}

/// The group that computes and stores `v` for the others, when `v` is read by loops of
/// several groups (`targets`) and is not recomputed in each: the group that runs first
/// (the one whose last member comes first; a reader placed before it is moved after it,
/// see `in_dependency_order`), unless a reduction runs that group's loop (which then
/// stores only what it reduces). GELU's `erf`, read by the forward loop and the backward
/// one, is so computed in the forward loop: in a loop of its own, its operands were read
/// twice and the value read back once more.
fn stored_by_first(
    g: &Graph,
    users: &[Vec<ValueId>],
    targets: &[usize],
    groups: &[Vec<ValueId>],
) -> Option<usize> {
    // Groups are founded by their last member (the grouping walks backwards).
    let last = |gid: usize| groups[gid].first().copied();
    let first = *targets.iter().min_by_key(|gid| last(**gid))?;
    let end = last(first)?;
    let reduced = matches!(users[end.index()].as_slice(),
        [u] if matches!(g.node(*u).op, Op::Reduce { .. }));
    (targets.len() > 1 && !reduced).then_some(first)
}

/// Builds the schedule of `g` for `t` (see the crate doc).
pub fn plan(g: &Graph, t: &Target) -> Result<Plan, PlanError> {
    let count = g.nodes.len();
    let mut root: Vec<ValueId> = (0..count as u32).map(ValueId).collect();
    for i in 0..count {
        let v = ValueId(i as u32);
        if is_alias(g, v, t) {
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
    // Members a group stores for other groups to read (see `stored_by_first`), by group.
    let mut shares: Vec<Vec<ValueId>> = Vec::new();
    for i in (0..count).rev() {
        let v = ValueId(i as u32);
        if root[i] != v || !fusible(g, v) {
            continue;
        }
        let us = &users[i];
        let all_in_loops = !us.is_empty()
            && us.iter().all(|u| {
                !group[u.index()].is_empty()
                    && !matches!(g.node(*u).op, Op::Broadcast)
                    && g.node(*u).numel() == g.node(v).numel()
            });
        // A broadcast read by loops of several groups is read through its pattern by each
        // of them, not materialized at full size (batchnorm's scale is read by a forward
        // and a backward loop).
        if matches!(g.node(v).op, Op::Broadcast)
            && broadcast_access(&g.node(g.node(v).args[0]).shape, &g.node(v).shape)
                .is_some_and(|a| a.vectorizes(t.lanes))
            && !is_output[i]
            && all_in_loops
        {
            inlined[i] = true;
            continue;
        }
        let mut targets: Vec<usize> = us
            .iter()
            .flat_map(|u| group[u.index()].iter().copied())
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let join =
            all_in_loops && (targets.len() == 1 || (!is_output[i] && recomputable(g, v, &root, t)));
        let first = (all_in_loops && !join)
            .then(|| stored_by_first(g, &users, &targets, &groups))
            .flatten();
        if join {
            for gid in &targets {
                groups[*gid].push(v);
            }
            group[i] = targets;
        } else if let Some(gid) = first {
            groups[gid].push(v);
            shares[gid].push(v);
            group[i] = vec![gid];
        } else {
            group[i] = vec![groups.len()];
            groups.push(vec![v]);
            shares.push(Vec::new());
        }
    }
    let facts = Facts {
        root: &root,
        is_output: &is_output,
        inlined: &inlined,
    };
    let build = |members: &[ValueId], roots: &[ValueId]| {
        program::build(g, Group { members, roots }, &facts).map_err(PlanError::Internal)
    };
    // Kernels, keyed by their last node.
    let mut at: Vec<Option<Kernel>> = vec![None; count];
    let mut programs = Vec::new();
    let mut absorbed = vec![false; count];
    // Loops whose only use is a reduction: (members, leaf count, args, the reduction).
    let mut reduced: Vec<(Vec<ValueId>, usize, Vec<ValueId>, ValueId)> = Vec::new();
    for members in groups.iter_mut() {
        members.sort();
    }
    // Shared values stored by a split loop (see `within_bindings`), and the parts of
    // split loops keyed by their last member (a shared one may end parts of several).
    let mut claimed = Vec::new();
    let mut split_at: Vec<Vec<Kernel>> = vec![Vec::new(); count];
    for (members, shared_out) in groups.iter().zip(&shares) {
        let Some(&last) = members.last() else {
            continue;
        };
        let (f, args) = build(members, shared_out)?;
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
            [u] if f.stores.len() == 1 && !is_output[last.index()] && reducible(g, *u, &f, t) => {
                Some(*u)
            }
            _ => None,
        };
        match reducer {
            Some(u) => reduced.push((members.clone(), f.leaves.len(), args, u)),
            None => {
                let shared = |m: ValueId| group[m.index()].len() > 1;
                let parts = within_bindings(
                    g,
                    &root,
                    &shared,
                    &mut claimed,
                    members,
                    (f, args),
                    t,
                    &build,
                )?;
                for (f, args) in parts {
                    let Some(&last) = args.last() else { continue };
                    split_at[last.index()].push(Kernel::Fused {
                        func: programs.len(),
                        args,
                        n,
                    });
                    programs.push(f);
                }
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
    let merged_max = t.reduce_on_read.map_or(1, |r| r.max_merged);
    reduced.sort_by_key(|(_, _, _, u)| *u);
    let mut sets: Vec<Vec<usize>> = Vec::new();
    for (i, (_, leaves, args, u)) in reduced.iter().enumerate() {
        let home = sets.iter_mut().find(|set| {
            let first = reduced[set[0]].3;
            set.len() < merged_max
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
        let (f, args) = build(&members, &roots)?;
        let first = reduced[set[0]].3;
        if set.len() > 1 && !reducible(g, first, &f, t) {
            // The merged loop's reads would not stay aligned: keep them apart.
            for i in set {
                let (members, _, _, u) = &reduced[i];
                let (f, args) = build(members, &[])?;
                at[u.index()] = Some(reduced_kernel(&[*u], &f, args, programs.len())?);
                programs.push(f);
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
        at[first.index()] = Some(reduced_kernel(&nodes, &f, args, programs.len())?);
        programs.push(f);
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
    let kernels: Vec<Kernel> = split_at
        .into_iter()
        .zip(at)
        .flat_map(|(parts, k)| parts.into_iter().chain(k))
        .collect();
    let inputs: Vec<(ValueId, String, Vec<usize>)> = g
        .inputs()
        .map(|(v, n, _)| (v, n.to_string(), g.node(v).shape.clone()))
        .collect();
    let targets = nabla_lang::backend::state_targets(g);
    let mut p = Plan {
        programs,
        kernels,
        loc: vec![None; count],
        root,
        arena: 0,
        size: vec![0; count],
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
    in_dependency_order(&mut p)?;
    allocate(g, &mut p, t)?;
    Ok(p)
}

/// Moves kernels, where needed, after the kernels that write what they read: kernels
/// are placed at their last node, and a loop reading a value another loop stores
/// besides its last member (see `stored_by_first`) may be placed before that loop, or
/// have a part that is (a loop split by `within_bindings`). A stable topological
/// order: every other kernel keeps its place.
fn in_dependency_order(p: &mut Plan) -> Result<(), PlanError> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    let count = p.kernels.len();
    let mut writer: HashMap<ValueId, usize> = HashMap::new();
    for (k, kernel) in p.kernels.iter().enumerate() {
        for v in writes(p, kernel) {
            writer.insert(v, k);
        }
    }
    let mut waits = vec![0usize; count];
    let mut then: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut late = false;
    for (k, kernel) in p.kernels.iter().enumerate() {
        let mut before: Vec<usize> = reads(p, kernel)
            .iter()
            .filter_map(|(v, _)| writer.get(v).copied())
            .filter(|w| *w != k)
            .collect();
        before.sort_unstable();
        before.dedup();
        late |= before.iter().any(|w| *w > k);
        waits[k] = before.len();
        for w in before {
            then[w].push(k);
        }
    }
    if !late {
        return Ok(()); // already in order (the usual case)
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..count).filter(|k| waits[*k] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(Reverse(k)) = ready.pop() {
        order.push(k);
        for &u in &then[k] {
            waits[u] -= 1;
            if waits[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() != count {
        debug_assert!(false, "kernels that read each other's values");
        return Err(PlanError::Internal(
            "the kernels' reads and writes form a cycle".into(),
        ));
    }
    let mut kernels: Vec<Option<Kernel>> = std::mem::take(&mut p.kernels)
        .into_iter()
        .map(Some)
        .collect();
    p.kernels = order.iter().filter_map(|k| kernels[*k].take()).collect();
    Ok(())
}

/// A built loop: its program and its kernel arguments (leaves, then stores).
type Built = (Program, Vec<ValueId>);
/// Builds the loop of some members, storing some of them besides the last.
type Builder<'a> = dyn Fn(&[ValueId], &[ValueId]) -> Result<Built, PlanError> + 'a;

/// A fused loop `(f, args)` of group `members`, split into loops that each bind at most
/// `t.max_bindings` buffers: halves in member order, the first storing every value the
/// second reads. A value `shared` with other groups (recomputed by each, see
/// `recomputable`) is stored by the first split that needs it (it is then `claimed`);
/// a later one recomputes it in its second half instead, so that no value has two
/// writers. Each part's last argument, a store, is its last member. One member that
/// alone binds too many is an error.
#[allow(clippy::too_many_arguments)]
fn within_bindings(
    g: &Graph,
    root: &[ValueId],
    shared: &dyn Fn(ValueId) -> bool,
    claimed: &mut Vec<ValueId>,
    members: &[ValueId],
    (f, args): Built,
    t: &Target,
    build: &Builder,
) -> Result<Vec<Built>, PlanError> {
    if args.len() <= t.max_bindings {
        return Ok(vec![(f, args)]);
    }
    let too_many = || {
        PlanError::Internal(format!(
            "a fused loop of {} ops ending in `{}` binds {} buffers, and {} allows {}",
            members.len(),
            members.last().map_or("?", |m| g.node(*m).op.name()),
            args.len(),
            t.name,
            t.max_bindings
        ))
    };
    if members.len() < 2 {
        return Err(too_many());
    }
    // The first half's last member is stored: not a shared value another loop stores.
    let half = members.len() / 2;
    let taken = |m: &ValueId| shared(*m) && claimed.contains(m);
    let mid = (1..members.len())
        .filter(|k| !taken(&members[k - 1]))
        .min_by_key(|k| k.abs_diff(half))
        .ok_or_else(too_many)?;
    let (head, rest) = members.split_at(mid);
    if let Some(&last) = head.last()
        && shared(last)
    {
        claimed.push(last);
    }
    let mut tail = rest.to_vec();
    // What the whole group stored, and what the second half reads, the first stores.
    let mut roots: Vec<ValueId> = head
        .iter()
        .copied()
        .filter(|m| args[f.leaves.len()..].contains(m))
        .collect();
    let mut i = 0;
    while let Some(&u) = tail.get(i) {
        for a in &g.node(u).args {
            let m = root[a.index()];
            if !head.contains(&m) || tail.contains(&m) || roots.contains(&m) {
                continue;
            }
            if shared(m) && claimed.contains(&m) {
                tail.push(m);
            } else {
                if shared(m) {
                    claimed.push(m);
                }
                roots.push(m);
            }
        }
        i += 1;
    }
    tail.sort();
    roots.sort();
    if tail.len() >= members.len() {
        return Err(too_many());
    }
    let tail_roots: Vec<ValueId> = tail
        .iter()
        .copied()
        .filter(|m| args[f.leaves.len()..].contains(m))
        .collect();
    let mut parts = Vec::new();
    for (part, roots) in [(head, roots), (&tail[..], tail_roots)] {
        let built = build(part, &roots)?;
        parts.extend(within_bindings(
            g, root, shared, claimed, part, built, t, build,
        )?);
    }
    Ok(parts)
}

/// The kernel running reductions `nodes` over the stores of loop `f` (number `func`).
fn reduced_kernel(
    nodes: &[ValueId],
    f: &Program,
    args: Vec<ValueId>,
    func: usize,
) -> Result<Kernel, PlanError> {
    if f.stores.len() != nodes.len() {
        debug_assert!(
            false,
            "a loop of {} stores for {} reductions",
            f.stores.len(),
            nodes.len()
        );
        return Err(PlanError::Internal(format!(
            "a loop of {} stores feeds {} reductions",
            f.stores.len(),
            nodes.len()
        )));
    }
    Ok(Kernel::Reduced {
        nodes: nodes.to_vec(),
        func,
        args: args[..f.leaves.len()].to_vec(),
    })
}

/// The matrix product of matmul node `v`, writing `out` (`v` itself, or the update it
/// feeds), with transposed operands read through swapped strides.
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

/// When loop `f` (with arguments `args`) stores only `base − s·p` or `base − p·s`, with
/// `base` and `p` read linearly and `s` a scalar: `p` and the update.
fn product_update(f: &Program, args: &[ValueId]) -> Option<(ValueId, Update)> {
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
