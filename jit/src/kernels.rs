//! Kernels written in Rust for the ops that are not elementwise: matrix products through
//! the `gemm` crate (whose AVX2/AVX-512 micro-kernels beat anything Cranelift can emit
//! with 128-bit vectors), convolutions as im2col + GEMM (3×3 "same" ones with many
//! channels by Winograd's algorithm, in [`crate::winograd`]; depthwise ones directly, in
//! [`crate::depthwise`]; on small maps several images per product, in [`crate::batched`]), reductions (accumulated in f64),
//! pooling and data movement. Work is split over threads with rayon where it is large.
//!
//! Every kernel writes only its output slice, which the memory plan never overlaps with
//! an input.

use std::cell::Cell;
use std::thread::LocalKey;

use nabla_lang::ir::{Reduce, Window};
use rayon::prelude::*;

thread_local! {
    /// Each thread's im2col band, kept from one call to the next (see [`reusing`]).
    static COLUMNS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

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

/// Reductions whose contiguous runs are shorter than this read their input a slab at a
/// time (see [`reduce_from`]), for slabs (times inputs) of at most [`SLAB_MAX`] elements.
const SHORT_RUN: usize = 64;
const SLAB_MAX: usize = 1 << 16;

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

/// A raw pointer that may cross threads (each thread writes a disjoint part).
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint output regions to rayon workers.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// The output positions read through kernel tap `k` (`o·stride + k·dilation - pad`).
pub(crate) fn tap(o: usize, k: usize, w: &Window, size: usize) -> Option<usize> {
    let p = (o * w.stride + k * w.dilation).checked_sub(w.pad)?;
    (p < size).then_some(p)
}

/// Convolution geometry: input [B, C, H, W], weights [O, C/groups, KH, KW], output
/// [B, O, OH, OW].
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub win: Window,
}

impl ConvShape {
    pub fn new(x: &[usize], k: &[usize], y: &[usize], win: Window) -> ConvShape {
        ConvShape {
            b: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: k[0],
            kh: k[2],
            kw: k[3],
            oh: y[2],
            ow: y[3],
            win,
        }
    }
    pub(crate) fn cg(&self) -> usize {
        self.c / self.win.groups.max(1)
    }
    pub(crate) fn og(&self) -> usize {
        self.o / self.win.groups.max(1)
    }
    /// Rows of one group's column matrix.
    pub(crate) fn rows(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    pub(crate) fn area(&self) -> usize {
        self.oh * self.ow
    }
    /// The convolution that computes this one's input gradient from its output gradient,
    /// for stride 1, one group and square kernels (pad `k - 1 - pad`).
    pub(crate) fn transposed(&self) -> Option<ConvShape> {
        let w = self.win;
        let ok = w.stride == 1
            && w.dilation == 1
            && w.groups.max(1) == 1
            && self.kh == self.kw
            && w.pad < self.kh
            && !self.pointwise();
        let win = Window {
            pad: self.kh - 1 - w.pad,
            ..w
        };
        ok.then_some(ConvShape {
            b: self.b,
            c: self.o,
            h: self.oh,
            w: self.ow,
            o: self.c,
            kh: self.kh,
            kw: self.kw,
            oh: self.h,
            ow: self.w,
            win,
        })
    }
    /// A 1×1 convolution with stride 1 and no padding reads its input as the columns.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.win.stride == 1
            && self.win.pad == 0
            && self.oh == self.h
            && self.ow == self.w
    }
}

/// The output columns `ox` whose tap `kx` lands inside a row of width `w`, and the input
/// column of the first: a contiguous range, since the input column grows with `ox`.
pub(crate) fn valid_cols(s: &ConvShape, kx: usize) -> (std::ops::Range<usize>, usize) {
    let first = (0..s.ow)
        .find(|ox| tap(*ox, kx, &s.win, s.w).is_some())
        .unwrap_or(s.ow);
    let end = (first..s.ow)
        .find(|ox| tap(*ox, kx, &s.win, s.w).is_none())
        .unwrap_or(s.ow);
    let ix = tap(first, kx, &s.win, s.w).unwrap_or(0);
    (first..end, ix)
}

/// im2col of group `g` of one image `x` ([C, H, W]), output rows `oys`, into `col`
/// ([cg·KH·KW, len(oys)·OW], rows `ld` apart: several images' columns can sit side by side).
pub(crate) fn im2col(
    s: &ConvShape,
    x: &[f32],
    g: usize,
    oys: std::ops::Range<usize>,
    col: &mut [f32],
    ld: usize,
) {
    if s.win.stride == 1 && s.ow == s.w {
        return im2col_shifted(s, x, g, oys, col, ld);
    }
    let (area, cg) = (oys.len() * s.ow, s.cg());
    let cols: Vec<_> = (0..s.kw).map(|kx| valid_cols(s, kx)).collect();
    for ci in 0..cg {
        let plane = &x[(g * cg + ci) * s.h * s.w..][..s.h * s.w];
        for ky in 0..s.kh {
            for (kx, (range, ix0)) in cols.iter().enumerate() {
                let row = &mut col[((ci * s.kh + ky) * s.kw + kx) * ld..][..area];
                for (r, oy) in oys.clone().enumerate() {
                    let dst = &mut row[r * s.ow..][..s.ow];
                    let Some(iy) = tap(oy, ky, &s.win, s.h) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &plane[iy * s.w..][..s.w];
                    dst[..range.start].fill(0.0);
                    dst[range.end..].fill(0.0);
                    if s.win.stride == 1 {
                        dst[range.clone()].copy_from_slice(&src[*ix0..][..range.len()]);
                    } else {
                        for (d, v) in dst[range.clone()]
                            .iter_mut()
                            .zip(src[*ix0..].iter().step_by(s.win.stride))
                        {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] of a stride-1 convolution whose output rows are as wide as its input rows
/// (a "same" convolution): each row of the column matrix is then the input plane shifted
/// by a constant, so it is one contiguous copy, after which the few columns that fell
/// outside the row (and read a neighbouring row) are zeroed. Row-by-row copies of ~28
/// floats spent more time in `memcpy` calls than in copying.
fn im2col_shifted(
    s: &ConvShape,
    x: &[f32],
    g: usize,
    oys: std::ops::Range<usize>,
    col: &mut [f32],
    ld: usize,
) {
    let (ow, area, cg) = (s.ow, oys.len() * s.ow, s.cg());
    let cols: Vec<_> = (0..s.kw).map(|kx| valid_cols(s, kx)).collect();
    for ci in 0..cg {
        let plane = &x[(g * cg + ci) * s.h * s.w..][..s.h * s.w];
        for ky in 0..s.kh {
            // The band's rows whose tap ky lands inside the plane: a contiguous range.
            let inside = |r: &usize| tap(oys.start + r, ky, &s.win, s.h).is_some();
            let first = (0..oys.len()).find(inside);
            let last = (0..oys.len()).rev().find(inside);
            for (kx, (range, ix0)) in cols.iter().enumerate() {
                let row = &mut col[((ci * s.kh + ky) * s.kw + kx) * ld..][..area];
                let (Some(first), Some(last)) = (first, last) else {
                    row.fill(0.0);
                    continue;
                };
                if range.is_empty() {
                    row.fill(0.0);
                    continue;
                }
                let Some(iy) = tap(oys.start + first, ky, &s.win, s.h) else {
                    row.fill(0.0);
                    continue;
                };
                // Column j of the band reads plane[j + shift]: copy from the first valid
                // element to the last one.
                let lo = first * ow + range.start;
                let hi = last * ow + range.end;
                let src = iy * s.w + ix0;
                row[..lo].fill(0.0);
                row[lo..hi].copy_from_slice(&plane[src..][..hi - lo]);
                row[hi..].fill(0.0);
                // A handful of columns per row (one for a 3×3 kernel with pad 1), zeroed
                // column by column: strided stores, where a per-row loop would become a
                // `memset` call per row.
                for c in (0..range.start).chain(range.end..ow) {
                    for r in first..=last {
                        row[r * ow + c] = 0.0;
                    }
                }
            }
        }
    }
}

/// Output rows per band of the column matrix: enough that a band of columns is about
/// 64K floats (256 KiB, well inside L2, where the GEMM reads it back), at least one.
fn band_rows(s: &ConvShape) -> usize {
    const BAND: usize = 1 << 16;
    (BAND / (s.rows() * s.ow).max(1)).clamp(1, s.oh.max(1))
}

/// The output-row bands of a convolution.
fn bands(s: &ConvShape) -> impl Iterator<Item = std::ops::Range<usize>> {
    let step = band_rows(s);
    let oh = s.oh;
    (0..oh.div_ceil(step)).map(move |i| i * step..((i + 1) * step).min(oh))
}

/// The adjoint of [`im2col`]: adds `col` (rows `ld` apart) back into image `dx` ([C, H, W]).
pub(crate) fn col2im(s: &ConvShape, col: &[f32], g: usize, dx: &mut [f32], ld: usize) {
    let (area, cg) = (s.area(), s.cg());
    let cols: Vec<_> = (0..s.kw).map(|kx| valid_cols(s, kx)).collect();
    for ci in 0..cg {
        let plane = &mut dx[(g * cg + ci) * s.h * s.w..][..s.h * s.w];
        for ky in 0..s.kh {
            for (kx, (range, ix0)) in cols.iter().enumerate() {
                let row = &col[((ci * s.kh + ky) * s.kw + kx) * ld..][..area];
                for oy in 0..s.oh {
                    let Some(iy) = tap(oy, ky, &s.win, s.h) else {
                        continue;
                    };
                    let src = &row[oy * s.ow..][range.clone()];
                    let dst = &mut plane[iy * s.w..][..s.w];
                    for (d, v) in dst[*ix0..].iter_mut().step_by(s.win.stride).zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// The column matrix of group `g` of image `xb` for output rows `oys`, and its row
/// stride: the image itself for a pointwise convolution, else its im2col in the scratch
/// `col`.
fn columns<'a>(
    s: &ConvShape,
    xb: &'a [f32],
    g: usize,
    oys: std::ops::Range<usize>,
    col: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    let rows = s.rows();
    if s.pointwise() {
        (&xb[g * rows * s.area() + oys.start * s.ow..], s.area())
    } else {
        let len = oys.len() * s.ow;
        col.resize(rows * len, 0.0);
        im2col(s, xb, g, oys, col, len);
        (col, len)
    }
}

pub(crate) fn mat(ptr: *const f32, rs: usize, cs: usize) -> Mat {
    Mat {
        ptr,
        rs: rs as isize,
        cs: cs as isize,
    }
}

/// How a convolution and its gradients are computed: chosen here only, for the kernels
/// and for the profile's classes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConvPath {
    /// One input channel per group, directly ([`crate::depthwise`]).
    Depthwise,
    /// 3×3 stride 1 "same", many channels, maps of 16×16 or more ([`crate::winograd`]).
    Winograd,
    /// Maps too small for one product per image ([`crate::batched`]).
    SmallMaps,
    /// im2col (or the image itself, 1×1) and one product per image and band of rows.
    Im2col,
}

impl ConvPath {
    /// The path of the forward pass and of the weight gradient.
    pub fn of(s: &ConvShape) -> ConvPath {
        if crate::depthwise::applies(s) {
            ConvPath::Depthwise
        } else if crate::winograd::applies(s) {
            ConvPath::Winograd
        } else if crate::batched::applies(s) {
            ConvPath::SmallMaps
        } else {
            ConvPath::Im2col
        }
    }

    /// The path of the input gradient: a stride-1 convolution's is a convolution (of the
    /// shape returned), the others' the transpose of the forward pass.
    pub fn of_input_grad(s: &ConvShape) -> (ConvPath, Option<ConvShape>) {
        if crate::depthwise::applies(s) {
            return (ConvPath::Depthwise, None);
        }
        if let Some(t) = s.transposed() {
            return (ConvPath::of(&t), Some(t));
        }
        if crate::batched::applies(s) {
            (ConvPath::SmallMaps, None)
        } else {
            (ConvPath::Im2col, None)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConvPath::Depthwise => "depthwise",
            ConvPath::Winograd => "winograd",
            ConvPath::SmallMaps => "small maps",
            ConvPath::Im2col => "im2col",
        }
    }
}

/// `y = conv2d(x, k)`, by the path [`ConvPath::of`] chooses.
pub fn conv2d(s: &ConvShape, x: &[f32], k: &[f32], y: &mut [f32]) {
    match ConvPath::of(s) {
        ConvPath::Depthwise => crate::depthwise::conv2d(s, x, k, y),
        ConvPath::Winograd => crate::winograd::conv2d(s, x, k, y),
        ConvPath::SmallMaps => crate::batched::conv2d(s, x, k, y),
        ConvPath::Im2col => conv2d_im2col(s, x, k, y),
    }
}

/// [`conv2d`] through im2col and GEMM, image by image, in bands of output rows (see
/// [`band_rows`]), for any convolution.
pub(crate) fn conv2d_im2col(s: &ConvShape, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (area, rows, og, groups) = (s.area(), s.rows(), s.og(), s.win.groups.max(1));
    let (xs, ys) = (s.c * s.h * s.w, s.o * area);
    y.par_chunks_mut(ys).enumerate().for_each(|(bi, yb)| {
        reusing(&COLUMNS, |col| {
            let xb = &x[bi * xs..][..xs];
            for g in 0..groups {
                for oys in bands(s) {
                    let n = oys.len() * s.ow;
                    let at = g * og * area + oys.start * s.ow;
                    let (cols, stride) = columns(s, xb, g, oys, col);
                    // SAFETY: extents as described; y's image is disjoint from x, k and col.
                    unsafe {
                        gemm(
                            og,
                            n,
                            rows,
                            yb[at..].as_mut_ptr(),
                            area as isize,
                            false,
                            mat(k[g * og * rows..].as_ptr(), rows, 1),
                            mat(cols.as_ptr(), stride, 1),
                            false,
                        )
                    };
                }
            }
        })
    });
}

/// `dx` of `y = conv2d(x, k)` given `dy`.
pub fn conv2d_input_grad(s: &ConvShape, dy: &[f32], k: &[f32], dx: &mut [f32]) {
    let (path, transposed) = ConvPath::of_input_grad(s);
    if path == ConvPath::Depthwise {
        return crate::depthwise::input_grad(s, dy, k, dx);
    }
    if let Some(t) = transposed {
        // A stride-1 convolution's input gradient is itself a convolution: of dy with the
        // kernel flipped in space and its channel axes swapped. im2col's copies are
        // cheaper than col2im's scattered additions.
        let (ckk, kk) = (s.c * s.kh * s.kw, s.kh * s.kw);
        let mut flipped = vec![0.0f32; k.len()];
        for o in 0..s.o {
            for c in 0..s.c {
                for i in 0..kk {
                    flipped[c * s.o * kk + o * kk + (kk - 1 - i)] = k[o * ckk + c * kk + i];
                }
            }
        }
        return conv2d(&t, dy, &flipped, dx);
    }
    if path == ConvPath::SmallMaps {
        return crate::batched::input_grad(s, dy, k, dx);
    }
    let (area, rows, og, groups) = (s.area(), s.rows(), s.og(), s.win.groups.max(1));
    let (xs, ys) = (s.c * s.h * s.w, s.o * area);
    dx.par_chunks_mut(xs).enumerate().for_each(|(bi, dxb)| {
        reusing(&COLUMNS, |col| {
            let dyb = &dy[bi * ys..][..ys];
            if !s.pointwise() {
                dxb.fill(0.0);
            }
            for g in 0..groups {
                let kg = mat(k[g * og * rows..].as_ptr(), 1, rows); // kᵀ: [rows, og]
                let dyg = mat(dyb[g * og * area..].as_ptr(), area, 1);
                if s.pointwise() {
                    // SAFETY: extents as described; dx's image is disjoint from dy and k.
                    unsafe {
                        gemm(
                            rows,
                            area,
                            og,
                            dxb[g * rows * area..].as_mut_ptr(),
                            area as isize,
                            false,
                            kg,
                            dyg,
                            false,
                        )
                    };
                } else {
                    col.resize(rows * area, 0.0);
                    // SAFETY: as above, into the scratch columns.
                    unsafe {
                        gemm(
                            rows,
                            area,
                            og,
                            col.as_mut_ptr(),
                            area as isize,
                            false,
                            kg,
                            dyg,
                            false,
                        )
                    };
                    col2im(s, col, g, dxb, area);
                }
            }
        })
    });
}

/// `dk` of `y = conv2d(x, k)` given `dy`: a sum over images, accumulated in one partial
/// per block of images ([`crate::team::width`] blocks, whatever the threads), then added
/// in block order.
///
/// Each thread accumulates `dkᵀ` ([rows, og] per group): with that column-major
/// destination `gemm` packs the small `dy` band rather than the column matrix, which is
/// `rows / og` times larger (measured on the CNN's [128, 32, 28, 28] layer: 20.5 → 13.4 ms).
pub fn conv2d_weight_grad(s: &ConvShape, x: &[f32], dy: &[f32], dk: &mut [f32]) {
    match ConvPath::of(s) {
        ConvPath::Depthwise => crate::depthwise::weight_grad(s, x, dy, dk),
        ConvPath::Winograd => crate::winograd::weight_grad(s, x, dy, dk),
        ConvPath::SmallMaps => crate::batched::weight_grad(s, x, dy, dk),
        ConvPath::Im2col => weight_grad_im2col(s, x, dy, dk),
    }
}

/// [`conv2d_weight_grad`] through im2col and GEMM, for any convolution.
pub(crate) fn weight_grad_im2col(s: &ConvShape, x: &[f32], dy: &[f32], dk: &mut [f32]) {
    let (area, rows, og, groups) = (s.area(), s.rows(), s.og(), s.win.groups.max(1));
    let (xs, ys) = (s.c * s.h * s.w, s.o * area);
    let blocks = crate::team::width().clamp(1, s.b.max(1));
    let per = s.b.div_ceil(blocks);
    let partials: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0.0f32; dk.len()];
            reusing(&COLUMNS, |col| {
                for bi in (t * per)..((t + 1) * per).min(s.b) {
                    let xb = &x[bi * xs..][..xs];
                    for g in 0..groups {
                        for oys in bands(s) {
                            let n = oys.len() * s.ow;
                            let at = bi * ys + g * og * area + oys.start * s.ow;
                            let (cols, stride) = columns(s, xb, g, oys, col);
                            // dk_gᵀ [rows, og] += (dy_g [og, n] · colsᵀ [n, rows])ᵀ, written
                            // as an [og, rows] product into a column-major destination.
                            let dst = acc[g * og * rows..].as_mut_ptr();
                            // SAFETY: extents as described; acc is this thread's own.
                            unsafe {
                                gemm_strided(
                                    og,
                                    rows,
                                    n,
                                    (dst, 1, og as isize),
                                    true,
                                    1.0,
                                    mat(dy[at..].as_ptr(), area, 1),
                                    mat(cols.as_ptr(), 1, stride),
                                    false,
                                )
                            };
                        }
                    }
                }
            });
            acc
        })
        .collect();
    dk.fill(0.0);
    let block = og * rows;
    for p in partials {
        for (dkg, pg) in dk.chunks_mut(block).zip(p.chunks(block)) {
            add_transposed(pg, rows, og, dkg);
        }
    }
}

/// `dst[c·rows + r] += src[r·cols + c]`: adds the transpose of `src` ([rows, cols]) to
/// `dst` ([cols, rows]), in 32×32 tiles so that both sides stay in cache (element by
/// element, the strided side missed on every read: 2.4M elements of a 512×4608 weight
/// gradient took longer than its product).
pub(crate) fn add_transposed(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let d = &mut dst[c * rows..][r0..(r0 + TILE).min(rows)];
                for (i, d) in d.iter_mut().enumerate() {
                    *d += src[(r0 + i) * cols + c];
                }
            }
        }
    }
}

/// Pooling geometry over planes of [H, W] into [OH, OW].
#[derive(Clone, Copy, Debug)]
pub struct PoolShape {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub win: Window,
}

impl PoolShape {
    /// Windows that tile the plane without padding or overlap (2×2 stride 2, the common
    /// case): every tap is inside, so the loops need no bounds arithmetic.
    fn tiles(&self) -> bool {
        let k = self.win.kernel;
        self.win.stride == k
            && self.win.pad == 0
            && self.win.dilation == 1
            && self.oh * k <= self.h
            && self.ow * k <= self.w
    }
}

/// [`pool`] for windows that tile the plane (see [`PoolShape::tiles`]).
fn pool_tiled(s: &PoolShape, x: &[f32], y: &mut [f32], max: bool) {
    let k = s.win.kernel;
    let scale = 1.0 / (k * k) as f32;
    y.par_chunks_mut((s.oh * s.ow).max(1))
        .enumerate()
        .for_each(|(p, yp)| {
            let xp = &x[p * s.h * s.w..][..s.h * s.w];
            for (oy, yrow) in yp.chunks_exact_mut(s.ow).enumerate() {
                let rows = &xp[oy * k * s.w..];
                if max && k == 2 {
                    pool_row_max_2x2((&rows[..s.w], &rows[s.w..2 * s.w]), yrow);
                    continue;
                }
                for (ox, y) in yrow.iter_mut().enumerate() {
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    for ky in 0..k {
                        for v in &rows[ky * s.w + ox * k..][..k] {
                            acc = if max { acc.max(*v) } else { acc + v };
                        }
                    }
                    *y = if max { acc } else { acc * scale };
                }
            }
        });
}

/// One row of 2×2 max windows of [`pool_tiled`], indexed over slices cut to length so
/// that LLVM vectorizes it (measured on the CNN's [128, 32, 28, 28] layer: 1.96 → 0.36
/// ms). NaN is skipped as `f32::max` skips it, as the general loop does.
fn pool_row_max_2x2(x: (&[f32], &[f32]), y: &mut [f32]) {
    let n = y.len();
    let (r0, r1) = (&x.0[..2 * n], &x.1[..2 * n]);
    for (i, y) in y.iter_mut().enumerate() {
        *y = f32::NEG_INFINITY
            .max(r0[2 * i])
            .max(r0[2 * i + 1])
            .max(r1[2 * i])
            .max(r1[2 * i + 1]);
    }
}

/// Max or average pooling (average counts padding, as PyTorch's default).
pub fn pool(s: &PoolShape, x: &[f32], y: &mut [f32], max: bool) {
    if s.tiles() {
        return pool_tiled(s, x, y, max);
    }
    let area = (s.win.kernel * s.win.kernel) as f32;
    y.par_chunks_mut((s.oh * s.ow).max(1))
        .enumerate()
        .for_each(|(p, yp)| {
            let xp = &x[p * s.h * s.w..][..s.h * s.w];
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    for ky in 0..s.win.kernel {
                        let Some(iy) = tap(oy, ky, &s.win, s.h) else {
                            continue;
                        };
                        for kx in 0..s.win.kernel {
                            let Some(ix) = tap(ox, kx, &s.win, s.w) else {
                                continue;
                            };
                            let v = xp[iy * s.w + ix];
                            acc = if max { acc.max(v) } else { acc + v };
                        }
                    }
                    yp[oy * s.ow + ox] = if max { acc } else { acc / area };
                }
            }
        });
}

/// [`max_pool_grad`] for windows that tile the plane: each window's first maximum (in
/// row-major order) takes the gradient, the rest of the window gets zero.
fn max_pool_grad_tiled(s: &PoolShape, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let k = s.win.kernel;
    dx.par_chunks_mut((s.h * s.w).max(1))
        .enumerate()
        .for_each(|(p, dxp)| {
            let xp = &x[p * s.h * s.w..][..s.h * s.w];
            let dyp = &dy[p * s.oh * s.ow..][..s.oh * s.ow];
            // Rows and columns past the last window get no gradient.
            dxp[s.oh * k * s.w..].fill(0.0);
            for oy in 0..s.oh {
                for r in 0..k {
                    dxp[(oy * k + r) * s.w..][s.ow * k..s.w].fill(0.0);
                }
                if k == 2 {
                    let (top, bottom) = dxp[2 * oy * s.w..][..2 * s.w].split_at_mut(s.w);
                    let rows = (&xp[2 * oy * s.w..][..s.w], &xp[(2 * oy + 1) * s.w..][..s.w]);
                    pool_grad_row_2x2(rows, &dyp[oy * s.ow..][..s.ow], top, bottom);
                    continue;
                }
                for ox in 0..s.ow {
                    let mut best = (0, 0, f32::NEG_INFINITY);
                    for ky in 0..k {
                        for kx in 0..k {
                            let v = xp[(oy * k + ky) * s.w + ox * k + kx];
                            if v > best.2 || (ky == 0 && kx == 0) {
                                best = (ky, kx, v);
                            }
                            dxp[(oy * k + ky) * s.w + ox * k + kx] = 0.0;
                        }
                    }
                    dxp[(oy * k + best.0) * s.w + ox * k + best.1] = dyp[oy * s.ow + ox];
                }
            }
        });
}

/// One row of 2×2 windows of [`max_pool_grad_tiled`], without branches: the first of the
/// four that is strictly largest so far (as the general loop) takes `dy`.
fn pool_grad_row_2x2(x: (&[f32], &[f32]), dy: &[f32], top: &mut [f32], bottom: &mut [f32]) {
    // Indexed over slices cut to length first, so the bounds checks go away and LLVM
    // vectorizes the stride-2 accesses (measured on the CNN's [128, 32, 28, 28] layer:
    // 5.4 → 1.05 ms).
    let n = dy.len();
    let (r0, r1) = (&x.0[..2 * n], &x.1[..2 * n]);
    let (top, bottom) = (&mut top[..2 * n], &mut bottom[..2 * n]);
    for i in 0..n {
        let (a, b, c, d, g) = (r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1], dy[i]);
        let b_wins = b > a;
        let m = if b_wins { b } else { a };
        let c_wins = c > m;
        let d_wins = d > if c_wins { c } else { m };
        let take = |hit: bool| if hit { g } else { 0.0 };
        top[2 * i] = take(!d_wins && !c_wins && !b_wins);
        top[2 * i + 1] = take(!d_wins && !c_wins && b_wins);
        bottom[2 * i] = take(!d_wins && c_wins);
        bottom[2 * i + 1] = take(d_wins);
    }
}

/// The gradient of max pooling: each window's first maximum takes its output gradient.
pub fn max_pool_grad(s: &PoolShape, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    if s.tiles() {
        return max_pool_grad_tiled(s, x, dy, dx);
    }
    dx.par_chunks_mut((s.h * s.w).max(1))
        .enumerate()
        .for_each(|(p, dxp)| {
            dxp.fill(0.0);
            let xp = &x[p * s.h * s.w..][..s.h * s.w];
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let mut best: Option<(usize, f32)> = None;
                    for ky in 0..s.win.kernel {
                        let Some(iy) = tap(oy, ky, &s.win, s.h) else {
                            continue;
                        };
                        for kx in 0..s.win.kernel {
                            let Some(ix) = tap(ox, kx, &s.win, s.w) else {
                                continue;
                            };
                            let i = iy * s.w + ix;
                            if best.is_none_or(|(_, v)| xp[i] > v) {
                                best = Some((i, xp[i]));
                            }
                        }
                    }
                    if let Some((i, _)) = best {
                        dxp[i] += dy[(p * s.oh + oy) * s.ow + ox];
                    }
                }
            }
        });
}

/// The gradient of average pooling.
pub fn avg_pool_grad(s: &PoolShape, dy: &[f32], dx: &mut [f32]) {
    let area = (s.win.kernel * s.win.kernel) as f32;
    dx.par_chunks_mut((s.h * s.w).max(1))
        .enumerate()
        .for_each(|(p, dxp)| {
            dxp.fill(0.0);
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let d = dy[(p * s.oh + oy) * s.ow + ox] / area;
                    for ky in 0..s.win.kernel {
                        let Some(iy) = tap(oy, ky, &s.win, s.h) else {
                            continue;
                        };
                        for kx in 0..s.win.kernel {
                            if let Some(ix) = tap(ox, kx, &s.win, s.w) {
                                dxp[iy * s.w + ix] += d;
                            }
                        }
                    }
                }
            }
        });
}

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
/// whole rows of `inner` outputs are accumulated at once, in f64 for sums, instead of
/// one strided walk per output.
fn reduce_rows(
    x: &[f32],
    dims: &[(usize, bool)],
    strides: &[usize],
    roff: &[usize],
    inner: usize,
    op: Reduce,
    out: &mut [f32],
) {
    const COLS: usize = 256;
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
    let columns = |b: usize, c0: usize, y: &mut [f32]| match op {
        Reduce::Sum => {
            let mut acc = vec![0.0f64; y.len()];
            for r in roff {
                for (a, v) in acc.iter_mut().zip(&x[b + r + c0..][..y.len()]) {
                    *a += f64::from(*v);
                }
            }
            y.iter_mut().zip(acc).for_each(|(y, a)| *y = a as f32);
        }
        Reduce::Max => {
            y.fill(f32::NEG_INFINITY);
            for r in roff {
                for (m, v) in y.iter_mut().zip(&x[b + r + c0..]) {
                    *m = m.max(*v);
                }
            }
        }
    };
    let big = x.len() >= PARALLEL_MIN;
    let blocks = out.len() / inner.max(1);
    if big && blocks >= 2 * rayon::current_num_threads() {
        out.par_chunks_mut(inner)
            .enumerate()
            .for_each(|(ob, block)| columns(base(ob), 0, block));
        return;
    }
    out.chunks_mut(inner).enumerate().for_each(|(ob, block)| {
        let b = base(ob);
        if big {
            block
                .par_chunks_mut(COLS)
                .enumerate()
                .for_each(|(k, y)| columns(b, k * COLS, y));
        } else {
            columns(b, 0, block);
        }
    });
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

    /// im2col by its definition: column (ci, ky, kx) of output position (oy, ox) holds
    /// x[ci, oy·stride + ky·dilation − pad, ox·stride + kx·dilation − pad], or 0 outside.
    fn naive(s: &ConvShape, x: &[f32], g: usize, oys: std::ops::Range<usize>) -> Vec<f32> {
        let area = oys.len() * s.ow;
        let mut col = vec![0.0; s.rows() * area];
        for ci in 0..s.cg() {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    for (r, oy) in oys.clone().enumerate() {
                        for ox in 0..s.ow {
                            let iy = (oy * s.win.stride + ky * s.win.dilation) as isize
                                - s.win.pad as isize;
                            let ix = (ox * s.win.stride + kx * s.win.dilation) as isize
                                - s.win.pad as isize;
                            let inside =
                                (0..s.h as isize).contains(&iy) && (0..s.w as isize).contains(&ix);
                            let c = (g * s.cg() + ci) * s.h * s.w;
                            col[((ci * s.kh + ky) * s.kw + kx) * area + r * s.ow + ox] = if inside {
                                x[c + iy as usize * s.w + ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
        col
    }

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

    /// Bits, for exact comparison.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
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

    /// Convolution weight gradients (im2col and Winograd) and reductions over the batch
    /// give the same bits on pools of 1 to 4 threads: their partial sums follow the
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
            for f in [&grad as &(dyn Fn() -> Vec<u32> + Sync), &im2col, &sums] {
                let one = run_on(1, f);
                for t in 2..=4 {
                    assert_eq!(run_on(t, f), one, "{b}×{c}×{hw}² on {t} threads");
                }
            }
        }
    }

    /// Reductions by their definition (in f64), for shapes large enough to be split over
    /// threads: by output, and by the outermost dim when it is reduced too.
    #[test]
    fn large_reductions_match_their_definition() {
        let cases: [(&[usize], &[usize]); 5] = [
            (&[6, 3, 7, 300], &[0, 2, 3]),
            (&[4, 3, 5, 6, 100], &[0, 2, 4]),
            (&[4, 3, 5, 6, 100], &[0, 1, 3]),
            (&[2, 40000], &[1]),
            (&[9, 8, 1000], &[0]),
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

    /// Every im2col path (the shifted copy of "same" stride-1 convolutions and the general
    /// one), over bands that touch the top, the middle and the bottom of the image.
    #[test]
    fn im2col_matches_its_definition() {
        // (c, h, w, k, stride, pad, dilation, groups)
        let cases = [
            (2, 7, 7, 3, 1, 1, 1, 1),
            (3, 6, 5, 5, 1, 2, 1, 1),
            (2, 9, 8, 3, 1, 2, 2, 1),
            (4, 5, 5, 3, 1, 1, 1, 2),
            (2, 7, 6, 3, 2, 1, 1, 1),
            (1, 4, 4, 3, 1, 0, 1, 1),
            (2, 3, 3, 7, 1, 3, 1, 1),
        ];
        for (c, h, w, k, stride, pad, dilation, groups) in cases {
            let win = Window {
                kernel: k,
                stride,
                pad,
                dilation,
                groups,
            };
            let span = dilation * (k - 1) + 1;
            let (oh, ow) = (
                (h + 2 * pad - span) / stride + 1,
                (w + 2 * pad - span) / stride + 1,
            );
            let s = ConvShape::new(&[1, c, h, w], &[2, c / groups, k, k], &[1, 2, oh, ow], win);
            let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            for g in 0..groups {
                for oys in [0..oh, 0..1, oh / 2..oh, oh - 1..oh, 1..oh.max(2) - 1] {
                    let mut col = vec![f32::NAN; s.rows() * oys.len() * ow];
                    im2col(&s, &x, g, oys.clone(), &mut col, oys.len() * ow);
                    assert_eq!(
                        col,
                        naive(&s, &x, g, oys.clone()),
                        "{win:?} {h}×{w} rows {oys:?}"
                    );
                }
            }
        }
    }
}
