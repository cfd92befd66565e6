//! Checkpoints: a model's parameters, state, optimizer slots and progress in one
//! safetensors file, written atomically (a temporary file beside it, synced, renamed) and
//! read whole — every tensor, slot and metadata value checked — before anything of the
//! model is replaced.

use std::path::Path;

use nabla_lang::backend::Backend;

use super::super::tensors::{Named, Tensors};
use nabla_lang::check::Program;

use super::{Model, Role, Tensor, err};

impl<B: Backend> Model<B> {
    /// Writes the training checkpoint — params, state, optimizer slots and progress — to
    /// `path` as safetensors, atomically: a temporary file beside it, synced, then renamed
    /// over it. Training resumes from it.
    pub fn checkpoint(&self, backend: &B, path: &Path) -> Result<(), String> {
        self.write(backend, path, true)
    }

    /// Writes the model alone — its parameters and net state (batchnorm statistics), no
    /// optimizer slots, no progress — to `path`, atomically: the file to share, load for
    /// predictions or fine-tune from (with fresh optimizer slots).
    pub fn save(&self, backend: &B, path: &Path) -> Result<(), String> {
        self.write(backend, path, false)
    }

    fn write(&self, backend: &B, path: &Path, training: bool) -> Result<(), String> {
        let mut items = Vec::new();
        for t in self
            .tensors
            .iter()
            .filter(|t| training || t.role != Role::Slot)
        {
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
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("net".to_string(), self.net.clone());
        // The input shape it was made for: parameters may depend on it (`input_of`).
        let dims: Vec<String> = self.input.iter().map(|d| d.to_string()).collect();
        meta.insert("input".to_string(), dims.join(","));
        if training {
            meta.insert("format".to_string(), "nabla-checkpoint-1".to_string());
            meta.insert("epoch".to_string(), self.epoch.to_string());
            meta.insert("steps".to_string(), self.steps.to_string());
        } else {
            meta.insert("format".to_string(), "nabla-model-1".to_string());
        }
        // The normalization the model was trained with, so that predictions apply it.
        let list = |v: &[f32]| {
            v.iter()
                .map(|x| format!("{x:e}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.mean.is_empty() {
            meta.insert("normalize_mean".to_string(), list(&self.mean));
            meta.insert("normalize_std".to_string(), list(&self.std));
        }
        Tensors { items }.save(path, meta)
    }

    /// A model of net `net` holding the checkpoint or saved model at `path`: made for
    /// the input shape the file records (the net's declared one if it records none),
    /// then [`Model::load`]ed.
    pub fn from_file(p: &Program, backend: &B, net: &str, path: &Path) -> Result<Self, String> {
        let input = input_of(path)?;
        let mut m = Self::init_at(p, backend, net, 0, input.as_deref())?;
        m.load(backend, path)?;
        Ok(m)
    }

    /// Reads a checkpoint or a model written by [`Model::checkpoint`] or [`Model::save`]
    /// (or any safetensors file with the
    /// model's tensor names) into this model; every tensor of the model must be in it with
    /// its shape, and it must be of the same net. F32, F64, F16 and BF16 tensors are read
    /// (as f32). Optimizer slots are restored when present. A bad file leaves the model
    /// as it was.
    pub fn load(&mut self, backend: &B, path: &Path) -> Result<(), String> {
        self.forget_steps();
        let shown = path.display();
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read checkpoint {shown}: {e}"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            format!("{shown} is not a valid safetensors file (truncated or corrupt): {e}")
        })?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if let Some(net) = meta.get("net")
            && *net != self.net
        {
            return Err(format!(
                "{shown} is a checkpoint of net `{net}`, not `{}`",
                self.net
            ));
        }
        let mut loaded = Vec::new();
        for t in &self.tensors {
            let view = match st.tensor(&t.name) {
                Ok(v) => v,
                Err(_) if t.role == Role::Slot => continue,
                Err(_) => {
                    return Err(format!(
                        "{shown} has no tensor `{}`: it is not a checkpoint of net `{}`",
                        t.name, self.net
                    ));
                }
            };
            if view.shape() != t.shape.as_slice() {
                return Err(format!(
                    "{shown}: `{}` has shape {:?}, but the net's has shape {:?}",
                    t.name,
                    view.shape(),
                    t.shape
                ));
            }
            loaded.push(floats_of(&shown, &t.name, &view, t.role == Role::State)?);
        }
        // Optimizer slots in the file that the model has not made yet; any other tensor
        // the model lacks means the file is of another net or another naming: loading
        // part of it would silently leave a model that is not what was saved.
        let mut slots = Vec::new();
        let mut extra = Vec::new();
        for (name, view) in st.tensors() {
            if self.tensors.iter().any(|t| t.name == name) {
                continue;
            }
            if name.starts_with("opt.") {
                let v = floats_of(&shown, &name, &view, false)?;
                slots.push((name, view.shape().to_vec(), v));
            } else {
                extra.push(name);
            }
        }
        if !extra.is_empty() {
            extra.sort();
            let more = if extra.len() > 3 {
                format!(" and {} more", extra.len() - 3)
            } else {
                String::new()
            };
            return Err(format!(
                "{shown} has {} tensor{} that net `{}` does not: {}{more} (a file of another net, or of other parameter names: `{}` names its own `{}`)",
                extra.len(),
                if extra.len() == 1 { "" } else { "s" },
                self.net,
                extra
                    .iter()
                    .take(3)
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.net,
                self.tensors.first().map_or("", |t| t.name.as_str()),
            ));
        }
        let floats = |key: &str| -> Result<Vec<f32>, String> {
            meta.get(key).map_or(Ok(Vec::new()), |v| {
                v.split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<f32>()
                            .map_err(|_| format!("{shown}: `{key}` holds `{x}`, not a number"))
                    })
                    .collect()
            })
        };
        let (mean, std) = (floats("normalize_mean")?, floats("normalize_std")?);
        if mean.len() != std.len() || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format!(
                "{shown}: its normalization is not one positive standard deviation per mean"
            ));
        }
        let channels = self.input.first().copied().unwrap_or(0);
        if !mean.is_empty() && mean.len() != channels {
            return Err(format!(
                "{shown}: its normalization has {} values, but `{}` takes {channels} channels",
                mean.len(),
                self.net
            ));
        }
        // Only now replace anything: a bad checkpoint leaves the model as it was.
        let mut it = loaded.into_iter();
        for t in self.tensors.iter_mut() {
            if t.role == Role::Slot && st.tensor(&t.name).is_err() {
                continue;
            }
            if let Some(v) = it.next() {
                t.buf = Some(backend.upload(&t.shape, &v).map_err(err)?);
            }
        }
        for (name, shape, v) in slots {
            let buf = backend.upload(&shape, &v).map_err(err)?;
            self.tensors.push(Tensor {
                name,
                shape,
                role: Role::Slot,
                buf: Some(buf),
            });
        }
        self.epoch = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
        self.steps = meta.get("steps").and_then(|e| e.parse().ok()).unwrap_or(0);
        if !mean.is_empty() {
            (self.mean, self.std) = (mean, std);
        }
        Ok(())
    }
}

/// A tensor of a checkpoint as f32 (F32, F64, F16 and BF16 are read). A state tensor may
/// also be an integer: PyTorch keeps batchnorm's `num_batches_tracked` as an int64.
/// The input shape a checkpoint or saved model was made for (its `input` metadata), if
/// it records one: a model to load it into is made for that shape. Reads the file's
/// header only.
pub fn input_of(path: &Path) -> Result<Option<Vec<usize>>, String> {
    use std::io::Read;
    let shown = path.display();
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read checkpoint {shown}: {e}"))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| format!("{shown} is not a valid safetensors file (too short)"))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(format!(
            "{shown} is not a valid safetensors file (a header of {len} bytes)"
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| format!("{shown} is not a valid safetensors file (truncated header)"))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format!("{shown} is not a valid safetensors file (its header: {e})"))?;
    let Some(input) = json
        .get("__metadata__")
        .and_then(|m| m.get("input"))
        .and_then(|v| v.as_str())
    else {
        return Ok(None);
    };
    if input.is_empty() {
        return Ok(None);
    }
    let dims: Result<Vec<usize>, _> = input.split(',').map(|d| d.trim().parse()).collect();
    dims.map(Some)
        .map_err(|_| format!("{shown}: its input shape `{input}` is not a list of sizes"))
}

fn floats_of(
    shown: &dyn std::fmt::Display,
    name: &str,
    view: &safetensors::tensor::TensorView,
    state: bool,
) -> Result<Vec<f32>, String> {
    use safetensors::Dtype::{I32, I64};
    let b = view.data();
    match view.dtype() {
        I64 if state => {
            return Ok(b
                .chunks_exact(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect());
        }
        I32 if state => {
            return Ok(b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect());
        }
        _ => {}
    }
    super::super::tensors::to_f32(view.dtype(), b).ok_or_else(|| {
        format!(
            "{shown}: `{name}` is {:?}; nabla reads F32, F64, F16 and BF16 tensors{}",
            view.dtype(),
            if state { " (and I64 or I32 state)" } else { "" }
        )
    })
}
