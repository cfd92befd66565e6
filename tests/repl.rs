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
        out.contains("d `0.weight` = t2.T @ x")
            && out.contains("%0 = input \"x\" data : f32[1, 4]"),
        "{out}"
    );
    assert!(!out.contains("not reached"));
}

/// `:device` moves later tensor code to another backend: a model trained on the
/// reference interpreter and one trained on the CPU agree; a model used on a device
/// other than its own is an error saying so; an unknown device is an error.
#[test]
fn device_switches_where_tensor_code_runs() {
    let net = "import std.nn.*\nimport std.data.*\nnet L: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\n";
    let fit = |name: &str| {
        format!(
            "let {name} = train(L, mnist(), TrainConfig {{ optimizer: sgd(lr: 0.1), batch: 2000, epochs: 1 }})\n"
        )
    };
    let input = format!(
        ":device\n{net}{}:device ref\n:device\n{}accuracy(a, mnist().test)\n:device cpu\naccuracy(a, mnist().test)\n:device tpu\n",
        fit("a"),
        fit("b")
    );
    let (out, err) = session(&input);
    assert!(out.starts_with("tensor code runs on cpu\n"), "{out}");
    assert!(
        out.contains("tensor code now runs on the f64 reference interpreter"),
        "{out}"
    );
    assert!(
        out.contains("tensor code runs on the f64 reference interpreter"),
        "{out}"
    );
    let losses: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("Epoch 1/1: loss="))
        .collect();
    assert_eq!(losses.len(), 2, "{out}");
    let loss = |l: &str| -> f64 {
        l["Epoch 1/1: loss=".len()..]
            .split(' ')
            .next()
            .expect("loss")
            .parse()
            .expect("number")
    };
    assert!(
        (loss(losses[0]) - loss(losses[1])).abs() < 1e-4,
        "{losses:?}"
    );
    assert!(
        err.contains("this model was made on another device, where its tensors live"),
        "{err}"
    );
    assert!(
        err.contains("unknown device `tpu`: expected cpu, wgpu, cuda, hip or ref"),
        "{err}"
    );
}
