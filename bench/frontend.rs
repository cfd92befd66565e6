//! Front-end benchmark: parse and check speed.
//!
//! `cargo bench --bench frontend` prints
//! 1. lines per second parsing and checking a generated 10,000-line file, and
//! 2. the time to check all of `examples/` plus the standard library (the bar:
//!    under 50 ms in a release build).
//! Each figure is the median of several runs.

use std::time::{Duration, Instant};

use nabla_lang::check::{check_files, check_source};
use nabla_lang::span::FileId;
use nabla_lang::syntax::parse_module;

/// A program of about `lines` lines: layers, nets, tensor and host functions, with
/// unique names so nothing is cached away.
fn generate(lines: usize) -> String {
    let mut s = String::from("import std.nn.*\n\n");
    let mut i = 0;
    while s.lines().count() < lines {
        s.push_str(&format!(
            "/// Block {i}.\nlayer block{i}(c: dim)(x: f32[B, cin, H, W]) {{\n  let y = x |> conv(c, 3, pad: 1) |> batchnorm |> relu\n  y |> conv(c, 3, pad: 1) |> batchnorm\n}}\n\n\
             net Net{i}: f32[3, 32, 32] -> f32[10] {{\n  block{i}(16)\n  maxpool(2)\n  block{i}(32)\n  global_avg_pool\n  dense(10)\n}}\n\n\
             fn score{i}(x: f32[B, 10], w: f32[10, 10]) -> f32[B, 10] {{\n  relu(x @ w.T + 1.0)\n}}\n\n\
             fn host{i}(n: int) -> int {{\n  var total = 0\n  for k in 0..n {{ total += k * {i} }}\n  total\n}}\nlet v{i} = host{i}(3)\nprint(\"value {{v{i}}}\")\n\n"
        ));
        i += 1;
    }
    s
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let src = generate(10_000);
    let lines = src.lines().count();
    let parse = time(7, || {
        let (_, d) = parse_module(&src, FileId(0));
        assert!(d.is_empty(), "generated file must parse cleanly");
    });
    let check = time(5, || {
        let c = check_source("gen.net", &src, &nabla_stdlib::StdLoader);
        assert!(
            c.diagnostics.is_empty(),
            "generated file must check cleanly: {:?}",
            c.diagnostics.first()
        );
    });
    let per_sec = |d: Duration| lines as f64 / d.as_secs_f64();
    println!("generated file: {lines} lines");
    println!(
        "  parse:          {:>8.2} ms  {:>12.0} lines/s",
        parse.as_secs_f64() * 1e3,
        per_sec(parse)
    );
    println!(
        "  parse + check:  {:>8.2} ms  {:>12.0} lines/s",
        check.as_secs_f64() * 1e3,
        per_sec(check)
    );

    let dir = format!("{}/examples", env!("CARGO_MANIFEST_DIR"));
    let mut roots: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("examples")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "net"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).expect("read"),
            )
        })
        .collect();
    roots.sort();
    let std_lines: usize = nabla_stdlib::MODULES
        .iter()
        .map(|(_, s)| s.lines().count())
        .sum();
    let ex_lines: usize = roots.iter().map(|(_, s)| s.lines().count()).sum();
    let all = time(11, || {
        let c = check_files(&roots, &nabla_stdlib::StdLoader);
        assert!(c.diagnostics.is_empty());
    });
    println!(
        "examples/ ({} files, {ex_lines} lines) + standard library ({std_lines} lines): {:.2} ms (bar: 50 ms)",
        roots.len(),
        all.as_secs_f64() * 1e3
    );
}
