//! The one interface every backend implements: compile an optimized graph to an
//! executable; upload, run, download. The reference interpreter implements it too, so
//! one test suite runs on every backend against it.
//!
//! Designed for device-resident buffers and asynchronous execution (the GPU backend):
//! buffers are opaque handles; [`Backend::run`] may return before the work is done, and
//! only [`Backend::download`] waits for it. State stays on the device: an input named by a
//! `state.N` output is replaced by that output after a run (in place where the backend
//! can), so a training loop uploads only batches and downloads only the loss.
//!
//! Host data is f32 (and labels as f32 integers, exact below 2²⁴): what training moves.

pub mod memory;
pub mod suite;

use crate::interp::{self, Precision, Tensor};
use crate::ir::{Graph, InputKind};

/// Why a backend refused or failed.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendError {
    /// An op the backend cannot run: (op, backend).
    Unsupported(String, String),
    /// An input of the wrong size: (input, expected shape, given shape).
    BadShape(String, Vec<usize>, Vec<usize>),
    /// Wrong number of inputs: (expected, given).
    Arity(usize, usize),
    /// Anything else the backend reports (a failed kernel compile, a device error).
    Failed(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            BackendError::Unsupported(op, b) => write!(f, "the {b} backend cannot run `{op}`"),
            BackendError::BadShape(n, want, got) => write!(
                f,
                "input `{n}` should have shape {want:?}, but it has shape {got:?}"
            ),
            BackendError::Arity(want, got) => {
                write!(f, "the step takes {want} inputs, but {got} were given")
            }
            BackendError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// A backend: where graphs are compiled and run.
pub trait Backend {
    /// A tensor living where the backend computes.
    type Buffer;
    /// A compiled graph.
    type Executable;

    fn name(&self) -> &'static str;
    /// Bytes the backend can still allocate for tensors (device memory on a GPU, the
    /// memory the system has available on the CPU); `None` when it cannot tell. Sizes are
    /// checked against it before large allocations ([`memory`]).
    fn memory_available(&self) -> Option<u64> {
        None
    }
    /// Bytes of device memory in use (buffers and working memory), where the backend
    /// can tell.
    fn memory_in_use(&self) -> Option<u64> {
        None
    }
    /// The device in words (`cpu`, `wgpu on llvmpipe (…)`), for reports.
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Compiles `g` (already optimized). Compiling a graph equal to an earlier one may
    /// return the cached result.
    fn compile(&self, g: &Graph) -> Result<Self::Executable, BackendError>;
    /// A buffer holding `data` with `shape`.
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Self::Buffer, BackendError>;
    /// Replaces the contents of `b` with `data` of `shape` (a training loop refills its
    /// batch buffers every step; a backend may reuse the storage instead of allocating).
    fn write(
        &self,
        b: &mut Self::Buffer,
        shape: &[usize],
        data: &[f32],
    ) -> Result<(), BackendError> {
        *b = self.upload(shape, data)?;
        Ok(())
    }
    /// Replaces the contents of `b` with a tensor of `shape` that `fill` writes: called as
    /// `fill(rows, out)`, it writes rows `rows` (indices along `shape[0]`) into `out`,
    /// which holds exactly those rows. A backend may call it on several threads at once,
    /// each with rows of its own, split as its kernels will split them, so that a
    /// training batch is assembled where it is about to be read. By default: one call over
    /// every row, then [`Backend::write`].
    fn write_rows(
        &self,
        b: &mut Self::Buffer,
        shape: &[usize],
        fill: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
    ) -> Result<(), BackendError> {
        let n = memory::numel(shape).unwrap_or(usize::MAX);
        let mut data = memory::zeroed(n, "a batch", || self.memory_available())
            .map_err(BackendError::Failed)?;
        fill(0..shape.first().copied().unwrap_or(1), &mut data);
        self.write(b, shape, &data)
    }
    /// The contents of `b` (waits for pending work).
    fn download(&self, b: &Self::Buffer) -> Result<Vec<f32>, BackendError>;
    /// The contents of several buffers, waiting once (a training loop reads the losses
    /// of the steps it queued together). By default: one [`Backend::download`] each.
    fn download_all(&self, bs: &[&Self::Buffer]) -> Result<Vec<Vec<f32>>, BackendError> {
        bs.iter().map(|b| self.download(b)).collect()
    }
    /// Whether [`Backend::run`] returns before the work is done, so that reading a
    /// result waits for it (a GPU). A training loop on such a backend queues its steps
    /// and reads their losses only when it reports them; on one that does not (the
    /// CPU), reading a result costs nothing and it checks every step's loss at once.
    fn runs_ahead(&self) -> bool {
        false
    }
    /// Runs `exe` on `inputs` (one per graph input, in graph order; shapes are checked).
    /// Inputs named by `state.N` outputs are replaced by those outputs; the other outputs
    /// are returned in graph order.
    fn run(
        &self,
        exe: &mut Self::Executable,
        inputs: &mut [Self::Buffer],
    ) -> Result<Vec<Self::Buffer>, BackendError>;
}

/// Checks that `data` fills `shape` (every backend's `upload` starts here).
pub fn check_upload(shape: &[usize], data: &[f32]) -> Result<(), BackendError> {
    let n = memory::numel(shape).unwrap_or(usize::MAX);
    if n != data.len() {
        return Err(BackendError::Failed(format!(
            "{} values given for shape {shape:?} ({n} values)",
            data.len()
        )));
    }
    Ok(())
}

/// How each output of `g` is delivered: `Some(i)` when it is the new value of input `i`
/// (a `state.N` output), `None` when it is returned.
pub fn state_targets(g: &Graph) -> Vec<Option<usize>> {
    g.state_targets()
}

/// The reference interpreter as a backend (f64 inside, or f32 by rounding).
pub struct Interp {
    pub precision: Precision,
    /// The memory the machine has available, when whoever runs the interpreter knows it
    /// (`lang` reads no system state); sizes are checked against it.
    pub memory: Option<u64>,
}

impl Backend for Interp {
    type Buffer = Tensor;
    type Executable = Graph;

    fn name(&self) -> &'static str {
        "interpreter"
    }
    fn memory_available(&self) -> Option<u64> {
        self.memory
    }
    fn compile(&self, g: &Graph) -> Result<Graph, BackendError> {
        Ok(g.clone())
    }
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor, BackendError> {
        check_upload(shape, data)?;
        Ok(Tensor::new(
            crate::check::ty::DType::F32,
            shape.to_vec(),
            data.iter().map(|x| f64::from(*x)).collect(),
        ))
    }
    fn download(&self, b: &Tensor) -> Result<Vec<f32>, BackendError> {
        Ok(b.data.iter().map(|x| *x as f32).collect())
    }
    fn run(&self, g: &mut Graph, inputs: &mut [Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let names: Vec<(String, InputKind)> =
            g.inputs().map(|(_, n, k)| (n.to_string(), k)).collect();
        if names.len() != inputs.len() {
            return Err(BackendError::Arity(names.len(), inputs.len()));
        }
        interp::fits(g, self.memory).map_err(|e| BackendError::Failed(e.to_string()))?;
        let vals = interp::run(
            g,
            &|n, _| {
                names
                    .iter()
                    .position(|(m, _)| m == n)
                    .map(|i| inputs[i].clone())
            },
            self.precision,
        )
        .map_err(|e| match e {
            interp::RunError::BadShape(n, want, got) => BackendError::BadShape(n, want, got),
            other => BackendError::Failed(other.to_string()),
        })?;
        let mut out = Vec::new();
        for ((_, v), target) in g.outputs.iter().zip(state_targets(g)) {
            let t = vals[v.index()].clone();
            match target {
                Some(i) => inputs[i] = t,
                None => out.push(t),
            }
        }
        Ok(out)
    }
}
