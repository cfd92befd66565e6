//! Devices from the command line: `nabla devices` (what this build can run on) and
//! `nabla gradcheck --device` (a device's forward and gradients against the f64
//! interpreter).

use nabla_lang::check::Checked;

use crate::Failure;

/// `nabla gradcheck --device D`: each net's forward and gradients on the device against
/// the f64 interpreter (the conformance suite's comparison); whether all are within its
/// bar.
pub(crate) fn device_check<B: nabla_lang::backend::Backend>(
    checked: &Checked,
    name: Option<&str>,
    input: Option<&[usize]>,
    batch: usize,
    b: &B,
) -> Result<bool, Failure> {
    use nabla_lang::backend::suite::{TOLERANCE, net_case, run_case_outputs};
    let mut ok = true;
    let mut any = false;
    for net in checked
        .nets
        .iter()
        .filter(|n| name.is_none_or(|x| x == n.name))
    {
        any = true;
        let case = net_case(
            &checked.program,
            &net.name,
            batch,
            input,
            nabla_lang::ir::Mode::Train,
        )
        .map_err(Failure::Message)?;
        let outs = run_case_outputs(b, &case).map_err(Failure::Message)?;
        let worst = outs.iter().max_by(|x, y| x.error.total_cmp(&y.error));
        if let Some(w) = worst {
            let pass = w.error <= TOLERANCE;
            ok &= pass;
            println!(
                "net  {} (batch {batch}) on {}: {} outputs, worst {:.2e} ({}){}",
                net.name,
                b.describe(),
                outs.len(),
                w.error,
                w.name,
                if pass {
                    ""
                } else {
                    " — above the bar of 1e-4"
                }
            );
        }
    }
    if !any {
        return Err(Failure::Message(match name {
            Some(n) => format!("no net `{n}` in the file"),
            None => "the file has no nets".into(),
        }));
    }
    Ok(ok)
}

/// `nabla devices`: what this build can run on.
pub(crate) fn list() {
    println!(
        "cpu: {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let found = nabla_gpu::adapters();
    if found.is_empty() {
        println!(
            "wgpu: no adapter found ({})",
            nabla_gpu::device::HOW_TO_GET_ONE
        );
    }
    let chosen = nabla_gpu::device::choose(&found).map(|(a, _)| a);
    for a in &found {
        let mark = if Some(a) == chosen.as_ref() {
            "  (used by --device wgpu)"
        } else {
            ""
        };
        println!("wgpu: {}{mark}", a.describe());
    }
    for (name, built, how) in nabla_gpu::device::built() {
        if name != "wgpu" {
            if built {
                println!("{name}: built in (opened when used)");
            } else {
                println!("{name}: not in this build ({how})");
            }
        }
    }
    println!("ref: the f64 reference interpreter");
}
