//! Surface syntax: tokens, the tree, and the parser that never fails.

pub mod ast;
pub mod depth;
pub mod format;
pub mod parser;
pub mod token;

pub use parser::{parse_expr, parse_module};
