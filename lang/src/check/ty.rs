//! The checker's values: host types, and for tensor code compile-time values (dims as
//! [`Dim`]s, tensor shapes, partially applied layers).

use std::fmt;
use std::rc::Rc;

use super::dim::Dim;
use super::names::ItemId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I32,
    I64,
    U8,
    Bool,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            "f64" => DType::F64,
            "i32" => DType::I32,
            "i64" => DType::I64,
            "u8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

/// A layer with its compile-time arguments bound, waiting for its input: `conv(64, 3)`.
#[derive(Clone, Debug)]
pub struct LayerValue {
    pub item: ItemId,
    pub args: Vec<(Option<String>, Ty, crate::span::Span)>,
}

/// The IR value of a tensor while lowering (`None` while only checking).
pub type Val = Option<crate::ir::ValueId>;

#[derive(Clone, Debug)]
pub enum Ty {
    /// An int; in tensor code its value is usually known (a dim).
    Int(Option<Dim>),
    /// A float; its value when known at compile time (literals, layer arguments).
    Float(Option<f64>),
    Bool(Option<bool>),
    Str,
    Unit,
    /// A tensor: element type, shape, and when lowering, the IR value holding it.
    Tensor(DType, Vec<Dim>, Val),
    /// A list literal: its elements' types (and values).
    Items(Vec<Ty>),
    List(Box<Ty>),
    Range,
    Record(ItemId),
    Opaque(ItemId),
    /// A function, extern function or layer named as a value.
    Item(ItemId),
    Layer(Rc<LayerValue>),
    Net(ItemId),
    /// Any host value (the `any` parameter type of builtins like `print`).
    Any,
    /// The type of something already reported as wrong: accepted everywhere, so one
    /// mistake gives one diagnostic.
    Err,
}

impl Ty {
    pub fn int(n: i64) -> Ty {
        Ty::Int(Some(Dim::konst(n)))
    }
    pub fn dim(&self) -> Option<&Dim> {
        match self {
            Ty::Int(Some(d)) => Some(d),
            _ => None,
        }
    }
    /// A compile-time scalar's value as a float.
    pub fn scalar(&self) -> Option<f64> {
        match self {
            Ty::Int(Some(d)) => d.as_const().map(|n| n as f64),
            Ty::Float(v) => *v,
            _ => None,
        }
    }
    pub fn is_err(&self) -> bool {
        matches!(self, Ty::Err)
    }
}

/// `f32[B, 784]`.
pub struct ShapeFmt<'a>(pub DType, pub &'a [Dim]);

impl fmt::Display for ShapeFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}[", self.0.name())?;
        for (i, d) in self.1.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

pub fn shape_str(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
