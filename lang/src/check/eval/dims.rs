//! Written types and dims: evaluating `f32[B, H / 2]` in an environment, compile-time
//! integer arithmetic (checked: E0305 for division by zero, E0313 for overflow), and the
//! comparisons everything else uses: dims and shapes (strict or not), assignability, and a
//! body's value against its declared result.

use super::{Cx, Env, closest};
use crate::check::dim::{Cmp, Dim, DimError};
use crate::check::facts::Target;
use crate::check::names::DefKind;
use crate::check::ty::{DType, ShapeFmt, Ty};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    pub(super) fn eval_dim(&mut self, env: &mut Env, d: &DimExpr) -> Option<Dim> {
        match &d.kind {
            DimKind::Int(n) => Some(Dim::konst(*n)),
            DimKind::Name(v) => match env.get(v).map(|l| l.ty.clone()) {
                Some(Ty::Int(Some(x))) => Some(x),
                Some(Ty::Err) => None,
                Some(other) => {
                    let shown = self.show(&other);
                    self.report(
                        Diagnostic::error("E0201", format!("`{v}` is a {shown}, not a dimension"))
                            .primary(d.span, "used as a dimension here"),
                    );
                    None
                }
                None => {
                    let mut diag = Diagnostic::error("E0102", format!("unknown dimension `{v}`"))
                        .primary(d.span, "not bound by the input or an argument");
                    let names: Vec<String> =
                        env.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
                    if let Some(s) = closest(v, names.iter().map(String::as_str)) {
                        diag = diag.with_help(format!("did you mean `{s}`?"));
                    } else {
                        diag = diag.with_help("a dimension must appear in the input's type or be an `int`/`dim` argument");
                    }
                    self.report(diag);
                    None
                }
            },
            DimKind::Pack(s) => {
                self.report(
                    Diagnostic::error(
                        "E0102",
                        format!(
                            "`...{s}` stands for several dims and cannot be used in arithmetic"
                        ),
                    )
                    .primary(d.span, "here"),
                );
                None
            }
            DimKind::Bin(op, a, b) => {
                let divisor = b.span;
                let a = self.eval_dim(env, a)?;
                let b = self.eval_dim(env, b)?;
                self.dim_arith(*op, &a, &b, d.span, divisor)
            }
            DimKind::Error => None,
        }
    }

    /// `a op b` at `span`; a division by zero is reported at `divisor`.
    pub(super) fn dim_arith(
        &mut self,
        op: BinOp,
        a: &Dim,
        b: &Dim,
        span: Span,
        divisor: Span,
    ) -> Option<Dim> {
        let r = match op {
            BinOp::Add => a.add(b),
            BinOp::Sub => a.sub(b),
            BinOp::Mul => a.mul(b),
            BinOp::Div => a.div(b),
            BinOp::Rem => a.rem(b),
            _ => return None,
        };
        let at = if matches!(r, Err(DimError::DivByZero)) {
            divisor
        } else {
            span
        };
        self.arith(r, at, || format!("`{a} {} {b}`", op.symbol()))
    }

    /// The result of compile-time integer arithmetic, or a reported error: E0305 for a
    /// division by zero, E0313 for a result outside the 64-bit range (`what` shows the
    /// operation).
    pub(in crate::check) fn arith(
        &mut self,
        r: Result<Dim, DimError>,
        span: Span,
        what: impl FnOnce() -> String,
    ) -> Option<Dim> {
        match r {
            Ok(d) => Some(d),
            Err(DimError::DivByZero) => {
                self.report(
                    Diagnostic::error("E0305", "division by zero in a dimension")
                        .primary(span, "this divides by 0"),
                );
                None
            }
            Err(DimError::Overflow) => {
                self.report(
                    Diagnostic::error(
                        "E0313",
                        format!(
                            "{} overflows: the result does not fit in a 64-bit integer",
                            what()
                        ),
                    )
                    .primary(span, "this overflows")
                    .with_help(format!(
                        "compile-time integers and dimensions lie between {} and {}",
                        i64::MIN,
                        i64::MAX
                    )),
                );
                None
            }
        }
    }

    /// Evaluates a written type, with the dims bound in `env`.
    pub(in crate::check) fn eval_type(&mut self, env: &mut Env, t: &TypeExpr) -> Ty {
        match &t.kind {
            TypeKind::Named(n) => match n.name.as_str() {
                "int" | "dim" | "axis" => Ty::Int(None),
                "float" => Ty::Float(None),
                "bool" => Ty::Bool(None),
                "str" => Ty::Str,
                "any" | "fn" | "net" => Ty::Any,
                other => match self
                    .p
                    .lookup(env.module, other)
                    .map(|id| (id, self.p.items[id].kind))
                {
                    Some((id, DefKind::Record)) => {
                        self.facts.name_use(n.span, Target::Item(id));
                        Ty::Record(id)
                    }
                    Some((id, DefKind::ExternType)) => {
                        self.facts.name_use(n.span, Target::Item(id));
                        Ty::Opaque(id)
                    }
                    _ => {
                        let mut d = Diagnostic::error("E0107", format!("unknown type `{other}`"))
                            .primary(n.span, "not a type");
                        if DType::parse(other).is_some() {
                            d = d
                                .with_help(format!("a tensor type needs its dims: `{other}[...]`"));
                        } else {
                            let mut names: Vec<String> =
                                ["int", "float", "bool", "str", "dim", "fn", "any"]
                                    .iter()
                                    .map(|s| s.to_string())
                                    .collect();
                            names.extend(self.p.visible_names(env.module));
                            if let Some(s) = closest(other, names.iter().map(String::as_str)) {
                                d = d.with_help(format!("did you mean `{s}`?"));
                            }
                        }
                        self.report(d);
                        Ty::Err
                    }
                },
            },
            TypeKind::Tensor { dtype, dims } => {
                let Some(dt) = DType::parse(&dtype.name) else {
                    self.report(
                        Diagnostic::error(
                            "E0107",
                            format!("unknown element type `{}`", dtype.name),
                        )
                        .primary(dtype.span, "not an element type")
                        .with_help("element types are f16, bf16, f32, f64, i32, i64, u8, bool"),
                    );
                    return Ty::Err;
                };
                let mut out = Vec::new();
                for d in dims {
                    if let DimKind::Pack(s) = &d.kind {
                        match env.packs.get(s) {
                            Some(ds) => out.extend(ds.iter().cloned()),
                            None => {
                                self.report(
                                    Diagnostic::error(
                                        "E0102",
                                        format!("unknown dimension pack `...{s}`"),
                                    )
                                    .primary(d.span, "not bound by the input"),
                                );
                                return Ty::Err;
                            }
                        }
                        continue;
                    }
                    match self.eval_dim(env, d) {
                        Some(x) => {
                            if x.as_const().is_some_and(|n| n < 0) {
                                self.report(
                                    Diagnostic::error(
                                        "E0315",
                                        format!("the dimension `{}` is {x} here; a dimension cannot be negative", self.text(d.span)),
                                    )
                                    .primary(d.span, format!("this is {x}")),
                                );
                                return Ty::Err;
                            }
                            out.push(x)
                        }
                        None => return Ty::Err,
                    }
                }
                // The element count (a symbolic dim counts once, as `B = 1` does) must fit
                // in 64 bits, or every size computed from it would be wrong.
                let count = out
                    .iter()
                    .filter_map(Dim::as_const)
                    .try_fold(1i64, |a, n| a.checked_mul(n));
                if count.is_none() {
                    let shown = self.show(&Ty::Tensor(dt, out.clone(), None));
                    self.report(
                        Diagnostic::error(
                            "E0313",
                            format!("{shown} has more elements than fit in a 64-bit integer"),
                        )
                        .primary(t.span, "this tensor type")
                        .with_help(format!("a tensor has at most {} elements", i64::MAX)),
                    );
                    return Ty::Err;
                }
                Ty::Tensor(dt, out, None)
            }
            TypeKind::List(inner) => Ty::List(Box::new(self.eval_type(env, inner))),
            TypeKind::Error => Ty::Err,
        }
    }

    pub(in crate::check) fn dims_equal(&self, a: &Dim, b: &Dim, strict: bool) -> bool {
        match a.compare(b) {
            Cmp::Equal => true,
            Cmp::Different => false,
            Cmp::Unknown => !strict,
        }
    }

    pub(in crate::check) fn shapes_equal(&self, a: &[Dim], b: &[Dim], strict: bool) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.dims_equal(x, y, strict))
    }

    /// Whether a value of type `got` can be used where `want` is expected.
    pub(super) fn assignable(&self, want: &Ty, got: &Ty) -> bool {
        match (want, got) {
            (Ty::Err, _) | (_, Ty::Err) | (Ty::Any, _) => true,
            (Ty::Int(_), Ty::Int(_))
            | (Ty::Float(_), Ty::Float(_) | Ty::Int(_))
            | (Ty::Bool(_), Ty::Bool(_)) => true,
            (Ty::Str, Ty::Str) | (Ty::Unit, Ty::Unit) => true,
            (Ty::Tensor(a, x, _), Ty::Tensor(b, y, _)) => a == b && self.shapes_equal(x, y, false),
            (Ty::List(t), Ty::Items(items)) => items.iter().all(|i| self.assignable(t, i)),
            (Ty::List(a), Ty::List(b)) => self.assignable(a, b),
            (Ty::Record(a), Ty::Record(b)) | (Ty::Opaque(a), Ty::Opaque(b)) => a == b,
            _ => false,
        }
    }

    pub(super) fn expect_assignable(
        &mut self,
        want: &Ty,
        got: &Ty,
        span: Span,
        what: &str,
    ) -> bool {
        if self.assignable(want, got) {
            return true;
        }
        let (w, g) = (self.show(want), self.show(got));
        let mut d = Diagnostic::error(
            "E0201",
            format!("mismatched types: expected {w}, found {g}"),
        )
        .primary(span, format!("{what} is {g}"));
        if matches!(want, Ty::Int(_)) && matches!(got, Ty::Float(_)) {
            d = d.with_help("use an int literal, or `int(x)` to truncate");
        } else if matches!(want, Ty::Str) {
            d = d.with_help("interpolate it into a string: \"{x}\"");
        }
        self.report(d);
        false
    }

    /// A body's value against its declared result type (tensors compared dim by dim).
    pub(super) fn expect_result(
        &mut self,
        want: &Ty,
        got: &Ty,
        span: Span,
        decl: Option<Span>,
        env: &Env,
    ) {
        if let (Ty::Tensor(a, x, _), Ty::Tensor(b, y, _)) = (want, got) {
            if a == b && self.shapes_equal(x, y, env.strict) {
                return;
            }
            let mut d = Diagnostic::error(
                "E0303",
                format!(
                    "the result is {}, but the declared result type is {}",
                    ShapeFmt(*b, y),
                    ShapeFmt(*a, x)
                ),
            )
            .primary(span, format!("this is {}", ShapeFmt(*b, y)));
            if let Some(decl) = decl {
                d = d.secondary(decl, "declared here");
            }
            self.report(d);
            return;
        }
        if !self.assignable(want, got) {
            let (w, g) = (self.show(want), self.show(got));
            let mut d = Diagnostic::error(
                "E0210",
                format!("the result is {g}, but the declared result type is {w}"),
            )
            .primary(span, format!("this is {g}"));
            if let Some(decl) = decl {
                d = d.secondary(decl, "declared here");
            }
            self.report(d);
        }
    }
}
