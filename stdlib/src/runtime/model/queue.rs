//! Train steps in a queue: a step is sent to the backend and its loss is read later, all
//! the losses queued since the last read at once ([`Model::drain`]), so that a backend
//! that runs ahead of the host (a GPU) is never waited for inside an epoch except to
//! report. A backend that does not run ahead (the CPU) has each loss read as its step
//! returns, which costs nothing there, so a loss that is not finite stops training at
//! its own step.
//!
//! A loss that is not finite is explained by replaying: a copy of the model is taken
//! every [`REPLAY_EVERY`] steps (only when every earlier loss has been read, so that the
//! copy is known to be finite), with a log of the steps since; the failing step is run
//! again from the last finite values on the reference interpreter, which names the op
//! that first produced a NaN or an infinity.

use std::rc::Rc;

use nabla_lang::backend::Backend;
use nabla_lang::backend::memory;
use nabla_lang::check::Program;
use nabla_lang::step::{InRole, train_step_with};

use super::{Model, Role, Split, Tensor, Which, describe_node, err, label_classes, loss};

/// Steps between copies of the model: a download of the model every this many steps
/// (well under 1% of training time), and at most about this many steps to replay.
const REPLAY_EVERY: usize = 200;

/// On a backend that runs ahead, a copy is due but waits for the losses queued before it
/// to be read; past this many logged steps it reads them itself (waiting once).
const REPLAY_LIMIT: usize = 8 * REPLAY_EVERY;

/// Train steps larger than this (in FLOPs) are not run on the interpreter to find the
/// first non-finite value (it would take minutes).
const LOCATE_MAX_FLOPS: u64 = 20_000_000_000;

/// One logged step: enough to run it again.
pub(super) struct Logged {
    /// Its optimizer step (1 for the first).
    step: u64,
    /// Epochs completed when it ran.
    epoch: u64,
    split: Rc<Split>,
    idx: Vec<usize>,
    lr: f64,
}

/// The last copy of every tensor (with the step count and augmentation generator it
/// was taken at) and the steps since.
#[derive(Default)]
pub(super) struct Replay {
    snapshot: Option<(Vec<Vec<f32>>, u64, u64)>,
    log: Vec<Logged>,
}

/// Losses of queued steps: those not yet read, and a running sum of those read.
pub(super) struct Losses<Buf> {
    /// Each queued step's loss buffer, with its optimizer step.
    pending: Vec<(u64, Buf)>,
    /// Sum and count of the losses read since the last [`Model::mean_loss`].
    sum: f64,
    n: u64,
    /// The latest loss read.
    latest: f64,
}

impl<Buf> Default for Losses<Buf> {
    fn default() -> Self {
        Losses {
            pending: Vec::new(),
            sum: 0.0,
            n: 0,
            latest: f64::NAN,
        }
    }
}

impl<B: Backend> Model<B> {
    /// Queues one optimizer step on examples `idx` of `split` at rate `lr`: returns once
    /// the backend has it, without waiting for its result. On a backend that does not run
    /// ahead, its loss is read (and checked) at once.
    pub fn queue_step(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Rc<Split>,
        idx: &[usize],
        lr: f64,
    ) -> Result<(), String> {
        self.record(p, backend, split, idx, lr)?;
        let loss = self.run_step(p, backend, split, idx, lr)?;
        self.losses.pending.push((self.steps, loss));
        if !backend.runs_ahead() {
            self.drain(p, backend)?;
        }
        Ok(())
    }

    /// One optimizer step, waiting for its loss (scripts that print every step).
    pub fn train_step(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Rc<Split>,
        idx: &[usize],
        lr: f64,
    ) -> Result<f64, String> {
        self.queue_step(p, backend, split, idx, lr)?;
        self.drain(p, backend)?;
        Ok(self.losses.latest)
    }

    /// Reads the losses of every queued step (waiting for them). The first that is not
    /// finite is an error naming its step, explained by a replay (see the module docs);
    /// the queue is emptied either way.
    pub fn drain(&mut self, p: &Program, backend: &B) -> Result<(), String> {
        if self.losses.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.losses.pending);
        let bufs: Vec<&B::Buffer> = pending.iter().map(|(_, b)| b).collect();
        let read = backend.download_all(&bufs).map_err(err)?;
        for ((step, _), values) in pending.iter().zip(read) {
            let loss = values.first().copied().map_or(f64::NAN, f64::from);
            if !loss.is_finite() {
                return Err(self.diverged(p, backend, *step, loss));
            }
            self.losses.sum += loss;
            self.losses.n += 1;
            self.losses.latest = loss;
        }
        Ok(())
    }

    /// The mean loss of the steps read since the last call, after reading every queued
    /// one; starts the next mean.
    pub fn mean_loss(&mut self, p: &Program, backend: &B) -> Result<f64, String> {
        self.drain(p, backend)?;
        let (sum, n) = (self.losses.sum, self.losses.n);
        if n == 0 {
            return Err("no train steps have run since the mean loss was last read".into());
        }
        (self.losses.sum, self.losses.n) = (0.0, 0);
        Ok(sum / n as f64)
    }

    /// The mean loss of the steps read so far since the last [`Model::mean_loss`] (for
    /// a progress bar: reads nothing), when there are any.
    pub fn running_loss(&self) -> Option<f64> {
        (self.losses.n > 0).then(|| self.losses.sum / self.losses.n as f64)
    }

    /// Forgets queued losses and the replay log (the model's tensors were replaced).
    pub(super) fn forget_steps(&mut self) {
        self.losses = Losses::default();
        self.replay = Replay::default();
    }

    /// Runs the train step on examples `idx` of `split` (compiling it for this batch
    /// size the first time); returns its loss buffer, unread.
    fn run_step(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Split,
        idx: &[usize],
        lr: f64,
    ) -> Result<B::Buffer, String> {
        let (optimizer, smoothing) = self
            .recipe
            .as_ref()
            .map(|r| (r.optimizer, r.smoothing))
            .ok_or("the model has no training recipe")?;
        self.gather(split, idx, true)?;
        let b = idx.len();
        if !self.train.contains_key(&b) {
            let eps = [("eps", smoothing)];
            let step = train_step_with(
                p,
                &self.net,
                b,
                loss(&eps),
                &optimizer,
                Some(&split.input()),
            )
            .and_then(|s| s.with_products(self.products()))
            .map_err(|d| self.unfit(split, Some(d.message)))?;
            for slot in &step.slots {
                if !self.tensors.iter().any(|t| t.name == *slot) {
                    let shape = step
                        .graph
                        .inputs()
                        .find(|(_, n, _)| n == slot)
                        .map(|(v, _, _)| step.graph.node(v).shape.clone())
                        .unwrap_or_default();
                    let zeros = memory::zeroed(
                        memory::numel(&shape).unwrap_or(usize::MAX),
                        &format!("the optimizer's `{slot}`"),
                        || backend.memory_available(),
                    )?;
                    let buf = backend.upload(&shape, &zeros).map_err(err)?;
                    self.tensors.push(Tensor {
                        name: slot.clone(),
                        shape,
                        role: Role::Slot,
                        buf: Some(buf),
                    });
                }
            }
            let names: Vec<&str> = optimizer.scalars(0.0, 1).iter().map(|(n, _)| *n).collect();
            self.classes = self.classes.or(label_classes(&step.graph));
            let exe = self
                .prepare_exe(backend, &step, &names)
                .map_err(|e| format!("the train step for batch {b}: {e}"))?;
            self.train.insert(b, exe);
        }
        self.check_labels(split, idx)?;
        self.steps += 1;
        let scalars: Vec<f64> = optimizer
            .scalars(lr, self.steps)
            .iter()
            .map(|(_, v)| *v)
            .collect();
        let out = self
            .run(backend, Which::Train, split, &scalars)
            .map_err(|e| format!("optimizer step {}: {e}", self.steps))?;
        out.into_iter()
            .next()
            .ok_or_else(|| "the step returned nothing".into())
    }

    /// Logs a step, after taking a copy of the model when one is due and every earlier
    /// loss has been read (reading them first once the log is long).
    fn record(
        &mut self,
        p: &Program,
        backend: &B,
        split: &Rc<Split>,
        idx: &[usize],
        lr: f64,
    ) -> Result<(), String> {
        let r = &self.replay;
        let due = r.snapshot.is_none() || r.log.len() >= REPLAY_EVERY;
        if due && !self.losses.pending.is_empty() && r.log.len() >= REPLAY_LIMIT {
            self.drain(p, backend)?;
        }
        if due && self.losses.pending.is_empty() {
            let mut data = Vec::with_capacity(self.tensors.len());
            for t in &self.tensors {
                data.push(match &t.buf {
                    Some(b) => backend.download(b).map_err(err)?,
                    None => Vec::new(),
                });
            }
            self.replay.snapshot = Some((data, self.steps, self.rng));
            self.replay.log.clear();
        }
        self.replay.log.push(Logged {
            step: self.steps + 1,
            epoch: self.epoch,
            split: split.clone(),
            idx: idx.to_vec(),
            lr,
        });
        Ok(())
    }

    /// The error for optimizer step `step`, whose loss is `loss` (not finite): where it
    /// ran, the first op that produced a non-finite value, which parameter is no longer
    /// finite, and a hint. Leaves the model as it was before that step where the replay
    /// succeeds, and forgets every queued step.
    fn diverged(&mut self, p: &Program, backend: &B, step: u64, loss: f64) -> String {
        self.losses.pending.clear();
        // After finite steps, a non-finite one is usually a step too long.
        let hint = if step > 1 {
            " (the step diverged: try a lower learning rate)"
        } else {
            ""
        };
        let broken = match self.non_finite(backend) {
            Some(t) => format!("; parameter `{t}` is no longer finite{hint}"),
            None => String::new(),
        };
        let at = self.replay.log.iter().find(|l| l.step == step);
        let (epoch, lr) = (
            at.map_or(self.epoch, |l| l.epoch) + 1,
            at.map(|l| {
                let lr = l.lr;
                if lr != 0.0 && !(1e-4..1e6).contains(&lr.abs()) {
                    format!(", learning rate {lr:e}")
                } else {
                    format!(", learning rate {lr}")
                }
            }),
        );
        let first = match self.locate_non_finite(p, backend, step) {
            Some(at) => format!("; the first value that is not finite comes from {at}"),
            None => String::new(),
        };
        format!(
            "the loss is {loss} at optimizer step {step} (epoch {epoch}{}){first}{broken}",
            lr.unwrap_or_default()
        )
    }

    /// The first tensor of the model (parameters and state) holding a value that is not
    /// finite.
    pub fn non_finite(&self, backend: &B) -> Option<String> {
        self.tensors
            .iter()
            .filter(|t| t.role != Role::Slot)
            .find_map(|t| {
                let data = backend.download(t.buf.as_ref()?).ok()?;
                data.iter().any(|v| !v.is_finite()).then(|| t.name.clone())
            })
    }

    /// Runs the steps logged before optimizer step `step` again from the last copy, then
    /// that step on the reference interpreter (in f32), and says which op first produced
    /// a NaN or an infinity, with its source position. The model is left as it was before
    /// that step (its last finite values). `None` when it cannot be found (the step not
    /// logged, a step too large for the interpreter, or every value finite there).
    fn locate_non_finite(&mut self, p: &Program, backend: &B, step: u64) -> Option<String> {
        let (data, steps, rng) = self.replay.snapshot.take()?;
        let log = std::mem::take(&mut self.replay.log);
        let k = log.iter().position(|l| l.step == step)?;
        let (before, last) = (&log[..k], &log[k]);
        for (t, d) in self
            .tensors
            .iter_mut()
            .zip(data.iter().map(Some).chain(std::iter::repeat(None)))
        {
            let zeros;
            let d = match d {
                Some(d) => d,
                None => {
                    zeros = vec![0.0; memory::numel(&t.shape).unwrap_or(0)];
                    &zeros
                }
            };
            backend.write(t.buf.as_mut()?, &t.shape, d).ok()?;
        }
        (self.steps, self.rng) = (steps, rng);
        for l in before {
            let loss = self.run_step(p, backend, &l.split, &l.idx, l.lr).ok()?;
            let v = backend.download(&loss).ok()?;
            if !v.first().is_some_and(|x| x.is_finite()) {
                return None;
            }
        }
        let (optimizer, smoothing) = self.recipe.as_ref().map(|r| (r.optimizer, r.smoothing))?;
        let split = &last.split;
        self.gather(split, &last.idx, true).ok()?;
        let eps = [("eps", smoothing)];
        let step = train_step_with(
            p,
            &self.net,
            last.idx.len(),
            loss(&eps),
            &optimizer,
            Some(&split.input()),
        )
        .and_then(|s| s.with_products(self.products()))
        .ok()?;
        let g = &step.graph;
        if nabla_lang::ir::flops(g) > LOCATE_MAX_FLOPS {
            return None;
        }
        let scalars = optimizer.scalars(last.lr, self.steps + 1);
        let mut values = std::collections::HashMap::new();
        for t in &self.tensors {
            values.insert(t.name.clone(), backend.download(t.buf.as_ref()?).ok()?);
        }
        let x = self.batch_images(split);
        let y = &self.y;
        let input = |name: &str, _| {
            let (v, _, _) = g.inputs().find(|(_, n, _)| *n == name)?;
            let n = g.node(v);
            let role = step.signature.inputs.iter().find(|(n, _)| n == name)?.1;
            let data: Vec<f64> = match role {
                InRole::Images => x.iter().map(|v| f64::from(*v)).collect(),
                InRole::Labels => y.iter().map(|v| f64::from(*v)).collect(),
                InRole::Hyper(h) => vec![scalars.iter().find(|(s, _)| *s == h.name())?.1],
                InRole::Param | InRole::State | InRole::Slot => values
                    .get(name)?
                    .iter()
                    .map(|v| f64::from(*v))
                    .collect::<Vec<f64>>(),
            };
            Some(nabla_lang::interp::Tensor::new(
                n.dtype,
                n.shape.clone(),
                data,
            ))
        };
        let v = nabla_lang::interp::first_non_finite(g, &input, nabla_lang::interp::Precision::F32)
            .ok()??;
        Some(describe_node(p, g, v))
    }
}
