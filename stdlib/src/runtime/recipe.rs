//! A training recipe (`TrainConfig` with its `Optimizer`, `Schedule` and `Augment`
//! records) read and checked, field by field, before any work: every value outside its
//! domain is an error that names the field, the value and what it may be. Training that
//! would otherwise run on garbage (a negative batch counting steps backwards, a crop
//! padding that blanks every image, a probability of 7) stops before its first step.
//!
//! `check_recipe(cfg, data)` (called first by `std.train`'s `fit`) reads the whole recipe
//! and checks it against the dataset: both splits hold examples, the normalization has
//! one value per channel, a crop's padding is smaller than the images, a checkpoint's
//! directory exists. `prepare` reads the same recipe into the model with the same checks.

use nabla_lang::opt::precision::Products;
use std::path::Path;

use nabla_lang::host::Word;
use nabla_lang::host::heap::Heap;

use super::data::Split;
use nabla_lang::step::Optimizer;

use super::model::{self, Augment, Recipe};
use super::transform::Transform;

/// A recipe as read from the records.
pub struct Config {
    pub recipe: Recipe,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub batch: usize,
    pub checkpoint: String,
    /// The largest crop padding among the augmentations (0: none).
    pub crop: usize,
}

/// Reads a list of `Transform` records (`std.data`'s `to_rgb()`, `resize(n)`,
/// `center_crop(n)`); an error names the entry and its field.
pub fn transforms(heap: &Heap, field: &Field, list: Word) -> Result<Vec<Transform>, String> {
    let mut out = Vec::new();
    for (i, t) in heap.list(list)?.iter().enumerate() {
        let g = |name: &str| field(heap, "Transform", *t, name);
        let at = format!("transform {i}");
        let kind = kind_of(
            &format!("{at}'s kind"),
            heap.str(g("kind")?)?,
            &["to_rgb", "resize", "center_crop"],
        )?;
        let size = || -> Result<usize, String> {
            Ok(at_least(&format!("{at}'s size ({kind})"), g("size")?, 1, "pixels")? as usize)
        };
        out.push(match kind {
            "to_rgb" => Transform::Rgb,
            "resize" => Transform::Resize(size()?),
            _ => Transform::CenterCrop(size()?),
        });
    }
    Ok(out)
}

/// Reads a field of a record: (record type, handle, field) to its word.
pub type Field<'a> = dyn Fn(&Heap, &str, Word, &str) -> Result<Word, String> + 'a;

fn float(w: Word) -> f64 {
    f64::from_bits(w)
}

/// `value` as a finite float in `lo..hi` (`hi` inclusive when `closed`).
fn in_range(
    what: &str,
    v: f64,
    lo: f64,
    hi: f64,
    closed: bool,
    meaning: &str,
) -> Result<f64, String> {
    let ok = v.is_finite() && v >= lo && if closed { v <= hi } else { v < hi };
    if ok {
        Ok(v)
    } else {
        let close = if closed { "]" } else { ")" };
        let hi = if hi.is_infinite() {
            "∞".to_string()
        } else {
            hi.to_string()
        };
        Err(format!(
            "{what} is {v}, but it must be in [{lo}, {hi}{close}: {meaning}"
        ))
    }
}

/// An int field that must be at least `min`.
fn at_least(what: &str, v: Word, min: i64, meaning: &str) -> Result<i64, String> {
    let v = v as i64;
    if v >= min {
        Ok(v)
    } else {
        Err(format!(
            "{what} is {v}, but it must be at least {min}: {meaning}"
        ))
    }
}

/// One of `kinds`, or an error that lists them (and the closest, for a typo).
fn kind_of<'k>(what: &str, got: &str, kinds: &[&'k str]) -> Result<&'k str, String> {
    if let Some(k) = kinds.iter().find(|k| **k == got) {
        return Ok(k);
    }
    let close = nabla_lang::diag::closest(got, kinds.iter().copied())
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    Err(format!(
        "{what} is `{got}`, but it must be one of {}{close}",
        kinds
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Reads and checks the recipe `cfg` (a `TrainConfig`).
pub fn read(heap: &Heap, field: &Field, cfg: Word) -> Result<Config, String> {
    let f = |name: &str| field(heap, "TrainConfig", cfg, name);
    let batch = at_least("TrainConfig.batch", f("batch")?, 1, "examples per step")?;
    // The loop counts steps as `(n + batch - 1) / batch` in 64-bit ints: keep it far from
    // wrapping.
    if batch > i64::from(i32::MAX) {
        return Err(format!(
            "TrainConfig.batch is {batch}, but it must be at most {}",
            i32::MAX
        ));
    }
    at_least(
        "TrainConfig.epochs",
        f("epochs")?,
        0,
        "passes over the training split",
    )?;
    at_least(
        "TrainConfig.warmup_epochs",
        f("warmup_epochs")?,
        0,
        "epochs of warmup",
    )?;
    at_least(
        "TrainConfig.eval_every",
        f("eval_every")?,
        0,
        "epochs between evaluations (0: at the end only)",
    )?;
    let smoothing = in_range(
        "TrainConfig.label_smoothing",
        float(f("label_smoothing")?),
        0.0,
        1.0,
        false,
        "the probability mass spread over the other classes",
    )?;
    let optimizer = optimizer(heap, field, f("optimizer")?)?;
    schedule(heap, field, f("schedule")?)?;
    let mut augment = Vec::new();
    let mut crop = 0;
    for (i, a) in heap.list(f("augment")?)?.iter().enumerate() {
        let g = |name: &str| field(heap, "Augment", *a, name);
        let at = format!("TrainConfig.augment[{i}]");
        match kind_of(
            &format!("{at}.kind"),
            heap.str(g("kind")?)?,
            &["random_crop", "hflip"],
        )? {
            "random_crop" => {
                let pad = at_least(
                    &format!("{at}.pad (random_crop)"),
                    g("pad")?,
                    0,
                    "pixels of zeros on each side before the crop",
                )? as usize;
                crop = crop.max(pad);
                augment.push(Augment::Crop(pad));
            }
            _ => augment.push(Augment::Flip(in_range(
                &format!("{at}.p (hflip)"),
                float(g("p")?),
                0.0,
                1.0,
                true,
                "a probability",
            )?)),
        }
    }
    let floats = |name: &str| -> Result<Vec<f64>, String> {
        Ok(heap.list(f(name)?)?.iter().map(|w| float(*w)).collect())
    };
    let (mean, std) = (floats("normalize_mean")?, floats("normalize_std")?);
    if mean.len() != std.len() {
        return Err(format!(
            "TrainConfig.normalize_mean has {} values and TrainConfig.normalize_std {}: one of each per channel",
            mean.len(),
            std.len()
        ));
    }
    for (i, m) in mean.iter().enumerate() {
        in_range(
            &format!("TrainConfig.normalize_mean[{i}]"),
            *m,
            f64::MIN,
            f64::MAX,
            true,
            "a finite mean",
        )?;
    }
    for (i, s) in std.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0) {
            return Err(format!(
                "TrainConfig.normalize_std[{i}] is {s}, but it must be positive: inputs are divided by it"
            ));
        }
    }
    let precision = kind_of(
        "TrainConfig.precision",
        heap.str(f("precision")?)?,
        &["f32", "bf16"],
    )?;
    let products = Products::parse(precision).unwrap_or_default();
    let checkpoint = heap.str(f("checkpoint")?)?.to_string();
    Ok(Config {
        recipe: Recipe {
            optimizer,
            smoothing,
            products,
            augment,
            seed: f("seed")?,
        },
        mean: mean.iter().map(|m| *m as f32).collect(),
        std: std.iter().map(|s| *s as f32).collect(),
        batch: batch as usize,
        checkpoint,
        crop,
    })
}

fn optimizer(heap: &Heap, field: &Field, opt: Word) -> Result<Optimizer, String> {
    let o = |name: &str| field(heap, "Optimizer", opt, name);
    let kind = kind_of("Optimizer.kind", heap.str(o("kind")?)?, &["sgd", "adam"])?;
    in_range(
        "Optimizer.lr",
        float(o("lr")?),
        0.0,
        f64::INFINITY,
        false,
        "the learning rate (a negative one climbs the loss)",
    )?;
    let momentum = in_range(
        "Optimizer.momentum",
        float(o("momentum")?),
        0.0,
        1.0,
        false,
        "the fraction of the last step kept",
    )?;
    let nesterov = o("nesterov")? != 0;
    if nesterov && momentum == 0.0 {
        return Err("Optimizer.nesterov is true but Optimizer.momentum is 0: Nesterov's update needs a momentum".into());
    }
    let beta1 = in_range(
        "Optimizer.beta1",
        float(o("beta1")?),
        0.0,
        1.0,
        false,
        "Adam's first-moment decay",
    )?;
    let beta2 = in_range(
        "Optimizer.beta2",
        float(o("beta2")?),
        0.0,
        1.0,
        false,
        "Adam's second-moment decay",
    )?;
    let eps = float(o("eps")?);
    if !(eps.is_finite() && eps > 0.0) {
        return Err(format!(
            "Optimizer.eps is {eps}, but it must be positive: Adam divides by sqrt(v) + eps"
        ));
    }
    let weight_decay = in_range(
        "Optimizer.weight_decay",
        float(o("weight_decay")?),
        0.0,
        f64::INFINITY,
        false,
        "the decay rate of the weights",
    )?;
    let clip = float(o("clip_norm")?);
    if clip != 0.0 {
        in_range(
            "Optimizer.clip_norm",
            clip,
            0.0,
            f64::INFINITY,
            false,
            "a gradient norm",
        )?;
        return Err(
            "gradient clipping (`Optimizer.clip_norm`) is not supported by the compiled step yet"
                .into(),
        );
    }
    model::optimizer(
        kind,
        momentum,
        nesterov,
        beta1,
        beta2,
        eps,
        weight_decay,
        o("decoupled")? != 0,
    )
}

fn schedule(heap: &Heap, field: &Field, s: Word) -> Result<(), String> {
    let g = |name: &str| field(heap, "Schedule", s, name);
    match kind_of(
        "Schedule.kind",
        heap.str(g("kind")?)?,
        &["constant", "step", "cosine"],
    )? {
        "step" => {
            at_least(
                "Schedule.every (step)",
                g("every")?,
                1,
                "epochs between decays",
            )?;
            let gamma = float(g("gamma")?);
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(format!(
                    "Schedule.gamma (step) is {gamma}, but it must be positive: the rate is multiplied by it"
                ));
            }
        }
        "cosine" => {
            in_range(
                "Schedule.floor (cosine)",
                float(g("floor")?),
                0.0,
                1.0,
                true,
                "the final fraction of the base rate",
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// Checks a recipe against the dataset it trains on, before any step.
pub fn check_data(c: &Config, train: &Split, test: &Split) -> Result<(), String> {
    for s in [train, test] {
        if s.is_empty() {
            return Err(format!(
                "{} has no examples: there is nothing to {}",
                s.name,
                if std::ptr::eq(s, train) {
                    "train on"
                } else {
                    "evaluate on"
                }
            ));
        }
    }
    // The shape the net sees, after the splits' transforms.
    let [c_in, h, w] = train.input();
    if test.input() != train.input() {
        let dims = |s: [usize; 3]| format!("{}×{}×{}", s[0], s[1], s[2]);
        return Err(format!(
            "{} has examples of {} but {} of {}: transform both splits alike (`transform(data, [...])` does)",
            train.name,
            dims(train.input()),
            test.name,
            dims(test.input())
        ));
    }
    if !c.mean.is_empty() && c.mean.len() != c_in {
        return Err(format!(
            "TrainConfig.normalize_mean and normalize_std have {} values, but {} has {c_in} channels",
            c.mean.len(),
            train.name
        ));
    }
    if c.crop > 0 && c.crop >= h.min(w) {
        return Err(format!(
            "random_crop's pad is {}, but {}'s images are {h}×{w}: a crop could then hold only padding (the pad must be less than {})",
            c.crop,
            train.name,
            h.min(w)
        ));
    }
    if !c.checkpoint.is_empty() {
        let path = Path::new(&c.checkpoint);
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir
            && !d.is_dir()
        {
            return Err(format!(
                "TrainConfig.checkpoint is {:?}, but the directory {} does not exist",
                c.checkpoint,
                d.display()
            ));
        }
        if path.is_dir() {
            return Err(format!(
                "TrainConfig.checkpoint is {:?}, which is a directory, not a file",
                c.checkpoint
            ));
        }
    }
    Ok(())
}
