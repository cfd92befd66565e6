//! `nabla-lang`: the compiler front end and everything pure — spans and diagnostics,
//! the parser, name resolution, host type checking and tensor shape checking.
//!
//! Invariants (see `docs/architecture.md`): this crate does no IO (sources come in through
//! [`check::Loader`]), knows no LSP types, and depends on no backend. Parsing never fails.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod ad;
pub mod backend;
pub mod check;
pub mod diag;
pub mod gradcheck;
pub mod host;
pub mod ide;
pub mod interp;
pub mod ir;
pub mod opt;
pub mod span;
pub mod step;
pub mod syntax;

pub use diag::{Diagnostic, Label, Severity};
pub use span::{FileId, SourceMap, Span};
