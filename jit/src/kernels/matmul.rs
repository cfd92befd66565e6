//! Matrix products through the `gemm` crate, and how they are split over threads: by
//! rayon's pool, or by blocks of rows or columns on a step's team ([`crate::team`]).

/// Below this many multiply-adds a matrix product runs on one thread: waking the pool
/// costs more than it saves (measured: the linear net's 10×128ᵀ·128×784 weight gradient
/// takes 0.020 ms on one thread and 0.043 ms on two).
const GEMM_PARALLEL_MIN: usize = 1 << 22;

/// The same bar for a GEMM called on a pool thread (a step the backend ran on the pool):
/// there the other worker is usually awake, so splitting is cheap, and a serial stretch
/// of small products lets it fall asleep and join the next large product late. The MLP's
/// 128×512×10 products split: its step went from 3.18–4.22 to 2.28–3.23 ms (medians,
/// alternated in a loaded phase).
const GEMM_PARALLEL_MIN_POOLED: usize = 1 << 18;

/// Below this many multiply-adds a product in a step on the team ([`crate::team`]) runs
/// on one thread. Splitting costs one hand-off to a spinning helper (under a
/// microsecond), so products down to about 5 µs of work gain.
const GEMM_TEAM_MIN: usize = 1 << 17;

/// Whether a product is too small for [`gemm_scaled`] to split over threads (so a batch
/// of such products is better split by entries).
pub(crate) fn gemm_entry_small(m: usize, n: usize, k: usize) -> bool {
    m * n * k < GEMM_TEAM_MIN
}

/// A matrix operand: base pointer, row stride and column stride (in elements).
#[derive(Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// An operand at `ptr` with row stride `rs` and column stride `cs`.
pub(crate) fn mat(ptr: *const f32, rs: usize, cs: usize) -> Mat {
    Mat {
        ptr,
        rs: rs as isize,
        cs: cs as isize,
    }
}

/// `dst[m×n] = (accumulate ? dst : 0) + a[m×k] · b[k×n]`; `dst` is row-major with row
/// stride `dst_rs`.
///
/// # Safety
/// As [`gemm_scaled`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_scaled(m, n, k, dst, dst_rs, accumulate, 1.0, a, b, threads) }
}

/// `dst[m×n] = (accumulate ? dst : 0) + scale·a[m×k]·b[k×n]`; `dst` is row-major with row
/// stride `dst_rs`.
///
/// # Safety
/// The pointers must be valid for the extents the strides describe, and `dst` must not
/// overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_scaled(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    scale: f32,
    a: Mat,
    b: Mat,
    threads: bool,
) {
    // SAFETY: forwarded from the caller; a row-major dst has column stride 1.
    unsafe { gemm_strided(m, n, k, (dst, dst_rs, 1), accumulate, scale, a, b, threads) }
}

/// As [`gemm_scaled`], for a `dst` of any row and column strides `(ptr, rs, cs)`. The
/// operand that `gemm` has to pack follows from the strides: a column-major `dst` packs
/// `a`, a row-major one packs `b`, so callers pick the layout whose packed side is small.
///
/// # Safety
/// As [`gemm_scaled`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    scale: f32,
    a: Mat,
    b: Mat,
    threads: bool,
) {
    let (dst, dst_rs, dst_cs) = dst;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: element (i, j) of dst is inside its extent.
                    unsafe { *dst.offset(i as isize * dst_rs + j as isize * dst_cs) = 0.0 };
                }
            }
        }
        return;
    }
    // In a step, a product large enough to share is cut into blocks that depend on its
    // shape and the machine's width only; the blocks run on the team or one after
    // another, as the tuner chose, and give the same bits either way (gemm's order of
    // sums inside a block depends on the block's shape, so the cut must not change).
    let parts = if threads && m * n * k >= GEMM_TEAM_MIN && crate::team::in_step() {
        crate::team::width()
    } else {
        1
    };
    if parts > 1 {
        // SAFETY: forwarded from the caller.
        return unsafe {
            gemm_blocks(
                parts,
                m,
                n,
                k,
                (dst, dst_rs, dst_cs),
                accumulate,
                scale,
                a,
                b,
            )
        };
    }
    let min = if rayon::current_thread_index().is_some() {
        GEMM_PARALLEL_MIN_POOLED
    } else {
        GEMM_PARALLEL_MIN
    };
    let par = if threads && m * n * k >= min {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller; gemm computes dst = alpha·dst + beta·a·b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// [`gemm_strided`] in blocks: the longer of `dst`'s two sides is cut into `parts`
/// blocks (multiples of 8, the micro-kernels' step), each a product of its own, run on
/// the team when the step uses it.
///
/// # Safety
/// As [`gemm_scaled`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_blocks(
    parts: usize,
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    scale: f32,
    a: Mat,
    b: Mat,
) {
    let rows = m >= n;
    let len = if rows { m } else { n };
    let chunk = crate::team::block(len, parts);
    // Addresses, so the closure is Sync; every part writes its own block of dst.
    let ((d, rs, cs), ap, bp) = (
        (dst.0 as usize, dst.1, dst.2),
        a.ptr as usize,
        b.ptr as usize,
    );
    crate::team::run_in_step(len.div_ceil(chunk), &|i| {
        let (lo, hi) = (i * chunk, ((i + 1) * chunk).min(len));
        let o = lo as isize;
        // A block of rows starts `o` rows into a and dst; a block of columns, `o`
        // columns into b and dst.
        let ((pm, pn), (ao, bo, d_off)) = if rows {
            ((hi - lo, n), (o * a.rs, 0, o * rs))
        } else {
            ((m, hi - lo), (0, o * b.cs, o * cs))
        };
        let a = Mat {
            ptr: (ap as *const f32).wrapping_offset(ao),
            ..a
        };
        let b = Mat {
            ptr: (bp as *const f32).wrapping_offset(bo),
            ..b
        };
        let dst = (d as *mut f32).wrapping_offset(d_off);
        // SAFETY: the block lies inside the caller's extents; blocks do not overlap.
        unsafe { gemm_strided(pm, pn, k, (dst, rs, cs), accumulate, scale, a, b, false) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bits;

    /// Products split over the team (inside a step) by rows and by columns, with odd
    /// sides, transposed operands, an output with a row stride and accumulation, against
    /// the definition in f64 (relative 1e-5 of the sum of |terms|).
    #[test]
    fn team_products_match_their_definition() {
        crate::team::set_mode(crate::team::Mode::Always);
        for (m, n, k, acc) in [
            (128, 10, 784, false),
            (10, 784, 128, true),
            (203, 97, 33, true),
            (37, 301, 41, false),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31) % 97) as f32 * 0.02 - 1.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 17) % 89) as f32 * 0.03 - 1.3)
                .collect();
            let stride = n + 3;
            let base: Vec<f32> = (0..m * stride).map(|i| (i % 7) as f32).collect();
            let mut dst = base.clone();
            // a is m×k row-major; b is given transposed (n×k row-major).
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let (am, bm) = (mat(a.as_ptr(), k, 1), mat(bt.as_ptr(), 1, k));
            let dp = (dst.as_mut_ptr(), stride as isize, 1);
            crate::team::step(|| unsafe { gemm_strided(m, n, k, dp, acc, 1.0, am, bm, true) });
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|l| f64::from(a[i * k + l]) * f64::from(b[l * n + j]));
                    let mag: f64 = terms.clone().map(f64::abs).sum();
                    let start = if acc {
                        f64::from(base[i * stride + j])
                    } else {
                        0.0
                    };
                    let want = start + terms.sum::<f64>();
                    let got = f64::from(dst[i * stride + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (mag + start.abs()),
                        "{m}×{n}×{k} ({i}, {j})"
                    );
                }
                for j in n..stride {
                    assert_eq!(dst[i * stride + j], base[i * stride + j], "padding written");
                }
            }
        }
    }

    /// A product in a step gives the same bits with the team and alone, for shapes that
    /// take every path of `gemm` (horizontal kernels for small outputs, gemv for a
    /// side of one, K cut at 512), accumulating or not, scaled or not, with `b` given
    /// either way round. The tuner's choice between the two must never change results.
    #[test]
    fn team_and_alone_give_the_same_bits() {
        crate::team::set_mode(crate::team::Mode::Always);
        let shapes = [
            (128, 10, 784),
            (10, 784, 128),
            (32, 10, 600),
            (17, 10, 1000),
            (64, 1, 4096),
            (1, 300, 700),
            (203, 97, 33),
            (512, 512, 16),
            (9, 4000, 40),
            (130, 130, 1300),
        ];
        for (m, n, k) in shapes {
            for (acc, scale, transposed) in
                [(false, 1.0, false), (true, -0.1, true), (true, 1.0, false)]
            {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 31) % 97) as f32 * 0.0213 - 1.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 17) % 89) as f32 * 0.0307 - 1.3)
                    .collect();
                let base: Vec<f32> = (0..m * n).map(|i| ((i * 7) % 13) as f32 * 0.11).collect();
                let run = |alone: bool| {
                    let mut dst = base.clone();
                    let am = mat(a.as_ptr(), k, 1);
                    // b as k×n row-major, or the same values as n×k (xᵀ-style strides).
                    let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                    let bm = if transposed {
                        mat(bt.as_ptr(), 1, k)
                    } else {
                        mat(b.as_ptr(), n, 1)
                    };
                    let dp = (dst.as_mut_ptr(), n as isize, 1);
                    crate::team::within(alone, || unsafe {
                        gemm_strided(m, n, k, dp, acc, scale, am, bm, true)
                    });
                    bits(&dst)
                };
                assert_eq!(
                    run(true),
                    run(false),
                    "{m}×{n}×{k} acc {acc} scale {scale} t {transposed}"
                );
            }
        }
    }
}
