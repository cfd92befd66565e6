//! Shape rules for the primitives whose result shape a signature cannot say: matmul with
//! batch dims, reductions over chosen axes, reshape, permute, concat, broadcasting
//! elementwise functions. Every other primitive is declared with its shape in
//! `std/core.net` and checked by signature matching, like any function.

use super::dim::{Dim, DimError};
use super::eval::{ArgV, Cx, Env};
use super::ty::{DType, ShapeFmt, Ty, shape_str};
use crate::diag::Diagnostic;
use crate::ir::{Binary, Op, Unary, Window};
use crate::span::Span;
use crate::syntax::ast::Param;

/// The result of primitive `name`, or `None` when its declared signature decides.
pub(super) fn apply(
    cx: &mut Cx,
    name: &str,
    params: &[Param],
    bound: &[Option<ArgV>],
    span: Span,
    env: &Env,
) -> Option<Ty> {
    let arg = |n: &str| -> Option<&ArgV> {
        params
            .iter()
            .position(|p| p.name.name == n)
            .and_then(|i| bound.get(i))
            .and_then(|a| a.as_ref())
    };
    if bound.iter().flatten().any(|a| a.ty.is_err()) {
        return Some(Ty::Err);
    }
    // Unary primitives are named like their ops (the op table's names).
    if let Some(u) = Unary::from_name(name) {
        return match arg("x").map(|a| &a.ty) {
            Some(t @ (Ty::Int(_) | Ty::Float(_))) => {
                Some(Ty::Float(t.scalar().map(|x| crate::interp::unary(u, x))))
            }
            _ => None,
        };
    }
    // Two host numbers: f64 arithmetic, as host code computes it.
    if let (
        "maximum" | "minimum" | "pow",
        Some(a @ (Ty::Int(_) | Ty::Float(_))),
        Some(b @ (Ty::Int(_) | Ty::Float(_))),
    ) = (name, arg("a").map(|a| &a.ty), arg("b").map(|a| &a.ty))
    {
        return Some(Ty::Float(a.scalar().zip(b.scalar()).map(
            |(a, b)| match name {
                "maximum" => a.max(b),
                "minimum" => a.min(b),
                _ => a.powf(b),
            },
        )));
    }
    if !SHAPED.contains(&name) {
        return None;
    }
    Some(shaped(cx, name, &arg, span, env).unwrap_or(Ty::Err))
}

/// The primitives whose result shape is computed here.
const SHAPED: &[&str] = &[
    "sum",
    "mean",
    "max",
    "min",
    "argmax",
    "argmin",
    "logsumexp",
    "reshape",
    "permute",
    "transpose",
    "concat",
    "broadcast_to",
    "maximum",
    "minimum",
    "pow",
    "select",
    "slice",
    "pad",
    "expand",
    "sum_to",
    "invert",
    "concat2",
];

fn shaped<'b>(
    cx: &mut Cx,
    name: &str,
    arg: &dyn Fn(&str) -> Option<&'b ArgV>,
    span: Span,
    env: &Env,
) -> Option<Ty> {
    let x = arg("x");
    // `max(a, b)` and `min(a, b)` of ints are compile-time arithmetic.
    if let ("max" | "min", Some(Ty::Int(a)), Some(Ty::Int(b))) =
        (name, x.map(|a| &a.ty), arg("axis").map(|a| &a.ty))
    {
        let v = match (
            a.as_ref().and_then(Dim::as_const),
            b.as_ref().and_then(Dim::as_const),
        ) {
            (Some(a), Some(b)) => Some(Dim::konst(if name == "max" { a.max(b) } else { a.min(b) })),
            // Symbolic in a generic check: keep it as an opaque dim of its own.
            (..) => match (a, b) {
                (Some(a), Some(b)) => Some(Dim::sym(&format!("{name}({a}, {b})"))),
                _ => None,
            },
        };
        return Some(Ty::Int(v));
    }
    Some(match name {
        "sum" | "mean" | "max" | "min" | "argmax" | "argmin" | "logsumexp" => {
            let x = x?;
            let (dt, dims, xv) = tensor(cx, x, name)?;
            let keep = matches!(arg("keepdim").map(|a| &a.ty), Some(Ty::Bool(Some(true))));
            let axes = match arg("axis") {
                Some(a) => axes_of(cx, a, dims.len())?,
                None => (0..dims.len()).collect(),
            };
            let mut out = Vec::new();
            for (i, d) in dims.iter().enumerate() {
                if !axes.contains(&i) {
                    out.push(d.clone());
                } else if keep {
                    out.push(Dim::konst(1));
                }
            }
            let v = match name {
                "argmax" => cx.emit_argmax(xv, &axes, keep, &out),
                "argmin" => {
                    cx.lower_fail("`argmin` cannot be lowered yet");
                    None
                }
                _ => cx.emit_reduce(name, xv, dt, &dims, &axes, keep, &out),
            };
            let dt = if name.starts_with("arg") {
                DType::I32
            } else {
                dt
            };
            Ty::Tensor(dt, out, v)
        }
        "reshape" => {
            let x = x?;
            let (dt, dims, xv) = tensor(cx, x, name)?;
            let shape = arg("shape")?;
            let want = int_list(cx, shape)?;
            match reshape(cx, dt, &dims, want, x.span, shape.span, span, env)? {
                Ty::Tensor(dt, d, _) => {
                    let v = cx.emit(Op::Reshape, &[xv], dt, &d);
                    Ty::Tensor(dt, d, v)
                }
                other => other,
            }
        }
        "permute" => {
            let x = x?;
            let (dt, dims, xv) = tensor(cx, x, name)?;
            let a = arg("axes")?;
            let axes = int_list(cx, a)?;
            let mut idx = Vec::new();
            for d in &axes {
                let Some(n) = d.as_const() else {
                    return Some(bad(
                        cx,
                        "E0310",
                        "`permute` needs known axes".into(),
                        a.span,
                    ));
                };
                idx.push(n);
            }
            let mut sorted = idx.clone();
            sorted.sort();
            if sorted != (0..dims.len() as i64).collect::<Vec<_>>() {
                let d = Diagnostic::error(
                    "E0307",
                    format!(
                        "`permute` needs a permutation of the {} axes 0..{}, got {:?}",
                        dims.len(),
                        dims.len(),
                        idx
                    ),
                )
                .primary(a.span, "not a permutation")
                .secondary(x.span, format!("this is {}", ShapeFmt(dt, &dims)));
                cx.report(d);
                return Some(Ty::Err);
            }
            let out: Vec<Dim> = idx.iter().map(|i| dims[*i as usize].clone()).collect();
            let v = cx.emit(
                Op::Transpose {
                    perm: idx.iter().map(|i| *i as usize).collect(),
                },
                &[xv],
                dt,
                &out,
            );
            Ty::Tensor(dt, out, v)
        }
        "transpose" => {
            let x = x?;
            let (dt, mut dims, xv) = tensor(cx, x, name)?;
            let a = axis_of(cx, arg("a")?, dims.len())?;
            let b = axis_of(cx, arg("b")?, dims.len())?;
            dims.swap(a, b);
            let mut perm: Vec<usize> = (0..dims.len()).collect();
            perm.swap(a, b);
            let v = cx.emit(Op::Transpose { perm }, &[xv], dt, &dims);
            Ty::Tensor(dt, dims, v)
        }
        "concat" | "concat2" => {
            let pair;
            let xs = if name == "concat2" {
                let (a, b) = (arg("a")?, arg("b")?);
                pair = ArgV {
                    name: None,
                    ty: Ty::Items(vec![a.ty.clone(), b.ty.clone()]),
                    span: a.span,
                };
                &pair
            } else {
                arg("xs")?
            };
            let Ty::Items(items) = &xs.ty else {
                return Some(bad(
                    cx,
                    "E0201",
                    "`concat` takes a list of tensors `[a, b]`".into(),
                    xs.span,
                ));
            };
            let mut shapes = Vec::new();
            let mut vals = Vec::new();
            for t in items {
                match t {
                    Ty::Tensor(dt, d, v) => {
                        shapes.push((*dt, d.clone()));
                        vals.push(*v);
                    }
                    Ty::Err => return Some(Ty::Err),
                    _ => {
                        return Some(bad(
                            cx,
                            "E0201",
                            "`concat` takes a list of tensors".into(),
                            xs.span,
                        ));
                    }
                }
            }
            let Some((dt, first)) = shapes.first().cloned() else {
                return Some(bad(
                    cx,
                    "E0201",
                    "`concat` of an empty list".into(),
                    xs.span,
                ));
            };
            let axis = match arg("axis") {
                Some(a) => axis_of(cx, a, first.len())?,
                None => 0,
            };
            let mut total = Dim::konst(0);
            for (t, d) in &shapes {
                let same = *t == dt
                    && d.len() == first.len()
                    && d.iter()
                        .zip(&first)
                        .enumerate()
                        .all(|(i, (a, b))| i == axis || cx.dims_equal(a, b, env.strict));
                if !same {
                    let msg = format!(
                        "`concat` along axis {axis} needs equal other dims: {} and {}",
                        ShapeFmt(dt, &first),
                        ShapeFmt(*t, d)
                    );
                    return Some(bad(cx, "E0303", msg, xs.span));
                }
                let Some(t) = cx.arith(total.add(&d[axis]), xs.span, || {
                    format!("the concatenated length {total} + {}", d[axis])
                }) else {
                    return Some(Ty::Err);
                };
                total = t;
            }
            let mut out = first.clone();
            out[axis] = total;
            // The IR joins two at a time, each with its rule.
            let mut acc = vals.first().copied().flatten();
            let mut acc_dims = first;
            for (v, (_, d)) in vals.iter().zip(&shapes).skip(1) {
                // Partial sums of the total, which fit.
                acc_dims[axis] = acc_dims[axis].saturating_add(&d[axis]);
                acc = cx.emit(Op::Concat { axis }, &[acc, *v], dt, &acc_dims);
            }
            Ty::Tensor(dt, out, acc)
        }
        "broadcast_to" => {
            let x = x?;
            let (dt, dims, xv) = tensor(cx, x, name)?;
            let s = arg("shape")?;
            let want = int_list(cx, s)?;
            let got = cx.broadcast(&dims, &want, x.span, s.span, span, env.strict)?;
            if got.len() != want.len() || !cx.shapes_equal(&got, &want, env.strict) {
                let msg = format!(
                    "cannot broadcast {} to {}",
                    ShapeFmt(dt, &dims),
                    shape_str(&want)
                );
                return Some(bad(cx, "E0304", msg, span));
            }
            let v = cx.emit(Op::Broadcast, &[xv], dt, &want);
            Ty::Tensor(dt, want, v)
        }
        "slice" | "pad" => {
            let x = x?;
            let (dt, mut dims, xv) = tensor(cx, x, name)?;
            let axis = axis_of(cx, arg("axis")?, dims.len())?;
            let (a, b) = if name == "slice" {
                ("start", "end")
            } else {
                ("before", "after")
            };
            let (Some(p), Some(q)) = (
                arg(a).and_then(|t| t.ty.dim().cloned()),
                arg(b).and_then(|t| t.ty.dim().cloned()),
            ) else {
                return Some(Ty::Err);
            };
            let len = if name == "slice" {
                q.sub(&p)
            } else {
                dims[axis].add(&p).and_then(|d| d.add(&q))
            };
            let Some(len) = cx.arith(len, span, || format!("the `{name}`d length of axis {axis}"))
            else {
                return Some(Ty::Err);
            };
            dims[axis] = len;
            let v = match (p.as_const(), q.as_const()) {
                (Some(p), Some(q)) if name == "slice" => cx.emit(
                    Op::Slice {
                        axis,
                        start: p as usize,
                        end: q as usize,
                    },
                    &[xv],
                    dt,
                    &dims,
                ),
                (Some(p), Some(q)) => cx.emit(
                    Op::Pad {
                        axis,
                        before: p as usize,
                        after: q as usize,
                    },
                    &[xv],
                    dt,
                    &dims,
                ),
                _ => None,
            };
            Ty::Tensor(dt, dims, v)
        }
        "expand" | "sum_to" => {
            let dy = arg("dy")?;
            let like = arg("like")?;
            let (dt, from, v) = tensor(cx, dy, name)?;
            let (_, to, _) = tensor(cx, like, name)?;
            let v = if name == "expand" {
                let keep = matches!(arg("keepdim").map(|a| &a.ty), Some(Ty::Bool(Some(true))));
                let axes = match arg("axis") {
                    Some(a) if !matches!(a.ty, Ty::Any) => axes_of(cx, a, to.len())?,
                    _ => (0..to.len()).collect(),
                };
                let kept: Vec<Dim> = to
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        if axes.contains(&i) {
                            Dim::konst(1)
                        } else {
                            d.clone()
                        }
                    })
                    .collect();
                let r = if keep || kept == from {
                    v
                } else {
                    cx.emit(Op::Reshape, &[v], dt, &kept)
                };
                if kept == to {
                    r
                } else {
                    cx.emit(Op::Broadcast, &[r], dt, &to)
                }
            } else {
                // Sum the leading axes broadcasting added, then the 1-sized axes it stretched.
                let lead = from.len().saturating_sub(to.len());
                let mut axes: Vec<usize> = (0..lead).collect();
                for (i, d) in to.iter().enumerate() {
                    if *d == Dim::konst(1) && from[lead + i] != Dim::konst(1) {
                        axes.push(lead + i);
                    }
                }
                if axes.is_empty() {
                    if from == to {
                        v
                    } else {
                        cx.emit(Op::Reshape, &[v], dt, &to)
                    }
                } else {
                    let summed: Vec<Dim> = from
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i >= lead)
                        .map(|(i, d)| {
                            if axes.contains(&i) {
                                Dim::konst(1)
                            } else {
                                d.clone()
                            }
                        })
                        .collect();
                    let s = cx.emit(
                        Op::Reduce {
                            op: crate::ir::Reduce::Sum,
                            axes: axes.clone(),
                            keepdim: false,
                        },
                        &[v],
                        dt,
                        &summed
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !axes.contains(&(i + lead)))
                            .map(|(_, d)| d.clone())
                            .collect::<Vec<_>>(),
                    );
                    cx.emit(Op::Reshape, &[s], dt, &to)
                }
            };
            Ty::Tensor(dt, to, v)
        }
        "invert" => {
            let a = arg("axes")?;
            let axes = int_list(cx, a)?;
            let mut inv = vec![Ty::int(0); axes.len()];
            for (i, p) in axes.iter().enumerate() {
                let p = p.as_const()? as usize;
                *inv.get_mut(p)? = Ty::int(i as i64);
            }
            Ty::Items(inv)
        }
        "maximum" | "minimum" | "pow" => {
            let (a, b) = (arg("a")?, arg("b")?);
            let (dt, shape) = elementwise_shape(cx, &[a, b], span, env)?;
            let op = match name {
                "maximum" => Binary::Max,
                "minimum" => Binary::Min,
                _ => Binary::Pow,
            };
            let v = cx.emit_binary(op, &a.ty, &b.ty, dt, &shape);
            Ty::Tensor(dt, shape, v)
        }
        "select" => {
            let (c, a, b) = (arg("cond")?, arg("a")?, arg("b")?);
            if !matches!(c.ty, Ty::Tensor(DType::Bool, ..) | Ty::Bool(_)) {
                let shown = cx.show(&c.ty);
                return Some(bad(
                    cx,
                    "E0201",
                    format!("`select` needs a bool condition, found {shown}"),
                    c.span,
                ));
            }
            let (dt, shape) = elementwise_shape(cx, &[a, b], span, env)?;
            let (_, shape) = elementwise_shape(
                cx,
                &[
                    c,
                    &ArgV {
                        name: None,
                        ty: Ty::Tensor(dt, shape, None),
                        span,
                    },
                ],
                span,
                env,
            )?;
            let cv = cx.value_as(&c.ty, DType::Bool, &shape);
            let av = cx.value_as(&a.ty, dt, &shape);
            let bv = cx.value_as(&b.ty, dt, &shape);
            let v = cx.emit(Op::Select, &[cv, av, bv], dt, &shape);
            Ty::Tensor(dt, shape, v)
        }
        _ => return None,
    })
}

/// Multiply-adds of a signature-declared primitive, counted for `nabla info`.
pub(super) fn count_macs(
    name: &str,
    params: &[Param],
    bound: &[Option<ArgV>],
    out: &Ty,
) -> Option<Dim> {
    let arg = |n: &str| {
        params
            .iter()
            .position(|p| p.name.name == n)
            .and_then(|i| bound.get(i))
            .and_then(|a| a.as_ref())
    };
    match name {
        "conv2d" => {
            let Ty::Tensor(_, w, _) = &arg("w")?.ty else {
                return None;
            };
            let Ty::Tensor(_, o, _) = out else {
                return None;
            };
            let per_out: Dim = w
                .iter()
                .skip(1)
                .fold(Dim::konst(1), |a, d| a.saturating_mul(d));
            Some(o.iter().fold(per_out, |a, d| a.saturating_mul(d)))
        }
        _ => None,
    }
}

fn bad(cx: &mut Cx, code: &'static str, msg: String, span: Span) -> Ty {
    cx.report(Diagnostic::error(code, msg).primary(span, "here"));
    Ty::Err
}

/// The broadcast shape and element type of elementwise arguments (scalars count as f32
/// unless a tensor says otherwise).
fn elementwise_shape(
    cx: &mut Cx,
    args: &[&ArgV],
    span: Span,
    env: &Env,
) -> Option<(DType, Vec<Dim>)> {
    let mut dt = None;
    let mut shape: Vec<Dim> = vec![];
    let mut prev = span;
    for a in args {
        match &a.ty {
            Ty::Tensor(t, d, _) => {
                if *t != DType::Bool {
                    dt = Some(*t);
                }
                shape = cx.broadcast(&shape, d, prev, a.span, span, env.strict)?;
                prev = a.span;
            }
            Ty::Int(_) | Ty::Float(_) | Ty::Bool(_) => {}
            other => {
                let shown = cx.show(other);
                bad(
                    cx,
                    "E0201",
                    format!("expected a tensor or a number, found {shown}"),
                    a.span,
                );
                return None;
            }
        }
    }
    Some((dt.unwrap_or(DType::F32), shape))
}

fn tensor(cx: &mut Cx, a: &ArgV, name: &str) -> Option<(DType, Vec<Dim>, super::ty::Val)> {
    match &a.ty {
        Ty::Tensor(dt, d, v) => Some((*dt, d.clone(), *v)),
        Ty::Err => None,
        other => {
            let shown = cx.show(other);
            bad(
                cx,
                "E0201",
                format!("`{name}` needs a tensor, found {shown}"),
                a.span,
            );
            None
        }
    }
}

fn axis_of(cx: &mut Cx, a: &ArgV, rank: usize) -> Option<usize> {
    if matches!(a.ty, Ty::Any) {
        return None;
    }
    let Some(n) = a.ty.dim().and_then(Dim::as_const) else {
        bad(cx, "E0310", "an axis must be a known int".into(), a.span);
        return None;
    };
    let r = rank as i64;
    if n < -r || n >= r {
        bad(
            cx,
            "E0307",
            format!("axis {n} is out of range for a tensor of rank {rank}"),
            a.span,
        );
        return None;
    }
    Some(if n < 0 { (n + r) as usize } else { n as usize })
}

fn axes_of(cx: &mut Cx, a: &ArgV, rank: usize) -> Option<Vec<usize>> {
    match &a.ty {
        Ty::Items(items) => {
            let mut out = Vec::new();
            for t in items {
                let one = ArgV {
                    name: None,
                    ty: t.clone(),
                    span: a.span,
                };
                out.push(axis_of(cx, &one, rank)?);
            }
            Some(out)
        }
        _ => axis_of(cx, a, rank).map(|x| vec![x]),
    }
}

fn int_list(cx: &mut Cx, a: &ArgV) -> Option<Vec<Dim>> {
    let Ty::Items(items) = &a.ty else {
        // `any` is an attribute not known while checking a rule generically.
        if !a.ty.is_err() && !matches!(a.ty, Ty::Any) {
            bad(
                cx,
                "E0201",
                "expected a list of dims `[a, b, ...]`".into(),
                a.span,
            );
        }
        return None;
    };
    let mut out = Vec::new();
    for t in items {
        match t {
            Ty::Int(Some(d)) => out.push(d.clone()),
            Ty::Err => return None,
            _ => {
                bad(
                    cx,
                    "E0310",
                    "every dim of a shape must be a known int".into(),
                    a.span,
                );
                return None;
            }
        }
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn reshape(
    cx: &mut Cx,
    dt: DType,
    dims: &[Dim],
    mut want: Vec<Dim>,
    xs: Span,
    ss: Span,
    span: Span,
    env: &Env,
) -> Option<Ty> {
    fn product<'d>(mut ds: impl Iterator<Item = &'d Dim>) -> Result<Dim, DimError> {
        ds.try_fold(Dim::konst(1), |a, d| a.mul(d))
    }
    let total = cx.arith(product(dims.iter()), xs, || {
        format!("the element count of {}", ShapeFmt(dt, dims))
    })?;
    let minus = Dim::konst(-1);
    let holes = want.iter().filter(|d| **d == minus).count();
    if holes > 1 {
        return Some(bad(
            cx,
            "E0306",
            "`reshape` can infer at most one dim (-1)".into(),
            ss,
        ));
    }
    let known = cx.arith(product(want.iter().filter(|d| **d != minus)), ss, || {
        format!("the element count of {}", shape_str(&want))
    })?;
    if holes == 1 {
        let inferred = total.div(&known);
        let exact = total.rem(&known).is_ok_and(|r| r.as_const() == Some(0));
        match inferred {
            Ok(q)
                if exact
                    || !env.strict && total.rem(&known).is_ok_and(|r| r.as_const().is_none()) =>
            {
                for d in want.iter_mut() {
                    if *d == minus {
                        *d = q.clone();
                    }
                }
            }
            _ => {
                let d = Diagnostic::error("E0306", format!("cannot reshape {} ({total} elements) into {}: {known} does not divide {total}", ShapeFmt(dt, dims), shape_str(&want)))
                    .primary(ss, "this shape")
                    .secondary(xs, format!("this is {}", ShapeFmt(dt, dims)));
                cx.report(d);
                return Some(Ty::Err);
            }
        }
        return Some(Ty::Tensor(dt, want, None));
    }
    if !cx.dims_equal(&total, &known, env.strict) {
        let d = Diagnostic::error(
            "E0306",
            format!(
                "cannot reshape {} ({total} elements) into {} ({known} elements)",
                ShapeFmt(dt, dims),
                shape_str(&want)
            ),
        )
        .primary(span, "element counts differ")
        .secondary(xs, format!("this is {}", ShapeFmt(dt, dims)))
        .with_help("use -1 for one dim to have it inferred");
        cx.report(d);
        return Some(Ty::Err);
    }
    Some(Ty::Tensor(dt, want, None))
}

/// `a @ b` with numpy's rules: the last two axes multiply, leading axes broadcast.
pub(super) fn matmul(cx: &mut Cx, x: &Ty, y: &Ty, xs: Span, ys: Span, span: Span, env: &Env) -> Ty {
    let (Ty::Tensor(da, a, av), Ty::Tensor(db, b, bv)) = (x, y) else {
        let (l, r) = (cx.show(x), cx.show(y));
        return bad(
            cx,
            "E0311",
            format!("`@` multiplies tensors, found {l} @ {r}"),
            span,
        );
    };
    if da != db {
        return bad(
            cx,
            "E0302",
            format!("element types differ: {} @ {}", da.name(), db.name()),
            span,
        );
    }
    if a.is_empty() || b.is_empty() {
        return bad(
            cx,
            "E0311",
            "`@` needs tensors of rank 1 or more".into(),
            span,
        );
    }
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    if a2.len() == 1 {
        a2.insert(0, Dim::konst(1));
    }
    if b2.len() == 1 {
        b2.push(Dim::konst(1));
    }
    let (m, k1) = (&a2[a2.len() - 2], &a2[a2.len() - 1]);
    let (k2, n) = (&b2[b2.len() - 2], &b2[b2.len() - 1]);
    if !cx.dims_equal(k1, k2, env.strict) {
        let mut d = Diagnostic::error(
            "E0311",
            format!(
                "cannot multiply {} @ {}: inner dims {k1} and {k2} differ",
                ShapeFmt(*da, a),
                ShapeFmt(*db, b)
            ),
        )
        .primary(span, "in this product")
        .secondary(xs, format!("this is {}", ShapeFmt(*da, a)))
        .secondary(ys, format!("this is {}", ShapeFmt(*db, b)));
        let (bn, bk) = (&b2[b2.len() - 1], &b2[b2.len() - 2]);
        if cx.dims_equal(k1, bn, true) && !cx.dims_equal(k1, bk, true) {
            d = d.with_help("the right side looks transposed: use `.T`");
        }
        cx.report(d);
        return Ty::Err;
    }
    let Some(mut batch) = cx.broadcast(
        &a2[..a2.len() - 2],
        &b2[..b2.len() - 2],
        xs,
        ys,
        span,
        env.strict,
    ) else {
        return Ty::Err;
    };
    let macs = batch
        .iter()
        .fold(m.saturating_mul(k1).saturating_mul(n), |acc, d| {
            acc.saturating_mul(d)
        });
    cx.add_macs(macs);
    let v = if cx.lowering() && b2.len() == 2 && a2.len() > 2 {
        // `x @ W` with one matrix for every batch entry (a linear layer on [B, N, C]): one
        // product of all B·N rows. Broadcasting `W` instead would make the backward pass a
        // product per batch entry and a sum of B copies of `W`'s gradient.
        let rows = cx
            .concrete(&a2[..a2.len() - 1])
            .and_then(|d| i64::try_from(d.iter().product::<usize>()).ok());
        let rb = if b.len() == 1 {
            cx.emit(Op::Reshape, &[*bv], *db, &b2)
        } else {
            *bv
        };
        match rows {
            Some(rows) => {
                let flat = [Dim::konst(rows), k1.clone()];
                let fa = cx.emit(Op::Reshape, &[*av], *da, &flat);
                let mm = cx.emit(Op::MatMul, &[fa, rb], *da, &[Dim::konst(rows), n.clone()]);
                let mut out = batch.clone();
                out.push(m.clone());
                if b.len() > 1 {
                    out.push(n.clone());
                }
                cx.emit(Op::Reshape, &[mm], *da, &out)
            }
            None => None,
        }
    } else if cx.lowering() {
        // Make the broadcast explicit: both sides get the full batch dims.
        let mut sa = batch.clone();
        sa.extend([m.clone(), k1.clone()]);
        let mut sb = batch.clone();
        sb.extend([k2.clone(), n.clone()]);
        let mut so = batch.clone();
        so.extend([m.clone(), n.clone()]);
        let ra = if a.len() == 1 {
            cx.emit(Op::Reshape, &[*av], *da, &a2)
        } else {
            *av
        };
        let rb = if b.len() == 1 {
            cx.emit(Op::Reshape, &[*bv], *db, &b2)
        } else {
            *bv
        };
        let ea = cx.value_as(&Ty::Tensor(*da, a2.clone(), ra), *da, &sa);
        let eb = cx.value_as(&Ty::Tensor(*db, b2.clone(), rb), *db, &sb);
        let mm = cx.emit(Op::MatMul, &[ea, eb], *da, &so);
        let mut out = batch.clone();
        if a.len() > 1 {
            out.push(m.clone());
        }
        if b.len() > 1 {
            out.push(n.clone());
        }
        if out == so {
            mm
        } else {
            cx.emit(Op::Reshape, &[mm], *da, &out)
        }
    } else {
        None
    };
    if a.len() > 1 {
        batch.push(m.clone());
    }
    if b.len() > 1 {
        batch.push(n.clone());
    }
    Ty::Tensor(*da, batch, v)
}

/// Lowers a primitive whose shape its signature states (`exp`, `conv2d`, ...). `attr`
/// gives the value of each non-tensor parameter (given or defaulted).
pub(super) fn lower_extern(
    cx: &mut Cx,
    name: &str,
    params: &[Param],
    bound: &[Option<ArgV>],
    attr: &dyn Fn(&str) -> Option<Ty>,
    out: &Ty,
) -> super::ty::Val {
    if !cx.lowering() {
        return None;
    }
    let Ty::Tensor(dt, dims, _) = out else {
        return None;
    };
    let (dt, dims) = (*dt, dims.clone());
    let val = |n: &str| -> super::ty::Val {
        let i = params.iter().position(|p| p.name.name == n)?;
        match bound.get(i)?.as_ref()?.ty {
            Ty::Tensor(_, _, v) => v,
            _ => None,
        }
    };
    let int = |n: &str| attr(n).and_then(|t| t.scalar()).map(|x| x as usize);
    let shape_of = |n: &str| -> Option<Vec<Dim>> {
        let i = params.iter().position(|p| p.name.name == n)?;
        match &bound.get(i)?.as_ref()?.ty {
            Ty::Tensor(_, d, _) => Some(d.clone()),
            _ => None,
        }
    };
    let window = |k: Option<usize>| -> Option<Window> {
        Some(Window {
            kernel: k?,
            stride: int("stride").unwrap_or(1),
            pad: int("pad").unwrap_or(0),
            dilation: int("dilation").unwrap_or(1),
            groups: int("groups").unwrap_or(1),
        })
    };
    // Elementwise primitives are named like their ops (`exp`, `add`, ...); maximum,
    // minimum and pow broadcast and are lowered with the shaped primitives.
    if let Some(u) = Unary::from_name(name) {
        return cx.emit(Op::Unary(u), &[val("x")], dt, &dims);
    }
    if let Some(b) = Binary::from_name(name) {
        return cx.emit(Op::Binary(b), &[val("a"), val("b")], dt, &dims);
    }
    let kernel_of = |n: &str, axis: usize| {
        shape_of(n)
            .and_then(|s| s.get(axis).and_then(Dim::as_const))
            .map(|k| k as usize)
    };
    match name {
        "stop_gradient" => cx.emit(Op::StopGradient, &[val("x")], dt, &dims),
        "to_f32" => cx.emit(Op::Cast, &[val("x")], dt, &dims),
        "matmul" => cx.emit(Op::MatMul, &[val("a"), val("b")], dt, &dims),
        "one_hot" => {
            let classes = int("n")?;
            cx.emit(Op::OneHot { classes }, &[val("y")], dt, &dims)
        }
        "gather" => cx.emit(Op::Gather, &[val("table"), val("idx")], dt, &dims),
        "conv2d" => {
            let w = window(kernel_of("w", 2))?;
            cx.emit(Op::Conv2d(w), &[val("x"), val("w")], dt, &dims)
        }
        "conv2d_input_grad" => {
            let w = window(kernel_of("w", 2))?;
            cx.emit(Op::Conv2dInputGrad(w), &[val("dy"), val("w")], dt, &dims)
        }
        "conv2d_weight_grad" => {
            let w = window(kernel_of("like", 2))?;
            cx.emit(Op::Conv2dWeightGrad(w), &[val("x"), val("dy")], dt, &dims)
        }
        "max_pool2d" => cx.emit(Op::MaxPool2d(window(int("k"))?), &[val("x")], dt, &dims),
        "avg_pool2d" => cx.emit(Op::AvgPool2d(window(int("k"))?), &[val("x")], dt, &dims),
        "max_pool2d_grad" => cx.emit(
            Op::MaxPool2dGrad(window(int("k"))?),
            &[val("x"), val("dy")],
            dt,
            &dims,
        ),
        "avg_pool2d_grad" => cx.emit(
            Op::AvgPool2dGrad(window(int("k"))?),
            &[val("dy")],
            dt,
            &dims,
        ),
        "softmax" | "log_softmax" => {
            // Composites of primitives, stabilized by the (gradient-free) maximum.
            let n = dims.len() as i64;
            let axis = attr("axis")
                .and_then(|t| t.scalar())
                .map(|a| a as i64)
                .unwrap_or(-1);
            let axis = if axis < 0 { axis + n } else { axis } as usize;
            let x = val("x");
            let kept: Vec<Dim> = dims
                .iter()
                .enumerate()
                .map(|(i, d)| if i == axis { Dim::konst(1) } else { d.clone() })
                .collect();
            let m = cx.emit(
                Op::Reduce {
                    op: crate::ir::Reduce::Max,
                    axes: vec![axis],
                    keepdim: true,
                },
                &[x],
                dt,
                &kept,
            );
            let m = cx.emit(Op::StopGradient, &[m], dt, &kept);
            let mb = cx.emit(Op::Broadcast, &[m], dt, &dims);
            let z = cx.emit(Op::Binary(Binary::Sub), &[x, mb], dt, &dims);
            let e = cx.emit(Op::Unary(Unary::Exp), &[z], dt, &dims);
            let s = cx.emit(
                Op::Reduce {
                    op: crate::ir::Reduce::Sum,
                    axes: vec![axis],
                    keepdim: true,
                },
                &[e],
                dt,
                &kept,
            );
            if name == "softmax" {
                let sb = cx.emit(Op::Broadcast, &[s], dt, &dims);
                cx.emit(Op::Binary(Binary::Div), &[e, sb], dt, &dims)
            } else {
                let l = cx.emit(Op::Unary(Unary::Log), &[s], dt, &kept);
                let lb = cx.emit(Op::Broadcast, &[l], dt, &dims);
                cx.emit(Op::Binary(Binary::Sub), &[z, lb], dt, &dims)
            }
        }
        "dropout" => {
            // keep = u >= p; y = keep ? x / (1 - p) : 0, with u from the counter-based RNG.
            let p = attr("p").and_then(|t| t.scalar())?;
            if !cx.dropout() {
                return val("x");
            }
            let seed = cx.next_seed();
            let u = cx.emit(Op::RandomUniform { seed }, &[], dt, &dims);
            let pv = cx.constant(p, dt, &dims);
            let keep = cx.emit(
                Op::Compare(crate::ir::Compare::Ge),
                &[u, pv],
                DType::Bool,
                &dims,
            );
            let scale = cx.constant(1.0 / (1.0 - p), dt, &dims);
            let scaled = cx.emit(Op::Binary(Binary::Mul), &[val("x"), scale], dt, &dims);
            let zero = cx.constant(0.0, dt, &dims);
            cx.emit(Op::Select, &[keep, scaled, zero], dt, &dims)
        }
        _ => {
            cx.lower_fail(format!("the primitive `{name}` cannot be lowered yet"));
            None
        }
    }
}
