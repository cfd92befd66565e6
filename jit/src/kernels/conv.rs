//! Convolution geometry ([`ConvShape`]), im2col and col2im in bands of output rows, the
//! choice of path for a convolution and both its gradients ([`ConvPath`]), and the im2col +
//! GEMM path itself.

use std::cell::Cell;

use nabla_lang::ir::Window;
use rayon::prelude::*;

use super::*;

thread_local! {
    /// Each thread's im2col band, kept from one call to the next (see [`reusing`]).
    static COLUMNS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

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
