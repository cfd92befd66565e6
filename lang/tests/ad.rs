//! Derived gradients of example nets against finite differences (f64).

use nabla_lang::ad::{grad, inputs_of};
use nabla_lang::check::{check_files, lower::lower_net};
use nabla_lang::gradcheck::{check, random_inputs};
use nabla_lang::ir::{InputKind, Mode, verify};

fn names_of(g: &nabla_lang::ir::Graph, vs: &[nabla_lang::ir::ValueId]) -> Vec<String> {
    vs.iter()
        .filter_map(|v| g.input_name(*v).map(str::to_string))
        .collect()
}

fn gradcheck_net(name: &str, mode: Mode) -> f64 {
    let path = format!("{}/../examples/{name}.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let c = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    let net = c.nets[0].name.clone();
    let l = lower_net(&c.program, 0, &net, 2, mode, Some("softmax_cross_entropy")).expect("lowers");
    let loss = l.loss.expect("loss");
    let params = inputs_of(&l.graph, InputKind::Param);
    let g = grad(&c.program, &l.graph, loss, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
    verify(&g).unwrap_or_else(|e| panic!("{name}: {}", e.message));
    let names = names_of(&l.graph, &params);
    let inputs = random_inputs(&l.graph, 7, 10);
    let findings = check(&l.graph, loss, &g, &names, &inputs, 3, 11).expect("runs");
    let worst = findings.iter().map(|f| f.worst).fold(0.0, f64::max);
    for f in &findings {
        eprintln!(
            "{name} {:<24} worst relative error {:.2e} over {} checks",
            f.input, f.worst, f.checks
        );
    }
    worst
}

#[test]
fn linear_gradients_match_finite_differences() {
    let worst = gradcheck_net("mnist_linear", Mode::Train);
    assert!(worst <= 1e-6, "worst relative error {worst:e}");
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let worst = gradcheck_net("mnist_mlp", Mode::Train);
    assert!(worst <= 1e-6, "worst relative error {worst:e}");
}

fn gradcheck_at(path: &str, net: &str, input: &[usize]) -> f64 {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).expect("source");
    let c = check_files(&[(full, text)], &nabla_stdlib::StdLoader);
    assert!(c.diagnostics.is_empty());
    let l = nabla_lang::check::lower::lower_net_at(
        &c.program,
        0,
        net,
        2,
        Mode::Train,
        Some("softmax_cross_entropy"),
        Some(input),
    )
    .expect("lowers");
    let loss = l.loss.expect("loss");
    let params = inputs_of(&l.graph, InputKind::Param);
    let g = grad(&c.program, &l.graph, loss, &params).unwrap_or_else(|e| panic!("{net}: {e}"));
    let names = names_of(&l.graph, &params);
    let inputs = random_inputs(&l.graph, 7, 10);
    let findings = check(&l.graph, loss, &g, &names, &inputs, 1, 11).expect("runs");
    findings.iter().map(|f| f.worst).fold(0.0, f64::max)
}

#[test]
fn cnn_with_batchnorm_gradients_match_finite_differences() {
    // The example's layers on an 8×8 image (batch 2): conv, batchnorm, relu, max-pool, dense.
    let worst = gradcheck_at("examples/mnist_cnn.net", "MnistCnn", &[1, 8, 8]);
    assert!(worst <= 1e-6, "worst relative error {worst:e}");
}

#[test]
fn residual_block_gradients_match_finite_differences() {
    let worst = gradcheck_at("tests/golden/residual.net", "Residual", &[4, 4, 4]);
    assert!(worst <= 1e-6, "worst relative error {worst:e}");
}

#[test]
fn a_gradient_through_an_op_without_a_rule_names_the_op_and_the_path() {
    // conv2d_input_grad is an op with no rule of its own (no second derivatives yet).
    let src = "import std.nn.*\nlayer odd()(x: f32[B, c, H, W]) {\n  param w: f32[c, c, 3, 3] = zeros\n  conv2d_input_grad(x, w, x, pad: 1)\n}\nnet N: f32[2, 4, 4] -> f32[10] {\n  odd\n  flatten\n  dense(10)\n}\n";
    let c = nabla_lang::check::check_source("odd.net", src, &nabla_stdlib::StdLoader);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.first());
    let l = nabla_lang::check::lower::lower_net(
        &c.program,
        0,
        "N",
        2,
        Mode::Train,
        Some("softmax_cross_entropy"),
    )
    .expect("lowers");
    let params = inputs_of(&l.graph, InputKind::Param);
    let e = grad(&c.program, &l.graph, l.loss.expect("loss"), &params).expect_err("no rule");
    assert_eq!(e.op, "conv2d_input_grad");
    assert!(
        e.message
            .contains("`conv2d_input_grad` has no derivative rule"),
        "{}",
        e.message
    );
    assert!(
        e.path.len() > 3
            && e.path[0].ends_with("conv2d_input_grad")
            && e.path.last().is_some_and(|p| p.ends_with("div")),
        "{:?}",
        e.path
    );
}

/// The interpreter's f32 mode (every result rounded to f32) agrees with f64 on the MLP's
/// loss and gradients within 1e-4 relative (scaled by each tensor's largest entry).
#[test]
fn f32_agrees_with_f64() {
    use nabla_lang::interp::{Precision, run};
    let path = format!("{}/../examples/mnist_mlp.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let c = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    let l = nabla_lang::check::lower::lower_net(
        &c.program,
        0,
        "MnistMlp",
        4,
        Mode::Train,
        Some("softmax_cross_entropy"),
    )
    .expect("lowers");
    let params = inputs_of(&l.graph, InputKind::Param);
    let g = grad(&c.program, &l.graph, l.loss.expect("loss"), &params).expect("grad");
    let inputs = random_inputs(&g, 3, 10);
    let lookup = |n: &str, _| inputs.get(n).cloned();
    let a = run(&g, &lookup, Precision::F64).expect("f64");
    let b = run(&g, &lookup, Precision::F32).expect("f32");
    let mut worst = 0.0f64;
    for (_, v) in &g.outputs {
        let (x, y) = (&a[v.index()].data, &b[v.index()].data);
        let scale = x.iter().fold(0.0f64, |m, t| m.max(t.abs())).max(1e-30);
        worst = worst.max(
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() / scale)
                .fold(0.0, f64::max),
        );
    }
    eprintln!("f32 vs f64: worst relative error {worst:.2e}");
    assert!(worst <= 1e-4, "{worst:e}");
    assert!(worst > 0.0, "f32 mode must actually round");
}

/// Every layer of std.nn, in tiny nets, passes the gradient check (batch 2, f64).
#[test]
fn every_std_layer_passes_gradcheck() {
    let path = format!("{}/../tests/golden/layers.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    let c = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.first());
    // Every std layer appears in the fixture.
    let std_nn = c.program.module_by_path("std.nn").expect("std.nn");
    let fixture = std::fs::read_to_string(format!(
        "{}/../tests/golden/layers.net",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    for (name, id) in &c.program.modules[std_nn].defs {
        if c.program.items[*id].kind == nabla_lang::check::DefKind::Layer {
            assert!(
                fixture.contains(name.as_str()),
                "std layer `{name}` is not gradchecked"
            );
        }
    }
    let mut worst_all = 0.0f64;
    for net in &c.nets {
        let l = lower_net(
            &c.program,
            0,
            &net.name,
            2,
            Mode::Train,
            Some("softmax_cross_entropy"),
        )
        .unwrap_or_else(|e| panic!("{}: {}", net.name, e.message));
        let loss = l.loss.expect("loss");
        let params = inputs_of(&l.graph, InputKind::Param);
        let g = grad(&c.program, &l.graph, loss, &params)
            .unwrap_or_else(|e| panic!("{}: {e}", net.name));
        let names = names_of(&l.graph, &params);
        let inputs = random_inputs(&l.graph, 7, 10);
        let findings = check(&l.graph, loss, &g, &names, &inputs, 2, 11).expect("runs");
        let worst = findings.iter().map(|f| f.worst).fold(0.0, f64::max);
        eprintln!(
            "{:<10} worst relative error {worst:.2e} over {} tensors",
            net.name,
            findings.len()
        );
        worst_all = worst_all.max(worst);
        assert!(
            worst <= 1e-6,
            "{}: {worst:e} ({:?})",
            net.name,
            findings
                .iter()
                .map(|f| (&f.input, f.worst))
                .collect::<Vec<_>>()
        );
    }
    assert!(worst_all > 0.0);
}

/// A gradient that is wrong by 1% fails the check (it is not called inconclusive) on an
/// instance where finite differences settle, for every parameter of the MLP in turn.
#[test]
fn a_wrong_gradient_fails() {
    use nabla_lang::check::ty::DType;
    use nabla_lang::ir::{Binary, Op};
    let path = format!("{}/../examples/mnist_mlp.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let c = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    let l = lower_net(
        &c.program,
        0,
        "MnistMlp",
        4,
        Mode::Train,
        Some("softmax_cross_entropy"),
    )
    .expect("lowers");
    let loss = l.loss.expect("loss");
    let params = inputs_of(&l.graph, InputKind::Param);
    let names = names_of(&l.graph, &params);
    let inputs = random_inputs(&l.graph, 7, 10);
    for wrong in &names {
        let mut g = grad(&c.program, &l.graph, loss, &params).expect("grad");
        let out = format!("grad.{wrong}");
        let v = g.output(&out).expect("gradient output");
        let shape = g.node(v).shape.clone();
        let k = g.push(Op::Const(1.01), vec![], DType::F32, vec![]);
        let kb = g.push(Op::Broadcast, vec![k], DType::F32, shape.clone());
        let scaled = g.push(Op::Binary(Binary::Mul), vec![v, kb], DType::F32, shape);
        for o in g.outputs.iter_mut().filter(|(n, _)| *n == out) {
            o.1 = scaled;
        }
        let findings = check(&l.graph, loss, &g, &names, &inputs, 2, 11).expect("runs");
        let f = findings
            .iter()
            .find(|f| f.input == *wrong)
            .expect("checked");
        assert!(f.failed(), "{wrong}: {f:?}");
        assert!(
            findings
                .iter()
                .filter(|f| f.input != *wrong)
                .all(|f| !f.failed())
        );
    }
}
