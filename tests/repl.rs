//! `nabla repl` driven through stdin: values persist between inputs, multi-line input,
//! commands, and an error leaves the session's earlier definitions intact.

use std::io::Write;
use std::process::{Command, Stdio};

fn session(input: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .arg("repl")
        .env("NO_COLOR", "1")
        .env(
            "NABLA_HISTORY",
            std::env::temp_dir().join("nabla-test-history"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start repl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("repl output");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bindings_functions_and_commands_persist_across_inputs() {
    let input = "let x = 40\nx + 2\nvar t = 0\nfor i in 0..5 {\n  t += i\n}\nt\nfn sq(v: int) -> int {\n  v * v\n}\nsq(t)\n\
                 let c = TrainConfig { batch: 32 }\nc.batch\n:type c\n:type sq\n:type c.optimizer.lr\n";
    let (out, err) = session(input);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "42",
            "10",
            "100",
            "32",
            "TrainConfig",
            "fn sq(v: int) -> int",
            "float"
        ],
        "stderr: {err}"
    );
}

#[test]
fn errors_show_their_span_and_the_session_goes_on() {
    let input = "let x = 40\nprint(undefined_name)\nx\nfn div(a: int, b: int) -> int { a / b }\ndiv(1, 0)\nx * 2\n:frob\n";
    let (out, err) = session(input);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["40", "80"],
        "stderr: {err}"
    );
    assert!(
        err.contains("[E0101] Error: cannot find `undefined_name`")
            && err.contains("print(undefined_name)")
            // Lines count from the input's own first line, not the session's.
            && err.contains("<input>:1:7")
            // An earlier input keeps the session's numbering: `fn div` is its third line
            // (the failed input was not kept).
            && err.contains("<repl>:3:33"),
        "{err}"
    );
    assert!(
        err.contains("[E0701] Error: division by zero") && err.contains("called from here"),
        "{err}"
    );
    assert!(err.contains("unknown command `:frob`"), "{err}");
}

#[test]
fn nets_can_be_defined_and_inspected() {
    let input = "import std.nn.*\nnet Tiny: f32[4] -> f32[2] {\n  dense(2)\n}\n:shape Tiny\n:vjp Tiny\n:ir Tiny\n:quit\nprint(\"not reached\")\n";
    let (out, err) = session(input);
    assert!(
        out.contains("dense(2)")
            && out.contains("f32[B, 2]")
            && out.contains("total: 10 parameters"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("d layers.0.w = t2.T @ x")
            && out.contains("%0 = input \"x\" data : f32[1, 4]"),
        "{out}"
    );
    assert!(!out.contains("not reached"));
}
