//! The evaluator: walks host and tensor code, computing types (host) and shapes (tensor),
//! instantiating layers and tensor functions at each distinct use, and collecting every
//! net's per-stage shapes, parameters and multiply-adds.
//!
//! Checking and lowering are one walk. Run with concrete arguments, a fixed batch and a
//! [`Lowering`], the same code that checks a net emits its IR as it evaluates (every
//! tensor value carries its IR value, [`Ty::Tensor`]'s last field; see `lower.rs`), so
//! the IR is exactly what was checked and there is no second evaluator to keep in step.
//! Editor facts are recorded by the same walk, when asked.
//!
//! [`Cx`] holds the walk's state (here, with the entry points and reporting); each file
//! below adds one `impl Cx` block for one concern:
//!
//! - `items`: the items of a module; records; the generic checks of functions and layers
//!   with stand-in (symbolic) arguments.
//! - `dims`: written types and dims, checked compile-time arithmetic, comparing dims,
//!   shapes and types.
//! - `stmts`: blocks and statements, assignment, `param` and `state` declarations.
//! - `exprs`: expressions (names, fields, indexing, `if`, record literals).
//! - `ops`: binary operators and broadcasting.
//! - `calls`: calls, pipes, and binding arguments to parameters.
//! - `instantiate`: expanding a tensor function or layer at a use; the instance cache,
//!   keyed by `InstKey`, and cycle detection.
//! - `nets`: nets and their stages.
//! - `rules`: instantiating a derivative rule at concrete values (for AD).
//!
//! Beside this module, `prims.rs` holds the shape rules of primitives that a signature
//! cannot state, `lower.rs` the IR helpers and lowering entry points, `rules.rs` the
//! checks of derivative rules, and `facts.rs` what editors are told.

use std::collections::{HashMap, HashSet};

use super::dim::Dim;
use super::facts::Facts;
use super::lower::Lowering;
use super::names::{ItemId, Program};
use super::ty::{ShapeFmt, Ty, Val};
use crate::diag::Diagnostic;
use crate::span::Span;
use crate::syntax::ast::*;

mod calls;
mod dims;
mod exprs;
mod instantiate;
mod items;
mod nets;
mod ops;
mod rules;
mod stmts;

use instantiate::InstKey;

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
    cache: HashMap<InstKey, Inst>,
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
}
