//! The scheduler's own tests, on small graphs built by hand and a made-up target: no
//! code generator is involved.

use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Graph, InputKind, Op, Reduce, Unary, ValueId};

use crate::{Access, Expr, Fault, Kernel, Loc, PlanError, ReduceOnRead, Target, plan, verify};

/// A target like the CPU's: every dtype held as f32, four lanes, 64-byte alignment.
fn target() -> Target {
    Target {
        name: "test",
        storage: |_| DType::F32,
        align: 64,
        lanes: 4,
        scalar_unary: &[Unary::Log],
        scalar_binary: &[Binary::Pow],
        costly_unary: &[Unary::Exp, Unary::Log],
        costly_binary: &[Binary::Pow],
        max_binding: usize::MAX,
        max_bindings: usize::MAX,
        reduce_on_read: Some(ReduceOnRead {
            min_run: 16,
            max_merged: 4,
        }),
    }
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.push(
        Op::Input {
            name: name.into(),
            kind: InputKind::Data,
        },
        vec![],
        DType::F32,
        shape.to_vec(),
    )
}

fn un(g: &mut Graph, u: Unary, x: ValueId) -> ValueId {
    let shape = g.node(x).shape.clone();
    g.push(Op::Unary(u), vec![x], DType::F32, shape)
}

fn bin(g: &mut Graph, b: Binary, x: ValueId, y: ValueId) -> ValueId {
    let shape = g.node(x).shape.clone();
    g.push(Op::Binary(b), vec![x, y], DType::F32, shape)
}

fn fused(p: &crate::Plan) -> usize {
    p.kernels
        .iter()
        .filter(|k| matches!(k, Kernel::Fused { .. }))
        .count()
}

#[test]
fn reshapes_stop_gradients_and_unit_broadcasts_are_aliases() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[4, 8]);
    let r = g.push(Op::Reshape, vec![x], DType::F32, vec![32]);
    let s = g.push(Op::StopGradient, vec![r], DType::F32, vec![32]);
    let b = g.push(Op::Broadcast, vec![s], DType::F32, vec![1, 32]);
    let e = un(&mut g, Unary::Exp, b);
    g.outputs.push(("y".into(), e));
    let t = target();
    let p = plan(&g, &t).expect("plans");
    assert_eq!(p.root[b.index()], x);
    assert_eq!(p.kernels.len(), 1, "{:?}", p.kernels);
    assert_eq!(p.programs[0].leaves, vec![Access::Linear]);
    verify(&g, &p, &t).expect("verifies");
}

#[test]
fn casts_alias_only_between_dtypes_held_alike() {
    let mut g = Graph::default();
    let i = g.push(
        Op::Input {
            name: "labels".into(),
            kind: InputKind::Label,
        },
        vec![],
        DType::I32,
        vec![8],
    );
    let f = g.push(Op::Cast, vec![i], DType::F32, vec![8]);
    let y = un(&mut g, Unary::Neg, f);
    g.outputs.push(("y".into(), y));
    let cpu = target();
    assert_eq!(plan(&g, &cpu).expect("plans").root[f.index()], i);
    // A device holding integers as i32 converts: the cast is a loop's operation.
    let gpu = Target {
        storage: |d| if d.is_float() { DType::F32 } else { DType::I32 },
        ..target()
    };
    let p = plan(&g, &gpu).expect("plans");
    assert_eq!(p.root[f.index()], f);
    assert!(p.programs[0].exprs.contains(&Expr::Trunc(0)));
    verify(&g, &p, &gpu).expect("verifies");
}

#[test]
fn an_elementwise_chain_is_one_loop_storing_only_its_result() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[64]);
    let y = input(&mut g, "y", &[64]);
    let a = bin(&mut g, Binary::Mul, x, y);
    let b = un(&mut g, Unary::Exp, a);
    let c = bin(&mut g, Binary::Add, b, x);
    let d = un(&mut g, Unary::Relu, c);
    g.outputs.push(("out".into(), d));
    let t = target();
    let p = plan(&g, &t).expect("plans");
    assert_eq!(p.kernels.len(), 1);
    let Kernel::Fused { args, n, .. } = &p.kernels[0] else {
        panic!("{:?}", p.kernels[0]);
    };
    assert_eq!((args.as_slice(), *n), ([x, y, d].as_slice(), 64));
    assert_eq!(p.programs[0].stores.len(), 1);
    assert!(p.programs[0].vectorizes(&t));
    verify(&g, &p, &t).expect("verifies");
}

#[test]
fn a_costly_value_used_by_two_loops_is_stored_and_a_cheap_one_recomputed() {
    // u = x·2 is cheap and reads one stream: recomputed by both users' loops, which are
    // separate because each ends in an output. e = exp(x) is costly: stored once, by
    // the first of the two loops, which computes it and `a`; the second reads it.
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[64]);
    let two = g.push(Op::Const(2.0), vec![], DType::F32, vec![]);
    let two = g.push(Op::Broadcast, vec![two], DType::F32, vec![64]);
    let u = bin(&mut g, Binary::Mul, x, two);
    let e = un(&mut g, Unary::Exp, x);
    let a = bin(&mut g, Binary::Add, u, e);
    let b = bin(&mut g, Binary::Sub, u, e);
    g.outputs.push(("a".into(), a));
    g.outputs.push(("b".into(), b));
    let t = target();
    let p = plan(&g, &t).expect("plans");
    assert_eq!(fused(&p), 2, "{:#?}", p.kernels);
    assert!(p.loc[u.index()].is_none(), "u is recomputed, never stored");
    assert!(matches!(p.loc[e.index()], Some(Loc::Arena(_))));
    let loops: Vec<&Vec<ValueId>> = p
        .kernels
        .iter()
        .filter_map(|k| match k {
            Kernel::Fused { args, .. } => Some(args),
            _ => None,
        })
        .collect();
    assert_eq!(
        loops[0].as_slice(),
        [x, e, a].as_slice(),
        "x read; e and a stored"
    );
    assert!(
        loops[1].contains(&e) && loops[1].last() == Some(&b),
        "{:?}",
        loops[1]
    );
    verify(&g, &p, &t).expect("verifies");
}

#[test]
fn a_loop_reading_a_value_stored_by_a_later_placed_loop_runs_after_it() {
    // e = exp(x) is read by p (of the loop ending in q) and by a. The loop ending in a
    // (placed at a) is placed first and stores e too; on a target binding at most three
    // buffers the loop of q splits, and its first part (placed at p, before a) reads e:
    // it is moved after a's loop.
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[64]);
    let y = input(&mut g, "y", &[64]);
    let e = un(&mut g, Unary::Exp, x);
    let p = bin(&mut g, Binary::Mul, e, x);
    let a = bin(&mut g, Binary::Add, e, x);
    let r = bin(&mut g, Binary::Mul, y, y);
    let s = bin(&mut g, Binary::Sub, r, y);
    let q = bin(&mut g, Binary::Add, p, s);
    g.outputs.push(("a".into(), a));
    g.outputs.push(("q".into(), q));
    for max_bindings in [usize::MAX, 3] {
        let t = Target {
            max_bindings,
            ..target()
        };
        let plan = plan(&g, &t).expect("plans");
        let writes_e =
            |k: &Kernel| matches!(k, Kernel::Fused { args, .. } if args.ends_with(&[e, a]));
        let first = plan.kernels.iter().position(writes_e);
        assert_eq!(first, Some(0), "{:#?}", plan.kernels);
        verify(&g, &plan, &t).expect("verifies");
    }
}

#[test]
fn transposes_fold_into_products_and_updates_into_their_epilogue() {
    // w' = w − lr·(xᵀ @ dy): one product reading x transposed, accumulated into w.
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[8, 16]);
    let dy = input(&mut g, "dy", &[8, 4]);
    let w = input(&mut g, "w", &[16, 4]);
    let xt = g.push(
        Op::Transpose { perm: vec![1, 0] },
        vec![x],
        DType::F32,
        vec![16, 8],
    );
    let gw = g.push(Op::MatMul, vec![xt, dy], DType::F32, vec![16, 4]);
    let lr = input(&mut g, "lr", &[]);
    let lr = g.push(Op::Broadcast, vec![lr], DType::F32, vec![16, 4]);
    let step = bin(&mut g, Binary::Mul, lr, gw);
    let w2 = bin(&mut g, Binary::Sub, w, step);
    g.outputs.push(("state.w".into(), w2));
    let t = target();
    let p = plan(&g, &t).expect("plans");
    assert_eq!(p.kernels.len(), 1, "{:#?}", p.kernels);
    let Kernel::MatMul {
        a, ta, update, out, ..
    } = &p.kernels[0]
    else {
        panic!("{:?}", p.kernels[0]);
    };
    assert_eq!((*a, *ta, *out), (x, true, w2));
    assert_eq!(update.map(|u| u.base), Some(w));
    assert_eq!(p.in_place, vec![true], "written into w's buffer");
    assert_eq!(p.loc[w2.index()], Some(Loc::Input(2)));
    verify(&g, &p, &t).expect("verifies");
}

/// `sum(exp(x) * y)` over rows of 32: the loop runs inside the reduction, unstored.
fn sum_of_product(g: &mut Graph) -> ValueId {
    let x = input(g, "x", &[4, 32]);
    let y = input(g, "y", &[4, 32]);
    let e = un(g, Unary::Exp, x);
    let m = bin(g, Binary::Mul, e, y);
    let s = g.push(
        Op::Reduce {
            op: Reduce::Sum,
            axes: vec![1],
            keepdim: false,
        },
        vec![m],
        DType::F32,
        vec![4],
    );
    g.outputs.push(("s".into(), s));
    m
}

#[test]
fn reductions_read_loops_where_the_target_allows() {
    let mut g = Graph::default();
    let m = sum_of_product(&mut g);
    let t = target();
    let p = plan(&g, &t).expect("plans");
    assert!(matches!(p.kernels.as_slice(), [Kernel::Reduced { .. }]));
    assert!(p.loc[m.index()].is_none(), "the product is never stored");
    verify(&g, &p, &t).expect("verifies");
    let plain = Target {
        reduce_on_read: None,
        ..target()
    };
    let p = plan(&g, &plain).expect("plans");
    assert!(matches!(
        p.kernels.as_slice(),
        [Kernel::Fused { .. }, Kernel::Node { .. }]
    ));
    verify(&g, &p, &plain).expect("verifies");
}

#[test]
fn memory_is_reused_after_the_last_reader_and_aligned() {
    // A chain of five costly loops, each read by the next and by a transpose (which keeps
    // each stored): at most a few values are live at once.
    let mut g = Graph::default();
    let mut x = input(&mut g, "x", &[10, 10]);
    let mut outs = Vec::new();
    for _ in 0..5 {
        let e = un(&mut g, Unary::Exp, x);
        let tr = g.push(
            Op::Transpose { perm: vec![1, 0] },
            vec![e],
            DType::F32,
            vec![10, 10],
        );
        outs.push(tr);
        x = bin(&mut g, Binary::Add, e, tr);
    }
    g.outputs.push(("y".into(), x));
    let t = target();
    let p = plan(&g, &t).expect("plans");
    let region = 448; // 100 f32s rounded up to 64 bytes
    assert!(p.size.iter().all(|s| s % 64 == 0));
    assert!(
        p.arena <= 3 * region,
        "{} bytes for 15 values of {region}",
        p.arena
    );
    verify(&g, &p, &t).expect("verifies");
}

#[test]
fn values_larger_than_a_binding_are_refused() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[1024]);
    let e = un(&mut g, Unary::Exp, x);
    let tr = g.push(Op::Reshape, vec![e], DType::F32, vec![32, 32]);
    let s = g.push(
        Op::Transpose { perm: vec![1, 0] },
        vec![tr],
        DType::F32,
        vec![32, 32],
    );
    g.outputs.push(("y".into(), s));
    let small = Target {
        max_binding: 1024,
        max_bindings: usize::MAX,
        ..target()
    };
    assert!(matches!(
        plan(&g, &small),
        Err(PlanError::TooLarge { limit: 1024, .. })
    ));
}

#[test]
fn no_region_crosses_a_page() {
    // The chain of the test above, with pages of 640 bytes: a second 448-byte region
    // would cross into the next page, so it starts it.
    let mut g = Graph::default();
    let mut x = input(&mut g, "x", &[10, 10]);
    for _ in 0..5 {
        let e = un(&mut g, Unary::Exp, x);
        let tr = g.push(
            Op::Transpose { perm: vec![1, 0] },
            vec![e],
            DType::F32,
            vec![10, 10],
        );
        x = bin(&mut g, Binary::Add, e, tr);
    }
    g.outputs.push(("y".into(), x));
    let paged = Target {
        max_binding: 700,
        max_bindings: usize::MAX,
        ..target()
    };
    assert_eq!(paged.page(), 640);
    let mut p = plan(&g, &paged).expect("plans");
    verify(&g, &p, &paged).expect("verifies");
    let placed: Vec<(usize, usize)> = (0..g.nodes.len())
        .filter_map(|i| match p.loc[i] {
            Some(Loc::Arena(off)) => Some((off, p.size[i])),
            _ => None,
        })
        .collect();
    assert!(
        p.arena > paged.page(),
        "{} bytes: more than a page",
        p.arena
    );
    for (off, bytes) in &placed {
        assert_eq!(off / 640, (off + bytes - 1) / 640, "{off} + {bytes}");
    }
    // A region moved across a boundary is a fault.
    let v = (0..g.nodes.len())
        .find(|i| matches!(p.loc[*i], Some(Loc::Arena(_))))
        .expect("a stored value");
    p.loc[v] = Some(Loc::Arena(paged.page() - 64));
    let faults = verify(&g, &p, &paged).expect_err("crosses");
    assert!(
        faults
            .iter()
            .any(|f| matches!(f, Fault::CrossesPage { .. })),
        "{faults:?}"
    );
}

#[test]
fn the_verifier_finds_a_corrupted_offset() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[10, 10]);
    let e = un(&mut g, Unary::Exp, x);
    let transpose = |g: &mut Graph, v: ValueId| {
        g.push(
            Op::Transpose { perm: vec![1, 0] },
            vec![v],
            DType::F32,
            vec![10, 10],
        )
    };
    let te = transpose(&mut g, e);
    let tx = transpose(&mut g, x);
    let y = bin(&mut g, Binary::Add, te, tx);
    g.outputs.push(("y".into(), y));
    let t = target();
    let mut p = plan(&g, &t).expect("plans");
    verify(&g, &p, &t).expect("verifies");
    // Both transposes are live when the sum runs: give the second the first's bytes.
    let (Some(Loc::Arena(a)), Some(Loc::Arena(b))) = (p.loc[te.index()], p.loc[tx.index()]) else {
        panic!("both stored: {:?}", p.loc);
    };
    assert_ne!(a, b);
    p.loc[tx.index()] = Some(Loc::Arena(a));
    let faults = verify(&g, &p, &t).expect_err("an overlap");
    assert!(
        faults.iter().any(|f| matches!(f, Fault::Overlap { .. })),
        "{faults:?}"
    );
    // Past the arena's end.
    p.loc[tx.index()] = Some(Loc::Arena(p.arena));
    let faults = verify(&g, &p, &t).expect_err("out of the arena");
    assert!(faults.iter().any(|f| matches!(f, Fault::Region { .. })));
}

#[test]
fn the_verifier_finds_reads_before_writes_and_unwritten_outputs() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[10, 10]);
    let e = un(&mut g, Unary::Exp, x);
    let te = g.push(
        Op::Transpose { perm: vec![1, 0] },
        vec![e],
        DType::F32,
        vec![10, 10],
    );
    g.outputs.push(("y".into(), te));
    let t = target();
    let p = plan(&g, &t).expect("plans");
    let mut swapped = p.clone();
    swapped.kernels.reverse();
    let faults = verify(&g, &swapped, &t).expect_err("out of order");
    assert!(
        faults
            .iter()
            .any(|f| matches!(f, Fault::ReadBeforeWrite { .. }))
    );
    let mut dropped = p.clone();
    dropped.kernels.pop();
    let faults = verify(&g, &dropped, &t).expect_err("no transpose");
    assert!(
        faults
            .iter()
            .any(|f| matches!(f, Fault::OutputNotWritten { .. }))
    );
}

/// A loop binding more buffers than the target allows is split in member order: each
/// part binds at most the limit, the first stores what the second reads, and the plan
/// verifies. One op that alone binds too many is an error.
#[test]
fn loops_binding_too_many_buffers_are_split() {
    let mut g = Graph::default();
    let xs: Vec<ValueId> = (0..6)
        .map(|k| input(&mut g, &format!("x{k}"), &[16]))
        .collect();
    let mut acc = xs[0];
    for x in &xs[1..] {
        acc = bin(&mut g, Binary::Mul, acc, *x);
    }
    g.outputs.push(("y".into(), acc));
    let mut t = target();
    let whole = plan(&g, &t).expect("plans");
    assert_eq!(fused(&whole), 1);
    assert_eq!(
        whole.programs[0].leaves.len() + whole.programs[0].stores.len(),
        7
    );
    t.max_bindings = 4;
    let p = plan(&g, &t).expect("plans");
    assert!(fused(&p) >= 2, "{:?}", p.kernels);
    for f in &p.programs {
        assert!(f.leaves.len() + f.stores.len() <= 4, "{f:?}");
    }
    // The parts together still compute every product once, and the last stores `y`.
    let ops: usize = p
        .programs
        .iter()
        .map(|f| {
            f.exprs
                .iter()
                .filter(|e| matches!(e, Expr::Binary(..)))
                .count()
        })
        .sum();
    assert_eq!(ops, 5);
    verify(&g, &p, &t).expect("verifies");
    // A value written by two kernels is a fault.
    let mut twice = p.clone();
    twice.kernels.push(p.kernels[0].clone());
    let faults = verify(&g, &twice, &t).expect_err("two writers");
    assert!(
        faults
            .iter()
            .any(|f| f.to_string().contains("written again")),
        "{faults:?}"
    );
    t.max_bindings = 2;
    let err = plan(&g, &t).expect_err("one product binds 3");
    assert!(
        err.to_string()
            .contains("binds 3 buffers, and test allows 2"),
        "{err}"
    );
}
