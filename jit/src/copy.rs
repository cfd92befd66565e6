//! Copies that move data without arithmetic: transposes, broadcasts, pads, slices and
//! concatenations.
//!
//! Transposes and broadcasts are one strided copy: the output, row-major, is read from
//! its source through a stride per output dimension. Before copying, the dimensions are
//! simplified (dimensions of size 1 dropped, neighbours that are contiguous in the
//! source merged), and the copy then takes one of three shapes:
//!
//! - the innermost dimension is contiguous in the source (a permute that keeps the last
//!   axis, like attention's `[B, N, 3, H, d] -> [3, B, H, N, d]`): whole runs are copied
//!   with `copy_from_slice`;
//! - it is a broadcast (source stride 0): runs are filled;
//! - some other dimension is the source's contiguous one (a true transpose): the copy
//!   goes by square tiles of those two dimensions, so reads and writes both stay within
//!   a few cache lines per tile instead of striding through memory on one side.
//!
//! Work is cut into independent parts (rows, or tiles) that run on rayon's pool when the
//! copy is large; every part writes its own elements of the output.

use rayon::prelude::*;

/// A copy smaller than this (in elements) runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// The side of a transpose tile: 32 rows of 32 floats are 4 KiB read and 4 KiB written.
const TILE: usize = 32;

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The output's dimensions after simplification: sizes and source strides, outermost
/// first, with no dimension of size 1 and no two neighbours that could be one.
fn simplify(src: &[usize], shape: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut size, mut stride): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (&n, &s) in shape.iter().zip(src) {
        if n == 1 {
            continue;
        }
        // Dimension d (the last kept) and this one are one dimension when stepping d
        // once moves the source as far as stepping this one n times.
        if let (Some(&ps), Some(pn)) = (stride.last(), size.last_mut())
            && ps == s * n
        {
            *pn *= n;
            if let Some(l) = stride.last_mut() {
                *l = s;
            }
            continue;
        }
        size.push(n);
        stride.push(s);
    }
    if size.is_empty() {
        size.push(1);
        stride.push(0);
    }
    (size, stride)
}

/// The source offset of the outer index `r` (row-major over `size`, skipping the
/// dimensions in `skip`).
fn offset(mut r: usize, size: &[usize], stride: &[usize], skip: &[usize]) -> usize {
    let mut off = 0;
    for d in (0..size.len()).rev() {
        if skip.contains(&d) {
            continue;
        }
        off += (r % size[d]) * stride[d];
        r /= size[d];
    }
    off
}

/// An output address that parts on other threads may write (each its own elements).
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the parts of a copy write disjoint elements of the output.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The address of element `i` (a method, so closures capture the whole `Out`).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Fills `out` (shape `oshape`) with `x` read through `src_strides` per output dim (a
/// general strided copy: transposes and broadcasts).
pub fn strided_copy(x: &[f32], src_strides: &[usize], oshape: &[usize], out: &mut [f32]) {
    debug_assert_eq!(out.len(), oshape.iter().product::<usize>());
    if out.is_empty() {
        return;
    }
    let (size, stride) = simplify(src_strides, oshape);
    let last = size.len() - 1;
    let (inner, inner_stride) = (size[last], stride[last]);
    let tiled = (inner_stride > 1)
        .then(|| (0..last).rev().find(|&d| stride[d] == 1))
        .flatten();
    let large = out.len() >= PARALLEL_MIN;
    let Some(e) = tiled else {
        // Rows of the innermost dimension: contiguous, broadcast or strided.
        let row = |(r, dst): (usize, &mut [f32])| {
            let off = offset(r, &size[..last], &stride[..last], &[]);
            match inner_stride {
                1 => dst.copy_from_slice(&x[off..off + inner]),
                0 => dst.fill(x[off]),
                s => {
                    for (j, v) in dst.iter_mut().enumerate() {
                        *v = x[off + j * s];
                    }
                }
            }
        };
        // Parallel rows are at least a few thousand elements, so that a row's index
        // arithmetic stays small beside its copy.
        if large {
            let rows_per = (4096 / inner).max(1);
            out.par_chunks_mut(inner * rows_per)
                .enumerate()
                .for_each(|(c, chunk)| {
                    chunk
                        .chunks_mut(inner)
                        .enumerate()
                        .for_each(|(i, dst)| row((c * rows_per + i, dst)))
                });
        } else {
            out.chunks_mut(inner).enumerate().for_each(row);
        }
        return;
    };
    // A transpose of dimensions e (contiguous in the source) and `last` (contiguous in
    // the output), for every index of the other dimensions, tile by tile.
    let (rows, ostr) = (size[e], strides(&size));
    let outer: usize = size.iter().product::<usize>() / (rows * inner);
    let (row_tiles, col_tiles) = (rows.div_ceil(TILE), inner.div_ceil(TILE));
    let dst = Out(out.as_mut_ptr());
    let tile = |t: usize| {
        let (o, rt, ct) = (
            t / (row_tiles * col_tiles),
            t / col_tiles % row_tiles,
            t % col_tiles,
        );
        let (src0, dst0) = (
            offset(o, &size[..last], &stride[..last], &[e]),
            offset(o, &size[..last], &ostr[..last], &[e]),
        );
        for i in rt * TILE..((rt + 1) * TILE).min(rows) {
            let (s, d) = (src0 + i, dst0 + i * ostr[e]);
            for j in ct * TILE..((ct + 1) * TILE).min(inner) {
                // SAFETY: (o, i, j) is inside the output; tiles write disjoint elements.
                unsafe { *dst.at(d + j) = x[s + j * inner_stride] };
            }
        }
    };
    let tiles = outer * row_tiles * col_tiles;
    if large {
        (0..tiles).into_par_iter().for_each(tile);
    } else {
        (0..tiles).for_each(tile);
    }
}

/// `transpose(x, perm)`.
pub fn transpose(x: &[f32], xshape: &[usize], perm: &[usize], out: &mut [f32]) {
    let xs = strides(xshape);
    let oshape: Vec<usize> = perm.iter().map(|p| xshape[*p]).collect();
    let src: Vec<usize> = perm.iter().map(|p| xs[*p]).collect();
    strided_copy(x, &src, &oshape, out);
}

/// `broadcast(x)` to `oshape` (x's dims right-aligned; 1-sized dims stretch).
pub fn broadcast(x: &[f32], xshape: &[usize], oshape: &[usize], out: &mut [f32]) {
    let off = oshape.len() - xshape.len();
    let xs = strides(xshape);
    let src: Vec<usize> = (0..oshape.len())
        .map(|d| {
            if d < off || xshape[d - off] == 1 {
                0
            } else {
                xs[d - off]
            }
        })
        .collect();
    strided_copy(x, &src, oshape, out);
}

/// Copies between tensors that differ along one axis: `x` with `xn` entries on that axis
/// is placed at `at` inside `out` with `on` entries (pad, concat), or the reverse (slice,
/// `take`).
#[allow(clippy::too_many_arguments)]
pub fn along_axis(
    x: &[f32],
    outer: usize,
    inner: usize,
    xn: usize,
    on: usize,
    at: usize,
    take: bool,
    out: &mut [f32],
) {
    for o in 0..outer {
        if take {
            out[o * on * inner..][..on * inner]
                .copy_from_slice(&x[(o * xn + at) * inner..][..on * inner]);
        } else {
            out[(o * on + at) * inner..][..xn * inner]
                .copy_from_slice(&x[o * xn * inner..][..xn * inner]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy by its definition: output element at multi-index i reads
    /// x[Σ i_d · src_d].
    fn naive(x: &[f32], src: &[usize], shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut r| {
                let mut off = 0;
                for d in (0..shape.len()).rev() {
                    off += (r % shape[d]) * src[d];
                    r /= shape[d];
                }
                x[off]
            })
            .collect()
    }

    fn check(xshape: &[usize], perm: &[usize]) {
        let n: usize = xshape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let xs = strides(xshape);
        let oshape: Vec<usize> = perm.iter().map(|p| xshape[*p]).collect();
        let src: Vec<usize> = perm.iter().map(|p| xs[*p]).collect();
        let mut out = vec![f32::NAN; n];
        transpose(&x, xshape, perm, &mut out);
        assert_eq!(out, naive(&x, &src, &oshape), "{xshape:?} by {perm:?}");
    }

    #[test]
    fn transposes_match_their_definition() {
        // Attention's permutes (last axis kept), true transposes at odd sizes and sizes
        // past a tile, size-1 axes, merged axes, and copies large enough to run in parallel.
        check(&[5, 3, 3, 2, 7], &[2, 0, 3, 1, 4]);
        check(&[3, 5, 3, 7, 6], &[1, 3, 0, 2, 4]);
        check(&[33, 65], &[1, 0]);
        check(&[3, 40, 1, 37], &[0, 3, 2, 1]);
        check(&[2, 3, 4, 5], &[0, 1, 2, 3]);
        check(&[2, 3, 4, 5], &[3, 0, 1, 2]);
        check(&[2, 3, 4, 5], &[1, 2, 3, 0]);
        check(&[1, 1, 1], &[2, 1, 0]);
        check(&[64, 17, 3, 3, 64], &[2, 0, 3, 1, 4]);
        check(&[8, 96, 70, 9], &[0, 3, 1, 2]);
        check(&[8, 9, 70, 96], &[0, 2, 3, 1]);
        check(&[300, 257], &[1, 0]);
    }

    #[test]
    fn broadcasts_match_their_definition() {
        for (xshape, oshape) in [
            (vec![3], vec![4, 3]),
            (vec![4, 1], vec![4, 5]),
            (vec![1, 5, 1], vec![2, 5, 300]),
            (vec![7, 1, 33], vec![7, 200, 33]),
            (vec![1], vec![1]),
        ] {
            let n: usize = xshape.iter().product();
            let x: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
            let m: usize = oshape.iter().product();
            let mut out = vec![f32::NAN; m];
            broadcast(&x, &xshape, &oshape, &mut out);
            // By definition: output index i reads x at i's last xshape.len() coordinates,
            // each taken modulo x's size there (0 on a stretched axis of size 1).
            let off = oshape.len() - xshape.len();
            let expect: Vec<f32> = (0..m)
                .map(|mut r| {
                    let mut coords = vec![0; oshape.len()];
                    for d in (0..oshape.len()).rev() {
                        coords[d] = r % oshape[d];
                        r /= oshape[d];
                    }
                    let flat = (0..xshape.len())
                        .fold(0, |acc, d| acc * xshape[d] + coords[d + off] % xshape[d]);
                    x[flat]
                })
                .collect();
            assert_eq!(out, expect, "{xshape:?} to {oshape:?}");
        }
    }
}
