//! Editor features over a checked program, in byte offsets and plain data: hover, go to
//! definition, references, rename, document symbols, inlay hints, completion and semantic
//! token classes. The language server converts these to the protocol; this module knows
//! no LSP types and does no IO, like the rest of `lang`.
//!
//! Everything here reads what checking recorded ([`crate::check::facts::Facts`], the nets'
//! stage shapes, the syntax trees), so a request costs a lookup, not a re-check.

use crate::check::facts::{Binding, Target};
use crate::check::{Checked, DefKind, ItemId, Program};
use crate::span::{FileId, Span};
use crate::syntax::ast::{Item, ItemKind, Param, Stage, StageKind};

mod complete;
pub use complete::{Completion, CompletionKind, completions};

/// Hover text (Markdown) for the range it describes.
#[derive(Clone, Debug, PartialEq)]
pub struct Hover {
    pub span: Span,
    pub markdown: String,
}

fn module_of_file(p: &Program, file: FileId) -> Option<usize> {
    p.modules.iter().position(|m| m.file == file)
}

/// The source of an item's header: from its start to the `{` that opens its body (or the
/// whole item when it has none), on one line.
pub fn signature(p: &Program, id: ItemId) -> String {
    let Some(item) = p.item_ast(id) else {
        return p.items[id].name.clone();
    };
    let text = p
        .sources
        .text(item.span.file)
        .get(item.span.start..item.span.end)
        .unwrap_or("");
    // Comment lines (the item's docs) are skipped before looking for the `{`: a doc may
    // show a record literal.
    let mut depth = 0i32;
    let mut lines: Vec<&str> = Vec::new();
    'lines: for line in text.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        for (i, ch) in line.char_indices() {
            match ch {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                '{' if depth == 0 => {
                    lines.push(line.get(..i).unwrap_or(line).trim_end());
                    break 'lines;
                }
                _ => {}
            }
        }
        lines.push(line);
    }
    lines.join(" ").trim().to_string()
}

/// How a function's derivative is obtained, for hover.
pub fn derivative_status(p: &Program, id: ItemId) -> Option<String> {
    let def = &p.items[id];
    if !matches!(def.kind, DefKind::Fn | DefKind::ExternFn) {
        return None;
    }
    let rule = p
        .modules
        .iter()
        .flat_map(|m| m.rules.iter())
        .copied()
        .find(|r| p.items[*r].name == def.name);
    Some(match (rule, def.kind) {
        (Some(r), _) => {
            let rm = &p.modules[p.items[r].module];
            let (line, _) = p.sources.line_col(rm.file, p.items[r].span.start);
            let how = if def.kind == DefKind::ExternFn {
                "checked by finite differences (`nabla gradcheck`)"
            } else {
                "checked against the VJP derived from its body when its module is checked"
            };
            format!("derivative: rule in `{}` line {line}, {how}", rm.name)
        }
        (None, DefKind::ExternFn) if !takes_tensors(p, id) => "host builtin: not differentiable (runs outside the compiled step)".into(),
        (None, DefKind::ExternFn) => "derivative: none — a gradient through it is an error; wrap it in `stop_gradient` to cut it".into(),
        (None, _) => "derivative: derived from its body by the chain rule".into(),
    })
}

/// Whether a function has a tensor parameter (a primitive, as opposed to a host builtin).
fn takes_tensors(p: &Program, id: ItemId) -> bool {
    match p.item_ast(id).map(|i| &i.kind) {
        Some(ItemKind::Fn(f)) => f.params.iter().any(|prm| {
            matches!(
                prm.ty.as_ref().map(|t| &t.kind),
                Some(crate::syntax::ast::TypeKind::Tensor { .. })
            )
        }),
        _ => false,
    }
}

/// The definition site of what is at `offset`.
pub fn definition(c: &Checked, file: FileId, offset: usize) -> Option<Span> {
    if let Some(m) = import_at(c, file, offset) {
        let f = c.program.modules[m].file;
        return Some(Span::new(f, 0, 0));
    }
    let r = c.facts.ref_at(file, offset)?;
    target_span(&c.program, &r.target)
}

/// Where a target is defined.
pub fn target_span(p: &Program, t: &Target) -> Option<Span> {
    match t {
        Target::Item(id) => Some(p.items[*id].span),
        Target::Local(s) => Some(*s),
        Target::Field(id, name) => match p.item_ast(*id) {
            Some(Item {
                kind: ItemKind::Record(r),
                ..
            }) => r
                .fields
                .iter()
                .find(|f| f.name.name == *name)
                .map(|f| f.name.span),
            _ => None,
        },
    }
}

/// The module named by an `import` path under `offset`, if any.
fn import_at(c: &Checked, file: FileId, offset: usize) -> Option<usize> {
    let m = module_of_file(&c.program, file)?;
    for item in &c.program.modules[m].ast.items {
        if let ItemKind::Import(imp) = &item.kind
            && item.span.contains(offset)
        {
            let upto: Vec<&str> = imp
                .path
                .iter()
                .take_while(|i| i.span.start <= offset)
                .map(|i| i.name.as_str())
                .collect();
            let full: Vec<&str> = imp.path.iter().map(|i| i.name.as_str()).collect();
            return c
                .program
                .module_by_path(&full.join("."))
                .or_else(|| c.program.module_by_path(&upto.join(".")));
        }
    }
    None
}

/// The target at `offset`, also when `offset` is on a definition rather than a use.
pub fn target_at(c: &Checked, file: FileId, offset: usize) -> Option<Target> {
    if let Some(r) = c.facts.ref_at(file, offset) {
        return Some(r.target.clone());
    }
    if let Some(id) = c
        .program
        .items
        .iter()
        .position(|d| d.span.file == file && d.span.contains(offset) && d.kind != DefKind::Rule)
    {
        return Some(Target::Item(id));
    }
    if let Some(b) = c
        .facts
        .bindings
        .iter()
        .find(|b| b.span.file == file && b.span.contains(offset))
    {
        return Some(Target::Local(b.span));
    }
    // A local that is used somewhere (a parameter, a loop variable).
    if let Some(r) = c
        .facts
        .refs
        .iter()
        .find(|r| matches!(r.target, Target::Local(s) if s.file == file && s.contains(offset)))
    {
        return Some(r.target.clone());
    }
    // A record field's declaration.
    for (id, d) in c.program.items.iter().enumerate() {
        if d.kind == DefKind::Record
            && let Some(Item {
                kind: ItemKind::Record(r),
                ..
            }) = c.program.item_ast(id)
            && let Some(f) = r
                .fields
                .iter()
                .find(|f| f.name.span.file == file && f.name.span.contains(offset))
        {
            return Some(Target::Field(id, f.name.name.clone()));
        }
    }
    None
}

/// Every place `target` is written: its uses and, when `declaration`, its definition.
pub fn references(c: &Checked, target: &Target, declaration: bool) -> Vec<Span> {
    let mut out: Vec<Span> = c.facts.uses(target).map(|r| r.span).collect();
    if declaration && let Some(s) = target_span(&c.program, target) {
        out.push(s);
    }
    out.sort();
    out.dedup();
    out
}

/// The edits renaming what is at `offset` to `new_name`, within its file. Refused for
/// names defined in another file (the standard library included) and for a new name
/// that is not an identifier.
pub fn rename(
    c: &Checked,
    file: FileId,
    offset: usize,
    new_name: &str,
) -> Result<Vec<Span>, String> {
    let valid = new_name
        .chars()
        .next()
        .is_some_and(|ch| ch.is_alphabetic() || ch == '_')
        && new_name.chars().all(|ch| ch.is_alphanumeric() || ch == '_')
        && !crate::syntax::token::KEYWORDS.contains(&new_name);
    if !valid {
        return Err(format!("`{new_name}` is not a valid name"));
    }
    let t = target_at(c, file, offset).ok_or("nothing to rename here")?;
    let def = target_span(&c.program, &t).ok_or("its definition is not known")?;
    if def.file != file {
        return Err(format!(
            "`{}` is defined in {}; rename it there",
            c.program
                .sources
                .text(def.file)
                .get(def.start..def.end)
                .unwrap_or("it"),
            c.program.sources.name(def.file)
        ));
    }
    Ok(references(c, &t, true)
        .into_iter()
        .filter(|s| s.file == file)
        .collect())
}

/// Hover at `offset`: the definition's signature, doc and derivative status for a name,
/// the type for an expression (every instantiation's shape inside a layer), the output
/// shape and parameter count for a net stage.
pub fn hover(c: &Checked, file: FileId, offset: usize) -> Option<Hover> {
    let p = &c.program;
    let mut parts = Vec::new();
    let mut span = None;
    let target = target_at(c, file, offset);
    if let Some(t) = &target {
        let (s, text) = describe(c, t, file, offset)?;
        span = Some(s);
        parts.push(text);
    } else if let Some(m) = import_at(c, file, offset) {
        parts.push(format!("module `{}`", p.modules[m].name));
    }
    if let Some(stage) = stage_at(c, file, offset) {
        parts.push(stage);
    } else if let Some((s, types)) = c.facts.types_at(file, offset)
        && target.is_none()
    {
        span.get_or_insert(s);
        let shown: Vec<String> = types.iter().take(4).map(|t| format!("`{t}`")).collect();
        let more = if types.len() > 4 {
            format!(" (and {} more uses)", types.len() - 4)
        } else {
            String::new()
        };
        let line = if types.len() > 1 {
            format!("type, per use: {}{more}", shown.join(", "))
        } else {
            format!("type: {}", shown.join(""))
        };
        if !parts.iter().any(|x| x.contains(&line)) {
            parts.push(line);
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(Hover {
        span: span.unwrap_or(Span::new(file, offset, offset)),
        markdown: parts.join("\n\n---\n\n"),
    })
}

fn describe(c: &Checked, t: &Target, file: FileId, offset: usize) -> Option<(Span, String)> {
    let p = &c.program;
    let here = c
        .facts
        .ref_at(file, offset)
        .map(|r| r.span)
        .or_else(|| target_span(p, t))?;
    Some(match t {
        Target::Item(id) => {
            let def = &p.items[*id];
            let mut s = format!("```nabla\n{}\n```", signature(p, *id));
            s.push_str(&format!(
                "\n{} in `{}`",
                def.kind.word(),
                module_label(p, def.module)
            ));
            if let Some(doc) = &def.doc {
                s.push_str(&format!("\n\n{}", doc.trim()));
            }
            if let Some(d) = derivative_status(p, *id) {
                s.push_str(&format!("\n\n{d}"));
            }
            if def.kind == DefKind::Net
                && let Some(n) = c.nets.iter().find(|n| n.span == def.span)
            {
                s.push_str(&format!(
                    "\n\n`{}` → `{}` · {} parameters · {} multiply-adds per example",
                    n.input, n.output, n.params, n.macs
                ));
            }
            (here, s)
        }
        Target::Local(def) => {
            let name = p
                .sources
                .text(def.file)
                .get(def.start..def.end)
                .unwrap_or("");
            let ty = binding_type(c, *def).or_else(|| {
                c.facts
                    .types_at(file, offset)
                    .and_then(|(_, t)| t.first().map(|s| s.to_string()))
            });
            match ty {
                Some(ty) => (here, format!("```nabla\n{name}: {ty}\n```")),
                None => (here, format!("```nabla\n{name}\n```\nlocal")),
            }
        }
        Target::Field(id, name) => {
            let Some(Item {
                kind: ItemKind::Record(r),
                ..
            }) = p.item_ast(*id)
            else {
                return None;
            };
            let f = r.fields.iter().find(|f| f.name.name == *name)?;
            let mut s = format!("```nabla\n{}.{}\n```", p.items[*id].name, param_text(p, f));
            if let Some(doc) = field_doc(p, *id, name) {
                s.push_str(&format!("\n\n{doc}"));
            }
            (here, s)
        }
    })
}

/// A module as people name it: `std.nn`, or a user file's name without its directory.
fn module_label(p: &Program, m: usize) -> String {
    let name = &p.modules[m].name;
    if p.modules[m].is_std {
        name.clone()
    } else {
        name.rsplit(['/', '\\']).next().unwrap_or(name).to_string()
    }
}

fn binding_type(c: &Checked, def: Span) -> Option<String> {
    c.facts
        .bindings
        .iter()
        .find(|b| b.span == def)
        .map(|b| b.ty.clone())
}

/// A parameter or field as written (`lr: float = 0.01`).
pub fn param_text(p: &Program, prm: &Param) -> String {
    let t = p
        .sources
        .text(prm.span.file)
        .get(prm.span.start..prm.span.end)
        .unwrap_or(&prm.name.name);
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `///` lines right above a record field.
fn field_doc(p: &Program, record: ItemId, field: &str) -> Option<String> {
    let Some(Item {
        kind: ItemKind::Record(r),
        ..
    }) = p.item_ast(record)
    else {
        return None;
    };
    let f = r.fields.iter().find(|f| f.name.name == field)?;
    let text = p.sources.text(f.span.file);
    let before = text.get(..f.span.start)?;
    let mut lines: Vec<&str> = before
        .lines()
        .rev()
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("///"))
        .map(|l| l.trim_start().trim_start_matches("///").trim())
        .collect();
    lines.reverse();
    (!lines.is_empty()).then(|| lines.join(" "))
}

/// The net stage under `offset`: its output shape and parameters.
fn stage_at(c: &Checked, file: FileId, offset: usize) -> Option<String> {
    for n in &c.nets {
        if n.span.file != file {
            continue;
        }
        if let Some(s) = n
            .stages
            .iter()
            .find(|s| s.span.file == file && s.span.contains(offset))
        {
            let mut out = format!("stage of `{}`: output `{}`", n.name, s.output);
            if s.params > 0 {
                out.push_str(&format!(" · {} parameters", s.params));
            }
            if s.macs > 0 {
                out.push_str(&format!(" · {} multiply-adds per example", s.macs));
            }
            return Some(out);
        }
    }
    None
}

/// An inlay hint: a label shown after byte `offset`.
#[derive(Clone, Debug, PartialEq)]
pub struct InlayHint {
    pub offset: usize,
    pub label: String,
}

/// The output shape after every stage of every net in `file`, and the type of every
/// tensor `let` binding.
pub fn inlay_hints(c: &Checked, file: FileId) -> Vec<InlayHint> {
    let mut out = Vec::new();
    for n in c.nets.iter().filter(|n| n.span.file == file) {
        for s in &n.stages {
            out.push(InlayHint {
                offset: s.span.end,
                label: format!(" → {}", s.output),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for b in c
        .facts
        .bindings
        .iter()
        .filter(|b: &&Binding| b.span.file == file && b.tensor)
    {
        // One hint per binding: a layer's body checked at several uses keeps the first.
        if seen.insert(b.span) {
            out.push(InlayHint {
                offset: b.span.end,
                label: format!(": {}", b.ty),
            });
        }
    }
    out.sort_by_key(|h| h.offset);
    out
}

/// What a document symbol is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SymbolKind {
    Function,
    Layer,
    Net,
    Rule,
    Record,
    Type,
    Field,
    Variable,
    Stage,
}

/// An outline entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Symbol {
    pub name: String,
    pub detail: String,
    pub kind: SymbolKind,
    /// The whole item.
    pub span: Span,
    /// Its name.
    pub selection: Span,
    pub children: Vec<Symbol>,
}

/// The outline of a file: its items, a record's fields, a net's stages.
pub fn symbols(c: &Checked, file: FileId) -> Vec<Symbol> {
    let p = &c.program;
    let Some(m) = module_of_file(p, file) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (index, item) in p.modules[m].ast.items.iter().enumerate() {
        let id = p
            .items
            .iter()
            .position(|d| d.module == m && d.index == index);
        let sig = id.map(|id| signature(p, id)).unwrap_or_default();
        let sym = |name: &crate::syntax::ast::Ident, kind, children| Symbol {
            name: name.name.clone(),
            detail: sig.clone(),
            kind,
            span: item.span,
            selection: name.span,
            children,
        };
        match &item.kind {
            ItemKind::Fn(f) => out.push(sym(&f.name, SymbolKind::Function, vec![])),
            ItemKind::Layer(l) => out.push(sym(&l.name, SymbolKind::Layer, vec![])),
            ItemKind::Rule(r) => out.push(sym(&r.name, SymbolKind::Rule, vec![])),
            ItemKind::ExternType(n) => out.push(sym(n, SymbolKind::Type, vec![])),
            ItemKind::Record(r) => {
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Symbol {
                        name: f.name.name.clone(),
                        detail: param_text(p, f),
                        kind: SymbolKind::Field,
                        span: f.span,
                        selection: f.name.span,
                        children: vec![],
                    })
                    .collect();
                out.push(sym(&r.name, SymbolKind::Record, fields));
            }
            ItemKind::Net(n) => {
                let info = c.nets.iter().find(|i| i.span == n.name.span);
                let stages = stage_symbols(
                    p,
                    &n.stages,
                    info.map(|i| i.stages.as_slice()).unwrap_or(&[]),
                );
                out.push(sym(&n.name, SymbolKind::Net, stages));
            }
            ItemKind::Stmt(s) => {
                if let crate::syntax::ast::StmtKind::Let { name, .. } = &s.kind {
                    let detail = binding_type(c, name.span).unwrap_or_default();
                    out.push(Symbol {
                        name: name.name.clone(),
                        detail,
                        kind: SymbolKind::Variable,
                        span: item.span,
                        selection: name.span,
                        children: vec![],
                    });
                }
            }
            ItemKind::Import(_) | ItemKind::Error => {}
        }
    }
    out
}

fn stage_symbols(p: &Program, stages: &[Stage], info: &[crate::check::StageInfo]) -> Vec<Symbol> {
    stages
        .iter()
        .map(|s| {
            let text = p
                .sources
                .text(s.span.file)
                .get(s.span.start..s.span.end)
                .unwrap_or("");
            let name = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let detail = info
                .iter()
                .find(|i| i.span == s.span)
                .map(|i| i.output.clone())
                .unwrap_or_default();
            let children = match &s.kind {
                StageKind::Repeat { body, .. } | StageKind::Group(body) => {
                    stage_symbols(p, body, info)
                }
                _ => vec![],
            };
            Symbol {
                name,
                detail,
                kind: SymbolKind::Stage,
                span: s.span,
                selection: s.label.as_ref().map_or(s.span, |l| l.span),
                children,
            }
        })
        .collect()
}

/// A class of token for semantic highlighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenClass {
    Keyword,
    Function,
    Layer,
    Net,
    Type,
    Variable,
    Property,
    Number,
    String,
    Comment,
    Operator,
}

fn item_class(k: DefKind) -> TokenClass {
    match k {
        DefKind::Fn | DefKind::ExternFn | DefKind::Rule => TokenClass::Function,
        DefKind::Layer => TokenClass::Layer,
        DefKind::Net => TokenClass::Net,
        DefKind::Record | DefKind::ExternType => TokenClass::Type,
    }
}

/// Every token of `text` (file `file`) with a class: keywords, literals, comments and
/// operators from the lexer, names from what they resolve to. Sorted by offset.
pub fn semantic_tokens(c: &Checked, file: FileId, text: &str) -> Vec<(usize, usize, TokenClass)> {
    use crate::syntax::token::Token;
    let (tokens, comments, _) = crate::syntax::token::lex_with_comments(text);
    let mut out = Vec::new();
    for (tok, r) in &tokens {
        let class = match tok {
            Token::Kw("true" | "false") => Some(TokenClass::Number),
            Token::Kw(_) => Some(TokenClass::Keyword),
            Token::Int(_) | Token::Float(_) => Some(TokenClass::Number),
            Token::Str(_) => Some(TokenClass::String),
            Token::Doc(_) => Some(TokenClass::Comment),
            Token::Sym("|>" | "->" | "@") => Some(TokenClass::Operator),
            Token::Ident(name) => match c
                .facts
                .ref_at(file, r.start)
                .filter(|x| x.span.start == r.start)
            {
                Some(x) => Some(match &x.target {
                    Target::Item(id) => item_class(c.program.items[*id].kind),
                    Target::Local(_) => TokenClass::Variable,
                    Target::Field(..) => TokenClass::Property,
                }),
                None if let Some(d) = c.program.items.iter().find(|d| {
                    d.span.file == file && d.span.start == r.start && d.span.end == r.end
                }) =>
                {
                    Some(item_class(d.kind))
                }
                None if c
                    .facts
                    .bindings
                    .iter()
                    .any(|b| b.span.file == file && b.span.start == r.start) =>
                {
                    Some(TokenClass::Variable)
                }
                None if crate::check::ty::DType::parse(name).is_some()
                    || [
                        "int", "float", "bool", "str", "dim", "net", "fn", "any", "axis",
                    ]
                    .contains(&name.as_str()) =>
                {
                    Some(TokenClass::Type)
                }
                None => None,
            },
            _ => None,
        };
        if let Some(k) = class {
            out.push((r.start, r.end - r.start, k));
        }
    }
    // Plain comments, line and block.
    out.extend(
        comments
            .into_iter()
            .map(|r| (r.start, r.end - r.start, TokenClass::Comment)),
    );
    out.sort_by_key(|t| t.0);
    out
}
