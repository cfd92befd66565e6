//! Predictions: a model's class probabilities for examples of a split, from the
//! prediction step (`nabla_lang::step::predict_step`: the softmax of the logits, in eval
//! mode), compiled once per batch size like the other steps. The images are normalized
//! as the model was trained (its recipe's, or its checkpoint's, normalization).

use nabla_lang::backend::Backend;
use nabla_lang::check::Program;
use nabla_lang::step::{OutRole, predict_step};

use super::{Model, Split, Which, err};

impl<B: Backend> Model<B> {
    /// The class probabilities of every example of `split`, in order, computed in
    /// batches of `batch`: one row of `classes` values per example.
    pub fn predict(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Split,
        batch: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        let n = split.len();
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            if nabla_lang::host::interrupt::pending() {
                return Err(nabla_lang::host::interrupt::MESSAGE.into());
            }
            let b = batch.max(1).min(n - start);
            let idx: Vec<usize> = (start..start + b).collect();
            self.gather(split, &idx, false)?;
            if !self.predict.contains_key(&b) {
                let step = predict_step(p, &self.net, b, Some(&split.shape))
                    .and_then(|s| s.with_products(self.products()))
                    .map_err(|d| d.message)?;
                let exe = self
                    .prepare_exe(backend, &step, &[])
                    .map_err(|e| format!("the prediction step for batch {b}: {e}"))?;
                if exe.outputs.as_slice() != [OutRole::Probabilities] {
                    return Err(
                        "internal error: the prediction step returns no probabilities".into(),
                    );
                }
                self.predict.insert(b, exe);
            }
            let probs = self.run(backend, Which::Predict, split, &[]).map_err(|e| {
                format!(
                    "predicting examples {start}..{} of {}: {e}",
                    start + b,
                    split.name
                )
            })?;
            let values = backend
                .download(
                    probs
                        .first()
                        .ok_or("the prediction step returned nothing")?,
                )
                .map_err(err)?;
            let classes = values.len() / b.max(1);
            if classes == 0 || classes * b != values.len() {
                return Err(format!(
                    "the prediction step returned {} values for {b} examples",
                    values.len()
                ));
            }
            out.extend(values.chunks(classes).map(<[f32]>::to_vec));
            start += b;
        }
        Ok(out)
    }
}
