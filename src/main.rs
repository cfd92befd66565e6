//! `nabla`: the command-line shell over the crates. It reads files, calls `nabla-lang`,
//! and prints; it holds no compiler logic.

mod bench;
mod conformance;
mod devices;
mod onnx;
mod predict;
mod repl;
mod run;
mod signals;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nabla_lang::check::{Checked, check_files};
use nabla_lang::diag;
use nabla_stdlib::FileLoader;

#[derive(Parser)]
#[command(
    name = "nabla",
    version,
    about = "A typed language for neural-network specs and derivative rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An interactive session: definitions and host code, compiled input by input.
    Repl {
        /// A directory of full datasets (default: $NABLA_DATA).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Run a program: check it, compile its host code with Cranelift and run it (training
    /// runs on the chosen device).
    Run {
        file: PathBuf,
        /// Where tensor code runs.
        #[arg(long, value_enum, default_value_t = run::Device::Cpu)]
        device: run::Device,
        /// A directory of full datasets (default: $NABLA_DATA; without either, `mnist()`
        /// is the bundled 10,000-digit subset).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Format `.net` files in place (directories: every `.net` file under them).
    Fmt {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Change nothing; list the files that are not formatted and exit 1 if any.
        #[arg(long)]
        check: bool,
    },
    /// The language server, over stdin and stdout (for editors).
    Lsp,
    /// Parse, resolve and shape-check files; exit 1 on errors.
    Check {
        /// The `.net` files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per diagnostic, one per line.
        #[arg(long)]
        json: bool,
    },
    /// The tensor IR of a net's forward pass (and loss), lowered for a batch size.
    Ir {
        file: PathBuf,
        /// The net (default: the file's only net).
        net: Option<String>,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Lower the evaluation graph (running statistics, no dropout).
        #[arg(long)]
        eval: bool,
        /// Also lower this loss on integer labels `y` (e.g. softmax_cross_entropy).
        #[arg(long)]
        loss: Option<String>,
    },
    /// The derived backward pass of a net (with its loss), simplified, as nabla source.
    Vjp {
        file: PathBuf,
        /// The net (default: the file's only net).
        net: Option<String>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value = "softmax_cross_entropy")]
        loss: String,
        /// Print the IR instead of source.
        #[arg(long)]
        ir: bool,
    },
    /// Central finite differences in f64 against the derived gradients: every derivative
    /// rule, then the file's nets (batch 2); prints the worst relative error of each.
    Gradcheck {
        file: PathBuf,
        /// Only this net or rule.
        name: Option<String>,
        /// Per-example input shape for the nets (e.g. 3,32,32), for a smaller instance.
        #[arg(long, value_delimiter = ',')]
        input: Option<Vec<usize>>,
        #[arg(long, default_value = "softmax_cross_entropy")]
        loss: String,
        /// Check only this many parameter tensors per net, evenly spaced through the net
        /// (first and last included): for nets too large to check every tensor.
        #[arg(long)]
        tensors: Option<usize>,
        /// Check only these parameter tensors of the nets (module names, e.g.
        /// `layer1.0.bn1.bias`; repeatable).
        #[arg(long)]
        param: Vec<String>,
        /// Examples per batch of the nets' instances. Batchnorm over few values per
        /// channel is ill-conditioned for finite differences: deep nets at small images
        /// want 4 or more.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Instead of finite differences: run each net's forward and derived gradients on
        /// this device and compare them with the f64 interpreter (the conformance suite's
        /// bar, 1e-4 normwise).
        #[arg(long, value_enum)]
        device: Option<run::Device>,
    },
    /// Compile a net's train step for the CPU and time it on random data: compile time,
    /// median step time, GFLOP/s, memory.
    Bench {
        file: PathBuf,
        /// The net (default: the file's only or first net).
        net: Option<String>,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, value_enum, default_value_t = bench::OptimizerArg::Sgd)]
        optimizer: bench::OptimizerArg,
        /// The precision of matmuls and convolutions (bf16: operands rounded to bfloat16,
        /// f32 accumulation).
        #[arg(long, value_enum, default_value_t = bench::PrecisionArg::F32)]
        precision: bench::PrecisionArg,
        /// Timed steps (after 5 warm-up steps).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Per-example input shape (e.g. 3,64,64), for a smaller instance.
        #[arg(long, value_delimiter = ',')]
        input: Option<Vec<usize>>,
        /// Also time every kernel of the step and print where the time goes (cpu).
        #[arg(long)]
        profile: bool,
        /// Where the step runs.
        #[arg(long, value_enum, default_value_t = run::Device::Cpu)]
        device: run::Device,
    },
    /// The devices this build can run on: the GPU adapters found, and which backends
    /// this build has.
    Devices,
    /// A trained model's top classes for images (PNG, JPEG): the net's parameters from a
    /// checkpoint (`--params`), each image converted to the net's channels and resized
    /// to its input, normalized as in training.
    Predict {
        file: PathBuf,
        /// `[NET] IMAGE...`: the net (when the file has several; a name of one of its
        /// nets), then the images.
        #[arg(value_name = "[NET] IMAGE", required = true)]
        args: Vec<String>,
        /// A checkpoint of the net (safetensors, as `save` or `checkpoint` write it).
        #[arg(long)]
        params: PathBuf,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 3)]
        top: usize,
        #[arg(long, value_enum, default_value_t = run::Device::Cpu)]
        device: run::Device,
    },
    /// Write a net's eval-mode forward pass, with a checkpoint's weights, as an ONNX model
    /// (opset 17, batch dimension symbolic).
    Export {
        file: PathBuf,
        /// The net (default: the file's only net).
        net: Option<String>,
        /// A checkpoint of the net (safetensors, as `save` or `checkpoint` write it, or a
        /// PyTorch state dict with the same names).
        #[arg(long)]
        params: PathBuf,
        /// Where to write the model.
        #[arg(short, long)]
        output: PathBuf,
        /// Another per-example input shape, `C,H,W` (where the net's layers allow it):
        /// the model is exported for that size.
        #[arg(long, value_delimiter = ',')]
        input: Option<Vec<usize>>,
    },
    /// Run the conformance suite on a device against the f64 interpreter: every op
    /// forward and backward, the nine example nets, train steps with every optimizer,
    /// bf16 rounding and bf16 products (the example nets are built in).
    Conformance {
        #[arg(long, value_enum, default_value_t = run::Device::Cpu)]
        device: run::Device,
        /// Only the cases whose name contains this (`op `, `net `, `step `, `bf16`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Per-stage output shapes and parameter counts of a file's nets, then totals.
    Info {
        file: PathBuf,
        /// Only this net (default: every net in the file).
        net: Option<String>,
        /// List the model's parameter and state names with their shapes (its state dict's
        /// keys, as PyTorch names them) instead of the stages.
        #[arg(long)]
        keys: bool,
    },
}

fn read_roots(files: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| (f.display().to_string(), t))
                .map_err(|e| format!("cannot read {}: {e}", f.display()))
        })
        .collect()
}

fn print_diagnostics(checked: &Checked, json: bool) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for d in &checked.diagnostics {
        if json {
            println!("{}", diag::to_json(d, &checked.program.sources));
        } else {
            eprint!("{}", diag::render(d, &checked.program.sources, color));
        }
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn info(checked: &Checked, only: Option<&str>, keys: bool) -> Result<(), String> {
    let nets: Vec<_> = checked
        .nets
        .iter()
        .filter(|n| only.is_none_or(|o| o == n.name))
        .collect();
    if nets.is_empty() {
        return Err(match only {
            Some(o) => format!(
                "no net named `{o}` in this file (nets: {})",
                checked
                    .nets
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "this file defines no net".into(),
        });
    }
    for net in nets {
        if keys {
            // One `name shape kind` line per tensor, for scripts and for comparing with a
            // PyTorch module's `state_dict()`.
            for (kind, list) in [("param", &net.param_names), ("state", &net.state_names)] {
                for (name, shape) in list {
                    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
                    println!("{name} [{}] {kind}", dims.join(", "));
                }
            }
            continue;
        }
        println!("net {}: {} -> {}", net.name, net.input, net.output);
        let text = checked.program.sources.text(net.span.file);
        let width = net
            .stages
            .iter()
            .map(|s| stage_text(text, s.span).chars().count())
            .max()
            .unwrap_or(10)
            .clamp(10, 48);
        println!(
            "  {:<width$}  {:<26} {:>12} {:>15}",
            "stage", "output", "params", "mult-adds"
        );
        for s in &net.stages {
            let t: String = stage_text(text, s.span).chars().take(48).collect();
            println!(
                "  {:<width$}  {:<26} {:>12} {:>15}",
                t,
                s.output,
                group(s.params),
                group(s.macs)
            );
        }
        println!(
            "  total: {} parameters, {} multiply-adds per example",
            group(net.params),
            group(net.macs)
        );
        if net.state > 0 {
            println!(
                "  state: {} values (batchnorm running statistics)",
                group(net.state)
            );
        }
        println!();
    }
    Ok(())
}

fn stage_text(text: &str, span: nabla_lang::Span) -> String {
    text.get(span.start..span.end)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks one file, printing its diagnostics; `None` (after printing) when it has errors.
fn check_one(file: &Path) -> Option<Checked> {
    let roots = match read_roots(&[file.to_path_buf()]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return None;
        }
    };
    let checked = check_files(&roots, &FileLoader::disk());
    print_diagnostics(&checked, false);
    (!checked.has_errors()).then_some(checked)
}

fn pick_net(checked: &Checked, net: Option<String>) -> Result<String, String> {
    match net {
        Some(n) => Ok(n),
        None => match checked.nets.as_slice() {
            [one] => Ok(one.name.clone()),
            [] => Err("this file defines no net".into()),
            many => Err(format!(
                "name a net: {}",
                many.iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    }
}

fn param_names(g: &nabla_lang::ir::Graph, vs: &[nabla_lang::ir::ValueId]) -> Vec<String> {
    vs.iter()
        .filter_map(|v| g.input_name(*v).map(str::to_string))
        .collect()
}

/// A diagnostic rendered for stderr.
pub(crate) fn render_diag(checked: &Checked, d: &nabla_lang::Diagnostic) -> String {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    diag::render(d, &checked.program.sources, color)
}

/// An AD error, rendered as a diagnostic with its source span when it has one.
fn render_ad(checked: &Checked, e: &nabla_lang::ad::AdError) -> Failure {
    rendered(checked, &e.to_diagnostic())
}

/// Why a command failed, as the CLI reports it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Diagnostics already rendered against their sources: printed as they are.
    Rendered(String),
    /// A plain message: printed as `error: ...`.
    Message(String),
}

/// The text alone (a rendered diagnostic, or the message without `error:`).
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::Rendered(text) | Failure::Message(text) => f.write_str(text),
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Failure {
        Failure::Message(m)
    }
}

impl From<&str> for Failure {
    fn from(m: &str) -> Failure {
        Failure::Message(m.to_string())
    }
}

/// A diagnostic as a failure, rendered against the checked sources.
pub(crate) fn rendered(checked: &Checked, d: &nabla_lang::Diagnostic) -> Failure {
    Failure::Rendered(render_diag(checked, d))
}

/// Prints why a command failed.
pub(crate) fn print_error(e: &Failure) {
    match e {
        Failure::Rendered(text) => eprint!("{text}"),
        Failure::Message(m) => eprintln!("error: {m}"),
    }
}

/// The VJP of a tensor function at a small instance: gradients of `sum(y * r)`, i.e.
/// the pullback of the cotangent `r`.
fn vjp_fn(checked: &Checked, name: &str, ir: bool) -> Result<String, Failure> {
    let p = &checked.program;
    let fid = p
        .lookup(0, name)
        .filter(|id| {
            matches!(
                p.items[*id].kind,
                nabla_lang::check::DefKind::Fn | nabla_lang::check::DefKind::ExternFn
            )
        })
        .ok_or_else(|| format!("no net or function `{name}`"))?;
    let i = nabla_lang::gradcheck::call_instance(p, fid)?;
    let mut g =
        nabla_lang::ad::grad(p, &i.graph, i.loss, &i.wrt).map_err(|e| render_ad(checked, &e))?;
    g.outputs
        .retain(|(n, _)| nabla_lang::ad::gradient_of(n).is_some());
    let g = nabla_lang::opt::optimize(&g);
    if ir {
        return Ok(nabla_lang::ir::print_graph(&g));
    }
    let shapes: Vec<String> = i
        .names
        .iter()
        .filter_map(|n| {
            g.inputs()
                .find(|(_, m, _)| m == n)
                .map(|(v, _, _)| format!("{n}: {:?}", g.node(v).shape))
        })
        .collect();
    let head = format!(
        "// vjp of `{name}` at {}; r = the cotangent of its result\n",
        shapes.join(", ")
    );
    Ok(head
        + &nabla_lang::ir::print_source(&g, &|n| nabla_lang::ad::gradient_of(n).is_some())
            .replace("grad.", "d"))
}

fn vjp(
    checked: &Checked,
    net: Option<String>,
    batch: usize,
    loss: &str,
    ir: bool,
) -> Result<String, Failure> {
    use nabla_lang::ir::{InputKind, Mode};
    if let Some(name) = net.as_deref() {
        if !checked.nets.iter().any(|n| n.name == name) {
            return vjp_fn(checked, name, ir);
        }
    }
    let net = pick_net(checked, net)?;
    let l = nabla_lang::check::lower::lower_net(
        &checked.program,
        0,
        &net,
        batch,
        Mode::Train,
        Some(loss),
    )
    .map_err(|d| rendered(checked, &d))?;
    let lv = l.loss.ok_or("no loss")?;
    let params = nabla_lang::ad::inputs_of(&l.graph, InputKind::Param);
    let mut g = nabla_lang::ad::grad(&checked.program, &l.graph, lv, &params)
        .map_err(|e| render_ad(checked, &e))?;
    g.outputs
        .retain(|(n, _)| nabla_lang::ad::gradient_of(n).is_some());
    let g = nabla_lang::opt::optimize(&g);
    if ir {
        return Ok(nabla_lang::ir::print_graph(&g));
    }
    let head = format!(
        "// d {loss} / d parameters of {net}, batch {batch}; z = logits, y = labels
"
    );
    Ok(head
        + &nabla_lang::ir::print_source(&g, &|n| nabla_lang::ad::gradient_of(n).is_some())
            .replace("grad.", "d "))
}

/// What `nabla gradcheck` checks, besides the file.
struct GradcheckOptions<'a> {
    name: Option<&'a str>,
    input: Option<&'a [usize]>,
    loss: &'a str,
    tensors: Option<usize>,
    params: &'a [String],
    batch: usize,
}

fn gradcheck(checked: &Checked, o: &GradcheckOptions) -> ExitCode {
    let GradcheckOptions {
        name,
        input,
        loss,
        tensors,
        params: only,
        batch,
    } = *o;
    use nabla_lang::ir::{InputKind, Mode};
    let mut worst_all = 0.0f64;
    let mut failed = false;
    let mut inconclusive = 0;
    let is_net = name.is_some_and(|n| checked.nets.iter().any(|x| x.name == n));
    if !is_net {
        for f in nabla_lang::gradcheck::check_rules(&checked.program, name) {
            match f.result {
                Ok(items) => {
                    let worst = items.iter().map(|i| i.worst).fold(0.0, f64::max);
                    worst_all = worst_all.max(worst);
                    println!("rule {:<24} worst relative error {worst:.2e}", f.rule);
                }
                Err(e) if e == nabla_lang::gradcheck::NOT_DIFFERENTIATED => {
                    println!("rule {:<24} {e}", f.rule)
                }
                Err(e) => {
                    failed = true;
                    println!("rule {:<24} error: {e}", f.rule);
                }
            }
        }
    }
    for net in checked
        .nets
        .iter()
        .filter(|n| name.is_none() || name == Some(n.name.as_str()))
    {
        let at = input
            .map(|s| format!(" at input {s:?}"))
            .unwrap_or_default();
        type Found = (
            Vec<nabla_lang::gradcheck::Finding>,
            Vec<nabla_lang::gradcheck::FewValues>,
        );
        let result = (|| -> Result<Found, Failure> {
            let l = nabla_lang::check::lower::lower_net_at(
                &checked.program,
                0,
                &net.name,
                batch,
                Mode::Train,
                Some(loss),
                input,
            )
            .map_err(|d| rendered(checked, &d))?;
            let lv = l.loss.ok_or("no loss")?;
            let params = nabla_lang::ad::inputs_of(&l.graph, InputKind::Param);
            let g = nabla_lang::ad::grad(&checked.program, &l.graph, lv, &params)
                .map_err(|e| render_ad(checked, &e))?;
            let names = param_names(&l.graph, &params);
            let total = names.len();
            if let Some(missing) = only.iter().find(|n| !names.contains(n)) {
                return Err(Failure::Message(format!(
                    "net `{}` has no parameter tensor `{missing}`",
                    net.name
                )));
            }
            let mut chosen: Vec<String> = names
                .iter()
                .filter(|n| only.is_empty() || only.contains(n))
                .cloned()
                .collect();
            if let Some(k) = tensors.filter(|k| *k >= 2 && *k < chosen.len()) {
                let n = chosen.len();
                chosen = (0..k)
                    .map(|i| chosen[i * (n - 1) / (k - 1)].clone())
                    .collect();
            }
            println!(
                "net  {} (batch {batch}{at}): {} of {total} parameter tensors",
                net.name,
                chosen.len()
            );
            nabla_lang::interp::fits(&g, nabla_jit::memory_available())
                .map_err(|e| e.to_string())?;
            let inputs = nabla_lang::gradcheck::random_inputs(&l.graph, 7, 10);
            let mut report = |i: &nabla_lang::gradcheck::Finding| {
                let note = if i.inconclusive() {
                    "  inconclusive at this instance"
                } else {
                    ""
                };
                println!("       {:<30} {:.2e}{note}", i.input, i.worst);
                let _ = std::io::Write::flush(&mut std::io::stdout());
            };
            let wanted = |n: &str| chosen.iter().any(|c| c == n);
            nabla_lang::gradcheck::check_each(
                &l.graph,
                lv,
                &g,
                &names,
                &inputs,
                2,
                11,
                &wanted,
                &mut report,
            )
            .map(|items| {
                (
                    items,
                    nabla_lang::gradcheck::few_value_normalizations(&l.graph),
                )
            })
            .map_err(|e| Failure::Message(e.to_string()))
        })();
        match result {
            Ok((items, few)) => {
                // An inconclusive check is no verdict on the gradient: it does not count
                // towards the worst error, and the instance is named as degenerate.
                let decided: Vec<_> = items.iter().filter(|i| !i.inconclusive()).collect();
                let worst = decided.iter().map(|i| i.worst).fold(0.0, f64::max);
                worst_all = worst_all.max(worst);
                let at = decided
                    .iter()
                    .find(|i| i.worst == worst && worst > 0.0)
                    .map(|i| format!(" ({})", i.input))
                    .unwrap_or_default();
                println!("net  {:<24} worst relative error {worst:.2e}{at}", net.name);
                let undecided: Vec<&str> = items
                    .iter()
                    .filter(|i| i.inconclusive())
                    .map(|i| i.input.as_str())
                    .collect();
                if !undecided.is_empty() {
                    inconclusive += undecided.len();
                    println!(
                        "net  {:<24} inconclusive for {}: finite differences cannot judge them at this instance (not a failed gradient)",
                        net.name,
                        undecided.join(", ")
                    );
                    println!("     {}", degenerate_hint(&few, batch, input));
                }
            }
            Err(e) => {
                failed = true;
                println!("net  {:<24} error: {e}", net.name);
            }
        }
    }
    let bar = nabla_lang::gradcheck::BAR;
    let undecided = if inconclusive > 0 {
        format!("; {inconclusive} tensors inconclusive (a degenerate instance)")
    } else {
        String::new()
    };
    println!("worst relative error: {worst_all:.2e} (bar: {bar:.0e}){undecided}");
    // 1: a gradient disagrees (or something failed); 2: nothing disagreed, but some
    // tensors could not be checked at this instance.
    if failed || worst_all > bar {
        ExitCode::from(1)
    } else if inconclusive > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Why an instance is degenerate for finite differences, and the instance to use instead.
fn degenerate_hint(
    few: &[nabla_lang::gradcheck::FewValues],
    batch: usize,
    input: Option<&[usize]>,
) -> String {
    let Some(f) = few.iter().min_by_key(|f| f.count) else {
        return "the loss is too curved here for finite differences (kinks, saturation): try another batch or input size".into();
    };
    // At least 8 values per normalized channel (the batch-8 check of the same tensors
    // settles).
    let factor = 8usize.div_ceil(f.count.max(1));
    let bigger = match input {
        Some([c, h, w]) => format!(", or a larger input (--input {c},{},{})", h * 2, w * 2),
        _ => String::new(),
    };
    format!(
        "this instance is degenerate: {} normalization{} here see{} at most {} values each (the fewest: {} values per channel, normalizing a {:?} tensor), which makes the loss nearly a step function; check at a larger batch (--batch {}){bigger}",
        few.len(),
        if few.len() == 1 { "" } else { "s" },
        if few.len() == 1 { "s" } else { "" },
        nabla_lang::gradcheck::FEW_VALUES,
        f.count,
        f.shape,
        batch * factor
    )
}

/// Every `.net` file under `p` (or `p` itself), sorted.
fn net_files(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() || e.extension().is_some_and(|x| x == "net") {
                net_files(&e, out)?;
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// `nabla fmt`: formats files in place, or with `check` lists those that would change.
fn fmt(paths: &[PathBuf], check: bool) -> ExitCode {
    let mut files = Vec::new();
    for p in paths {
        if let Err(e) = net_files(p, &mut files) {
            eprintln!("error: cannot read {}: {e}", p.display());
            return ExitCode::from(2);
        }
    }
    let (mut failed, mut changed) = (false, 0);
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                failed = true;
                continue;
            }
        };
        match nabla_lang::syntax::format::format(&text) {
            Ok(out) if out == text => {}
            Ok(out) => {
                changed += 1;
                if check {
                    println!("{}: not formatted", f.display());
                } else if let Err(e) =
                    nabla_stdlib::runtime::files::write_atomically(f, out.as_bytes())
                {
                    eprintln!("error: {e}");
                    failed = true;
                } else {
                    println!("formatted {}", f.display());
                }
            }
            Err(e) => {
                // The syntax errors themselves, with their codes and spans, when that is why.
                let mut sources = nabla_lang::SourceMap::default();
                let id = sources.add(f.display().to_string(), text.clone());
                let (_, errors) = nabla_lang::syntax::parse_module(&text, id);
                let color =
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                for d in &errors {
                    eprint!("{}", diag::render(d, &sources, color));
                }
                eprintln!("error: {}: {e}; the file is left as it is", f.display());
                failed = true;
            }
        }
    }
    if failed || (check && changed > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The stack every command runs on. The compiler's recursive walks are bounded by the
/// syntax tree's nesting limit (`syntax::depth`) and fit in a few megabytes; host code
/// may recurse until [`nabla_host`]'s guard stops it a megabyte short of the end.
const STACK_BYTES: usize = 64 << 20;

fn main() -> ExitCode {
    signals::default_sigpipe();
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    // Only touched pages cost memory, so a large stack is free until deep code uses it.
    let worker = std::thread::Builder::new()
        .name("nabla".into())
        .stack_size(STACK_BYTES)
        .spawn(move || command(cli, started));
    match worker.map(|w| w.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => ExitCode::from(101),
        Err(e) => {
            eprintln!("error: cannot start the main thread: {e}");
            ExitCode::from(1)
        }
    }
}

fn command(cli: Cli, started: std::time::Instant) -> ExitCode {
    match cli.command {
        Command::Repl { data } => {
            signals::interrupt_on_ctrl_c();
            match repl::repl(data) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { file, device, data } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            signals::interrupt_on_ctrl_c();
            match run::run(&checked, device, data) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(if signals::was_interrupted() { 130 } else { 1 })
                }
            }
        }
        Command::Bench {
            file,
            net,
            batch,
            optimizer,
            precision,
            steps,
            input,
            profile,
            device,
        } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            let result = pick_net(&checked, net)
                .map_err(Failure::from)
                .and_then(|net| {
                    let o = bench::BenchOptions {
                        net: &net,
                        batch: batch.max(1),
                        optimizer,
                        precision,
                        steps: steps.max(1),
                        input: input.as_deref(),
                        profile,
                    };
                    if device == run::Device::Cpu {
                        bench::bench(&checked, &o, started)
                    } else {
                        on_device!(device, b => bench::bench_device(&checked, &o, b))
                    }
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(1)
                }
            }
        }
        Command::Fmt { paths, check } => fmt(&paths, check),
        Command::Devices => {
            devices::list();
            ExitCode::SUCCESS
        }
        Command::Export {
            file,
            net,
            params,
            output,
            input,
        } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            let b = &nabla_jit::Cpu::new();
            let done = pick_net(&checked, net).and_then(|net| {
                onnx::export(&checked, &net, &params, &output, input.as_deref(), b)
                    .map(|e| (net, e))
            });
            match done {
                Ok((net, e)) => {
                    println!(
                        "wrote {} ({net}: {} nodes, {} initializers, {} bytes, opset {})",
                        output.display(),
                        e.nodes,
                        e.initializers,
                        e.bytes,
                        onnx::OPSET
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Predict {
            file,
            args,
            params,
            top,
            device,
        } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            // The first argument is the net when it names one of the file's nets and
            // is not a file.
            let named = args
                .first()
                .filter(|a| !Path::new(a).exists() && checked.nets.iter().any(|n| n.name == **a));
            let net = named.cloned();
            let images: Vec<PathBuf> = args
                .iter()
                .skip(usize::from(net.is_some()))
                .map(PathBuf::from)
                .collect();
            let result = pick_net(&checked, net)
                .map_err(Failure::from)
                .and_then(|net| {
                    on_device!(device, b => predict::predict(&checked, &net, &params, &images, top, b))
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(1)
                }
            }
        }
        Command::Conformance { device, only } => {
            let result =
                (|| on_device!(device, b => conformance::conformance(b, only.as_deref())))();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(1)
                }
            }
        }
        Command::Lsp => match nabla_lsp::serve_stdio() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Check { files, json } => {
            let roots = match read_roots(&files) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let checked = check_files(&roots, &FileLoader::disk());
            print_diagnostics(&checked, json);
            if checked.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Ir {
            file,
            net,
            batch,
            eval,
            loss,
        } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            let result = pick_net(&checked, net)
                .map_err(Failure::from)
                .and_then(|net| {
                    let mode = if eval {
                        nabla_lang::ir::Mode::Eval
                    } else {
                        nabla_lang::ir::Mode::Train
                    };
                    nabla_lang::check::lower::lower_net(
                        &checked.program,
                        0,
                        &net,
                        batch,
                        mode,
                        loss.as_deref(),
                    )
                    .map_err(|d| rendered(&checked, &d))
                });
            match result {
                Ok(l) => {
                    print!("{}", nabla_lang::ir::print_graph(&l.graph));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(1)
                }
            }
        }
        Command::Vjp {
            file,
            net,
            batch,
            loss,
            ir,
        } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            match vjp(&checked, net, batch, &loss, ir) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_error(&e);
                    ExitCode::from(1)
                }
            }
        }
        Command::Gradcheck {
            file,
            name,
            input,
            loss,
            tensors,
            param,
            batch,
            device,
        } => {
            let Some(checked) = check_one(&file) else {
                return ExitCode::from(1);
            };
            if let Some(device) = device {
                let r = (|| -> Result<bool, Failure> {
                    on_device!(device, b => devices::device_check(&checked, name.as_deref(), input.as_deref(), batch.max(1), b))
                })();
                return match r {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::from(1),
                    Err(e) => {
                        print_error(&e);
                        ExitCode::from(1)
                    }
                };
            }
            gradcheck(
                &checked,
                &GradcheckOptions {
                    name: name.as_deref(),
                    input: input.as_deref(),
                    loss: &loss,
                    tensors,
                    params: &param,
                    batch: batch.max(1),
                },
            )
        }
        Command::Info { file, net, keys } => {
            let roots = match read_roots(std::slice::from_ref(&file)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let checked = check_files(&roots, &FileLoader::disk());
            print_diagnostics(&checked, false);
            if checked.has_errors() {
                return ExitCode::from(1);
            }
            match info(&checked, net.as_deref(), keys) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
