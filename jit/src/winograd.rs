//! 3×3 convolutions by Winograd's minimal filtering, F(2×2, 3×3) (Lavin and Gray, 2016).
//!
//! Each 2×2 block of outputs (a *tile*) is computed from the 4×4 input patch around it as
//! `Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A`: the 3×3 kernels `g` and the patches `d` are
//! transformed into 4×4 arrays, and the sum over input channels becomes, for each of the
//! 16 positions ξ of those arrays, one matrix product `M_ξ [O, T] = U_ξ [O, C] · V_ξ [C, T]`
//! over the tiles `T`. That is 16·O·C multiplies per tile against im2col's 36·O·C: 2.25×
//! fewer, at the price of the two transforms, which are additions only (B and A hold 0
//! and ±1). The products go through `gemm`, a few images' tiles at a time so that `V`
//! and `M` stay in L2.
//!
//! It applies to stride-1, dilation-1, ungrouped 3×3 convolutions with padding 1 (the
//! output is as large as the input), which is also the input gradient of such a
//! convolution (see `ConvShape::transposed`). Rounding: the transforms add at most four
//! terms of either sign per step, so the result differs from im2col's by a few ulps of
//! the largest partial sums; the backend suite checks it against the f64 interpreter.

use rayon::prelude::*;

use std::cell::Cell;

use crate::kernels::{ConvShape, Mat, gemm, reusing};

/// Tiles per product: enough images' tiles that a product is not dominated by its
/// setup, few enough that `V` and `M` (16 × channels × tiles each) stay in L2.
const TILES: usize = 400;

/// Whether [`conv2d`] computes convolution `s`: a 3×3 "same" convolution with stride 1,
/// and enough channels on both sides for the products to be worth their transforms
/// (measured with 32 and 64; with fewer, the products' inner dim is too short for gemm),
/// on maps too large for [`crate::batched`]: on 8×8 and smaller maps a batch has few
/// tiles, and transforming the kernel (16·O·C floats each way) costs more than the
/// products save (ResNet-34's [32, 512, 2, 2] weight gradient: 23.4 ms here, 19.6 batched).
pub fn applies(s: &ConvShape) -> bool {
    let w = s.win;
    s.kh == 3
        && s.kw == 3
        && w.stride == 1
        && w.dilation == 1
        && w.groups.max(1) == 1
        && w.pad == 1
        && s.oh == s.h
        && s.ow == s.w
        && s.c >= 32
        && s.o >= 32
        && !crate::batched::applies(s)
}

/// `U_ξ = G g Gᵀ` for every output and input channel, as `u[ξ][o][c]`.
fn kernel_transform(s: &ConvShape, k: &[f32]) -> Vec<f32> {
    let (o_n, c_n) = (s.o, s.c);
    let mut u = vec![0.0f32; 16 * o_n * c_n];
    for o in 0..o_n {
        for c in 0..c_n {
            let g = &k[(o * c_n + c) * 9..][..9];
            // G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1], applied to the rows, then the columns.
            let mut t = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            for (i, row) in t.iter().enumerate() {
                let (a, b, c2) = (row[0], row[1], row[2]);
                let out = [a, 0.5 * (a + b + c2), 0.5 * (a - b + c2), c2];
                for (j, v) in out.iter().enumerate() {
                    u[((i * 4 + j) * o_n + o) * c_n + c] = *v;
                }
            }
        }
    }
    u
}

/// The geometry of one product: images `first..first + count`, `th × tw` tiles each,
/// `stride` tiles in all (a multiple of 8, for gemm's unpacked path).
struct Batch {
    first: usize,
    count: usize,
    th: usize,
    tw: usize,
    stride: usize,
}

impl Batch {
    fn per(&self) -> usize {
        self.th * self.tw
    }
}

/// `V_ξ = Bᵀ d B` of every tile of the batch's images, as `v[ξ][c][tile]`. Every step is
/// a loop with unit stride over a whole plane (which LLVM vectorizes), not over one row of
/// tiles (14 or 7 long here, mostly remainder):
/// 1. the padded rows (row `y` is input row `y − 1`, zero outside the image, widened to
///    an even `2·tw` columns) are copied apart by parity, `rows[y % 2][y / 2]`;
/// 2. each parity's rows are split into their even and odd columns: input column `2t` of
///    row `y` is then element `(y / 2)·tw + t` of the even half, and column `2t + 1` the
///    same element of the odd half;
/// 3. along the rows (`[d0 − d2, d1 + d2, d2 − d1, d1 − d3]`, `d_j` at padded column
///    `2t + j`): `d0` and `d3` are the odd half one element back and the even half one
///    on, except in a row's first and last tile, where they are padding and are patched;
/// 4. along the columns, the same combinations of padded rows `2·ty + r`, which that
///    layout puts one row of tiles apart, written to `v`.
///
/// It rounds exactly as a tile-by-tile transform: the same sums in the same order.
fn input_transform(s: &ConvShape, x: &[f32], b: &Batch, v: &mut [f32], work: &mut Vec<f32>) {
    let (h, w, c_n, tw) = (s.h, s.w, s.c, b.tw);
    let (wp, half, per) = (2 * tw, b.th + 1, b.per());
    let n = half * tw; // elements of one parity's half-plane
    // rows [2][half][wp] | even [2][n + 1] | odd [2][1 + n] | combos [4][2][n]
    work.resize(2 * half * wp + 4 * (n + 1) + 8 * n, 0.0);
    let (rows, rest) = work.split_at_mut(2 * half * wp);
    let (halves, combos) = rest.split_at_mut(4 * (n + 1));
    let (even, odd) = halves.split_at_mut(2 * (n + 1));
    for par in 0..2 {
        // The padding each row's first d0 and last d3 would otherwise read.
        even[par * (n + 1) + n] = 0.0;
        odd[par * (n + 1)] = 0.0;
    }
    for i in 0..b.count {
        for c in 0..c_n {
            let p = &x[((b.first + i) * c_n + c) * h * w..][..h * w];
            for y in 0..2 * half {
                let dst = &mut rows[((y % 2) * half + y / 2) * wp..][..wp];
                match y.checked_sub(1).filter(|iy| *iy < h) {
                    Some(iy) => {
                        dst[..w].copy_from_slice(&p[iy * w..][..w]);
                        if wp > w {
                            dst[w] = 0.0;
                        }
                    }
                    None => dst.fill(0.0),
                }
            }
            for par in 0..2 {
                let src = &rows[par * half * wp..][..half * wp];
                let e = &mut even[par * (n + 1)..][..n];
                let o = &mut odd[par * (n + 1) + 1..][..n];
                for (q, pair) in src.chunks_exact(2).enumerate() {
                    e[q] = pair[0];
                    o[q] = pair[1];
                }
                let e = &even[par * (n + 1)..][..n + 1];
                let o = &odd[par * (n + 1)..][..n + 1];
                // d0 = o[q], d1 = e[q], d2 = o[q + 1], d3 = e[q + 1].
                let (d0, d1, d2, d3) = (&o[..n], &e[..n], &o[1..], &e[1..]);
                let out = |j: usize| (j * 2 + par) * n;
                let (r0, rest) = combos[out(0)..].split_at_mut(n);
                for q in 0..n {
                    r0[q] = d0[q] - d2[q];
                }
                let r1 = &mut rest[n..][..n];
                for q in 0..n {
                    r1[q] = d1[q] + d2[q];
                }
                let r2 = &mut combos[out(2)..][..n];
                for q in 0..n {
                    r2[q] = d2[q] - d1[q];
                }
                let r3 = &mut combos[out(3)..][..n];
                for q in 0..n {
                    r3[q] = d1[q] - d3[q];
                }
                for y in 0..half {
                    let (first, last) = (y * tw, y * tw + tw - 1);
                    combos[out(0) + first] = -d2[first];
                    combos[out(3) + last] = d1[last];
                }
            }
            let base = i * per;
            for j in 0..4 {
                // Patch row r of tile (ty, t) is padded row 2·ty + r.
                let f = |r: usize| &combos[(j * 2 + r % 2) * n + (r / 2) * tw..][..per];
                let (f0, f1, f2, f3) = (f(0), f(1), f(2), f(3));
                let out = |k: usize| ((k * 4 + j) * c_n + c) * b.stride + base;
                for (q, o) in v[out(0)..][..per].iter_mut().enumerate() {
                    *o = f0[q] - f2[q];
                }
                for (q, o) in v[out(1)..][..per].iter_mut().enumerate() {
                    *o = f1[q] + f2[q];
                }
                for (q, o) in v[out(2)..][..per].iter_mut().enumerate() {
                    *o = f2[q] - f1[q];
                }
                for (q, o) in v[out(3)..][..per].iter_mut().enumerate() {
                    *o = f1[q] - f3[q];
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` of every tile (`Aᵀ = [1 1 1 0; 0 1 −1 −1]`), written to the outputs that
/// exist (the last tile row or column is half outside an odd-sized output). As in
/// [`input_transform`], both reductions run over all tiles of an image at once, into
/// `z[dy][dx][tile]`; only the final interleaving into output rows goes row by row.
fn output_transform(s: &ConvShape, m: &[f32], b: &Batch, y: &mut [f32], z: &mut Vec<f32>) {
    let (oh, ow, o_n, tw) = (s.oh, s.ow, s.o, b.tw);
    let per = b.per();
    // cols[dy][j][tile] (8 arrays), then z[dy][dx][tile] (4 arrays).
    z.resize(12 * per, 0.0);
    let (cols, zs) = z.split_at_mut(8 * per);
    for i in 0..b.count {
        let base = i * per;
        for o in 0..o_n {
            let mr = |r: usize, j: usize| &m[((r * 4 + j) * o_n + o) * b.stride + base..][..per];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (mr(0, j), mr(1, j), mr(2, j), mr(3, j));
                let (c0, c1) = cols[2 * j * per..][..2 * per].split_at_mut(per);
                for q in 0..per {
                    c0[q] = m0[q] + m1[q] + m2[q];
                    c1[q] = m1[q] - m2[q] - m3[q];
                }
            }
            for dy in 0..2 {
                let c = |j: usize| &cols[(2 * j + dy) * per..][..per];
                let (c0, c1, c2, c3) = (c(0), c(1), c(2), c(3));
                let (z0, z1) = zs[2 * dy * per..][..2 * per].split_at_mut(per);
                for q in 0..per {
                    z0[q] = c0[q] + c1[q] + c2[q];
                    z1[q] = c1[q] - c2[q] - c3[q];
                }
            }
            let yp = &mut y[((b.first + i) * o_n + o) * oh * ow..][..oh * ow];
            for (oy, line) in yp.chunks_exact_mut(ow).enumerate() {
                let (ty, dy) = (oy / 2, oy % 2);
                let z0 = &zs[2 * dy * per + ty * tw..][..tw];
                let z1 = &zs[(2 * dy + 1) * per + ty * tw..][..tw];
                for (t, pair) in line.chunks_exact_mut(2).enumerate() {
                    pair[0] = z0[t];
                    pair[1] = z1[t];
                }
                if ow % 2 == 1 {
                    line[ow - 1] = z0[tw - 1];
                }
            }
        }
    }
}

/// A thread's buffers, reused across its batches and calls: `V`, `M`, and the
/// transforms' working rows.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// Sizes `buf` to `rows` rows of `stride` tiles and zeroes each row's tiles past `used`:
/// the products run over whole rows, and the weight gradient sums over them.
fn tile_rows(buf: &mut Vec<f32>, rows: usize, stride: usize, used: usize) {
    buf.resize(rows * stride, 0.0);
    if used < stride {
        for row in buf.chunks_exact_mut(stride) {
            row[used..].fill(0.0);
        }
    }
}

/// `y = conv2d(x, k)` for a convolution [`applies`] accepts.
pub fn conv2d(s: &ConvShape, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (th, tw) = (s.oh.div_ceil(2), s.ow.div_ceil(2));
    let per = th * tw;
    let images = (TILES / per.max(1)).clamp(1, s.b.max(1));
    let u = kernel_transform(s, k);
    let (o_n, c_n) = (s.o, s.c);
    let image_len = o_n * s.oh * s.ow;
    // Small images (a 2×2 output is one tile) put the whole batch in fewer chunks than
    // there are threads; the products are then split instead.
    let split = s.b.div_ceil(images) < crate::team::width();
    y.par_chunks_mut(images * image_len)
        .enumerate()
        .for_each(|(chunk, ys)| {
            reusing(&SCRATCH, |Scratch { v, m, rows }| {
                let count = ys.len() / image_len;
                let stride = (count * per).next_multiple_of(8);
                let batch = Batch {
                    first: chunk * images,
                    count,
                    th,
                    tw,
                    stride,
                };
                tile_rows(v, 16 * c_n, stride, count * per);
                m.resize(16 * o_n * stride, 0.0);
                input_transform(s, x, &batch, v, rows);
                for xi in 0..16 {
                    // M_ξ [O, T] = U_ξ [O, C] · V_ξ [C, T]
                    // SAFETY: the three blocks are disjoint and inside their buffers.
                    unsafe {
                        gemm(
                            o_n,
                            stride,
                            c_n,
                            m[xi * o_n * stride..].as_mut_ptr(),
                            stride as isize,
                            false,
                            Mat {
                                ptr: u[xi * o_n * c_n..].as_ptr(),
                                rs: c_n as isize,
                                cs: 1,
                            },
                            Mat {
                                ptr: v[xi * c_n * stride..].as_ptr(),
                                rs: stride as isize,
                                cs: 1,
                            },
                            split,
                        )
                    };
                }
                // The chunk's images start at image 0 of `ys`.
                let local = Batch { first: 0, ..batch };
                output_transform(s, m, &local, ys, rows);
            })
        });
}

/// `dS = A dY Aᵀ` of every 2×2 tile of the output gradient (`A = [1 0; 1 1; 1 −1; 0 −1]`),
/// as `ds[ξ][o][tile]`: the transpose of [`output_transform`]. Outputs past an odd-sized
/// edge count as zero, as the forward pass never wrote them.
fn gradient_transform(s: &ConvShape, dy: &[f32], b: &Batch, ds: &mut [f32], g: &mut Vec<f32>) {
    let (oh, ow, o_n, tw) = (s.oh, s.ow, s.o, b.tw);
    let per = b.per();
    // g[r][q][tile]: entry (r, q) of each tile; then rows[k][q][tile] of A·dY.
    g.resize(12 * per, 0.0);
    let (tiles, rows) = g.split_at_mut(4 * per);
    if oh % 2 == 1 {
        // The second row of the last row of tiles lies past the edge, in every plane.
        for q in 0..2 {
            tiles[(2 + q) * per + (b.th - 1) * tw..][..tw].fill(0.0);
        }
    }
    for i in 0..b.count {
        let base = i * per;
        for o in 0..o_n {
            let dyp = &dy[((b.first + i) * o_n + o) * oh * ow..][..oh * ow];
            for (oy, line) in dyp.chunks_exact(ow).enumerate() {
                let (ty, r) = (oy / 2, oy % 2);
                let (g0, g1) = tiles[2 * r * per..][..2 * per].split_at_mut(per);
                let (g0, g1) = (&mut g0[ty * tw..][..tw], &mut g1[ty * tw..][..tw]);
                for (t, pair) in line.chunks_exact(2).enumerate() {
                    g0[t] = pair[0];
                    g1[t] = pair[1];
                }
                if ow % 2 == 1 {
                    g0[tw - 1] = line[ow - 1];
                    g1[tw - 1] = 0.0;
                }
            }
            for q in 0..2 {
                let (a, c) = (&tiles[q * per..][..per], &tiles[(2 + q) * per..][..per]);
                let (r0, rest) = rows[q * per..].split_at_mut(per);
                let r1 = &mut rest[per..][..per];
                for t in 0..per {
                    r0[t] = a[t] + c[t];
                    r1[t] = a[t] - c[t];
                }
            }
            // A·dY rows: [g0j, g0j + g1j, g0j − g1j, −g1j]; then the same along columns.
            let row = |k: usize, q: usize| -> &[f32] {
                match k {
                    0 => &tiles[q * per..][..per],
                    1 => &rows[q * per..][..per],
                    2 => &rows[(2 + q) * per..][..per],
                    _ => &tiles[(2 + q) * per..][..per],
                }
            };
            for k in 0..4 {
                let (p, qv) = (row(k, 0), row(k, 1));
                let sign = if k == 3 { -1.0 } else { 1.0 };
                let out = |j: usize| ((k * 4 + j) * o_n + o) * b.stride + base;
                for (t, d) in ds[out(0)..][..per].iter_mut().enumerate() {
                    *d = sign * p[t];
                }
                for (t, d) in ds[out(1)..][..per].iter_mut().enumerate() {
                    *d = sign * (p[t] + qv[t]);
                }
                for (t, d) in ds[out(2)..][..per].iter_mut().enumerate() {
                    *d = sign * (p[t] - qv[t]);
                }
                for (t, d) in ds[out(3)..][..per].iter_mut().enumerate() {
                    *d = -sign * qv[t];
                }
            }
        }
    }
}

/// `dk` of `y = conv2d(x, k)` for a convolution [`applies`] accepts: the transpose of the
/// forward algorithm, `dU_ξ [O, C] = Σ_T dS_ξ [O, T] · V_ξ [C, T]ᵀ` over all tiles (16
/// products with the tiles as the inner dim, accumulated per block of images), then
/// `dk = Gᵀ dU G`.
pub fn weight_grad(s: &ConvShape, x: &[f32], dy: &[f32], dk: &mut [f32]) {
    let (th, tw) = (s.oh.div_ceil(2), s.ow.div_ceil(2));
    let per = th * tw;
    let images = (TILES / per.max(1)).clamp(1, s.b.max(1));
    let (o_n, c_n) = (s.o, s.c);
    let chunks = s.b.div_ceil(images);
    // One partial per block of chunks: as many blocks as the machine's width, whatever
    // the threads, so the partial sums (added in block order) are always the same.
    let blocks = crate::team::width().clamp(1, chunks.max(1));
    let per_thread = chunks.div_ceil(blocks);
    // Fewer blocks than threads (the whole batch in one chunk): split the products.
    let split = blocks < crate::team::width();
    let partials: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|t| {
            let mut du = vec![0.0f32; 16 * o_n * c_n];
            reusing(&SCRATCH, |sc| {
                for chunk in (t * per_thread)..((t + 1) * per_thread).min(chunks) {
                    let first = chunk * images;
                    let count = images.min(s.b - first);
                    let stride = (count * per).next_multiple_of(8);
                    let batch = Batch {
                        first,
                        count,
                        th,
                        tw,
                        stride,
                    };
                    tile_rows(&mut sc.v, 16 * c_n, stride, count * per);
                    tile_rows(&mut sc.m, 16 * o_n, stride, count * per);
                    input_transform(s, x, &batch, &mut sc.v, &mut sc.rows);
                    gradient_transform(s, dy, &batch, &mut sc.m, &mut sc.rows);
                    for xi in 0..16 {
                        // dU_ξ [O, C] += dS_ξ [O, T] · V_ξᵀ [T, C]
                        // SAFETY: the blocks are disjoint and inside their buffers.
                        unsafe {
                            gemm(
                                o_n,
                                c_n,
                                stride,
                                du[xi * o_n * c_n..].as_mut_ptr(),
                                c_n as isize,
                                true,
                                Mat {
                                    ptr: sc.m[xi * o_n * stride..].as_ptr(),
                                    rs: stride as isize,
                                    cs: 1,
                                },
                                Mat {
                                    ptr: sc.v[xi * c_n * stride..].as_ptr(),
                                    rs: 1,
                                    cs: stride as isize,
                                },
                                split,
                            )
                        };
                    }
                }
            });
            du
        })
        .collect();
    // dk = Gᵀ dU G, G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
    let gt = |u: [f32; 4]| {
        [
            u[0] + 0.5 * (u[1] + u[2]),
            0.5 * (u[1] - u[2]),
            0.5 * (u[1] + u[2]) + u[3],
        ]
    };
    for o in 0..o_n {
        for c in 0..c_n {
            let du = |xi: usize| {
                partials
                    .iter()
                    .map(|p| p[(xi * o_n + o) * c_n + c])
                    .sum::<f32>()
            };
            let rows: [[f32; 3]; 4] = std::array::from_fn(|r| {
                gt([du(r * 4), du(r * 4 + 1), du(r * 4 + 2), du(r * 4 + 3)])
            });
            let out = &mut dk[(o * c_n + c) * 9..][..9];
            for j in 0..3 {
                let col = gt([rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
                for (i, v) in col.iter().enumerate() {
                    out[i * 3 + j] = *v;
                }
            }
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

    /// Forward and weight gradient against im2col, on odd and even sizes, with one and
    /// several images per product (28×28 puts two images in each, the last one alone).
    #[test]
    fn winograd_matches_im2col() {
        let win = Window {
            kernel: 3,
            stride: 1,
            pad: 1,
            dilation: 1,
            groups: 1,
        };
        for (b, c, h, w, o) in [
            (3, 5, 7, 5, 4),
            (2, 8, 6, 6, 3),
            (5, 3, 28, 28, 6),
            (1, 4, 1, 9, 2),
            (2, 3, 1, 1, 2),
            (2, 3, 2, 2, 2),
            (2, 3, 4, 4, 2),
            (2, 3, 3, 3, 2),
            (2, 3, 9, 1, 2),
            (4, 512, 2, 2, 512),
            (4, 64, 2, 2, 8),
        ] {
            let s = ConvShape::new(&[b, c, h, w], &[o, c, 3, 3], &[b, o, h, w], win);
            let (x, k, dy) = (
                values(b * c * h * w, 1),
                values(o * c * 9, 2),
                values(b * o * h * w, 3),
            );
            let close = |got: &[f32], want: &[f32], what: &str| {
                let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (g, e)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-5 * scale,
                        "{what} {b}×{c}×{h}×{w}→{o} at {i}: {g} vs {e}"
                    );
                }
            };
            let (mut y, mut want) = (vec![f32::NAN; b * o * h * w], vec![0.0; b * o * h * w]);
            conv2d(&s, &x, &k, &mut y);
            conv2d_im2col(&s, &x, &k, &mut want);
            close(&y, &want, "forward");
            let (mut dk, mut want) = (vec![f32::NAN; o * c * 9], vec![0.0; o * c * 9]);
            weight_grad(&s, &x, &dy, &mut dk);
            weight_grad_im2col(&s, &x, &dy, &mut want);
            close(&dk, &want, "weight gradient");
        }
    }
}
