//! The `nabla` binary: exit codes, rendered and JSON diagnostics, and `info`.

use std::process::Command;

fn nabla(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run nabla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn scratch(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("nabla-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn check_clean_examples_exits_zero() {
    let (code, out, err) = nabla(&["check", "examples/mnist_mlp.net", "examples/resnet34.net"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty() && err.is_empty());
}

#[test]
fn check_errors_exit_one_with_rendered_report() {
    let bad = scratch(
        "bad.net",
        "import std.nn.*\nnet Bad: f32[1, 28, 28] -> f32[10] {\n  dense(512, relu)\n  dense(10)\n}\n",
    );
    let (code, _, err) = nabla(&["check", &bad]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "[E0301] Error: `dense` expects a rank-2 input f32[B, in], got f32[B, 1, 28, 28]"
        ),
        "{err}"
    );
    assert!(err.contains("insert `flatten` before `dense`"), "{err}");
    assert!(err.contains("f32[B, 1, 28, 28] comes from here"), "{err}");
}

#[test]
fn check_json_is_one_object_per_line() {
    let bad = scratch("two.net", "let a: int = \"x\"\nprint(undefined_name)\n");
    let (code, out, _) = nabla(&["check", "--json", &bad]);
    assert_eq!(code, 1);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["code"], "E0201");
    assert_eq!(lines[0]["severity"], "error");
    assert_eq!(lines[0]["span"]["line"], 1);
    assert_eq!(lines[0]["span"]["column"], 14);
    assert_eq!(lines[1]["code"], "E0101");
    assert_eq!(lines[1]["span"]["line"], 2);
    assert!(lines[1]["labels"].as_array().is_some_and(|l| !l.is_empty()));
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let (code, _, err) = nabla(&["check", "does/not/exist.net"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read does/not/exist.net"), "{err}");
}

#[test]
fn local_imports_across_files() {
    let dir = std::env::temp_dir().join(format!("nabla-cli-import-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models")).expect("dir");
    std::fs::write(dir.join("models/blocks.net"), "import std.nn.*\n/// Two dense layers.\nlayer mlp2(h: dim)(x: f32[B, n]) { x |> dense(h, relu) |> dense(h, relu) }\n").expect("write");
    let main = dir.join("main.net");
    std::fs::write(&main, "import std.nn.*\nimport models.blocks.*\nnet M: f32[8] -> f32[4] {\n  mlp2(16)\n  dense(4)\n}\n").expect("write");
    let (code, out, err) = nabla(&["info", &main.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    // 8*16+16 + 16*16+16 + 16*4+4 = 144 + 272 + 68
    assert!(out.contains("total: 484 parameters"), "{out}");
}

#[test]
fn info_reports_stages_and_totals() {
    let (code, out, err) = nabla(&["info", "examples/mnist_mlp.net"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("net MnistMlp: f32[B, 1, 28, 28] -> f32[B, 10]"),
        "{out}"
    );
    assert!(out.contains("dense(512)  f32[B, 512]"), "{out}");
    assert!(out.contains("401,920"), "{out}");
    assert!(
        out.contains("total: 669,706 parameters, 668,672 multiply-adds per example"),
        "{out}"
    );
    let (code, _, err) = nabla(&["info", "examples/mnist_mlp.net", "Nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no net named `Nope`"), "{err}");
}

#[test]
fn vjp_of_the_linear_classifier_is_the_outer_product() {
    let (code, out, err) = nabla(&["vjp", "examples/mnist_linear.net"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("- one_hot(y, 10)"), "{out}");
    assert!(out.contains("d `1.weight` = t3.T @ t0"), "{out}");
    assert!(out.contains("d `1.bias` = sum(t3, axis: [0])"), "{out}");
}

#[test]
fn vjp_of_a_function() {
    let f = scratch(
        "glu.net",
        "/// x · σ(g)\nfn glu(x: f32[N, K], g: f32[N, K]) -> f32[N, K] { x * sigmoid(g) }\n",
    );
    let (code, out, err) = nabla(&["vjp", &f, "glu"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dx = r * t0"), "{out}");
    assert!(out.contains("dg = r * x * t0 * (1 - t0)"), "{out}");
}

/// The random labels of a net's gradient check are ones its loss takes: with labels
/// beyond its 3 outputs the loss would ignore them while the derived gradient does not,
/// and the check failed with errors near 1 (as it did).
#[test]
fn gradcheck_draws_labels_the_net_takes() {
    let f = scratch(
        "three.net",
        "import std.nn.*\nnet Three: f32[2, 2, 2] -> f32[3] {\n  batchnorm\n  flatten\n  dense(3)\n}\n",
    );
    let (code, out, err) = nabla(&["gradcheck", &f]);
    assert_eq!(code, 0, "{out}{err}");
    let worst = out
        .lines()
        .find(|l| l.starts_with("net  Three") && l.contains("worst relative error"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(worst.is_some_and(|w| w < 1e-6), "{out}");
}

#[test]
fn gradcheck_reports_rules_and_nets() {
    let (code, out, err) = nabla(&["gradcheck", "examples/mnist_linear.net"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rule conv2d"), "{out}");
    assert!(out.contains("net  MnistLinear"), "{out}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("worst relative error") && l.ends_with("(bar: 1e-6)")),
        "{out}"
    );
}

/// `nabla conformance` runs the suite's cases on a device from the binary alone (the
/// example nets built in): here the bf16 ones on the CPU, each a line, all passing; a
/// filter that matches nothing is an error.
#[test]
fn conformance_runs_the_suite_from_the_binary() {
    let (code, out, err) = nabla(&["conformance", "--device", "cpu", "--only", "bf16"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("conformance on cpu: 6 cases against the f64 interpreter"),
        "{out}"
    );
    assert!(
        out.contains("  ok    step MnistMlp (adamw, decay 0.05) with bf16 products"),
        "{out}"
    );
    assert!(out.contains("  ok    bf16 rounding"), "{out}");
    assert!(out.contains("6 of 6 cases pass on cpu"), "{out}");
    let (code, _, err) = nabla(&["conformance", "--only", "no such case"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no conformance case has `no such case` in its name"),
        "{err}"
    );
}
