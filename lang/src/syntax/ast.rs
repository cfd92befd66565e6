//! The syntax tree. Every node has a span; a part that failed to parse is an `Error`
//! node, so the tree always exists and later stages skip what they cannot understand.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, Default)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: ItemKind,
    pub doc: Option<String>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ItemKind {
    Import(Import),
    Fn(FnDecl),
    Layer(LayerDecl),
    Net(NetDecl),
    Rule(RuleDecl),
    Record(RecordDecl),
    /// `extern type Name`: an opaque host type provided by the runtime.
    ExternType(Ident),
    /// A top-level host statement.
    Stmt(Stmt),
    Error,
}

/// `import std.nn.*` or `import std.data.mnist`.
#[derive(Clone, Debug)]
pub struct Import {
    pub path: Vec<Ident>,
    pub glob: bool,
}

/// A parameter of a fn or layer, or a record field: `name: Type = default`.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub default: Option<Expr>,
    pub span: Span,
}

/// `fn name(params) -> Type where cond { body }`, or `extern fn name(params) -> Type
/// where cond` (no body: a native builtin). The `where` conditions must hold at every
/// call (a convolution's kernel fits its padded input).
#[derive(Clone, Debug)]
pub struct FnDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    pub ret: Option<TypeExpr>,
    pub wheres: Vec<Expr>,
    pub body: Option<Block>,
}

/// `layer name(args)(input: Type) -> Type where cond { body }`.
#[derive(Clone, Debug)]
pub struct LayerDecl {
    pub name: Ident,
    pub args: Vec<Param>,
    pub input: Param,
    pub ret: Option<TypeExpr>,
    pub wheres: Vec<Expr>,
    pub body: Block,
}

/// `net Name: in -> out { stages }`.
#[derive(Clone, Debug)]
pub struct NetDecl {
    pub name: Ident,
    pub input: TypeExpr,
    pub output: TypeExpr,
    pub stages: Vec<Stage>,
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub kind: StageKind,
    pub label: Option<ModuleLabel>,
    pub span: Span,
}

/// The name a stage or a pipeline step gives the module it makes, and so the prefix of its
/// parameters' names: a path (`conv1`, `block.0`, `features.18`), a string whose `{i}`
/// parts are known ints (`"encoder_layer_{i}"`), or `self` (no name of its own: the
/// parameters belong to the enclosing layer or net).
#[derive(Clone, Debug)]
pub struct ModuleLabel {
    /// A path is one literal part.
    pub parts: Vec<StrPart>,
    pub span: Span,
}

impl ModuleLabel {
    /// The label's text when it has no interpolated parts.
    pub fn literal(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|p| match p {
                StrPart::Lit(s) => Some(s.as_str()),
                StrPart::Interp(..) => None,
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub enum StageKind {
    /// A layer or fn application, a bare name, or any other expression of the running value.
    Apply(Expr),
    /// `repeat n { stages }` or `repeat n as i { stages }`: the stages written out n times,
    /// `i` counting from 0.
    Repeat {
        count: Expr,
        index: Option<Ident>,
        body: Vec<Stage>,
    },
    /// `{ stages }`: a sequence of its own, whose stages are numbered from 0 under the
    /// group's name (a nested `nn.Sequential`).
    Group(Vec<Stage>),
    Error,
}

/// `rule name(x, w; stride, pad) -> y { dx = ...; dw = ... }`.
#[derive(Clone, Debug)]
pub struct RuleDecl {
    pub name: Ident,
    pub inputs: Vec<Ident>,
    pub attrs: Vec<Ident>,
    pub output: Option<Ident>,
    pub body: Block,
}

/// `record Name { field: Type = default, ... }`.
#[derive(Clone, Debug)]
pub struct RecordDecl {
    pub name: Ident,
    pub fields: Vec<Param>,
}

#[derive(Clone, Debug)]
pub struct TypeExpr {
    pub kind: TypeKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum TypeKind {
    /// `int`, `float`, `Dataset`, ...
    Named(Ident),
    /// `f32[B, 784]`.
    Tensor {
        dtype: Ident,
        dims: Vec<DimExpr>,
    },
    /// `[T]`.
    List(Box<TypeExpr>),
    Error,
}

#[derive(Clone, Debug)]
pub struct DimExpr {
    pub kind: DimKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum DimKind {
    Int(i64),
    Name(String),
    /// `...S`: any number of dims, bound as a group.
    Pack(String),
    Bin(BinOp, Box<DimExpr>, Box<DimExpr>),
    Error,
}

#[derive(Clone, Debug, Default)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

impl Block {
    /// The block's value: its last statement when that is an expression.
    pub fn tail(&self) -> Option<&Expr> {
        match self.stmts.last().map(|s| &s.kind) {
            Some(StmtKind::Expr(e)) => Some(e),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StmtKind {
    Let {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Expr,
        mutable: bool,
    },
    Assign {
        target: Expr,
        op: Option<BinOp>,
        value: Expr,
    },
    /// `param w: f32[out, in] = init if cond`.
    Param {
        name: Ident,
        ty: TypeExpr,
        init: Option<Expr>,
        cond: Option<Expr>,
    },
    /// `state mean: f32[c] = zeros`.
    State {
        name: Ident,
        ty: TypeExpr,
        init: Option<Expr>,
    },
    For {
        var: Ident,
        iter: Expr,
        body: Block,
    },
    While {
        cond: Expr,
        body: Block,
    },
    Return(Option<Expr>),
    Break,
    Continue,
    Expr(Expr),
    Error,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    MatMul,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::MatMul => "@",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug)]
pub enum StrPart {
    Lit(String),
    /// `{expr}` or `{expr:.2%}`.
    Interp(Expr, Option<String>),
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug)]
pub enum IndexItem {
    /// `x[i]` (drops the axis).
    At(Expr),
    /// `x[a:b]`, `x[:]`, `x[a:]`.
    Slice(Option<Expr>, Option<Expr>),
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Vec<StrPart>),
    Name(String),
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Field {
        base: Box<Expr>,
        name: Ident,
    },
    Index {
        base: Box<Expr>,
        items: Vec<IndexItem>,
    },
    /// `x.T`: swap the last two axes.
    Transpose(Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `x |> f`: apply `f` to `x`.
    Pipe(Box<Expr>, Box<Expr>),
    /// `label: layer(...)`, only as the right side of `|>`: the layer's module name.
    Labelled(ModuleLabel, Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Block,
        els: Option<Box<Expr>>,
    },
    Block(Block),
    Record {
        name: Ident,
        fields: Vec<(Ident, Expr)>,
    },
    List(Vec<Expr>),
    Range(Box<Expr>, Box<Expr>),
    Error,
}

impl Expr {
    pub fn error(span: Span) -> Expr {
        Expr {
            kind: ExprKind::Error,
            span,
        }
    }
}
