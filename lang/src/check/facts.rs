//! What the checker learned about each position of the source, for editors: which
//! definition every name refers to, the type (or shape) of every expression of a root
//! file, and the type of every local binding. Recorded while checking (never while
//! lowering) and kept with the result, so hover, go-to-definition, references, rename and
//! inlay hints need no second walk.

use crate::span::Span;

use super::names::ItemId;

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
    pub(super) fn finish(&mut self) {
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
