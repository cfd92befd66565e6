//! `nabla bench`: builds a net's train step, compiles it for the CPU backend and times it
//! on random data — build and compile time, the median step over many steps after a
//! warm-up, achieved GFLOP/s, the memory plan and the process's peak memory.

use nabla_lang::opt::precision::Products;
use std::time::Instant;

use nabla_jit::{Buffer, Cpu};
use nabla_lang::backend::Backend;
use nabla_lang::check::Checked;
use nabla_lang::step::{Optimizer, train_step};

/// The optimizers `nabla bench` compiles into the step.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

/// The precision of the step's products (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum PrecisionArg {
    F32,
    Bf16,
}

impl PrecisionArg {
    fn products(self) -> Products {
        match self {
            PrecisionArg::F32 => Products::F32,
            PrecisionArg::Bf16 => Products::Bf16,
        }
    }
}

/// What to time.
pub struct BenchOptions<'a> {
    pub net: &'a str,
    pub batch: usize,
    pub optimizer: OptimizerArg,
    pub precision: PrecisionArg,
    pub steps: usize,
    pub input: Option<&'a [usize]>,
    /// Time every kernel too (in separate runs after the timed ones, since timing each
    /// kernel adds a little to every step).
    pub profile: bool,
}

/// The process's peak resident memory in bytes (Linux), if known.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Runs the benchmark and prints its report; `started` is when the process began.
pub fn bench(checked: &Checked, o: &BenchOptions, started: Instant) -> Result<(), crate::Failure> {
    let opt = match o.optimizer {
        OptimizerArg::Sgd => Optimizer::sgd(),
        OptimizerArg::Adam => Optimizer::adam(),
    };
    let t0 = Instant::now();
    let step = train_step(
        &checked.program,
        o.net,
        o.batch,
        "softmax_cross_entropy",
        &opt,
        o.input,
    )
    .and_then(|s| s.with_products(o.precision.products()))
    .map_err(|d| crate::rendered(checked, &d))?;
    let build = t0.elapsed().as_secs_f64();
    let cpu = Cpu::new();
    let t1 = Instant::now();
    let mut exe = cpu.compile(&step.graph).map_err(|e| e.to_string())?;
    let compile = t1.elapsed().as_secs_f64();
    let g = &step.graph;
    let host = nabla_lang::gradcheck::random_inputs(g, 1, 10);
    let scalars = opt.scalars(0.01, 1);
    let mut bufs: Vec<Buffer> = Vec::new();
    for (v, name, _) in g.inputs() {
        let shape = g.node(v).shape.clone();
        let data: Vec<f32> = match scalars.iter().find(|(n, _)| *n == name) {
            Some((_, x)) => vec![*x as f32],
            None if step.slots.iter().any(|s| s == name) => vec![0.0; shape.iter().product()],
            None => host
                .get(name)
                .map(|t| t.data.iter().map(|x| *x as f32).collect())
                .unwrap_or_default(),
        };
        bufs.push(cpu.upload(&shape, &data).map_err(|e| e.to_string())?);
    }
    // Parameters move with every step; the loss is read back every step, as training does.
    let mut first = None;
    let mut times = Vec::new();
    let warmup = 5;
    for i in 0..warmup + o.steps {
        let t = Instant::now();
        let out = cpu.run(&mut exe, &mut bufs).map_err(|e| e.to_string())?;
        let loss = out
            .first()
            .and_then(|b| b.data.first())
            .copied()
            .unwrap_or(f32::NAN);
        let dt = t.elapsed().as_secs_f64();
        if i == 0 {
            first = Some((started.elapsed().as_secs_f64(), loss));
        }
        if i >= warmup {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = nabla_lang::ir::flops(g) as f64;
    let state: u64 = bufs.iter().map(|b| b.data.len() as u64 * 4).sum();
    let params: usize = step.params.len();
    println!(
        "net {} · batch {} · {} · {} products · {} kernels ({} fused loops)",
        o.net,
        o.batch,
        format!("{:?}", o.optimizer).to_lowercase(),
        o.precision.products().name(),
        exe.compiled.plan.kernels.len(),
        exe.compiled.plan.programs.len()
    );
    println!("build (lower + AD + optimize): {:.1} ms", build * 1e3);
    println!("compile (plan + Cranelift):    {:.1} ms", compile * 1e3);
    if let Some((t, loss)) = first {
        println!("process start to first step:   {:.3} s (loss {loss:.4})", t);
    }
    println!(
        "step: median {:.3} ms over {} steps (min {:.3}, max {:.3}) · {} per step · {:.1} GFLOP/s",
        median * 1e3,
        times.len(),
        times[0] * 1e3,
        times[times.len() - 1] * 1e3,
        flop_count(flops),
        flops / median / 1e9
    );
    println!(
        "memory: plan arena {:.1} MiB · parameters, state and batch {:.1} MiB ({params} parameter tensors) · process peak {}",
        mib(exe.arena_bytes() as u64),
        mib(state),
        peak_rss().map_or("unknown".to_string(), |b| format!("{:.1} MiB", mib(b)))
    );
    if o.profile {
        print_profile(&cpu, &mut exe, &mut bufs, o.steps, median)?;
    }
    // One line for scripts (bench/run.py reads it).
    println!(
        "json {{\"median_ms\": {:.4}, \"compile_ms\": {:.2}, \"gflops\": {:.2}, \"peak_mib\": {:.1}, \"arena_mib\": {:.1}}}",
        median * 1e3,
        compile * 1e3,
        flops / median / 1e9,
        peak_rss().map_or(0.0, mib),
        mib(exe.arena_bytes() as u64)
    );
    Ok(())
}

/// The benchmark on another backend (a GPU, or the interpreter): the same step and data;
/// steps are queued without waiting and the loss is read back once at the end, as
/// training reads it only when it prints, so the figure is the device's throughput.
pub fn bench_device<B: Backend>(
    checked: &Checked,
    o: &BenchOptions,
    b: &B,
) -> Result<(), crate::Failure> {
    let opt = match o.optimizer {
        OptimizerArg::Sgd => Optimizer::sgd(),
        OptimizerArg::Adam => Optimizer::adam(),
    };
    let step = train_step(
        &checked.program,
        o.net,
        o.batch,
        "softmax_cross_entropy",
        &opt,
        o.input,
    )
    .and_then(|s| s.with_products(o.precision.products()))
    .map_err(|d| crate::rendered(checked, &d))?;
    let t1 = Instant::now();
    let mut exe = b.compile(&step.graph).map_err(|e| e.to_string())?;
    let compile = t1.elapsed().as_secs_f64();
    let g = &step.graph;
    let host = nabla_lang::gradcheck::random_inputs(g, 1, 10);
    let scalars = opt.scalars(0.01, 1);
    let mut bufs = Vec::new();
    let mut state = 0u64;
    for (v, name, _) in g.inputs() {
        let shape = g.node(v).shape.clone();
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match scalars.iter().find(|(n, _)| *n == name) {
            Some((_, x)) => vec![*x as f32],
            None if step.slots.iter().any(|s| s == name) => vec![0.0; n],
            None => host
                .get(name)
                .map(|t| t.data.iter().map(|x| *x as f32).collect())
                .unwrap_or_default(),
        };
        state += n as u64 * 4;
        bufs.push(b.upload(&shape, &data).map_err(|e| e.to_string())?);
    }
    let read_loss = |out: &[B::Buffer]| -> Result<f32, String> {
        match out.first() {
            Some(l) => Ok(b
                .download(l)
                .map_err(|e| e.to_string())?
                .first()
                .copied()
                .unwrap_or(f32::NAN)),
            None => Ok(f32::NAN),
        }
    };
    // Warm up (the first run compiles every kernel), waiting for each.
    let t = Instant::now();
    let first = b.run(&mut exe, &mut bufs).map_err(|e| e.to_string())?;
    let first_loss = read_loss(&first)?;
    let first_step = t.elapsed().as_secs_f64();
    for _ in 0..2 {
        let out = b.run(&mut exe, &mut bufs).map_err(|e| e.to_string())?;
        read_loss(&out)?;
    }
    let t = Instant::now();
    let mut last = Vec::new();
    for _ in 0..o.steps {
        last = b.run(&mut exe, &mut bufs).map_err(|e| e.to_string())?;
    }
    let loss = read_loss(&last)?;
    let total = t.elapsed().as_secs_f64();
    let per = total / o.steps as f64;
    let flops = nabla_lang::ir::flops(g) as f64;
    println!(
        "net {} · batch {} · {} · {} products · {}",
        o.net,
        o.batch,
        format!("{:?}", o.optimizer).to_lowercase(),
        o.precision.products().name(),
        b.describe()
    );
    println!(
        "compile (plan + kernels):      {:.1} ms; the first step (compiling every kernel) {:.3} s, loss {first_loss:.4}",
        compile * 1e3,
        first_step
    );
    println!(
        "steps: {} in {:.3} s · {:.2} steps/s · {:.3} ms per step · {} per step · {:.2} GFLOP/s · loss {loss:.4}",
        o.steps,
        total,
        1.0 / per,
        per * 1e3,
        flop_count(flops),
        flops / per / 1e9
    );
    println!(
        "device memory: parameters, state and batch {:.1} MiB · in use {}",
        mib(state),
        b.memory_in_use()
            .map_or("unknown".to_string(), |m| format!("{:.1} MiB", mib(m)))
    );
    println!(
        "json {{\"ms_per_step\": {:.4}, \"compile_ms\": {:.2}, \"gflops\": {:.2}, \"flops\": {flops:.0}, \"steps_per_s\": {:.3}, \"device_mib\": {}}}",
        per * 1e3,
        compile * 1e3,
        flops / per / 1e9,
        1.0 / per,
        b.memory_in_use()
            .map_or("null".to_string(), |m| format!("{:.1}", mib(m)))
    );
    Ok(())
}

/// Runs `steps` more steps timing every kernel, and prints the kernels that take the most
/// time, grouped by what they compute, with their share of the step.
fn print_profile(
    cpu: &Cpu,
    exe: &mut nabla_jit::Executable,
    bufs: &mut [Buffer],
    steps: usize,
    median: f64,
) -> Result<(), String> {
    exe.start_profile();
    for _ in 0..steps {
        cpu.run(exe, bufs).map_err(|e| e.to_string())?;
    }
    let profile = exe.profile();
    // Kernels computing the same thing are summed, and so are kernels of one class.
    let sum = |key: &dyn Fn(&nabla_jit::KernelTime) -> String| {
        let mut groups: Vec<(String, f64, usize)> = Vec::new();
        for k in &profile {
            let name = key(k);
            match groups.iter_mut().find(|g| g.0 == name) {
                Some(g) => {
                    g.1 += k.seconds;
                    g.2 += 1;
                }
                None => groups.push((name, k.seconds, 1)),
            }
        }
        groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        groups
    };
    let classes = sum(&|k| k.class.clone());
    let groups = sum(&|k| k.what.clone());
    let total: f64 = groups.iter().map(|g| g.1).sum();
    println!(
        "profile: {:.3} ms per step in kernels ({:.0}% of the median step); by class:",
        total / steps as f64 * 1e3,
        total / steps as f64 / median * 100.0
    );
    for (class, t, n) in &classes {
        println!(
            "  {:>8.3} ms {:>5.1}%  {class} ({n} kernels)",
            t / steps as f64 * 1e3,
            t / total * 100.0
        );
    }
    println!("the 25 largest:");
    for (what, t, n) in groups.iter().take(25) {
        let times = if *n > 1 {
            format!(" ×{n}")
        } else {
            String::new()
        };
        println!(
            "  {:>8.3} ms {:>5.1}%  {what}{times}",
            t / steps as f64 * 1e3,
            t / total * 100.0
        );
    }
    Ok(())
}

/// A flop count in the unit that shows it with three figures or so: "4.01 MFLOP".
fn flop_count(flops: f64) -> String {
    if flops >= 1e9 {
        format!("{:.2} GFLOP", flops / 1e9)
    } else {
        format!("{:.2} MFLOP", flops / 1e6)
    }
}
