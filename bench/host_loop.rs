//! Host code speed: loops of 10^7 scalar iterations compiled by nabla's host compiler
//! (Cranelift), against the same loops in Rust (release), in the same process.
//!
//!     cargo bench --bench host_loop
//!
//! Prints each loop's time both ways and the ratio, then one `json {...}` line.

use std::hint::black_box;
use std::time::Instant;

use nabla_lang::check::check_source;
use nabla_lang::host::Word;
use nabla_lang::host::heap::{Builtins, Heap};

const N: i64 = 10_000_000;

/// Each case: name, nabla program (prints its result), the same loop in Rust.
type RustLoop = fn(i64) -> String;

fn int_loop(n: i64) -> String {
    let (mut s, mut i) = (0i64, 0i64);
    let m = black_box(1_000_003i64);
    while i < n {
        s = (s + i * i).rem_euclid(m);
        i += 1;
    }
    s.to_string()
}

fn float_loop(n: i64) -> String {
    let mut acc = 0.0f64;
    for i in 0..n {
        let x = i as f64 * 1e-7;
        acc += x * x - 0.5 * x;
    }
    format!("{acc:.6}")
}

fn branch_loop(n: i64) -> String {
    let (mut evens, mut odds) = (0i64, 0i64);
    for i in 0..n {
        if i % 2 == 0 {
            evens += i;
        } else {
            odds += 1;
        }
    }
    format!("{evens} {odds}")
}

const CASES: &[(&str, &str, RustLoop)] = &[
    (
        "int: s = (s + i*i) % m (m not a constant)",
        "fn run(n: int, m: int) -> int {\n  var s = 0\n  var i = 0\n  while i < n {\n    s = (s + i * i) % m\n    i += 1\n  }\n  s\n}\nprint(run(10000000, 1000003))\n",
        int_loop,
    ),
    (
        "float: acc += x*x - 0.5x",
        "fn run(n: int) -> float {\n  var acc = 0.0\n  for i in 0..n {\n    let x = float(i) * 0.0000001\n    acc += x * x - 0.5 * x\n  }\n  acc\n}\nprint(\"{run(10000000):.6}\")\n",
        float_loop,
    ),
    (
        "branch: if i % 2 == 0",
        "fn run(n: int) -> str {\n  var evens = 0\n  var odds = 0\n  for i in 0..n {\n    if i % 2 == 0 { evens += i } else { odds += 1 }\n  }\n  \"{evens} {odds}\"\n}\nprint(run(10000000))\n",
        branch_loop,
    ),
];

struct Capture(Vec<String>);

impl Builtins for Capture {
    fn call(&mut self, _id: usize, heap: &mut Heap, args: &[Word]) -> Result<Word, String> {
        self.0.push(heap.str(args[0])?.to_string());
        Ok(0)
    }
}

fn main() {
    let mut rows = Vec::new();
    for (name, src, rust) in CASES {
        let checked = check_source("loop.net", src, &nabla_stdlib::StdLoader);
        assert!(!checked.has_errors(), "{name}: {:?}", checked.diagnostics);
        let prog = nabla_lang::host::lower::lower_program(&checked.program, 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut heap = Heap::default();
        let compiled = nabla_host::compile(&prog, &mut heap).unwrap_or_else(|e| panic!("{e}"));
        let mut best = (f64::MAX, f64::MAX);
        let (mut ours, mut theirs) = (String::new(), String::new());
        for _ in 0..5 {
            let mut cap = Capture(vec![]);
            let t = Instant::now();
            compiled
                .run(&prog, &mut heap, &mut cap, &mut vec![])
                .unwrap_or_else(|e| panic!("{e}"));
            best.0 = best.0.min(t.elapsed().as_secs_f64());
            ours = cap.0.join("");
            let t = Instant::now();
            theirs = black_box(rust(black_box(N)));
            best.1 = best.1.min(t.elapsed().as_secs_f64());
        }
        assert_eq!(ours, theirs, "{name}: nabla and Rust disagree");
        println!(
            "{name:<44} nabla {:>7.1} ms  rust {:>7.1} ms  ratio {:.2}x  (compile {:.2} ms)",
            best.0 * 1e3,
            best.1 * 1e3,
            best.0 / best.1,
            compiled.compile_ms
        );
        rows.push(format!(
            "{{\"case\": \"{}\", \"nabla_ms\": {:.2}, \"rust_ms\": {:.2}, \"ratio\": {:.3}}}",
            name.split(':').next().unwrap_or(name),
            best.0 * 1e3,
            best.1 * 1e3,
            best.0 / best.1
        ));
    }
    println!("json [{}]", rows.join(", "));
}
