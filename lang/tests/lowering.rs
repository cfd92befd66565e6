//! Every example net lowers to a graph the verifier accepts, in train and eval mode, and
//! the reference interpreter runs the small ones.

use nabla_lang::check::{check_files, lower::lower_net};
use nabla_lang::interp::{Precision, Tensor, run};
use nabla_lang::ir::{InputKind, Mode, verify};

fn checked(name: &str) -> nabla_lang::check::Checked {
    let path = format!("{}/../examples/{name}.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let c = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    assert!(c.diagnostics.is_empty());
    c
}

#[test]
fn examples_lower_and_verify() {
    for name in [
        "mnist_linear",
        "mnist_mlp",
        "mnist_cnn",
        "cifar_bn",
        "resnet34",
        "mobilenet_v2",
        "efficientnet_b0",
        "convnext_tiny",
        "vit_tiny",
    ] {
        let c = checked(name);
        let net = c.nets[0].name.clone();
        for mode in [Mode::Train, Mode::Eval] {
            let l = lower_net(&c.program, 0, &net, 2, mode, Some("softmax_cross_entropy"))
                .unwrap_or_else(|e| panic!("{name}: {}", e.message));
            verify(&l.graph).unwrap_or_else(|e| panic!("{name} {mode:?}: {}", e.message));
            // The graph's parameters are exactly the net's, by name and size.
            let params: Vec<(String, usize)> = l
                .graph
                .inputs()
                .filter(|(_, _, k)| *k == InputKind::Param)
                .map(|(v, n, _)| (n.to_string(), l.graph.node(v).numel()))
                .collect();
            let total: usize = params.iter().map(|p| p.1).sum();
            assert_eq!(total as u64, c.nets[0].params, "{name}");
            let names: Vec<&str> = params.iter().map(|p| p.0.as_str()).collect();
            let expected: Vec<&str> = c.nets[0].param_names.iter().map(|p| p.0.as_str()).collect();
            assert_eq!(names, expected, "{name}");
        }
    }
}

#[test]
fn the_linear_classifier_runs() {
    let c = checked("mnist_linear");
    let l = lower_net(
        &c.program,
        0,
        "MnistLinear",
        2,
        Mode::Train,
        Some("softmax_cross_entropy"),
    )
    .expect("lowers");
    // w = 0, b = [0, 1, ..., 9]: the logits are b for every example, and the loss is
    // -mean(log softmax(b)[y]).
    let inputs = |name: &str, _k: InputKind| -> Option<Tensor> {
        Some(match name {
            "x" => Tensor::new(
                nabla_lang::check::ty::DType::F32,
                vec![2, 1, 28, 28],
                (0..2 * 784).map(|i| (i % 7) as f64).collect(),
            ),
            "1.weight" => Tensor::zeros(nabla_lang::check::ty::DType::F32, &[10, 784]),
            "1.bias" => Tensor::new(
                nabla_lang::check::ty::DType::F32,
                vec![10],
                (0..10).map(f64::from).collect(),
            ),
            "y" => Tensor::new(nabla_lang::check::ty::DType::I32, vec![2], vec![9.0, 3.0]),
            _ => return None,
        })
    };
    let vals = run(&l.graph, &inputs, Precision::F64).expect("runs");
    let logits = &vals[l.output.index()];
    assert_eq!(
        logits.data[..10],
        (0..10).map(f64::from).collect::<Vec<_>>()[..]
    );
    let lse = (0..10).map(|i| f64::from(i).exp()).sum::<f64>().ln();
    let want = ((lse - 9.0) + (lse - 3.0)) / 2.0;
    let got = vals[l.loss.expect("loss").index()].data[0];
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn label_smoothing_is_pytorchs_and_its_gradient_checks() {
    // loss = -(1/B) Σ_b Σ_k q_bk log softmax(z_b)_k with q = (1 - eps)·onehot + eps/K.
    let c = checked("mnist_linear");
    let eps = 0.1;
    let l = nabla_lang::check::lower::lower_net_loss(
        &c.program,
        0,
        "MnistLinear",
        3,
        Mode::Train,
        Some(("smoothed_cross_entropy", &[("eps", eps)])),
        None,
    )
    .expect("lowers");
    let inputs = nabla_lang::gradcheck::random_inputs(&l.graph, 7, 10);
    let vals = run(&l.graph, &|n, _| inputs.get(n).cloned(), Precision::F64).expect("runs");
    let loss = vals[l.loss.expect("loss").index()].data[0];
    let z = &vals[l.output.index()].data;
    let y = &inputs["y"].data;
    let mut want = 0.0;
    for b in 0..3 {
        let row = &z[b * 10..(b + 1) * 10];
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        for (k, v) in row.iter().enumerate() {
            let q = if k as f64 == y[b] { 1.0 - eps } else { 0.0 } + eps / 10.0;
            want -= q * (v - lse) / 3.0;
        }
    }
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    // Its derived backward agrees with central differences.
    let params = nabla_lang::ad::inputs_of(&l.graph, InputKind::Param);
    let g =
        nabla_lang::ad::grad(&c.program, &l.graph, l.loss.expect("loss"), &params).expect("grad");
    let names: Vec<String> = params
        .iter()
        .filter_map(|v| l.graph.input_name(*v).map(str::to_string))
        .collect();
    let found =
        nabla_lang::gradcheck::check(&l.graph, l.loss.expect("loss"), &g, &names, &inputs, 20, 1)
            .expect("check");
    for f in found {
        assert!(f.worst < 1e-6, "{}: {}", f.input, f.worst);
    }
}

/// Batchnorm's running variance is unbiased, `n / (n − 1)` times the batch's: with one
/// value per channel, training is refused at lowering (it used to divide by zero and leave
/// NaN in the running variance), while evaluation, which only reads the running
/// statistics, lowers at any batch.
#[test]
fn batchnorm_needs_two_values_per_channel_to_train() {
    let src = "import std.nn.*\nnet Tiny: f32[2, 1, 1] -> f32[3] {\n  conv(4, 1); batchnorm; relu\n  flatten\n  dense(3)\n}\n";
    let c = check_files(
        &[("tiny.net".to_string(), src.to_string())],
        &nabla_stdlib::StdLoader,
    );
    assert!(c.diagnostics.is_empty());
    let lower = |batch, mode| {
        lower_net(
            &c.program,
            0,
            "Tiny",
            batch,
            mode,
            Some("softmax_cross_entropy"),
        )
    };
    let err = lower(1, Mode::Train)
        .err()
        .expect("batch 1 is refused in training");
    assert_eq!(err.code, "E0314");
    assert_eq!(
        err.message,
        "`unbiased_variance` requires `n > 1`, but n = 1"
    );
    assert!(lower(2, Mode::Train).is_ok());
    assert!(lower(1, Mode::Eval).is_ok());
}
