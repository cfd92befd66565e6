//! Host code as a typed tree: the form the host compiler (`nabla-jit`'s `host` module,
//! Cranelift) turns into machine code.
//!
//! Host code is the other layer of the language: top-level statements and host `fn`s,
//! with `let`/`var`, loops, records, lists, strings and calls into native builtins.
//! [`lower::lower_program`] turns a checked program's host code into a [`HostProgram`]:
//! names resolved to local slots, functions and builtins; every expression typed; named
//! and default arguments placed; ints promoted to floats where a float is wanted. What
//! the checker accepts but the host compiler cannot run yet is an error here (E06xx), so
//! nothing reaches code generation half-understood.
//!
//! The runtime representation every backend of host code shares: `int` is an i64,
//! `float` an f64, `bool` an i64 that is 0 or 1, `()` an i64 0, and every other value
//! (strings, records, lists, nets and the runtime's opaque objects) an i64 handle into
//! the run's heap. Values cross into builtins as 64-bit words ([`Word`]).

pub mod heap;
pub mod interrupt;
pub mod lower;

use crate::check::ItemId;
use crate::span::Span;
use crate::syntax::ast::{BinOp, UnOp};

/// One value as it crosses between compiled code and the runtime: an int, a bool, a
/// handle, or an f64's bits.
pub type Word = u64;

/// A host type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HTy {
    Unit,
    Int,
    Float,
    Bool,
    Str,
    /// A net named as a value (`train(MnistMlp, ...)`).
    Net,
    Record(ItemId),
    List(Box<HTy>),
    /// An `extern type` of the runtime (`Model`, `Split`).
    Opaque(ItemId),
}

impl HTy {
    /// Whether compiled code holds this type as an f64 (every other type is an i64).
    pub fn is_float(&self) -> bool {
        matches!(self, HTy::Float)
    }
}

/// Index of a function in [`HostProgram::funcs`].
pub type FuncId = usize;
/// Index of a local slot in a function.
pub type LocalId = usize;
/// Index of a builtin in [`HostProgram::builtins`].
pub type BuiltinId = usize;
/// Index of a call site in [`HostProgram::sites`] (runtime errors point at it).
pub type SiteId = usize;

/// A typed host expression.
#[derive(Clone, Debug)]
pub struct HExpr {
    pub kind: HKind,
    pub ty: HTy,
    pub span: Span,
}

/// How a value is shown in a string (`{x:.2%}`): parsed from the format spec.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct FormatSpec {
    /// Digits after the point.
    pub precision: Option<usize>,
    /// `%`: multiply by 100 and add a percent sign.
    pub percent: bool,
    /// `e`: scientific notation.
    pub exp: bool,
}

/// The most digits after the point a format may ask for: the exact decimal expansion of
/// the smallest f64 (2^-1074) has 1074, so more would only add zeros.
pub const MAX_PRECISION: usize = 1074;

/// Why a format spec was refused (E0602).
#[derive(Clone, Debug, PartialEq)]
pub enum FormatError {
    /// Not one of the forms.
    Unknown,
    /// A precision above [`MAX_PRECISION`].
    TooPrecise(String),
}

impl FormatSpec {
    /// Parses `.2%`, `.6`, `e`, `.3e`.
    pub fn parse(s: &str) -> Result<FormatSpec, FormatError> {
        let mut spec = FormatSpec::default();
        let mut rest = s;
        if let Some(r) = rest.strip_suffix('%') {
            spec.percent = true;
            rest = r;
        } else if let Some(r) = rest.strip_suffix('e') {
            spec.exp = true;
            rest = r;
        }
        if let Some(digits) = rest.strip_prefix('.') {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FormatError::Unknown);
            }
            match digits.parse::<usize>() {
                Ok(p) if p <= MAX_PRECISION => spec.precision = Some(p),
                _ => return Err(FormatError::TooPrecise(digits.to_string())),
            }
        } else if !rest.is_empty() {
            return Err(FormatError::Unknown);
        }
        Ok(spec)
    }

    /// Formats a float by this spec.
    pub fn float(&self, x: f64) -> String {
        match (self.percent, self.exp, self.precision) {
            (true, _, p) => format!("{:.*}%", p.unwrap_or(2), x * 100.0),
            (_, true, Some(p)) => format!("{x:.p$e}"),
            (_, true, None) => format!("{x:e}"),
            (_, _, Some(p)) => format!("{x:.p$}"),
            _ => format!("{x}"),
        }
    }
}

/// One piece of an interpolated string.
#[derive(Clone, Debug)]
pub enum Piece {
    Lit(String),
    Value(HExpr, FormatSpec),
}

#[derive(Clone, Debug)]
pub enum HKind {
    Unit,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A net, by name (the runtime looks it up in the checked program).
    Net(String),
    Local(LocalId),
    /// A REPL session's global: the value a top-level binding of an earlier input left.
    Global(usize),
    /// Stores a top-level binding's value for later inputs; type `()`.
    SetGlobal(usize, Box<HExpr>),
    /// `let`/`var` binding and assignment alike: stores into a slot; type `()`.
    Set(LocalId, Box<HExpr>),
    /// A host function; the site is added to a runtime error's trace as it passes.
    Call(FuncId, Vec<HExpr>, SiteId),
    /// A native builtin; the site is where runtime errors point.
    Builtin(BuiltinId, Vec<HExpr>, SiteId),
    /// Field `index` of a record.
    Field(Box<HExpr>, usize),
    /// A record's fields in declaration order.
    Record(Vec<HExpr>),
    List(Vec<HExpr>),
    /// `list[i]`, bounds-checked.
    Index(Box<HExpr>, Box<HExpr>, SiteId),
    IntToFloat(Box<HExpr>),
    Unary(UnOp, Box<HExpr>),
    /// Operands of the same type (ints promoted already). Int `/` is floor division and
    /// `%` its remainder; dividing by zero is a runtime error at the site.
    Binary(BinOp, Box<HExpr>, Box<HExpr>, SiteId),
    If(Box<HExpr>, Box<HExpr>, Option<Box<HExpr>>),
    While(Box<HExpr>, Box<HExpr>),
    /// `for var in start..end { body }`; `end` is evaluated once.
    ForRange {
        var: LocalId,
        end_slot: LocalId,
        start: Box<HExpr>,
        end: Box<HExpr>,
        body: Box<HExpr>,
    },
    /// `for var in list { body }`, with hidden slots for the list, the position and the
    /// length (read once: lists are immutable).
    ForList {
        var: LocalId,
        list_slot: LocalId,
        index_slot: LocalId,
        end_slot: LocalId,
        list: Box<HExpr>,
        body: Box<HExpr>,
        site: SiteId,
    },
    /// Statements; the value is the last one's (or `()` when the type is `()`).
    Block(Vec<HExpr>),
    Return(Option<Box<HExpr>>),
    Break,
    Continue,
    Format(Vec<Piece>),
}

impl HExpr {
    pub fn new(kind: HKind, ty: HTy, span: Span) -> HExpr {
        HExpr { kind, ty, span }
    }
}

/// A host function, compiled once.
#[derive(Clone, Debug)]
pub struct HFunc {
    pub name: String,
    /// Parameters are the first locals.
    pub params: usize,
    pub locals: Vec<HTy>,
    pub ret: HTy,
    pub body: HExpr,
    pub span: Span,
}

/// A native builtin the program calls: an `extern fn`, or one of the runtime's own
/// operations on strings and lists (names starting with `__`).
#[derive(Clone, Debug)]
pub struct BuiltinDecl {
    pub name: String,
    pub params: Vec<HTy>,
    pub ret: HTy,
    /// Its first call, for an error when the runtime has no implementation.
    pub span: Span,
}

/// A record type's layout: its fields in declaration order.
#[derive(Clone, Debug)]
pub struct RecordLayout {
    pub name: String,
    pub fields: Vec<(String, HTy)>,
}

/// A whole host program: `main` runs the root file's top-level statements.
#[derive(Clone, Debug, Default)]
pub struct HostProgram {
    pub funcs: Vec<HFunc>,
    pub main: FuncId,
    pub builtins: Vec<BuiltinDecl>,
    /// Where each call site is, for runtime errors.
    pub sites: Vec<Span>,
    pub records: std::collections::HashMap<ItemId, RecordLayout>,
    /// A REPL session's globals after this input, by index (empty for scripts).
    pub globals: Vec<(String, HTy)>,
}

impl HostProgram {
    /// The builtin with this name, if the program calls it.
    pub fn builtin(&self, name: &str) -> Option<BuiltinId> {
        self.builtins.iter().position(|b| b.name == name)
    }
}
