//! Completion: what may be written at a position, from the text before it and the last
//! check of the file (which may be a keystroke old: positions are not trusted, names are).
//!
//! Three contexts: after `import` (module paths, then a module's items), after `name.`
//! (the fields of the record `name` holds), and anywhere else (locals of the file, every
//! global visible from the module, keywords). Functions and layers come with a snippet of
//! their required arguments.

use crate::check::{Checked, DefKind, ItemId, Program};
use crate::span::FileId;
use crate::syntax::ast::{Item, ItemKind, Param};

use super::{field_doc, param_text, signature};

/// What a completion is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CompletionKind {
    Function,
    Layer,
    Net,
    Record,
    Type,
    Field,
    Variable,
    Module,
    Keyword,
}

/// One completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub label: String,
    pub kind: CompletionKind,
    pub detail: String,
    pub doc: Option<String>,
    /// A snippet (`dense(${1:out})`) to insert instead of the label.
    pub snippet: Option<String>,
}

/// Completions at byte `offset` of `text`, the current content of root file `file` of the
/// last check `c`. `importable` names the modules that exist (the standard library's and
/// files beside this one): `lang` reads no directories and embeds no library.
pub fn completions(
    c: &Checked,
    file: FileId,
    text: &str,
    offset: usize,
    importable: &[String],
) -> Vec<Completion> {
    // A position inside a character (a stale offset) counts as the character's start.
    let offset = text.floor_char_boundary(offset);
    let before = &text[..offset];
    let line = before.rsplit('\n').next().unwrap_or("");
    let p = &c.program;
    let module = p.modules.iter().position(|m| m.file == file);
    if let Some(rest) = line.trim_start().strip_prefix("import ") {
        return import_completions(p, rest.trim(), importable);
    }
    // `base.` or `base.fi`: fields of the record `base` is bound to.
    if let Some(head) = before[..word_start(before)].strip_suffix('.') {
        let base = &head[word_start(head)..];
        return field_completions(c, file, base, module);
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for b in c.facts.bindings.iter().filter(|b| b.span.file == file) {
        if seen.insert(b.name.clone()) {
            out.push(Completion {
                label: b.name.clone(),
                kind: CompletionKind::Variable,
                detail: b.ty.clone(),
                doc: None,
                snippet: None,
            });
        }
    }
    if let Some(m) = module {
        for name in p.visible_names(m) {
            if let Some(id) = p.lookup(m, &name)
                && seen.insert(name.clone())
            {
                out.push(item_completion(p, id));
            }
        }
    }
    for k in [
        "let", "var", "fn", "layer", "net", "rule", "record", "import", "if", "else", "for", "in",
        "while", "return", "repeat", "param", "state", "where", "true", "false",
    ] {
        out.push(Completion {
            label: k.into(),
            kind: CompletionKind::Keyword,
            detail: "keyword".into(),
            doc: None,
            snippet: None,
        });
    }
    out
}

/// Where the word (letters, digits, `_`) that `s` ends with starts: a char boundary, after
/// the last character that is not part of a word, however many bytes that character has.
fn word_start(s: &str) -> usize {
    s.char_indices()
        .rev()
        .find(|(_, ch)| !(ch.is_alphanumeric() || *ch == '_'))
        .map_or(0, |(i, ch)| i + ch.len_utf8())
}

fn item_completion(p: &Program, id: ItemId) -> Completion {
    let def = &p.items[id];
    let kind = match def.kind {
        DefKind::Fn | DefKind::ExternFn | DefKind::Rule => CompletionKind::Function,
        DefKind::Layer => CompletionKind::Layer,
        DefKind::Net => CompletionKind::Net,
        DefKind::Record => CompletionKind::Record,
        DefKind::ExternType => CompletionKind::Type,
    };
    let snippet = match p.item_ast(id).map(|i| &i.kind) {
        Some(ItemKind::Fn(f)) => Some(call_snippet(&def.name, &f.params, false)),
        Some(ItemKind::Layer(l)) => Some(call_snippet(&def.name, &l.args, true)),
        Some(ItemKind::Record(_)) => Some(format!("{} {{ $1 }}", def.name)),
        _ => None,
    };
    Completion {
        label: def.name.clone(),
        kind,
        detail: signature(p, id),
        doc: def.doc.clone(),
        snippet,
    }
}

/// `name(${1:a}, ${2:b})` over the parameters without defaults; a layer whose arguments
/// all have defaults is written bare (`relu`, `flatten`).
fn call_snippet(name: &str, params: &[Param], layer: bool) -> String {
    let required: Vec<String> = params
        .iter()
        .filter(|p| p.default.is_none())
        .enumerate()
        .map(|(i, p)| format!("${{{}:{}}}", i + 1, p.name.name))
        .collect();
    if required.is_empty() {
        if layer {
            name.to_string()
        } else {
            format!("{name}()")
        }
    } else {
        format!("{name}({})", required.join(", "))
    }
}

fn field_completions(
    c: &Checked,
    file: FileId,
    base: &str,
    module: Option<usize>,
) -> Vec<Completion> {
    let p = &c.program;
    // The record the name is bound to: a local binding of this file, or a record type
    // named directly (a record's fields are also its defaults' names).
    let record = c
        .facts
        .bindings
        .iter()
        .rev()
        .find(|b| b.span.file == file && b.name == base)
        .and_then(|b| b.record)
        .or_else(|| {
            let id = module.and_then(|m| p.lookup(m, base))?;
            (p.items[id].kind == DefKind::Record).then_some(id)
        });
    let Some(id) = record else { return vec![] };
    let Some(Item {
        kind: ItemKind::Record(r),
        ..
    }) = p.item_ast(id)
    else {
        return vec![];
    };
    r.fields
        .iter()
        .map(|f| Completion {
            label: f.name.name.clone(),
            kind: CompletionKind::Field,
            detail: param_text(p, f),
            doc: field_doc(p, id, &f.name.name),
            snippet: None,
        })
        .collect()
}

fn import_completions(p: &Program, typed: &str, extra: &[String]) -> Vec<Completion> {
    let mut paths: Vec<String> = p
        .modules
        .iter()
        .filter(|m| m.is_std)
        .map(|m| m.name.clone())
        .collect();
    paths.extend(extra.iter().cloned());
    paths.sort();
    paths.dedup();
    // Completing the items of a module: `import std.nn.` → `*`, `dense`, ...
    if let Some(dot) = typed.rfind('.') {
        let prefix = &typed[..dot];
        if let Some(m) = p.module_by_path(prefix) {
            let mut out = vec![Completion {
                label: "*".into(),
                kind: CompletionKind::Keyword,
                detail: format!("everything in {prefix}"),
                doc: None,
                snippet: None,
            }];
            let mut names: Vec<(&String, &ItemId)> = p.modules[m].defs.iter().collect();
            names.sort();
            out.extend(
                names
                    .into_iter()
                    .filter(|(_, id)| p.items[**id].kind != DefKind::Rule)
                    .map(|(_, id)| item_completion(p, *id)),
            );
            return out;
        }
    }
    paths
        .into_iter()
        .filter(|path| path.starts_with(typed.trim_end_matches('*')))
        .map(|path| Completion {
            label: path.clone(),
            kind: CompletionKind::Module,
            detail: "module".into(),
            doc: None,
            snippet: None,
        })
        .collect()
}
