//! Reductions (sums, means, maxima over any axes, accumulated in f64, split over threads
//! by output or by the outermost reduced dim), argmax, gather and one-hot.

use nabla_lang::ir::Reduce;
use rayon::prelude::*;

use super::*;

/// Reductions whose contiguous runs are shorter than this read their input a slab at a
/// time (see [`reduce_from`]), for slabs (times inputs) of at most [`SLAB_MAX`] elements.
const SHORT_RUN: usize = 64;
const SLAB_MAX: usize = 1 << 16;

/// Dims merged where neighbours are both reduced or both kept (size-1 dims dropped):
/// `(size, reduced)` from outermost to innermost.
fn collapse(shape: &[usize], axes: &[usize]) -> Vec<(usize, bool)> {
    let mut out: Vec<(usize, bool)> = Vec::new();
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let r = axes.contains(&d);
        match out.last_mut() {
            Some((m, lr)) if *lr == r => *m *= n,
            _ => out.push((n, r)),
        }
    }
    out
}

/// Sum or max of `x` (shape `shape`) over `axes` into `out` (the kept dims in order).
/// Sums accumulate in f64.
pub fn reduce(x: &[f32], shape: &[usize], axes: &[usize], op: Reduce, out: &mut [f32]) {
    reduce_from(&Source::Slice(x), shape, axes, op, &mut [out]);
}

/// Where a reduction reads its input.
pub enum Source<'a> {
    /// A materialized tensor.
    Slice(&'a [f32]),
    /// A fused loop computing the inputs of `count` reductions (its stores, in order) at
    /// any index, and its leaf pointers (the store pointers are supplied per run).
    Loop(crate::fuse::LoopFn, &'a [*mut f32], usize),
}

// SAFETY: the loop is immutable code and its leaves are only read, by any thread.
unsafe impl Sync for Source<'_> {}

impl Source<'_> {
    /// How many reductions read this source.
    fn count(&self) -> usize {
        match self {
            Source::Slice(_) => 1,
            Source::Loop(_, _, count) => *count,
        }
    }

    /// Elements `start..start + len` of each input, one after the other, computed into
    /// `scratch` if need be.
    fn run<'s>(&'s self, start: usize, len: usize, scratch: &'s mut Scratch) -> &'s [f32] {
        match self {
            Source::Slice(x) => &x[start..][..len],
            Source::Loop(f, leaves, count) => {
                scratch.values.resize(count * len, 0.0);
                let ps = &mut scratch.pointers;
                ps.clear();
                ps.extend_from_slice(leaves);
                // The loop stores element i of input j at `store_j + i`: point it so that
                // element `start` lands at values[j·len]. Only start..start+len is written.
                let values = scratch.values.as_mut_ptr();
                ps.extend((0..*count).map(|j| values.wrapping_add(j * len).wrapping_sub(start)));
                // SAFETY: leaves cover the whole iteration space; stores stay in values.
                unsafe { f(ps.as_ptr(), start, start + len) };
                &scratch.values
            }
        }
    }
}

/// A reduction thread's buffers for computing a fused input run by run, reused across
/// runs so that no run allocates.
#[derive(Default)]
struct Scratch {
    values: Vec<f32>,
    pointers: Vec<*mut f32>,
}

/// [`reduce`] of the inputs read through `src` into `outs` (one per input, all of the
/// same size): a loop feeding several reductions over the same axes (batchnorm's
/// backward sums) runs once for all of them.
pub fn reduce_from(
    src: &Source,
    shape: &[usize],
    axes: &[usize],
    op: Reduce,
    outs: &mut [&mut [f32]],
) {
    let dims = collapse(shape, axes);
    // Strides of the collapsed dims in x; offsets of every reduced position except the
    // innermost dim when that dim is reduced (then it is a contiguous run).
    let mut strides = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1].0;
    }
    let run = match dims.last() {
        Some((n, true)) => *n,
        _ => 1,
    };
    let outer_reduced: Vec<usize> = (0..dims.len())
        .filter(|d| dims[*d].1 && !(run > 1 && *d == dims.len() - 1))
        .collect();
    let offsets = |from: usize| {
        let mut roff = vec![0usize];
        for &d in outer_reduced.iter().filter(|d| **d >= from) {
            let st = strides[d];
            roff = roff
                .iter()
                .flat_map(|o| (0..dims[d].0).map(move |i| o + i * st))
                .collect();
        }
        roff
    };
    let roff = offsets(0);
    let kept: Vec<usize> = (0..dims.len()).filter(|d| !dims[*d].1).collect();
    if let (Source::Slice(x), Some(&(inner, false)), [out]) = (src, dims.last(), &mut *outs)
        && dims.len() > 1
    {
        return reduce_rows(x, &dims, &strides, &roff, inner, op, out);
    }
    let base = |mut o: usize| {
        let mut off = 0;
        for d in kept.iter().rev() {
            off += (o % dims[*d].0) * strides[*d];
            o /= dims[*d].0;
        }
        off
    };
    let (count, n_out) = (src.count(), outs.first().map_or(0, |o| o.len()));
    let init = match op {
        Reduce::Sum => 0.0,
        Reduce::Max => f64::NEG_INFINITY,
    };
    // Folds the runs at `b + r`, r in `offs`, into acc[j] for each input j.
    let fold = |scratch: &mut Scratch, b: usize, offs: &[usize], acc: &mut [f64]| {
        for r in offs {
            let xs = src.run(b + r, run, scratch);
            for (a, part) in acc.iter_mut().zip(xs.chunks_exact(run)) {
                *a = match op {
                    Reduce::Sum => *a + sum_run(part),
                    Reduce::Max => part.iter().fold(*a, |m, v| m.max(f64::from(*v))),
                };
            }
        }
    };
    let total: usize = shape.iter().product();
    if total >= PARALLEL_MIN && run > 1 && dims.len() > 2 && dims[0].1 && dims[0].0 > 1 {
        // The outermost dim is reduced too (batchnorm's [B, C, H·W] -> [C]): split it into
        // blocks (as many as the machine's width, whatever the threads, so the partial
        // sums are always the same), each walked in memory order into partial results.
        // One thread per output instead walks short runs far apart, which measured 3×
        // slower.
        let inner = offsets(1);
        let blocks = crate::team::width().clamp(1, dims[0].0);
        let per = dims[0].0.div_ceil(blocks);
        // Short runs (the 4×4 and 2×2 maps of a network's last stages) are read a whole
        // slab (one index of the outer dim) at a time: a fused source computed run by
        // run cost a loop call per four elements (MobileNetV2's [32, 960, 2, 2] -> [960]
        // sums: 0.2–0.4 ms each). Same runs, same order of sums.
        let slab = strides[0];
        let whole = run < SHORT_RUN && slab * count <= SLAB_MAX;
        let partials: Vec<Vec<f64>> = (0..blocks)
            .into_par_iter()
            .map(|t| {
                let mut scratch = Scratch::default();
                let mut acc = vec![init; n_out * count];
                for j in (t * per)..((t + 1) * per).min(dims[0].0) {
                    if !whole {
                        for (o, a) in acc.chunks_exact_mut(count).enumerate() {
                            fold(&mut scratch, j * slab + base(o), &inner, a);
                        }
                        continue;
                    }
                    let xs = src.run(j * slab, slab, &mut scratch);
                    for (o, a) in acc.chunks_exact_mut(count).enumerate() {
                        let b = base(o);
                        for r in &inner {
                            for (i, a) in a.iter_mut().enumerate() {
                                let part = &xs[i * slab + b + r..][..run];
                                *a = match op {
                                    Reduce::Sum => *a + sum_run(part),
                                    Reduce::Max => {
                                        part.iter().fold(*a, |m, v| m.max(f64::from(*v)))
                                    }
                                };
                            }
                        }
                    }
                }
                acc
            })
            .collect();
        for (j, out) in outs.iter_mut().enumerate() {
            for (o, y) in out.iter_mut().enumerate() {
                let parts = partials.iter().map(|p| p[o * count + j]);
                *y = match op {
                    Reduce::Sum => parts.sum::<f64>() as f32,
                    Reduce::Max => parts.fold(f64::NEG_INFINITY, f64::max) as f32,
                };
            }
        }
        return;
    }
    let parallel = total >= PARALLEL_MIN && n_out > 1;
    if let [out] = outs {
        let one = |scratch: &mut Scratch, (o, y): (usize, &mut f32)| {
            let mut acc = [init];
            fold(scratch, base(o), &roff, &mut acc);
            *y = acc[0] as f32;
        };
        if parallel {
            out.par_iter_mut()
                .enumerate()
                .for_each_init(Scratch::default, one);
        } else {
            let mut scratch = Scratch::default();
            out.iter_mut()
                .enumerate()
                .for_each(|e| one(&mut scratch, e));
        }
        return;
    }
    let each = |scratch: &mut Scratch, o: usize| {
        let mut acc = vec![init; count];
        fold(scratch, base(o), &roff, &mut acc);
        acc
    };
    let results: Vec<Vec<f64>> = if parallel {
        (0..n_out)
            .into_par_iter()
            .map_init(Scratch::default, each)
            .collect()
    } else {
        let mut scratch = Scratch::default();
        (0..n_out).map(|o| each(&mut scratch, o)).collect()
    };
    for (j, out) in outs.iter_mut().enumerate() {
        for (y, r) in out.iter_mut().zip(&results) {
            *y = r[j] as f32;
        }
    }
}

/// [`reduce_from`] when the innermost dim is kept (a bias gradient: `[B, N] -> [N]`):
/// whole rows of `inner` outputs are accumulated at once, in f64, instead of one strided
/// walk per output. A large reduction's rows are cut into as many parts as the machine
/// is wide ([`crate::team::width`], so the order of sums never depends on the threads),
/// each summed on its own thread, and the parts added in order. (Cutting the columns
/// instead left ViT-Ti's `[32, 17, 192] -> [192]` sums on one thread and its 768 columns
/// on two threads in three chunks.)
fn reduce_rows(
    x: &[f32],
    dims: &[(usize, bool)],
    strides: &[usize],
    roff: &[usize],
    inner: usize,
    op: Reduce,
    out: &mut [f32],
) {
    // The offset in x of output block `ob` (its kept dims other than the innermost).
    let kept: Vec<usize> = (0..dims.len() - 1).filter(|d| !dims[*d].1).collect();
    let base = |mut ob: usize| {
        let mut off = 0;
        for d in kept.iter().rev() {
            off += (ob % dims[*d].0) * strides[*d];
            ob /= dims[*d].0;
        }
        off
    };
    let init = match op {
        Reduce::Sum => 0.0,
        Reduce::Max => f64::NEG_INFINITY,
    };
    // The reduction of rows `rows` of the block at `b`, one value per column.
    let partial = |b: usize, rows: &[usize]| {
        let mut acc = vec![init; inner];
        for r in rows {
            let xs = &x[b + r..][..inner];
            match op {
                Reduce::Sum => acc
                    .iter_mut()
                    .zip(xs)
                    .for_each(|(a, v)| *a += f64::from(*v)),
                Reduce::Max => acc
                    .iter_mut()
                    .zip(xs)
                    .for_each(|(a, v)| *a = a.max(f64::from(*v))),
            }
        }
        acc
    };
    let finish = |parts: &[Vec<f64>], y: &mut [f32]| {
        for (j, y) in y.iter_mut().enumerate() {
            let v = parts.iter().fold(init, |s, p| match op {
                Reduce::Sum => s + p[j],
                Reduce::Max => s.max(p[j]),
            });
            *y = v as f32;
        }
    };
    let big = x.len() >= PARALLEL_MIN;
    let parts = if big {
        crate::team::width().clamp(1, roff.len().max(1))
    } else {
        1
    };
    let per = roff.len().div_ceil(parts).max(1);
    let blocks = out.len() / inner.max(1);
    if big && blocks >= 2 * rayon::current_num_threads() {
        out.par_chunks_mut(inner).enumerate().for_each(|(ob, y)| {
            let b = base(ob);
            let ps: Vec<Vec<f64>> = roff.chunks(per).map(|rows| partial(b, rows)).collect();
            finish(&ps, y);
        });
        return;
    }
    for (ob, y) in out.chunks_mut(inner).enumerate() {
        let b = base(ob);
        let ps: Vec<Vec<f64>> = if parts > 1 {
            roff.par_chunks(per).map(|rows| partial(b, rows)).collect()
        } else {
            roff.chunks(per).map(|rows| partial(b, rows)).collect()
        };
        finish(&ps, y);
    }
}

/// The sum of a contiguous run in sixteen f64 lanes: as accurate as a sequential f64 sum
/// (batchnorm's shift gradients cancel to nearly zero), and vectorized with four
/// independent accumulators, so the adds' latency does not bound it (measured: a
/// [128, 32, 28, 28] -> [32] sum took 0.82 ms with one four-lane accumulator).
fn sum_run(x: &[f32]) -> f64 {
    const LANES: usize = 16;
    let mut lanes = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|v| f64::from(*v)).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += f64::from(*v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Index of the first maximum along `axis`.
pub fn argmax(x: &[f32], shape: &[usize], axis: usize, out: &mut [f32]) {
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    for (o, y) in out.iter_mut().enumerate() {
        let (outer, i) = (o / inner.max(1), o % inner.max(1));
        let mut best = (0usize, f32::NEG_INFINITY);
        for k in 0..n {
            let v = x[(outer * n + k) * inner + i];
            if v > best.1 {
                best = (k, v);
            }
        }
        *y = best.0 as f32;
    }
}

/// Rows of `table` ([V, D]) picked by `idx`.
pub fn gather(table: &[f32], d: usize, idx: &[f32], out: &mut [f32]) {
    let v = table.len() / d.max(1);
    for (i, r) in idx.iter().enumerate() {
        let r = (*r as usize).min(v.saturating_sub(1));
        out[i * d..][..d].copy_from_slice(&table[r * d..][..d]);
    }
}

/// One-hot rows of `classes` entries.
pub fn one_hot(idx: &[f32], classes: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (i, c) in idx.iter().enumerate() {
        let c = *c as i64;
        if c >= 0 && (c as usize) < classes {
            out[i * classes + c as usize] = 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reductions by their definition (in f64), for shapes large enough to be split over
    /// threads: by output, and by the outermost dim when it is reduced too.
    #[test]
    fn large_reductions_match_their_definition() {
        let cases: [(&[usize], &[usize]); 8] = [
            (&[6, 3, 7, 300], &[0, 2, 3]),
            (&[4, 3, 5, 6, 100], &[0, 2, 4]),
            (&[4, 3, 5, 6, 100], &[0, 1, 3]),
            (&[2, 40000], &[1]),
            (&[9, 8, 1000], &[0]),
            // Bias gradients: rows cut into parts, one block of outputs and many.
            (&[32, 17, 193], &[0, 1]),
            (&[3, 7, 2, 41, 67], &[0, 2, 3]),
            (&[1, 40001], &[0]),
        ];
        for (shape, axes) in cases {
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
                .collect();
            let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
            let outs: usize = kept.iter().map(|d| shape[*d]).product();
            let mut sums = vec![0.0f64; outs];
            let mut maxes = vec![f64::NEG_INFINITY; outs];
            let mut index = vec![0usize; shape.len()];
            for v in &x {
                let o = kept.iter().fold(0, |o, d| o * shape[*d] + index[*d]);
                sums[o] += f64::from(*v);
                maxes[o] = maxes[o].max(f64::from(*v));
                for d in (0..shape.len()).rev() {
                    index[d] += 1;
                    if index[d] < shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            let mut out = vec![0.0f32; outs];
            reduce(&x, shape, axes, Reduce::Sum, &mut out);
            for (o, (y, e)) in out.iter().zip(&sums).enumerate() {
                assert!(
                    (f64::from(*y) - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{shape:?} {axes:?} sum {o}: {y} vs {e}"
                );
            }
            reduce(&x, shape, axes, Reduce::Max, &mut out);
            for (o, (y, e)) in out.iter().zip(&maxes).enumerate() {
                assert_eq!(f64::from(*y), *e, "{shape:?} {axes:?} max {o}");
            }
        }
    }
}
