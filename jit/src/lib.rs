//! `nabla-jit`: the CPU backend. A graph is scheduled by the shared scheduler
//! (`nabla-sched`, for the CPU's [`TARGET`]) into a [`Plan`]; this crate contributes the
//! kernels: fused loops emitted with Cranelift ([`fuse`]), matrix products and
//! convolutions through the `gemm` crate and the other ops as Rust kernels ([`kernels`]),
//! over one arena assigned once — and runs with no per-op dispatch beyond walking the
//! schedule. Compiled plans are cached by the graph's fingerprint (confirmed by comparing
//! the graphs), so compiling an unchanged step again is free.
//!
//! Invariants: every dtype is held as f32 (integers exact below 2²⁴); a kernel never
//! writes memory it reads except a fused loop at the same index; inputs are checked
//! against the graph's shapes before anything runs.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod batched;
pub mod copy;
pub mod depthwise;
pub mod fuse;
pub mod kernels;
pub mod team;
pub mod winograd;

use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use nabla_lang::backend::memory;
use nabla_lang::backend::{Backend, BackendError};
use nabla_lang::ir::{Graph, Op, ValueId};

use fuse::{Jit, LoopFn};
use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Unary};
pub use nabla_sched as sched;
use nabla_sched::{Kernel, Loc, Plan, ReduceOnRead, Scale, Target};

/// What the CPU tells the scheduler: every dtype is held as `f32` (integers exact below
/// 2²⁴); buffers start on cache lines; fused loops run four lanes (`f32x4`) and call into
/// Rust for the functions [`fuse`] does not inline; a reduction reads a loop over runs of
/// at least 16 elements, and up to four reductions share one loop.
pub const TARGET: Target = Target {
    name: "cpu",
    storage: f32_everywhere,
    align: 64,
    lanes: 4,
    scalar_unary: &[Unary::Log, Unary::Sin, Unary::Cos],
    scalar_binary: &[Binary::Pow],
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
    max_binding: usize::MAX,
    max_bindings: usize::MAX,
    reduce_on_read: Some(ReduceOnRead {
        min_run: 16,
        max_merged: 4,
    }),
};

fn f32_everywhere(_: DType) -> DType {
    DType::F32
}

/// A compiled graph: its plan and fused loops (shared by every executable of the graph).
pub struct Compiled {
    pub plan: Plan,
    /// Whether the step runs on the thread pool (see [`POOL_MIN_FLOPS`]).
    pooled: bool,
    loops: Vec<LoopFn>,
    /// Owns the machine code of `loops`.
    _jit: Mutex<Jit>,
    pub graph: Graph,
}

// SAFETY: the loops are immutable machine code; the JIT module is behind a mutex.
unsafe impl Send for Compiled {}
// SAFETY: as above.
unsafe impl Sync for Compiled {}

/// A compiled graph with its arena: one per concurrent user of a step.
pub struct Executable {
    pub compiled: Arc<Compiled>,
    arena: Vec<f32>,
    /// Seconds spent compiling (0 when the plan came from the cache).
    pub compile_seconds: f64,
    /// Seconds spent in each kernel of the plan over all runs, when profiling.
    profile: Option<Vec<f64>>,
    /// Whether steps run with the team, decided by timing them (steps off the pool).
    tuner: team::Tuner,
}

impl Executable {
    /// Bytes of the arena (every intermediate value of a run).
    pub fn arena_bytes(&self) -> usize {
        self.arena.len() * 4
    }

    /// Starts (or restarts) timing every kernel of later runs.
    pub fn start_profile(&mut self) {
        self.profile = Some(vec![0.0; self.compiled.plan.kernels.len()]);
    }

    /// Seconds spent in each kernel since [`Executable::start_profile`], with the
    /// kernel's class ([`kernel_class`]) and what it computes, largest first.
    pub fn profile(&self) -> Vec<KernelTime> {
        let Some(times) = &self.profile else {
            return Vec::new();
        };
        let g = &self.compiled.graph;
        let mut out: Vec<KernelTime> = self
            .compiled
            .plan
            .kernels
            .iter()
            .zip(times)
            .map(|(k, t)| KernelTime {
                class: kernel_class(g, k),
                what: sched::describe(g, &self.compiled.plan, k),
                seconds: *t,
            })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        out
    }
}

/// One kernel's share of a profile.
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub class: String,
    pub what: String,
    pub seconds: f64,
}

/// The class a profile sums a kernel under: fused loops, matrix products, reductions,
/// each convolution kernel by the path that computes it ([`kernels::ConvPath`]), and the
/// other ops by name.
pub fn kernel_class(g: &Graph, k: &Kernel) -> String {
    use kernels::{ConvPath, ConvShape};
    let Kernel::Node { node, args } = k else {
        return match k {
            Kernel::Fused { .. } => "fused loop",
            Kernel::MatMul { .. } => "matmul",
            _ => "reduction of a fused loop",
        }
        .to_string();
    };
    let n = g.node(*node);
    let sh = |i: usize| &g.node(args[i]).shape;
    let path = match &n.op {
        Op::Conv2d(w) => ConvPath::of(&ConvShape::new(sh(0), sh(1), &n.shape, *w)),
        Op::Conv2dInputGrad(w) => {
            ConvPath::of_input_grad(&ConvShape::new(&n.shape, sh(1), sh(0), *w)).0
        }
        Op::Conv2dWeightGrad(w) => ConvPath::of(&ConvShape::new(sh(0), &n.shape, sh(1), *w)),
        op => return op.name().to_string(),
    };
    format!("{} ({})", n.op.name(), path.name())
}

/// A tensor in host memory, in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Steps of at least this many flops run on a thread of the pool (measured: the MLP's
/// 0.41 GFLOP step; the linear net's 4 MFLOP one runs on one thread, and handing it to
/// the pool would cost more than it does).
///
/// A parallel kernel called from outside the pool injects its work and puts the caller
/// to sleep until a worker wakes it: two thread hand-offs per kernel, which were about
/// 10% of the MLP's profile (scheduler and futex time). From a pool thread, the kernel's
/// other half is stolen by the other worker, usually still spinning from the kernel
/// before, and the caller sleeps once per step.
const POOL_MIN_FLOPS: u64 = 1 << 24;

/// Below this many values a batch is written on the caller's thread alone.
const WRITE_TEAM_MIN: usize = 1 << 15;

/// The pool steps run on, one thread per core (rayon's default count); `None` if the
/// threads could not be started, in which case steps run on the caller's thread.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().build().ok())
        .as_ref()
}

/// The arena addresses of one run, handed to the pool thread that runs the kernels.
struct Pointers(Vec<*mut f32>);
// SAFETY: the run that owns the regions waits for the pool thread to finish with them.
unsafe impl Send for Pointers {}

/// The CPU backend.
#[derive(Default)]
pub struct Cpu {
    /// Compiled graphs by [`Graph::fingerprint`]; a hit is confirmed by
    /// [`Graph::same_computation`], so a hash collision only costs a compile.
    cache: DashMap<u64, Vec<Arc<Compiled>>>,
}

impl Cpu {
    pub fn new() -> Cpu {
        Cpu::default()
    }
}

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(e.to_string())
}

/// The memory this process can still allocate without swapping or waking the
/// out-of-memory killer: the system's `MemAvailable`, or less when the process's control
/// group (a container) has a lower limit (cgroup v2 `memory.max` less `memory.current`).
/// `None` where neither can be read.
pub fn memory_available() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        });
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // `memory.max` is "max" when there is no limit, which does not parse.
    let group =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (system, group) {
        (Some(s), Some(g)) => Some(s.min(g)),
        (s, g) => s.or(g),
    }
}

impl Backend for Cpu {
    type Buffer = Buffer;
    type Executable = Executable;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn memory_available(&self) -> Option<u64> {
        memory_available()
    }

    fn compile(&self, g: &Graph) -> Result<Executable, BackendError> {
        let t0 = std::time::Instant::now();
        let key = g.fingerprint();
        let hit = self
            .cache
            .get(&key)
            .and_then(|cs| cs.iter().find(|c| c.graph.same_computation(g)).cloned());
        let compiled = match hit {
            Some(c) => c,
            None => {
                let plan = sched::plan(g, &TARGET).map_err(failed)?;
                // Debug builds (the tests) check every plan they run.
                if cfg!(debug_assertions)
                    && let Err(faults) = sched::verify(g, &plan, &TARGET)
                {
                    debug_assert!(false, "the plan breaks its invariants: {faults:?}");
                    return Err(failed(format!(
                        "internal error: an invalid plan: {faults:?}"
                    )));
                }
                for k in &plan.kernels {
                    let Kernel::Node { node, .. } = k else {
                        continue;
                    };
                    let op = &g.node(*node).op;
                    if !native_runs(op) {
                        return Err(BackendError::Unsupported(
                            op.name().to_string(),
                            "cpu".into(),
                        ));
                    }
                    if matches!(op, Op::Conv2d(w) | Op::Conv2dInputGrad(w) | Op::Conv2dWeightGrad(w) if w.dilation != 1)
                    {
                        return Err(BackendError::Unsupported(
                            format!("{} with dilation", op.name()),
                            "cpu".into(),
                        ));
                    }
                }
                let mut jit = Jit::new().map_err(failed)?;
                for f in &plan.programs {
                    jit.add(f).map_err(failed)?;
                }
                let loops = jit.finish().map_err(failed)?;
                let c = Arc::new(Compiled {
                    plan,
                    pooled: nabla_lang::ir::flops(g) >= POOL_MIN_FLOPS,
                    loops,
                    _jit: Mutex::new(jit),
                    graph: g.clone(),
                });
                self.cache.entry(key).or_default().push(c.clone());
                c
            }
        };
        let arena = memory::zeroed(
            compiled.plan.arena / std::mem::size_of::<f32>(),
            "the step's working memory (its intermediate values)",
            || self.memory_available(),
        )
        .map_err(BackendError::Failed)?;
        Ok(Executable {
            compiled,
            arena,
            compile_seconds: t0.elapsed().as_secs_f64(),
            profile: None,
            tuner: team::Tuner::default(),
        })
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Buffer, BackendError> {
        let mut b = Buffer {
            shape: vec![],
            data: vec![],
        };
        self.write(&mut b, shape, data)?;
        Ok(b)
    }

    fn write(&self, b: &mut Buffer, shape: &[usize], data: &[f32]) -> Result<(), BackendError> {
        nabla_lang::backend::check_upload(shape, data)?;
        b.shape.clear();
        b.shape.extend_from_slice(shape);
        b.data.clear();
        memory::resize(&mut b.data, data.len(), "a tensor", || {
            self.memory_available()
        })
        .map_err(BackendError::Failed)?;
        b.data.copy_from_slice(data);
        Ok(())
    }

    /// Rows are written by the team ([`team`]) in the blocks a product over the batch
    /// splits them into, so each core reads rows already in its cache. Measured on
    /// Fashion-MNIST's linear net, where the batch is gathered from a 188 MB training
    /// set: see docs/performance.md.
    fn write_rows(
        &self,
        b: &mut Buffer,
        shape: &[usize],
        fill: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
    ) -> Result<(), BackendError> {
        let n = memory::numel(shape).unwrap_or(usize::MAX);
        let m = shape.first().copied().unwrap_or(1);
        b.shape.clear();
        b.shape.extend_from_slice(shape);
        memory::resize(&mut b.data, n, "a batch", || self.memory_available())
            .map_err(BackendError::Failed)?;
        let members = if m < 2 || n < WRITE_TEAM_MIN {
            1
        } else {
            team::step(team::size)
        };
        if members == 1 {
            fill(0..m, &mut b.data);
            return Ok(());
        }
        let (per, chunk) = (n / m, team::block(m, members));
        let base = b.data.as_mut_ptr() as usize;
        team::step(|| {
            team::run(m.div_ceil(chunk), &|i| {
                let rows = i * chunk..((i + 1) * chunk).min(m);
                // SAFETY: each part gets its own rows of the buffer, which has m·per values.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        (base as *mut f32).add(rows.start * per),
                        rows.len() * per,
                    )
                };
                fill(rows, out);
            })
        });
        Ok(())
    }

    fn download(&self, b: &Buffer) -> Result<Vec<f32>, BackendError> {
        Ok(b.data.clone())
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
            if *shape != b.shape || b.data.len() != shape.iter().product::<usize>() {
                return Err(BackendError::BadShape(
                    name.clone(),
                    shape.clone(),
                    b.shape.clone(),
                ));
            }
        }
        let ptrs = Pointers(pointers(p, inputs, &mut exe.arena));
        let (profile, compiled) = (&mut exe.profile, &*c);
        let kernels = move || {
            let ptrs = ptrs;
            for (i, k) in p.kernels.iter().enumerate() {
                let t = profile.is_some().then(std::time::Instant::now);
                // SAFETY: the plan gives every value a region of its size; kernels write
                // only their outputs, which overlap no input except as `plan` allows.
                if let Err(e) = unsafe { execute(compiled, k, &ptrs.0) } {
                    return (ptrs, Some(e));
                }
                if let (Some(t), Some(times)) = (t, profile.as_mut()) {
                    times[i] += t.elapsed().as_secs_f64();
                }
            }
            (ptrs, None)
        };
        let (ptrs, failed) = match pool() {
            Some(pool) if c.pooled && rayon::current_thread_index().is_none() => {
                team::rest();
                pool.install(kernels)
            }
            _ => team::tuned_step(&mut exe.tuner, kernels),
        };
        if let Some(e) = failed {
            return Err(BackendError::Failed(e));
        }
        let ptrs = ptrs.0;
        let mut out = Vec::new();
        let mut copies = Vec::new();
        for (o, (v, target)) in p.outputs.iter().enumerate() {
            if p.in_place[o] {
                continue; // already in its input's buffer
            }
            let n = c.graph.node(*v);
            // SAFETY: the value was computed into its region of n.numel() values.
            let data = unsafe { std::slice::from_raw_parts(ptrs[v.index()], n.numel()) }.to_vec();
            match target {
                Some(i) => copies.push((*i, data)),
                None => out.push(Buffer {
                    shape: n.shape.clone(),
                    data,
                }),
            }
        }
        for (i, data) in copies {
            inputs[i].data = data;
        }
        Ok(out)
    }
}

/// The address of every value for this run.
fn pointers(p: &Plan, inputs: &mut [Buffer], arena: &mut [f32]) -> Vec<*mut f32> {
    let base = arena.as_mut_ptr();
    let ins: Vec<*mut f32> = inputs.iter_mut().map(|b| b.data.as_mut_ptr()).collect();
    let mut ptrs = vec![std::ptr::null_mut(); p.root.len()];
    for i in 0..p.root.len() {
        let r = p.root[i].index();
        ptrs[i] = match p.loc[r] {
            Some(Loc::Input(k)) => ins[k],
            // SAFETY: byte offsets are inside the arena and 64-byte aligned by construction
            // of the plan (`TARGET.align`).
            Some(Loc::Arena(off)) => unsafe { base.cast::<u8>().add(off).cast::<f32>() },
            None => std::ptr::null_mut(),
        };
    }
    ptrs
}

/// Runs one kernel; an error only for a state the compiler rules out (an op no kernel
/// runs), reported rather than left as garbage.
///
/// # Safety
/// `ptrs` must come from [`pointers`] for this plan.
unsafe fn execute(c: &Compiled, k: &Kernel, ptrs: &[*mut f32]) -> Result<(), String> {
    let g = &c.graph;
    let numel = |v: ValueId| g.node(v).numel();
    let slice = |v: ValueId| -> &[f32] {
        // SAFETY: every read value is materialized with numel() elements.
        unsafe { std::slice::from_raw_parts(ptrs[v.index()], numel(v)) }
    };
    match k {
        Kernel::Fused { func, args, n } => {
            let f = c.loops[*func];
            let ps: Vec<*mut f32> = args.iter().map(|a| ptrs[a.index()]).collect();
            run_loop(f, &ps, *n);
        }
        Kernel::MatMul {
            a,
            b,
            out,
            ta,
            tb,
            batch,
            m,
            k,
            n,
            update,
        } => {
            let (batch, m, k, n) = (*batch, *m, *k, *n);
            // An update kernel starts from its base's values and accumulates −scale·a·b.
            let scale = match update {
                None => 1.0,
                Some(u) => {
                    let (from, to) = (ptrs[u.base.index()], ptrs[out.index()]);
                    if from != to {
                        // SAFETY: base and out are distinct regions of batch·m·n elements.
                        unsafe { std::ptr::copy_nonoverlapping(from, to, batch * m * n) };
                    }
                    match u.scale {
                        Scale::Const(c) => -c,
                        // SAFETY: a rank-0 value has one element.
                        Scale::Value(v) => -unsafe { *ptrs[v.index()] },
                    }
                }
            };
            // Row-major [.., m, k] (or its transpose [.., k, m] read with swapped strides).
            let am = |p: *const f32| {
                if *ta {
                    kernels::Mat {
                        ptr: p,
                        rs: 1,
                        cs: m as isize,
                    }
                } else {
                    kernels::Mat {
                        ptr: p,
                        rs: k as isize,
                        cs: 1,
                    }
                }
            };
            let bm = |p: *const f32| {
                if *tb {
                    kernels::Mat {
                        ptr: p,
                        rs: 1,
                        cs: k as isize,
                    }
                } else {
                    kernels::Mat {
                        ptr: p,
                        rs: n as isize,
                        cs: 1,
                    }
                }
            };
            // Addresses, so the entries' closure is Sync; each entry writes its own block.
            let (pa, pb, po) = (
                ptrs[a.index()] as usize,
                ptrs[b.index()] as usize,
                ptrs[out.index()] as usize,
            );
            let acc = update.is_some();
            let entry = |bi: usize, threads: bool| {
                // SAFETY: each batch entry lies inside its operand's region.
                unsafe {
                    let pa = (pa as *const f32).add(bi * m * k);
                    let pb = (pb as *const f32).add(bi * k * n);
                    let po = (po as *mut f32).add(bi * m * n);
                    kernels::gemm_scaled(
                        m,
                        n,
                        k,
                        po,
                        n as isize,
                        acc,
                        scale,
                        am(pa),
                        bm(pb),
                        threads,
                    );
                }
            };
            // Entries too small to be split themselves (attention's per-head products,
            // 17×64 by 64×17 in ViT-Ti at 64×64) are shared out instead: a block of
            // entries per team member. An entry's bits do not depend on who computes it.
            // Large steps run on rayon's pool, small ones on the team (see `run`).
            if batch > 1 && kernels::gemm_entry_small(m, n, k) {
                let chunk = batch.div_ceil(team::width());
                let part = |i: usize| {
                    (i * chunk..((i + 1) * chunk).min(batch)).for_each(|bi| entry(bi, false))
                };
                if team::in_step() {
                    team::run_in_step(batch.div_ceil(chunk), &part);
                } else {
                    use rayon::prelude::*;
                    (0..batch.div_ceil(chunk)).into_par_iter().for_each(part);
                }
            } else {
                (0..batch).for_each(|bi| entry(bi, true));
            }
        }
        Kernel::Reduced { nodes, func, args } => {
            // The plan makes a reduced kernel of reductions only, at least one.
            let Some(first) = nodes.first() else {
                debug_assert!(false, "a reduced kernel without reductions");
                return Err("internal error: a reduced kernel without reductions".into());
            };
            let n = g.node(*first);
            let Op::Reduce { op, axes, .. } = &n.op else {
                debug_assert!(false, "a reduced kernel of `{}`", n.op.name());
                return Err(format!(
                    "internal error: a reduced kernel of `{}`",
                    n.op.name()
                ));
            };
            let leaves: Vec<*mut f32> = args.iter().map(|a| ptrs[a.index()]).collect();
            let mut outs: Vec<&mut [f32]> = nodes
                .iter()
                .map(|v| {
                    // SAFETY: each output region has numel() elements, overlapping no leaf
                    // and no other output.
                    unsafe { std::slice::from_raw_parts_mut(ptrs[v.index()], g.node(*v).numel()) }
                })
                .collect();
            let shape = &g.node(n.args[0]).shape;
            kernels::reduce_from(
                &kernels::Source::Loop(c.loops[*func], &leaves, nodes.len()),
                shape,
                axes,
                *op,
                &mut outs,
            );
        }
        Kernel::Node { node, args } => {
            let n = g.node(*node);
            // SAFETY: the output region has numel() elements and overlaps no argument.
            let out = unsafe { std::slice::from_raw_parts_mut(ptrs[node.index()], n.numel()) };
            let a = |i: usize| slice(args[i]);
            let sh = |i: usize| &g.node(args[i]).shape;
            native(n, &a, &sh, out)?;
        }
    }
    Ok(())
}

/// Calls a fused loop over `0..n`, split over threads when large (chunks are multiples
/// of 4 so the vector loop's lanes stay aligned with broadcast patterns).
fn run_loop(f: LoopFn, ps: &[*mut f32], n: usize) {
    const CHUNK: usize = 1 << 14;
    let ptr = ps.as_ptr() as usize;
    let call = |s: usize, e: usize| {
        // SAFETY: the loop reads and writes its pointers' regions over s..e only.
        unsafe { f(ptr as *const *mut f32, s, e) }
    };
    if n <= 2 * CHUNK {
        call(0, n);
    } else {
        use rayon::prelude::*;
        let parts = n.div_ceil(CHUNK);
        (0..parts)
            .into_par_iter()
            .for_each(|i| call(i * CHUNK, ((i + 1) * CHUNK).min(n)));
    }
}

/// Whether [`native`] has a kernel for `op` (elementwise ops and aliases are fused or
/// renamed by the plan and never reach it).
fn native_runs(op: &Op) -> bool {
    use nabla_lang::ir::ops::Class;
    !matches!(
        op.row().class,
        Class::Input | Class::Elementwise | Class::Alias
    )
}

/// The Rust kernel of one non-elementwise node (one for which [`native_runs`] holds;
/// `compile` refuses graphs that would need another).
fn native<'a>(
    n: &nabla_lang::ir::Node,
    a: &dyn Fn(usize) -> &'a [f32],
    sh: &dyn Fn(usize) -> &'a Vec<usize>,
    out: &mut [f32],
) -> Result<(), String> {
    use copy::*;
    use kernels::*;
    match &n.op {
        Op::Const(c) => out.fill(*c as f32),
        Op::Reduce { op, axes, .. } => reduce(a(0), sh(0), axes, *op, out),
        Op::ArgMax { axis } => argmax(a(0), sh(0), *axis, out),
        Op::Transpose { perm } => transpose(a(0), sh(0), perm, out),
        Op::Broadcast => broadcast(a(0), sh(0), &n.shape, out),
        Op::Slice { axis, start, .. }
        | Op::Pad {
            axis,
            before: start,
            ..
        } => {
            let xs = sh(0);
            let outer: usize = xs[..*axis].iter().product();
            let inner: usize = xs[axis + 1..].iter().product();
            let take = matches!(n.op, Op::Slice { .. });
            if !take {
                out.fill(0.0);
            }
            along_axis(
                a(0),
                outer,
                inner,
                xs[*axis],
                n.shape[*axis],
                *start,
                take,
                out,
            );
        }
        Op::Concat { axis } => {
            let outer: usize = n.shape[..*axis].iter().product();
            let inner: usize = n.shape[axis + 1..].iter().product();
            let mut at = 0;
            let mut i = 0;
            while at < n.shape[*axis] {
                let xn = sh(i)[*axis];
                along_axis(a(i), outer, inner, xn, n.shape[*axis], at, false, out);
                at += xn;
                i += 1;
            }
        }
        Op::Gather => gather(a(0), sh(0)[1], a(1), out),
        Op::OneHot { classes } => one_hot(a(0), *classes, out),
        Op::Conv2d(w) => conv2d(&ConvShape::new(sh(0), sh(1), &n.shape, *w), a(0), a(1), out),
        Op::Conv2dInputGrad(w) => {
            conv2d_input_grad(&ConvShape::new(&n.shape, sh(1), sh(0), *w), a(0), a(1), out)
        }
        Op::Conv2dWeightGrad(w) => {
            conv2d_weight_grad(&ConvShape::new(sh(0), &n.shape, sh(1), *w), a(0), a(1), out)
        }
        Op::MaxPool2d(w) | Op::AvgPool2d(w) => {
            let s = sh(0);
            let ps = PoolShape {
                planes: s[0] * s[1],
                h: s[2],
                w: s[3],
                oh: n.shape[2],
                ow: n.shape[3],
                win: *w,
            };
            pool(&ps, a(0), out, matches!(n.op, Op::MaxPool2d(_)));
        }
        Op::MaxPool2dGrad(w) => {
            let s = sh(0);
            let ps = PoolShape {
                planes: s[0] * s[1],
                h: s[2],
                w: s[3],
                oh: sh(1)[2],
                ow: sh(1)[3],
                win: *w,
            };
            max_pool_grad(&ps, a(0), a(1), out);
        }
        Op::AvgPool2dGrad(w) => {
            let ps = PoolShape {
                planes: n.shape[0] * n.shape[1],
                h: n.shape[2],
                w: n.shape[3],
                oh: sh(0)[2],
                ow: sh(0)[3],
                win: *w,
            };
            avg_pool_grad(&ps, a(0), out);
        }
        Op::RandomUniform { seed } => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = nabla_lang::interp::uniform(*seed, i as u64) as f32;
            }
        }
        // Refused by `compile` (see `native_runs`): impossible here.
        op => {
            debug_assert!(false, "no kernel runs `{}`", op.name());
            return Err(format!(
                "internal error: the cpu backend has no kernel for `{}`",
                op.name()
            ));
        }
    }
    Ok(())
}
