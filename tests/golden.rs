//! Golden IR: the forward graph and the simplified backward graph of the linear
//! classifier, the MLP and a residual block, in the IR's textual form (insta snapshots
//! under tests/snapshots/). The textual form parses back to the same graph.

use nabla_lang::check::{check_files, lower::lower_net};
use nabla_lang::ir::{InputKind, Mode, parse_graph, print_graph, print_source, verify};

fn golden(path: &str, net: &str) -> (String, String, String) {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).expect("source");
    let c = check_files(&[(path.to_string(), text)], &nabla_stdlib::StdLoader);
    assert!(c.diagnostics.is_empty());
    let l = lower_net(
        &c.program,
        0,
        net,
        1,
        Mode::Train,
        Some("softmax_cross_entropy"),
    )
    .expect("lowers");
    let forward = print_graph(&l.graph);
    let params = nabla_lang::ad::inputs_of(&l.graph, InputKind::Param);
    let mut g =
        nabla_lang::ad::grad(&c.program, &l.graph, l.loss.expect("loss"), &params).expect("grad");
    g.outputs.retain(|(n, _)| n.starts_with("grad."));
    let g = nabla_lang::opt::optimize(&g);
    verify(&g).expect("valid");
    let backward = print_graph(&g);
    assert_eq!(
        print_graph(&parse_graph(&backward).expect("parses")),
        backward
    );
    assert_eq!(
        print_graph(&parse_graph(&forward).expect("parses")),
        forward
    );
    (
        forward,
        backward,
        print_source(&g, &|n| n.starts_with("grad.")),
    )
}

#[test]
fn linear_classifier() {
    let (fwd, bwd, src) = golden("examples/mnist_linear.net", "MnistLinear");
    insta::assert_snapshot!("linear_forward", fwd);
    insta::assert_snapshot!("linear_backward", bwd);
    // The book's result, and nothing more: dW = (softmax(z) - e_y)ᵀ ⊗ x, db = softmax(z) - e_y.
    insta::assert_snapshot!("linear_backward_source", src);
    assert!(src.contains("grad.`1.weight` = t3.T @ t0"), "{src}");
    assert!(src.contains("grad.`1.bias` = sum(t3, axis: [0])"), "{src}");
}

#[test]
fn mlp() {
    let (fwd, bwd, _) = golden("examples/mnist_mlp.net", "MnistMlp");
    insta::assert_snapshot!("mlp_forward", fwd);
    insta::assert_snapshot!("mlp_backward", bwd);
}

#[test]
fn residual_block() {
    let (fwd, bwd, _) = golden("tests/golden/residual.net", "Residual");
    insta::assert_snapshot!("residual_forward", fwd);
    insta::assert_snapshot!("residual_backward", bwd);
}
