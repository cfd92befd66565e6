//! nabla against careless and hostile input, one module per class of failure. Each test
//! generates many inputs of its class (not only the examples of the issue that named the
//! class) and asserts a coded error or correct behaviour: never a panic, an abort, a hang,
//! lost work or a silently wrong result.
//!
//! | class | module |
//! |---|---|
//! | deep input: nesting, long chains, recursion | `depth` |
//! | compile-time arithmetic and formats | `arith` |
//! | shapes that cannot exist | `shapes` |
//! | recipe values outside their domain, empty datasets | `recipes` |
//! | sizes too large for memory | `memory` |
//! | closed pipes and Ctrl-C | `signals` |
//! | interrupted checkpoint writes | `files` |
//! | the same seed gives the same bits | `determinism` |
//! | gradient checks on degenerate instances | `gradcheck` |
//!
//! The language server's classes (malformed frames, non-ASCII positions, a very long line)
//! are in `tests/lsp_frames.rs`; the formatter's comments in `tests/fmt.rs`.

#[path = "../support/rng.rs"]
mod rng;

mod arith;
mod depth;
mod determinism;
mod files;
mod gradcheck;
mod memory;
mod recipes;
mod shapes;
mod signals;
mod transforms;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A fresh directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nabla-hostile-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The `nabla` binary with `args`, in `dir`, without colour or a dataset directory.
pub fn nabla(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nabla"));
    c.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("NABLA_DATA")
        .stdin(Stdio::null());
    c
}

/// What a finished command printed.
pub struct Ran {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
}

impl Ran {
    fn of(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            out: String::from_utf8_lossy(&o.stdout).into(),
            err: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    /// The diagnostic codes printed, in order (`[E0313]`).
    pub fn codes(&self) -> Vec<String> {
        self.err
            .match_indices("[E")
            .filter_map(|(i, _)| self.err.get(i + 1..i + 6))
            .map(str::to_string)
            .collect()
    }

    /// Neither a panic nor an abort: exit 0 or 1 (130 for an interrupt), and no panic text.
    pub fn assert_no_crash(&self, what: &str) {
        assert!(
            matches!(self.code, Some(0 | 1 | 130)),
            "{what}: exit {:?}\n{}\n{}",
            self.code,
            self.out,
            self.err
        );
        assert!(
            !self.err.contains("panicked") && !self.err.contains("overflowed its stack"),
            "{what}: {}",
            self.err
        );
    }
}

/// Writes `src` to `dir/name` and runs `nabla CMD dir/name`.
pub fn on_file(dir: &Path, name: &str, src: &str, cmd: &[&str]) -> Ran {
    std::fs::write(dir.join(name), src).expect("write source");
    let mut args = cmd.to_vec();
    args.push(name);
    Ran::of(nabla(dir, &args).output().expect("run nabla"))
}

/// Sends Ctrl-C's signal (SIGINT) to a child process.
pub fn interrupt(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: a signal to a process this test started.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
}

/// Runs the REPL on `input` (piped, as the tests drive it).
pub fn repl(dir: &Path, input: &str) -> Ran {
    use std::io::Write;
    let mut child = nabla(dir, &["repl"])
        .env("NABLA_HISTORY", dir.join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start repl");
    // Written from another thread: the REPL's output is read meanwhile, so neither side
    // waits on a full pipe.
    let writer = child.stdin.take().map(|mut i| {
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = i.write_all(input.as_bytes());
        })
    });
    let out = Ran::of(child.wait_with_output().expect("repl output"));
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}
