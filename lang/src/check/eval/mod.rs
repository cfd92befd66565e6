//! The evaluator: walks host and tensor code, computing types (host) and shapes (tensor),
//! instantiating layers and tensor functions at each distinct use, and collecting every
//! net's per-stage shapes, parameters and multiply-adds.
//!
//! Checking and lowering are one walk. Run with concrete arguments, a fixed batch and a
//! [`Lowering`](super::lower::Lowering), the same code that checks a net emits its IR as
//! it evaluates (every tensor value carries its IR value, [`Ty::Tensor`]'s last field), so
//! the IR is exactly what was checked and there is no second evaluator to keep in step.
//! Editor facts are recorded by the same walk.
//!
//! Both are sinks the walk writes to, unconditionally: IR to an [`IrSink`], facts to a
//! [`FactSink`]. A plain check writes to [`NoIr`] and [`NoFacts`], which keep nothing
//! (and `NoIr` gives no IR values, so tensor values carry none), so the walk never asks
//! which case it is in; it asks [`Cx::lowering`] only to skip work whose result nothing
//! would read, and to keep the instance cache off while lowering (each use must emit its
//! own nodes).
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
//! - `calls`: calls, pipes, and binding arguments to parameters (`bind_args`, then
//!   `bind_params`, the one binding of functions, layers and derivative rules).
//! - `instantiate`: expanding a tensor function or layer at a use; the instance cache,
//!   keyed by `InstKey`, and cycle detection.
//! - `nets`: nets and their stages.
//! - `rules`: instantiating a derivative rule at concrete values (for AD).
//!
//! Beside this module, `prims.rs` holds the shape rules of primitives that a signature
//! cannot state, `lower.rs` the IR sink, helpers and lowering entry points, `rules.rs` the
//! checks of derivative rules, and `facts.rs` the facts sink and what editors are told.

use std::collections::{HashMap, HashSet};

use super::dim::Dim;
use super::facts::{FactSink, Facts, NoFacts, Recorder};
use super::lower::{IrSink, NoIr};
use super::names::{ItemId, Program};
use super::ty::{ShapeFmt, Ty, Val};
use crate::diag::Diagnostic;
use crate::span::Span;

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
    /// Parameter names (PyTorch's, see `nets.rs`) and shapes, in order.
    pub param_names: Vec<(String, Vec<u64>)>,
    /// State names (batchnorm's running statistics) and shapes, in order.
    pub state_names: Vec<(String, Vec<u64>)>,
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

/// What one module (a layer instance, a stage, a group) declares: its parameters and
/// state under their names relative to it, and its multiply-adds.
#[derive(Default, Clone)]
struct Collector {
    params: Vec<(String, Vec<Dim>, Val)>,
    states: Vec<(String, Vec<Dim>, Val)>,
    macs: Dim,
    /// Unlabelled sublayers with parameters so far: the next one is `{layer}{sub}`.
    sub: usize,
    /// Whether a labelled sublayer added names (then no name is stripped: see `nets.rs`).
    labelled: bool,
}

impl Collector {
    /// Adds a parameter (or state) named `name`; `Err` when the module already has that
    /// name, which a label used twice (or a `self` label) can cause.
    fn add(&mut self, state: bool, name: String, dims: Vec<Dim>, v: Val) -> Result<(), String> {
        if self
            .params
            .iter()
            .chain(&self.states)
            .any(|(n, _, _)| *n == name)
        {
            return Err(name);
        }
        let list = if state {
            &mut self.states
        } else {
            &mut self.params
        };
        list.push((name, dims, v));
        Ok(())
    }
}

/// A label waiting for the layer application it names (`x |> conv1: conv(64, 3)`).
struct PendingLabel {
    /// The module name; empty for `self`.
    name: String,
    span: Span,
    /// The span of the application that takes it.
    target: Span,
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
    label: Option<PendingLabel>,
    /// Inside a layer's generic check, where its int arguments are symbols: a label's
    /// `{…}` is known only per use, so it is checked there.
    generic: bool,
    cycles: HashSet<Vec<ItemId>>,
    /// Where lowered IR goes: [`NoIr`] unless lowering (see `lower.rs`).
    pub(super) ir: &'a mut dyn IrSink,
    /// The expression being evaluated (IR nodes record it).
    pub(super) cur_span: Option<Span>,
    /// Where facts for editors go: [`NoFacts`] unless an editor asked (see `facts.rs`).
    facts: &'a mut dyn FactSink,
}

/// Checks every module and returns the nets of the root modules and, when `record`, the
/// facts editors need.
pub fn check_program(
    p: &Program,
    roots: &[usize],
    record: bool,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<NetInfo>, Facts) {
    // Expression and binding types are recorded for the root files only.
    let mut recorder = record.then(|| {
        Recorder::new(
            roots
                .iter()
                .filter_map(|m| p.modules.get(*m))
                .map(|m| m.file)
                .collect(),
        )
    });
    let mut no_facts = NoFacts;
    let facts: &mut dyn FactSink = match recorder.as_mut() {
        Some(r) => r,
        None => &mut no_facts,
    };
    let mut no_ir = NoIr;
    let mut cx = Cx::new(p, diags, &mut no_ir, facts);
    cx.duplicate_rules();
    let mut nets = Vec::new();
    for m in 0..p.modules.len() {
        cx.check_module(m, roots.contains(&m), &mut nets);
    }
    drop(cx);
    let facts = recorder.map(Recorder::finish).unwrap_or_default();
    (nets, facts)
}

pub use crate::diag::closest;

impl<'a> Cx<'a> {
    /// A walk reporting to `diags`, writing IR to `ir` and editor facts to `facts`.
    pub(super) fn new(
        p: &'a Program,
        diags: &'a mut Vec<Diagnostic>,
        ir: &'a mut dyn IrSink,
        facts: &'a mut dyn FactSink,
    ) -> Cx<'a> {
        Cx {
            p,
            diags,
            cache: HashMap::new(),
            stack: vec![],
            use_sites: vec![],
            collectors: vec![],
            label: None,
            generic: false,
            cycles: HashSet::new(),
            ir,
            cur_span: None,
            facts,
        }
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

    pub(super) fn report(&mut self, mut d: Diagnostic) {
        // An error a layer's generic check found holds for every use: the uses do not
        // repeat it.
        if !self.use_sites.is_empty()
            && self.diags.iter().any(|g| {
                g.code == d.code
                    && g.message == d.message
                    && g.span() == d.span()
                    && !g.labels.iter().any(|l| l.message == "in this use")
            })
        {
            return;
        }
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
        show(self.p, t)
    }
}

/// A type as people read it, in diagnostics and editors. A tensor shows its shape and an
/// int its value when known; a float or bool never shows its value.
pub(super) fn show(p: &Program, t: &Ty) -> String {
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
            let inner: Vec<String> = items.iter().map(|t| show(p, t)).collect();
            format!("[{}]", inner.join(", "))
        }
        Ty::List(t) => format!("[{}]", show(p, t)),
        Ty::Range => "range".into(),
        Ty::Record(id) | Ty::Opaque(id) => p.items[*id].name.clone(),
        Ty::Item(id) => format!("{} `{}`", p.items[*id].kind.word(), p.items[*id].name),
        Ty::Layer(l) => format!("layer `{}(...)`", p.items[l.item].name),
        Ty::Net(id) => format!("net `{}`", p.items[*id].name),
        Ty::Any => "any".into(),
        Ty::Err => "{unknown}".into(),
    }
}
