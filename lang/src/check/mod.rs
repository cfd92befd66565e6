//! Checking: name resolution across modules, host types with local inference, and tensor
//! shapes with symbolic dims.
//!
//! One checker serves both layers of the language. Tensor code (`fn` over tensors,
//! `layer`, `net`, `rule`) is checked by abstract evaluation over shapes: compile-time ints
//! are [`dim::Dim`] values, so `dense(512)` and `H / 2` are known while the batch `B` stays
//! symbolic. A layer is checked once generically (its arguments symbolic; only definite
//! errors reported) and again at every distinct use with concrete arguments (every
//! mismatch reported), the way a template is. Host code is checked by the same walk, with
//! its values' types in place of shapes.

pub mod dim;
mod eval;
pub mod facts;
pub mod lower;
mod names;
mod prims;
mod rules;
pub mod ty;

use std::collections::HashMap;

pub use eval::{NetInfo, StageInfo};
pub use names::{DefKind, ItemDef, ItemId, ModuleData, Program};

use crate::diag::Diagnostic;
use crate::span::{FileId, SourceMap};
use crate::syntax::parse_module;

/// Where module sources come from. `lang` does no IO: the CLI, the LSP and tests
/// implement this (files on disk, open editor buffers, the embedded standard library).
pub trait Loader {
    /// Loads the module named by `path` (e.g. `["std", "nn"]`), imported from the file
    /// named `from`. Returns the module's display name and its text.
    fn load(&self, path: &[String], from: &str) -> Result<(String, String), String>;
}

/// The modules every program sees without importing them.
pub const PRELUDE: &[&str] = &["std.core", "std.optim", "std.train", "std.io"];
/// Loaded with every program: derivative rules are checked even when nothing imports them.
pub const ALWAYS: &[&str] = &["std.rules"];

/// The result of checking a set of root files.
pub struct Checked {
    pub program: Program,
    pub diagnostics: Vec<Diagnostic>,
    pub nets: Vec<NetInfo>,
    /// What each name refers to and each expression's type, for editors: empty unless
    /// checked with [`check_files_for_editor`] (recording costs about 10% of a check).
    pub facts: facts::Facts,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parses, loads imports of, and checks the given root files (name, text).
pub fn check_files(roots: &[(String, String)], loader: &dyn Loader) -> Checked {
    check(roots, loader, false)
}

/// [`check_files`], also recording [`facts::Facts`] for editor features (`crate::ide`).
pub fn check_files_for_editor(roots: &[(String, String)], loader: &dyn Loader) -> Checked {
    check(roots, loader, true)
}

fn check(roots: &[(String, String)], loader: &dyn Loader, record: bool) -> Checked {
    let mut sources = SourceMap::default();
    let mut diags = Vec::new();
    let mut program = Program::default();
    let mut root_ids = Vec::new();
    for (name, text) in roots {
        let file = sources.add(name.clone(), text.clone());
        let (ast, errs) = parse_module(text, file);
        diags.extend(errs);
        root_ids.push(program.add_module(name.clone(), file, ast, false));
    }
    program.sources = sources;
    names::load_all(&mut program, loader, &mut diags);
    names::resolve_imports(&mut program, &mut diags);
    let (nets, facts) = eval::check_program(&program, &root_ids, record, &mut diags);
    if !diags.iter().any(Diagnostic::is_error) {
        check_closed_forms(&program, &root_ids, &mut diags);
    }
    crate::diag::normalize(&mut diags);
    Checked {
        program,
        diagnostics: diags,
        nets,
        facts,
    }
}

/// The largest relative discrepancy a closed-form rule may have from the derived VJP.
/// Both sides are computed exactly in f64, so anything above rounding is a wrong rule.
pub const CLOSED_FORM_TOLERANCE: f64 = 1e-9;

/// Checks the closed-form rules of composite functions in the root modules against the
/// VJP derived through the function's body, numerically at random points (f64).
fn check_closed_forms(p: &Program, roots: &[usize], diags: &mut Vec<Diagnostic>) {
    for m in roots {
        for rid in &p.modules[*m].rules {
            let def = &p.items[*rid];
            match crate::gradcheck::composite_discrepancy(p, *rid) {
                None => {}
                Some(Ok((d, which))) if d > CLOSED_FORM_TOLERANCE => diags.push(
                    Diagnostic::error("E0408", format!("the rule for `{}` disagrees with the VJP derived from its body: `{which}` differs by {d:.2e} (relative, measured in f64 at random points)", def.name))
                        .primary(def.span, "this rule")
                        .with_help("fix the closed form, or remove the rule to use the derived VJP"),
                ),
                Some(Ok(_)) => {}
                Some(Err(e)) => diags.push(
                    Diagnostic::warning("E0409", format!("the rule for `{}` could not be checked against its derivation: {e}", def.name))
                        .primary(def.span, "this rule is unchecked"),
                ),
            }
        }
    }
}

/// Checks one in-memory source (for tests and the REPL).
pub fn check_source(name: &str, text: &str, loader: &dyn Loader) -> Checked {
    check_files(&[(name.to_string(), text.to_string())], loader)
}

/// A loader over a fixed map of module path → source, for tests and embedded libraries.
pub struct MapLoader(pub HashMap<String, String>);

impl Loader for MapLoader {
    fn load(&self, path: &[String], _from: &str) -> Result<(String, String), String> {
        let key = path.join(".");
        self.0
            .get(&key)
            .map(|t| (format!("<{key}>"), t.clone()))
            .ok_or_else(|| format!("no module `{key}`"))
    }
}

/// The id of a root file's module.
pub fn root_file(checked: &Checked, index: usize) -> Option<FileId> {
    checked.program.modules.get(index).map(|m| m.file)
}
