//! Shape rules for the primitives whose result shape a signature cannot say: matmul with
//! batch dims, reductions over chosen axes, reshape, permute, concat, broadcasting
//! elementwise functions. Every other primitive is declared with its shape in
//! `std/core.net` and checked by signature matching, like any function.

use super::dim::Dim;
use super::eval::{ArgV, Cx, Env};
use super::ty::{shape_str, DType, ShapeFmt, Ty};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::Param;

const UNARY: &[&str] = &["exp", "log", "tanh", "sigmoid", "relu", "sqrt", "rsqrt", "abs", "erf", "sin", "cos", "neg", "sign"];

/// The result of primitive `name`, or `None` when its declared signature decides.
pub(super) fn apply(cx: &mut Cx, name: &str, params: &[Param], bound: &[Option<ArgV>], span: Span, env: &Env) -> Option<Ty> {
    let arg = |n: &str| -> Option<&ArgV> {
        params.iter().position(|p| p.name.name == n).and_then(|i| bound.get(i)).and_then(|a| a.as_ref())
    };
    if bound.iter().flatten().any(|a| a.ty.is_err()) {
        return Some(Ty::Err);
    }
    if UNARY.contains(&name) {
        return match arg("x").map(|a| &a.ty) {
            Some(Ty::Int(_) | Ty::Float) => Some(Ty::Float),
            _ => None,
        };
    }
    if !SHAPED.contains(&name) {
        return None;
    }
    Some(shaped(cx, name, &arg, span, env).unwrap_or(Ty::Err))
}

/// The primitives whose result shape is computed here.
const SHAPED: &[&str] = &[
    "sum", "mean", "max", "min", "argmax", "argmin", "logsumexp", "reshape", "permute", "transpose", "concat",
    "broadcast_to", "maximum", "minimum", "pow", "select",
];

fn shaped<'b>(cx: &mut Cx, name: &str, arg: &dyn Fn(&str) -> Option<&'b ArgV>, span: Span, env: &Env) -> Option<Ty> {
    let x = arg("x");
    // `max(a, b)` and `min(a, b)` of ints are compile-time arithmetic.
    if let ("max" | "min", Some(Ty::Int(a)), Some(Ty::Int(b))) = (name, x.map(|a| &a.ty), arg("axis").map(|a| &a.ty)) {
        let v = match (a.as_ref().and_then(Dim::as_const), b.as_ref().and_then(Dim::as_const)) {
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
            let (dt, dims) = tensor(cx, x, name)?;
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
            let dt = if name.starts_with("arg") { DType::I32 } else { dt };
            Ty::Tensor(dt, out)
        }
        "reshape" => {
            let x = x?;
            let (dt, dims) = tensor(cx, x, name)?;
            let shape = arg("shape")?;
            let want = int_list(cx, shape)?;
            reshape(cx, dt, &dims, want, x.span, shape.span, span, env)?
        }
        "permute" => {
            let x = x?;
            let (dt, dims) = tensor(cx, x, name)?;
            let a = arg("axes")?;
            let axes = int_list(cx, a)?;
            let mut idx = Vec::new();
            for d in &axes {
                let Some(n) = d.as_const() else {
                    return Some(bad(cx, "E0310", "`permute` needs known axes".into(), a.span));
                };
                idx.push(n);
            }
            let mut sorted = idx.clone();
            sorted.sort();
            if sorted != (0..dims.len() as i64).collect::<Vec<_>>() {
                let d = Diagnostic::error("E0307", format!("`permute` needs a permutation of the {} axes 0..{}, got {:?}", dims.len(), dims.len(), idx))
                    .primary(a.span, "not a permutation")
                    .secondary(x.span, format!("this is {}", ShapeFmt(dt, &dims)));
                cx.report(d);
                return Some(Ty::Err);
            }
            Ty::Tensor(dt, idx.iter().map(|i| dims[*i as usize].clone()).collect())
        }
        "transpose" => {
            let x = x?;
            let (dt, mut dims) = tensor(cx, x, name)?;
            let a = axis_of(cx, arg("a")?, dims.len())?;
            let b = axis_of(cx, arg("b")?, dims.len())?;
            dims.swap(a, b);
            Ty::Tensor(dt, dims)
        }
        "concat" => {
            let xs = arg("xs")?;
            let Ty::Items(items) = &xs.ty else {
                return Some(bad(cx, "E0201", "`concat` takes a list of tensors `[a, b]`".into(), xs.span));
            };
            let mut shapes = Vec::new();
            for t in items {
                match t {
                    Ty::Tensor(dt, d) => shapes.push((*dt, d.clone())),
                    Ty::Err => return Some(Ty::Err),
                    _ => return Some(bad(cx, "E0201", "`concat` takes a list of tensors".into(), xs.span)),
                }
            }
            let Some((dt, first)) = shapes.first().cloned() else {
                return Some(bad(cx, "E0201", "`concat` of an empty list".into(), xs.span));
            };
            let axis = match arg("axis") {
                Some(a) => axis_of(cx, a, first.len())?,
                None => 0,
            };
            let mut total = Dim::konst(0);
            for (t, d) in &shapes {
                let same = *t == dt && d.len() == first.len()
                    && d.iter().zip(&first).enumerate().all(|(i, (a, b))| i == axis || cx.dims_equal(a, b, env.strict));
                if !same {
                    let msg = format!("`concat` along axis {axis} needs equal other dims: {} and {}", ShapeFmt(dt, &first), ShapeFmt(*t, d));
                    return Some(bad(cx, "E0303", msg, xs.span));
                }
                total = total.add(&d[axis]);
            }
            let mut out = first;
            out[axis] = total;
            Ty::Tensor(dt, out)
        }
        "broadcast_to" => {
            let x = x?;
            let (dt, dims) = tensor(cx, x, name)?;
            let s = arg("shape")?;
            let want = int_list(cx, s)?;
            let got = cx.broadcast(&dims, &want, x.span, s.span, span, env.strict)?;
            if got.len() != want.len() || !cx.shapes_equal(&got, &want, env.strict) {
                let msg = format!("cannot broadcast {} to {}", ShapeFmt(dt, &dims), shape_str(&want));
                return Some(bad(cx, "E0304", msg, span));
            }
            Ty::Tensor(dt, want)
        }
        "maximum" | "minimum" | "pow" => {
            let (a, b) = (arg("a")?, arg("b")?);
            cx.binary(crate::syntax::ast::BinOp::Add, &a.ty, &b.ty, a.span, b.span, span, env)
        }
        "select" => {
            let (c, a, b) = (arg("cond")?, arg("a")?, arg("b")?);
            let v = cx.binary(crate::syntax::ast::BinOp::Add, &a.ty, &b.ty, a.span, b.span, span, env);
            match (&c.ty, v) {
                (Ty::Tensor(DType::Bool, cd), Ty::Tensor(dt, vd)) => Ty::Tensor(dt, cx.broadcast(cd, &vd, c.span, a.span, span, env.strict)?),
                (Ty::Tensor(DType::Bool, cd), Ty::Int(_) | Ty::Float) => Ty::Tensor(DType::F32, cd.clone()),
                (Ty::Bool(_), v) => v,
                (other, _) => {
                    let shown = cx.show(other);
                    return Some(bad(cx, "E0201", format!("`select` needs a bool condition, found {shown}"), c.span));
                }
            }
        }
        _ => return None,
    })
}

/// Multiply-adds of a signature-declared primitive, counted for `nabla info`.
pub(super) fn count_macs(name: &str, params: &[Param], bound: &[Option<ArgV>], out: &Ty) -> Option<Dim> {
    let arg = |n: &str| params.iter().position(|p| p.name.name == n).and_then(|i| bound.get(i)).and_then(|a| a.as_ref());
    match name {
        "conv2d" => {
            let Ty::Tensor(_, w) = &arg("w")?.ty else { return None };
            let Ty::Tensor(_, o) = out else { return None };
            let per_out: Dim = w.iter().skip(1).fold(Dim::konst(1), |a, d| a.mul(d));
            Some(o.iter().fold(per_out, |a, d| a.mul(d)))
        }
        _ => None,
    }
}

fn bad(cx: &mut Cx, code: &'static str, msg: String, span: Span) -> Ty {
    cx.report(Diagnostic::error(code, msg).primary(span, "here"));
    Ty::Err
}

fn tensor(cx: &mut Cx, a: &ArgV, name: &str) -> Option<(DType, Vec<Dim>)> {
    match &a.ty {
        Ty::Tensor(dt, d) => Some((*dt, d.clone())),
        Ty::Err => None,
        other => {
            let shown = cx.show(other);
            bad(cx, "E0201", format!("`{name}` needs a tensor, found {shown}"), a.span);
            None
        }
    }
}

fn axis_of(cx: &mut Cx, a: &ArgV, rank: usize) -> Option<usize> {
    let Some(n) = a.ty.dim().and_then(Dim::as_const) else {
        bad(cx, "E0310", "an axis must be a known int".into(), a.span);
        return None;
    };
    let r = rank as i64;
    if n < -r || n >= r {
        bad(cx, "E0307", format!("axis {n} is out of range for a tensor of rank {rank}"), a.span);
        return None;
    }
    Some(if n < 0 { (n + r) as usize } else { n as usize })
}

fn axes_of(cx: &mut Cx, a: &ArgV, rank: usize) -> Option<Vec<usize>> {
    match &a.ty {
        Ty::Items(items) => {
            let mut out = Vec::new();
            for t in items {
                let one = ArgV { name: None, ty: t.clone(), span: a.span };
                out.push(axis_of(cx, &one, rank)?);
            }
            Some(out)
        }
        _ => axis_of(cx, a, rank).map(|x| vec![x]),
    }
}

fn int_list(cx: &mut Cx, a: &ArgV) -> Option<Vec<Dim>> {
    let Ty::Items(items) = &a.ty else {
        if !a.ty.is_err() {
            bad(cx, "E0201", "expected a list of dims `[a, b, ...]`".into(), a.span);
        }
        return None;
    };
    let mut out = Vec::new();
    for t in items {
        match t {
            Ty::Int(Some(d)) => out.push(d.clone()),
            Ty::Err => return None,
            _ => {
                bad(cx, "E0310", "every dim of a shape must be a known int".into(), a.span);
                return None;
            }
        }
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn reshape(cx: &mut Cx, dt: DType, dims: &[Dim], mut want: Vec<Dim>, xs: Span, ss: Span, span: Span, env: &Env) -> Option<Ty> {
    let total = dims.iter().fold(Dim::konst(1), |a, d| a.mul(d));
    let minus = Dim::konst(-1);
    let holes = want.iter().filter(|d| **d == minus).count();
    if holes > 1 {
        return Some(bad(cx, "E0306", "`reshape` can infer at most one dim (-1)".into(), ss));
    }
    let known = want.iter().filter(|d| **d != minus).fold(Dim::konst(1), |a, d| a.mul(d));
    if holes == 1 {
        let inferred = total.div(&known);
        let exact = total.rem(&known).is_some_and(|r| r.as_const() == Some(0));
        match inferred {
            Some(q) if exact || !env.strict && total.rem(&known).is_some_and(|r| r.as_const().is_none()) => {
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
        return Some(Ty::Tensor(dt, want));
    }
    if !cx.dims_equal(&total, &known, env.strict) {
        let d = Diagnostic::error("E0306", format!("cannot reshape {} ({total} elements) into {} ({known} elements)", ShapeFmt(dt, dims), shape_str(&want)))
            .primary(span, "element counts differ")
            .secondary(xs, format!("this is {}", ShapeFmt(dt, dims)))
            .with_help("use -1 for one dim to have it inferred");
        cx.report(d);
        return Some(Ty::Err);
    }
    Some(Ty::Tensor(dt, want))
}

/// `a @ b` with numpy's rules: the last two axes multiply, leading axes broadcast.
pub(super) fn matmul(cx: &mut Cx, x: &Ty, y: &Ty, xs: Span, ys: Span, span: Span, env: &Env) -> Ty {
    let (Ty::Tensor(da, a), Ty::Tensor(db, b)) = (x, y) else {
        let (l, r) = (cx.show(x), cx.show(y));
        return bad(cx, "E0311", format!("`@` multiplies tensors, found {l} @ {r}"), span);
    };
    if da != db {
        return bad(cx, "E0302", format!("element types differ: {} @ {}", da.name(), db.name()), span);
    }
    if a.is_empty() || b.is_empty() {
        return bad(cx, "E0311", "`@` needs tensors of rank 1 or more".into(), span);
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
        let mut d = Diagnostic::error("E0311", format!("cannot multiply {} @ {}: inner dims {k1} and {k2} differ", ShapeFmt(*da, a), ShapeFmt(*db, b)))
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
    let Some(mut batch) = cx.broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2], xs, ys, span, env.strict) else { return Ty::Err };
    let macs = batch.iter().fold(m.mul(k1).mul(n), |acc, d| acc.mul(d));
    cx.add_macs(macs);
    if a.len() > 1 {
        batch.push(m.clone());
    }
    if b.len() > 1 {
        batch.push(n.clone());
    }
    Ty::Tensor(*da, batch)
}
