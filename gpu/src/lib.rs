//! `nabla-gpu`: the GPU backend. A graph is scheduled by the shared scheduler
//! (`nabla-sched`) for the device's [`Target`] — the same plan the CPU runs, with the
//! device's alignment, largest binding and no reductions on read — and each planned
//! kernel becomes one or two CubeCL launches ([`steps`]): a fused group is one generated
//! kernel ([`kernels::fused`], compiled once per distinct program), the other ops are
//! fixed kernels that read their shapes from a small geometry buffer. CubeCL compiles
//! them for wgpu (WGSL: Vulkan, Metal, DX12 — software Vulkan included), CUDA or ROCm.
//!
//! Everything a step touches stays on the device: inputs are device buffers, the plan's
//! arena is one device buffer whose regions are bound at their offsets, state outputs are
//! written into their inputs' buffers (or replace them), and [`Backend::run`] returns
//! without waiting; only [`Backend::download`] waits.
//!
//! Invariants: every dtype is held as f32, as on the CPU (integers exact below 2²⁴);
//! indices are `u32` (a plan needing more is refused when compiling); a kernel writes
//! only its outputs, and reads an output's own element only where the plan allows an
//! in-place update; no atomics, so every run gives the same bits.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod device;
pub mod kernels;
pub mod steps;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cubecl::prelude::*;
use cubecl::server::Handle;
use nabla_lang::backend::memory::show_bytes;
use nabla_lang::backend::{Backend, BackendError};
use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Graph, Unary, ValueId};
use nabla_sched::{Loc, Plan, Scale, Target};

pub use device::{Adapter, adapters};
use steps::Step;

/// A tensor in device memory (f32).
#[derive(Clone, Debug)]
pub struct Buffer {
    pub handle: Handle,
    pub shape: Vec<usize>,
}

/// A compiled graph: its plan, its launches and their geometry buffers.
pub struct Compiled {
    pub plan: Plan,
    pub graph: Graph,
    /// Each launch with the index of the plan kernel it belongs to.
    steps: Vec<(usize, Step)>,
    /// The geometry buffer of each launch that has one.
    geos: Vec<Option<Handle>>,
}

/// A compiled graph with its device arena: one per concurrent user of a step.
pub struct Executable {
    pub compiled: Arc<Compiled>,
    /// The arena's pages (see `Target::page`), each a buffer of its own.
    pages: Vec<Handle>,
    /// Whether a run has completed: the first one submits kernel by kernel, so that a
    /// kernel that fails to compile is named.
    ran: bool,
}

impl Executable {
    /// Bytes of the device arena (every intermediate value of a run).
    pub fn arena_bytes(&self) -> usize {
        self.compiled.plan.arena
    }
}

/// The GPU backend on CubeCL runtime `R`.
pub struct Gpu<R: Runtime> {
    client: ComputeClient<R>,
    target: Target,
    /// The adapter, for messages: `llvmpipe (LLVM 15.0.6, 256 bits) (cpu, Vulkan)`.
    pub adapter: String,
    cache: Mutex<HashMap<u64, Vec<Arc<Compiled>>>>,
    /// The most device memory to use ([`device::MEMORY_LIMIT_VAR`]), when set.
    limit: Option<u64>,
}

fn f32_everywhere(_: DType) -> DType {
    DType::F32
}

/// What a GPU tells the scheduler: every dtype held as f32; buffers bound at offsets of
/// 256 bytes (the strictest storage-binding alignment of common adapters, and at least
/// the device's own); loops run one element per unit (no vector lanes, so every
/// broadcast pattern can be read in place); no function is evaluated lane by lane;
/// transcendental functions are worth storing rather than recomputing; the largest
/// binding and the most buffers a kernel binds are the device's; reductions are kernels
/// of their own.
pub fn target(name: &'static str, align: usize, max_binding: usize, max_bindings: usize) -> Target {
    Target {
        name,
        storage: f32_everywhere,
        align: align.max(256),
        lanes: 1,
        scalar_unary: &[],
        scalar_binary: &[],
        costly_unary: &[
            Unary::Exp,
            Unary::Log,
            Unary::Tanh,
            Unary::Sigmoid,
            Unary::Erf,
            Unary::Sin,
            Unary::Cos,
        ],
        costly_binary: &[Binary::Pow],
        max_binding,
        max_bindings,
        reduce_on_read: None,
    }
}

/// The message of a caught panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".into())
}

/// Opens a device with `open`, which CubeCL makes panic (on its own thread, then on
/// ours) when the device or its libraries are missing: the panics are caught and not
/// printed, and the first one's message — the cause, from the runtime's thread — is the
/// error.
fn open_quietly<T>(open: impl FnOnce() -> T) -> Result<T, String> {
    static FIRST: Mutex<Option<String>> = Mutex::new(None);
    if let Ok(mut f) = FIRST.lock() {
        *f = None;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut f) = FIRST.lock()
            && f.is_none()
        {
            *f = Some(panic_text(info.payload()));
        }
    }));
    let r = catch_unwind(AssertUnwindSafe(open));
    std::panic::set_hook(previous);
    r.map_err(|e| {
        FIRST
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_else(|| panic_text(&*e))
    })
}

/// The first panic on one of CubeCL's device threads since it was last taken. CubeCL
/// runs each device's work on threads of its own (named `DSD-…`/`DSU-…` in 0.10), where
/// it catches a panic — a kernel that fails to expand or compile, an allocation that
/// fails, a device lost — logs it and carries on, so the work is silently not done and
/// reads return stale memory. [`watch_device_threads`] records those panics here instead,
/// and every wait on the device ([`Gpu::flush`]) reports one as an error.
static FAULT: Mutex<Option<String>> = Mutex::new(None);

/// Installs (once) the panic hook that records panics on CubeCL's device threads in
/// [`FAULT`] without printing them; other panics go to the hook that was there before.
fn watch_device_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_device = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("DSD-") || n.starts_with("DSU-"));
            if !on_device {
                return previous(info);
            }
            if let Ok(mut f) = FAULT.lock()
                && f.is_none()
            {
                *f = Some(panic_text(info.payload()));
            }
        }));
    });
}

/// The recorded device-thread panic, if any (and forgets it).
fn take_fault() -> Option<String> {
    FAULT.lock().ok().and_then(|mut f| f.take())
}

/// Runs `f`, turning a panic inside the runtime (device lost, out of memory) into an
/// error that says what was being done.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|e| {
        Err(BackendError::Failed(format!(
            "the device failed while {what}: {}",
            panic_text(&*e)
        )))
    })
}

const UNITS: u32 = 256;

impl<R: Runtime> Gpu<R> {
    /// The backend over an existing client.
    pub fn with_client(client: ComputeClient<R>, name: &'static str, adapter: String) -> Self {
        watch_device_threads();
        let props = client.properties();
        let target = target(
            name,
            props.memory.alignment as usize,
            usize::try_from(props.memory.max_page_size).unwrap_or(usize::MAX),
            // CubeCL binds one buffer of its own (sizes and scalars) beside a kernel's.
            (props.hardware.max_bindings as usize).saturating_sub(1),
        );
        Gpu {
            client,
            target,
            adapter,
            cache: Mutex::new(HashMap::new()),
            limit: None,
        }
    }

    /// Binds at most `n` buffers per fused kernel (fewer than the device allows: to run
    /// as a device with WebGPU's minimum of 8 would). Clears compiled steps.
    pub fn with_max_bindings(mut self, n: usize) -> Self {
        self.target.max_bindings = self.target.max_bindings.min(n);
        self.cache = Mutex::new(HashMap::new());
        self
    }

    /// Caps the device memory this backend uses at `limit` bytes: an allocation past it
    /// is refused, naming what needed it (see [`device::MEMORY_LIMIT_VAR`]).
    pub fn with_memory_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    /// Refuses `bytes` for `what` when they do not fit under the memory limit.
    fn fits(&self, bytes: u64, what: impl FnOnce() -> String) -> Result<(), BackendError> {
        let (Some(limit), Some(free)) = (self.limit, self.memory_available()) else {
            return Ok(());
        };
        if bytes <= free {
            return Ok(());
        }
        Err(BackendError::Failed(format!(
            "out of device memory on {}: {} needs {}, and {} of the {} that {} allows is free",
            self.describe(),
            what(),
            show_bytes(bytes),
            show_bytes(free),
            show_bytes(limit),
            device::MEMORY_LIMIT_VAR,
        )))
    }

    /// The scheduler's description of this device.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn buffer(&self, data: &[f32]) -> Handle {
        // A zero-sized binding is invalid on some APIs: an empty tensor gets one element.
        if data.is_empty() {
            self.client.create_from_slice(f32::as_bytes(&[0.0]))
        } else {
            self.client.create_from_slice(f32::as_bytes(data))
        }
    }

    fn grid(&self, n: u32) -> (CubeCount, CubeDim) {
        let dim = CubeDim::new_1d(UNITS);
        (
            cubecl::calculate_cube_count_elemwise(&self.client, n as usize, dim),
            dim,
        )
    }

    /// Launches one step; `at` gives a value's storage and element count.
    fn launch(
        &self,
        s: &Step,
        geo: Option<&Handle>,
        at: &dyn Fn(ValueId) -> (Handle, usize),
    ) -> Result<(), BackendError> {
        let c = &self.client;
        let arr = |v: ValueId| {
            let (h, n) = at(v);
            // SAFETY: `n` is the value's element count and `h` its region, which holds at
            // least that many (the plan sizes every region by its value).
            unsafe { ArrayArg::<R>::from_raw_parts(h, n.max(1)) }
        };
        let geo = || -> Result<ArrayArg<R>, BackendError> {
            let h = geo.ok_or_else(|| {
                BackendError::Failed("internal error: a launch without its geometry".into())
            })?;
            let n = (h.size() / 4) as usize;
            // SAFETY: the geometry buffer holds `n` u32 values.
            Ok(unsafe { ArrayArg::<R>::from_raw_parts(h.clone(), n) })
        };
        // SAFETY (every launch below): each kernel bounds its units by its element count
        // and indexes only inside the regions its geometry describes, which the plan
        // sized.
        unsafe {
            match s {
                Step::Fused {
                    prog,
                    leaves,
                    stores,
                    n,
                } => {
                    if *n == 0 {
                        return Ok(());
                    }
                    let (count, dim) = self.grid(*n);
                    let mut ins = SequenceArg::<R, Array<f32>>::new();
                    for v in leaves {
                        ins.push(arr(*v));
                    }
                    let mut outs = SequenceArg::<R, Array<f32>>::new();
                    for v in stores {
                        outs.push(arr(*v));
                    }
                    kernels::fused::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        ins,
                        outs,
                        *n,
                        prog.clone(),
                    );
                }
                Step::Fill { out, value, n } => {
                    if *n == 0 {
                        return Ok(());
                    }
                    let (count, dim) = self.grid(*n);
                    kernels::fill::launch_unchecked::<R>(c, count, dim, arr(*out), *value, *n);
                }
                Step::Strided {
                    src,
                    out,
                    n,
                    rank,
                    base,
                    put,
                    ..
                } => {
                    if *n == 0 {
                        return Ok(());
                    }
                    let (count, dim) = self.grid(*n);
                    if *put {
                        kernels::put::launch_unchecked::<R>(
                            c,
                            count,
                            dim,
                            arr(*src),
                            arr(*out),
                            geo()?,
                            *n,
                            *rank,
                            *base,
                        );
                    } else {
                        kernels::take::launch_unchecked::<R>(
                            c,
                            count,
                            dim,
                            arr(*src),
                            arr(*out),
                            geo()?,
                            *n,
                            *rank,
                            *base,
                        );
                    }
                }
                Step::Reduce {
                    src,
                    out,
                    n,
                    nk,
                    nr,
                    count: len,
                    max,
                    ..
                } => {
                    let (count, dim) = self.grid(*n);
                    kernels::reduce::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*src),
                        arr(*out),
                        geo()?,
                        *n,
                        *nk,
                        *nr,
                        *len,
                        *max,
                    );
                }
                Step::ArgMax {
                    src,
                    out,
                    n,
                    len,
                    inner,
                } => {
                    let (count, dim) = self.grid(*n);
                    kernels::argmax::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*src),
                        arr(*out),
                        *n,
                        *len,
                        *inner,
                    );
                }
                Step::MatMul {
                    a,
                    b,
                    out,
                    update,
                    total,
                    ..
                } => {
                    let (count, dim) = self.grid(*total);
                    let (base, scale, k, mode) = match update {
                        None => (*out, *out, 0.0, 0),
                        Some((base, Scale::Const(k))) => (*base, *out, *k, 1),
                        Some((base, Scale::Value(v))) => (*base, *v, 0.0, 2),
                    };
                    kernels::matmul::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*a),
                        arr(*b),
                        arr(*out),
                        arr(base),
                        arr(scale),
                        geo()?,
                        k,
                        mode,
                    );
                }
                Step::Conv {
                    kind,
                    a,
                    b,
                    out,
                    total,
                    ..
                } => {
                    let (count, dim) = self.grid(*total);
                    match kind {
                        0 => kernels::conv2d::launch_unchecked::<R>(
                            c,
                            count,
                            dim,
                            arr(*a),
                            arr(*b),
                            arr(*out),
                            geo()?,
                            *total,
                        ),
                        1 => kernels::conv2d_input_grad::launch_unchecked::<R>(
                            c,
                            count,
                            dim,
                            arr(*a),
                            arr(*b),
                            arr(*out),
                            geo()?,
                            *total,
                        ),
                        _ => kernels::conv2d_weight_grad::launch_unchecked::<R>(
                            c,
                            count,
                            dim,
                            arr(*a),
                            arr(*b),
                            arr(*out),
                            geo()?,
                            *total,
                        ),
                    }
                }
                Step::Pool {
                    x, out, total, max, ..
                } => {
                    let (count, dim) = self.grid(*total);
                    kernels::pool::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*x),
                        arr(*out),
                        geo()?,
                        *total,
                        *max,
                    );
                }
                Step::MaxPoolGrad {
                    x, dy, out, total, ..
                } => {
                    let (count, dim) = self.grid(*total);
                    kernels::max_pool_grad::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*x),
                        arr(*dy),
                        arr(*out),
                        geo()?,
                        *total,
                    );
                }
                Step::AvgPoolGrad { dy, out, total, .. } => {
                    let (count, dim) = self.grid(*total);
                    kernels::avg_pool_grad::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*dy),
                        arr(*out),
                        geo()?,
                        *total,
                    );
                }
                Step::Gather {
                    table,
                    idx,
                    out,
                    n,
                    d,
                    v,
                } => {
                    let (count, dim) = self.grid(*n);
                    kernels::gather::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*table),
                        arr(*idx),
                        arr(*out),
                        *n,
                        *d,
                        *v,
                    );
                }
                Step::OneHot {
                    idx,
                    out,
                    n,
                    classes,
                } => {
                    let (count, dim) = self.grid(*n);
                    kernels::one_hot::launch_unchecked::<R>(
                        c,
                        count,
                        dim,
                        arr(*idx),
                        arr(*out),
                        *n,
                        *classes,
                    );
                }
                Step::Uniform { out, n, zh, zl } => {
                    let (count, dim) = self.grid(*n);
                    kernels::uniform::launch_unchecked::<R>(c, count, dim, arr(*out), *n, *zh, *zl);
                }
            }
        }
        Ok(())
    }

    /// A copy of `n` elements of `src` in a buffer of its own.
    fn copy(&self, src: Handle, n: usize) -> Result<Handle, BackendError> {
        let out = self.client.empty(n.max(1) * 4);
        let n32 = u32::try_from(n).map_err(|_| {
            BackendError::Failed(format!(
                "{n} elements are beyond the GPU backend's 32-bit indices"
            ))
        })?;
        if n > 0 {
            let (count, dim) = self.grid(n32);
            // SAFETY: both buffers hold `n` elements; units past `n` do nothing.
            unsafe {
                kernels::copy::launch_unchecked::<R>(
                    &self.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(src, n),
                    ArrayArg::from_raw_parts(out.clone(), n),
                    n32,
                );
            }
        }
        Ok(out)
    }

    /// Submits the queued work and waits until the runtime has taken it (compiled and
    /// launched its kernels, not run them); a failure in doing so, reported or caught on
    /// a device thread, is an error naming `what`.
    fn flush(&self, what: impl FnOnce() -> String) -> Result<(), BackendError> {
        let r = self.client.flush().map_err(|e| format!("{e:?}"));
        match r.err().or_else(take_fault) {
            None => Ok(()),
            Some(e) => Err(BackendError::Failed(format!(
                "{} failed on the device: {e}",
                what()
            ))),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(e.to_string())
}

impl<R: Runtime> Backend for Gpu<R> {
    type Buffer = Buffer;
    type Executable = Executable;

    fn name(&self) -> &'static str {
        self.target.name
    }

    fn memory_in_use(&self) -> Option<u64> {
        self.client.memory_usage().ok().map(|m| m.bytes_in_use)
    }

    fn memory_available(&self) -> Option<u64> {
        let used = self.memory_in_use().unwrap_or(0);
        self.limit.map(|l| l.saturating_sub(used))
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.target.name, self.adapter)
    }

    fn compile(&self, g: &Graph) -> Result<Executable, BackendError> {
        let key = g.fingerprint();
        let hit = self.cache.lock().ok().and_then(|c| {
            c.get(&key)
                .and_then(|cs| cs.iter().find(|c| c.graph.same_computation(g)).cloned())
        });
        let compiled = match hit {
            Some(c) => c,
            None => {
                let plan = nabla_sched::plan(g, &self.target).map_err(failed)?;
                if cfg!(debug_assertions)
                    && let Err(faults) = nabla_sched::verify(g, &plan, &self.target)
                {
                    debug_assert!(false, "the plan breaks its invariants: {faults:?}");
                    return Err(failed(format!(
                        "internal error: an invalid plan: {faults:?}"
                    )));
                }
                let mut steps = Vec::new();
                for (i, k) in plan.kernels.iter().enumerate() {
                    for s in steps::kernel_steps(g, &plan, k)
                        .map_err(|e| BackendError::Unsupported(e, self.target.name.into()))?
                    {
                        steps.push((i, s));
                    }
                }
                let geos = guarded("uploading a step's geometry", || {
                    Ok(steps
                        .iter()
                        .map(|(_, s)| {
                            s.geometry()
                                .map(|g| self.client.create_from_slice(u32::as_bytes(g)))
                        })
                        .collect::<Vec<_>>())
                })?;
                let c = Arc::new(Compiled {
                    plan,
                    graph: g.clone(),
                    steps,
                    geos,
                });
                if let Ok(mut cache) = self.cache.lock() {
                    cache.entry(key).or_default().push(c.clone());
                }
                c
            }
        };
        let (bytes, page) = (compiled.plan.arena, self.target.page());
        let working = || {
            format!(
                "the step's working memory ({} kernels)",
                compiled.plan.kernels.len()
            )
        };
        self.fits(bytes as u64, working)?;
        let what = format!(
            "allocating the step's working memory ({})",
            show_bytes(bytes as u64)
        );
        let pages = guarded(&what, || {
            let pages = (0..bytes.div_ceil(page))
                .map(|i| self.client.empty(page.min(bytes - i * page)))
                .collect();
            self.flush(|| what.clone())?;
            Ok(pages)
        })?;
        Ok(Executable {
            compiled,
            pages,
            ran: false,
        })
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Buffer, BackendError> {
        nabla_lang::backend::check_upload(shape, data)?;
        let bytes = (data.len().max(1) * 4) as u64;
        self.fits(bytes, || format!("a tensor of shape {shape:?}"))?;
        guarded(
            &format!("uploading a tensor of {}", show_bytes(bytes)),
            || {
                Ok(Buffer {
                    handle: self.buffer(data),
                    shape: shape.to_vec(),
                })
            },
        )
    }

    fn write(&self, b: &mut Buffer, shape: &[usize], data: &[f32]) -> Result<(), BackendError> {
        nabla_lang::backend::check_upload(shape, data)?;
        // The old contents are released as the new ones arrive (CubeCL keeps them until
        // the steps queued before that read them are done).
        let bytes = (data.len().max(1) * 4) as u64;
        let old = b.handle.size();
        self.fits(bytes.saturating_sub(old), || {
            format!("a tensor of shape {shape:?}")
        })?;
        guarded(
            &format!("uploading a tensor of {}", show_bytes(bytes)),
            || {
                b.handle = self.buffer(data);
                b.shape = shape.to_vec();
                Ok(())
            },
        )
    }

    fn download(&self, b: &Buffer) -> Result<Vec<f32>, BackendError> {
        guarded("reading a tensor back", || {
            self.flush(|| "an earlier step".into())?;
            let bytes = self.client.read_one(b.handle.clone()).map_err(|e| {
                BackendError::Failed(format!("reading a tensor back failed: {e:?}"))
            })?;
            let n: usize = b.shape.iter().product();
            let all = f32::from_bytes(&bytes);
            all.get(..n).map(<[f32]>::to_vec).ok_or_else(|| {
                BackendError::Failed(format!(
                    "a device buffer holds {} values, not {n}",
                    all.len()
                ))
            })
        })
    }

    fn download_all(&self, bs: &[&Buffer]) -> Result<Vec<Vec<f32>>, BackendError> {
        guarded("reading tensors back", || {
            self.flush(|| "an earlier step".into())?;
            let handles = bs.iter().map(|b| b.handle.clone()).collect();
            let read = cubecl::future::block_on(self.client.read_async(handles))
                .map_err(|e| BackendError::Failed(format!("reading tensors back failed: {e:?}")))?;
            bs.iter()
                .zip(read)
                .map(|(b, bytes)| {
                    let n: usize = b.shape.iter().product();
                    let all = f32::from_bytes(&bytes);
                    all.get(..n).map(<[f32]>::to_vec).ok_or_else(|| {
                        BackendError::Failed(format!(
                            "a device buffer holds {} values, not {n}",
                            all.len()
                        ))
                    })
                })
                .collect()
        })
    }

    fn runs_ahead(&self) -> bool {
        true
    }

    fn run(
        &self,
        exe: &mut Executable,
        inputs: &mut [Buffer],
    ) -> Result<Vec<Buffer>, BackendError> {
        let c = exe.compiled.clone();
        let p = &c.plan;
        if inputs.len() != p.inputs.len() {
            return Err(BackendError::Arity(p.inputs.len(), inputs.len()));
        }
        for ((_, name, shape), b) in p.inputs.iter().zip(inputs.iter()) {
            if *shape != b.shape {
                return Err(BackendError::BadShape(
                    name.clone(),
                    shape.clone(),
                    b.shape.clone(),
                ));
            }
        }
        let g = &c.graph;
        let handles: Vec<Handle> = inputs.iter().map(|b| b.handle.clone()).collect();
        let (pages, page) = (exe.pages.clone(), self.target.page());
        let at = |v: ValueId| -> (Handle, usize) {
            let n = g.node(v).numel();
            let r = p.root[v.index()];
            let h = match p.loc[r.index()] {
                Some(Loc::Input(k)) => handles[k].clone(),
                Some(Loc::Arena(off)) => match pages.get(off / page) {
                    Some(h) => h.clone().offset_start((off % page) as u64),
                    None => handles[0].clone(),
                },
                // The plan materializes every value a kernel reads or writes.
                None => handles[0].clone(),
            };
            (h, n)
        };
        let first = !exe.ran;
        let out = guarded("running a step", || {
            for ((k, s), geo) in c.steps.iter().zip(&c.geos) {
                self.launch(s, geo.as_ref(), &at)?;
                if first {
                    self.flush(|| {
                        format!(
                            "kernel {k} of the step ({}: {})",
                            nabla_sched::describe(g, p, &p.kernels[*k]),
                            s.describe()
                        )
                    })?;
                }
            }
            let mut out = Vec::new();
            let mut copies = Vec::new();
            for (o, (v, target)) in p.outputs.iter().enumerate() {
                if p.in_place[o] {
                    continue; // already in its input's buffer
                }
                let (h, n) = at(*v);
                let handle = self.copy(h, n)?;
                let shape = g.node(*v).shape.clone();
                match target {
                    Some(i) => copies.push((*i, handle)),
                    None => out.push(Buffer { handle, shape }),
                }
            }
            self.flush(|| "the step".into())?;
            Ok((out, copies))
        })?;
        let (out, copies) = out;
        for (i, h) in copies {
            inputs[i].handle = h;
        }
        exe.ran = true;
        Ok(out)
    }
}

impl Step {
    /// The geometry buffer's contents, for launches that read one.
    fn geometry(&self) -> Option<&[u32]> {
        match self {
            Step::Strided { geo, .. }
            | Step::Reduce { geo, .. }
            | Step::MatMul { geo, .. }
            | Step::Conv { geo, .. }
            | Step::Pool { geo, .. }
            | Step::MaxPoolGrad { geo, .. }
            | Step::AvgPoolGrad { geo, .. } => Some(geo),
            _ => None,
        }
    }
}

/// The GPU backend on wgpu.
pub type Wgpu = Gpu<cubecl::wgpu::WgpuRuntime>;
/// The GPU backend on CUDA.
#[cfg(feature = "cuda")]
pub type Cuda = Gpu<cubecl::cuda::CudaRuntime>;
/// The GPU backend on ROCm.
#[cfg(feature = "hip")]
pub type Hip = Gpu<cubecl::hip::HipRuntime>;

/// The memory limit from the environment, as a backend error.
fn limit() -> Result<Option<u64>, BackendError> {
    device::memory_limit().map_err(BackendError::Failed)
}

/// The wgpu backend on the best adapter found.
pub fn wgpu() -> Result<Gpu<cubecl::wgpu::WgpuRuntime>, BackendError> {
    let found = adapters();
    let Some((adapter, device)) = device::choose(&found) else {
        return Err(BackendError::Failed(format!(
            "no GPU adapter found for wgpu (probed: {} through the system's loader; none answered): {}",
            if cfg!(target_os = "macos") {
                "Metal"
            } else {
                "Vulkan"
            },
            device::HOW_TO_GET_ONE
        )));
    };
    let client = open_quietly(|| cubecl::wgpu::WgpuRuntime::client(&device))
        .map_err(|e| BackendError::Failed(format!("could not open {}: {e}", adapter.describe())))?;
    Ok(Gpu::with_client(client, "wgpu", adapter.describe()).with_memory_limit(limit()?))
}

/// The CUDA backend on the first device.
#[cfg(feature = "cuda")]
pub fn cuda() -> Result<Gpu<cubecl::cuda::CudaRuntime>, BackendError> {
    let device = cubecl::cuda::CudaDevice::new(0);
    let client = open_quietly(|| cubecl::cuda::CudaRuntime::client(&device)).map_err(|e| {
        BackendError::Failed(format!(
            "could not open CUDA device 0 ({}): the NVIDIA driver (libcuda), NVRTC and the CUDA headers (under $CUDA_PATH or /usr/local/cuda) are needed",
            // The loader's message lists every library name it tried: the first words say it.
            e.lines().next().unwrap_or("").split(" - searched").next().unwrap_or("")
        ))
    })?;
    cuda_headers()?;
    Ok(Gpu::with_client(client, "cuda", "CUDA device 0".into()).with_memory_limit(limit()?))
}

/// Checks that NVRTC will find the CUDA headers CubeCL's kernels include
/// (`cuda_runtime.h`), where CubeCL looks for them: `$CUDA_PATH/include`, else
/// `/usr/local/cuda`, `/opt/cuda` or `/usr` (where `nvcc` is `/usr/bin/nvcc`). Without
/// them every kernel would fail to compile at its first launch.
#[cfg(feature = "cuda")]
fn cuda_headers() -> Result<(), BackendError> {
    headers_at(
        cubecl::cuda::install::cuda_path(),
        std::env::var_os("CUDA_PATH").is_some(),
    )
}

/// [`cuda_headers`] for the toolkit at `root` (`from_env`: named by `CUDA_PATH`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn headers_at(root: Option<std::path::PathBuf>, from_env: bool) -> Result<(), BackendError> {
    let how = "set CUDA_PATH to the CUDA toolkit's directory (the one holding include/cuda_runtime.h), or install the toolkit's headers (Debian, Ubuntu: `apt-get install nvidia-cuda-dev`; or NVIDIA's `cuda-cudart-dev` package)";
    let Some(root) = root else {
        return Err(BackendError::Failed(format!(
            "the CUDA headers were not found: CUDA_PATH is not set, and there is no /usr/local/cuda, /opt/cuda or /usr/bin/nvcc; {how}"
        )));
    };
    let header = root.join("include").join("cuda_runtime.h");
    if header.is_file() {
        return Ok(());
    }
    let from = if from_env {
        "CUDA_PATH"
    } else {
        "the default location"
    };
    Err(BackendError::Failed(format!(
        "the CUDA headers were not found: {} ({from}) has no include/cuda_runtime.h; {how}",
        root.display()
    )))
}

/// The ROCm backend on the first device.
#[cfg(feature = "hip")]
pub fn hip() -> Result<Gpu<cubecl::hip::HipRuntime>, BackendError> {
    let device = cubecl::hip::AmdDevice::new(0);
    let client = open_quietly(|| cubecl::hip::HipRuntime::client(&device))
        .map_err(|e| BackendError::Failed(format!("could not open ROCm device 0: {e}")))?;
    Ok(Gpu::with_client(client, "hip", "ROCm device 0".into()).with_memory_limit(limit()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nabla_lang::ir::{InputKind, Op};

    /// Missing CUDA headers are an error saying where they were looked for and how to
    /// point nabla at them; present ones pass.
    #[test]
    fn missing_cuda_headers_say_where_they_were_looked_for() {
        let err = headers_at(None, false).expect_err("none").to_string();
        assert!(
            err.contains("CUDA_PATH is not set, and there is no /usr/local/cuda")
                && err.contains("set CUDA_PATH"),
            "{err}"
        );
        let root = std::env::temp_dir().join(format!("nabla-cuda-{}", std::process::id()));
        std::fs::create_dir_all(root.join("include")).expect("dir");
        let err = headers_at(Some(root.clone()), true)
            .expect_err("no header")
            .to_string();
        assert!(
            err.contains(&format!(
                "{} (CUDA_PATH) has no include/cuda_runtime.h",
                root.display()
            )),
            "{err}"
        );
        std::fs::write(root.join("include/cuda_runtime.h"), "").expect("header");
        headers_at(Some(root.clone()), true).expect("found");
        std::fs::remove_dir_all(&root).ok();
    }

    /// A kernel that fails where CubeCL builds it (on its device thread, where CubeCL
    /// catches the panic and carries on) is an error naming the kernel and its ops, not
    /// a step that silently did nothing; the backend works again afterwards.
    #[test]
    fn a_kernel_that_fails_to_build_is_an_error_naming_it() {
        let Ok(gpu) = wgpu() else {
            assert!(
                std::env::var_os("NABLA_REQUIRE_GPU").is_none(),
                "NABLA_REQUIRE_GPU is set, but wgpu finds no adapter"
            );
            eprintln!("skipped: no wgpu adapter");
            return;
        };
        let mut g = Graph::default();
        let input = |g: &mut Graph, name: &str| {
            g.push(
                Op::Input {
                    name: name.into(),
                    kind: InputKind::Data,
                },
                vec![],
                DType::F32,
                vec![5],
            )
        };
        let (x, y) = (input(&mut g, "x"), input(&mut g, "y"));
        let s = g.push(Op::Binary(Binary::Add), vec![x, y], DType::F32, vec![5]);
        let e = g.push(Op::Unary(Unary::Exp), vec![s], DType::F32, vec![5]);
        g.outputs.push(("out".into(), e));
        let good = gpu.compile(&g).expect("compiles");
        // The same plan with its fused loop reading a value that does not exist.
        let mut broken = Compiled {
            plan: good.compiled.plan.clone(),
            graph: good.compiled.graph.clone(),
            steps: good.compiled.steps.clone(),
            geos: good.compiled.geos.clone(),
        };
        let Some((_, Step::Fused { prog, .. })) = broken.steps.iter_mut().next() else {
            panic!("one fused loop: {:?}", good.compiled.steps);
        };
        let last = prog.ops.len() as u32;
        if let Some(op) = prog.ops.last_mut() {
            op.a = last + 6;
        }
        let mut exe = Executable {
            compiled: Arc::new(broken),
            pages: good.pages.clone(),
            ran: false,
        };
        let data = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut inputs = vec![
            gpu.upload(&[5], &data).expect("upload"),
            gpu.upload(&[5], &data).expect("upload"),
        ];
        let err = gpu
            .run(&mut exe, &mut inputs)
            .expect_err("fails")
            .to_string();
        assert!(
            err.contains("kernel 0 of the step (")
                && err.contains("the fused loop (add, exp) over 5 elements")
                && err.contains("failed on the device: index out of bounds"),
            "{err}"
        );
        let mut good = good;
        let out = gpu.run(&mut good, &mut inputs).expect("runs");
        let got = gpu.download(&out[0]).expect("reads");
        // The device's exp is within a few ulps of the host's: 1e-6 relative.
        for (g, v) in got.iter().zip(data) {
            let want = (2.0 * v).exp();
            assert!((g - want).abs() <= 1e-6 * want, "{got:?}");
        }
    }
}
