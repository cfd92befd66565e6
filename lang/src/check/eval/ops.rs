//! Binary operators: on compile-time ints (exact dim arithmetic, decided comparisons),
//! floats, bools and strings, and on tensors, where the broadcasting rule lives (a dim
//! stretches only when it is literally 1 or missing). `@` goes to `prims::matmul`.

use super::{Cx, Env};
use crate::check::dim::{Cmp, Dim};
use crate::check::prims;
use crate::check::ty::{DType, Ty, shape_str};
use crate::diag::Diagnostic;
use crate::ir::{Binary, Compare};
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::check) fn binary(
        &mut self,
        op: BinOp,
        x: &Ty,
        y: &Ty,
        xs: Span,
        ys: Span,
        span: Span,
        env: &Env,
    ) -> Ty {
        use BinOp::*;
        match (x, y) {
            (Ty::Err, _) | (_, Ty::Err) => Ty::Err,
            (Ty::Int(a), Ty::Int(b)) => match op {
                Add | Sub | Mul | Div | Rem => match (a, b) {
                    (Some(a), Some(b)) => self
                        .dim_arith(op, a, b, span, ys)
                        .map(|d| Ty::Int(Some(d)))
                        .unwrap_or(Ty::Err),
                    _ => Ty::Int(None),
                },
                Eq | Ne | Lt | Le | Gt | Ge => {
                    let known = match (
                        a.as_ref().and_then(Dim::as_const),
                        b.as_ref().and_then(Dim::as_const),
                    ) {
                        (Some(a), Some(b)) => Some(match op {
                            Eq => a == b,
                            Ne => a != b,
                            Lt => a < b,
                            Le => a <= b,
                            Gt => a > b,
                            _ => a >= b,
                        }),
                        _ => match (op, a, b) {
                            (Eq | Ne, Some(a), Some(b)) if a.compare(b) != Cmp::Unknown => {
                                Some((a.compare(b) == Cmp::Equal) == (op == Eq))
                            }
                            _ => None,
                        },
                    };
                    Ty::Bool(known)
                }
                _ => self.op_error(op, x, y, span),
            },
            (Ty::Int(_) | Ty::Float(_), Ty::Int(_) | Ty::Float(_)) => match op {
                Add | Sub | Mul | Div | Rem => {
                    Ty::Float(x.scalar().zip(y.scalar()).map(|(a, b)| match op {
                        Add => a + b,
                        Sub => a - b,
                        Mul => a * b,
                        Div => a / b,
                        _ => a % b,
                    }))
                }
                Eq | Ne | Lt | Le | Gt | Ge => Ty::Bool(None),
                _ => self.op_error(op, x, y, span),
            },
            (Ty::Bool(a), Ty::Bool(b)) => match op {
                And => Ty::Bool(match (a, b) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }),
                Or => Ty::Bool(match (a, b) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }),
                Eq | Ne => Ty::Bool(None),
                _ => self.op_error(op, x, y, span),
            },
            (Ty::Str, Ty::Str) if matches!(op, Add | Eq | Ne) => {
                if op == Add {
                    Ty::Str
                } else {
                    Ty::Bool(None)
                }
            }
            (Ty::Tensor(..), _) | (_, Ty::Tensor(..)) => {
                self.tensor_binary(op, x, y, xs, ys, span, env)
            }
            _ => self.op_error(op, x, y, span),
        }
    }

    fn op_error(&mut self, op: BinOp, x: &Ty, y: &Ty, span: Span) -> Ty {
        let (a, b) = (self.show(x), self.show(y));
        self.report(
            Diagnostic::error(
                "E0207",
                format!("cannot apply `{}` to {a} and {b}", op.symbol()),
            )
            .primary(span, "here"),
        );
        Ty::Err
    }

    #[allow(clippy::too_many_arguments)]
    fn tensor_binary(
        &mut self,
        op: BinOp,
        x: &Ty,
        y: &Ty,
        xs: Span,
        ys: Span,
        span: Span,
        env: &Env,
    ) -> Ty {
        use BinOp::*;
        let as_tensor = |t: &Ty| -> Option<(Option<DType>, Vec<Dim>)> {
            match t {
                Ty::Tensor(dt, d, _) => Some((Some(*dt), d.clone())),
                Ty::Int(_) | Ty::Float(_) => Some((None, vec![])),
                Ty::Bool(_) => Some((Some(DType::Bool), vec![])),
                _ => None,
            }
        };
        let (Some((da, a)), Some((db, b))) = (as_tensor(x), as_tensor(y)) else {
            return self.op_error(op, x, y, span);
        };
        if op == MatMul {
            return prims::matmul(self, x, y, xs, ys, span, env);
        }
        let dt = match (da, db) {
            (Some(a), Some(b)) if a != b => {
                self.report(
                    Diagnostic::error(
                        "E0302",
                        format!(
                            "element types differ: {} {} {}",
                            a.name(),
                            op.symbol(),
                            b.name()
                        ),
                    )
                    .primary(span, "here")
                    .secondary(xs, format!("this is {}", self.show(x)))
                    .secondary(ys, format!("this is {}", self.show(y)))
                    .with_help(format!("convert one side with `cast(x, \"{}\")`", a.name())),
                );
                return Ty::Err;
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => DType::F32,
        };
        let Some(shape) = self.broadcast(&a, &b, xs, ys, span, env.strict) else {
            return Ty::Err;
        };
        let cmp = match op {
            Eq => Some(Compare::Eq),
            Ne => Some(Compare::Ne),
            Lt => Some(Compare::Lt),
            Le => Some(Compare::Le),
            Gt => Some(Compare::Gt),
            Ge => Some(Compare::Ge),
            _ => None,
        };
        if let Some(c) = cmp {
            let v = self.emit_compare(c, x, y, dt, &shape);
            return Ty::Tensor(DType::Bool, shape, v);
        }
        if matches!(op, And | Or) && dt != DType::Bool {
            return self.op_error(op, x, y, span);
        }
        let bin = match op {
            Add => Binary::Add,
            Sub => Binary::Sub,
            Mul | And => Binary::Mul,
            Div => Binary::Div,
            Or => Binary::Max,
            _ => {
                self.lower_fail(format!("`{}` on tensors cannot be lowered", op.symbol()));
                Binary::Add
            }
        };
        let v = self.emit_binary(bin, x, y, dt, &shape);
        Ty::Tensor(dt, shape, v)
    }

    /// The broadcasting rule: align from the right; a dim stretches only when it is
    /// literally 1 or missing.
    pub(in crate::check) fn broadcast(
        &mut self,
        a: &[Dim],
        b: &[Dim],
        xs: Span,
        ys: Span,
        span: Span,
        strict: bool,
    ) -> Option<Vec<Dim>> {
        let n = a.len().max(b.len());
        let mut out = Vec::with_capacity(n);
        let one = Dim::konst(1);
        for i in 0..n {
            let da = (i + a.len()).checked_sub(n).map(|j| &a[j]);
            let db = (i + b.len()).checked_sub(n).map(|j| &b[j]);
            let d = match (da, db) {
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (Some(x), Some(y)) if *x == one => y.clone(),
                (Some(x), Some(y)) if *y == one => x.clone(),
                (Some(x), Some(y)) if self.dims_equal(x, y, strict) => x.clone(),
                (Some(x), Some(y)) => {
                    let mut d = Diagnostic::error(
                        "E0304",
                        format!("cannot broadcast {} with {}: axis {i} is {x} on the left and {y} on the right", shape_str(a), shape_str(b)),
                    )
                    .primary(span, "in this operation")
                    .secondary(xs, format!("this is {}", shape_str(a)))
                    .secondary(ys, format!("this is {}", shape_str(b)));
                    if n == 4 && i == 1 {
                        d = d.with_help(format!("the channels differ ({x} vs {y}): project one side with `conv({x}, 1)` so both have {x} channels"));
                    } else {
                        d = d.with_help("a dim broadcasts only when it is 1 or missing; reshape to insert a 1 where you mean to broadcast");
                    }
                    self.report(d);
                    return None;
                }
                (None, None) => return None,
            };
            out.push(d);
        }
        Some(out)
    }
}
