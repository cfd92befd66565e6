//! The evaluator: walks host and tensor code, computing types (host) and shapes (tensor),
//! instantiating layers and tensor functions at each distinct use, and collecting every
//! net's per-stage shapes, parameters and multiply-adds.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::dim::{Cmp, Dim, DimError};
use super::facts::{Binding, Facts, Ref, Target};
use super::lower::Lowering;
use super::names::{DefKind, ItemId, Program};
use super::prims;
use super::ty::{DType, LayerValue, ShapeFmt, Ty, Val, shape_str};
use crate::diag::Diagnostic;
use crate::ir::{Binary, Compare, Op, Unary};
use crate::span::Span;
use crate::syntax::ast::*;

/// One stage of a checked net, for `nabla info` and inlay hints.
#[derive(Clone, Debug)]
pub struct StageInfo {
    pub span: Span,
    pub output: String,
    pub params: u64,
    pub state: u64,
    pub macs: u64,
}

#[derive(Clone, Debug)]
pub struct NetInfo {
    pub name: String,
    pub span: Span,
    pub input: String,
    pub output: String,
    pub stages: Vec<StageInfo>,
    pub params: u64,
    pub state: u64,
    /// Multiply-adds per example (batch 1).
    pub macs: u64,
    /// Structural parameter names and shapes, in order.
    pub param_names: Vec<(String, Vec<u64>)>,
    pub ok: bool,
}

/// An evaluated call argument.
#[derive(Clone, Debug)]
pub(super) struct ArgV {
    pub name: Option<String>,
    pub ty: Ty,
    pub span: Span,
}

#[derive(Clone, Debug)]
struct Local {
    ty: Ty,
    span: Span,
    mutable: bool,
    state: bool,
}

#[derive(Clone)]
pub(super) struct Env {
    module: usize,
    scopes: Vec<HashMap<String, Local>>,
    packs: HashMap<String, Vec<Dim>>,
    /// Tensor code: pure, and every int is a compile-time value.
    tensor: bool,
    /// Instantiated with concrete arguments: a comparison that cannot be decided is an error.
    pub(super) strict: bool,
    ret: Option<Ty>,
    /// Inside a layer body, where `param` and `state` may be declared.
    layer: bool,
}

impl Env {
    fn new(module: usize, tensor: bool, strict: bool) -> Env {
        Env {
            module,
            scopes: vec![HashMap::new()],
            packs: HashMap::new(),
            tensor,
            strict,
            ret: None,
            layer: false,
        }
    }
    fn get(&self, name: &str) -> Option<&Local> {
        self.scopes.iter().rev().find_map(|s| s.get(name))
    }
    fn bind(&mut self, name: &str, ty: Ty, span: Span, mutable: bool) {
        if let Some(s) = self.scopes.last_mut() {
            s.insert(
                name.to_string(),
                Local {
                    ty,
                    span,
                    mutable,
                    state: false,
                },
            );
        }
    }
}

#[derive(Default, Clone)]
struct Collector {
    params: Vec<(String, Vec<Dim>, Val)>,
    states: Vec<(String, Vec<Dim>, Val)>,
    macs: Dim,
    sub: usize,
}

#[derive(Clone)]
struct Inst {
    out: Ty,
    params: Vec<(String, Vec<Dim>, Val)>,
    states: Vec<(String, Vec<Dim>, Val)>,
    macs: Dim,
}

pub(super) struct Cx<'a> {
    pub(super) p: &'a Program,
    diags: &'a mut Vec<Diagnostic>,
    cache: HashMap<String, Inst>,
    stack: Vec<ItemId>,
    use_sites: Vec<Span>,
    collectors: Vec<Collector>,
    cycles: HashSet<Vec<ItemId>>,
    /// Set while lowering to IR (see `lower.rs`).
    pub(super) lower: Option<Lowering>,
    /// The output value of the net checked last.
    last_net_output: Option<Ty>,
    /// The expression being evaluated (IR nodes record it).
    pub(super) cur_span: Option<Span>,
    /// Facts for editors, recorded while checking (`None` while lowering).
    facts: Option<Facts>,
    /// Files whose expression types are recorded (the root files).
    fact_files: HashSet<crate::span::FileId>,
}

/// Checks every module and returns the nets of the root modules and, when `record`, the
/// facts editors need.
pub fn check_program(
    p: &Program,
    roots: &[usize],
    record: bool,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<NetInfo>, Facts) {
    let mut cx = Cx::new(p, diags);
    cx.facts = record.then(Facts::default);
    cx.fact_files = roots
        .iter()
        .filter_map(|m| p.modules.get(*m))
        .map(|m| m.file)
        .collect();
    cx.duplicate_rules();
    let mut nets = Vec::new();
    for m in 0..p.modules.len() {
        cx.check_module(m, roots.contains(&m), &mut nets);
    }
    let mut facts = cx.facts.take().unwrap_or_default();
    facts.finish();
    (nets, facts)
}

pub use crate::diag::closest;

/// An element count, for the counts `info` shows (saturating: see [`Dim::saturating_mul`]).
fn numel(dims: &[Dim]) -> Dim {
    dims.iter()
        .fold(Dim::konst(1), |acc, d| acc.saturating_mul(d))
}

fn per_example(d: &Dim) -> u64 {
    match d.subst(&|s| (s == "B").then(|| Dim::konst(1))) {
        Ok(d) => d.as_const().map(|n| n.max(0) as u64).unwrap_or(0),
        Err(_) => u64::MAX,
    }
}

impl<'a> Cx<'a> {
    pub(super) fn new(p: &'a Program, diags: &'a mut Vec<Diagnostic>) -> Cx<'a> {
        Cx {
            p,
            diags,
            cache: HashMap::new(),
            stack: vec![],
            use_sites: vec![],
            collectors: vec![],
            cycles: HashSet::new(),
            lower: None,
            last_net_output: None,
            cur_span: None,
            facts: None,
            fact_files: HashSet::new(),
        }
    }

    pub(super) fn take_errors(&mut self) -> Vec<Diagnostic> {
        self.diags
            .iter()
            .filter(|d| d.is_error())
            .cloned()
            .collect()
    }

    /// Calls the function `name` with named values (while lowering a single call).
    pub(super) fn call_with(&mut self, id: ItemId, args: Vec<(Option<String>, Ty)>) -> Ty {
        let span = self.p.items[id].span;
        let module = self.p.items[id].module;
        let args: Vec<ArgV> = args
            .into_iter()
            .map(|(name, ty)| ArgV { name, ty, span })
            .collect();
        let mut env = Env::new(module, true, true);
        self.collectors.push(Collector::default());
        let out = self.call_fn(id, &args, span, &mut env);
        self.collectors.pop();
        out
    }

    /// Calls the function `name` (as seen from `module`) with positional values.
    pub(super) fn call_named(&mut self, module: usize, name: &str, args: Vec<Ty>) -> Ty {
        let Some(id) = self.p.lookup(module, name).or_else(|| {
            self.p
                .module_by_path("std.nn")
                .and_then(|m| self.p.modules[m].defs.get(name).copied())
        }) else {
            self.lower_fail(format!("no function `{name}`"));
            return Ty::Err;
        };
        let span = self.p.items[id].span;
        let args: Vec<ArgV> = args
            .into_iter()
            .map(|ty| ArgV {
                name: None,
                ty,
                span,
            })
            .collect();
        let mut env = Env::new(module, true, true);
        self.collectors.push(Collector::default());
        let out = self.call_fn(id, &args, span, &mut env);
        self.collectors.pop();
        out
    }

    /// Checks (and, when lowering, lowers) a net, returning its info and output value.
    pub(super) fn check_net_lowered(&mut self, m: usize, n: &NetDecl) -> (NetInfo, Ty) {
        let info = self.check_net(m, n);
        let out = self.last_net_output.take().unwrap_or(Ty::Err);
        (info, out)
    }

    // ------------------------------------------------------------------ reporting

    pub(super) fn report(&mut self, mut d: Diagnostic) {
        if let (Some(site), Some(primary)) = (self.use_sites.first().copied(), d.span())
            && (site.file != primary.file
                || !(site.start <= primary.start && primary.end <= site.end))
            && !d.labels.iter().any(|l| l.span == site)
        {
            d = d.secondary(site, "in this use");
        }
        self.diags.push(d);
    }

    fn text(&self, span: Span) -> &str {
        self.p
            .sources
            .text(span.file)
            .get(span.start..span.end)
            .unwrap_or("")
    }

    pub(super) fn show(&self, t: &Ty) -> String {
        match t {
            Ty::Int(Some(d)) => match d.as_const() {
                Some(n) => format!("int (= {n})"),
                None => format!("int (= {d})"),
            },
            Ty::Int(None) => "int".into(),
            Ty::Float(_) => "float".into(),
            Ty::Bool(_) => "bool".into(),
            Ty::Str => "str".into(),
            Ty::Unit => "()".into(),
            Ty::Tensor(dt, dims, _) => ShapeFmt(*dt, dims).to_string(),
            Ty::Items(items) => {
                let inner: Vec<String> = items.iter().map(|t| self.show(t)).collect();
                format!("[{}]", inner.join(", "))
            }
            Ty::List(t) => format!("[{}]", self.show(t)),
            Ty::Range => "range".into(),
            Ty::Record(id) | Ty::Opaque(id) => self.p.items[*id].name.clone(),
            Ty::Item(id) => format!(
                "{} `{}`",
                self.p.items[*id].kind.word(),
                self.p.items[*id].name
            ),
            Ty::Layer(l) => format!("layer `{}(...)`", self.p.items[l.item].name),
            Ty::Net(id) => format!("net `{}`", self.p.items[*id].name),
            Ty::Any => "any".into(),
            Ty::Err => "{unknown}".into(),
        }
    }

    // ------------------------------------------------------------------ modules

    fn check_module(&mut self, m: usize, root: bool, nets: &mut Vec<NetInfo>) {
        let p = self.p;
        let module = &p.modules[m];
        let mut env = Env::new(m, false, false);
        for (index, item) in module.ast.items.iter().enumerate() {
            match &item.kind {
                ItemKind::Fn(f) => self.check_fn_generic(m, f),
                ItemKind::Layer(l) => self.check_layer_generic(m, l),
                ItemKind::Net(n) => {
                    let id = p
                        .items
                        .iter()
                        .position(|d| d.module == m && d.index == index);
                    let info = self.check_net(m, n);
                    if root && id.is_some() {
                        nets.push(info);
                    }
                }
                ItemKind::Rule(r) => self.check_rule(m, r),
                ItemKind::Record(r) => self.check_record(m, r),
                ItemKind::Stmt(s) => self.stmt(s, &mut env),
                ItemKind::Import(_) | ItemKind::ExternType(_) | ItemKind::Error => {}
            }
        }
    }

    /// A function has at most one derivative rule in the whole program (rules in one
    /// module are compared when the module's items are registered).
    fn duplicate_rules(&mut self) {
        let p = self.p;
        let mut first: HashMap<ItemId, (usize, Span)> = HashMap::new();
        // The standard library's rules come first: a user's second rule is the one flagged.
        let mut order: Vec<(usize, &super::names::ModuleData)> =
            p.modules.iter().enumerate().collect();
        order.sort_by_key(|(_, m)| !m.is_std);
        for (m, module) in order {
            for r in &module.rules {
                let def = &p.items[*r];
                let Some(primal) = p.lookup(m, &def.name) else {
                    continue;
                };
                match first.get(&primal) {
                    Some((pm, prev)) if *pm != m => {
                        self.report(
                            Diagnostic::error("E0407", format!("a second derivative rule for `{}`", def.name))
                                .primary(def.span, "second rule")
                                .secondary(*prev, "the rule in use is here")
                                .with_help("a function has exactly one rule: remove this one, or define a new function with its own rule"),
                        );
                    }
                    Some(_) => {}
                    None => {
                        first.insert(primal, (m, def.span));
                    }
                }
            }
        }
    }

    fn check_record(&mut self, m: usize, r: &RecordDecl) {
        let mut env = Env::new(m, false, false);
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for f in &r.fields {
            if let Some(prev) = seen.insert(&f.name.name, f.name.span) {
                self.report(
                    Diagnostic::error(
                        "E0103",
                        format!("field `{}` is declared twice", f.name.name),
                    )
                    .primary(f.name.span, "declared again here")
                    .secondary(prev, "first declared here"),
                );
            }
            let declared = f.ty.as_ref().map(|t| self.eval_type(&mut env, t));
            if let Some(t) = declared.as_ref()
                && let Ty::Record(id) = t
                && self.p.items[*id].name == r.name.name
            {
                self.report(
                    Diagnostic::error("E0104", format!("record `{}` contains itself", r.name.name))
                        .primary(f.span, "this field makes the record infinitely large")
                        .with_help("use a list `[T]` for a recursive structure"),
                );
            }
            if let Some(d) = &f.default {
                let v = self.expr(d, &mut env);
                if let Some(t) = declared {
                    self.expect_assignable(&t, &v, d.span, "this default");
                }
            }
        }
    }

    // ------------------------------------------------------------------ generic checks

    fn is_tensor_fn(&self, f: &FnDecl) -> bool {
        f.params.iter().chain(std::iter::empty()).any(|p| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            )
        }) || matches!(
            f.ret.as_ref().map(|t| &t.kind),
            Some(TypeKind::Tensor { .. })
        )
    }

    fn check_fn_generic(&mut self, m: usize, f: &FnDecl) {
        let tensor = self.is_tensor_fn(f);
        let mut env = Env::new(m, tensor, false);
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in &f.params {
            if let Some(prev) = seen.insert(&p.name.name, p.name.span) {
                self.report(
                    Diagnostic::error(
                        "E0103",
                        format!("parameter `{}` is declared twice", p.name.name),
                    )
                    .primary(p.name.span, "declared again here")
                    .secondary(prev, "first declared here"),
                );
            }
        }
        let params: Vec<&Param> = f.params.iter().collect();
        self.bind_symbolic(&mut env, &params);
        for w in &f.wheres {
            self.expr(w, &mut env);
        }
        let Some(body) = &f.body else {
            if let Some(t) = &f.ret {
                self.eval_type(&mut env, t);
            }
            return;
        };
        let ret = f.ret.as_ref().map(|t| self.eval_type(&mut env, t));
        env.ret = ret.clone();
        let got = self.block(body, &mut env);
        if let Some(ret) = ret {
            let span = body.tail().map(|e| e.span).unwrap_or(body.span);
            self.expect_result(&ret, &got, span, f.ret.as_ref().map(|t| t.span), &env);
        }
    }

    fn check_layer_generic(&mut self, m: usize, l: &LayerDecl) {
        let mut env = Env::new(m, true, false);
        env.layer = true;
        let params: Vec<&Param> = l.args.iter().chain([&l.input]).collect();
        self.bind_symbolic(&mut env, &params);
        for w in &l.wheres {
            self.expr(w, &mut env);
        }
        self.collectors.push(Collector::default());
        let out = self.block(&l.body, &mut env);
        self.collectors.pop();
        if let Some(t) = &l.ret {
            let ret = self.eval_type(&mut env, t);
            let span = l.body.tail().map(|e| e.span).unwrap_or(l.body.span);
            self.expect_result(&ret, &out, span, Some(t.span), &env);
        }
    }

    /// Binds stand-in values for parameters: first the non-tensor ones, then every dim
    /// variable of the tensor ones, then the tensors (whose dims may be expressions of both).
    pub(super) fn bind_symbolic(&mut self, env: &mut Env, params: &[&Param]) {
        let is_tensor = |p: &Param| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            )
        };
        for p in params.iter().filter(|p| !is_tensor(p)) {
            let v = self.symbolic_value(env, p);
            env.bind(&p.name.name, v, p.name.span, false);
        }
        for p in params.iter().filter(|p| is_tensor(p)) {
            if let Some(TypeKind::Tensor { dims, .. }) = p.ty.as_ref().map(|t| &t.kind) {
                for d in dims {
                    match &d.kind {
                        DimKind::Name(v) if env.get(v).is_none() => {
                            env.bind(v, Ty::Int(Some(Dim::sym(v))), d.span, false)
                        }
                        DimKind::Pack(s) if !env.packs.contains_key(s) => {
                            env.packs
                                .insert(s.clone(), vec![Dim::sym(&format!("{s}.0"))]);
                        }
                        _ => {}
                    }
                }
            }
        }
        for p in params.iter().filter(|p| is_tensor(p)) {
            let v = self.symbolic_value(env, p);
            env.bind(&p.name.name, v, p.name.span, false);
        }
    }

    /// A stand-in value for a parameter when checking a definition on its own: dims
    /// become variables named after the parameter.
    fn symbolic_value(&mut self, env: &mut Env, p: &Param) -> Ty {
        let Some(t) = &p.ty else {
            return match &p.default {
                Some(d) => {
                    let v = self.expr(d, env);
                    match v {
                        Ty::Int(_) => Ty::Int(Some(Dim::sym(&p.name.name))),
                        other => other,
                    }
                }
                None => Ty::Err,
            };
        };
        match &t.kind {
            TypeKind::Named(n) if (n.name == "int" || n.name == "dim") && !env.tensor => {
                Ty::Int(None)
            }
            TypeKind::Named(n) if n.name == "int" || n.name == "dim" => {
                Ty::Int(Some(Dim::sym(&p.name.name)))
            }
            // Axes are structure, not sizes: a generic check uses the default axis (and
            // the default of an `any`, which is how the primitives take axis lists).
            TypeKind::Named(n) if n.name == "axis" || (n.name == "any" && p.default.is_some()) => {
                match &p.default {
                    Some(d) => self.expr(d, env),
                    None => Ty::int(0),
                }
            }
            TypeKind::Named(n) if n.name == "fn" => Ty::Err,
            TypeKind::Named(n) if n.name == "bool" => Ty::Bool(None),
            TypeKind::Tensor { dtype, dims } => {
                let Some(dt) = DType::parse(&dtype.name) else {
                    return self.eval_type(env, t);
                };
                let mut out = Vec::new();
                for d in dims {
                    match &d.kind {
                        DimKind::Name(v) if env.get(v).is_none() => {
                            let sym = Dim::sym(v);
                            env.bind(v, Ty::Int(Some(sym.clone())), d.span, false);
                            out.push(sym);
                        }
                        DimKind::Pack(s) => {
                            let dims = env
                                .packs
                                .entry(s.clone())
                                .or_insert_with(|| vec![Dim::sym(&format!("{s}.0"))])
                                .clone();
                            out.extend(dims);
                        }
                        _ => match self.eval_dim(env, d) {
                            Some(x) => out.push(x),
                            None => return Ty::Err,
                        },
                    }
                }
                Ty::Tensor(dt, out, None)
            }
            _ => self.eval_type(env, t),
        }
    }

    // ------------------------------------------------------------------ types and dims

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
    fn dim_arith(&mut self, op: BinOp, a: &Dim, b: &Dim, span: Span, divisor: Span) -> Option<Dim> {
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
    pub(super) fn arith(
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
    pub(super) fn eval_type(&mut self, env: &mut Env, t: &TypeExpr) -> Ty {
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
                        self.note_ref(n.span, Target::Item(id));
                        Ty::Record(id)
                    }
                    Some((id, DefKind::ExternType)) => {
                        self.note_ref(n.span, Target::Item(id));
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

    pub(super) fn dims_equal(&self, a: &Dim, b: &Dim, strict: bool) -> bool {
        match a.compare(b) {
            Cmp::Equal => true,
            Cmp::Different => false,
            Cmp::Unknown => !strict,
        }
    }

    pub(super) fn shapes_equal(&self, a: &[Dim], b: &[Dim], strict: bool) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.dims_equal(x, y, strict))
    }

    /// Whether a value of type `got` can be used where `want` is expected.
    fn assignable(&self, want: &Ty, got: &Ty) -> bool {
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

    fn expect_assignable(&mut self, want: &Ty, got: &Ty, span: Span, what: &str) -> bool {
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
    fn expect_result(&mut self, want: &Ty, got: &Ty, span: Span, decl: Option<Span>, env: &Env) {
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

    // ------------------------------------------------------------------ statements

    pub(super) fn block(&mut self, b: &Block, env: &mut Env) -> Ty {
        env.scopes.push(HashMap::new());
        let mut last = Ty::Unit;
        for (i, s) in b.stmts.iter().enumerate() {
            if i + 1 == b.stmts.len()
                && let StmtKind::Expr(e) = &s.kind
            {
                last = self.expr(e, env);
                continue;
            }
            self.stmt(s, env);
        }
        env.scopes.pop();
        // A block that lost statements to a parse error has no meaningful value.
        if matches!(last, Ty::Unit) && b.stmts.iter().any(|s| matches!(s.kind, StmtKind::Error)) {
            return Ty::Err;
        }
        last
    }

    pub(super) fn stmt_in_rule(&mut self, s: &Stmt, env: &mut Env) {
        self.stmt(s, env)
    }

    fn stmt(&mut self, s: &Stmt, env: &mut Env) {
        match &s.kind {
            StmtKind::Let {
                name,
                ty,
                value,
                mutable,
            } => {
                if *mutable && env.tensor {
                    self.report(
                        Diagnostic::error("E0208", "`var` is host code; tensor code is pure")
                            .primary(s.span, "a mutable binding in tensor code")
                            .with_help("use `let` and a new name for each value"),
                    );
                }
                let v = self.expr(value, env);
                let v = match ty {
                    Some(t) => {
                        let want = self.eval_type(env, t);
                        if let (Ty::Tensor(..), Ty::Tensor(..)) = (&want, &v) {
                            self.expect_result(&want, &v, value.span, Some(t.span), env);
                            v
                        } else if self.expect_assignable(&want, &v, value.span, "this value") {
                            if matches!(want, Ty::Float(_)) {
                                Ty::Float(v.scalar())
                            } else {
                                v
                            }
                        } else {
                            want
                        }
                    }
                    None => v,
                };
                self.note_binding(name, &v);
                env.bind(&name.name, v, name.span, *mutable);
            }
            StmtKind::Assign { target, op, value } => self.assign(target, *op, value, s.span, env),
            StmtKind::Param {
                name,
                ty,
                init,
                cond,
            } => self.param_decl(name, ty, init.as_ref(), cond.as_ref(), s.span, env, false),
            StmtKind::State { name, ty, init } => {
                self.param_decl(name, ty, init.as_ref(), None, s.span, env, true)
            }
            StmtKind::For { var, iter, body } => {
                self.host_only(env, s.span, "`for` loops");
                let it = self.expr(iter, env);
                let elem = match it {
                    Ty::Range => Ty::Int(None),
                    Ty::List(t) => *t,
                    Ty::Items(items) => items.first().cloned().unwrap_or(Ty::Err),
                    Ty::Err | Ty::Any => Ty::Err,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error("E0201", format!("cannot iterate over {shown}"))
                                .primary(iter.span, "not a list or range")
                                .with_help("iterate over a range `0..n` or a list"),
                        );
                        Ty::Err
                    }
                };
                env.scopes.push(HashMap::new());
                env.bind(&var.name, elem, var.span, false);
                self.block(body, env);
                env.scopes.pop();
            }
            StmtKind::While { cond, body } => {
                self.host_only(env, s.span, "`while` loops");
                let c = self.expr(cond, env);
                self.expect_bool(&c, cond.span);
                self.block(body, env);
            }
            StmtKind::Return(v) => {
                let got = v.as_ref().map(|e| self.expr(e, env)).unwrap_or(Ty::Unit);
                if let Some(ret) = env.ret.clone() {
                    let span = v.as_ref().map(|e| e.span).unwrap_or(s.span);
                    self.expect_result(&ret, &got, span, None, env);
                }
            }
            StmtKind::Break | StmtKind::Continue => self.host_only(env, s.span, "loop control"),
            StmtKind::Expr(e) => {
                self.expr(e, env);
            }
            StmtKind::Error => {}
        }
    }

    fn host_only(&mut self, env: &Env, span: Span, what: &str) {
        if env.tensor {
            self.report(
                Diagnostic::error("E0208", format!("{what} are host code and cannot appear in tensor code"))
                    .primary(span, "in a tensor function or layer")
                    .with_help("tensor code is a pure expression of its inputs; use `repeat` in a net, or a host `fn`"),
            );
        }
    }

    fn expect_bool(&mut self, t: &Ty, span: Span) {
        if !matches!(t, Ty::Bool(_) | Ty::Err) {
            let shown = self.show(t);
            self.report(
                Diagnostic::error(
                    "E0209",
                    format!("a condition must be a bool, found {shown}"),
                )
                .primary(span, "not a bool"),
            );
        }
    }

    fn assign(
        &mut self,
        target: &Expr,
        op: Option<BinOp>,
        value: &Expr,
        span: Span,
        env: &mut Env,
    ) {
        let v = self.expr(value, env);
        match &target.kind {
            ExprKind::Name(n) => {
                let Some(local) = env.get(n).cloned() else {
                    self.expr(target, env);
                    return;
                };
                if env.tensor && !local.state {
                    self.report(
                        Diagnostic::error("E0208", format!("cannot assign to `{n}` in tensor code"))
                            .primary(span, "assignment")
                            .secondary(local.span, "declared here")
                            .with_help("only `state` (such as running statistics) is updated in tensor code; bind a new name with `let`"),
                    );
                    return;
                }
                if !env.tensor && !local.mutable {
                    self.report(
                        Diagnostic::error(
                            "E0206",
                            format!("cannot assign twice to immutable binding `{n}`"),
                        )
                        .primary(target.span, "assigned here")
                        .secondary(local.span, "declared with `let`")
                        .with_help(format!("declare it with `var {n}` to make it mutable")),
                    );
                    return;
                }
                let combined = match op {
                    Some(op) => self.binary(op, &local.ty, &v, target.span, value.span, span, env),
                    None => v,
                };
                if let (Ty::Tensor(_, _, old), Ty::Tensor(_, _, new)) = (&local.ty, &combined) {
                    self.expect_result(&local.ty, &combined, value.span, Some(local.span), env);
                    // A state update becomes an output of the lowered step.
                    if let (true, Some(old), Some(new), Some(l)) =
                        (local.state, old, new, self.lower.as_mut())
                    {
                        l.state_updates.push((*old, *new));
                    }
                } else {
                    self.expect_assignable(&local.ty, &combined, value.span, "the new value");
                }
            }
            ExprKind::Field { .. } | ExprKind::Index { .. } => {
                let t = self.expr(target, env);
                if env.tensor {
                    self.report(
                        Diagnostic::error("E0208", "cannot assign into a value in tensor code")
                            .primary(span, "assignment"),
                    );
                } else {
                    self.expect_assignable(&t, &v, value.span, "the new value");
                }
            }
            _ => {
                self.report(
                    Diagnostic::error("E0206", "cannot assign to this expression")
                        .primary(target.span, "not a variable, field or element"),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn param_decl(
        &mut self,
        name: &Ident,
        ty: &TypeExpr,
        init: Option<&Expr>,
        cond: Option<&Expr>,
        span: Span,
        env: &mut Env,
        state: bool,
    ) {
        let what = if state { "state" } else { "param" };
        if !env.layer {
            self.report(
                Diagnostic::error("E0208", format!("`{what}` belongs in a layer body"))
                    .primary(span, "outside a layer")
                    .with_help("declare parameters inside `layer name(...)(x: ...) { ... }`"),
            );
        }
        let mut t = self.eval_type(env, ty);
        if let Some(i) = init {
            self.expr(i, env);
        }
        let present = match cond {
            Some(c) => {
                let v = self.expr(c, env);
                self.expect_bool(&v, c.span);
                !matches!(v, Ty::Bool(Some(false)))
            }
            None => true,
        };
        if let Ty::Tensor(_, dims, _) = &t {
            if env.strict && present {
                if let Some(bad) = dims.iter().find(|d| d.as_const().is_none()) {
                    self.report(
                        Diagnostic::error("E0310", format!("the shape of {what} `{}` must be known, but a dim is `{bad}`", name.name))
                            .primary(ty.span, "this shape depends on the batch or an unknown value")
                            .with_help("parameter shapes may depend on layer arguments and input dims other than the batch `B`"),
                    );
                } else {
                    // While lowering, a parameter is a graph input; it is named by its place
                    // in the net when the net is done (see `check_net`).
                    let dims = dims.clone();
                    let kind = if state {
                        crate::ir::InputKind::State
                    } else {
                        crate::ir::InputKind::Param
                    };
                    let provisional = format!(
                        "{}#{}",
                        name.name,
                        self.lower
                            .as_ref()
                            .map(|l| l.graph.nodes.len())
                            .unwrap_or(0)
                    );
                    let dt = if let Ty::Tensor(dt, ..) = &t {
                        *dt
                    } else {
                        DType::F32
                    };
                    let v = self.emit(
                        Op::Input {
                            name: provisional,
                            kind,
                        },
                        &[],
                        dt,
                        &dims,
                    );
                    if let (Some(v), Some(i)) = (v, init) {
                        let spec = self.init_spec(i, env);
                        if let Some(l) = self.lower.as_mut() {
                            l.inits.push((v, spec));
                        }
                    }
                    t = Ty::Tensor(dt, dims.clone(), v);
                    if let Some(c) = self.collectors.last_mut() {
                        let list = if state { &mut c.states } else { &mut c.params };
                        list.push((name.name.clone(), dims, v));
                    }
                }
            }
        } else if !t.is_err() {
            let shown = self.show(&t);
            self.report(
                Diagnostic::error("E0201", format!("a {what} must be a tensor, found {shown}"))
                    .primary(ty.span, "not a tensor type"),
            );
        }
        if let Some(s) = env.scopes.last_mut() {
            s.insert(
                name.name.clone(),
                Local {
                    ty: t,
                    span: name.span,
                    mutable: false,
                    state,
                },
            );
        }
    }

    /// A parameter initializer's name and argument values (`he_normal(fan_in: 784)`), with
    /// the initializer's literal defaults for arguments not given.
    fn init_spec(&mut self, e: &Expr, env: &mut Env) -> super::lower::InitSpec {
        let (kind, args) = match &e.kind {
            ExprKind::Name(k) => (k.clone(), &[][..]),
            ExprKind::Call { callee, args } => match &callee.kind {
                ExprKind::Name(k) => (k.clone(), args.as_slice()),
                _ => (String::new(), &[][..]),
            },
            _ => (String::new(), &[][..]),
        };
        let decl = self.p.lookup(env.module, &kind).and_then(|id| {
            match self.p.item_ast(id).map(|i| &i.kind) {
                Some(ItemKind::Fn(f)) => Some(f.params.clone()),
                _ => None,
            }
        });
        let params = decl.unwrap_or_default();
        let mut out = Vec::new();
        for (i, a) in args.iter().enumerate() {
            let name = a
                .name
                .as_ref()
                .map(|n| n.name.clone())
                .or_else(|| params.get(i).map(|p| p.name.name.clone()))
                .unwrap_or_default();
            if let Some(v) = self.expr(&a.value, env).scalar() {
                out.push((name, v));
            }
        }
        for p in &params {
            if out.iter().any(|(n, _)| *n == p.name.name) {
                continue;
            }
            match p.default.as_ref().map(|d| &d.kind) {
                Some(ExprKind::Float(x)) => out.push((p.name.name.clone(), *x)),
                Some(ExprKind::Int(n)) => out.push((p.name.name.clone(), *n as f64)),
                _ => {}
            }
        }
        super::lower::InitSpec { kind, args: out }
    }

    // ------------------------------------------------------------------ expressions

    pub(super) fn expr(&mut self, e: &Expr, env: &mut Env) -> Ty {
        let outer = self.cur_span.replace(e.span);
        let t = self.expr_kind(e, env);
        self.cur_span = outer;
        if self.facts.is_some() && self.fact_files.contains(&e.span.file) && !matches!(t, Ty::Err) {
            let shown = self.show(&t);
            if let Some(f) = self.facts.as_mut() {
                f.types.push((e.span, shown));
            }
        }
        t
    }

    /// Records that the name at `span` refers to `target`.
    fn note_ref(&mut self, span: Span, target: Target) {
        if let Some(f) = self.facts.as_mut() {
            f.refs.push(Ref { span, target });
        }
    }

    /// Records a local binding's type (root files only).
    fn note_binding(&mut self, name: &Ident, t: &Ty) {
        if self.facts.is_none()
            || !self.fact_files.contains(&name.span.file)
            || matches!(t, Ty::Err)
        {
            return;
        }
        let shown = self.show(t);
        let record = match t {
            Ty::Record(id) => Some(*id),
            _ => None,
        };
        let tensor = matches!(t, Ty::Tensor(..));
        if let Some(f) = self.facts.as_mut() {
            f.bindings.push(Binding {
                name: name.name.clone(),
                span: name.span,
                ty: shown,
                record,
                tensor,
            });
        }
    }

    fn expr_kind(&mut self, e: &Expr, env: &mut Env) -> Ty {
        match &e.kind {
            ExprKind::Int(n) => Ty::int(*n),
            ExprKind::Float(x) => Ty::Float(Some(*x)),
            ExprKind::Bool(b) => Ty::Bool(Some(*b)),
            ExprKind::Str(parts) => {
                for p in parts {
                    if let StrPart::Interp(x, _) = p {
                        self.expr(x, env);
                    }
                }
                Ty::Str
            }
            ExprKind::Name(n) => self.name(n, e.span, env),
            ExprKind::Call { callee, args } => self.call_expr(callee, args, e.span, env),
            ExprKind::Field { base, name } => {
                let b = self.expr(base, env);
                self.field(&b, name, base.span)
            }
            ExprKind::Index { base, items } => {
                let b = self.expr(base, env);
                self.index(&b, items, base.span, e.span, env)
            }
            ExprKind::Transpose(base) => {
                let b = self.expr(base, env);
                match b {
                    Ty::Tensor(dt, mut dims, v) if dims.len() >= 2 => {
                        let n = dims.len();
                        dims.swap(n - 1, n - 2);
                        let mut perm: Vec<usize> = (0..n).collect();
                        perm.swap(n - 1, n - 2);
                        let v = self.emit(Op::Transpose { perm }, &[v], dt, &dims);
                        Ty::Tensor(dt, dims, v)
                    }
                    Ty::Err => Ty::Err,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error("E0301", format!("`.T` swaps the last two axes and needs a tensor of rank 2 or more, found {shown}"))
                                .primary(e.span, "here"),
                        );
                        Ty::Err
                    }
                }
            }
            ExprKind::Unary(op, x) => {
                let v = self.expr(x, env);
                match (op, v) {
                    (UnOp::Neg, Ty::Int(Some(d))) => {
                        match self.arith(d.neg(), e.span, || format!("`-({d})`")) {
                            Some(n) => Ty::Int(Some(n)),
                            None => Ty::Err,
                        }
                    }
                    (UnOp::Neg, Ty::Int(None)) => Ty::Int(None),
                    (UnOp::Neg, Ty::Float(v)) => Ty::Float(v.map(|x| -x)),
                    (UnOp::Neg, Ty::Err) => Ty::Err,
                    (UnOp::Neg, Ty::Tensor(dt, s, v))
                        if dt.is_float() || dt == DType::I32 || dt == DType::I64 =>
                    {
                        let v = self.emit_unary(Unary::Neg, v, dt, &s);
                        Ty::Tensor(dt, s, v)
                    }
                    (UnOp::Not, Ty::Bool(b)) => Ty::Bool(b.map(|b| !b)),
                    (UnOp::Not, t @ Ty::Tensor(DType::Bool, ..)) => {
                        let Ty::Tensor(_, s, _) = &t else {
                            return Ty::Err;
                        };
                        let s = s.clone();
                        let v = self.emit_compare(
                            Compare::Eq,
                            &t,
                            &Ty::Bool(Some(false)),
                            DType::Bool,
                            &s,
                        );
                        Ty::Tensor(DType::Bool, s, v)
                    }
                    (UnOp::Not, Ty::Err) => Ty::Err,
                    (op, other) => {
                        let shown = self.show(&other);
                        let sym = if *op == UnOp::Neg { "-" } else { "!" };
                        self.report(
                            Diagnostic::error("E0207", format!("cannot apply `{sym}` to {shown}"))
                                .primary(e.span, "here"),
                        );
                        Ty::Err
                    }
                }
            }
            ExprKind::Binary(op, a, b) => {
                let x = self.expr(a, env);
                let y = self.expr(b, env);
                self.binary(*op, &x, &y, a.span, b.span, e.span, env)
            }
            ExprKind::Pipe(a, f) => {
                let x = self.expr(a, env);
                self.apply(f, x, a.span, env)
            }
            ExprKind::If { cond, then, els } => {
                self.if_expr(cond, then, els.as_deref(), e.span, env)
            }
            ExprKind::Block(b) => self.block(b, env),
            ExprKind::Record { name, fields } => self.record_lit(name, fields, e.span, env),
            ExprKind::List(items) => Ty::Items(items.iter().map(|i| self.expr(i, env)).collect()),
            ExprKind::Range(a, b) => {
                for x in [a, b] {
                    let t = self.expr(x, env);
                    if !matches!(t, Ty::Int(_) | Ty::Err) {
                        let shown = self.show(&t);
                        self.report(
                            Diagnostic::error(
                                "E0201",
                                format!("a range bound must be an int, found {shown}"),
                            )
                            .primary(x.span, "here"),
                        );
                    }
                }
                Ty::Range
            }
            ExprKind::Error => Ty::Err,
        }
    }

    fn name(&mut self, n: &str, span: Span, env: &mut Env) -> Ty {
        if let Some(l) = env.get(n) {
            let (def, ty) = (l.span, l.ty.clone());
            self.note_ref(span, Target::Local(def));
            return ty;
        }
        if n == "training" {
            return Ty::Bool(self.mode().map(|m| m == crate::ir::Mode::Train));
        }
        let found = self.p.lookup(env.module, n);
        if let Some(id) = found {
            self.note_ref(span, Target::Item(id));
        }
        match found {
            Some(id) => match self.p.items[id].kind {
                DefKind::Net => Ty::Net(id),
                DefKind::Rule => Ty::Err,
                DefKind::ExternType => {
                    self.report(
                        Diagnostic::error("E0109", format!("`{n}` is a type, not a value"))
                            .primary(span, "used as a value"),
                    );
                    Ty::Err
                }
                _ => Ty::Item(id),
            },
            None => {
                let mut names: Vec<String> =
                    env.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
                names.extend(self.p.visible_names(env.module));
                let mut d = Diagnostic::error("E0101", format!("cannot find `{n}` in this scope"))
                    .primary(span, "not found");
                if let Some(s) = closest(n, names.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else if [
                    "dense",
                    "conv",
                    "relu",
                    "flatten",
                    "batchnorm",
                    "maxpool",
                    "layernorm",
                    "linear",
                ]
                .contains(&n)
                {
                    d = d.with_help("add `import std.nn.*`");
                } else if ["mnist", "fashion_mnist", "cifar10"].contains(&n) {
                    d = d.with_help(format!("add `import std.data.{n}`"));
                }
                self.report(d);
                Ty::Err
            }
        }
    }

    fn field(&mut self, base: &Ty, name: &Ident, base_span: Span) -> Ty {
        match base {
            Ty::Record(id) => {
                let Some(Item {
                    kind: ItemKind::Record(r),
                    ..
                }) = self.p.item_ast(*id)
                else {
                    return Ty::Err;
                };
                if let Some(f) = r.fields.iter().find(|f| f.name.name == name.name) {
                    self.note_ref(name.span, Target::Field(*id, name.name.clone()));
                    let module = self.p.items[*id].module;
                    let mut env = Env::new(module, false, false);
                    return match &f.ty {
                        Some(t) => self.eval_type(&mut env, t),
                        None => Ty::Err,
                    };
                }
                let mut d = Diagnostic::error(
                    "E0108",
                    format!("record `{}` has no field `{}`", r.name.name, name.name),
                )
                .primary(name.span, "unknown field");
                if let Some(s) = closest(&name.name, r.fields.iter().map(|f| f.name.name.as_str()))
                {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else {
                    let all: Vec<&str> = r.fields.iter().map(|f| f.name.name.as_str()).collect();
                    d = d.with_help(format!("its fields are: {}", all.join(", ")));
                }
                self.report(d);
                Ty::Err
            }
            Ty::Tensor(_, dims, _) if name.name == "shape" => {
                Ty::Items(dims.iter().map(|d| Ty::Int(Some(d.clone()))).collect())
            }
            Ty::Err | Ty::Any => Ty::Err,
            other => {
                let shown = self.show(other);
                self.report(
                    Diagnostic::error("E0108", format!("{shown} has no field `{}`", name.name))
                        .primary(name.span, "unknown field")
                        .secondary(base_span, format!("this is {shown}")),
                );
                Ty::Err
            }
        }
    }

    fn index(
        &mut self,
        base: &Ty,
        items: &[IndexItem],
        base_span: Span,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        match base {
            Ty::Tensor(dt, dims, v) => {
                if items.len() > dims.len() {
                    self.report(
                        Diagnostic::error(
                            "E0307",
                            format!(
                                "too many indices: {} for a tensor of rank {}",
                                items.len(),
                                dims.len()
                            ),
                        )
                        .primary(span, "here")
                        .secondary(base_span, format!("this is {}", ShapeFmt(*dt, dims))),
                    );
                    return Ty::Err;
                }
                let mut out = Vec::new();
                // While lowering: each index is a slice of length 1, dropped by a final reshape.
                let mut cur = *v;
                let mut full = dims.clone();
                let mut dropped = false;
                for (axis, (item, d)) in items.iter().zip(dims).enumerate() {
                    match item {
                        IndexItem::At(e) => {
                            let v = self.expr(e, env);
                            match v {
                                Ty::Int(Some(i)) => {
                                    self.check_bound(&i, d, axis, e.span, true);
                                    if let (Some(i), Some(n)) = (i.as_const(), d.as_const()) {
                                        let i = if i < 0 { i + n } else { i };
                                        full[axis] = Dim::konst(1);
                                        cur = self.emit(
                                            Op::Slice {
                                                axis,
                                                start: i as usize,
                                                end: i as usize + 1,
                                            },
                                            &[cur],
                                            *dt,
                                            &full,
                                        );
                                        dropped = true;
                                    }
                                }
                                Ty::Int(None) | Ty::Err => {}
                                other => {
                                    let shown = self.show(&other);
                                    self.report(
                                        Diagnostic::error(
                                            "E0201",
                                            format!("an index must be an int, found {shown}"),
                                        )
                                        .primary(e.span, "here"),
                                    );
                                }
                            }
                        }
                        IndexItem::Slice(a, b) => {
                            let lo = match a {
                                Some(a) => self.slice_bound(a, d, axis, env),
                                None => Some(Dim::konst(0)),
                            };
                            let hi = match b {
                                Some(b) => self.slice_bound(b, d, axis, env),
                                None => Some(d.clone()),
                            };
                            match (lo, hi) {
                                (Some(lo), Some(hi)) => {
                                    let Some(len) =
                                        self.arith(hi.sub(&lo), span, || format!("`{hi} - {lo}`"))
                                    else {
                                        return Ty::Err;
                                    };
                                    if len.as_const().is_some_and(|n| n < 0) {
                                        self.report(
                                            Diagnostic::error(
                                                "E0307",
                                                format!("empty slice: {lo}..{hi}"),
                                            )
                                            .primary(span, "here"),
                                        );
                                        return Ty::Err;
                                    }
                                    if len != *d
                                        && let (Some(a), Some(b)) = (lo.as_const(), hi.as_const())
                                    {
                                        full[axis] = len.clone();
                                        cur = self.emit(
                                            Op::Slice {
                                                axis,
                                                start: a as usize,
                                                end: b as usize,
                                            },
                                            &[cur],
                                            *dt,
                                            &full,
                                        );
                                    }
                                    out.push(len);
                                }
                                _ => return Ty::Err,
                            }
                        }
                    }
                }
                out.extend(dims[items.len()..].iter().cloned());
                if dropped {
                    cur = self.emit(Op::Reshape, &[cur], *dt, &out);
                }
                Ty::Tensor(*dt, out, cur)
            }
            Ty::List(t) => {
                for i in items {
                    if let IndexItem::At(e) = i {
                        self.expr(e, env);
                    }
                }
                (**t).clone()
            }
            Ty::Items(list) => match items.first() {
                Some(IndexItem::At(e)) => match self.expr(e, env).dim().and_then(Dim::as_const) {
                    Some(i) if i >= 0 && (i as usize) < list.len() => list[i as usize].clone(),
                    _ => list.first().cloned().unwrap_or(Ty::Err),
                },
                _ => Ty::Err,
            },
            Ty::Err | Ty::Any => Ty::Err,
            other => {
                let shown = self.show(other);
                self.report(
                    Diagnostic::error("E0201", format!("cannot index into {shown}"))
                        .primary(span, "here"),
                );
                Ty::Err
            }
        }
    }

    fn slice_bound(&mut self, e: &Expr, d: &Dim, axis: usize, env: &mut Env) -> Option<Dim> {
        match self.expr(e, env) {
            Ty::Int(Some(i)) => {
                let i = if i.as_const().is_some_and(|n| n < 0) {
                    self.arith(d.add(&i), e.span, || format!("`{d} + {i}`"))?
                } else {
                    i
                };
                self.check_bound(&i, d, axis, e.span, false);
                Some(i)
            }
            Ty::Err => None,
            other => {
                let shown = self.show(&other);
                self.report(
                    Diagnostic::error(
                        "E0310",
                        format!("a slice bound in tensor code must be a known int, found {shown}"),
                    )
                    .primary(e.span, "here"),
                );
                None
            }
        }
    }

    fn check_bound(&mut self, i: &Dim, d: &Dim, axis: usize, span: Span, exclusive: bool) {
        if let (Some(i), Some(n)) = (i.as_const(), d.as_const()) {
            let ok = if exclusive {
                i >= -n && i < n
            } else {
                i >= 0 && i <= n
            };
            if !ok {
                self.report(
                    Diagnostic::error(
                        "E0307",
                        format!("index {i} is out of range for axis {axis} of size {n}"),
                    )
                    .primary(span, "out of range"),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn binary(
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
    pub(super) fn broadcast(
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

    fn if_expr(
        &mut self,
        cond: &Expr,
        then: &Block,
        els: Option<&Expr>,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        let c = self.expr(cond, env);
        self.expect_bool(&c, cond.span);
        if env.tensor {
            match c {
                Ty::Bool(Some(true)) => return self.block(then, env),
                Ty::Bool(Some(false)) => return els.map(|e| self.expr(e, env)).unwrap_or(Ty::Unit),
                _ => {}
            }
        }
        let a = self.block(then, env);
        let Some(e) = els else { return Ty::Unit };
        let b = self.expr(e, env);
        match (&a, &b) {
            (Ty::Tensor(da, x, _), Ty::Tensor(db, y, _)) => {
                if da != db || x.len() != y.len() || (env.strict && !self.shapes_equal(x, y, true))
                {
                    self.report(
                        Diagnostic::error(
                            "E0312",
                            format!(
                                "the branches give different shapes: {} and {}",
                                ShapeFmt(*da, x),
                                ShapeFmt(*db, y)
                            ),
                        )
                        .primary(span, "this `if`")
                        .secondary(then.span, format!("{}", ShapeFmt(*da, x)))
                        .secondary(e.span, format!("{}", ShapeFmt(*db, y))),
                    );
                    return Ty::Err;
                }
                a
            }
            _ if self.assignable(&a, &b) => {
                if matches!(a, Ty::Int(_)) && matches!(b, Ty::Float(_)) {
                    b
                } else {
                    a
                }
            }
            _ if self.assignable(&b, &a) => b,
            _ => {
                let (x, y) = (self.show(&a), self.show(&b));
                self.report(
                    Diagnostic::error(
                        "E0201",
                        format!("`if` and `else` have different types: {x} and {y}"),
                    )
                    .primary(span, "this `if`")
                    .secondary(then.span, x)
                    .secondary(e.span, y),
                );
                Ty::Err
            }
        }
    }

    fn record_lit(
        &mut self,
        name: &Ident,
        fields: &[(Ident, Expr)],
        span: Span,
        env: &mut Env,
    ) -> Ty {
        let id = match self.p.lookup(env.module, &name.name) {
            Some(id) if self.p.items[id].kind == DefKind::Record => id,
            other => {
                for (_, e) in fields {
                    self.expr(e, env);
                }
                let mut d =
                    Diagnostic::error("E0107", format!("`{}` is not a record type", name.name))
                        .primary(name.span, "not a record");
                if other.is_none() {
                    let names = self.p.visible_names(env.module);
                    if let Some(s) = closest(&name.name, names.iter().map(String::as_str)) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                }
                self.report(d);
                return Ty::Err;
            }
        };
        self.note_ref(name.span, Target::Item(id));
        let Some(Item {
            kind: ItemKind::Record(r),
            ..
        }) = self.p.item_ast(id)
        else {
            return Ty::Err;
        };
        let module = self.p.items[id].module;
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for (f, e) in fields {
            let v = self.expr(e, env);
            if let Some(prev) = seen.insert(&f.name, f.span) {
                self.report(
                    Diagnostic::error("E0205", format!("field `{}` is given twice", f.name))
                        .primary(f.span, "given again here")
                        .secondary(prev, "first given here"),
                );
                continue;
            }
            match r.fields.iter().find(|d| d.name.name == f.name) {
                Some(decl) => {
                    self.note_ref(f.span, Target::Field(id, f.name.clone()));
                    if let Some(t) = &decl.ty {
                        let mut fenv = Env::new(module, false, false);
                        let want = self.eval_type(&mut fenv, t);
                        self.expect_assignable(&want, &v, e.span, &format!("field `{}`", f.name));
                    }
                }
                None => {
                    let mut d = Diagnostic::error(
                        "E0108",
                        format!("record `{}` has no field `{}`", r.name.name, f.name),
                    )
                    .primary(f.span, "unknown field");
                    if let Some(s) = closest(&f.name, r.fields.iter().map(|f| f.name.name.as_str()))
                    {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                    self.report(d);
                }
            }
        }
        let missing: Vec<&str> = r
            .fields
            .iter()
            .filter(|d| d.default.is_none() && !seen.contains_key(d.name.name.as_str()))
            .map(|d| d.name.name.as_str())
            .collect();
        if !missing.is_empty() {
            self.report(
                Diagnostic::error(
                    "E0203",
                    format!(
                        "missing field{} {} in `{}`",
                        if missing.len() > 1 { "s" } else { "" },
                        missing
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.name.name
                    ),
                )
                .primary(span, "this record")
                .secondary(r.name.span, "declared here"),
            );
        }
        Ty::Record(id)
    }

    // ------------------------------------------------------------------ calls

    fn eval_args(&mut self, args: &[Arg], env: &mut Env) -> Vec<ArgV> {
        args.iter()
            .map(|a| ArgV {
                name: a.name.as_ref().map(|n| n.name.clone()),
                ty: self.expr(&a.value, env),
                span: a.value.span,
            })
            .collect()
    }

    fn call_expr(&mut self, callee: &Expr, args: &[Arg], span: Span, env: &mut Env) -> Ty {
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
    fn bind_args(
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

    fn where_clauses(&mut self, callee: &str, wheres: &[Expr], env: &mut Env, span: Span) -> bool {
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

    fn call_fn(&mut self, id: ItemId, args: &[ArgV], span: Span, env: &mut Env) -> Ty {
        let p = self.p;
        let Some(Item {
            kind: ItemKind::Fn(f),
            ..
        }) = p.item_ast(id)
        else {
            return Ty::Err;
        };
        let name = f.name.name.clone();
        let Some(bound) = self.bind_args(&name, &f.params, args, span) else {
            return self.fallback_result(f, env);
        };
        let module = p.items[id].module;
        let tensor = self.is_tensor_fn(f);
        // A tensor argument already reported as wrong: the call's shapes cannot be known,
        // and checking them would only report the same error again.
        let poisoned = f.params.iter().zip(&bound).any(|(p, a)| {
            matches!(
                p.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            ) && a.as_ref().is_some_and(|a| matches!(a.ty, Ty::Err))
        });
        if poisoned {
            return self.fallback_result(f, env);
        }
        if f.body.is_none()
            && p.modules[module].is_std
            && let Some(t) = prims::apply(self, &name, &f.params, &bound, span, env)
        {
            return t;
        }
        let mut callee = Env::new(module, tensor || env.tensor, env.strict);
        let mut deferred = Vec::new();
        let mut ok = true;
        for (param, arg) in f.params.iter().zip(&bound) {
            let (v, vspan) = match arg {
                Some(a) => (a.ty.clone(), a.span),
                None => match &param.default {
                    Some(d) => (self.expr(d, &mut callee), span),
                    None => (Ty::Err, span),
                },
            };
            ok &= self.bind_param(&name, &mut callee, param, v, vspan, None, &mut deferred);
        }
        ok &= self.check_deferred(&name, &mut callee, deferred);
        if !ok || !self.where_clauses(&name, &f.wheres, &mut callee, span) {
            return Ty::Err;
        }
        let declared = f.ret.as_ref().map(|t| self.eval_type(&mut callee, t));
        match (&f.body, tensor) {
            (Some(body), true) => {
                let key = format!(
                    "fn{id}|{}|{}",
                    callee.strict,
                    self.env_key(&callee, f.params.iter().map(|p| p.name.name.as_str()))
                );
                let start = self.lower.as_ref().map(|l| l.graph.nodes.len());
                let inputs: Vec<Val> = bound
                    .iter()
                    .flatten()
                    .filter_map(|a| match &a.ty {
                        Ty::Tensor(_, _, v) => Some(*v),
                        _ => None,
                    })
                    .collect();
                let out = self.instantiate(id, key, span, |cx| {
                    let got = cx.block(body, &mut callee);
                    if let Some(want) = &declared {
                        let tail = body.tail().map(|e| e.span).unwrap_or(body.span);
                        cx.expect_result(want, &got, tail, f.ret.as_ref().map(|t| t.span), &callee);
                        with_value(want, &got)
                    } else {
                        got
                    }
                });
                let attrs: Vec<(String, Ty)> = f
                    .params
                    .iter()
                    .filter_map(|p| {
                        callee
                            .get(&p.name.name)
                            .map(|l| (p.name.name.clone(), l.ty.clone()))
                    })
                    .collect();
                self.mark_composite(&name, start, &inputs, &attrs, &out);
                out
            }
            _ => {
                let mut out = declared.unwrap_or(Ty::Unit);
                if f.body.is_none() {
                    if let Some(m) = prims::count_macs(&name, &f.params, &bound, &out) {
                        self.add_macs(m);
                    }
                    if self.lowering() {
                        let attr = |n: &str| callee.get(n).map(|l| l.ty.clone());
                        let v = prims::lower_extern(self, &name, &f.params, &bound, &attr, &out);
                        if let Ty::Tensor(_, _, slot) = &mut out {
                            *slot = v;
                        }
                    }
                }
                out
            }
        }
    }

    fn fallback_result(&mut self, f: &FnDecl, env: &Env) -> Ty {
        match &f.ret {
            Some(TypeExpr {
                kind: TypeKind::Named(n),
                ..
            }) if !matches!(n.name.as_str(), "int" | "dim") => {
                let mut e = Env::new(env.module, false, false);
                let t = f
                    .ret
                    .as_ref()
                    .map(|t| self.eval_type(&mut e, t))
                    .unwrap_or(Ty::Err);
                if matches!(
                    t,
                    Ty::Record(_) | Ty::Opaque(_) | Ty::Float(_) | Ty::Str | Ty::Bool(_)
                ) {
                    t
                } else {
                    Ty::Err
                }
            }
            _ => Ty::Err,
        }
    }

    /// A stable text key of the values bound in `env` for the given names.
    fn env_key<'n>(&self, env: &Env, names: impl Iterator<Item = &'n str>) -> String {
        let mut key = String::new();
        for n in names {
            let shown = env.get(n).map(|l| match &l.ty {
                Ty::Item(id) => format!("item{id}"),
                Ty::Layer(lv) => format!(
                    "layer{}({:?})",
                    lv.item,
                    lv.args
                        .iter()
                        .map(|a| (a.0.clone(), self.show(&a.1)))
                        .collect::<Vec<_>>()
                ),
                t => self.show(t),
            });
            key.push_str(&format!("{n}={shown:?};"));
        }
        key
    }

    /// Runs `body` as an instantiation of item `id`, with cycle detection and a cache, and
    /// adds the parameters and work it collects to the enclosing collector.
    fn instantiate(
        &mut self,
        id: ItemId,
        key: String,
        span: Span,
        body: impl FnOnce(&mut Self) -> Ty,
    ) -> Ty {
        let inst = match self.cache.get(&key) {
            Some(i) => i.clone(),
            None => {
                if self.stack.contains(&id) {
                    let name = self.p.items[id].name.clone();
                    let chain: Vec<String> = self
                        .stack
                        .iter()
                        .skip_while(|s| **s != id)
                        .map(|s| self.p.items[*s].name.clone())
                        .collect();
                    let mut members: Vec<ItemId> = self
                        .stack
                        .iter()
                        .skip_while(|s| **s != id)
                        .copied()
                        .collect();
                    members.sort();
                    if !self.cycles.insert(members) {
                        return Ty::Err;
                    }
                    self.report(
                        Diagnostic::error("E0104", format!("`{name}` is defined in terms of itself: {} -> {name}", chain.join(" -> ")))
                            .primary(span, "this use closes the cycle")
                            .secondary(self.p.items[id].span, "defined here")
                            .with_help("tensor code is expanded at compile time, so a layer or tensor function cannot use itself"),
                    );
                    return Ty::Err;
                }
                if self.stack.len() > 64 {
                    return Ty::Err;
                }
                self.stack.push(id);
                self.use_sites.push(span);
                self.collectors.push(Collector::default());
                let out = body(self);
                let c = self.collectors.pop().unwrap_or_default();
                self.use_sites.pop();
                self.stack.pop();
                let inst = Inst {
                    out,
                    params: c.params,
                    states: c.states,
                    macs: c.macs,
                };
                if !self.lowering() {
                    self.cache.insert(key, inst.clone());
                }
                inst
            }
        };
        let name = self.p.items[id].name.clone();
        if let Some(parent) = self.collectors.last_mut() {
            let prefix = if inst.params.is_empty() && inst.states.is_empty() {
                String::new()
            } else {
                let p = format!("{name}{}", parent.sub);
                parent.sub += 1;
                p
            };
            for (n, d, v) in inst.params.iter() {
                parent.params.push((
                    if prefix.is_empty() {
                        n.clone()
                    } else {
                        format!("{prefix}.{n}")
                    },
                    d.clone(),
                    *v,
                ));
            }
            for (n, d, v) in inst.states.iter() {
                parent.states.push((
                    if prefix.is_empty() {
                        n.clone()
                    } else {
                        format!("{prefix}.{n}")
                    },
                    d.clone(),
                    *v,
                ));
            }
            parent.macs = parent.macs.saturating_add(&inst.macs);
        }
        inst.out
    }

    pub(super) fn add_macs(&mut self, m: Dim) {
        if let Some(c) = self.collectors.last_mut() {
            c.macs = c.macs.saturating_add(&m);
        }
    }

    /// Applies a configured layer to its input.
    fn apply_layer(
        &mut self,
        lv: &LayerValue,
        input: Ty,
        origin: Span,
        span: Span,
        env: &mut Env,
    ) -> Ty {
        let p = self.p;
        let Some(Item {
            kind: ItemKind::Layer(l),
            ..
        }) = p.item_ast(lv.item)
        else {
            return Ty::Err;
        };
        let name = l.name.name.clone();
        let args: Vec<ArgV> = lv
            .args
            .iter()
            .map(|(n, t, s)| ArgV {
                name: n.clone(),
                ty: t.clone(),
                span: *s,
            })
            .collect();
        let Some(bound) = self.bind_args(&name, &l.args, &args, span) else {
            return Ty::Err;
        };
        let mut callee = Env::new(p.items[lv.item].module, true, env.strict);
        callee.layer = true;
        let mut deferred = Vec::new();
        let mut ok = true;
        for (param, arg) in l.args.iter().zip(&bound) {
            let (v, vspan) = match arg {
                Some(a) => (a.ty.clone(), a.span),
                None => match &param.default {
                    Some(d) => (self.expr(d, &mut callee), span),
                    None => (Ty::Err, span),
                },
            };
            ok &= self.bind_param(&name, &mut callee, param, v, vspan, None, &mut deferred);
        }
        ok &= self.bind_param(
            &name,
            &mut callee,
            &l.input,
            input,
            span,
            Some(origin),
            &mut deferred,
        );
        ok &= self.check_deferred(&name, &mut callee, deferred);
        if !ok || !self.where_clauses(&name, &l.wheres, &mut callee, span) {
            return Ty::Err;
        }
        let names: Vec<&str> = l
            .args
            .iter()
            .map(|p| p.name.name.as_str())
            .chain([l.input.name.name.as_str()])
            .collect();
        let key = format!(
            "layer{}|{}|{}",
            lv.item,
            callee.strict,
            self.env_key(&callee, names.into_iter())
        );
        let declared = l.ret.as_ref().map(|t| self.eval_type(&mut callee, t));
        self.instantiate(lv.item, key, span, |cx| {
            let got = match cx.block(&l.body, &mut callee) {
                Ty::Unit => Ty::Err,
                t => t,
            };
            match declared {
                Some(want) => {
                    let tail = l.body.tail().map(|e| e.span).unwrap_or(l.body.span);
                    cx.expect_result(&want, &got, tail, l.ret.as_ref().map(|t| t.span), &callee);
                    if got.is_err() {
                        got
                    } else {
                        with_value(&want, &got)
                    }
                }
                None => got,
            }
        })
    }

    /// `x |> f`: a layer (configured or not) or a function applied to the running value.
    pub(super) fn apply(&mut self, f: &Expr, x: Ty, origin: Span, env: &mut Env) -> Ty {
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

    // ------------------------------------------------------------------ nets

    fn check_net(&mut self, m: usize, n: &NetDecl) -> NetInfo {
        let mut env = Env::new(m, true, true);
        let batch = match self.lower.as_ref().and_then(|l| l.batch) {
            Some(b) => Dim::konst(b),
            None => Dim::sym("B"),
        };
        let with_batch = |cx: &mut Self, env: &mut Env, t: &TypeExpr| -> Ty {
            match cx.eval_type(env, t) {
                Ty::Tensor(dt, mut dims, _) => {
                    dims.insert(0, batch.clone());
                    Ty::Tensor(dt, dims, None)
                }
                Ty::Err => Ty::Err,
                other => {
                    let shown = cx.show(&other);
                    cx.report(
                        Diagnostic::error(
                            "E0201",
                            format!("a net's input and output are tensors, found {shown}"),
                        )
                        .primary(t.span, "not a tensor type"),
                    );
                    Ty::Err
                }
            }
        };
        let input = match with_batch(self, &mut env, &n.input) {
            Ty::Tensor(dt, mut dims, _) => {
                if let Some(shape) = self.lower.as_ref().and_then(|l| l.input.clone()) {
                    dims.truncate(1);
                    dims.extend(shape.iter().map(|d| Dim::konst(*d as i64)));
                }
                let v = self.emit(
                    Op::Input {
                        name: "x".into(),
                        kind: crate::ir::InputKind::Data,
                    },
                    &[],
                    dt,
                    &dims,
                );
                Ty::Tensor(dt, dims, v)
            }
            other => other,
        };
        let output = with_batch(self, &mut env, &n.output);
        let mut info = NetInfo {
            name: n.name.name.clone(),
            span: n.name.span,
            input: self.show(&input),
            output: self.show(&output),
            stages: vec![],
            params: 0,
            state: 0,
            macs: 0,
            param_names: vec![],
            ok: true,
        };
        let mut x = input;
        let mut origin = n.input.span;
        let mut names = Vec::new();
        for (i, stage) in n.stages.iter().enumerate() {
            let label = stage
                .label
                .as_ref()
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("layers.{i}"));
            self.collectors.push(Collector::default());
            x = self.stage(stage, x, origin, &mut env);
            let c = strip_single(self.collectors.pop().unwrap_or_default());
            let count = |list: &[(String, Vec<Dim>, Val)]| {
                list.iter()
                    .map(|(_, d, _)| per_example(&numel(d)))
                    .sum::<u64>()
            };
            let (params, state) = (count(&c.params), count(&c.states));
            for (pn, d, _) in &c.params {
                names.push((
                    format!("{label}.{pn}"),
                    d.iter()
                        .map(|x| x.as_const().unwrap_or(0).max(0) as u64)
                        .collect(),
                ));
            }
            self.name_inputs(&label, &c.params, &c.states);
            let macs = per_example(&c.macs);
            info.params += params;
            info.state += state;
            info.macs += macs;
            info.stages.push(StageInfo {
                span: stage.span,
                output: self.show(&x),
                params,
                state,
                macs,
            });
            origin = stage.span;
        }
        info.param_names = names;
        self.last_net_output = Some(x.clone());
        match (&x, &output) {
            (Ty::Err, _) | (_, Ty::Err) => info.ok = false,
            (Ty::Tensor(da, a, _), Ty::Tensor(db, b, _))
                if da == db && self.shapes_equal(a, b, true) => {}
            _ => {
                info.ok = false;
                let (got, want) = (self.show(&x), self.show(&output));
                let mut d = Diagnostic::error(
                    "E0308",
                    format!(
                        "`{}` must output {want}, but its last stage gives {got}",
                        n.name.name
                    ),
                )
                .primary(origin, format!("this gives {got}"))
                .secondary(n.output.span, "declared output");
                if let (Ty::Tensor(_, a, _), Ty::Tensor(_, b, _)) = (&x, &output) {
                    if a.len() > b.len() && b.len() == 2 {
                        d = d.with_help(
                            "end with `global_avg_pool` or `flatten` and a `dense` layer",
                        );
                    } else if a.len() == b.len() {
                        d = d.with_help(format!(
                            "end with `dense({})`",
                            b.last().map(|d| d.to_string()).unwrap_or_default()
                        ));
                    }
                }
                self.report(d);
            }
        }
        info
    }

    fn stage(&mut self, s: &Stage, x: Ty, origin: Span, env: &mut Env) -> Ty {
        match &s.kind {
            StageKind::Apply(e) => self.apply(e, x, origin, env),
            StageKind::Repeat { count, body } => {
                let n = match self.expr(count, env) {
                    Ty::Int(Some(d)) => match d.as_const() {
                        Some(n) if n >= 0 => n,
                        _ => {
                            self.report(
                                Diagnostic::error(
                                    "E0310",
                                    format!("`repeat` needs a known non-negative count, found {d}"),
                                )
                                .primary(count.span, "here"),
                            );
                            return Ty::Err;
                        }
                    },
                    Ty::Err => return Ty::Err,
                    other => {
                        let shown = self.show(&other);
                        self.report(
                            Diagnostic::error(
                                "E0201",
                                format!("`repeat` needs an int count, found {shown}"),
                            )
                            .primary(count.span, "here"),
                        );
                        return Ty::Err;
                    }
                };
                let mut x = x;
                let mut origin = origin;
                for r in 0..n {
                    for (j, st) in body.iter().enumerate() {
                        if let Some(c) = self.collectors.last_mut() {
                            c.sub = 0;
                        }
                        self.collectors.push(Collector::default());
                        x = self.stage(st, x, origin, env);
                        let c = strip_single(self.collectors.pop().unwrap_or_default());
                        let prefix = if body.len() == 1 {
                            format!("{r}")
                        } else {
                            format!("{r}.{j}")
                        };
                        if let Some(parent) = self.collectors.last_mut() {
                            parent.params.extend(
                                c.params
                                    .into_iter()
                                    .map(|(n, d, v)| (format!("{prefix}.{n}"), d, v)),
                            );
                            parent.states.extend(
                                c.states
                                    .into_iter()
                                    .map(|(n, d, v)| (format!("{prefix}.{n}"), d, v)),
                            );
                            parent.macs = parent.macs.saturating_add(&c.macs);
                        }
                        origin = st.span;
                    }
                }
                x
            }
            StageKind::Error => Ty::Err,
        }
    }

    // ------------------------------------------------------------------ rules

    /// Instantiates the rule of `primal` at concrete tensors (while lowering): binds the
    /// primal's parameters to `inputs` (tensor parameters, in order) and `attrs`, the
    /// rule's names to them, `dy` to the cotangent, and evaluates the rule's body. Returns
    /// the gradient of each tensor input, `None` where the rule gives none.
    pub(super) fn instantiate_rule(
        &mut self,
        primal: &str,
        inputs: &[Ty],
        attrs: &[(String, Ty)],
        y: Ty,
        dy: Ty,
    ) -> Result<Vec<Option<Val>>, String> {
        let p = self.p;
        let rid = self
            .rule_for(primal)
            .ok_or_else(|| format!("no derivative rule for `{primal}`"))?;
        let m = p.items[rid].module;
        let Some(Item {
            kind: ItemKind::Rule(rule),
            ..
        }) = p.item_ast(rid)
        else {
            return Err("not a rule".into());
        };
        let fid = p
            .lookup(m, primal)
            .ok_or_else(|| format!("no function `{primal}`"))?;
        let Some(Item {
            kind: ItemKind::Fn(f),
            ..
        }) = p.item_ast(fid)
        else {
            return Err(format!("`{primal}` is not a function"));
        };
        let mut env = Env::new(m, true, true);
        let mut deferred = Vec::new();
        let mut next = 0;
        let span = p.items[rid].span;
        for prm in &f.params {
            let is_tensor = matches!(
                prm.ty.as_ref().map(|t| &t.kind),
                Some(TypeKind::Tensor { .. })
            );
            let v = if is_tensor {
                next += 1;
                inputs
                    .get(next - 1)
                    .cloned()
                    .ok_or("too few inputs for the rule")?
            } else if let Some((_, t)) = attrs.iter().find(|(n, _)| *n == prm.name.name) {
                t.clone()
            } else if let Some(d) = &prm.default {
                self.expr(d, &mut env)
            } else {
                return Err(format!(
                    "attribute `{}` of `{primal}` is not given",
                    prm.name.name
                ));
            };
            self.bind_param(primal, &mut env, prm, v, span, None, &mut deferred);
        }
        self.check_deferred(primal, &mut env, deferred);
        for (local, t) in rule.inputs.iter().zip(inputs) {
            env.bind(&local.name, t.clone(), local.span, false);
        }
        if let Some(yn) = &rule.output {
            env.bind(&yn.name, y, yn.span, false);
        }
        env.bind("dy", dy, span, false);
        let mut grads: HashMap<String, Ty> = HashMap::new();
        self.collectors.push(Collector::default());
        for s in &rule.body.stmts {
            match &s.kind {
                StmtKind::Assign {
                    target:
                        Expr {
                            kind: ExprKind::Name(dn),
                            ..
                        },
                    op: None,
                    value,
                } => {
                    let v = self.expr(value, &mut env);
                    grads.insert(dn.clone(), v);
                }
                _ => self.stmt(s, &mut env),
            }
        }
        self.collectors.pop();
        if let Some(d) = self.diags.iter().find(|d| d.is_error()) {
            return Err(format!(
                "the rule for `{primal}` does not apply here: {}",
                d.message
            ));
        }
        Ok(rule
            .inputs
            .iter()
            .map(|l| match grads.get(&format!("d{}", l.name)) {
                Some(Ty::Tensor(_, _, v)) => Some(*v),
                _ => None,
            })
            .collect())
    }

    pub(super) fn rule_env(&mut self, module: usize) -> Env {
        Env::new(module, true, true)
    }

    pub(super) fn bind_local(&mut self, env: &mut Env, name: &str, ty: Ty, span: Span) {
        env.bind(name, ty, span, false);
    }

    pub(super) fn local_ty(&self, env: &Env, name: &str) -> Option<Ty> {
        env.get(name).map(|l| l.ty.clone())
    }

    pub(super) fn call_for_rule(
        &mut self,
        id: ItemId,
        args: &[ArgV],
        span: Span,
        env: &mut Env,
    ) -> Ty {
        self.collectors.push(Collector::default());
        let out = self.call_fn(id, args, span, env);
        self.collectors.pop();
        out
    }

    pub(super) fn with_collector<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.collectors.push(Collector::default());
        let out = f(self);
        self.collectors.pop();
        out
    }
}

/// The declared type, carrying the IR value computed for it.
fn with_value(want: &Ty, got: &Ty) -> Ty {
    match (want, got) {
        (Ty::Tensor(dt, d, _), Ty::Tensor(_, _, v)) => Ty::Tensor(*dt, d.clone(), *v),
        _ => want.clone(),
    }
}

/// A stage that is one layer names its parameters by the stage (`layers.1.w`), not by the
/// layer inside it (`layers.1.dense0.w`).
fn strip_single(mut c: Collector) -> Collector {
    if c.sub == 1 {
        let strip = |n: &mut String| {
            if let Some(i) = n.find('.') {
                *n = n[i + 1..].to_string();
            }
        };
        c.params.iter_mut().for_each(|(n, _, _)| strip(n));
        c.states.iter_mut().for_each(|(n, _, _)| strip(n));
    }
    c
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
