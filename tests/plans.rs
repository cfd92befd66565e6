//! The shared schedule's plans of every example net's train and eval steps pass the plan
//! verifier (on the CPU's target), and a plan with one corrupted offset does not.

use nabla_lang::check::check_files;
use nabla_lang::ir::Graph;
use nabla_lang::step::{Optimizer, eval_step, train_step};
use nabla_sched::{Fault, Loc, Plan, plan, reads, verify};

const NETS: [(&str, &str); 9] = [
    ("mnist_linear", "MnistLinear"),
    ("mnist_mlp", "MnistMlp"),
    ("mnist_cnn", "MnistCnn"),
    ("cifar_bn", "CifarBn"),
    ("resnet34", "ResNet34"),
    ("mobilenet_v2", "MobileNetV2"),
    ("efficientnet_b0", "EfficientNetB0"),
    ("convnext_tiny", "ConvNeXtTiny"),
    ("vit_tiny", "VitTiny"),
];

/// The train step (SGD, whose updates become matmul epilogues, and Adam) and the eval
/// step of example `file`'s net `net`, at batch 2.
fn steps(file: &str, net: &str) -> Vec<(String, Graph)> {
    let path = format!("{}/examples/{file}.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example exists");
    let c = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    assert!(!c.has_errors(), "{file} checks");
    let loss = "softmax_cross_entropy";
    let mut out = Vec::new();
    for (name, opt) in [("sgd", Optimizer::sgd()), ("adam", Optimizer::adam())] {
        let step = train_step(&c.program, net, 2, loss, &opt, None).expect("a train step");
        out.push((format!("{file} train ({name})"), step.graph));
    }
    let eval = eval_step(&c.program, net, 2, loss, None).expect("an eval step");
    out.push((format!("{file} eval"), eval.graph));
    out
}

fn planned(what: &str, g: &Graph) -> Plan {
    let p = plan(g, &nabla_jit::TARGET).unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Err(faults) = verify(g, &p, &nabla_jit::TARGET) {
        panic!("{what}: {} faults, first {}", faults.len(), faults[0]);
    }
    p
}

#[test]
fn every_example_step_has_a_valid_plan() {
    let mut kernels = 0;
    for (file, net) in NETS {
        for (what, g) in steps(file, net) {
            let p = planned(&what, &g);
            assert!(!p.kernels.is_empty(), "{what}");
            kernels += p.kernels.len();
        }
    }
    eprintln!("{kernels} kernels verified over 27 steps");
}

/// Every kernel that reads two values in the arena, one at a time: giving the second the
/// first's offset (both are live while the kernel runs) must be caught.
#[test]
fn a_corrupted_offset_fails_the_verifier() {
    let (what, g) = steps("mnist_cnn", "MnistCnn").remove(0);
    let p = planned(&what, &g);
    let mut corrupted = 0;
    for kernel in &p.kernels {
        let arena: Vec<_> = reads(&p, kernel)
            .into_iter()
            .filter_map(|(v, _)| match p.loc[v.index()] {
                Some(Loc::Arena(off)) => Some((v, off)),
                _ => None,
            })
            .collect();
        let Some((&(_, a), rest)) = arena.split_first() else {
            continue;
        };
        let Some(&(v, _)) = rest.iter().find(|(_, off)| *off != a) else {
            continue;
        };
        let mut bad = p.clone();
        bad.loc[v.index()] = Some(Loc::Arena(a));
        let faults = verify(&g, &bad, &nabla_jit::TARGET).expect_err("an overlap");
        assert!(
            faults.iter().any(|f| matches!(f, Fault::Overlap { .. })),
            "{faults:?}"
        );
        corrupted += 1;
    }
    assert!(corrupted >= 10, "{corrupted} corruptions tried");
}

/// On a GPU that binds at most 8 buffers per kernel (WebGPU's guaranteed minimum), every
/// example step still has a valid plan: loops that bind more are split (see
/// `nabla_sched::Target::max_bindings`).
#[test]
fn every_example_step_has_a_valid_plan_with_eight_bindings() {
    let t = nabla_gpu::target("wgpu", 256, 1 << 30, 8);
    let mut split = 0;
    for (file, net) in NETS {
        for (what, g) in steps(file, net) {
            let p = plan(&g, &t).unwrap_or_else(|e| panic!("{what}: {e}"));
            if let Err(faults) = verify(&g, &p, &t) {
                panic!("{what}: {} faults, first {}", faults.len(), faults[0]);
            }
            let wide = nabla_gpu::target("wgpu", 256, 1 << 30, usize::MAX);
            let whole = plan(&g, &wide).unwrap_or_else(|e| panic!("{what}: {e}"));
            split += p.programs.len() - whole.programs.len();
        }
    }
    eprintln!("{split} more loops over 27 steps");
    assert!(split > 0, "some loop binds more than 8");
}
