//! The program's modules and items, import loading, and name lookup.
//!
//! Lookup order for a name in module M: M's own items, names M imported one by one, M's
//! glob imports, then the prelude. Locals are handled by the evaluator before this.

use std::collections::{HashMap, HashSet};

use super::{ALWAYS, Loader, PRELUDE};
use crate::diag::Diagnostic;
use crate::span::{FileId, SourceMap, Span};
use crate::syntax::ast::{Item, ItemKind, Module};
use crate::syntax::parse_module;

pub type ItemId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefKind {
    Fn,
    ExternFn,
    Layer,
    Net,
    Rule,
    Record,
    ExternType,
}

impl DefKind {
    pub fn word(self) -> &'static str {
        match self {
            DefKind::Fn | DefKind::ExternFn => "function",
            DefKind::Layer => "layer",
            DefKind::Net => "net",
            DefKind::Rule => "rule",
            DefKind::Record => "record",
            DefKind::ExternType => "type",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ItemDef {
    pub name: String,
    pub module: usize,
    pub index: usize,
    pub kind: DefKind,
    /// The span of the item's name.
    pub span: Span,
    pub doc: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ModuleData {
    /// `std.nn` for library modules, the file name for user files.
    pub name: String,
    pub file: FileId,
    pub ast: Module,
    pub is_std: bool,
    pub defs: HashMap<String, ItemId>,
    pub imported: HashMap<String, ItemId>,
    pub globs: Vec<usize>,
    pub rules: Vec<ItemId>,
}

#[derive(Default)]
pub struct Program {
    pub sources: SourceMap,
    pub modules: Vec<ModuleData>,
    pub items: Vec<ItemDef>,
    by_path: HashMap<String, usize>,
}

impl Program {
    pub fn add_module(&mut self, name: String, file: FileId, ast: Module, is_std: bool) -> usize {
        let idx = self.modules.len();
        self.by_path.insert(name.clone(), idx);
        self.modules.push(ModuleData {
            name,
            file,
            ast,
            is_std,
            defs: HashMap::new(),
            imported: HashMap::new(),
            globs: vec![],
            rules: vec![],
        });
        idx
    }

    pub fn item_ast(&self, id: ItemId) -> Option<&Item> {
        let def = self.items.get(id)?;
        self.modules.get(def.module)?.ast.items.get(def.index)
    }

    pub fn module_by_path(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    /// Resolves a global name as seen from `module`.
    pub fn lookup(&self, module: usize, name: &str) -> Option<ItemId> {
        let m = self.modules.get(module)?;
        if let Some(id) = m.defs.get(name).or_else(|| m.imported.get(name)) {
            return Some(*id);
        }
        for g in &m.globs {
            if let Some(id) = self.modules.get(*g).and_then(|gm| gm.defs.get(name)) {
                return Some(*id);
            }
        }
        PRELUDE
            .iter()
            .filter_map(|p| self.module_by_path(p))
            .find_map(|p| {
                self.modules
                    .get(p)
                    .and_then(|pm| pm.defs.get(name))
                    .copied()
            })
    }

    /// Every global name visible from `module` (for "did you mean" and completion).
    pub fn visible_names(&self, module: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(m) = self.modules.get(module) else {
            return out;
        };
        out.extend(m.defs.keys().cloned());
        out.extend(m.imported.keys().cloned());
        for g in m.globs.iter().chain(
            PRELUDE
                .iter()
                .filter_map(|p| self.module_by_path(p))
                .collect::<Vec<_>>()
                .iter(),
        ) {
            if let Some(gm) = self.modules.get(*g) {
                out.extend(gm.defs.keys().cloned());
            }
        }
        out.retain(|n| {
            self.lookup(module, n)
                .is_some_and(|id| self.items[id].kind != DefKind::Rule)
        });
        out.sort();
        out.dedup();
        out
    }
}

fn item_name(item: &Item) -> Option<(&crate::syntax::ast::Ident, DefKind)> {
    Some(match &item.kind {
        ItemKind::Fn(f) => (
            &f.name,
            if f.body.is_some() {
                DefKind::Fn
            } else {
                DefKind::ExternFn
            },
        ),
        ItemKind::Layer(l) => (&l.name, DefKind::Layer),
        ItemKind::Net(n) => (&n.name, DefKind::Net),
        ItemKind::Rule(r) => (&r.name, DefKind::Rule),
        ItemKind::Record(r) => (&r.name, DefKind::Record),
        ItemKind::ExternType(n) => (n, DefKind::ExternType),
        _ => return None,
    })
}

/// Registers the items of module `m`, reporting duplicates.
fn register_items(p: &mut Program, m: usize, diags: &mut Vec<Diagnostic>) {
    let mut found = Vec::new();
    for (index, item) in p.modules[m].ast.items.iter().enumerate() {
        if let Some((name, kind)) = item_name(item) {
            found.push(ItemDef {
                name: name.name.clone(),
                module: m,
                index,
                kind,
                span: name.span,
                doc: item.doc.clone(),
            });
        }
    }
    for def in found {
        let id = p.items.len();
        if def.kind == DefKind::Rule {
            if let Some(prev) = p.modules[m]
                .rules
                .iter()
                .find(|r| p.items[**r].name == def.name)
            {
                diags.push(
                    Diagnostic::error(
                        "E0407",
                        format!("a second derivative rule for `{}`", def.name),
                    )
                    .primary(def.span, "second rule")
                    .secondary(p.items[*prev].span, "first rule here")
                    .with_help("a primitive has exactly one rule: remove one of them"),
                );
            }
            p.items.push(def);
            p.modules[m].rules.push(id);
            continue;
        }
        if let Some(prev) = p.modules[m].defs.get(&def.name) {
            diags.push(
                Diagnostic::error("E0103", format!("`{}` is defined twice", def.name))
                    .primary(def.span, "defined again here")
                    .secondary(p.items[*prev].span, "first defined here")
                    .with_help("rename one of them"),
            );
            p.items.push(def);
            continue;
        }
        p.modules[m].defs.insert(def.name.clone(), id);
        p.items.push(def);
    }
}

/// Where an import path points: the module, and the item named in it (if any).
fn import_targets(path: &[String], glob: bool) -> Vec<(Vec<String>, Option<String>)> {
    if glob {
        return vec![(path.to_vec(), None)];
    }
    let mut out = vec![(path.to_vec(), None)];
    if path.len() > 1 {
        out.push((path[..path.len() - 1].to_vec(), path.last().cloned()));
    }
    out
}

/// Loads every module reachable from the roots, the prelude and the rules.
pub fn load_all(p: &mut Program, loader: &dyn Loader, diags: &mut Vec<Diagnostic>) {
    let mut queue: Vec<(Vec<String>, String, Option<Span>)> = PRELUDE
        .iter()
        .chain(ALWAYS.iter())
        .map(|s| {
            (
                s.split('.').map(str::to_string).collect(),
                String::new(),
                None,
            )
        })
        .collect();
    let mut tried: HashSet<String> = HashSet::new();
    let mut next_module = 0;
    loop {
        // Register and scan newly added modules for their imports.
        while next_module < p.modules.len() {
            register_items(p, next_module, diags);
            let from = p.modules[next_module].name.clone();
            for item in &p.modules[next_module].ast.items {
                if let ItemKind::Import(imp) = &item.kind {
                    let path: Vec<String> = imp.path.iter().map(|i| i.name.clone()).collect();
                    for (module, _) in import_targets(&path, imp.glob) {
                        queue.push((module, from.clone(), Some(item.span)));
                    }
                }
            }
            next_module += 1;
        }
        let Some((path, from, _span)) = queue.pop() else {
            break;
        };
        let key = path.join(".");
        if p.module_by_path(&key).is_some() || !tried.insert(key.clone()) {
            continue;
        }
        if let Ok((display, text)) = loader.load(&path, &from) {
            let file = p.sources.add(display, text.clone());
            let (ast, errs) = parse_module(&text, file);
            diags.extend(errs);
            p.add_module(key, file, ast, path.first().is_some_and(|s| s == "std"));
        }
    }
}

/// Binds each module's imports, reporting unknown modules and items.
pub fn resolve_imports(p: &mut Program, diags: &mut Vec<Diagnostic>) {
    for m in 0..p.modules.len() {
        let mut imported = HashMap::new();
        let mut globs = Vec::new();
        for item in &p.modules[m].ast.items {
            let ItemKind::Import(imp) = &item.kind else {
                continue;
            };
            let path: Vec<String> = imp.path.iter().map(|i| i.name.clone()).collect();
            let Some(last) = imp.path.last() else {
                continue;
            };
            let whole = path.join(".");
            if let Some(target) = p.module_by_path(&whole) {
                if imp.glob {
                    globs.push(target);
                } else {
                    // `import std.nn` names the module; its items stay qualified. We do not
                    // have qualified access yet, so import everything under the module name.
                    globs.push(target);
                }
                continue;
            }
            if !imp.glob && path.len() > 1 {
                let parent = path[..path.len() - 1].join(".");
                if let Some(pm) = p.module_by_path(&parent) {
                    match p.modules[pm].defs.get(&last.name) {
                        Some(id) => {
                            imported.insert(last.name.clone(), *id);
                        }
                        None => {
                            let names: Vec<String> = p.modules[pm].defs.keys().cloned().collect();
                            let mut d = Diagnostic::error(
                                "E0106",
                                format!("module `{parent}` has no item `{}`", last.name),
                            )
                            .primary(last.span, "not found in this module");
                            if let Some(s) =
                                super::eval::closest(&last.name, names.iter().map(String::as_str))
                            {
                                d = d.with_help(format!("did you mean `{parent}.{s}`?"));
                            }
                            diags.push(d);
                        }
                    }
                    continue;
                }
            }
            let span = imp
                .path
                .first()
                .map(|f| f.span.to(last.span))
                .unwrap_or(item.span);
            let known: Vec<String> = p
                .modules
                .iter()
                .filter(|m| m.is_std)
                .map(|m| m.name.clone())
                .collect();
            let mut d = Diagnostic::error("E0105", format!("cannot find module `{whole}`"))
                .primary(span, "no such module");
            if let Some(s) = super::eval::closest(&whole, known.iter().map(String::as_str)) {
                d = d.with_help(format!("did you mean `{s}`?"));
            } else {
                d = d.with_help("standard modules are std.nn, std.data, std.optim, std.train, std.io; a local module `a.b` is the file `a/b.net` next to this one");
            }
            diags.push(d);
        }
        p.modules[m].imported = imported;
        p.modules[m].globs = globs;
    }
}
