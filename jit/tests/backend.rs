//! The conformance suite (`nabla_lang::backend::suite`) on the CPU backend and, as a
//! check of the suite itself, on the interpreter in f32.

use nabla_jit::Cpu;
use nabla_lang::backend::suite::{
    Case, EXAMPLE_NETS, TOLERANCE, bf16_cases, check_bf16_bits, check_write_rows, eval_case,
    net_case, op_cases, run_case, step_case,
};
use nabla_lang::backend::{Backend, Interp};
use nabla_lang::check::{Checked, check_files};
use nabla_lang::interp::Precision;
use nabla_lang::ir::Mode;
use nabla_lang::step::{Optimizer, Update};
use nabla_stdlib::StdLoader;

fn checked(path: &str) -> Checked {
    let root = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&root).expect("example exists");
    let c = check_files(&[(path.to_string(), src)], &StdLoader);
    assert!(!c.has_errors(), "{path} checks");
    c
}

fn assert_cases<B: Backend>(b: &B, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        match run_case(b, case) {
            Ok((out, err)) if err <= TOLERANCE => {
                eprintln!("{:<32} worst {err:.1e} ({out})", case.name)
            }
            Ok((out, err)) => {
                failures.push(format!("{}: output `{out}` off by {err:.2e}", case.name))
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} on {}:\n{}",
        failures.len(),
        b.name(),
        failures.join("\n")
    );
}

#[test]
fn every_op_matches_the_interpreter() {
    let c = checked("examples/mnist_linear.net");
    let cases = op_cases(&c.program).unwrap_or_else(|e| panic!("{e}"));
    // One case per rule of the standard library, every one of them: 38 in std.rules and
    // softmax_cross_entropy's closed form in std.nn (adding a rule changes this).
    assert_eq!(cases.len(), 39, "op cases");
    assert_cases(&Cpu::new(), &cases);
    assert_cases(
        &Interp {
            precision: Precision::F32,
            memory: None,
        },
        &cases,
    );
}

#[test]
fn every_example_net_matches_the_interpreter() {
    let mut cases = Vec::new();
    for (file, net, batch, input, mode) in EXAMPLE_NETS {
        let c = checked(file);
        cases.push(
            net_case(&c.program, net, *batch, *input, *mode)
                .unwrap_or_else(|e| panic!("{net}: {e}")),
        );
    }
    assert_cases(&Cpu::new(), &cases);
}

#[test]
fn train_steps_match_the_interpreter() {
    let mut cases = Vec::new();
    let momentum = Optimizer {
        update: Update::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        weight_decay: 5e-4,
    };
    let adamw = Optimizer {
        update: Update::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled: true,
        },
        weight_decay: 0.05,
    };
    for opt in [Optimizer::sgd(), momentum, Optimizer::adam(), adamw] {
        let c = checked("examples/mnist_mlp.net");
        cases.push(step_case(&c.program, "MnistMlp", 8, &opt, None).expect("step"));
        let c = checked("examples/mnist_cnn.net");
        cases.push(step_case(&c.program, "MnistCnn", 4, &opt, Some(&[1, 12, 12])).expect("step"));
    }
    let c = checked("examples/mnist_cnn.net");
    cases.push(eval_case(&c.program, "MnistCnn", 16, Some(&[1, 12, 12])).expect("eval step"));
    assert_cases(&Cpu::new(), &cases);
}

#[test]
fn batches_written_by_rows_land_in_place() {
    nabla_jit::team::set_mode(nabla_jit::team::Mode::Always);
    check_write_rows(&Cpu::new()).expect("CPU backend");
    check_write_rows(&Interp {
        precision: Precision::F32,
        memory: None,
    })
    .expect("interpreter");
}

#[test]
fn a_wrong_shape_is_an_error_naming_the_input() {
    let c = checked("examples/mnist_mlp.net");
    let case = step_case(&c.program, "MnistMlp", 8, &Optimizer::sgd(), None).expect("step");
    let cpu = Cpu::new();
    let mut exe = cpu.compile(&case.graph).expect("compiles");
    let mut bufs: Vec<_> = case
        .graph
        .inputs()
        .map(|(v, _, _)| {
            let shape = case.graph.node(v).shape.clone();
            let n = shape.iter().product();
            cpu.upload(&shape, &vec![0.0; n]).expect("upload")
        })
        .collect();
    bufs[0] = cpu
        .upload(&[8, 1, 28, 27], &vec![0.0; 8 * 28 * 27])
        .expect("upload");
    let e = cpu.run(&mut exe, &mut bufs).expect_err("bad shape");
    assert_eq!(
        e.to_string(),
        "input `x` should have shape [8, 1, 28, 28], but it has shape [8, 1, 28, 27]"
    );
    let e = cpu.run(&mut exe, &mut bufs[..3]).expect_err("too few");
    assert!(e.to_string().contains("inputs, but 3 were given"), "{e}");
}

#[test]
fn recompiling_an_unchanged_step_is_cached() {
    let c = checked("examples/mnist_mlp.net");
    let case = step_case(&c.program, "MnistMlp", 8, &Optimizer::sgd(), None).expect("step");
    let cpu = Cpu::new();
    let a = cpu.compile(&case.graph).expect("compiles");
    let b = cpu.compile(&case.graph).expect("compiles");
    assert!(std::sync::Arc::ptr_eq(&a.compiled, &b.compiled));
}

/// Batchnorm's reductions of products (`sum(dy * x̂)` and the like) run their fused loops
/// run by run instead of storing the product: the train-step cases above exercise them.
#[test]
fn reductions_of_fused_loops_are_not_stored() {
    let c = checked("examples/mnist_cnn.net");
    let step = nabla_lang::step::train_step(
        &c.program,
        "MnistCnn",
        4,
        "softmax_cross_entropy",
        &Optimizer::sgd(),
        Some(&[1, 12, 12]),
    )
    .expect("step");
    let plan = nabla_jit::sched::plan(&step.graph, &nabla_jit::TARGET).expect("plans");
    let sizes: Vec<usize> = plan
        .kernels
        .iter()
        .filter_map(|k| match k {
            nabla_jit::sched::Kernel::Reduced { nodes, .. } => Some(nodes.len()),
            _ => None,
        })
        .collect();
    let reduced: usize = sizes.iter().sum();
    // Four batchnorms, each with x², dy·x̂ and two more products summed; the backward
    // sums of each read the same tensors and share one loop.
    assert!(reduced >= 16, "{reduced} fused reductions");
    let shared = sizes.iter().filter(|n| **n > 1).count();
    assert!(
        shared >= 4,
        "{shared} loops shared by several reductions: {sizes:?}"
    );
}

/// Plain SGD's `w − lr·g` of a dense layer is accumulated by the weight gradient's GEMM
/// into the weights, in place: the gradient is never stored and no loop runs over it (the
/// train-step cases above check the values).
#[test]
fn sgd_updates_are_accumulated_by_the_gradient_gemm() {
    let c = checked("examples/mnist_mlp.net");
    let step = nabla_lang::step::train_step(
        &c.program,
        "MnistMlp",
        8,
        "softmax_cross_entropy",
        &Optimizer::sgd(),
        None,
    )
    .expect("step");
    let plan = nabla_jit::sched::plan(&step.graph, &nabla_jit::TARGET).expect("plans");
    let updates = plan
        .kernels
        .iter()
        .filter(|k| {
            matches!(
                k,
                nabla_jit::sched::Kernel::MatMul {
                    update: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(updates, 3, "one per dense weight");
    let weights_in_place = plan
        .outputs
        .iter()
        .zip(&plan.in_place)
        .filter(|((_, target), in_place)| target.is_some() && **in_place)
        .count();
    assert_eq!(
        weights_in_place, 6,
        "weights and biases are all updated in place"
    );
}

/// Pooling windows that tile the plane take a fast path, also when the last row and
/// column are left over (7×7 → 3×3); a stride-1 convolution's input gradient is computed
/// as a convolution. Both against the interpreter, forward and backward.
#[test]
fn pooling_fast_paths_and_transposed_convolutions_match_the_interpreter() {
    let src = "import std.nn.*\nnet Pools: f32[2, 7, 7] -> f32[10] {\n  conv(3, 3, pad: 1)\n  conv(4, 3, pad: 1)\n  maxpool(2)\n  avgpool(2)\n  flatten\n  dense(10)\n}\n";
    let c = check_files(&[("pools.net".to_string(), src.to_string())], &StdLoader);
    assert!(!c.has_errors(), "pools.net checks");
    let cases = [net_case(&c.program, "Pools", 3, None, Mode::Train).expect("case")];
    assert_cases(&Cpu::new(), &cases);
}

/// Mixed precision: casts to bf16 round exactly as the interpreter does (every bit), and
/// the op cases with products, the MLP's train step and the CNN's evaluation step with
/// their products in bf16 match the interpreter computing the same rounded products (see
/// `suite::bf16_cases`).
#[test]
fn bf16_products_match_the_interpreter() {
    let mlp = checked("examples/mnist_mlp.net");
    let cnn = checked("examples/mnist_cnn.net");
    let cases = bf16_cases(&mlp.program, &cnn.program).expect("cases");
    assert!(cases.len() >= 5, "{}", cases.len());
    check_bf16_bits(&Cpu::new()).unwrap_or_else(|e| panic!("{e}"));
    check_bf16_bits(&Interp {
        precision: Precision::F32,
        memory: None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_cases(&Cpu::new(), &cases);
}
