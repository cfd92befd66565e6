//! The native side of the standard library's `extern fn`s, for host programs: datasets,
//! models and their compiled steps, checkpoints, progress bars, clocks and printing.
//!
//! [`Runtime`] binds every builtin a [`HostProgram`] calls to its implementation once,
//! before the program runs (an `extern fn` without one is an error then, not mid-run),
//! and implements [`Builtins`] over any [`Backend`]: the CLI passes the CPU backend.

pub mod data;
pub mod files;
pub mod model;
pub mod recipe;
pub mod tensors;
pub mod transform;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nabla_lang::backend::Backend;
use nabla_lang::check::Program;
use nabla_lang::host::heap::{Builtins, Heap, Object};
use nabla_lang::host::{BuiltinId, HTy, HostProgram, Word};

use data::Split;
use model::Model;
use tensors::{Named, Tensors};

/// How a run finds data and shows progress.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--data DIR` or `$NABLA_DATA`: where full datasets live.
    pub data: Option<PathBuf>,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

/// What each builtin of the program is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Native {
    /// An operation of the host runtime itself (`__str_concat`, `__math_cos`, ...): the
    /// host compiler's runtime answers it, so it never reaches these builtins.
    Core,
    Print,
    Mnist,
    FashionMnist,
    Cifar10,
    ImageFolder,
    SplitSize,
    TransformSplit,
    TakeSplit,
    InitFor,
    Init,
    Prepare,
    CheckRecipe,
    TrainBatch,
    TrainStep,
    MeanLoss,
    Correct,
    Predict,
    Evaluate,
    Accuracy,
    Shuffle,
    NowMs,
    ParamCount,
    NetName,
    Progress,
    Tick,
    Advance,
    Finish,
    Exists,
    Checkpoint,
    Restore,
    Save,
    Load,
    Grad,
    ValueAndGrad,
    Logits,
    Params,
    SetParams,
    SaveTensors,
    LoadTensors,
    Compare,
    L2Norm,
    TensorNames,
}

impl Native {
    fn of(name: &str) -> Option<Native> {
        use Native::*;
        Some(match name {
            "print" => Print,
            "mnist" => Mnist,
            "fashion_mnist" => FashionMnist,
            "cifar10" => Cifar10,
            "image_folder" => ImageFolder,
            "split_size" => SplitSize,
            "transform_split" => TransformSplit,
            "take_split" => TakeSplit,
            "init_for" => InitFor,
            "init" => Init,
            "prepare" => Prepare,
            "check_recipe" => CheckRecipe,
            "train_batch" => TrainBatch,
            "train_step" => TrainStep,
            "mean_loss" => MeanLoss,
            "correct" => Correct,
            "predict" => Predict,
            "evaluate" => Evaluate,
            "accuracy" => Accuracy,
            "shuffle" => Shuffle,
            "now_ms" => NowMs,
            "param_count" => ParamCount,
            "net_name" => NetName,
            "progress" => Progress,
            "tick" => Tick,
            "advance" => Advance,
            "finish" => Finish,
            "exists" => Exists,
            "checkpoint" => Checkpoint,
            "restore" => Restore,
            "save" => Save,
            "load" => Load,
            "grad" => Grad,
            "value_and_grad" => ValueAndGrad,
            "logits" => Logits,
            "params" => Params,
            "set_params" => SetParams,
            "save_tensors" => SaveTensors,
            "load_tensors" => LoadTensors,
            "compare" => Compare,
            "l2_norm" => L2Norm,
            "tensor_names" => TensorNames,
            _ => return None,
        })
    }
}

/// A progress bar (or nothing, off a terminal) and the running loss it shows.
struct Bar {
    bar: ProgressBar,
    label: String,
    loss: f64,
    n: u64,
    /// When [`Native::Advance`] last read a model's losses for it.
    read: Instant,
}

/// How often a progress bar reads the losses of queued steps (each read waits for the
/// device to catch up).
const BAR_READ_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The builtins of one run over backend `B`.
pub struct Runtime<'a, B: Backend> {
    p: &'a Program,
    prog: &'a HostProgram,
    backend: &'a B,
    options: Options,
    bound: Vec<Native>,
    datasets: HashMap<String, Word>,
    started: Instant,
}

fn float(w: Word) -> f64 {
    f64::from_bits(w)
}

impl<'a, B: Backend + 'static> Runtime<'a, B> {
    /// Binds the program's builtins; a builtin without an implementation is an error
    /// (E0702) at its first call.
    pub fn new(
        p: &'a Program,
        prog: &'a HostProgram,
        backend: &'a B,
        options: Options,
    ) -> Result<Runtime<'a, B>, nabla_lang::Diagnostic> {
        let mut bound = Vec::new();
        for b in &prog.builtins {
            if b.name.starts_with("__") {
                bound.push(Native::Core);
                continue;
            }
            bound.push(Native::of(&b.name).ok_or_else(|| {
                nabla_lang::Diagnostic::error("E0702", format!("`extern fn {}` has no native implementation in this runtime", b.name))
                    .primary(b.span, "called here")
                    .with_help("extern functions are the standard library's builtins; define a host `fn` with a body instead")
            })?);
        }
        Ok(Runtime {
            p,
            prog,
            backend,
            options,
            bound,
            datasets: HashMap::new(),
            started: Instant::now(),
        })
    }

    /// The index of field `name` of a record type.
    fn field_index(&self, ty: &HTy, name: &str) -> Result<usize, String> {
        let HTy::Record(id) = ty else {
            return Err(format!("no field `{name}`"));
        };
        self.prog
            .records
            .get(id)
            .and_then(|l| l.fields.iter().position(|(f, _)| f == name))
            .ok_or_else(|| format!("no field `{name}`"))
    }

    fn record_type(&self, name: &str) -> Option<HTy> {
        self.prog
            .records
            .iter()
            .find(|(_, l)| l.name == name)
            .map(|(id, _)| HTy::Record(*id))
    }

    /// A record's field by name (from a record word of type `record`).
    fn field(&self, heap: &Heap, record: &str, h: Word, name: &str) -> Result<Word, String> {
        let ty = self
            .record_type(record)
            .ok_or_else(|| format!("no record `{record}`"))?;
        let i = self.field_index(&ty, name)?;
        heap.record(h)?
            .get(i)
            .copied()
            .ok_or_else(|| format!("record `{record}` has no field {i}"))
    }

    fn dataset(
        &mut self,
        heap: &mut Heap,
        ret: &HTy,
        key: &str,
        load: impl FnOnce(&Options) -> Result<(Split, Split), String>,
    ) -> Result<Word, String> {
        if let Some(w) = self.datasets.get(key) {
            return Ok(*w);
        }
        let (train, test) = load(&self.options)?;
        let classes = train.classes;
        let HTy::Record(id) = ret else {
            return Err("a dataset builtin must return a Dataset".into());
        };
        let layout = self.prog.records.get(id).ok_or("no Dataset layout")?;
        let (tr, te) = (
            heap.alloc(Object::Native(Box::new(Rc::new(train)))),
            heap.alloc(Object::Native(Box::new(Rc::new(test)))),
        );
        let words = layout
            .fields
            .iter()
            .map(|(f, _)| match f.as_str() {
                "train" => Ok(tr),
                "test" => Ok(te),
                "classes" => Ok(classes as Word),
                other => Err(format!("unknown Dataset field `{other}`")),
            })
            .collect::<Result<Vec<Word>, String>>()?;
        let w = heap.alloc(Object::Record(*id, words));
        self.datasets.insert(key.to_string(), w);
        Ok(w)
    }

    /// A record of type `ret` with fields given by name.
    fn make_record(
        &self,
        heap: &mut Heap,
        ret: &HTy,
        fields: &[(&str, Word)],
    ) -> Result<Word, String> {
        let HTy::Record(id) = ret else {
            return Err("this builtin must return a record".into());
        };
        let layout = self.prog.records.get(id).ok_or("no record layout")?;
        let words = layout
            .fields
            .iter()
            .map(|(f, _)| {
                fields
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, w)| *w)
                    .ok_or_else(|| format!("unknown field `{f}` of `{}`", layout.name))
            })
            .collect::<Result<Vec<Word>, String>>()?;
        Ok(heap.alloc(Object::Record(*id, words)))
    }

    /// The examples `start .. start + batch` of a split, as indexes.
    fn range(split: &Split, start: Word, batch: Word) -> Result<Vec<usize>, String> {
        let (start, batch) = (start as i64, batch as i64);
        if start < 0 || batch <= 0 {
            return Err(format!(
                "a batch needs start ≥ 0 and size > 0, not start {start} and size {batch}"
            ));
        }
        let end = (start + batch).min(split.len() as i64);
        if start >= end {
            return Err(format!(
                "no examples in [{start}, {}) of {} ({} examples)",
                start + batch,
                split.name,
                split.len()
            ));
        }
        Ok((start as usize..end as usize).collect())
    }

    fn tensors(heap: &Heap, h: Word) -> Result<&Tensors, String> {
        heap.native::<Tensors>(h)
    }

    fn split(heap: &Heap, h: Word) -> Result<Rc<Split>, String> {
        heap.native::<Rc<Split>>(h).cloned()
    }

    fn model(heap: &mut Heap, h: Word) -> Result<&mut Model<B>, String> {
        // A model's buffers belong to the backend that made it; a session that changed
        // device (the REPL's `:device`) holds models of another backend type.
        heap.native_mut::<Model<B>>(h).map_err(|_| {
            "this model was made on another device, where its tensors live: switch back to it \
             to use the model"
                .to_string()
        })
    }

    /// Reads a `TrainConfig` record into the model's recipe and normalization (checked as
    /// [`recipe::read`] checks it).
    fn prepare(&self, heap: &mut Heap, model: Word, cfg: Word) -> Result<(), String> {
        let field =
            |heap: &Heap, record: &str, h: Word, name: &str| self.field(heap, record, h, name);
        let c = recipe::read(heap, &field, cfg)?;
        let m = Self::model(heap, model)?;
        m.mean = c.mean;
        m.std = c.std;
        m.set_recipe(c.recipe);
        Ok(())
    }

    /// Checks a recipe and the dataset it trains on before any work (`check_recipe`).
    fn check_recipe(&self, heap: &Heap, cfg: Word, data: Word) -> Result<(), String> {
        let field =
            |heap: &Heap, record: &str, h: Word, name: &str| self.field(heap, record, h, name);
        let c = recipe::read(heap, &field, cfg)?;
        let train = Self::split(heap, field(heap, "Dataset", data, "train")?)?;
        let test = Self::split(heap, field(heap, "Dataset", data, "test")?)?;
        recipe::check_data(&c, &train, &test)
    }
}

/// The next number of a splitmix64 stream (shuffles and augmentation draw from it).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A shuffled `0..n` by Fisher–Yates with a seeded splitmix64.
pub fn shuffle(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        let z = splitmix64(&mut s);
        v.swap(i, (z % (i as u64 + 1)) as usize);
    }
    v
}

fn data_dir(o: &Options, sub: &str, what: &str, files: &str) -> Result<PathBuf, String> {
    let Some(root) = &o.data else {
        return Err(format!(
            "{what} is not bundled: pass `--data DIR` or set $NABLA_DATA to a directory holding {sub}/ ({files})"
        ));
    };
    let nested = root.join(sub);
    Ok(if nested.is_dir() {
        nested
    } else {
        root.clone()
    })
}

impl<B: Backend + 'static> Builtins for Runtime<'_, B> {
    fn call(&mut self, id: BuiltinId, heap: &mut Heap, a: &[Word]) -> Result<Word, String> {
        let native = *self.bound.get(id).ok_or("unbound builtin")?;
        let ret = self
            .prog
            .builtins
            .get(id)
            .map(|b| b.ret.clone())
            .unwrap_or(HTy::Unit);
        use Native::*;
        match native {
            Core => Err(format!(
                "`{}` belongs to the host runtime",
                self.prog.builtins.get(id).map_or("", |b| b.name.as_str())
            )),
            Print => {
                println!("{}", heap.str(a[0])?);
                Ok(0)
            }
            Mnist => self.dataset(heap, &ret, "mnist", |o| match &o.data {
                None => data::bundled_mnist(),
                Some(_) => data::idx_dir(
                    &data_dir(o, "mnist", "MNIST", "train-images-idx3-ubyte.gz ...")?,
                    "MNIST",
                    10,
                ),
            }),
            FashionMnist => self.dataset(heap, &ret, "fashion", |o| {
                data::idx_dir(
                    &data_dir(
                        o,
                        "fashion-mnist",
                        "Fashion-MNIST",
                        "train-images-idx3-ubyte.gz ...",
                    )?,
                    "Fashion-MNIST",
                    10,
                )
            }),
            Cifar10 => self.dataset(heap, &ret, "cifar10", |o| {
                data::cifar10(&data_dir(
                    o,
                    "cifar-10-batches-bin",
                    "CIFAR-10",
                    "data_batch_1.bin ... test_batch.bin",
                )?)
            }),
            ImageFolder => {
                let root = PathBuf::from(heap.str(a[0])?);
                let size = usize::try_from(a[1] as i64).map_err(|_| {
                    format!("the image size must be at least 1, not {}", a[1] as i64)
                })?;
                let key = format!("folder:{}:{size}", root.display());
                let available = self.backend.memory_available();
                self.dataset(heap, &ret, &key, |_| {
                    data::image_folder(&root, size, available)
                })
            }
            SplitSize => Ok(Self::split(heap, a[0])?.len() as Word),
            TransformSplit => {
                let field = |heap: &Heap, record: &str, h: Word, name: &str| {
                    self.field(heap, record, h, name)
                };
                let steps = recipe::transforms(heap, &field, a[1])?;
                let split = Self::split(heap, a[0])?.transformed(&steps)?;
                Ok(heap.alloc(Object::Native(Box::new(Rc::new(split)))))
            }
            TakeSplit => {
                let n = usize::try_from(a[1] as i64).map_err(|_| {
                    format!("a split's first n examples need n ≥ 0, not {}", a[1] as i64)
                })?;
                let split = Self::split(heap, a[0])?.first(n);
                Ok(heap.alloc(Object::Native(Box::new(Rc::new(split)))))
            }
            InitFor => {
                let net = heap.net(a[0])?.to_string();
                let split = Self::split(heap, a[1])?;
                let (p, backend) = (self.p, self.backend);
                let mut m = Model::<B>::init(p, backend, &net, a[2])?;
                // Another size than the net declares, same channels: made for the data's
                // (parameters may follow it). Other channels, or a size the net cannot
                // take, keep the declared shape, and the first step says why, with the
                // transforms that would fit.
                let (declared, have) = (&m.input, split.input());
                if declared.iter().product::<usize>() != split.input_len()
                    && declared.len() == 3
                    && declared[0] == have[0]
                    && let Ok(at) =
                        Model::<B>::init_at(p, backend, &net, a[2], Some(&split.input()))
                {
                    m = at;
                }
                Ok(heap.alloc(Object::Native(Box::new(m))))
            }
            Init => {
                let net = heap.net(a[0])?.to_string();
                let m = Model::<B>::init(self.p, self.backend, &net, a[1])?;
                Ok(heap.alloc(Object::Native(Box::new(m))))
            }
            Prepare => {
                self.prepare(heap, a[0], a[1])?;
                Ok(0)
            }
            CheckRecipe => {
                self.check_recipe(heap, a[0], a[1])?;
                Ok(0)
            }
            TrainBatch | TrainStep => {
                let batch = usize::try_from(a[5] as i64)
                    .ok()
                    .filter(|b| *b >= 1)
                    .ok_or_else(|| format!("the batch must be at least 1, not {}", a[5] as i64))?;
                let split = Self::split(heap, a[1])?;
                let order = heap.list(a[2])?;
                let start = usize::try_from(a[3] as i64).map_err(|_| "negative batch start")?;
                let end = start.saturating_add(batch).min(order.len());
                if start >= end {
                    return Err(format!(
                        "no examples in batch [{start}, {}) of {}",
                        start.saturating_add(batch),
                        order.len()
                    ));
                }
                let idx: Vec<usize> = order[start..end].iter().map(|w| *w as usize).collect();
                let lr = float(a[4]);
                let (p, backend) = (self.p, self.backend);
                let m = Self::model(heap, a[0])?;
                if native == TrainStep {
                    m.queue_step(p, backend, &split, &idx, lr)?;
                    return Ok(0);
                }
                Ok(m.train_step(p, backend, &split, &idx, lr)?.to_bits())
            }
            MeanLoss => {
                let (p, backend) = (self.p, self.backend);
                Ok(Self::model(heap, a[0])?.mean_loss(p, backend)?.to_bits())
            }
            Correct | Evaluate | Accuracy => {
                let split = Self::split(heap, a[1])?;
                if split.is_empty() {
                    return Err(format!(
                        "{} has no examples: its accuracy and loss are not defined",
                        split.name
                    ));
                }
                let (p, backend) = (self.p, self.backend);
                let m = Self::model(heap, a[0])?;
                let (loss, correct) = m.evaluate(p, backend, &split, 500)?;
                let n = split.len().max(1) as f64;
                Ok(match native {
                    Correct => correct,
                    Evaluate => (loss / n).to_bits(),
                    _ => (correct as f64 / n).to_bits(),
                })
            }
            Predict => {
                let split = Self::split(heap, a[1])?;
                let (p, backend) = (self.p, self.backend);
                let probs = Self::model(heap, a[0])?.predict(p, backend, &split, 500)?;
                let HTy::List(item) = &ret else {
                    return Err("`predict` must return a list".into());
                };
                let mut words = Vec::with_capacity(split.len());
                for row in probs.rows() {
                    let (class, top) =
                        row.iter()
                            .enumerate()
                            .fold(
                                (0, f32::NEG_INFINITY),
                                |b, (k, v)| if *v > b.1 { (k, *v) } else { b },
                            );
                    let list = row.iter().map(|v| f64::from(*v).to_bits()).collect();
                    let list = heap.alloc(Object::List(list));
                    words.push(self.make_record(
                        heap,
                        item,
                        &[
                            ("class", class as Word),
                            ("probability", f64::from(top).to_bits()),
                            ("probabilities", list),
                        ],
                    )?);
                }
                Ok(heap.alloc(Object::List(words)))
            }
            Shuffle => {
                let n = usize::try_from(a[0] as i64).map_err(|_| "shuffle of a negative count")?;
                Ok(heap.alloc(Object::List(
                    shuffle(n, a[1]).into_iter().map(|i| i as Word).collect(),
                )))
            }
            NowMs => Ok(self.started.elapsed().as_millis() as Word),
            ParamCount => Ok(Self::model(heap, a[0])?.params),
            NetName => {
                let n = Self::model(heap, a[0])?.net.clone();
                Ok(heap.string(n))
            }
            Progress => {
                let label = heap.str(a[1])?.to_string();
                let bar = if self.options.progress {
                    ProgressBar::new(a[0])
                } else {
                    ProgressBar::with_draw_target(Some(a[0]), ProgressDrawTarget::hidden())
                };
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(label.clone());

                Ok(heap.alloc(Object::Native(Box::new(Bar {
                    bar,
                    label,
                    loss: 0.0,
                    n: 0,
                    read: Instant::now(),
                }))))
            }
            Tick => {
                let b = heap.native_mut::<Bar>(a[0])?;
                b.loss += float(a[1]);
                b.n += 1;
                b.bar.inc(1);
                if !b.bar.is_hidden() {
                    b.bar
                        .set_message(format!("{} loss={:.4}", b.label, b.loss / b.n as f64));
                }
                Ok(0)
            }
            Advance => {
                let b = heap.native_mut::<Bar>(a[0])?;
                b.bar.inc(1);
                if b.bar.is_hidden() || b.read.elapsed() < BAR_READ_EVERY {
                    return Ok(0);
                }
                b.read = Instant::now();
                let (p, backend) = (self.p, self.backend);
                let m = Self::model(heap, a[1])?;
                m.drain(p, backend)?;
                let loss = m.running_loss();
                let b = heap.native_mut::<Bar>(a[0])?;
                if let Some(loss) = loss {
                    b.bar.set_message(format!("{} loss={loss:.4}", b.label));
                }
                Ok(0)
            }
            Finish => {
                heap.native_mut::<Bar>(a[0])?.bar.finish_and_clear();
                Ok(0)
            }
            Exists => Ok(Word::from(Path::new(heap.str(a[0])?).exists())),
            Checkpoint => {
                let path = PathBuf::from(heap.str(a[1])?);
                let backend = self.backend;
                let m = Self::model(heap, a[0])?;
                // A step queued since the last read could have diverged: find out
                // before writing anything.
                m.drain(self.p, backend)?;
                m.epoch = a[2];
                m.checkpoint(backend, &path)?;
                Ok(0)
            }
            Restore => {
                let path = PathBuf::from(heap.str(a[1])?);
                let backend = self.backend;
                let m = Self::model(heap, a[0])?;
                m.load(backend, &path)?;
                Ok(m.epoch)
            }
            Save => {
                let path = PathBuf::from(heap.str(a[1])?);
                let backend = self.backend;
                let m = Self::model(heap, a[0])?;
                m.drain(self.p, backend)?;
                m.save(backend, &path)?;
                Ok(0)
            }
            Load => {
                let net = heap.net(a[0])?.to_string();
                let path = PathBuf::from(heap.str(a[1])?);
                let m = Model::<B>::from_file(self.p, self.backend, &net, &path)?;
                Ok(heap.alloc(Object::Native(Box::new(m))))
            }
            Grad | ValueAndGrad => {
                let split = Self::split(heap, a[1])?;
                let idx = Self::range(&split, a[2], a[3])?;
                let (p, backend) = (self.p, self.backend);
                let (loss, grads) =
                    Self::model(heap, a[0])?.value_and_grad(p, backend, &split, &idx, a[4] != 0)?;
                let g = heap.alloc(Object::Native(Box::new(grads)));
                if native == Grad {
                    return Ok(g);
                }
                self.make_record(heap, &ret, &[("loss", loss.to_bits()), ("grads", g)])
            }
            Params => {
                let t = Self::model(heap, a[0])?.tensors(self.backend)?;
                Ok(heap.alloc(Object::Native(Box::new(t))))
            }
            SetParams => {
                let t = Self::tensors(heap, a[1])?.clone();
                Self::model(heap, a[0])?.set_tensors(self.backend, &t)?;
                Ok(0)
            }
            SaveTensors => {
                let path = PathBuf::from(heap.str(a[1])?);
                let mut meta = std::collections::BTreeMap::new();
                meta.insert("format".to_string(), "nabla-tensors-1".to_string());
                Self::tensors(heap, a[0])?.save(&path, meta)?;
                Ok(0)
            }
            LoadTensors => {
                let t = Tensors::load(Path::new(heap.str(a[0])?))?;
                Ok(heap.alloc(Object::Native(Box::new(t))))
            }
            Compare => {
                let (e, name) =
                    Self::tensors(heap, a[0])?.max_rel_error(Self::tensors(heap, a[1])?)?;
                let s = heap.string(name);
                self.make_record(heap, &ret, &[("error", e.to_bits()), ("tensor", s)])
            }
            L2Norm => Ok(Self::tensors(heap, a[0])?.l2_norm().to_bits()),
            Logits => {
                let split = Self::split(heap, a[1])?;
                let idx = Self::range(&split, a[2], a[3])?;
                let per = split.example_len();
                let part = Split {
                    name: format!("{} {}..{}", split.name, idx[0], idx[0] + idx.len()),
                    images: Arc::new(
                        split.images[idx[0] * per..(idx[0] + idx.len()) * per].to_vec(),
                    ),
                    labels: split.labels[idx[0]..idx[0] + idx.len()].to_vec(),
                    shape: split.shape,
                    classes: split.classes,
                    view: split.view.clone(),
                };
                let (p, backend) = (self.p, self.backend);
                let out = Self::model(heap, a[0])?.predict(p, backend, &part, 500)?;
                let logits = Tensors {
                    items: vec![Named {
                        name: "logits".into(),
                        shape: vec![idx.len(), out.classes],
                        data: out.logits,
                    }],
                };
                Ok(heap.alloc(Object::Native(Box::new(logits))))
            }
            TensorNames => {
                let names: Vec<String> = Self::tensors(heap, a[0])?
                    .items
                    .iter()
                    .map(|t| t.name.clone())
                    .collect();
                let words = names.into_iter().map(|n| heap.string(n)).collect();
                Ok(heap.alloc(Object::List(words)))
            }
        }
    }
}

/// Whether progress bars should be drawn: stderr is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}
