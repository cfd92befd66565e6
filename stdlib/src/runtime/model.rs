//! A model: a net's parameters, state and optimizer slots living in a backend's buffers,
//! with its compiled train steps (one per batch size met) and evaluation steps.
//! Initialization follows each parameter's declared initializer; checkpoints are
//! safetensors files written atomically.

use std::collections::HashMap;

use nabla_lang::backend::Backend;
use nabla_lang::backend::memory;
use nabla_lang::check::Program;
use nabla_lang::check::lower::{InitSpec, lower_net_at};
use nabla_lang::gradcheck::normal;
use nabla_lang::interp::uniform;
use nabla_lang::ir::{InputKind, Mode};
use nabla_lang::opt::precision::Products;
use nabla_lang::step::{InRole, Optimizer, OutRole, Step, Update, eval_step, grad_step_with};

use super::tensors::{Named, Tensors};

use super::data::Split;

mod checkpoint;
mod predict;
mod queue;

/// The loss every classifier trains with.
pub const LOSS: &str = "softmax_cross_entropy";

/// What a tensor of the model is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    Param,
    /// Net state (batchnorm running statistics).
    State,
    /// An optimizer slot (`opt.m.<param>`).
    Slot,
}

struct Tensor<B: Backend> {
    name: String,
    shape: Vec<usize>,
    role: Role,
    buf: Option<B::Buffer>,
}

/// Where one input of a compiled step comes from, resolved when it is compiled (so a step
/// looks nothing up by name).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Feed {
    /// The assembled batch: images `x`.
    Images,
    /// The assembled batch: labels `y`.
    Labels,
    /// The optimizer's scalar number `k` (see `Optimizer::scalars`).
    Scalar(usize),
    /// The model's tensor number `k`.
    Tensor(usize),
}

/// A compiled step, where each input comes from and its shape, and the buffers its batch
/// and scalar inputs are refilled into every step (so a step allocates nothing).
struct Exe<B: Backend> {
    exe: B::Executable,
    inputs: Vec<(Feed, Vec<usize>)>,
    staged: Vec<Option<B::Buffer>>,
    /// What each output the step returns is (updates replace their inputs instead).
    outputs: Vec<OutRole>,
}

/// A data augmentation, from the recipe.
#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// Random crop after zero-padding by this many pixels.
    Crop(usize),
    /// Horizontal flip with this probability.
    Flip(f64),
}

/// The parts of a training recipe the model's steps need.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub optimizer: Optimizer,
    /// Label smoothing (0: none): the step's loss is `smoothed_cross_entropy`.
    pub smoothing: f64,
    /// The precision of the steps' products (matmuls and convolutions).
    pub products: Products,
    pub augment: Vec<Augment>,
    pub seed: u64,
}

/// A model of a net on backend `B`.
pub struct Model<B: Backend> {
    pub net: String,
    /// Per-example input shape.
    pub input: Vec<usize>,
    tensors: Vec<Tensor<B>>,
    /// Parameters (numbers, not tensors).
    pub params: u64,
    /// Per-channel normalization applied to every batch (empty: none).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    recipe: Option<Recipe>,
    train: HashMap<usize, Exe<B>>,
    eval: HashMap<usize, Exe<B>>,
    predict: HashMap<usize, Exe<B>>,
    grad: HashMap<usize, Exe<B>>,
    /// Whether the compiled gradient steps drop out (see [`Model::value_and_grad`]).
    grad_dropout: bool,
    /// Optimizer steps taken (Adam's bias correction counts them).
    pub steps: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// The batch being assembled (reused: no allocation per step): its examples, whose
    /// images are written into the step's input buffer, and its labels.
    rows: Vec<Row>,
    y: Vec<f32>,
    /// The classes the loss takes (its labels' `one_hot`), once a step is compiled.
    classes: Option<usize>,
    rng: u64,
    /// Losses of queued steps, read later ([`queue`]).
    losses: queue::Losses<B::Buffer>,
    /// What it takes to replay the recent steps ([`queue`]).
    replay: queue::Replay,
}

/// One example of a batch: where its image starts in its split, and its augmentation
/// (a shift by `dy`, `dx` with zeros shifted in, then a horizontal flip).
#[derive(Clone, Copy, Debug)]
struct Row {
    start: usize,
    dy: i64,
    dx: i64,
    flip: bool,
}

/// The transforms that make stored examples of shape `from` examples of `to`: to_rgb()
/// for gray to RGB, resize(n) for another square size, resize(n) then center_crop(n)
/// for a rectangle to a square. `None` when none does (RGB to gray, a target that is
/// not a square image, an empty one).
fn fix(from: [usize; 3], to: &[usize]) -> Option<String> {
    let [c, h, w] = from;
    let &[tc, th, tw] = to else { return None };
    let mut steps = Vec::new();
    match (c, tc) {
        (1, 3) => steps.push("to_rgb()".to_string()),
        (a, b) if a == b => {}
        _ => return None,
    }
    if (h, w) != (th, tw) {
        if th != tw || th == 0 {
            return None;
        }
        steps.push(format!("resize({th})"));
        if h != w {
            steps.push(format!("center_crop({th})"));
        }
    }
    Some(steps.join(", "))
}

/// Writes the images of `rows` of `split` into `out`, one after another, augmented and
/// normalized by the per-channel `(mean, std)` (none given: as they are). `out` holds
/// exactly those images; rows were checked to lie in the split when gathered.
fn fill_images(split: &Split, rows: &[Row], (mean, std): (&[f32], &[f32]), out: &mut [f32]) {
    let [c, h, w] = split.shape;
    let (plane, per) = (h * w, split.example_len());
    if per == 0 {
        return;
    }
    let affine = |ch: usize| {
        let (m, s) = (
            mean.get(ch).copied().unwrap_or(0.0),
            std.get(ch).copied().unwrap_or(1.0),
        );
        (1.0 / (255.0 * s), -m / s)
    };
    if let Some(view) = &split.view {
        // Transformed: each output pixel a weighted sum of stored ones (see `transform`).
        for (row, dst) in rows.iter().zip(out.chunks_exact_mut(split.input_len())) {
            if let Some(img) = split.images.get(row.start..row.start + per) {
                view.write(img, (row.dy, row.dx, row.flip), &affine, dst);
            }
        }
        return;
    }
    // Each channel's normalization of a byte b, `(b / 255 − mean) / std`, is one multiply
    // and add, `b · scale + shift` (`affine`): a loop the compiler vectorizes, where a
    // table lookup per pixel made Fashion-MNIST's linear epoch slower than copying f32
    // pixels.
    for (row, dst) in rows.iter().zip(out.chunks_exact_mut(per)) {
        let Some(img) = split.images.get(row.start..row.start + per) else {
            continue;
        };
        for ch in 0..c {
            let (scale, shift) = affine(ch);
            let src = &img[ch * plane..(ch + 1) * plane];
            let dst = &mut dst[ch * plane..(ch + 1) * plane];
            if row.dy == 0 && row.dx == 0 && !row.flip {
                // The common case: the image as it is.
                bytes_to_f32(src, (scale, shift), dst);
                continue;
            }
            // A pixel shifted in by augmentation is black (byte 0).
            for yy in 0..h {
                for xx in 0..w {
                    let sx = if row.flip { w - 1 - xx } else { xx } as i64 + row.dx;
                    let sy = yy as i64 + row.dy;
                    let b = if sx < 0 || sy < 0 || sx >= w as i64 || sy >= h as i64 {
                        0
                    } else {
                        src[sy as usize * w + sx as usize]
                    };
                    dst[yy * w + xx] = f32::from(b) * scale + shift;
                }
            }
        }
    }
}

/// `dst[i] = src[i] · scale + shift`: a row of byte pixels, normalized.
fn bytes_to_f32(src: &[u8], (scale, shift): (f32, f32), dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { bytes_to_f32_avx2(src, (scale, shift), dst) };
    }
    bytes_to_f32_loop(src, (scale, shift), dst);
}

/// The same loop compiled for AVX2 (8 pixels an instruction; the baseline x86-64 target
/// has no instruction that widens bytes to 32 bits in one step). Multiply and add stay
/// two roundings, so results are the same on every machine.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bytes_to_f32_avx2(src: &[u8], affine: (f32, f32), dst: &mut [f32]) {
    bytes_to_f32_loop(src, affine, dst);
}

#[inline(always)]
fn bytes_to_f32_loop(src: &[u8], (scale, shift): (f32, f32), dst: &mut [f32]) {
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, b)| *d = f32::from(*b) * scale + shift);
}

/// `n` values drawn by `spec` with `seed`.
pub fn initial_values(spec: &InitSpec, n: usize, seed: u64) -> Result<Vec<f32>, String> {
    let arg = |name: &str| {
        spec.arg(name)
            .ok_or_else(|| format!("initializer `{}` is missing `{name}`", spec.kind))
    };
    Ok(match spec.kind.as_str() {
        "zeros" => vec![0.0; n],
        "ones" => vec![1.0; n],
        "fill" => vec![arg("value")? as f32; n],
        "he_normal" => {
            let s = (2.0 / arg("fan_in")?.max(1.0)).sqrt();
            (0..n as u64)
                .map(|i| (s * normal(seed, i)) as f32)
                .collect()
        }
        "glorot_uniform" => {
            let a = (6.0 / (arg("fan_in")? + arg("fan_out")?).max(1.0)).sqrt();
            (0..n as u64)
                .map(|i| (a * (2.0 * uniform(seed, i) - 1.0)) as f32)
                .collect()
        }
        "trunc_normal" => {
            let s = arg("std")?;
            (0..n as u64)
                .map(|i| {
                    // Redraw outside two standard deviations (a fresh counter each time).
                    let mut k = 0;
                    loop {
                        let z = normal(seed ^ (k << 40), i);
                        if z.abs() <= 2.0 || k > 64 {
                            return (s * z.clamp(-2.0, 2.0)) as f32;
                        }
                        k += 1;
                    }
                })
                .collect()
        }
        other => return Err(format!("unknown initializer `{other}`")),
    })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl<B: Backend> Model<B> {
    /// A fresh model of net `net` (of the root module), initialized with `seed`.
    pub fn init(p: &Program, backend: &B, net: &str, seed: u64) -> Result<Model<B>, String> {
        Self::init_at(p, backend, net, seed, None)
    }

    /// A fresh model of net `net` for inputs of shape `input` (`None`: the shape the net
    /// declares). Parameters whose shape follows the input (a ViT's position embedding,
    /// one row per patch) are sized for it; the others are the same at every size.
    pub fn init_at(
        p: &Program,
        backend: &B,
        net: &str,
        seed: u64,
        input: Option<&[usize]>,
    ) -> Result<Model<B>, String> {
        let l = lower_net_at(p, 0, net, 1, Mode::Eval, None, input).map_err(|d| d.message)?;
        let g = &l.graph;
        let input = g
            .inputs()
            .find(|(_, n, _)| *n == "x")
            .map(|(v, _, _)| g.node(v).shape[1..].to_vec())
            .unwrap_or_default();
        // All of it must fit before any of it is drawn (each tensor exists twice for a
        // moment: drawn on the host, then uploaded).
        let values = g
            .inputs()
            .filter(|(_, _, k)| matches!(k, InputKind::Param | InputKind::State))
            .try_fold(0usize, |a, (v, _, _)| {
                a.checked_add(memory::numel(&g.node(v).shape)?)
            });
        memory::check(
            values.and_then(|n| memory::bytes_of(n, 4)),
            &format!(
                "the {} parameter and state values of `{net}`",
                values.map_or_else(|| "more than 2^64".into(), |n| n.to_string())
            ),
            backend.memory_available(),
        )?;
        let mut tensors = Vec::new();
        let mut params = 0;
        for (k, (v, name, kind)) in g.inputs().enumerate() {
            let role = match kind {
                InputKind::Param => Role::Param,
                InputKind::State => Role::State,
                _ => continue,
            };
            let shape = g.node(v).shape.clone();
            let n = memory::numel(&shape).ok_or_else(|| format!("`{name}` is too large"))?;
            let spec = l
                .inits
                .iter()
                .find(|(m, _)| m == name)
                .map(|(_, s)| s.clone())
                .unwrap_or(InitSpec {
                    kind: "zeros".into(),
                    args: vec![],
                });
            let data = initial_values(
                &spec,
                n,
                seed.wrapping_mul(0x100_0000_01b3).wrapping_add(k as u64),
            )
            .map_err(|e| format!("`{name}`: {e}"))?;
            if role == Role::Param {
                params += n as u64;
            }
            let buf = backend.upload(&shape, &data).map_err(err)?;
            tensors.push(Tensor {
                name: name.to_string(),
                shape,
                role,
                buf: Some(buf),
            });
        }
        Ok(Model {
            net: net.into(),
            input,
            tensors,
            params,
            mean: vec![],
            std: vec![],
            recipe: None,
            train: HashMap::new(),
            eval: HashMap::new(),
            predict: HashMap::new(),
            grad: HashMap::new(),
            grad_dropout: true,
            steps: 0,
            epoch: 0,
            rows: vec![],
            y: vec![],
            rng: seed,
            classes: None,
            losses: queue::Losses::default(),
            replay: queue::Replay::default(),
        })
    }

    /// Sets the recipe for training (a new optimizer recompiles the steps).
    pub fn set_recipe(&mut self, recipe: Recipe) {
        if self.recipe.as_ref().map(|r| (r.optimizer, r.smoothing))
            != Some((recipe.optimizer, recipe.smoothing))
        {
            self.train.clear();
            self.grad.clear();
        }
        if self.products() != recipe.products {
            self.train.clear();
            self.grad.clear();
            self.eval.clear();
            self.predict.clear();
        }
        self.rng = recipe.seed ^ 0x5eed;
        self.recipe = Some(recipe);
    }

    /// The precision of the model's products: its recipe's, f32 without one.
    fn products(&self) -> Products {
        self.recipe.as_ref().map_or(Products::F32, |r| r.products)
    }

    /// Chooses the batch: examples `idx` of `split`, with their augmentation when
    /// training (drawn here, in order, so a seed gives the same batches), and their
    /// labels. The images are written later, straight into the step's input buffer (see
    /// [`Model::run`]).
    fn gather(&mut self, split: &Split, idx: &[usize], train: bool) -> Result<(), String> {
        let per = split.example_len();
        let have = split.input();
        // Another size of the same channels is the net's business: its steps are
        // compiled for the split's shape, and a net that cannot take it says so then
        // (`unfit`). Other channels are refused here.
        let same_numel = self.input.iter().product::<usize>() == split.input_len();
        if !same_numel && (self.input.len() != 3 || self.input[0] != have[0]) {
            return Err(self.unfit(split, None));
        }
        self.rows.clear();
        self.y.clear();
        let augs = if train {
            self.recipe
                .as_ref()
                .map(|r| r.augment.clone())
                .unwrap_or_default()
        } else {
            vec![]
        };
        for &i in idx {
            let label = split.labels.get(i).copied();
            let (Some(label), true) = (label, (i + 1) * per <= split.images.len()) else {
                return Err(format!("example {i} is out of range for {}", split.name));
            };
            let mut row = Row {
                start: i * per,
                dy: 0,
                dx: 0,
                flip: false,
            };
            for a in &augs {
                match a {
                    Augment::Crop(pad) => {
                        let span = 2 * *pad as u64 + 1;
                        row.dy = (self.next() % span) as i64 - *pad as i64;
                        row.dx = (self.next() % span) as i64 - *pad as i64;
                    }
                    Augment::Flip(p) => {
                        row.flip = (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= *p
                    }
                }
            }
            self.rows.push(row);
            self.y.push(label as f32);
        }
        Ok(())
    }

    /// Why the net cannot take `split`'s examples (`why`: the compiler's reason, when it
    /// tried), naming both shapes and the transforms that make the examples the shape
    /// the model was made for. A split that fits as it is gets `why` back unchanged.
    pub(super) fn unfit(&self, split: &Split, why: Option<String>) -> String {
        let have = split.input();
        let fits = self.input.iter().product::<usize>() == split.input_len();
        match why {
            Some(why) if fits => return why,
            _ => {}
        }
        let dims = |s: &[usize]| {
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×")
        };
        let seen = match &split.view {
            Some(v) => {
                let steps: Vec<String> = v.steps.iter().map(|t| t.to_string()).collect();
                format!(" (after {})", steps.join(", "))
            }
            None => String::new(),
        };
        let mut msg = format!(
            "{} has examples of {}{seen}, but net `{}` takes {}",
            split.name,
            dims(&have),
            self.net,
            dims(&self.input)
        );
        if let Some(why) = why {
            msg.push_str(&format!(", and cannot take them: {why}"));
        }
        msg.push_str(&match fix(split.shape, &self.input) {
            Some(steps) => format!(
                "; add `transform(data, [{steps}])` to make them {}",
                dims(&self.input)
            ),
            None => "; no transform makes them that shape".into(),
        });
        msg
    }

    /// The gathered batch's images in one vector (what the step's input buffer holds).
    fn batch_images(&self, split: &Split) -> Vec<f32> {
        let mut x = vec![0.0; self.rows.len() * split.input_len()];
        fill_images(split, &self.rows, (&self.mean, &self.std), &mut x);
        x
    }

    fn next(&mut self) -> u64 {
        super::splitmix64(&mut self.rng)
    }

    /// Compiles `g` and resolves where each of its inputs comes from.
    fn prepare_exe(&self, backend: &B, step: &Step, scalars: &[&str]) -> Result<Exe<B>, String> {
        let g = &step.graph;
        let mut inputs = Vec::new();
        for ((v, _, _), (n, role)) in g.inputs().zip(&step.signature.inputs) {
            let feed = match role {
                InRole::Images => Feed::Images,
                InRole::Labels => Feed::Labels,
                InRole::Hyper(h) => {
                    Feed::Scalar(scalars.iter().position(|s| *s == h.name()).ok_or_else(|| {
                        format!("the step needs `{n}`, which the optimizer lacks")
                    })?)
                }
                InRole::Param | InRole::State | InRole::Slot => {
                    let k = self
                        .tensors
                        .iter()
                        .position(|t| t.name == *n)
                        .ok_or_else(|| format!("the step needs `{n}`, which the model lacks"))?;
                    // A parameter sized by the input (a ViT's position embedding) fits
                    // only the input size the model was made for.
                    let (want, have) = (&g.node(v).shape, &self.tensors[k].shape);
                    if want != have {
                        return Err(format!(
                            "`{n}` is {have:?} in this model, made for inputs of {:?}, but {want:?} for the inputs given: make the model for the data's shape (`init_for(spec, data.train, seed)`, as `train` does)",
                            self.input
                        ));
                    }
                    Feed::Tensor(k)
                }
            };
            inputs.push((feed, g.node(v).shape.clone()));
        }
        let exe = backend.compile(g).map_err(err)?;
        let staged = inputs.iter().map(|_| None).collect();
        let outputs = step.signature.returned().cloned().collect();
        Ok(Exe {
            exe,
            inputs,
            staged,
            outputs,
        })
    }

    /// Runs the train, eval or gradient step for batch `b` on the gathered batch of
    /// `split`; returns its non-state outputs. The images go straight into the step's
    /// input buffer ([`Backend::write_rows`]), the rest through its staged buffers.
    fn run(
        &mut self,
        backend: &B,
        which: Which,
        split: &Split,
        scalars: &[f64],
    ) -> Result<Vec<B::Buffer>, String> {
        let Model {
            train,
            eval,
            grad,
            predict,
            tensors,
            rows,
            y,
            mean,
            std,
            ..
        } = self;
        let exes = match which {
            Which::Train => train,
            Which::Eval => eval,
            Which::Grad => grad,
            Which::Predict => predict,
        };
        let exe = exes.get_mut(&rows.len()).ok_or("no compiled step")?;
        let (rows, stats) = (&rows[..], (&mean[..], &std[..]));
        let per = split.input_len();
        let images = |r: std::ops::Range<usize>, out: &mut [f32]| {
            let batch = rows.get(r).unwrap_or(&[]);
            if out.len() == batch.len() * per {
                fill_images(split, batch, stats, out);
            }
        };
        let mut bufs = Vec::with_capacity(exe.inputs.len());
        let mut failed = None;
        for (i, (feed, shape)) in exe.inputs.iter().enumerate() {
            let one;
            let data: &[f32] = match feed {
                Feed::Images => &[],
                Feed::Labels => y,
                Feed::Scalar(k) => {
                    one = [scalars.get(*k).copied().unwrap_or(f64::NAN) as f32];
                    &one
                }
                Feed::Tensor(t) => match tensors[*t].buf.take() {
                    Some(buf) => {
                        bufs.push(buf);
                        continue;
                    }
                    None => {
                        failed = Some(format!("`{}` is missing", tensors[*t].name));
                        break;
                    }
                },
            };
            // Refill this input's staged buffer, or make it the first time.
            let filled = match (exe.staged[i].take(), feed) {
                (Some(mut buf), Feed::Images) => {
                    backend.write_rows(&mut buf, shape, &images).map(|_| buf)
                }
                (None, Feed::Images) => {
                    let mut x = memory::zeroed(
                        memory::numel(shape).unwrap_or(usize::MAX),
                        "a batch of images",
                        || backend.memory_available(),
                    )?;
                    images(0..rows.len(), &mut x);
                    backend.upload(shape, &x)
                }
                (Some(mut buf), _) => backend.write(&mut buf, shape, data).map(|_| buf),
                (None, _) => backend.upload(shape, data),
            };
            match filled {
                Ok(buf) => bufs.push(buf),
                Err(e) => {
                    let what = match feed {
                        Feed::Images => "the batch's images",
                        Feed::Labels => "the batch's labels",
                        _ => "the optimizer's scalars",
                    };
                    failed = Some(format!("{what}: {e}"));
                    break;
                }
            }
        }
        let result = match failed {
            None => backend.run(&mut exe.exe, &mut bufs).map_err(err),
            Some(e) => Err(e),
        };
        // Put state and staged buffers back whatever happened, so a failed step loses nothing.
        for (i, ((feed, _), buf)) in exe.inputs.iter().zip(bufs).enumerate() {
            match feed {
                Feed::Tensor(t) => tensors[*t].buf = Some(buf),
                _ => exe.staged[i] = Some(buf),
            }
        }
        result
    }

    /// The mean loss on examples `idx` of `split` (in that order, normalized, not augmented)
    /// and its gradient with respect to every parameter, named as the parameters. The
    /// loss is the recipe's (label smoothing included) or plain cross-entropy; nothing of
    /// the model changes.
    ///
    /// With `dropout` false, dropout is the identity (batchnorm still uses the batch's
    /// statistics): the train-mode gradient another tool can reproduce, which cannot draw
    /// nabla's random numbers.
    pub fn value_and_grad(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Split,
        idx: &[usize],
        dropout: bool,
    ) -> Result<(f64, Tensors), String> {
        let smoothing = self.recipe.as_ref().map_or(0.0, |r| r.smoothing);
        self.gather(split, idx, false)?;
        let b = idx.len();
        if self.grad_dropout != dropout {
            self.grad.clear();
            self.grad_dropout = dropout;
        }
        if !self.grad.contains_key(&b) {
            let eps = [("eps", smoothing)];
            let step = grad_step_with(p, &self.net, b, loss(&eps), Some(&split.input()), dropout)
                .and_then(|s| s.with_products(self.products()))
                .map_err(|d| self.unfit(split, Some(d.message)))?;
            let exe = self
                .prepare_exe(backend, &step, &[])
                .map_err(|e| format!("the gradient step for batch {b}: {e}"))?;
            self.grad.insert(b, exe);
        }
        let out = self.run(backend, Which::Grad, split, &[])?;
        let loss = first(backend, &out)?;
        let names = self
            .grad
            .get(&b)
            .map(|e| e.outputs.clone())
            .unwrap_or_default();
        let mut items = Vec::new();
        for t in self.tensors.iter().filter(|t| t.role == Role::Param) {
            let k = names
                .iter()
                .position(|r| *r == OutRole::Gradient(t.name.clone()))
                .ok_or_else(|| format!("the gradient step has no gradient for `{}`", t.name))?;
            let buf = out
                .get(k)
                .ok_or("the gradient step returned too few outputs")?;
            items.push(Named {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: backend.download(buf).map_err(err)?,
            });
        }
        Ok((loss, Tensors { items }))
    }

    /// The parameters and net state (batchnorm statistics), downloaded.
    pub fn tensors(&self, backend: &B) -> Result<Tensors, String> {
        let mut items = Vec::new();
        for t in self.tensors.iter().filter(|t| t.role != Role::Slot) {
            let buf = t
                .buf
                .as_ref()
                .ok_or_else(|| format!("`{}` is missing", t.name))?;
            items.push(Named {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: backend.download(buf).map_err(err)?,
            });
        }
        Ok(Tensors { items })
    }

    /// Replaces parameters and state with those of `set` (by name). Every parameter must be
    /// in it with its shape; state tensors it lacks keep their values; a name the model
    /// does not have is an error (a misspelt name would otherwise be ignored). Nothing
    /// changes unless all of it fits.
    pub fn set_tensors(&mut self, backend: &B, set: &Tensors) -> Result<(), String> {
        for n in &set.items {
            match self
                .tensors
                .iter()
                .find(|t| t.name == n.name && t.role != Role::Slot)
            {
                None => {
                    return Err(format!(
                        "net `{}` has no parameter or state named `{}`",
                        self.net, n.name
                    ));
                }
                Some(t) if t.shape != n.shape => {
                    return Err(format!(
                        "`{}` has shape {:?}, but the net's is {:?}",
                        n.name, n.shape, t.shape
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(t) = self
            .tensors
            .iter()
            .find(|t| t.role == Role::Param && set.get(&t.name).is_none())
        {
            return Err(format!(
                "the set has no parameter `{}` of net `{}`",
                t.name, self.net
            ));
        }
        let mut bufs = Vec::new();
        for n in &set.items {
            bufs.push(backend.upload(&n.shape, &n.data).map_err(err)?);
        }
        // Values set from outside: the steps recorded since the snapshot no longer lead here.
        self.forget_steps();
        for (n, buf) in set.items.iter().zip(bufs) {
            if let Some(t) = self.tensors.iter_mut().find(|t| t.name == n.name) {
                t.buf = Some(buf);
            }
        }
        Ok(())
    }

    /// (summed loss, correct predictions) over `split`, in batches of `batch`.
    pub fn evaluate(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Split,
        batch: usize,
    ) -> Result<(f64, u64), String> {
        let (mut loss, mut correct) = (0.0, 0u64);
        let n = split.len();
        let mut start = 0;
        while start < n {
            if nabla_lang::host::interrupt::pending() {
                return Err(nabla_lang::host::interrupt::MESSAGE.into());
            }
            let b = batch.min(n - start);
            let idx: Vec<usize> = (start..start + b).collect();
            self.gather(split, &idx, false)?;
            if !self.eval.contains_key(&b) {
                let step = eval_step(p, &self.net, b, LOSS, Some(&split.input()))
                    .and_then(|s| s.with_products(self.products()))
                    .map_err(|d| self.unfit(split, Some(d.message)))?;
                self.classes = self.classes.or(label_classes(&step.graph));
                let exe = self
                    .prepare_exe(backend, &step, &[])
                    .map_err(|e| format!("the evaluation step for batch {b}: {e}"))?;
                self.eval.insert(b, exe);
            }
            self.check_labels(split, &idx)?;
            let out = self.run(backend, Which::Eval, split, &[]).map_err(|e| {
                format!(
                    "evaluating examples {start}..{} of {}: {e}",
                    start + b,
                    split.name
                )
            })?;
            let values: Vec<f64> = out
                .iter()
                .map(|o| first(backend, std::slice::from_ref(o)))
                .collect::<Result<_, _>>()?;
            let roles = self
                .eval
                .get(&b)
                .map(|e| e.outputs.as_slice())
                .unwrap_or_default();
            let at = |role: OutRole| {
                roles
                    .iter()
                    .position(|r| *r == role)
                    .and_then(|k| values.get(k).copied())
                    .ok_or_else(|| format!("the evaluation step returned no {role:?}"))
            };
            loss += at(OutRole::Loss)? * b as f64;
            correct += at(OutRole::Correct)?.round() as u64;
            start += b;
        }
        Ok((loss, correct))
    }

    /// An error when a label of examples `idx` is not one of the classes the net's loss
    /// takes: `one_hot` would make it a row of zeros, and the example would be silently
    /// left out of the loss and counted wrong.
    fn check_labels(&self, split: &Split, idx: &[usize]) -> Result<(), String> {
        let Some(classes) = self.classes else {
            return Ok(());
        };
        let bad = idx
            .iter()
            .map(|i| (*i, split.labels.get(*i).copied().unwrap_or(-1)))
            .find(|(_, l)| usize::try_from(*l).map_or(true, |l| l >= classes));
        match bad {
            None => Ok(()),
            Some((i, label)) => Err(format!(
                "{} example {i} has label {label}, but net {} has {classes} outputs (labels 0..{}){}",
                split.name,
                self.net,
                classes - 1,
                if split.classes > classes {
                    format!(
                        ": the data has {} classes; give the net's last layer {} outputs",
                        split.classes, split.classes
                    )
                } else {
                    String::new()
                }
            )),
        }
    }
}

/// `` `log` at m.net:5:3 (`log(p)`) ``: a node's op and the source it was lowered from.
fn describe_node(p: &Program, g: &nabla_lang::ir::Graph, v: nabla_lang::ir::ValueId) -> String {
    let n = g.node(v);
    if let Some(name) = g.input_name(v) {
        return format!("input `{name}`");
    }
    let Some(span) = n.span else {
        return format!("`{}`", n.op.name());
    };
    let (line, col) = p.sources.line_col(span.file, span.start);
    let file = p.sources.name(span.file);
    let text: String = p
        .sources
        .text(span.file)
        .get(span.start..span.end)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text = if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    };
    format!("`{}` at {file}:{line}:{col} (`{text}`)", n.op.name())
}

/// The loss a recipe trains with: label smoothing `eps[0]` when positive, else plain
/// cross-entropy.
fn loss<'e>(eps: &'e [(&'e str, f64)]) -> (&'static str, &'e [(&'e str, f64)]) {
    if eps.first().is_some_and(|(_, e)| *e > 0.0) {
        ("smoothed_cross_entropy", eps)
    } else {
        (LOSS, &[])
    }
}

/// Little-endian f32s.
pub(super) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Which of a model's compiled steps.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Which {
    Train,
    Eval,
    Grad,
    Predict,
}

/// The classes of the labels input `y` of a step graph: what its `one_hot` takes.
fn label_classes(g: &nabla_lang::ir::Graph) -> Option<usize> {
    let (y, _, _) = g.inputs().find(|(_, n, _)| *n == "y")?;
    g.index_bound(y)
}

/// The first number of the first buffer (a step's loss).
fn first<B: Backend>(backend: &B, out: &[B::Buffer]) -> Result<f64, String> {
    let o = out.first().ok_or("the step returned nothing")?;
    Ok(backend
        .download(o)
        .map_err(err)?
        .first()
        .copied()
        .unwrap_or(f32::NAN) as f64)
}

/// The optimizer a recipe's `Optimizer` record describes.
pub fn optimizer(
    kind: &str,
    momentum: f64,
    nesterov: bool,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
) -> Result<Optimizer, String> {
    let update = match kind {
        "sgd" => Update::Sgd { momentum, nesterov },
        "adam" => Update::Adam {
            beta1,
            beta2,
            eps,
            decoupled,
        },
        other => return Err(format!("unknown optimizer kind `{other}` (sgd or adam)")),
    };
    Ok(Optimizer {
        update,
        weight_decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 2-channel 3×4 images whose bytes are all different.
    fn split() -> Split {
        Split {
            name: "test".into(),
            shape: [2, 3, 4],
            images: std::sync::Arc::new((0..48u8).map(|i| i * 5 + 3).collect()),
            labels: vec![0, 1],
            classes: 2,
            view: None,
        }
    }

    #[test]
    fn fix_names_the_transforms_that_make_examples_fit() {
        assert_eq!(
            fix([1, 28, 28], &[3, 64, 64]).as_deref(),
            Some("to_rgb(), resize(64)")
        );
        assert_eq!(
            fix([3, 40, 30], &[3, 32, 32]).as_deref(),
            Some("resize(32), center_crop(32)")
        );
        assert_eq!(fix([3, 32, 32], &[3, 32, 32]).as_deref(), Some(""));
        assert_eq!(fix([3, 32, 32], &[1, 32, 32]), None);
        assert_eq!(fix([1, 28, 28], &[784]), None);
        assert_eq!(fix([1, 28, 28], &[1, 20, 30]), None);
    }

    /// What `fill_images` should write for one row, in f64: the pixel the row's shift
    /// and flip bring to (ch, y, x), black outside the image, normalized.
    fn expected(s: &Split, row: Row, norm: (&[f32], &[f32])) -> Vec<f64> {
        let [c, h, w] = s.shape;
        let mut out = Vec::new();
        for ch in 0..c {
            let (m, sd) = (f64::from(norm.0[ch]), f64::from(norm.1[ch]));
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let sx = if row.flip { w as i64 - 1 - x } else { x } + row.dx;
                    let sy = y + row.dy;
                    let inside = (0..w as i64).contains(&sx) && (0..h as i64).contains(&sy);
                    let b = if inside {
                        s.images[row.start + ch * h * w + (sy * w as i64 + sx) as usize]
                    } else {
                        0
                    };
                    out.push((f64::from(b) / 255.0 - m) / sd);
                }
            }
        }
        out
    }

    #[test]
    fn batches_are_shifted_flipped_and_normalized_per_channel() {
        let s = split();
        let norm: (&[f32], &[f32]) = (&[0.25, 0.5], &[0.5, 2.0]);
        let rows = [
            Row {
                start: 24,
                dy: 0,
                dx: 0,
                flip: false,
            },
            Row {
                start: 0,
                dy: 1,
                dx: -2,
                flip: false,
            },
            Row {
                start: 24,
                dy: -1,
                dx: 1,
                flip: true,
            },
            Row {
                start: 0,
                dy: 0,
                dx: 0,
                flip: true,
            },
        ];
        let mut out = vec![f32::NAN; rows.len() * 24];
        fill_images(&s, &rows, norm, &mut out);
        for (row, got) in rows.iter().zip(out.chunks(24)) {
            for (i, (g, want)) in got.iter().zip(expected(&s, *row, norm)).enumerate() {
                let err = (f64::from(*g) - want).abs();
                assert!(
                    err <= 1e-6 * want.abs().max(1.0),
                    "{row:?} value {i}: {g} against {want}"
                );
            }
        }
        // No normalization: bytes / 255.
        fill_images(&s, &rows[..1], (&[], &[]), &mut out[..24]);
        assert!((f64::from(out[0]) - f64::from(s.images[24]) / 255.0).abs() < 1e-7);
    }

    #[test]
    fn the_vector_conversion_matches_the_loop() {
        let src: Vec<u8> = (0..=255).chain(0..37).collect();
        let (mut a, mut b) = (vec![0.0; src.len()], vec![0.0; src.len()]);
        bytes_to_f32(&src, (1.0 / 77.0, -0.3), &mut a);
        bytes_to_f32_loop(&src, (1.0 / 77.0, -0.3), &mut b);
        assert_eq!(a, b, "bit for bit");
    }
}
