//! The device kernels, written once in CubeCL's Rust dialect and compiled by each runtime
//! (WGSL on wgpu, CUDA C++ on CUDA, HIP on ROCm).
//!
//! Every kernel computes one output element per unit and is given its element count:
//! units past it do nothing, so any cube count that covers the output is right. Shapes
//! and strides travel in a small `u32` geometry buffer built when the step is compiled,
//! so one compiled kernel serves every shape; only fused loops are compiled per program
//! (their op list is a comptime argument, interpreted at expansion into straight-line
//! code, and cached by value by the runtime).
//!
//! Invariants: no atomics and no subgroup operations (software Vulkan has neither), so
//! every result is the same on every run; reductions accumulate in a fixed order; every
//! index is `u32` (buffers above 4 GiB are refused when planning, by the target's
//! largest binding).

// Kernels assign a result in every comptime branch after a default; rustc sees the
// default as unread, but the expansion needs the variable declared first.
#![allow(unused_assignments)]

use cubecl::prelude::*;

/// How a fused loop reads a leaf (see `nabla_sched::Access`): element `i` (`kind` 0),
/// element 0 (`kind` 1) or element `(i / inner) % len` (`kind` 2, a broadcast).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Leaf {
    pub kind: u32,
    pub inner: u32,
    pub len: u32,
}

/// One expression of a fused loop: a code from [`code`] and operands (indices of earlier
/// expressions; a leaf index for [`code::LEAF`]); `bits` holds a constant's value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Op {
    pub code: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub bits: u32,
}

/// A fused loop as the kernel interprets it: leaves, an SSA of [`Op`]s, stores.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Prog {
    pub leaves: Vec<Leaf>,
    pub ops: Vec<Op>,
    pub stores: Vec<u32>,
}

/// Expression codes of [`Op`].
pub mod code {
    pub const LEAF: u32 = 0;
    pub const CONST: u32 = 1;
    pub const NEG: u32 = 2;
    pub const EXP: u32 = 3;
    pub const LOG: u32 = 4;
    pub const TANH: u32 = 5;
    pub const SIGMOID: u32 = 6;
    pub const RELU: u32 = 7;
    pub const SQRT: u32 = 8;
    pub const RSQRT: u32 = 9;
    pub const ABS: u32 = 10;
    pub const ERF: u32 = 11;
    pub const SIN: u32 = 12;
    pub const COS: u32 = 13;
    pub const SIGN: u32 = 14;
    pub const ADD: u32 = 20;
    pub const SUB: u32 = 21;
    pub const MUL: u32 = 22;
    pub const DIV: u32 = 23;
    pub const MAX: u32 = 24;
    pub const MIN: u32 = 25;
    pub const POW: u32 = 26;
    pub const EQ: u32 = 30;
    pub const NE: u32 = 31;
    pub const LT: u32 = 32;
    pub const LE: u32 = 33;
    pub const GT: u32 = 34;
    pub const GE: u32 = 35;
    pub const SELECT: u32 = 40;
    pub const TRUNC: u32 = 41;
    pub const NONZERO: u32 = 42;
    pub const ROUND_BF16: u32 = 43;

    /// The op's name, for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            LEAF => "leaf",
            CONST => "const",
            NEG => "neg",
            EXP => "exp",
            LOG => "log",
            TANH => "tanh",
            SIGMOID => "sigmoid",
            RELU => "relu",
            SQRT => "sqrt",
            RSQRT => "rsqrt",
            ABS => "abs",
            ERF => "erf",
            SIN => "sin",
            COS => "cos",
            SIGN => "sign",
            ADD => "add",
            SUB => "sub",
            MUL => "mul",
            DIV => "div",
            MAX => "max",
            MIN => "min",
            POW => "pow",
            EQ => "eq",
            NE => "ne",
            LT => "lt",
            LE => "le",
            GT => "gt",
            GE => "ge",
            SELECT => "select",
            TRUNC => "trunc",
            NONZERO => "nonzero",
            ROUND_BF16 => "round_bf16",
            _ => "unknown",
        }
    }
}

/// A fused elementwise loop: `outs[s][i] = value of prog.stores[s]` for `i < n`.
#[cube(launch_unchecked)]
pub fn fused(
    ins: &Sequence<Array<f32>>,
    outs: &mut Sequence<Array<f32>>,
    n: u32,
    #[comptime] prog: Prog,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let mut vals = Sequence::<f32>::new();
        #[unroll]
        for e in 0..prog.ops.len() {
            let op = comptime![prog.ops[e]];
            let mut r = f32::new(0.0);
            if comptime![op.code == code::LEAF] {
                let k = comptime![op.a as usize];
                let leaf = comptime![prog.leaves[op.a as usize]];
                let src = ins.index(k);
                if comptime![leaf.kind == 0] {
                    r = src[i as usize];
                } else if comptime![leaf.kind == 1] {
                    r = src[0];
                } else {
                    let inner = comptime![leaf.inner];
                    let len = comptime![leaf.len];
                    r = src[((i / inner.runtime()) % len.runtime()) as usize];
                }
            } else if comptime![op.code == code::CONST] {
                r = f32::reinterpret(op.bits.runtime());
            } else if comptime![op.code < code::ADD] {
                let x = *vals.index(comptime![op.a as usize]);
                r = unary(x, comptime![op.code]);
            } else if comptime![op.code < code::EQ] {
                let x = *vals.index(comptime![op.a as usize]);
                let y = *vals.index(comptime![op.b as usize]);
                r = binary(x, y, comptime![op.code]);
            } else if comptime![op.code < code::SELECT] {
                let x = *vals.index(comptime![op.a as usize]);
                let y = *vals.index(comptime![op.b as usize]);
                r = select(
                    compare(x, y, comptime![op.code]),
                    f32::new(1.0),
                    f32::new(0.0),
                );
            } else if comptime![op.code == code::SELECT] {
                let c = *vals.index(comptime![op.a as usize]);
                let x = *vals.index(comptime![op.b as usize]);
                let y = *vals.index(comptime![op.c as usize]);
                r = select(c != f32::new(0.0), x, y);
            } else if comptime![op.code == code::TRUNC] {
                let x = *vals.index(comptime![op.a as usize]);
                r = x.trunc();
            } else if comptime![op.code == code::ROUND_BF16] {
                // Ties to even in the upper half of the bits; NaN (by its bits: no
                // float comparison a shader compiler may fold) stays NaN.
                let x = *vals.index(comptime![op.a as usize]);
                let b = u32::reinterpret(x);
                let kept = (b + 0x7fffu32 + ((b >> 16u32) & 1u32)) & 0xffff_0000u32;
                r = select(
                    (b & 0x7fff_ffffu32) > 0x7f80_0000u32,
                    x,
                    f32::reinterpret(kept),
                );
            } else {
                let x = *vals.index(comptime![op.a as usize]);
                r = select(x != f32::new(0.0), f32::new(1.0), f32::new(0.0));
            }
            vals.push(r);
        }
        #[unroll]
        for s in 0..prog.stores.len() {
            let at = comptime![prog.stores[s] as usize];
            let out = outs.index_mut(s);
            out[i as usize] = *vals.index(at);
        }
    }
}

#[cube]
fn unary(x: f32, #[comptime] c: u32) -> f32 {
    let mut r = f32::new(0.0);
    if comptime![c == code::NEG] {
        r = -x;
    } else if comptime![c == code::EXP] {
        r = x.exp();
    } else if comptime![c == code::LOG] {
        r = x.ln();
    } else if comptime![c == code::TANH] {
        r = x.tanh();
    } else if comptime![c == code::SIGMOID] {
        r = f32::new(1.0) / (f32::new(1.0) + (-x).exp());
    } else if comptime![c == code::RELU] {
        r = select(x > f32::new(0.0), x, f32::new(0.0));
    } else if comptime![c == code::SQRT] {
        r = x.sqrt();
    } else if comptime![c == code::RSQRT] {
        r = f32::new(1.0) / x.sqrt();
    } else if comptime![c == code::ABS] {
        r = x.abs();
    } else if comptime![c == code::ERF] {
        r = Erf::erf(x);
    } else if comptime![c == code::SIN] {
        r = x.sin();
    } else if comptime![c == code::COS] {
        r = x.cos();
    } else {
        r = select(
            x > f32::new(0.0),
            f32::new(1.0),
            select(x < f32::new(0.0), f32::new(-1.0), f32::new(0.0)),
        );
    }
    r
}

#[cube]
fn binary(x: f32, y: f32, #[comptime] c: u32) -> f32 {
    let mut r = f32::new(0.0);
    if comptime![c == code::ADD] {
        r = x + y;
    } else if comptime![c == code::SUB] {
        r = x - y;
    } else if comptime![c == code::MUL] {
        r = x * y;
    } else if comptime![c == code::DIV] {
        r = x / y;
    } else if comptime![c == code::MAX] {
        r = select(x >= y, x, y);
    } else if comptime![c == code::MIN] {
        r = select(x <= y, x, y);
    } else {
        r = x.powf(y);
    }
    r
}

#[cube]
fn compare(x: f32, y: f32, #[comptime] c: u32) -> bool {
    let mut r = false;
    if comptime![c == code::EQ] {
        r = x == y;
    } else if comptime![c == code::NE] {
        r = x != y;
    } else if comptime![c == code::LT] {
        r = x < y;
    } else if comptime![c == code::LE] {
        r = x <= y;
    } else if comptime![c == code::GT] {
        r = x > y;
    } else {
        r = x >= y;
    }
    r
}

/// `out[i] = src[i]` for `i < n`.
#[cube(launch_unchecked)]
pub fn copy(src: &Array<f32>, out: &mut Array<f32>, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        out[i as usize] = src[i as usize];
    }
}

/// `out[i] = v` for `i < n`.
#[cube(launch_unchecked)]
pub fn fill(out: &mut Array<f32>, v: f32, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        out[i as usize] = v;
    }
}

/// A strided read: output element `i` (shape `geo[0..rank]`, row-major) is
/// `src[base + Σ idx_d · geo[rank + d]]` (transposes, broadcasts, slices).
#[cube(launch_unchecked)]
pub fn take(
    src: &Array<f32>,
    out: &mut Array<f32>,
    geo: &Array<u32>,
    n: u32,
    rank: u32,
    base: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let mut rem = i;
        let mut off = base;
        for t in 0..rank {
            let d = rank - 1 - t;
            let size = geo[d as usize];
            off += (rem % size) * geo[(rank + d) as usize];
            rem /= size;
        }
        out[i as usize] = src[off as usize];
    }
}

/// A strided write: source element `i` (shape `geo[0..rank]`, row-major) goes to
/// `out[base + Σ idx_d · geo[rank + d]]` (pad and concat place their inputs so).
#[cube(launch_unchecked)]
pub fn put(src: &Array<f32>, out: &mut Array<f32>, geo: &Array<u32>, n: u32, rank: u32, base: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let mut rem = i;
        let mut off = base;
        for t in 0..rank {
            let d = rank - 1 - t;
            let size = geo[d as usize];
            off += (rem % size) * geo[(rank + d) as usize];
            rem /= size;
        }
        out[off as usize] = src[i as usize];
    }
}

/// Sum (compensated) or max over the reduced dims: output element `o` decomposes over the kept dims
/// (sizes `geo[0..nk]`, source strides `geo[nk..2nk]`), and the `count` reduced
/// positions over the reduced dims (sizes then strides after those), in order.
#[cube(launch_unchecked)]
pub fn reduce(
    src: &Array<f32>,
    out: &mut Array<f32>,
    geo: &Array<u32>,
    n: u32,
    nk: u32,
    nr: u32,
    count: u32,
    #[comptime] max: bool,
) {
    let o = ABSOLUTE_POS as u32;
    if o < n {
        let mut rem = o;
        let mut base = 0u32;
        for t in 0..nk {
            let d = nk - 1 - t;
            let size = geo[d as usize];
            base += (rem % size) * geo[(nk + d) as usize];
            rem /= size;
        }
        let r0 = 2 * nk;
        let mut acc = f32::new(0.0);
        // The rounding error of the sum so far (compensated summation: f32 buffers
        // summed nearly as exactly as the CPU's f64 accumulators).
        let mut err = f32::new(0.0);
        if comptime![max] {
            acc = f32::reinterpret(0xff80_0000u32);
        }
        for r in 0..count {
            let mut rem = r;
            let mut off = base;
            for t in 0..nr {
                let d = nr - 1 - t;
                let size = geo[(r0 + d) as usize];
                off += (rem % size) * geo[(r0 + nr + d) as usize];
                rem /= size;
            }
            let v = src[off as usize];
            if comptime![max] {
                acc = select(v > acc, v, acc);
            } else {
                let y = v - err;
                let t = acc + y;
                err = (t - acc) - y;
                acc = t;
            }
        }
        out[o as usize] = acc;
    }
}

/// Index of the first maximum along an axis of `len` entries with `inner` elements after
/// it.
#[cube(launch_unchecked)]
pub fn argmax(src: &Array<f32>, out: &mut Array<f32>, n: u32, len: u32, inner: u32) {
    let o = ABSOLUTE_POS as u32;
    if o < n {
        let outer = o / inner;
        let j = o % inner;
        let mut best = f32::reinterpret(0xff80_0000u32);
        let mut at = 0u32;
        for k in 0..len {
            let v = src[((outer * len + k) * inner + j) as usize];
            if v > best {
                best = v;
                at = k;
            }
        }
        out[o as usize] = f32::cast_from(at);
    }
}

/// `out = a · b` over `batch` products of `m × k` by `k × n` read through strides
/// (transposes are strides); with `mode` 1, `out = base − c·(a·b)`; with `mode` 2,
/// `out = base − scale[0]·(a·b)` (an SGD update; `base` may be `out` itself: each
/// element is read before it is written, by the unit that writes it).
#[cube(launch_unchecked)]
pub fn matmul(
    a: &Array<f32>,
    b: &Array<f32>,
    out: &mut Array<f32>,
    base: &Array<f32>,
    scale: &Array<f32>,
    geo: &Array<u32>,
    c: f32,
    #[comptime] mode: u32,
) {
    // geo: batch, m, k, n, a's row and column strides, b's row and column strides.
    let m = geo[1];
    let k = geo[2];
    let n = geo[3];
    let total = geo[0] * m * n;
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let bi = idx / (m * n);
        let rem = idx % (m * n);
        let i = rem / n;
        let j = rem % n;
        let a0 = bi * m * k + i * geo[4];
        let b0 = bi * k * n + j * geo[7];
        let ak = geo[5];
        let bk = geo[6];
        let mut acc = f32::new(0.0);
        for t in 0..k {
            acc += a[(a0 + t * ak) as usize] * b[(b0 + t * bk) as usize];
        }
        if comptime![mode == 0] {
            out[idx as usize] = acc;
        } else if comptime![mode == 1] {
            out[idx as usize] = base[idx as usize] - c * acc;
        } else {
            out[idx as usize] = base[idx as usize] - scale[0] * acc;
        }
    }
}

// Convolution geometry (`geo`): b, c, h, w, o, kh, kw, oh, ow, stride, pad, dilation,
// groups — input [b, c, h, w], weights [o, c/groups, kh, kw], output [b, o, oh, ow].

/// The input row (or column) tap `t` of output position `p` reads, when inside `size`.
#[cube]
fn tap(p: u32, t: u32, stride: u32, dil: u32, pad: u32, size: u32) -> u32 {
    let q = p * stride + t * dil;
    // `size` (out of range) stands for "outside".
    select(q >= pad && q - pad < size, q - pad, size)
}

/// 2-D convolution, one output element per unit.
#[cube(launch_unchecked)]
pub fn conv2d(x: &Array<f32>, k: &Array<f32>, y: &mut Array<f32>, geo: &Array<u32>, total: u32) {
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let c = geo[1];
        let h = geo[2];
        let w = geo[3];
        let o = geo[4];
        let kh = geo[5];
        let kw = geo[6];
        let oh = geo[7];
        let ow = geo[8];
        let stride = geo[9];
        let pad = geo[10];
        let dil = geo[11];
        let groups = geo[12];
        let ox = idx % ow;
        let oy = (idx / ow) % oh;
        let oc = (idx / (ow * oh)) % o;
        let bb = idx / (ow * oh * o);
        let cg = c / groups;
        let g = oc / (o / groups);
        let mut acc = f32::new(0.0);
        for ci in 0..cg {
            for ky in 0..kh {
                let iy = tap(oy, ky, stride, dil, pad, h);
                if iy < h {
                    for kx in 0..kw {
                        let ix = tap(ox, kx, stride, dil, pad, w);
                        if ix < w {
                            let xv = x[(((bb * c + g * cg + ci) * h + iy) * w + ix) as usize];
                            let kv = k[(((oc * cg + ci) * kh + ky) * kw + kx) as usize];
                            acc += xv * kv;
                        }
                    }
                }
            }
        }
        y[idx as usize] = acc;
    }
}

/// The output position whose tap `t` reads input position `i` (`size`: none).
#[cube]
fn untap(i: u32, t: u32, stride: u32, dil: u32, pad: u32, size: u32) -> u32 {
    let q = i + pad;
    let s = t * dil;
    let d = q - select(q >= s, s, q);
    // `is_multiple_of` has no kernel expansion: the remainder it is.
    #[allow(clippy::manual_is_multiple_of)]
    let on_grid = d % stride == 0;
    select(q >= s && on_grid && d / stride < size, d / stride, size)
}

/// The gradient of a convolution with respect to its input: `dy` [b, o, oh, ow] and the
/// weights give `dx` [b, c, h, w], one element per unit.
#[cube(launch_unchecked)]
pub fn conv2d_input_grad(
    dy: &Array<f32>,
    k: &Array<f32>,
    dx: &mut Array<f32>,
    geo: &Array<u32>,
    total: u32,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let c = geo[1];
        let h = geo[2];
        let w = geo[3];
        let o = geo[4];
        let kh = geo[5];
        let kw = geo[6];
        let oh = geo[7];
        let ow = geo[8];
        let stride = geo[9];
        let pad = geo[10];
        let dil = geo[11];
        let groups = geo[12];
        let ix = idx % w;
        let iy = (idx / w) % h;
        let cf = (idx / (w * h)) % c;
        let bb = idx / (w * h * c);
        let cg = c / groups;
        let og = o / groups;
        let g = cf / cg;
        let ci = cf % cg;
        let mut acc = f32::new(0.0);
        for oo in 0..og {
            let oc = g * og + oo;
            for ky in 0..kh {
                let oy = untap(iy, ky, stride, dil, pad, oh);
                if oy < oh {
                    for kx in 0..kw {
                        let ox = untap(ix, kx, stride, dil, pad, ow);
                        if ox < ow {
                            let d = dy[(((bb * o + oc) * oh + oy) * ow + ox) as usize];
                            let kv = k[(((oc * cg + ci) * kh + ky) * kw + kx) as usize];
                            acc += d * kv;
                        }
                    }
                }
            }
        }
        dx[idx as usize] = acc;
    }
}

/// The gradient of a convolution with respect to its weights: the input `x` and `dy`
/// give `dk` [o, c/groups, kh, kw], one element per unit (summed over batch and output
/// positions in order).
#[cube(launch_unchecked)]
pub fn conv2d_weight_grad(
    x: &Array<f32>,
    dy: &Array<f32>,
    dk: &mut Array<f32>,
    geo: &Array<u32>,
    total: u32,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let b = geo[0];
        let c = geo[1];
        let h = geo[2];
        let w = geo[3];
        let o = geo[4];
        let kh = geo[5];
        let kw = geo[6];
        let oh = geo[7];
        let ow = geo[8];
        let stride = geo[9];
        let pad = geo[10];
        let dil = geo[11];
        let groups = geo[12];
        let cg = c / groups;
        let kx = idx % kw;
        let ky = (idx / kw) % kh;
        let ci = (idx / (kw * kh)) % cg;
        let oc = idx / (kw * kh * cg);
        let g = oc / (o / groups);
        // Compensated, as in `reduce`: a sum over the whole batch and map.
        let mut err = f32::new(0.0);
        let mut acc = f32::new(0.0);
        for bb in 0..b {
            for oy in 0..oh {
                let iy = tap(oy, ky, stride, dil, pad, h);
                if iy < h {
                    for ox in 0..ow {
                        let ix = tap(ox, kx, stride, dil, pad, w);
                        if ix < w {
                            let xv = x[(((bb * c + g * cg + ci) * h + iy) * w + ix) as usize];
                            let d = dy[(((bb * o + oc) * oh + oy) * ow + ox) as usize];
                            let y = xv * d - err;
                            let t = acc + y;
                            err = (t - acc) - y;
                            acc = t;
                        }
                    }
                }
            }
        }
        dk[idx as usize] = acc;
    }
}

// Pooling geometry (`geo`): planes, h, w, oh, ow, kernel, stride, pad, dilation.

/// Max or average pooling (the average divides by the whole window, padding included),
/// one output element per unit.
#[cube(launch_unchecked)]
pub fn pool(
    x: &Array<f32>,
    y: &mut Array<f32>,
    geo: &Array<u32>,
    total: u32,
    #[comptime] max: bool,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let h = geo[1];
        let w = geo[2];
        let oh = geo[3];
        let ow = geo[4];
        let ks = geo[5];
        let stride = geo[6];
        let pad = geo[7];
        let dil = geo[8];
        let ox = idx % ow;
        let oy = (idx / ow) % oh;
        let p = idx / (ow * oh);
        let mut acc = f32::new(0.0);
        if comptime![max] {
            acc = f32::reinterpret(0xff80_0000u32);
        }
        for ky in 0..ks {
            let iy = tap(oy, ky, stride, dil, pad, h);
            if iy < h {
                for kx in 0..ks {
                    let ix = tap(ox, kx, stride, dil, pad, w);
                    if ix < w {
                        let v = x[((p * h + iy) * w + ix) as usize];
                        if comptime![max] {
                            acc = select(v > acc, v, acc);
                        } else {
                            acc += v;
                        }
                    }
                }
            }
        }
        if comptime![max] {
            y[idx as usize] = acc;
        } else {
            y[idx as usize] = acc / f32::cast_from(ks * ks);
        }
    }
}

/// The gradient of max pooling: each window's first maximum (row-major) takes the
/// window's gradient. One input element per unit, which sums over the windows that
/// chose it.
#[cube(launch_unchecked)]
pub fn max_pool_grad(
    x: &Array<f32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
    geo: &Array<u32>,
    total: u32,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let h = geo[1];
        let w = geo[2];
        let oh = geo[3];
        let ow = geo[4];
        let ks = geo[5];
        let stride = geo[6];
        let pad = geo[7];
        let dil = geo[8];
        let ix = idx % w;
        let iy = (idx / w) % h;
        let p = idx / (w * h);
        let none = h * w;
        let mut acc = f32::new(0.0);
        for ky in 0..ks {
            let oy = untap(iy, ky, stride, dil, pad, oh);
            if oy < oh {
                for kx in 0..ks {
                    let ox = untap(ix, kx, stride, dil, pad, ow);
                    if ox < ow {
                        // This window reads (iy, ix): does it choose it?
                        let mut best = f32::new(0.0);
                        let mut at = none;
                        for wy in 0..ks {
                            let yy = tap(oy, wy, stride, dil, pad, h);
                            if yy < h {
                                for wx in 0..ks {
                                    let xx = tap(ox, wx, stride, dil, pad, w);
                                    if xx < w {
                                        let v = x[((p * h + yy) * w + xx) as usize];
                                        if at == none || v > best {
                                            best = v;
                                            at = yy * w + xx;
                                        }
                                    }
                                }
                            }
                        }
                        if at == iy * w + ix {
                            acc += dy[((p * oh + oy) * ow + ox) as usize];
                        }
                    }
                }
            }
        }
        dx[idx as usize] = acc;
    }
}

/// The gradient of average pooling, one input element per unit.
#[cube(launch_unchecked)]
pub fn avg_pool_grad(dy: &Array<f32>, dx: &mut Array<f32>, geo: &Array<u32>, total: u32) {
    let idx = ABSOLUTE_POS as u32;
    if idx < total {
        let h = geo[1];
        let w = geo[2];
        let oh = geo[3];
        let ow = geo[4];
        let ks = geo[5];
        let stride = geo[6];
        let pad = geo[7];
        let dil = geo[8];
        let ix = idx % w;
        let iy = (idx / w) % h;
        let p = idx / (w * h);
        let area = f32::cast_from(ks * ks);
        let mut acc = f32::new(0.0);
        for ky in 0..ks {
            let oy = untap(iy, ky, stride, dil, pad, oh);
            if oy < oh {
                for kx in 0..ks {
                    let ox = untap(ix, kx, stride, dil, pad, ow);
                    if ox < ow {
                        acc += dy[((p * oh + oy) * ow + ox) as usize] / area;
                    }
                }
            }
        }
        dx[idx as usize] = acc;
    }
}

/// Rows of `table` ([v, d]) picked by `idx` (clamped into the table).
#[cube(launch_unchecked)]
pub fn gather(table: &Array<f32>, idx: &Array<f32>, out: &mut Array<f32>, n: u32, d: u32, v: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let row = idx[(i / d) as usize];
        let r = u32::cast_from(select(row > f32::new(0.0), row, f32::new(0.0)));
        let r = select(r < v, r, v - 1);
        out[i as usize] = table[(r * d + i % d) as usize];
    }
}

/// One-hot rows of `classes` entries (an index outside `0..classes` gives a zero row).
#[cube(launch_unchecked)]
pub fn one_hot(idx: &Array<f32>, out: &mut Array<f32>, n: u32, classes: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let t = idx[(i / classes) as usize];
        let c = f32::cast_from(i % classes);
        out[i as usize] = select(t.trunc() == c, f32::new(1.0), f32::new(0.0));
    }
}

/// The counter-based generator of the reference interpreter (`interp::uniform`, a
/// SplitMix64 finalizer of `seed·φ + i + φ`) in 32-bit words (`h`igh and `l`ow), rounded
/// to f32 exactly as the CPU rounds its f64: the same bits on every device. `(zh, zl)`
/// is `seed·φ + φ`.
#[cube(launch_unchecked)]
pub fn uniform(out: &mut Array<f32>, n: u32, zh: u32, zl: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        // z = seed·φ + φ + i
        let l0 = zl + i;
        let h0 = zh + select(l0 < zl, 1u32, 0u32);
        // z = (z ^ (z >> 30)) · 0xbf58476d1ce4e5b9 (the low 64 bits of the product)
        let h1 = h0 ^ (h0 >> 30);
        let l1 = l0 ^ ((l0 >> 30) | (h0 << 2));
        let l2 = l1 * 0x1ce4_e5b9u32;
        let h2 = l1.mul_hi(0x1ce4_e5b9u32) + l1 * 0xbf58_476du32 + h1 * 0x1ce4_e5b9u32;
        // z = (z ^ (z >> 27)) · 0x94d049bb133111eb
        let h3 = h2 ^ (h2 >> 27);
        let l3 = l2 ^ ((l2 >> 27) | (h2 << 5));
        let l4 = l3 * 0x1331_11ebu32;
        let h4 = l3.mul_hi(0x1331_11ebu32) + l3 * 0x94d0_49bbu32 + h3 * 0x1331_11ebu32;
        // z ^= z >> 31
        let h5 = h4 ^ (h4 >> 31);
        let l5 = l4 ^ ((l4 >> 31) | (h4 << 1));
        // m = z >> 11: 53 bits (mh: 21, ml: 32).
        let mh = h5 >> 11;
        let ml = (l5 >> 11) | (h5 << 21);
        // The bit length of m.
        let bits = select(mh != 0, 64 - mh.leading_zeros(), 32 - ml.leading_zeros());
        let mut v = f32::new(0.0);
        if bits <= 24 {
            // Exact: m < 2²⁴, and m·2⁻⁵³ is a power-of-two scaling.
            v = f32::cast_from(ml) * f32::reinterpret(74u32 << 23);
        } else {
            // Round m to 24 significant bits, to nearest, ties to even (as `f64 as f32`).
            let shift = bits - 24;
            let q = (ml >> shift) | (mh << (32 - shift));
            let rem = ml & ((1u32 << shift) - 1);
            let half = 1u32 << (shift - 1);
            let up = rem > half || (rem == half && (q & 1) == 1);
            let q = q + select(up, 1u32, 0u32);
            // q·2^(shift − 53): the scale's exponent field is 127 + shift − 53.
            v = f32::cast_from(q) * f32::reinterpret((74 + shift) << 23);
        }
        out[i as usize] = v;
    }
}
