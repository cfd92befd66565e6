//! Calls and argument binding: `f(a, b: c)`, `x.f(a)`, configured layers, `x |> f`, and
//! how arguments reach a callee's parameters.
//!
//! Binding is two steps, the same for functions, layers and derivative rules: match
//! arguments to parameters (`bind_args`: by position and name, reporting unknown,
//! repeated and missing ones), then bind each parameter in the callee's environment
//! (`bind_params`: the argument or the default, checked against the declared type; a
//! tensor type binds its dim variables, and dims written as expressions are checked once
//! everything is bound). What the callee is once its parameters are bound is
//! `instantiate.rs`'s business.

use std::rc::Rc;

use super::{ArgV, Cx, Env, closest};
use crate::check::dim::Dim;
use crate::check::names::{DefKind, ItemId};
use crate::check::ty::{DType, LayerValue, ShapeFmt, Ty};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::*;

impl Cx<'_> {
    fn eval_args(&mut self, args: &[Arg], env: &mut Env) -> Vec<ArgV> {
        args.iter()
            .map(|a| ArgV {
                name: a.name.as_ref().map(|n| n.name.clone()),
                ty: self.expr(&a.value, env),
                span: a.value.span,
            })
            .collect()
    }

    pub(super) fn call_expr(
        &mut self,
        callee: &Expr,
        args: &[Arg],
        span: Span,
        env: &mut Env,
    ) -> Ty {
        // `x.f(a)` is `f(x, a)` unless `x` is a record with a field `f`.
        if let ExprKind::Field { base, name } = &callee.kind {
            let b = self.expr(base, env);
            if !matches!(b, Ty::Record(_)) {
                let mut vals = vec![ArgV {
                    name: None,
                    ty: b,
                    span: base.span,
                }];
                vals.extend(self.eval_args(args, env));
                let f = self.name(&name.name, name.span, env);
                return self.call_value(&f, vals, name.span, span, env);
            }
        }
        let f = self.expr(callee, env);
        let vals = self.eval_args(args, env);
        self.call_value(&f, vals, callee.span, span, env)
    }

    fn call_value(
        &mut self,
        f: &Ty,
        args: Vec<ArgV>,
        callee_span: Span,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        if args.iter().any(|a| a.ty.is_err())
            && matches!(f, Ty::Item(id) if self.p.items[*id].kind == DefKind::Layer)
        {
            return Ty::Err;
        }
        match f {
            Ty::Item(id) => match self.p.items[*id].kind {
                DefKind::Layer => {
                    // `layernorm(x)`: a layer given just its input, all arguments defaulted.
                    if let [one] = args.as_slice()
                        && one.name.is_none()
                        && matches!(one.ty, Ty::Tensor(..))
                        && self.layer_first_arg_not_tensor(*id)
                    {
                        let lv = LayerValue {
                            item: *id,
                            args: vec![],
                        };
                        return self.apply_layer(&lv, one.ty.clone(), one.span, span, env);
                    }
                    Ty::Layer(Rc::new(LayerValue {
                        item: *id,
                        args: args.into_iter().map(|a| (a.name, a.ty, a.span)).collect(),
                    }))
                }
                DefKind::Fn | DefKind::ExternFn => self.call_fn(*id, &args, span, env),
                _ => self.not_callable(f, callee_span),
            },
            Ty::Layer(lv) => match args.as_slice() {
                [one] if one.name.is_none() => {
                    self.apply_layer(lv, one.ty.clone(), one.span, span, env)
                }
                _ => {
                    self.report(
                        Diagnostic::error(
                            "E0202",
                            format!(
                                "a configured layer takes exactly one input, given {}",
                                args.len()
                            ),
                        )
                        .primary(span, "here"),
                    );
                    Ty::Err
                }
            },
            Ty::Err | Ty::Any => Ty::Err,
            other => self.not_callable(other, callee_span),
        }
    }

    fn layer_first_arg_not_tensor(&self, id: ItemId) -> bool {
        match self.p.item_ast(id).map(|i| &i.kind) {
            Some(ItemKind::Layer(l)) => l.args.iter().all(|a| a.default.is_some()),
            _ => false,
        }
    }

    fn not_callable(&mut self, f: &Ty, span: Span) -> Ty {
        let shown = self.show(f);
        let mut d = Diagnostic::error("E0109", format!("{shown} is not callable"))
            .primary(span, "called here");
        if matches!(f, Ty::Net(_)) {
            d = d.with_help("a net is trained or evaluated as a whole: `train(Net, data, cfg)`");
        }
        self.report(d);
        Ty::Err
    }

    /// Matches arguments to parameters by position and name. Returns, per parameter, the
    /// argument given for it (if any).
    pub(super) fn bind_args(
        &mut self,
        name: &str,
        params: &[Param],
        args: &[ArgV],
        span: Span,
    ) -> Option<Vec<Option<ArgV>>> {
        let mut out: Vec<Option<ArgV>> = vec![None; params.len()];
        let mut ok = true;
        let mut next = 0;
        for a in args {
            match &a.name {
                None => {
                    if next >= params.len() {
                        self.report(
                            Diagnostic::error(
                                "E0202",
                                format!(
                                    "`{name}` takes {} argument{}, but {} were given",
                                    params.len(),
                                    if params.len() == 1 { "" } else { "s" },
                                    args.len()
                                ),
                            )
                            .primary(a.span, "unexpected argument"),
                        );
                        return None;
                    }
                    out[next] = Some(a.clone());
                    next += 1;
                }
                Some(n) => match params.iter().position(|p| &p.name.name == n) {
                    Some(i) if out[i].is_some() => {
                        self.report(
                            Diagnostic::error("E0205", format!("argument `{n}` is given twice"))
                                .primary(a.span, "given again here"),
                        );
                        ok = false;
                    }
                    Some(i) => out[i] = Some(a.clone()),
                    None => {
                        let mut d = Diagnostic::error(
                            "E0204",
                            format!("`{name}` has no parameter named `{n}`"),
                        )
                        .primary(a.span, "unknown argument");
                        if let Some(s) = closest(n, params.iter().map(|p| p.name.name.as_str())) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        } else {
                            let all: Vec<&str> =
                                params.iter().map(|p| p.name.name.as_str()).collect();
                            d = d.with_help(format!("its parameters are: {}", all.join(", ")));
                        }
                        self.report(d);
                        ok = false;
                    }
                },
            }
        }
        let missing: Vec<&Param> = params
            .iter()
            .zip(&out)
            .filter(|(p, a)| a.is_none() && p.default.is_none())
            .map(|(p, _)| p)
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing
                .iter()
                .map(|p| format!("`{}`", p.name.name))
                .collect();
            self.report(
                Diagnostic::error(
                    "E0203",
                    format!(
                        "`{name}` is missing argument{} {}",
                        if names.len() > 1 { "s" } else { "" },
                        names.join(", ")
                    ),
                )
                .primary(span, "in this call")
                .secondary(missing[0].span, "parameter declared here"),
            );
            return None;
        }
        ok.then_some(out)
    }

    /// Binds a callee's parameters in its environment `env`, in order: each to the argument
    /// given for it (`given`, one entry per parameter, as [`Cx::bind_args`] matches them),
    /// else to its default, evaluated in `env` so that it may use the parameters before it.
    /// A layer's `input` (its parameter, the value, and where that value came from) is bound
    /// after its arguments. Dims written as expressions (`f32[B, 2 * C]`) are checked once
    /// everything is bound. `span` is the use: a default's value is reported there.
    ///
    /// The one binding used by function calls, layer applications and derivative rules
    /// (`instantiate.rs`, `rules.rs`), so the three report the same errors. Returns whether
    /// every parameter bound; each failure is reported, and every parameter is bound (to
    /// `Ty::Err` where its value is wrong) so that the rest can still be checked.
    pub(super) fn bind_params(
        &mut self,
        callee: &str,
        env: &mut Env,
        params: &[Param],
        given: &[Option<ArgV>],
        input: Option<(&Param, Ty, Span)>,
        span: Span,
    ) -> bool {
        let mut deferred = Vec::new();
        let mut ok = true;
        for (param, arg) in params.iter().zip(given) {
            let (v, vspan) = match arg {
                Some(a) => (a.ty.clone(), a.span),
                None => match &param.default {
                    Some(d) => (self.expr(d, env), span),
                    None => (Ty::Err, span),
                },
            };
            ok &= self.bind_param(callee, env, param, v, vspan, None, &mut deferred);
        }
        if let Some((param, v, origin)) = input {
            ok &= self.bind_param(callee, env, param, v, span, Some(origin), &mut deferred);
        }
        ok &= self.check_deferred(callee, env, deferred);
        ok
    }

    /// Binds one parameter in the callee's environment, checking the value against the
    /// declared type; tensor types bind their dim variables. Dims written as expressions
    /// are checked after all parameters are bound (`deferred`).
    #[allow(clippy::too_many_arguments)]
    fn bind_param(
        &mut self,
        callee: &str,
        env: &mut Env,
        p: &Param,
        v: Ty,
        vspan: Span,
        origin: Option<Span>,
        deferred: &mut Vec<(Dim, DimExpr, Span, Ty, Span)>,
    ) -> bool {
        let Some(t) = &p.ty else {
            env.bind(&p.name.name, v, p.name.span, false);
            return true;
        };
        let ok = match (&t.kind, &v) {
            (_, Ty::Err) => true,
            (TypeKind::Tensor { dtype, dims }, Ty::Tensor(dt, actual, _)) => self.match_tensor(
                callee, env, t, dtype, dims, *dt, actual, vspan, origin, deferred,
            ),
            (TypeKind::Tensor { .. }, other) => {
                let shown = self.show(other);
                let want = self.text(t.span).to_string();
                self.report(
                    Diagnostic::error(
                        "E0201",
                        format!(
                            "`{callee}` expects a tensor {want} for `{}`, found {shown}",
                            p.name.name
                        ),
                    )
                    .primary(vspan, format!("this is {shown}")),
                );
                false
            }
            (TypeKind::Named(n), _) if n.name == "fn" => {
                if !matches!(v, Ty::Item(_) | Ty::Layer(_)) {
                    let shown = self.show(&v);
                    self.report(
                        Diagnostic::error(
                            "E0201",
                            format!(
                                "`{}` of `{callee}` must be a function, found {shown}",
                                p.name.name
                            ),
                        )
                        .primary(vspan, "not a function"),
                    );
                    false
                } else {
                    true
                }
            }
            (TypeKind::Named(n), _) if n.name == "net" => {
                // A `net` parameter of a host function is passed along as it came.
                if !matches!(v, Ty::Net(_) | Ty::Any) {
                    let shown = self.show(&v);
                    self.report(
                        Diagnostic::error(
                            "E0201",
                            format!(
                                "`{}` of `{callee}` must be a net, found {shown}",
                                p.name.name
                            ),
                        )
                        .primary(vspan, "not a net"),
                    );
                    false
                } else {
                    true
                }
            }
            _ => {
                let want = self.eval_type(env, t);
                self.expect_assignable(&want, &v, vspan, &format!("argument `{}`", p.name.name))
            }
        };
        let v = match (&t.kind, v) {
            (TypeKind::Named(n), v @ Ty::Int(_)) if n.name == "float" => Ty::Float(v.scalar()),
            (_, v) => v,
        };
        // A `dim` is a size: at least 1. Caught here, at the argument, rather than as the
        // shapes built from it.
        let ok = ok
            && match (&t.kind, v.dim().and_then(Dim::as_const)) {
                (TypeKind::Named(n), Some(d)) if n.name == "dim" && d < 1 => {
                    self.report(
                        Diagnostic::error(
                            "E0315",
                            format!(
                                "`{}` of `{callee}` is a dimension, so it must be at least 1, but it is {d}",
                                p.name.name
                            ),
                        )
                        .primary(vspan, format!("this is {d}")),
                    );
                    false
                }
                _ => true,
            };
        env.bind(
            &p.name.name,
            if ok { v } else { Ty::Err },
            p.name.span,
            false,
        );
        ok
    }

    #[allow(clippy::too_many_arguments)]
    fn match_tensor(
        &mut self,
        callee: &str,
        env: &mut Env,
        t: &TypeExpr,
        dtype: &Ident,
        dims: &[DimExpr],
        dt: DType,
        actual: &[Dim],
        vspan: Span,
        origin: Option<Span>,
        deferred: &mut Vec<(Dim, DimExpr, Span, Ty, Span)>,
    ) -> bool {
        let want_text = self.text(t.span).to_string();
        let got = ShapeFmt(dt, actual).to_string();
        let with_origin = |d: Diagnostic| match origin {
            Some(o) if o != vspan => d.secondary(o, format!("{got} comes from here")),
            _ => d,
        };
        if DType::parse(&dtype.name).is_some_and(|w| w != dt) {
            let d = Diagnostic::error(
                "E0302",
                format!("`{callee}` expects {want_text}, got {got}"),
            )
            .primary(vspan, format!("this is {got}"))
            .with_help(format!("convert with `cast(x, \"{}\")`", dtype.name));
            self.report(with_origin(d));
            return false;
        }
        let packs = dims
            .iter()
            .filter(|d| matches!(d.kind, DimKind::Pack(_)))
            .count();
        let fixed = dims.len() - packs;
        if (packs == 0 && actual.len() != fixed) || actual.len() < fixed {
            let rank = if packs == 0 {
                format!("rank-{fixed}")
            } else {
                format!("rank-{fixed}-or-more")
            };
            let mut d = Diagnostic::error(
                "E0301",
                format!("`{callee}` expects a {rank} input {want_text}, got {got}"),
            )
            .primary(vspan, format!("this is {got}"));
            if packs == 0 && fixed == 2 && actual.len() > 2 {
                d = d.with_help(format!("insert `flatten` before `{callee}`"));
            } else if packs == 0 && fixed == 4 && actual.len() == 2 {
                d = d.with_help(format!("`{callee}` works on images [B, C, H, W]; reshape the features into an image first"));
            }
            self.report(with_origin(d));
            return false;
        }
        let pack_len = actual.len() - fixed;
        let mut i = 0;
        for d in dims {
            match &d.kind {
                DimKind::Pack(s) => {
                    env.packs
                        .insert(s.clone(), actual[i..i + pack_len].to_vec());
                    i += pack_len;
                }
                DimKind::Name(v) if env.get(v).is_none() => {
                    env.bind(v, Ty::Int(Some(actual[i].clone())), d.span, false);
                    i += 1;
                }
                _ => {
                    deferred.push((
                        actual[i].clone(),
                        d.clone(),
                        vspan,
                        Ty::Tensor(dt, actual.to_vec(), None),
                        origin.unwrap_or(vspan),
                    ));
                    i += 1;
                }
            }
        }
        true
    }

    /// Checks the dims written as expressions, now that every variable is bound.
    fn check_deferred(
        &mut self,
        callee: &str,
        env: &mut Env,
        deferred: Vec<(Dim, DimExpr, Span, Ty, Span)>,
    ) -> bool {
        let mut ok = true;
        for (actual, expr, vspan, whole, origin) in deferred {
            let Some(want) = self.eval_dim(env, &expr) else {
                ok = false;
                continue;
            };
            if self.dims_equal(&want, &actual, env.strict) {
                continue;
            }
            let got = self.show(&whole);
            let written = self.text(expr.span).to_string();
            let shown_want = if written == want.to_string() {
                written
            } else {
                format!("{written} = {want}")
            };
            let mut d = Diagnostic::error(
                "E0303",
                format!("`{callee}` expects a dimension of {shown_want}, got {actual} (in {got})"),
            )
            .primary(vspan, format!("this is {got}"))
            .secondary(expr.span, "expected by this dimension");
            if origin != vspan {
                d = d.secondary(origin, "this shape comes from here");
            }
            self.report(d);
            ok = false;
        }
        ok
    }

    pub(super) fn where_clauses(
        &mut self,
        callee: &str,
        wheres: &[Expr],
        env: &mut Env,
        span: Span,
    ) -> bool {
        for w in wheres {
            if let Ty::Bool(Some(false)) = self.expr(w, env) {
                let mut names = Vec::new();
                collect_names(w, &mut names);
                let values: Vec<String> = names
                    .iter()
                    .filter_map(|n| {
                        env.get(n)
                            .and_then(|l| l.ty.dim())
                            .map(|d| format!("{n} = {d}"))
                    })
                    .collect();
                let text = self.text(w.span).to_string();
                // Divisibility has its own code; every other condition is E0314.
                let divides = text.contains('%');
                let mut d = Diagnostic::error(
                    if divides { "E0305" } else { "E0314" },
                    format!("`{callee}` requires `{text}`, but {}", values.join(", ")),
                )
                .primary(span, "this use")
                .secondary(w.span, "required here");
                if divides {
                    d = d.with_help("choose values so that the dimension divides evenly");
                }
                self.report(d);
                return false;
            }
        }
        true
    }

    /// `x |> f`: a layer (configured or not) or a function applied to the running value.
    pub(in crate::check) fn apply(&mut self, f: &Expr, x: Ty, origin: Span, env: &mut Env) -> Ty {
        if x.is_err() {
            // Still resolve names inside, so their errors are reported, without reporting
            // the missing piped argument.
            match &f.kind {
                ExprKind::Call { callee, args } => {
                    self.expr(callee, env);
                    self.eval_args(args, env);
                }
                _ => {
                    self.expr(f, env);
                }
            }
            return Ty::Err;
        }
        let input = ArgV {
            name: None,
            ty: x.clone(),
            span: origin,
        };
        match &f.kind {
            ExprKind::Call { callee, args } => {
                let c = self.expr(callee, env);
                let mut vals = self.eval_args(args, env);
                match c {
                    Ty::Item(id) if self.p.items[id].kind == DefKind::Layer => {
                        if vals.iter().any(|a| a.ty.is_err()) {
                            return Ty::Err;
                        }
                        let lv = LayerValue {
                            item: id,
                            args: vals.into_iter().map(|a| (a.name, a.ty, a.span)).collect(),
                        };
                        self.apply_layer(&lv, x, origin, f.span, env)
                    }
                    Ty::Item(_) => {
                        vals.insert(0, input);
                        self.call_value(&c, vals, callee.span, f.span, env)
                    }
                    other => {
                        let applied = self.call_value(&other, vals, callee.span, f.span, env);
                        self.apply_value(&applied, input, f.span, env)
                    }
                }
            }
            _ => {
                let v = self.expr(f, env);
                self.apply_value(&v, input, f.span, env)
            }
        }
    }

    fn apply_value(&mut self, v: &Ty, input: ArgV, span: Span, env: &mut Env) -> Ty {
        match v {
            Ty::Item(id) if self.p.items[*id].kind == DefKind::Layer => {
                let lv = LayerValue {
                    item: *id,
                    args: vec![],
                };
                self.apply_layer(&lv, input.ty, input.span, span, env)
            }
            Ty::Layer(lv) => self.apply_layer(lv, input.ty, input.span, span, env),
            Ty::Item(_) => self.call_value(v, vec![input], span, span, env),
            Ty::Err => Ty::Err,
            other => {
                let shown = self.show(other);
                self.report(
                    Diagnostic::error("E0309", format!("{shown} cannot be applied to a tensor"))
                        .primary(span, "expected a layer or a function here"),
                );
                Ty::Err
            }
        }
    }
}

fn collect_names(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Name(n) if !out.contains(n) => {
            out.push(n.clone());
        }
        ExprKind::Binary(_, a, b) => {
            collect_names(a, out);
            collect_names(b, out);
        }
        ExprKind::Unary(_, a) => collect_names(a, out),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| collect_names(&a.value, out)),
        _ => {}
    }
}
