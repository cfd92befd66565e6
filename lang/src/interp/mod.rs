//! The reference interpreter: runs any [`Graph`] op by op, in f64 (the oracle every
//! backend is tested against) or in f32 (every result rounded to f32, to measure what
//! single precision costs). Plain loops, no cleverness: it must be obviously right.
//!
//! Conventions at non-smooth points follow PyTorch and JAX (`docs/conventions.md`):
//! max-pool and argmax ties go to the first index; average pooling counts padding.

use crate::check::ty::DType;
use crate::ir::{Binary, Compare, Graph, InputKind, Op, Reduce, Unary, ValueId, Window};

/// A dense row-major tensor. Every element type is stored as f64 (integers and bools
/// exactly), which keeps the interpreter one code path.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        Tensor { dtype, shape, data }
    }
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
    pub fn scalar(x: f64) -> Tensor {
        Tensor {
            dtype: DType::F64,
            shape: vec![],
            data: vec![x],
        }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// The precision the interpreter computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F64,
    F32,
}

/// Why a graph could not be run.
#[derive(Clone, Debug, PartialEq)]
pub enum RunError {
    MissingInput(String),
    /// An input's shape differs from the graph's: (input, expected, given).
    BadShape(String, Vec<usize>, Vec<usize>),
    /// The graph's values do not fit in memory (the message says how much they need).
    TooLarge(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RunError::MissingInput(n) => write!(f, "no value given for input `{n}`"),
            RunError::BadShape(n, want, got) => {
                write!(f, "input `{n}` should have shape {want:?}, got {got:?}")
            }
            RunError::TooLarge(m) => write!(f, "{m}"),
        }
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn unravel(mut i: usize, shape: &[usize], out: &mut [usize]) {
    for k in (0..shape.len()).rev() {
        out[k] = i % shape[k].max(1);
        i /= shape[k].max(1);
    }
}

/// Runs `g` with the given inputs (by name) and returns every node's value.
pub fn run(
    g: &Graph,
    inputs: &dyn Fn(&str, InputKind) -> Option<Tensor>,
    precision: Precision,
) -> Result<Vec<Tensor>, RunError> {
    fits(g, None)?;
    let mut vals: Vec<Tensor> = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let t = match &n.op {
            Op::Input { name, kind } => input(n, name, inputs(name, *kind))?,
            _ => node(
                n,
                &n.args.iter().map(|v| &vals[v.index()]).collect::<Vec<_>>(),
                precision,
            ),
        };
        vals.push(t);
    }
    Ok(vals)
}

/// Bytes the interpreter holds for the values of `g` at once (every node, as f64); `None`
/// past 2^64.
pub fn bytes_needed(g: &Graph) -> Option<u64> {
    g.nodes.iter().try_fold(0u64, |a, n| {
        let numel = crate::backend::memory::numel(&n.shape)?;
        a.checked_add(crate::backend::memory::bytes_of(numel, 8)?)
    })
}

/// Whether the values of `g` fit: in `available` bytes when known, and in what the
/// allocator will reserve (so a graph of terabytes is an error here rather than an abort
/// in the middle of a run).
pub fn fits(g: &Graph, available: Option<u64>) -> Result<(), RunError> {
    let what = "the reference interpreter's values of this graph (f64)";
    let bytes = bytes_needed(g);
    crate::backend::memory::check(bytes, what, available).map_err(RunError::TooLarge)?;
    let n = bytes.map_or(usize::MAX, |b| usize::try_from(b / 8).unwrap_or(usize::MAX));
    let mut probe: Vec<f64> = Vec::new();
    probe.try_reserve_exact(n).map_err(|_| {
        RunError::TooLarge(format!(
            "cannot allocate {} for {what}: the system refused it",
            crate::backend::memory::show_bytes(bytes.unwrap_or(u64::MAX))
        ))
    })
}

/// Runs `g` until the first node whose value holds a NaN or an infinity although all its
/// arguments are finite (or an input that holds one), and returns it; `None` when every
/// value is finite. Values are dropped after their last use, so a whole train step fits
/// in memory.
pub fn first_non_finite(
    g: &Graph,
    inputs: &dyn Fn(&str, InputKind) -> Option<Tensor>,
    precision: Precision,
) -> Result<Option<ValueId>, RunError> {
    let mut last_use = vec![0usize; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for a in &n.args {
            last_use[a.index()] = i;
        }
    }
    let finite = |t: &Tensor| t.data.iter().all(|x| x.is_finite());
    let mut vals: Vec<Option<Tensor>> = vec![None; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let t = match &n.op {
            Op::Input { name, kind } => input(n, name, inputs(name, *kind))?,
            _ => {
                let empty = Tensor::zeros(n.dtype, &[]);
                let args: Vec<&Tensor> = n
                    .args
                    .iter()
                    .map(|v| vals[v.index()].as_ref().unwrap_or(&empty))
                    .collect();
                node(n, &args, precision)
            }
        };
        if !finite(&t) {
            return Ok(Some(ValueId(i as u32)));
        }
        vals[i] = Some(t);
        for a in &n.args {
            if last_use[a.index()] == i {
                vals[a.index()] = None;
            }
        }
    }
    Ok(None)
}

/// Re-runs `g` after a full run whose values are `base`, with input `changed` set to `x`:
/// only the nodes that depend on it are computed again (a gradient check perturbs one
/// tensor at a time, and most of a deep net lies before or beside it). Returns the value
/// of `want`.
pub fn rerun(
    g: &Graph,
    base: &[Tensor],
    changed: ValueId,
    x: Tensor,
    want: ValueId,
    precision: Precision,
) -> Result<Tensor, RunError> {
    let n0 = g.node(changed);
    let name = g.input_name(changed).unwrap_or("?").to_string();
    let mut fresh: Vec<Option<Tensor>> = vec![None; g.nodes.len()];
    fresh[changed.index()] = Some(input(n0, &name, Some(x))?);
    for (i, n) in g.nodes.iter().enumerate().skip(changed.index() + 1) {
        if n.args.iter().any(|a| fresh[a.index()].is_some()) {
            let args: Vec<&Tensor> = n
                .args
                .iter()
                .map(|a| fresh[a.index()].as_ref().unwrap_or(&base[a.index()]))
                .collect();
            fresh[i] = Some(node(n, &args, precision));
        }
        if i == want.index() {
            break;
        }
    }
    Ok(fresh[want.index()]
        .take()
        .unwrap_or_else(|| base[want.index()].clone()))
}

fn input(n: &crate::ir::Node, name: &str, given: Option<Tensor>) -> Result<Tensor, RunError> {
    let t = given.ok_or_else(|| RunError::MissingInput(name.to_string()))?;
    if t.shape != n.shape {
        return Err(RunError::BadShape(
            name.to_string(),
            n.shape.clone(),
            t.shape,
        ));
    }
    Ok(Tensor {
        dtype: n.dtype,
        ..t
    })
}

/// The value of one (non-input) node from its arguments' values.
fn node(n: &crate::ir::Node, args: &[&Tensor], precision: Precision) -> Tensor {
    let a = |i: usize| args[i];
    let mut t = match &n.op {
        Op::Input { .. } => Tensor::zeros(n.dtype, &n.shape),
        Op::Const(c) => Tensor::new(n.dtype, vec![], vec![*c]),
        Op::Unary(u) => map(a(0), n.dtype, |x| unary(*u, x)),
        Op::StopGradient => a(0).clone(),
        Op::Binary(b) => zip(a(0), a(1), n.dtype, |x, y| binary(*b, x, y)),
        Op::Compare(c) => zip(a(0), a(1), DType::Bool, |x, y| {
            f64::from(u8::from(compare(*c, x, y)))
        }),
        Op::Select => {
            let (c, x, y) = (a(0), a(1), a(2));
            let data = (0..c.numel())
                .map(|i| {
                    if c.data[i] != 0.0 {
                        x.data[i]
                    } else {
                        y.data[i]
                    }
                })
                .collect();
            Tensor::new(n.dtype, n.shape.clone(), data)
        }
        Op::Reduce { op, axes, .. } => reduce(a(0), *op, axes, n),
        Op::ArgMax { axis } => argmax(a(0), *axis, n),
        Op::MatMul => matmul(a(0), a(1), n),
        Op::Transpose { perm } => transpose(a(0), perm, n),
        Op::Reshape | Op::Cast => Tensor::new(
            n.dtype,
            n.shape.clone(),
            a(0).data.iter().map(|x| cast(*x, n.dtype)).collect(),
        ),
        Op::Broadcast => broadcast(a(0), n),
        Op::Slice { axis, start, .. } => slice(a(0), *axis, *start, n),
        Op::Pad { axis, before, .. } => pad(a(0), *axis, *before, n),
        Op::Concat { axis } => concat(args, *axis, n),
        Op::Gather => gather(a(0), a(1), n),
        Op::OneHot { classes } => {
            let mut out = Tensor::zeros(n.dtype, &n.shape);
            for (i, c) in a(0).data.iter().enumerate() {
                let c = *c as i64;
                if c >= 0 && (c as usize) < *classes {
                    out.data[i * classes + c as usize] = 1.0;
                }
            }
            out
        }
        Op::Conv2d(w) => conv2d(a(0), a(1), w, n),
        Op::Conv2dInputGrad(w) => conv2d_input_grad(a(0), a(1), w, n),
        Op::Conv2dWeightGrad(w) => conv2d_weight_grad(a(0), a(1), w, n),
        Op::MaxPool2d(w) => pool(a(0), w, n, true),
        Op::AvgPool2d(w) => pool(a(0), w, n, false),
        Op::MaxPool2dGrad(w) => max_pool_grad(a(0), a(1), w, n),
        Op::AvgPool2dGrad(w) => avg_pool_grad(a(0), w, n),
        Op::RandomUniform { seed } => {
            let data = (0..n.numel()).map(|i| uniform(*seed, i as u64)).collect();
            Tensor::new(n.dtype, n.shape.clone(), data)
        }
    };
    if precision == Precision::F32 && n.dtype.is_float() {
        t.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    t
}

/// The value of one output after [`run`].
pub fn output<'a>(g: &Graph, vals: &'a [Tensor], name: &str) -> Option<&'a Tensor> {
    g.output(name).map(|v: ValueId| &vals[v.index()])
}

fn cast(x: f64, dt: DType) -> f64 {
    match dt {
        DType::I32 | DType::I64 | DType::U8 => x.trunc(),
        DType::Bool => f64::from(u8::from(x != 0.0)),
        DType::BF16 => round_bf16(x),
        _ => x,
    }
}

/// `x` rounded to the nearest bfloat16 (8 bits of significand, f32's exponent range),
/// ties to even, by way of f32 as every backend holds it: the upper half of the f32's
/// bits after adding `0x7fff` and the lowest bit kept. Values past bf16's largest round
/// to infinity; NaN stays NaN.
pub fn round_bf16(x: f64) -> f64 {
    let f = x as f32;
    if f.is_nan() {
        return f64::NAN;
    }
    let b = f.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f64::from(f32::from_bits(r))
}

/// splitmix64 of (seed, counter): a counter-based generator, so any element can be
/// computed independently (and identically on every backend).
pub fn uniform(seed: u64, i: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// One unary op on a scalar (also used for constant folding).
pub fn unary(u: Unary, x: f64) -> f64 {
    match u {
        Unary::Neg => -x,
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Tanh => x.tanh(),
        Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Unary::Relu => x.max(0.0),
        Unary::Sqrt => x.sqrt(),
        Unary::Rsqrt => 1.0 / x.sqrt(),
        Unary::Abs => x.abs(),
        Unary::Erf => libm::erf(x),
        Unary::Sin => x.sin(),
        Unary::Cos => x.cos(),
        Unary::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
    }
}

/// One binary op on scalars (also used for constant folding).
pub fn binary(b: Binary, x: f64, y: f64) -> f64 {
    match b {
        Binary::Add => x + y,
        Binary::Sub => x - y,
        Binary::Mul => x * y,
        Binary::Div => x / y,
        Binary::Max => x.max(y),
        Binary::Min => x.min(y),
        Binary::Pow => x.powf(y),
    }
}

fn compare(c: Compare, x: f64, y: f64) -> bool {
    match c {
        Compare::Eq => x == y,
        Compare::Ne => x != y,
        Compare::Lt => x < y,
        Compare::Le => x <= y,
        Compare::Gt => x > y,
        Compare::Ge => x >= y,
    }
}

fn map(x: &Tensor, dt: DType, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(dt, x.shape.clone(), x.data.iter().map(|v| f(*v)).collect())
}

fn zip(x: &Tensor, y: &Tensor, dt: DType, f: impl Fn(f64, f64) -> f64) -> Tensor {
    Tensor::new(
        dt,
        x.shape.clone(),
        x.data.iter().zip(&y.data).map(|(a, b)| f(*a, *b)).collect(),
    )
}

fn reduce(x: &Tensor, op: Reduce, axes: &[usize], n: &crate::ir::Node) -> Tensor {
    // Output index = input index with reduced axes dropped (or set to 0 with keepdim).
    let init = if op == Reduce::Sum {
        0.0
    } else {
        f64::NEG_INFINITY
    };
    let mut out = Tensor::new(n.dtype, n.shape.clone(), vec![init; n.numel()]);
    let kept: Vec<usize> = (0..x.shape.len()).filter(|a| !axes.contains(a)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|a| x.shape[*a]).collect();
    let ks = strides(&kept_shape);
    let mut idx = vec![0; x.shape.len()];
    for (i, v) in x.data.iter().enumerate() {
        unravel(i, &x.shape, &mut idx);
        let o: usize = kept.iter().zip(&ks).map(|(a, s)| idx[*a] * s).sum();
        match op {
            Reduce::Sum => out.data[o] += v,
            Reduce::Max => out.data[o] = out.data[o].max(*v),
        }
    }
    out
}

fn argmax(x: &Tensor, axis: usize, n: &crate::ir::Node) -> Tensor {
    let mut best = vec![f64::NEG_INFINITY; n.numel()];
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let kept_shape: Vec<usize> = n.shape.clone();
    let ks = strides(&kept_shape);
    let mut idx = vec![0; x.shape.len()];
    for (i, v) in x.data.iter().enumerate() {
        unravel(i, &x.shape, &mut idx);
        let o: usize = (0..x.shape.len())
            .filter(|a| *a != axis)
            .zip(&ks)
            .map(|(a, s)| idx[a] * s)
            .sum();
        // Strictly greater: ties keep the first index.
        if *v > best[o] {
            best[o] = *v;
            out.data[o] = idx[axis] as f64;
        }
    }
    out
}

fn matmul(a: &Tensor, b: &Tensor, n: &crate::ir::Node) -> Tensor {
    let r = a.shape.len();
    let (m, k, nn) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
    let batch: usize = a.shape[..r - 2].iter().product();
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    for bi in 0..batch {
        let (ao, bo, oo) = (bi * m * k, bi * k * nn, bi * m * nn);
        for i in 0..m {
            for p in 0..k {
                let av = a.data[ao + i * k + p];
                for j in 0..nn {
                    out.data[oo + i * nn + j] += av * b.data[bo + p * nn + j];
                }
            }
        }
    }
    out
}

fn transpose(x: &Tensor, perm: &[usize], n: &crate::ir::Node) -> Tensor {
    let xs = strides(&x.shape);
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let mut idx = vec![0; n.shape.len()];
    for (i, o) in out.data.iter_mut().enumerate() {
        unravel(i, &n.shape, &mut idx);
        let src: usize = perm.iter().enumerate().map(|(k, p)| idx[k] * xs[*p]).sum();
        *o = x.data[src];
    }
    out
}

fn broadcast(x: &Tensor, n: &crate::ir::Node) -> Tensor {
    let off = n.shape.len() - x.shape.len();
    let xs = strides(&x.shape);
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let mut idx = vec![0; n.shape.len()];
    for (i, o) in out.data.iter_mut().enumerate() {
        unravel(i, &n.shape, &mut idx);
        let src: usize = (0..x.shape.len())
            .map(|k| {
                if x.shape[k] == 1 {
                    0
                } else {
                    idx[k + off] * xs[k]
                }
            })
            .sum();
        *o = x.data[src];
    }
    out
}

fn slice(x: &Tensor, axis: usize, start: usize, n: &crate::ir::Node) -> Tensor {
    let xs = strides(&x.shape);
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let mut idx = vec![0; n.shape.len()];
    for (i, o) in out.data.iter_mut().enumerate() {
        unravel(i, &n.shape, &mut idx);
        let src: usize = idx
            .iter()
            .enumerate()
            .map(|(k, v)| (if k == axis { v + start } else { *v }) * xs[k])
            .sum();
        *o = x.data[src];
    }
    out
}

fn pad(x: &Tensor, axis: usize, before: usize, n: &crate::ir::Node) -> Tensor {
    let os = strides(&n.shape);
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let mut idx = vec![0; x.shape.len()];
    for (i, v) in x.data.iter().enumerate() {
        unravel(i, &x.shape, &mut idx);
        let dst: usize = idx
            .iter()
            .enumerate()
            .map(|(k, p)| (if k == axis { p + before } else { *p }) * os[k])
            .sum();
        out.data[dst] = *v;
    }
    out
}

fn concat(parts: &[&Tensor], axis: usize, n: &crate::ir::Node) -> Tensor {
    let os = strides(&n.shape);
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let mut offset = 0;
    for p in parts {
        let mut idx = vec![0; p.shape.len()];
        for (i, v) in p.data.iter().enumerate() {
            unravel(i, &p.shape, &mut idx);
            let dst: usize = idx
                .iter()
                .enumerate()
                .map(|(k, x)| (if k == axis { x + offset } else { *x }) * os[k])
                .sum();
            out.data[dst] = *v;
        }
        offset += p.shape[axis];
    }
    out
}

fn gather(table: &Tensor, idx: &Tensor, n: &crate::ir::Node) -> Tensor {
    let d = table.shape[1];
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    for (i, r) in idx.data.iter().enumerate() {
        let r = (*r as usize).min(table.shape[0].saturating_sub(1));
        out.data[i * d..(i + 1) * d].copy_from_slice(&table.data[r * d..(r + 1) * d]);
    }
    out
}

/// The input position read by output position `o` through kernel tap `k`, if inside.
fn tap(o: usize, k: usize, w: &Window, size: usize) -> Option<usize> {
    let p = (o * w.stride + k * w.dilation).checked_sub(w.pad)?;
    (p < size).then_some(p)
}

/// Visits every (input, weight, output) index triple of a convolution with input shape
/// `xs`, weight shape `ks` and output shape `ys`. The convolution and both its gradients
/// are this one walk with a different update.
fn conv_taps(
    xs: &[usize],
    ks: &[usize],
    ys: &[usize],
    w: &Window,
    mut f: impl FnMut(usize, usize, usize),
) {
    let (b, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (o, cg, kh, kw) = (ks[0], ks[1], ks[2], ks[3]);
    let (oh, ow) = (ys[2], ys[3]);
    let og = o / w.groups;
    let ranges: Vec<_> = (0..kw).map(|kx| columns(kx, w, wd, ow)).collect();
    for bi in 0..b {
        for oc in 0..o {
            let g = oc / og;
            for ci in 0..cg {
                let ic = g * cg + ci;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let ki = ((oc * cg + ci) * kh + ky) * kw + kx;
                        for y in 0..oh {
                            let Some(iy) = tap(y, ky, w, h) else { continue };
                            let (xrow, yrow) =
                                (((bi * c + ic) * h + iy) * wd, ((bi * o + oc) * oh + y) * ow);
                            for xx in ranges[kx].clone() {
                                // In range by construction of `ranges`.
                                let ix = xx * w.stride + kx * w.dilation - w.pad;
                                f(xrow + ix, ki, yrow + xx);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn conv2d(x: &Tensor, k: &Tensor, w: &Window, n: &crate::ir::Node) -> Tensor {
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    let (c, h, wd) = (x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg, kh, kw) = (k.shape[0], k.shape[1], k.shape[2], k.shape[3]);
    let (oh, ow) = (n.shape[2], n.shape[3]);
    let og = o / w.groups;
    let ranges: Vec<_> = (0..kw).map(|kx| columns(kx, w, wd, ow)).collect();
    // The same sums as `conv_taps` in the same order (over ci, ky, kx for each output),
    // with the output row as the inner loop; planes (image, out channel) are independent,
    // so they are split over threads.
    let plane = |p: usize, out: &mut [f64]| {
        let (bi, oc) = (p / o, p % o);
        let g = oc / og;
        for ci in 0..cg {
            let xplane = &x.data[(bi * c + g * cg + ci) * h * wd..][..h * wd];
            for ky in 0..kh {
                for kx in 0..kw {
                    let kv = k.data[((oc * cg + ci) * kh + ky) * kw + kx];
                    let cols = ranges[kx].clone();
                    if cols.is_empty() {
                        continue;
                    }
                    for y in 0..oh {
                        let Some(iy) = tap(y, ky, w, h) else { continue };
                        let xrow = &xplane[iy * wd..][..wd];
                        let orow = &mut out[y * ow..][..ow];
                        let first = cols.start * w.stride + kx * w.dilation - w.pad;
                        for (o, xv) in orow[cols.clone()]
                            .iter_mut()
                            .zip(xrow[first..].iter().step_by(w.stride))
                        {
                            *o += kv * xv;
                        }
                    }
                }
            }
        }
    };
    let area = (oh * ow).max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(out.data.len() / area)
        .max(1);
    let per = out.data.len().div_ceil(area).div_ceil(threads) * area;
    std::thread::scope(|s| {
        for (t, chunk) in out.data.chunks_mut(per.max(1)).enumerate() {
            let plane = &plane;
            s.spawn(move || {
                for (j, o) in chunk.chunks_mut(area).enumerate() {
                    plane(t * per / area + j, o);
                }
            });
        }
    });
    out
}

/// The output columns whose tap `kx` lands inside the input (`ix = xx*stride + kx*dil - pad`
/// in `0..wd`): a contiguous range, since `ix` grows with `xx`.
fn columns(kx: usize, w: &Window, wd: usize, ow: usize) -> std::ops::Range<usize> {
    let first = (0..ow)
        .find(|xx| tap(*xx, kx, w, wd).is_some())
        .unwrap_or(ow);
    let end = (first..ow)
        .find(|xx| tap(*xx, kx, w, wd).is_none())
        .unwrap_or(ow);
    first..end
}

fn conv2d_input_grad(dy: &Tensor, k: &Tensor, w: &Window, n: &crate::ir::Node) -> Tensor {
    let mut dx = Tensor::zeros(n.dtype, &n.shape);
    conv_taps(&n.shape, &k.shape, &dy.shape, w, |xi, ki, yi| {
        dx.data[xi] += dy.data[yi] * k.data[ki]
    });
    dx
}

fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, w: &Window, n: &crate::ir::Node) -> Tensor {
    let mut dk = Tensor::zeros(n.dtype, &n.shape);
    conv_taps(&x.shape, &n.shape, &dy.shape, w, |xi, ki, yi| {
        dk.data[ki] += dy.data[yi] * x.data[xi]
    });
    dk
}

/// The window of output (y, x): the in-bounds input positions it covers, row-major.
fn window(y: usize, x: usize, w: &Window, h: usize, wd: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for ky in 0..w.kernel {
        let Some(iy) = tap(y, ky, w, h) else { continue };
        for kx in 0..w.kernel {
            if let Some(ix) = tap(x, kx, w, wd) {
                out.push((iy, ix));
            }
        }
    }
    out
}

fn pool(x: &Tensor, w: &Window, n: &crate::ir::Node, max: bool) -> Tensor {
    let (b, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (n.shape[2], n.shape[3]);
    let mut out = Tensor::zeros(n.dtype, &n.shape);
    for p in 0..b * c {
        for y in 0..oh {
            for xx in 0..ow {
                let cells = window(y, xx, w, h, wd);
                let v = cells.iter().map(|(iy, ix)| x.data[(p * h + iy) * wd + ix]);
                out.data[(p * oh + y) * ow + xx] = if max {
                    v.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    // Padding counts as zeros (PyTorch's count_include_pad=True).
                    v.sum::<f64>() / (w.kernel * w.kernel) as f64
                };
            }
        }
    }
    out
}

fn max_pool_grad(x: &Tensor, dy: &Tensor, w: &Window, n: &crate::ir::Node) -> Tensor {
    let (b, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let mut dx = Tensor::zeros(n.dtype, &n.shape);
    for p in 0..b * c {
        for y in 0..oh {
            for xx in 0..ow {
                let cells = window(y, xx, w, h, wd);
                // The first maximum in row-major window order takes the gradient.
                let mut best: Option<(usize, f64)> = None;
                for (iy, ix) in cells {
                    let i = (p * h + iy) * wd + ix;
                    if best.is_none_or(|(_, v)| x.data[i] > v) {
                        best = Some((i, x.data[i]));
                    }
                }
                if let Some((i, _)) = best {
                    dx.data[i] += dy.data[(p * oh + y) * ow + xx];
                }
            }
        }
    }
    dx
}

fn avg_pool_grad(dy: &Tensor, w: &Window, n: &crate::ir::Node) -> Tensor {
    let (b, c, h, wd) = (n.shape[0], n.shape[1], n.shape[2], n.shape[3]);
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let mut dx = Tensor::zeros(n.dtype, &n.shape);
    let area = (w.kernel * w.kernel) as f64;
    for p in 0..b * c {
        for y in 0..oh {
            for xx in 0..ow {
                let d = dy.data[(p * oh + y) * ow + xx] / area;
                for (iy, ix) in window(y, xx, w, h, wd) {
                    dx.data[(p * h + iy) * wd + ix] += d;
                }
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::round_bf16;

    /// Rounding to bfloat16 keeps 8 significant bits, ties to even, and saturates to
    /// infinity past the largest bf16; NaN, infinities, zeros and subnormals behave.
    #[test]
    fn bf16_rounds_to_nearest_even() {
        let ulp = 2f64.powi(-7); // of numbers in [1, 2)
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(1.0 + ulp), 1.0 + ulp);
        assert_eq!(round_bf16(1.0 + 0.49 * ulp), 1.0);
        assert_eq!(round_bf16(1.0 + 0.51 * ulp), 1.0 + ulp);
        // Ties: to the even neighbour.
        assert_eq!(round_bf16(1.0 + 0.5 * ulp), 1.0);
        assert_eq!(round_bf16(1.0 + 1.5 * ulp), 1.0 + 2.0 * ulp);
        assert_eq!(round_bf16(-(1.0 + 1.5 * ulp)), -(1.0 + 2.0 * ulp));
        assert_eq!(round_bf16(3.14159), 3.140625);
        // Carry into the exponent, and past the largest bf16 (0x7f7f_0000).
        assert_eq!(round_bf16(2.0 - 0.25 * ulp), 2.0);
        let max = f64::from(f32::from_bits(0x7f7f_0000));
        assert_eq!(round_bf16(max), max);
        assert_eq!(round_bf16(f64::from(f32::MAX)), f64::INFINITY);
        assert_eq!(round_bf16(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert!(round_bf16(f64::NAN).is_nan());
        assert_eq!(round_bf16(-0.0).to_bits(), (-0.0f64).to_bits());
        // A subnormal keeps its top bits.
        let tiny = f64::from(f32::from_bits(0x0001_8001));
        assert_eq!(round_bf16(tiny), f64::from(f32::from_bits(0x0002_0000)));
    }
}
