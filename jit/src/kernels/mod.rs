//! Kernels written in Rust for the ops that are not elementwise: matrix products through
//! the `gemm` crate (whose AVX2/AVX-512 micro-kernels beat anything Cranelift can emit
//! with 128-bit vectors), convolutions as im2col + GEMM (3×3 "same" ones with many
//! channels by Winograd's algorithm, in [`crate::winograd`]; depthwise ones directly, in
//! [`crate::depthwise`]; on small maps several images per product, in [`crate::batched`]), reductions (accumulated in f64),
//! pooling and data movement. Work is split over threads with rayon where it is large.
//!
//! Every kernel writes only its output slice, which the memory plan never overlaps with
//! an input.
//!
//! By concern: [`matmul`] (products through `gemm` and their thread split), [`conv`] (convolution geometry,
//! im2col and the choice of path), [`pool`] (max and average pooling and their
//! gradients), [`reduce`] (reductions, argmax, gather, one-hot).

mod conv;
mod matmul;
mod pool;
mod reduce;

pub use conv::*;
pub use matmul::*;
pub use pool::*;
pub use reduce::*;

use std::cell::Cell;
use std::thread::LocalKey;

/// Runs `f` on this thread's value of `key`, which stays allocated between calls: scratch
/// made per call (or per rayon job, as `for_each_init` does) was zero-filled and
/// page-faulted in every time, 1.6 MB per batch of images for a Winograd product. The
/// contents are stale; callers write what they read. A nested use on the same thread (a
/// rayon steal inside `f`) finds the cell empty and starts from the default.
pub(crate) fn reusing<T: Default, R>(
    key: &'static LocalKey<Cell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut value = key.take();
    let result = f(&mut value);
    key.set(value);
    result
}

/// Below this many elements a kernel runs on one thread.
const PARALLEL_MIN: usize = 1 << 15;

/// A raw pointer that may cross threads (each thread writes a disjoint part).
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint output regions to rayon workers.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Bits, for exact comparison in tests.
#[cfg(test)]
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nabla_lang::ir::{Reduce, Window};

    /// Convolution weight gradients (im2col and Winograd), reductions over the batch and
    /// sums over rows (bias gradients) give the same bits on pools of 1 to 4 threads: their partial sums follow the
    /// machine's width, not the thread count.
    #[test]
    fn partial_sums_do_not_depend_on_the_thread_count() {
        let win = Window {
            kernel: 3,
            stride: 1,
            pad: 1,
            dilation: 1,
            groups: 1,
        };
        let run_on = |threads: usize, f: &(dyn Fn() -> Vec<u32> + Sync)| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(f)
        };
        for (b, c, o, hw) in [(8, 32, 32, 8), (16, 32, 8, 8), (5, 3, 4, 9), (13, 16, 8, 6)] {
            let s = ConvShape::new(&[b, c, hw, hw], &[o, c, 3, 3], &[b, o, hw, hw], win);
            let x: Vec<f32> = (0..b * c * hw * hw)
                .map(|i| ((i * 13) % 101) as f32 * 0.01 - 0.5)
                .collect();
            let dy: Vec<f32> = (0..b * o * hw * hw)
                .map(|i| ((i * 29) % 83) as f32 * 0.02 - 0.8)
                .collect();
            let grad = || {
                let mut dk = vec![0.0; o * c * 9];
                conv2d_weight_grad(&s, &x, &dy, &mut dk);
                bits(&dk)
            };
            let im2col = || {
                let mut dk = vec![0.0; o * c * 9];
                weight_grad_im2col(&s, &x, &dy, &mut dk);
                bits(&dk)
            };
            let sums = || {
                let mut out = vec![0.0; c];
                reduce(&x, &[b, c, hw * hw], &[0, 2], Reduce::Sum, &mut out);
                bits(&out)
            };
            // A bias gradient's sum over rows, one block of outputs and several.
            let rows = || {
                let mut out = vec![0.0; hw * hw];
                reduce(&dy, &[b, o, hw * hw], &[0, 1], Reduce::Sum, &mut out);
                let mut blocks = vec![0.0; o * hw * hw];
                reduce(&dy, &[b, o, hw * hw], &[0], Reduce::Sum, &mut blocks);
                out.extend(blocks);
                bits(&out)
            };
            for f in [
                &grad as &(dyn Fn() -> Vec<u32> + Sync),
                &im2col,
                &sums,
                &rows,
            ] {
                let one = run_on(1, f);
                for t in 2..=4 {
                    assert_eq!(run_on(t, f), one, "{b}×{c}×{hw}² on {t} threads");
                }
            }
        }
    }
}
