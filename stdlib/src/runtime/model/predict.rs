//! Predictions: a model's logits and class probabilities for examples of a split, from
//! the prediction step (`nabla_lang::step::predict_step`: the net's output and its
//! softmax, in eval mode), compiled once per batch size like the other steps. The images are normalized
//! as the model was trained (its recipe's, or its checkpoint's, normalization).

use nabla_lang::backend::Backend;
use nabla_lang::check::Program;
use nabla_lang::step::{OutRole, predict_step};

use super::{Model, Split, Which, err};

/// What a model predicts for the examples of a split, in order: `classes` values per
/// example in each.
#[derive(Clone, Debug, Default)]
pub struct Predictions {
    pub classes: usize,
    /// The net's outputs.
    pub logits: Vec<f32>,
    /// Their softmax.
    pub probs: Vec<f32>,
}

impl Predictions {
    /// Each example's class probabilities.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.probs.chunks(self.classes.max(1))
    }
}

impl<B: Backend> Model<B> {
    /// The logits and class probabilities of every example of `split`, in order,
    /// computed in batches of `batch`.
    pub fn predict(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Split,
        batch: usize,
    ) -> Result<Predictions, String> {
        let n = split.len();
        let mut out = Predictions::default();
        let mut start = 0;
        while start < n {
            if nabla_lang::host::interrupt::pending() {
                return Err(nabla_lang::host::interrupt::MESSAGE.into());
            }
            let b = batch.max(1).min(n - start);
            let idx: Vec<usize> = (start..start + b).collect();
            self.gather(split, &idx, false)?;
            if !self.predict.contains_key(&b) {
                let step = predict_step(p, &self.net, b, Some(&split.input()))
                    .and_then(|s| s.with_products(self.products()))
                    .map_err(|d| self.unfit(split, Some(d.message)))?;
                let exe = self
                    .prepare_exe(backend, &step, &[])
                    .map_err(|e| format!("the prediction step for batch {b}: {e}"))?;
                if exe.outputs.as_slice() != [OutRole::Logits, OutRole::Probabilities] {
                    return Err(
                        "internal error: the prediction step returns no logits and probabilities"
                            .into(),
                    );
                }
                self.predict.insert(b, exe);
            }
            let outs = self.run(backend, Which::Predict, split, &[]).map_err(|e| {
                format!(
                    "predicting examples {start}..{} of {}: {e}",
                    start + b,
                    split.name
                )
            })?;
            let [logits, probs] = outs.as_slice() else {
                return Err("the prediction step returned the wrong number of outputs".into());
            };
            let (logits, probs) = (
                backend.download(logits).map_err(err)?,
                backend.download(probs).map_err(err)?,
            );
            let classes = probs.len() / b.max(1);
            if classes == 0 || classes * b != probs.len() || logits.len() != probs.len() {
                return Err(format!(
                    "the prediction step returned {} values for {b} examples",
                    probs.len()
                ));
            }
            out.classes = classes;
            out.logits.extend(logits);
            out.probs.extend(probs);
            start += b;
        }
        Ok(out)
    }
}
