//! Convolutions on small feature maps, several images per product.
//!
//! [`crate::kernels`] multiplies one image at a time: `[og, rows] · [rows, OH·OW]`. On the
//! 4×4 and 2×2 maps of a network's last stages that product has 16 or 4 columns, so each
//! call packs the whole weight matrix (up to 512 × 4,608 floats) for a few multiply-adds
//! per weight, and a weight gradient accumulates into the whole `dk` once per image. Here
//! the columns of enough images to make [`WIDE`] columns sit side by side
//! (`[rows, images·OH·OW]`), the output gradient's planes are gathered the same way, and
//! each product covers all of them; the results are scattered back to their images.
//! Copies are of the small maps only; the products' inner dimensions are unchanged.
//!
//! The cut into chunks of images depends on the shapes only and the weight gradient's
//! partial sums on [`crate::team::width`], so results do not depend on the threads.

use std::cell::Cell;

use rayon::prelude::*;

use crate::kernels::{ConvShape, add_transposed, col2im, gemm, gemm_strided, mat, reusing, tap};

/// Columns per product below which images are put side by side (the `gemm` micro-kernels
/// and packing reach their speed from about this width).
const WIDE: usize = 128;

thread_local! {
    /// Per-thread column matrix and gathered planes, reused between calls.
    static SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = Cell::default();
}

/// Images per product for convolution `s`: 1 where a map is wide enough by itself.
fn images(s: &ConvShape) -> usize {
    let area = s.area().max(1);
    if area >= WIDE {
        1
    } else {
        WIDE.div_ceil(area).min(s.b.max(1))
    }
}

/// Whether this module computes `s` (its maps are small enough to batch).
pub fn applies(s: &ConvShape) -> bool {
    images(s) > 1
}

/// Marks a tap that lands in the padding in [`tap_table`].
const OUTSIDE: u32 = u32::MAX;

/// For every tap `t` and output position `p`, the input position it reads
/// (`table[t·area + p]`), or [`OUTSIDE`]. On maps this small, im2col's per-row bounds
/// work (runs of one to four floats) costs more than the copies; a table is one load per
/// element.
fn tap_table(s: &ConvShape) -> Vec<u32> {
    let mut table = Vec::with_capacity(s.kh * s.kw * s.area());
    for ky in 0..s.kh {
        for kx in 0..s.kw {
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let at = tap(oy, ky, &s.win, s.h)
                        .zip(tap(ox, kx, &s.win, s.w))
                        .and_then(|(iy, ix)| u32::try_from(iy * s.w + ix).ok());
                    table.push(at.unwrap_or(OUTSIDE));
                }
            }
        }
    }
    table
}

/// The column matrix of group `g` of images `first..first + count`, as `[rows, count·area]`.
fn gather_columns(
    s: &ConvShape,
    table: &[u32],
    x: &[f32],
    g: usize,
    first: usize,
    count: usize,
    col: &mut Vec<f32>,
) {
    let (area, rows, xs, hw, kk) = (s.area(), s.rows(), s.c * s.h * s.w, s.h * s.w, s.kh * s.kw);
    let n = count * area;
    col.resize(rows * n, 0.0);
    for i in 0..count {
        let xb = &x[(first + i) * xs..][..xs];
        if s.pointwise() {
            for r in 0..rows {
                col[r * n + i * area..][..area]
                    .copy_from_slice(&xb[(g * rows + r) * area..][..area]);
            }
            continue;
        }
        for ci in 0..s.cg() {
            let plane = &xb[(g * s.cg() + ci) * hw..][..hw];
            for t in 0..kk {
                let row = &mut col[(ci * kk + t) * n + i * area..][..area];
                for (d, at) in row.iter_mut().zip(&table[t * area..][..area]) {
                    *d = if *at == OUTSIDE {
                        0.0
                    } else {
                        plane[*at as usize]
                    };
                }
            }
        }
    }
}

/// Planes `from..from + planes` of `images` of `t` (images of `image` floats, planes of
/// `area`), side by side: `[planes, images.len()·area]`.
fn gather_planes(
    t: &[f32],
    image: usize,
    area: usize,
    images: std::ops::Range<usize>,
    from: usize,
    planes: usize,
    out: &mut Vec<f32>,
) {
    let (first, count) = (images.start, images.len());
    let n = count * area;
    out.resize(planes * n, 0.0);
    for i in 0..count {
        for p in 0..planes {
            out[p * n + i * area..][..area]
                .copy_from_slice(&t[(first + i) * image + (from + p) * area..][..area]);
        }
    }
}

/// The inverse of [`gather_planes`], into the chunk `t` whose first image is image 0.
fn scatter_planes(
    m: &[f32],
    image: usize,
    area: usize,
    count: usize,
    from: usize,
    planes: usize,
    t: &mut [f32],
) {
    let n = count * area;
    for i in 0..count {
        for p in 0..planes {
            t[i * image + (from + p) * area..][..area]
                .copy_from_slice(&m[p * n + i * area..][..area]);
        }
    }
}

/// `y = conv2d(x, k)`.
pub fn conv2d(s: &ConvShape, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (area, rows, og, groups) = (s.area(), s.rows(), s.og(), s.win.groups.max(1));
    let (imgs, ys) = (images(s), s.o * area);
    let table = tap_table(s);
    // Fewer chunks than threads: the products themselves are split.
    let split = s.b.div_ceil(imgs) < crate::team::width();
    y.par_chunks_mut(imgs * ys)
        .enumerate()
        .for_each(|(chunk, yc)| {
            reusing(&SCRATCH, |(col, out)| {
                let (first, count) = (chunk * imgs, yc.len() / ys);
                let n = count * area;
                for g in 0..groups {
                    gather_columns(s, &table, x, g, first, count, col);
                    out.resize(og * n, 0.0);
                    // SAFETY: out is [og, n], k's group block [og, rows], col [rows, n].
                    unsafe {
                        gemm(
                            og,
                            n,
                            rows,
                            out.as_mut_ptr(),
                            n as isize,
                            false,
                            mat(k[g * og * rows..].as_ptr(), rows, 1),
                            mat(col.as_ptr(), n, 1),
                            split,
                        )
                    };
                    scatter_planes(out, ys, area, count, g * og, og, yc);
                }
            })
        });
}

/// `dx` of `y = conv2d(x, k)` given `dy`: `cols = kᵀ · dy` per group, added back into the
/// images by `col2im` (copied, for a pointwise convolution).
pub fn input_grad(s: &ConvShape, dy: &[f32], k: &[f32], dx: &mut [f32]) {
    let (area, rows, og, groups) = (s.area(), s.rows(), s.og(), s.win.groups.max(1));
    let (imgs, xs, ys) = (images(s), s.c * s.h * s.w, s.o * area);
    let split = s.b.div_ceil(imgs) < crate::team::width();
    dx.par_chunks_mut(imgs * xs)
        .enumerate()
        .for_each(|(chunk, dxc)| {
            reusing(&SCRATCH, |(col, dyg)| {
                let (first, count) = (chunk * imgs, dxc.len() / xs);
                let n = count * area;
                if !s.pointwise() {
                    dxc.fill(0.0);
                }
                for g in 0..groups {
                    gather_planes(dy, ys, area, first..first + count, g * og, og, dyg);
                    col.resize(rows * n, 0.0);
                    // SAFETY: col is [rows, n], kᵀ's group block [rows, og], dyg [og, n].
                    unsafe {
                        gemm(
                            rows,
                            n,
                            og,
                            col.as_mut_ptr(),
                            n as isize,
                            false,
                            mat(k[g * og * rows..].as_ptr(), 1, rows),
                            mat(dyg.as_ptr(), n, 1),
                            split,
                        )
                    };
                    if s.pointwise() {
                        scatter_planes(col, xs, area, count, g * rows, rows, dxc);
                    } else {
                        for i in 0..count {
                            col2im(s, &col[i * area..], g, &mut dxc[i * xs..][..xs], n);
                        }
                    }
                }
            })
        });
}

/// `dk` of `y = conv2d(x, k)` given `dy`: `dkᵀ += cols · dyᵀ` over chunks of images, one
/// partial per block of chunks ([`crate::team::width`] blocks), added in block order.
pub fn weight_grad(s: &ConvShape, x: &[f32], dy: &[f32], dk: &mut [f32]) {
    let (area, rows, og, groups) = (s.area(), s.rows(), s.og(), s.win.groups.max(1));
    let (imgs, ys) = (images(s), s.o * area);
    let chunks = s.b.div_ceil(imgs);
    let blocks = crate::team::width().clamp(1, chunks.max(1));
    let per = chunks.div_ceil(blocks);
    let split = blocks < crate::team::width();
    let table = tap_table(s);
    let partials: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f32; dk.len()];
            reusing(&SCRATCH, |(col, dyg)| {
                for chunk in (blk * per)..((blk + 1) * per).min(chunks) {
                    let first = chunk * imgs;
                    let count = imgs.min(s.b - first);
                    let n = count * area;
                    for g in 0..groups {
                        gather_columns(s, &table, x, g, first, count, col);
                        gather_planes(dy, ys, area, first..first + count, g * og, og, dyg);
                        // dk_gᵀ [rows, og] += (dy_g [og, n] · colsᵀ [n, rows])ᵀ, written as
                        // an [og, rows] product into a column-major destination.
                        // SAFETY: acc is this block's own; extents as described.
                        unsafe {
                            gemm_strided(
                                og,
                                rows,
                                n,
                                (acc[g * og * rows..].as_mut_ptr(), 1, og as isize),
                                true,
                                1.0,
                                mat(dyg.as_ptr(), n, 1),
                                mat(col.as_ptr(), 1, n),
                                split,
                            )
                        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{conv2d_im2col, weight_grad_im2col};
    use nabla_lang::ir::Window;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    /// The input position tap (ky, kx) of output (oy, ox) reads, if inside.
    fn at(s: &ConvShape, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * s.win.stride + ky * s.win.dilation).checked_sub(s.win.pad)?;
        let ix = (ox * s.win.stride + kx * s.win.dilation).checked_sub(s.win.pad)?;
        (iy < s.h && ix < s.w).then_some((iy, ix))
    }

    /// The three kernels against the definition of a grouped convolution and its two
    /// adjoints in f64, on small maps with odd sizes: 1×1, 3×3 stride 1 and 2, groups,
    /// a batch that does not divide into chunks evenly. Tolerance: 1e-5 of the sum of
    /// |terms| of each entry. The forward pass and weight gradient are also compared with
    /// the one-image path.
    #[test]
    fn batched_convolutions_match_their_definition() {
        for (b, c, h, w, o, kh, stride, pad, groups) in [
            (7, 5, 3, 3, 6, 1, 1, 0, 1),
            (9, 4, 2, 2, 3, 3, 1, 1, 1),
            (5, 6, 5, 3, 4, 3, 2, 1, 2),
            (3, 3, 4, 4, 5, 1, 2, 0, 1),
            (11, 2, 1, 1, 7, 1, 1, 0, 1),
            (4, 8, 3, 5, 8, 3, 1, 1, 4),
        ] {
            let win = Window {
                kernel: kh,
                stride,
                pad,
                dilation: 1,
                groups,
            };
            let (oh, ow) = (
                (h + 2 * pad - kh) / stride + 1,
                (w + 2 * pad - kh) / stride + 1,
            );
            let cg = c / groups;
            let s = ConvShape::new(&[b, c, h, w], &[o, cg, kh, kh], &[b, o, oh, ow], win);
            assert!(applies(&s), "{b}×{c}×{h}×{w} should batch");
            let (x, k, dy) = (
                values(b * c * h * w, 1),
                values(o * cg * kh * kh, 2),
                values(b * o * oh * ow, 3),
            );
            let mut y_def = vec![(0.0f64, 0.0f64); b * o * oh * ow];
            let mut dx_def = vec![(0.0f64, 0.0f64); b * c * h * w];
            let mut dk_def = vec![(0.0f64, 0.0f64); o * cg * kh * kh];
            let add = |e: &mut (f64, f64), p: f64| {
                e.0 += p;
                e.1 += p.abs();
            };
            for bi in 0..b {
                for oc in 0..o {
                    let g = oc / (o / groups);
                    for ci in 0..cg {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let yi = ((bi * o + oc) * oh + oy) * ow + ox;
                                for ky in 0..kh {
                                    for kx in 0..kh {
                                        let Some((iy, ix)) = at(&s, oy, ox, ky, kx) else {
                                            continue;
                                        };
                                        let xi = ((bi * c + g * cg + ci) * h + iy) * w + ix;
                                        let ki = ((oc * cg + ci) * kh + ky) * kh + kx;
                                        add(&mut y_def[yi], f64::from(k[ki]) * f64::from(x[xi]));
                                        add(&mut dx_def[xi], f64::from(k[ki]) * f64::from(dy[yi]));
                                        add(&mut dk_def[ki], f64::from(x[xi]) * f64::from(dy[yi]));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let what = format!("{b}×{c}×{h}×{w}→{o} k{kh} s{stride} g{groups}");
            let check = |got: &[f32], want: &[(f64, f64)], part: &str| {
                assert_eq!(got.len(), want.len());
                for (i, (g, (e, mag))) in got.iter().zip(want).enumerate() {
                    assert!(
                        (f64::from(*g) - e).abs() <= 1e-5 * mag.max(1e-30),
                        "{part} of {what} at {i}: {g} vs {e}"
                    );
                }
            };
            let mut y = vec![f32::NAN; y_def.len()];
            conv2d(&s, &x, &k, &mut y);
            check(&y, &y_def, "forward");
            let mut one = vec![f32::NAN; y_def.len()];
            conv2d_im2col(&s, &x, &k, &mut one);
            check(&one, &y_def, "one-image forward");
            let mut dx = vec![f32::NAN; dx_def.len()];
            input_grad(&s, &dy, &k, &mut dx);
            check(&dx, &dx_def, "input gradient");
            let mut dk = vec![f32::NAN; dk_def.len()];
            weight_grad(&s, &x, &dy, &mut dk);
            check(&dk, &dk_def, "weight gradient");
            weight_grad_im2col(&s, &x, &dy, &mut dk);
            check(&dk, &dk_def, "one-image weight gradient");
        }
    }
}
