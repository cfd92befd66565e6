//! `nabla-stdlib`: the standard library's `.net` sources, embedded in the binary, and
//! (as they are built) the native builtins those sources declare with `extern fn`.

pub mod runtime;

use std::collections::HashMap;

/// Every standard module: its path and its source.
pub const MODULES: &[(&str, &str)] = &[
    ("std.core", include_str!("../std/core.net")),
    ("std.rules", include_str!("../std/rules.net")),
    ("std.nn", include_str!("../std/nn.net")),
    ("std.optim", include_str!("../std/optim.net")),
    ("std.data", include_str!("../std/data.net")),
    ("std.train", include_str!("../std/train.net")),
    ("std.io", include_str!("../std/io.net")),
];

/// The source of a standard module, by path (`std.nn`).
pub fn source(path: &str) -> Option<&'static str> {
    MODULES.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

/// A loader for the standard library alone (tests and tools with no files).
pub struct StdLoader;

impl nabla_lang::check::Loader for StdLoader {
    fn load(&self, path: &[String], _from: &str) -> Result<(String, String), String> {
        let key = path.join(".");
        source(&key).map(|s| (format!("<{key}>"), s.to_string())).ok_or_else(|| format!("no module `{key}`"))
    }
}

/// All modules as a map (for [`nabla_lang::check::MapLoader`]).
pub fn module_map() -> HashMap<String, String> {
    MODULES.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect()
}
