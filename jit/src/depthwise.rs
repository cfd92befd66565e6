//! Depthwise convolutions (one input channel per group: MobileNetV2's 3×3, EfficientNet's
//! 3×3 and 5×5, ConvNeXt's 7×7), computed directly, channels innermost.
//!
//! As im2col + GEMM a depthwise convolution is one product `[og, KH·KW] · [KH·KW, OH·OW]`
//! per image and channel: tens of thousands of `gemm` calls of a few hundred multiply-adds
//! each, whose set-up cost more than the arithmetic (ConvNeXt-T at 64×64, batch 32: 340 ms
//! of a 1,150 ms step). Looping over each plane's rows instead leaves runs of 2–4 floats on
//! the 4×4 and 2×2 maps of the last stages. So each image is turned channels-last
//! (`[H·W, C]`, a blocked transpose), and every output position is a sum over its taps of
//! `weights[tap, :] * input[position, :]`: loops over all channels, which vectorize
//! whatever the map's size. The input gradient scatters the same products back; the
//! weight gradient sums `dy[position, :] * input[position + tap, :]` over positions and
//! images. Sums run in a fixed order (taps; positions; images by blocks of
//! [`crate::team::width`], added in block order), so results do not depend on threads.
//!
//! Output channel `oc` reads input channel `oc / og` (`og` outputs per group, the
//! "channel multiplier"); any stride, padding and dilation.

use std::cell::Cell;

use rayon::prelude::*;

use crate::kernels::{ConvShape, reusing, tap};

thread_local! {
    /// Per-thread channels-last copies (input, output), reused between calls.
    static SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = Cell::default();
}

/// Whether [`conv2d`] and its gradients compute convolution `s`: one input channel per group.
pub fn applies(s: &ConvShape) -> bool {
    s.win.groups > 1 && s.cg() == 1
}

/// Channels per block of the transposes: 16 reads streams (or writes) at a time.
const BLOCK: usize = 16;

/// `out[p·O + oc] = x[(oc / og)·len + p]`: image `x` ([C, len]) channels-last, each input
/// channel repeated for its `og` outputs.
fn to_channels_last(x: &[f32], len: usize, o: usize, og: usize, out: &mut Vec<f32>) {
    out.resize(len * o, 0.0);
    for c0 in (0..o).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(o);
        for p in 0..len {
            let row = &mut out[p * o..][c0..c1];
            if og == 1 {
                for (j, d) in row.iter_mut().enumerate() {
                    *d = x[(c0 + j) * len + p];
                }
            } else {
                for (j, d) in row.iter_mut().enumerate() {
                    *d = x[((c0 + j) / og) * len + p];
                }
            }
        }
    }
}

/// `y[c·len + p] = Σ_j t[p·O + c·og + j]`: a channels-last image back to [C, len], adding
/// the `og` channels that came from each input channel.
fn from_channels_last(t: &[f32], len: usize, o: usize, og: usize, y: &mut [f32]) {
    let c = o / og;
    for c0 in (0..c).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(c);
        for p in 0..len {
            let row = &t[p * o..][..o];
            for ci in c0..c1 {
                let v = if og == 1 {
                    row[ci]
                } else {
                    row[ci * og..][..og].iter().sum()
                };
                y[ci * len + p] = v;
            }
        }
    }
}

/// The kernel as `[KH·KW, O]`: each tap's weights for all channels, contiguous.
fn taps_by_channel(s: &ConvShape, k: &[f32]) -> Vec<f32> {
    let kk = s.kh * s.kw;
    let mut t = vec![0.0; kk * s.o];
    for oc in 0..s.o {
        for i in 0..kk {
            t[i * s.o + oc] = k[oc * kk + i];
        }
    }
    t
}

/// For every output position, the taps that land inside the input, as (tap index,
/// input position): `table[starts[p]..starts[p + 1]]`. Made once per call, so the loops
/// over positions do no bounds arithmetic.
struct Taps {
    starts: Vec<usize>,
    table: Vec<(usize, usize)>,
}

impl Taps {
    fn new(s: &ConvShape) -> Taps {
        let mut starts = vec![0];
        let mut table = Vec::new();
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                for ky in 0..s.kh {
                    let Some(iy) = tap(oy, ky, &s.win, s.h) else {
                        continue;
                    };
                    for kx in 0..s.kw {
                        if let Some(ix) = tap(ox, kx, &s.win, s.w) {
                            table.push((ky * s.kw + kx, iy * s.w + ix));
                        }
                    }
                }
                starts.push(table.len());
            }
        }
        Taps { starts, table }
    }

    /// The taps of output position `p`.
    fn of(&self, p: usize) -> &[(usize, usize)] {
        &self.table[self.starts[p]..self.starts[p + 1]]
    }
}

/// What [`sweep`] computes, for every output position `p` and tap `t` reading input
/// position `ip` (rows of `o` channels): the forward pass `y[p] += k[t]·x[ip]`, the input
/// gradient `dx[ip] += k[t]·dy[p]`, the weight gradient `dk[t] += x[ip]·dy[p]`.
const FORWARD: u8 = 0;
const INPUT_GRAD: u8 = 1;
const WEIGHT_GRAD: u8 = 2;

/// The products of one image, as `ROLE` says: `a` is the kernel (`[taps, o]`) or, for the
/// weight gradient, the input; `b` the input or the output gradient. With AVX2 and FMA
/// (detected at run time: the crate is built for baseline x86-64) the rows are 8 lanes
/// wide and fused (ConvNeXt-T's depthwise kernels: 59–66 → 46–51 ms per step, alternated
/// runs); elsewhere the same loops are built for the baseline, so results differ in the
/// last bits between such machines, as `gemm`'s do.
fn sweep<const ROLE: u8>(taps: &Taps, o: usize, a: &[f32], b: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features.
        return unsafe { sweep_fma::<ROLE>(taps, o, a, b, dst) };
    }
    sweep_rows::<ROLE, false>(taps, o, a, b, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sweep_fma<const ROLE: u8>(taps: &Taps, o: usize, a: &[f32], b: &[f32], dst: &mut [f32]) {
    sweep_rows::<ROLE, true>(taps, o, a, b, dst)
}

#[inline(always)]
fn sweep_rows<const ROLE: u8, const FMA: bool>(
    taps: &Taps,
    o: usize,
    a: &[f32],
    b: &[f32],
    dst: &mut [f32],
) {
    for p in 0..taps.starts.len() - 1 {
        for &(t, ip) in taps.of(p) {
            let (d, x, y) = match ROLE {
                FORWARD => (&mut dst[p * o..][..o], &a[t * o..][..o], &b[ip * o..][..o]),
                INPUT_GRAD => (&mut dst[ip * o..][..o], &a[t * o..][..o], &b[p * o..][..o]),
                _ => (&mut dst[t * o..][..o], &a[ip * o..][..o], &b[p * o..][..o]),
            };
            for ((d, x), y) in d.iter_mut().zip(x).zip(y) {
                *d = if FMA { x.mul_add(*y, *d) } else { *d + x * y };
            }
        }
    }
}

/// `y = conv2d(x, k)`, image by image.
pub fn conv2d(s: &ConvShape, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (hw, ohw, o, og) = (s.h * s.w, s.area(), s.o, s.og());
    let (kt, taps) = (taps_by_channel(s, k), Taps::new(s));
    y.par_chunks_mut(o * ohw).enumerate().for_each(|(b, yb)| {
        reusing(&SCRATCH, |(xt, yt)| {
            to_channels_last(&x[b * s.c * hw..][..s.c * hw], hw, o, og, xt);
            yt.clear();
            yt.resize(ohw * o, 0.0);
            sweep::<FORWARD>(&taps, o, &kt, xt, yt);
            from_channels_last(yt, ohw, o, 1, yb);
        })
    });
}

/// `dx` of `y = conv2d(x, k)` given `dy`: each output position's gradient, times each
/// tap's weights, added to the input position the tap read.
pub fn input_grad(s: &ConvShape, dy: &[f32], k: &[f32], dx: &mut [f32]) {
    let (hw, ohw, o, og) = (s.h * s.w, s.area(), s.o, s.og());
    let (kt, taps) = (taps_by_channel(s, k), Taps::new(s));
    dx.par_chunks_mut(s.c * hw)
        .enumerate()
        .for_each(|(b, dxb)| {
            reusing(&SCRATCH, |(dyt, dxt)| {
                to_channels_last(&dy[b * o * ohw..][..o * ohw], ohw, o, 1, dyt);
                dxt.clear();
                dxt.resize(hw * o, 0.0);
                sweep::<INPUT_GRAD>(&taps, o, &kt, dyt, dxt);
                from_channels_last(dxt, hw, o, og, dxb);
            })
        });
}

/// `dk` of `y = conv2d(x, k)` given `dy`: per tap and channel, the sum over images and
/// output positions of `dy · x` at the position the tap read. Each image's sum is in
/// f32, the sum over images in f64, in blocks of images fixed by the machine's width.
pub fn weight_grad(s: &ConvShape, x: &[f32], dy: &[f32], dk: &mut [f32]) {
    let (hw, ohw, o, og, kk) = (s.h * s.w, s.area(), s.o, s.og(), s.kh * s.kw);
    let blocks = crate::team::width().clamp(1, s.b.max(1));
    let per = s.b.div_ceil(blocks);
    let taps = Taps::new(s);
    let partials: Vec<Vec<f64>> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f64; kk * o];
            let mut image = vec![0.0f32; kk * o];
            reusing(&SCRATCH, |(xt, dyt)| {
                for b in (blk * per)..((blk + 1) * per).min(s.b) {
                    to_channels_last(&x[b * s.c * hw..][..s.c * hw], hw, o, og, xt);
                    to_channels_last(&dy[b * o * ohw..][..o * ohw], ohw, o, 1, dyt);
                    image.fill(0.0);
                    sweep::<WEIGHT_GRAD>(&taps, o, xt, dyt, &mut image);
                    for (a, v) in acc.iter_mut().zip(&image) {
                        *a += f64::from(*v);
                    }
                }
            });
            acc
        })
        .collect();
    for oc in 0..o {
        for t in 0..kk {
            let sum: f64 = partials.iter().map(|p| p[t * o + oc]).sum();
            dk[oc * kk + t] = sum as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// The three kernels against the definition `y[b, oc, oy, ox] = Σ k[oc, ky, kx] ·
    /// x[b, oc / og, iy, ix]` and its two adjoints, in f64, on odd sizes, strides 1 and 2,
    /// padding 0 to 3, dilation 2, channel multipliers 1 and 2, and maps smaller than the
    /// kernel. Tolerance: 1e-5 of the sum of |terms| of each entry.
    #[test]
    fn depthwise_kernels_match_their_definition() {
        for (b, c, og, h, w, kh, stride, pad, dilation) in [
            (2, 3, 1, 7, 5, 3, 1, 1, 1),
            (3, 5, 1, 9, 9, 5, 2, 2, 1),
            (2, 4, 2, 6, 7, 3, 2, 1, 1),
            (1, 3, 1, 2, 2, 7, 1, 3, 1),
            (2, 2, 1, 11, 13, 3, 1, 2, 2),
            (5, 7, 1, 1, 1, 3, 1, 1, 1),
            (2, 6, 1, 17, 3, 7, 1, 3, 1),
            (3, 9, 1, 4, 4, 3, 2, 0, 1),
        ] {
            let o = c * og;
            let win = Window {
                kernel: kh,
                stride,
                pad,
                dilation,
                groups: c,
            };
            let oh = (h + 2 * pad - dilation * (kh - 1) - 1) / stride + 1;
            let ow = (w + 2 * pad - dilation * (kh - 1) - 1) / stride + 1;
            let s = ConvShape::new(&[b, c, h, w], &[o, 1, kh, kh], &[b, o, oh, ow], win);
            assert!(applies(&s));
            let (x, k, dy) = (
                values(b * c * h * w, 1),
                values(o * kh * kh, 2),
                values(b * o * oh * ow, 3),
            );
            // Definitions, each entry with the sum of its terms' magnitudes.
            let mut y_def = vec![(0.0f64, 0.0f64); b * o * oh * ow];
            let mut dx_def = vec![(0.0f64, 0.0f64); b * c * h * w];
            let mut dk_def = vec![(0.0f64, 0.0f64); o * kh * kh];
            for bi in 0..b {
                for oc in 0..o {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let yi = ((bi * o + oc) * oh + oy) * ow + ox;
                            for ky in 0..kh {
                                for kx in 0..kh {
                                    let Some((iy, ix)) = at(&s, oy, ox, ky, kx) else {
                                        continue;
                                    };
                                    let xi = ((bi * c + oc / og) * h + iy) * w + ix;
                                    let ki = (oc * kh + ky) * kh + kx;
                                    let add = |e: &mut (f64, f64), p: f64| {
                                        e.0 += p;
                                        e.1 += p.abs();
                                    };
                                    add(&mut y_def[yi], f64::from(k[ki]) * f64::from(x[xi]));
                                    add(&mut dx_def[xi], f64::from(k[ki]) * f64::from(dy[yi]));
                                    add(&mut dk_def[ki], f64::from(x[xi]) * f64::from(dy[yi]));
                                }
                            }
                        }
                    }
                }
            }
            let check = |got: &[f32], want: &[(f64, f64)], what: &str| {
                assert_eq!(got.len(), want.len());
                for (i, (g, (e, mag))) in got.iter().zip(want).enumerate() {
                    assert!(
                        (f64::from(*g) - e).abs() <= 1e-5 * mag.max(1e-30),
                        "{what} of {b}×{c}×{h}×{w} k{kh} s{stride} p{pad} d{dilation} ×{og} at {i}: {g} vs {e}"
                    );
                }
            };
            let mut y = vec![f32::NAN; y_def.len()];
            conv2d(&s, &x, &k, &mut y);
            check(&y, &y_def, "forward");
            let mut dx = vec![f32::NAN; dx_def.len()];
            input_grad(&s, &dy, &k, &mut dx);
            check(&dx, &dx_def, "input gradient");
            let mut dk = vec![f32::NAN; dk_def.len()];
            weight_grad(&s, &x, &dy, &mut dk);
            check(&dk, &dk_def, "weight gradient");
        }
    }
}
