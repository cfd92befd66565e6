//! The host compiler: programs run through Cranelift and print what they should; runtime
//! errors stop the program with their span. Each case is (program, expected output).

use nabla_host::{RuntimeError, run};
use nabla_lang::check::check_source;
use nabla_lang::host::heap::{Builtins, Heap};
use nabla_lang::host::{HostProgram, Word};

/// Prints into a vector; the only builtin these programs call (besides the runtime's own).
struct Capture<'p> {
    prog: &'p HostProgram,
    out: Vec<String>,
}

impl Builtins for Capture<'_> {
    fn call(&mut self, id: usize, heap: &mut Heap, args: &[Word]) -> Result<Word, String> {
        match self.prog.builtins[id].name.as_str() {
            "print" => {
                self.out.push(heap.str(args[0])?.to_string());
                Ok(0)
            }
            other => Err(format!("test runtime has no `{other}`")),
        }
    }
}

/// Runs `src`; returns the printed lines, or the error and the text its span covers.
fn exec(src: &str) -> Result<Vec<String>, (String, String)> {
    let checked = check_source("test.net", src, &nabla_stdlib::StdLoader);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    assert!(errors.is_empty(), "{src}\n{errors:?}");
    let prog = nabla_lang::host::lower::lower_program(&checked.program, 0)
        .map_err(|ds| (ds[0].message.clone(), String::new()))?;
    let mut heap = Heap::default();
    let mut cap = Capture {
        prog: &prog,
        out: vec![],
    };
    match run(&prog, &mut heap, &mut cap) {
        Ok(()) => Ok(cap.out),
        Err(RuntimeError { message, span, .. }) => {
            let text = span
                .map(|s| src[s.start..s.end].to_string())
                .unwrap_or_default();
            Err((message, text))
        }
    }
}

fn lines(src: &str) -> String {
    exec(src)
        .unwrap_or_else(|e| panic!("{src}\nfailed: {e:?}"))
        .join("\n")
}

#[test]
fn programs_print_what_they_compute() {
    let cases: &[(&str, &str)] = &[
        // Ints: floor division and its remainder, as dims divide.
        (
            "print(7 / 2)\nprint(-7 / 2)\nprint(-7 % 2)\nprint(7 / -2)\nprint(7 % -2)",
            "3\n-4\n1\n-4\n-1",
        ),
        // Floats, promotion, formats.
        (
            "print(1 / 2.0)\nprint(\"{3.14159:.2}\")\nprint(\"{0.93214:.2%}\")\nprint(2.0)\nprint(\"{1234.5:e}\")",
            "0.5\n3.14\n93.21%\n2.0\n1.2345e3",
        ),
        (
            "let x = 3\nprint(\"x={x}, x²={x * x}, half={float(x) / 2.0:.1}\")",
            "x=3, x²=9, half=1.5",
        ),
        ("print(\"{{literal}} {1 + 1}\")", "{literal} 2"),
        // Loops, mutation, break and continue.
        (
            "var s = 0\nfor i in 0..10 { if i % 2 == 0 { continue }\n s += i }\nprint(s)",
            "25",
        ),
        (
            "var i = 0\nwhile true { i += 1\n if i * i > 50 { break } }\nprint(i)",
            "8",
        ),
        (
            "var n = 0\nfor i in 0..4 { for j in 0..i { n += 1 } }\nprint(n)",
            "6",
        ),
        // if as an expression; && and || short-circuit (the right side would divide by zero).
        (
            "fn d(x: int) -> int { 1 / x }\nlet a = if 3 > 2 { 10 } else { 20 }\nprint(a)\nprint(false && d(0) == 1)\nprint(true || d(0) == 1)",
            "10\nfalse\ntrue",
        ),
        // Small pure arms run branch-free (both arms, then a select): each variable must
        // end with the value of the arm taken, whichever arms assign it.
        (
            "var e = 0\nvar o = 0\nfor i in 0..10 { if i % 2 == 0 { e += i } else { o += 1 } }\nprint(\"{e} {o}\")",
            "20 5",
        ),
        (
            "var m = 0\nvar at = -1\nfor i in 0..10 { let v = i * 7 % 10\n if v > m { m = v\n at = i } }\nprint(\"{m} {at}\")",
            "9 7",
        ),
        (
            "fn mx(a: float, b: float) -> float { if a > b { a } else { b } }\nprint(mx(1.5, -2.0))\nprint(mx(-1.0, 3.0))",
            "1.5\n3.0",
        ),
        (
            "var a = 1\nvar b = 2\nif a < b { a = b\n b = 5 } else { b = a }\nprint(\"{a} {b}\")\nif a > 9 { a = 0 } else { b = a * 10 }\nprint(\"{a} {b}\")",
            "2 5\n2 20",
        ),
        // An arm that could fail (a division by a variable) runs only when taken.
        (
            "fn f(x: int) -> int { var y = 0\n if x != 0 { y = 100 / x }\n y }\nprint(f(0))\nprint(f(4))",
            "0\n25",
        ),
        // Functions: defaults, named arguments, recursion, early return.
        (
            "fn fib(n: int) -> int { if n < 2 { return n }\n fib(n - 1) + fib(n - 2) }\nprint(fib(20))",
            "6765",
        ),
        (
            "fn f(a: int, b: int = 10, c: float = 0.5) -> float { float(a + b) * c }\nprint(f(1))\nprint(f(1, c: 2.0))\nprint(f(b: 1, a: 2))",
            "5.5\n22.0\n1.5",
        ),
        // Records with defaults (the standard library's Optimizer and TrainConfig).
        (
            "let o = sgd(lr: 0.1)\nprint(o.kind)\nprint(o.lr)\nprint(o.momentum)",
            "sgd\n0.1\n0.0",
        ),
        (
            "let c = TrainConfig { batch: 32, optimizer: adamw() }\nprint(c.batch)\nprint(c.epochs)\nprint(c.optimizer.weight_decay)\nprint(c.optimizer.decoupled)",
            "32\n1\n0.05\ntrue",
        ),
        (
            "record P { x: int\n y: float = 1.5 }\nlet p = P { x: 2 }\nprint(p)",
            "P { x: 2, y: 1.5 }",
        ),
        // Lists.
        (
            "let xs = [1, 2, 3]\nvar t = 0\nfor x in xs { t += x }\nprint(t)\nprint(xs[2])\nprint(xs)",
            "6\n3\n[1, 2, 3]",
        ),
        ("let fs = [1, 2.5]\nprint(fs)", "[1.0, 2.5]"),
        // Strings.
        (
            "let s = \"ab\" + \"cd\"\nprint(s)\nprint(s == \"abcd\")\nprint(s != \"abcd\")",
            "abcd\ntrue\nfalse",
        ),
        // Host math on numbers (the same names as the tensor primitives).
        (
            "print(cos(0.0))\nprint(sqrt(16))\nprint(maximum(2, 3.5))\nprint(pow(2.0, 10.0))",
            "1.0\n4.0\n3.5\n1024.0",
        ),
        ("print(int(3.9))\nprint(int(-3.9))", "3\n-3"),
        // Wrapping instead of trapping on the one overflowing division.
        (
            "fn div(a: int, b: int) -> int { a / b }\nprint(div(-9223372036854775807 - 1, -1) == -9223372036854775807 - 1)",
            "true",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(lines(src), *want, "program:\n{src}");
    }
}

#[test]
fn the_learning_rate_schedule_is_nabla_code() {
    // std.train's `learning_rate`: warmup, then cosine to a floor.
    let src = "let c = TrainConfig { optimizer: sgd(lr: 1.0), epochs: 10, warmup_epochs: 2, schedule: cosine(floor: 0.1) }\n\
               print(\"{learning_rate(c, 0, 0, 4):.4}\")\nprint(\"{learning_rate(c, 1, 3, 4):.4}\")\n\
               print(\"{learning_rate(c, 2, 0, 4):.4}\")\nprint(\"{learning_rate(c, 6, 0, 4):.4}\")";
    // Step 1 of 8 warmup steps: 1/8; the last warmup step: 1; cosine at 0: 1; halfway: 0.55.
    assert_eq!(lines(src), "0.1250\n1.0000\n1.0000\n0.5500");
    let step = "let c = TrainConfig { optimizer: sgd(lr: 1.0), epochs: 10, schedule: step(every: 3, gamma: 0.5) }\nprint(learning_rate(c, 7, 0, 4))";
    assert_eq!(lines(step), "0.25");
}

#[test]
fn runtime_errors_stop_with_their_span() {
    let e = exec("fn div(a: int, b: int) -> int { a / b }\nprint(\"before\")\nprint(div(10, 0))\nprint(\"after\")").expect_err("division by zero");
    assert_eq!(e, ("division by zero".into(), "a / b".into()));
    let e = exec("let xs = [1, 2]\nlet i = 5\nprint(xs[i])").expect_err("out of range");
    assert_eq!(
        e,
        (
            "index 5 is out of range for a list of 2".into(),
            "xs[i]".into()
        )
    );
    // Inside a function called from a loop: the error still stops everything.
    let e = exec(
        "fn f(x: int) -> int { 100 / x }\nvar t = 0\nfor i in 0..5 { t += f(3 - i) }\nprint(t)",
    )
    .expect_err("in a call");
    assert_eq!(e.1, "100 / x");
    let e = exec("print(int(0.0 / 0.0))").expect_err("NaN to int");
    assert!(e.0.contains("cannot convert NaN"), "{e:?}");
}

#[test]
fn tensor_code_in_host_code_is_refused_before_running() {
    let e = exec("print(relu)").expect_err("unsupported");
    assert!(e.0.contains("not supported in host code"), "{e:?}");
}
