//! Derived gradients of example nets against finite differences (f64).

use nabla_lang::ad::{grad, inputs_of};
use nabla_lang::check::{check_files, lower::lower_net};
use nabla_lang::gradcheck::{check, random_inputs};
use nabla_lang::ir::{verify, InputKind, Mode};

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
    let names: Vec<String> = params.iter().filter_map(|v| match &l.graph.node(*v).op {
        nabla_lang::ir::Op::Input { name, .. } => Some(name.clone()),
        _ => None,
    }).collect();
    let inputs = random_inputs(&l.graph, 7, 10);
    let findings = check(&l.graph, loss, &g, &names, &inputs, 3, 11).expect("runs");
    let worst = findings.iter().map(|f| f.worst).fold(0.0, f64::max);
    for f in &findings {
        eprintln!("{name} {:<24} worst relative error {:.2e} over {} checks", f.input, f.worst, f.checks);
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
