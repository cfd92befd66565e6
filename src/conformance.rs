//! `nabla conformance --device D`: the conformance suite (`nabla_lang::backend::suite`)
//! on a device, against the f64 interpreter, from the binary alone — for checking a GPU
//! and its driver where no Rust toolchain is (the example nets it needs are built in).
//! Every primitive's forward and backward, the nine example nets forward and backward,
//! train steps with each optimizer, an evaluation step, bf16 rounding bit for bit and
//! train steps with bf16 products; one line per case, and a failing exit status when any
//! output is past its bar.

use nabla_lang::backend::Backend;
use nabla_lang::backend::suite::{
    self, Case, EXAMPLE_NETS, TOLERANCE, bf16_cases, check_bf16_bits, eval_case, judge, net_case,
    op_cases, run_case_outputs, step_case,
};
use nabla_lang::check::{Checked, check_files};
use nabla_lang::step::{Optimizer, Update};
use nabla_stdlib::StdLoader;

/// The source of an example net, built into the binary.
fn example(file: &str) -> Option<&'static str> {
    Some(match file {
        "examples/mnist_linear.net" => include_str!("../examples/mnist_linear.net"),
        "examples/mnist_mlp.net" => include_str!("../examples/mnist_mlp.net"),
        "examples/mnist_cnn.net" => include_str!("../examples/mnist_cnn.net"),
        "examples/cifar_bn.net" => include_str!("../examples/cifar_bn.net"),
        "examples/resnet34.net" => include_str!("../examples/resnet34.net"),
        "examples/mobilenet_v2.net" => include_str!("../examples/mobilenet_v2.net"),
        "examples/efficientnet_b0.net" => include_str!("../examples/efficientnet_b0.net"),
        "examples/convnext_tiny.net" => include_str!("../examples/convnext_tiny.net"),
        "examples/vit_tiny.net" => include_str!("../examples/vit_tiny.net"),
        _ => return None,
    })
}

fn checked(file: &str) -> Result<Checked, String> {
    let src = example(file).ok_or_else(|| format!("{file} is not built in"))?;
    let c = check_files(&[(file.to_string(), src.to_string())], &StdLoader);
    if c.has_errors() {
        return Err(format!("{file} does not check"));
    }
    Ok(c)
}

/// Every case of the suite, in order.
fn cases() -> Result<Vec<Case>, String> {
    let mlp = checked("examples/mnist_mlp.net")?;
    let cnn = checked("examples/mnist_cnn.net")?;
    let mut cases = op_cases(&mlp.program)?;
    for (file, net, batch, input, mode) in EXAMPLE_NETS {
        let c = checked(file)?;
        cases.push(
            net_case(&c.program, net, *batch, *input, *mode).map_err(|e| format!("{net}: {e}"))?,
        );
    }
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
    let small = Some(&[1usize, 12, 12][..]);
    for opt in [Optimizer::sgd(), momentum, Optimizer::adam(), adamw] {
        cases.push(step_case(&mlp.program, "MnistMlp", 8, &opt, None)?);
        cases.push(step_case(&cnn.program, "MnistCnn", 4, &opt, small)?);
    }
    cases.push(eval_case(&cnn.program, "MnistCnn", 16, small)?);
    cases.extend(bf16_cases(&mlp.program, &cnn.program)?);
    Ok(cases)
}

/// Runs the suite on `b` (the cases whose name contains `only`, when given) and prints a
/// line per case; `Err` when any case fails.
pub fn conformance<B: Backend>(b: &B, only: Option<&str>) -> Result<(), crate::Failure> {
    let keep = |name: &str| only.is_none_or(|o| name.contains(o));
    let cases: Vec<Case> = cases()
        .map_err(crate::Failure::Message)?
        .into_iter()
        .filter(|c| keep(&c.name))
        .collect();
    let bits = keep("bf16 rounding");
    if cases.is_empty() && !bits {
        return Err(crate::Failure::Message(format!(
            "no conformance case has `{}` in its name",
            only.unwrap_or_default()
        )));
    }
    println!(
        "conformance on {}: {} cases against the f64 interpreter (outputs within {TOLERANCE:e}, {:e} where zero in exact arithmetic)",
        b.describe(),
        cases.len() + usize::from(bits),
        suite::EXACT_ZERO_TOLERANCE
    );
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for case in &cases {
        let t = std::time::Instant::now();
        match run_case_outputs(b, case) {
            Ok(outs) => match judge(&outs) {
                Some((w, ok)) => {
                    println!(
                        "  {}  {:<40} worst {:.1e} ({}{}) {:.2} s",
                        if ok { "ok  " } else { "FAIL" },
                        case.name,
                        w.error,
                        w.name,
                        if w.exact_zero {
                            ", zero in exact arithmetic"
                        } else {
                            ""
                        },
                        t.elapsed().as_secs_f64()
                    );
                    if !ok {
                        failed.push(case.name.clone());
                    }
                }
                None => println!("  ok    {:<40} no outputs", case.name),
            },
            Err(e) => {
                println!("  FAIL  {:<40} {e}", case.name);
                failed.push(case.name.clone());
            }
        }
    }
    if bits {
        match check_bf16_bits(b) {
            Ok(()) => println!(
                "  ok    {:<40} every bit as the interpreter's",
                "bf16 rounding"
            ),
            Err(e) => {
                println!("  FAIL  {:<40} {e}", "bf16 rounding");
                failed.push("bf16 rounding".into());
            }
        }
    }
    let total = cases.len() + usize::from(bits);
    println!(
        "{} of {total} cases pass on {} ({:.1} s)",
        total - failed.len(),
        b.name(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::Failure::Message(format!(
            "{} of {total} conformance cases fail on {}: {}",
            failed.len(),
            b.name(),
            failed.join(", ")
        )))
    }
}
