//! `nabla run`: checks a file, lowers its host code, compiles it with Cranelift and runs
//! it with the standard library's builtins over the chosen backend.

use std::path::PathBuf;

use nabla_lang::backend::{Backend, Interp};
use nabla_lang::check::Checked;
use nabla_lang::diag::Diagnostic;
use nabla_lang::host::heap::Heap;
use nabla_stdlib::runtime::{Options, Runtime};

/// Where tensor code runs.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Device {
    /// The CPU backend (Cranelift loops and a tuned GEMM).
    Cpu,
    /// The f64 reference interpreter (slow; for checking).
    Ref,
}

/// Runs the checked program's top-level statements. Errors come back rendered.
pub fn run(checked: &Checked, device: Device, data: Option<PathBuf>) -> Result<(), crate::Failure> {
    let prog = nabla_lang::host::lower::lower_program(&checked.program, 0)
        .map_err(|ds| {
            ds.iter()
                .map(|d| crate::render_diag(checked, d))
                .collect::<String>()
        })
        .map_err(crate::Failure::Rendered)?;
    let data = data.or_else(|| std::env::var_os("NABLA_DATA").map(PathBuf::from));
    let options = Options {
        data,
        progress: nabla_stdlib::runtime::on_terminal(),
    };
    match device {
        Device::Cpu => go(checked, &prog, &nabla_jit::Cpu::new(), options),
        Device::Ref => go(
            checked,
            &prog,
            &Interp {
                precision: nabla_lang::interp::Precision::F64,
                memory: nabla_jit::memory_available(),
            },
            options,
        ),
    }
}

fn go<B: Backend + 'static>(
    checked: &Checked,
    prog: &nabla_lang::host::HostProgram,
    backend: &B,
    options: Options,
) -> Result<(), crate::Failure> {
    let mut heap = Heap::default();
    let mut runtime = Runtime::new(&checked.program, prog, backend, options)
        .map_err(|d| crate::rendered(checked, &d))?;
    nabla_host::run(prog, &mut heap, &mut runtime).map_err(|e| {
        let d = Diagnostic::error("E0701", e.message.clone());
        let mut d = match e.span {
            Some(s) => d.primary(s, "while running this"),
            None => d,
        };
        for s in &e.trace {
            d = d.secondary(*s, "called from here");
        }
        crate::rendered(checked, &d)
    })
}
