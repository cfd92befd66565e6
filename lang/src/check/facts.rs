//! What the checker learned about each position of the source, for editors: which
//! definition every name refers to, the type (or shape) of every expression of a root
//! file, and the type of every local binding. Recorded while checking (never while
//! lowering) and kept with the result, so hover, go-to-definition, references, rename and
//! inlay hints need no second walk.
//!
//! The walk writes what it learns to a `FactSink` wherever it learns it: a `Recorder` when
//! checking for an editor, `NoFacts` otherwise (the CLI, lowering), which keeps nothing,
//! so that checking without recording costs one empty call per fact.

use std::collections::HashSet;

use crate::span::{FileId, Span};
use crate::syntax::ast::Ident;

use super::eval::show;
use super::names::{ItemId, Program};
use super::ty::Ty;

/// What a name refers to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// An item (function, layer, net, record, type, rule).
    Item(ItemId),
    /// A local binding (`let`, `var`, a parameter, a loop variable), by the span of its
    /// name where it is bound.
    Local(Span),
    /// A field of a record type.
    Field(ItemId, String),
}

/// One use of a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ref {
    /// The span of the name as written.
    pub span: Span,
    pub target: Target,
}

/// A local binding and its type as shown to people.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub name: String,
    /// The span of the bound name.
    pub span: Span,
    pub ty: String,
    /// The record type of its value, when it is a record (for field completion).
    pub record: Option<ItemId>,
    /// A tensor: inlay hints show its shape.
    pub tensor: bool,
}

/// Everything recorded, sorted and without repeats (a layer checked at several uses
/// records the same name several times; its body's shapes differ per use).
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub refs: Vec<Ref>,
    /// (expression span, its type): possibly several per span, one per instantiation.
    pub types: Vec<(Span, String)>,
    pub bindings: Vec<Binding>,
}

impl Facts {
    fn finish(&mut self) {
        let key = |s: &Span| (s.file, s.start, s.end);
        self.refs.sort_by(|a, b| {
            key(&a.span)
                .cmp(&key(&b.span))
                .then(a.target.cmp(&b.target))
        });
        self.refs.dedup();
        self.types
            .sort_by(|a, b| key(&a.0).cmp(&key(&b.0)).then_with(|| a.1.cmp(&b.1)));
        self.types.dedup();
        let mut seen = std::collections::HashSet::new();
        self.bindings
            .retain(|b| seen.insert((b.span, b.ty.clone())));
    }

    /// The recorded name use at byte `offset` of a file. Name spans do not nest, and refs
    /// are sorted by position, so this is a binary search (semantic tokens ask once per
    /// token).
    pub fn ref_at(&self, file: crate::span::FileId, offset: usize) -> Option<&Ref> {
        let after = self
            .refs
            .partition_point(|r| (r.span.file, r.span.start) <= (file, offset));
        self.refs[..after]
            .last()
            .filter(|r| r.span.file == file && r.span.contains(offset))
    }

    /// The types recorded for the innermost expression containing `offset` (several for a
    /// layer's body: one per distinct use).
    pub fn types_at(&self, file: crate::span::FileId, offset: usize) -> Option<(Span, Vec<&str>)> {
        let best = self
            .types
            .iter()
            .filter(|(s, _)| s.file == file && s.contains(offset))
            .map(|(s, _)| *s)
            .min_by_key(|s| s.end - s.start)?;
        Some((
            best,
            self.types
                .iter()
                .filter(|(s, _)| *s == best)
                .map(|(_, t)| t.as_str())
                .collect(),
        ))
    }

    /// Every use of `target` (not its definition).
    pub fn uses<'a>(&'a self, target: &'a Target) -> impl Iterator<Item = &'a Ref> + 'a {
        self.refs.iter().filter(move |r| r.target == *target)
    }
}

/// Where the checker's walk writes facts (see the module doc).
pub(super) trait FactSink {
    /// The name at `span` refers to `target`.
    fn name_use(&mut self, span: Span, target: Target);
    /// The expression at `span` has type `t` (in the instance being checked).
    fn expr_type(&mut self, p: &Program, span: Span, t: &Ty);
    /// The local `name` is bound to a value of type `t`.
    fn binding(&mut self, p: &Program, name: &Ident, t: &Ty);
}

/// The sink of a check no editor asked for: it keeps nothing.
pub(super) struct NoFacts;

impl FactSink for NoFacts {
    fn name_use(&mut self, _: Span, _: Target) {}
    fn expr_type(&mut self, _: &Program, _: Span, _: &Ty) {}
    fn binding(&mut self, _: &Program, _: &Ident, _: &Ty) {}
}

/// Records facts for an editor: every name use, and the types of expressions and bindings
/// in the root files. Types are kept as text, which costs, so only for the files an editor
/// shows, and never for a value already reported as wrong.
pub(super) struct Recorder {
    facts: Facts,
    /// The root files.
    files: HashSet<FileId>,
}

impl Recorder {
    pub(super) fn new(files: HashSet<FileId>) -> Recorder {
        Recorder {
            facts: Facts::default(),
            files,
        }
    }

    /// Everything recorded, sorted and without repeats.
    pub(super) fn finish(self) -> Facts {
        let mut facts = self.facts;
        facts.finish();
        facts
    }

    fn shows(&self, span: Span, t: &Ty) -> bool {
        self.files.contains(&span.file) && !matches!(t, Ty::Err)
    }
}

impl FactSink for Recorder {
    fn name_use(&mut self, span: Span, target: Target) {
        self.facts.refs.push(Ref { span, target });
    }

    fn expr_type(&mut self, p: &Program, span: Span, t: &Ty) {
        if self.shows(span, t) {
            self.facts.types.push((span, show(p, t)));
        }
    }

    fn binding(&mut self, p: &Program, name: &Ident, t: &Ty) {
        if !self.shows(name.span, t) {
            return;
        }
        self.facts.bindings.push(Binding {
            name: name.name.clone(),
            span: name.span,
            ty: show(p, t),
            record: match t {
                Ty::Record(id) => Some(*id),
                _ => None,
            },
            tensor: matches!(t, Ty::Tensor(..)),
        });
    }
}
