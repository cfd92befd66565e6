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
        source(&key)
            .map(|s| (format!("<{key}>"), s.to_string()))
            .ok_or_else(|| format!("no module `{key}`"))
    }
}

/// The loader of the CLI and the language server: `std.*` from the embedded library, and
/// `import a.b` as `a/b.net` beside the importing file, asking `open` first (an editor's
/// unsaved buffers, by path) and then the disk.
pub struct FileLoader<'a> {
    open: Option<&'a dyn Fn(&str) -> Option<String>>,
}

impl FileLoader<'static> {
    /// Files on disk only.
    pub fn disk() -> FileLoader<'static> {
        FileLoader { open: None }
    }
}

impl<'a> FileLoader<'a> {
    /// Open buffers (by path) before the disk.
    pub fn with_open(open: &'a dyn Fn(&str) -> Option<String>) -> FileLoader<'a> {
        FileLoader { open: Some(open) }
    }
}

impl nabla_lang::check::Loader for FileLoader<'_> {
    fn load(&self, path: &[String], from: &str) -> Result<(String, String), String> {
        let key = path.join(".");
        if let Some(src) = source(&key) {
            return Ok((format!("<{key}>"), src.to_string()));
        }
        if path.first().is_some_and(|p| p == "std") {
            return Err(format!("no standard module `{key}`"));
        }
        let mut file = std::path::Path::new(from)
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        for p in path {
            file.push(p);
        }
        file.set_extension("net");
        let name = file.display().to_string();
        if let Some(text) = self.open.and_then(|open| open(&name)) {
            return Ok((name, text));
        }
        std::fs::read_to_string(&file)
            .map(|t| (name.clone(), t))
            .map_err(|e| format!("{name}: {e}"))
    }
}

/// All modules as a map (for [`nabla_lang::check::MapLoader`]).
pub fn module_map() -> HashMap<String, String> {
    MODULES
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect()
}
