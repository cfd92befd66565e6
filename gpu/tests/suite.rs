//! The conformance suite (`nabla_lang::backend::suite`) on the GPU backend over wgpu,
//! against the f64 interpreter with the CPU's tolerance. On a machine without a Vulkan
//! adapter the tests say so and pass; with `NABLA_REQUIRE_GPU` set (CI, which installs
//! lavapipe) they fail instead.

use nabla_gpu::Gpu;
use nabla_lang::backend::Backend;
use nabla_lang::backend::suite::{
    Case, EXAMPLE_NETS, bf16_cases, check_bf16_bits, eval_case, judge, net_case, op_cases,
    run_case_outputs, step_case,
};
use nabla_lang::check::{Checked, check_files};
use nabla_lang::step::{Optimizer, Update};
use nabla_stdlib::StdLoader;

type Wgpu = Gpu<cubecl::wgpu::WgpuRuntime>;

/// The backend, or `None` (after saying why) where there is no adapter and none is
/// required.
fn gpu() -> Option<Wgpu> {
    match nabla_gpu::wgpu() {
        Ok(g) => {
            eprintln!("on {}", g.adapter);
            Some(g)
        }
        Err(e) if std::env::var_os("NABLA_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("NABLA_REQUIRE_GPU is set, but: {e}"),
    }
}

fn checked(path: &str) -> Checked {
    let root = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&root).expect("example exists");
    let c = check_files(&[(path.to_string(), src)], &StdLoader);
    assert!(!c.has_errors(), "{path} checks");
    c
}

/// Runs `cases` on `b`; each output within its bar (`suite::bar`: 1e-4, or 1e-3 for one
/// that is zero in exact arithmetic).
fn assert_cases<B: Backend>(b: &B, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        match run_case_outputs(b, case) {
            Ok(outs) => {
                let Some((w, ok)) = judge(&outs) else {
                    continue;
                };
                let zeros = outs.iter().filter(|o| o.exact_zero).count();
                if ok {
                    eprintln!(
                        "{:<32} worst {:.1e} ({}{}){}",
                        case.name,
                        w.error,
                        w.name,
                        if w.exact_zero {
                            ", zero in exact arithmetic"
                        } else {
                            ""
                        },
                        if zeros > 0 {
                            format!(", {zeros} outputs zero in exact arithmetic")
                        } else {
                            String::new()
                        }
                    );
                } else {
                    failures.push(format!(
                        "{}: output `{}` off by {:.2e}",
                        case.name, w.name, w.error
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} on {}:\n{}",
        failures.len(),
        cases.len(),
        b.name(),
        failures.join("\n")
    );
}

#[test]
fn every_op_matches_the_interpreter() {
    let Some(g) = gpu() else { return };
    let c = checked("examples/mnist_linear.net");
    let cases = op_cases(&c.program).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cases.len(), 39, "op cases");
    assert_cases(&g, &cases);
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
    let Some(g) = gpu() else { return };
    assert_cases(&g, &cases);
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
    let Some(g) = gpu() else { return };
    assert_cases(&g, &cases);
}

/// On a device that binds few buffers per kernel (8: WebGPU's guaranteed minimum; Adam's
/// fused update alone reads and writes 9), fused loops are split by the scheduler and
/// the steps still match the interpreter.
#[test]
fn train_steps_match_the_interpreter_with_eight_bindings_per_kernel() {
    let adamw = Optimizer {
        update: Update::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled: true,
        },
        weight_decay: 0.05,
    };
    let mut cases = Vec::new();
    let c = checked("examples/cifar_bn.net");
    cases.push(step_case(&c.program, "CifarBn", 2, &adamw, Some(&[3, 8, 8])).expect("step"));
    let c = checked("examples/mnist_mlp.net");
    cases.push(step_case(&c.program, "MnistMlp", 8, &adamw, None).expect("step"));
    let Some(g) = gpu() else { return };
    let g = g.with_max_bindings(8);
    let split = cases
        .iter()
        .map(|c| {
            let exe = g.compile(&c.graph).expect("compiles");
            let p = &exe.compiled.plan;
            let most = p
                .programs
                .iter()
                .map(|f| f.leaves.len() + f.stores.len())
                .max()
                .unwrap_or(0);
            assert!(most <= 8, "{}: a loop binds {most}", c.name);
            p.programs.len()
        })
        .collect::<Vec<_>>();
    eprintln!("fused loops per step with 8 bindings: {split:?}");
    assert_cases(&g, &cases);
}

/// The counter-based generator gives the CPU's bits (so dropout masks are the same for
/// the same seed on every device): 2¹⁸ numbers for each of five seeds, high bits set
/// included; every one is rounded from 53 bits to f32 (ties to even), and the ones below
/// 2⁻²⁴ keep more than 24 bits of the fraction.
#[test]
fn random_numbers_are_the_cpus_bits() {
    use nabla_lang::check::ty::DType;
    use nabla_lang::ir::{Graph, Op};
    let Some(g) = gpu() else { return };
    let n = 1 << 18;
    for seed in [0u64, 1, 42, 0x9e37_79b9_7f4a_7c15, u64::MAX] {
        let mut graph = Graph::default();
        let r = graph.push(Op::RandomUniform { seed }, vec![], DType::F32, vec![n]);
        graph.outputs.push(("r".into(), r));
        let mut exe = g.compile(&graph).expect("compiles");
        let out = g.run(&mut exe, &mut []).expect("runs");
        let got = g.download(&out[0]).expect("reads");
        let differ = (0..n)
            .filter(|i| {
                got[*i].to_bits() != (nabla_lang::interp::uniform(seed, *i as u64) as f32).to_bits()
            })
            .count();
        assert_eq!(differ, 0, "seed {seed}: {differ} of {n} differ");
        let small = got.iter().filter(|x| **x < 1.0 / 16_777_216.0).count();
        eprintln!("seed {seed}: {n} numbers, the CPU's bits ({small} below 2⁻²⁴)");
    }
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
    let Some(g) = gpu() else { return };
    check_bf16_bits(&g).unwrap_or_else(|e| panic!("{e}"));
    assert_cases(&g, &cases);
}
