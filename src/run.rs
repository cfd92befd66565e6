//! `nabla run`: checks a file, lowers its host code, compiles it with Cranelift and runs
//! it with the standard library's builtins over the chosen backend.

use std::path::PathBuf;

use nabla_lang::backend::Backend;
use nabla_lang::check::Checked;
use nabla_lang::diag::Diagnostic;
use nabla_lang::host::heap::Heap;
use nabla_stdlib::runtime::{Options, Runtime};

/// Where tensor code runs.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Device {
    /// The CPU backend (Cranelift loops and a tuned GEMM).
    Cpu,
    /// The GPU backend on wgpu (Vulkan; Metal on macOS), on the best adapter found.
    Wgpu,
    /// The GPU backend on CUDA (builds with `--features cuda`).
    Cuda,
    /// The GPU backend on ROCm (builds with `--features hip`).
    Hip,
    /// The f64 reference interpreter (slow; for checking).
    Ref,
}

/// Evaluates `$body` with `$b` bound to a reference to the backend of `$device` (GPU
/// backends are opened here, and fail with what was probed and how to get one). The
/// backends' types differ, so this is a macro rather than a function.
#[macro_export]
macro_rules! on_device {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::run::Device::Cpu => {
                let $b = &nabla_jit::Cpu::new();
                $body
            }
            $crate::run::Device::Ref => {
                let $b = &nabla_lang::backend::Interp {
                    precision: nabla_lang::interp::Precision::F64,
                    memory: nabla_jit::memory_available(),
                };
                $body
            }
            $crate::run::Device::Wgpu => {
                let g = nabla_gpu::wgpu().map_err(|e| $crate::Failure::Message(e.to_string()))?;
                let $b = &g;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::run::Device::Cuda => {
                let g = nabla_gpu::cuda().map_err(|e| $crate::Failure::Message(e.to_string()))?;
                let $b = &g;
                $body
            }
            #[cfg(feature = "hip")]
            $crate::run::Device::Hip => {
                let g = nabla_gpu::hip().map_err(|e| $crate::Failure::Message(e.to_string()))?;
                let $b = &g;
                $body
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err($crate::Failure::Message($crate::run::not_built(other)));
            }
        }
    };
}

/// Why `device` cannot be used in this build, and how to get it.
pub fn not_built(device: Device) -> String {
    let name = format!("{device:?}").to_lowercase();
    let how = nabla_gpu::device::built()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, how)| how)
        .unwrap_or("");
    format!("this build of nabla has no {name} backend: {how}")
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
    crate::on_device!(device, b => go(checked, &prog, b, options))
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
