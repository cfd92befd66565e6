//! The CPU's emitter of fused loops: a [`Program`] of the shared schedule (leaves read
//! at the loop index, a scalar, or a broadcast `(i / inner) % len`; expressions over
//! them; the expressions stored to outputs), emitted with Cranelift. A broadcast whose
//! pattern does not repeat every four elements is gathered lane by lane. It compiles to `fn(ptrs: *const *mut f32, start: usize, end: usize)` looping
//! over `start..end`: four lanes at a time with `f32x4` (and `fma` where the host has it:
//! a multiply feeding only an add is fused), then a scalar tail. `exp`, `sigmoid` and
//! `tanh` are emitted inline as polynomials (Cephes' single-precision ones, within 2 ulp),
//! and `erf` (GELU's) as two polynomials fitted for this backend (within 1.53 ulp over every
//! f32); the same code in both loops, so a value does not depend on its lane. The other
//! transcendental functions are calls into Rust, so a program that uses one of them runs
//! in the scalar loop.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, Endianness, InstBuilder, MemFlagsData, Type, UserFuncName, Value, types,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};
use nabla_lang::ir::{Binary, Compare, Unary};
use nabla_sched::{Access, Expr, Program};

use crate::TARGET;

/// A compiled fused loop.
pub type LoopFn = unsafe extern "C" fn(*const *mut f32, usize, usize);

extern "C" fn nb_log(x: f32) -> f32 {
    x.ln()
}
extern "C" fn nb_sin(x: f32) -> f32 {
    x.sin()
}
extern "C" fn nb_cos(x: f32) -> f32 {
    x.cos()
}
extern "C" fn nb_pow(x: f32, y: f32) -> f32 {
    x.powf(y)
}

const CALLS: [(&str, Unary); 3] = [
    ("nb_log", Unary::Log),
    ("nb_sin", Unary::Sin),
    ("nb_cos", Unary::Cos),
];

/// A Cranelift module holding the fused loops of one compiled graph.
pub struct Jit {
    module: JITModule,
    ctx: cranelift_codegen::Context,
    fctx: FunctionBuilderContext,
    calls: Vec<(Unary, FuncId)>,
    pow: FuncId,
    pending: Vec<FuncId>,
}

fn jit_error(e: impl std::fmt::Debug) -> String {
    format!("the CPU backend could not compile a fused loop: {e:?}")
}

impl Jit {
    pub fn new() -> Result<Jit, String> {
        let mut jb = nabla_host::native_builder().map_err(jit_error)?;
        let fns: [(&str, *const u8); 4] = [
            ("nb_log", nb_log as *const u8),
            ("nb_sin", nb_sin as *const u8),
            ("nb_cos", nb_cos as *const u8),
            ("nb_pow", nb_pow as *const u8),
        ];
        for (name, f) in fns {
            jb.symbol(name, f);
        }
        let mut module = JITModule::new(jb);
        let mut sig1 = module.make_signature();
        sig1.params.push(AbiParam::new(types::F32));
        sig1.returns.push(AbiParam::new(types::F32));
        let mut calls = Vec::new();
        for (name, u) in CALLS {
            calls.push((
                u,
                module
                    .declare_function(name, Linkage::Import, &sig1)
                    .map_err(jit_error)?,
            ));
        }
        let mut sig2 = sig1.clone();
        sig2.params.push(AbiParam::new(types::F32));
        let pow = module
            .declare_function("nb_pow", Linkage::Import, &sig2)
            .map_err(jit_error)?;
        let ctx = module.make_context();
        Ok(Jit {
            module,
            ctx,
            fctx: FunctionBuilderContext::new(),
            calls,
            pow,
            pending: Vec::new(),
        })
    }

    /// Emits `f` as a new function; its pointer is available after [`Jit::finish`], in
    /// the order of the `add` calls.
    pub fn add(&mut self, f: &Program) -> Result<(), String> {
        let ptr = self.module.target_config().pointer_type();
        let mut sig = self.module.make_signature();
        sig.params
            .extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(ptr)]);
        let id = self
            .module
            .declare_anonymous_function(&sig)
            .map_err(jit_error)?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut imports = Vec::new();
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            for (u, fid) in &self.calls {
                imports.push((*u, self.module.declare_func_in_func(*fid, b.func)));
            }
            let pow = self.module.declare_func_in_func(self.pow, b.func);
            emit(&mut b, f, ptr, &imports, pow);
            b.seal_all_blocks();
            b.finalize(self.module.target_config());
        }
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(jit_error)?;
        self.module.clear_context(&mut self.ctx);
        self.pending.push(id);
        Ok(())
    }

    /// Links everything added and returns the loops in order. The module must outlive
    /// them: keep it (a [`Jit`] is kept in the compiled plan).
    pub fn finish(&mut self) -> Result<Vec<LoopFn>, String> {
        self.module.finalize_definitions().map_err(jit_error)?;
        let ids = std::mem::take(&mut self.pending);
        Ok(ids
            .into_iter()
            .map(|id| {
                let code = self.module.get_finalized_function(id);
                // SAFETY: the function was emitted above with exactly this signature.
                unsafe { std::mem::transmute::<*const u8, LoopFn>(code) }
            })
            .collect())
    }
}

/// Emits the loop body of `f` (see the module doc).
fn emit(
    b: &mut FunctionBuilder,
    f: &Program,
    ptr: Type,
    calls: &[(Unary, cranelift_codegen::ir::FuncRef)],
    pow: cranelift_codegen::ir::FuncRef,
) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (ptrs, start, end) = (
        b.block_params(entry)[0],
        b.block_params(entry)[1],
        b.block_params(entry)[2],
    );
    let mem = MemFlagsData::trusted();
    let n_ptrs = f.leaves.len() + f.stores.len();
    let bases: Vec<Value> = (0..n_ptrs)
        .map(|k| b.ins().load(ptr, mem, ptrs, (k * 8) as i32))
        .collect();
    // Scalar leaves are read once.
    let scalars: Vec<Option<Value>> = f
        .leaves
        .iter()
        .enumerate()
        .map(|(k, a)| (*a == Access::Scalar).then(|| b.ins().load(types::F32, mem, bases[k], 0)))
        .collect();
    // Multiplies whose only use is one add become fma there.
    let mut uses = vec![0usize; f.exprs.len()];
    for e in &f.exprs {
        match *e {
            Expr::Unary(_, a) | Expr::Trunc(a) | Expr::NonZero(a) | Expr::RoundBf16(a) => {
                uses[a] += 1
            }
            Expr::Binary(_, a, c) | Expr::Compare(_, a, c) => {
                uses[a] += 1;
                uses[c] += 1;
            }
            Expr::Select(c, x, y) => {
                uses[c] += 1;
                uses[x] += 1;
                uses[y] += 1;
            }
            Expr::Leaf(_) | Expr::Const(_) => {}
        }
    }
    for s in &f.stores {
        uses[*s] += 1;
    }
    // A loop whose broadcasts do not repeat with the vector's period (softmax's row
    // maxima over ViT-Ti's rows of 17) still runs four lanes at a time when it calls no
    // scalar function: each such broadcast is then gathered lane by lane, and so is
    // every other, since such a loop may start anywhere (see `reducible`), where a
    // vector read of a broadcast would assume an aligned start.
    let aligned = f.vectorizes(&TARGET);
    let vector = !f.calls_scalar(&TARGET);
    let gather = vector && !aligned;
    let vend = if vector {
        let len = b.ins().isub(end, start);
        let whole = b.ins().band_imm_s(len, !3i64);
        b.ins().iadd(start, whole)
    } else {
        start
    };
    let vhead = b.create_block();
    let vbody = b.create_block();
    let shead = b.create_block();
    let sbody = b.create_block();
    let exit = b.create_block();
    for blk in [vhead, vbody, shead, sbody] {
        b.append_block_param(blk, ptr);
    }
    b.ins().jump(vhead, &[start.into()]);

    b.switch_to_block(vhead);
    let i = b.block_params(vhead)[0];
    let go = b.ins().icmp(IntCC::UnsignedLessThan, i, vend);
    b.ins().brif(go, vbody, &[i.into()], shead, &[i.into()]);

    b.switch_to_block(vbody);
    let i = b.block_params(vbody)[0];
    if vector {
        let ty = if gather {
            Lanes::Gathered
        } else {
            Lanes::Vector
        };
        body(b, f, &bases, &scalars, i, ty, &uses, calls, pow);
    }
    let next = b.ins().iadd_imm_s(i, 4);
    b.ins().jump(vhead, &[next.into()]);

    b.switch_to_block(shead);
    let i = b.block_params(shead)[0];
    let go = b.ins().icmp(IntCC::UnsignedLessThan, i, end);
    b.ins().brif(go, sbody, &[i.into()], exit, &[]);

    b.switch_to_block(sbody);
    let i = b.block_params(sbody)[0];
    body(b, f, &bases, &scalars, i, Lanes::One, &uses, calls, pow);
    let next = b.ins().iadd_imm_s(i, 1);
    b.ins().jump(shead, &[next.into()]);

    b.switch_to_block(exit);
    b.ins().return_(&[]);
}

/// How one iteration of a loop's body runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lanes {
    /// One element, in `f32`.
    One,
    /// Four elements in `f32x4`, from an index that is a multiple of four.
    Vector,
    /// Four elements in `f32x4`, broadcasts read lane by lane (any start).
    Gathered,
}

/// One iteration at index `i`: one element, or four (see [`Lanes`]).
#[allow(clippy::too_many_arguments)]
fn body(
    b: &mut FunctionBuilder,
    f: &Program,
    bases: &[Value],
    scalars: &[Option<Value>],
    i: Value,
    lanes: Lanes,
    uses: &[usize],
    calls: &[(Unary, cranelift_codegen::ir::FuncRef)],
    pow: cranelift_codegen::ir::FuncRef,
) {
    let mem = MemFlagsData::trusted();
    let vector = lanes != Lanes::One;
    let ty = if vector { types::F32X4 } else { types::F32 };
    let splat = |b: &mut FunctionBuilder, s: Value| if vector { b.ins().splat(ty, s) } else { s };
    let konst = |b: &mut FunctionBuilder, c: f32| {
        let s = b.ins().f32const(c);
        splat(b, s)
    };
    let addr = |b: &mut FunctionBuilder, base: Value, idx: Value| {
        let off = b.ins().ishl_imm_u(idx, 2);
        b.ins().iadd(base, off)
    };
    // A comparison mask as 1.0 / 0.0.
    let to_float = |b: &mut FunctionBuilder, mask: Value| {
        let (one, zero) = (konst(b, 1.0), konst(b, 0.0));
        if vector {
            let m = b.ins().bitcast(
                ty,
                MemFlagsData::new().with_endianness(Endianness::Little),
                mask,
            );
            b.ins().bitselect(m, one, zero)
        } else {
            b.ins().select(mask, one, zero)
        }
    };
    let mut vals: Vec<Value> = Vec::with_capacity(f.exprs.len());
    let mut fma_of: Vec<Option<(Value, Value)>> = vec![None; f.exprs.len()];
    for (k, e) in f.exprs.iter().enumerate() {
        let v = match *e {
            Expr::Leaf(l) => match f.leaves[l] {
                Access::Scalar => {
                    let s = scalars[l].unwrap_or_else(|| b.ins().f32const(0.0));
                    splat(b, s)
                }
                Access::Linear => {
                    let a = addr(b, bases[l], i);
                    b.ins().load(ty, mem, a, 0)
                }
                Access::Bcast { inner, len } => {
                    // The address of element ((i + lane) / inner) % len.
                    let at = |b: &mut FunctionBuilder, lane: i64| {
                        let il = if lane == 0 {
                            i
                        } else {
                            b.ins().iadd_imm_s(i, lane)
                        };
                        let q = if inner == 1 {
                            il
                        } else {
                            b.ins().udiv_imm_u(il, inner as i64)
                        };
                        let idx = if len == 1 {
                            b.ins().iconst(types::I64, 0)
                        } else {
                            b.ins().urem_imm_u(q, len as i64)
                        };
                        addr(b, bases[l], idx)
                    };
                    match lanes {
                        Lanes::Gathered => {
                            let a = at(b, 0);
                            let s = b.ins().load(types::F32, mem, a, 0);
                            let mut v = b.ins().splat(ty, s);
                            for lane in 1..4u8 {
                                let a = at(b, i64::from(lane));
                                let s = b.ins().load(types::F32, mem, a, 0);
                                v = b.ins().insertlane(v, s, lane);
                            }
                            v
                        }
                        Lanes::Vector if inner % 4 == 0 => {
                            let a = at(b, 0);
                            let s = b.ins().load(types::F32, mem, a, 0);
                            b.ins().splat(ty, s)
                        }
                        _ => {
                            let a = at(b, 0);
                            b.ins().load(ty, mem, a, 0)
                        }
                    }
                }
            },
            Expr::Const(c) => konst(b, c),
            Expr::Unary(u, a) => {
                let x = vals[a];
                match u {
                    Unary::Neg => b.ins().fneg(x),
                    Unary::Relu => {
                        let z = konst(b, 0.0);
                        b.ins().fmax(x, z)
                    }
                    Unary::Sqrt => b.ins().sqrt(x),
                    Unary::Rsqrt => {
                        let r = b.ins().sqrt(x);
                        let one = konst(b, 1.0);
                        b.ins().fdiv(one, r)
                    }
                    Unary::Abs => b.ins().fabs(x),
                    Unary::Exp => exp(b, x),
                    Unary::Sigmoid => {
                        // 1 / (1 + e^-x): e^-x = inf gives 0, e^-x = 0 gives 1.
                        let m = b.ins().fneg(x);
                        let e = exp(b, m);
                        let one = konst(b, 1.0);
                        let d = b.ins().fadd(one, e);
                        b.ins().fdiv(one, d)
                    }
                    Unary::Tanh => tanh(b, x),
                    Unary::Erf => erf(b, x),
                    Unary::Sign => {
                        let z = konst(b, 0.0);
                        let gt = b.ins().fcmp(FloatCC::GreaterThan, x, z);
                        let lt = b.ins().fcmp(FloatCC::LessThan, x, z);
                        let (p, n) = (to_float(b, gt), to_float(b, lt));
                        b.ins().fsub(p, n)
                    }
                    _ => {
                        // Scalar loop only (see `Program::vectorizes`).
                        let fr = calls.iter().find(|(c, _)| *c == u).map(|(_, fr)| *fr);
                        match fr {
                            Some(fr) => {
                                let call = b.ins().call(fr, &[x]);
                                b.inst_results(call)[0]
                            }
                            None => x,
                        }
                    }
                }
            }
            Expr::Binary(op, a, c) => {
                let (x, y) = (vals[a], vals[c]);
                match op {
                    Binary::Add => match (fma_of[a], fma_of[c]) {
                        (Some((p, q)), _) => b.ins().fma(p, q, y),
                        (_, Some((p, q))) => b.ins().fma(p, q, x),
                        _ => b.ins().fadd(x, y),
                    },
                    Binary::Sub => b.ins().fsub(x, y),
                    Binary::Mul => {
                        if uses[k] == 1 && feeds_add(f, k) {
                            fma_of[k] = Some((x, y));
                        }
                        b.ins().fmul(x, y)
                    }
                    Binary::Div => b.ins().fdiv(x, y),
                    Binary::Max => b.ins().fmax(x, y),
                    Binary::Min => b.ins().fmin(x, y),
                    Binary::Pow => {
                        let call = b.ins().call(pow, &[x, y]);
                        b.inst_results(call)[0]
                    }
                }
            }
            Expr::Compare(c, a, d) => {
                let cc = match c {
                    Compare::Eq => FloatCC::Equal,
                    Compare::Ne => FloatCC::NotEqual,
                    Compare::Lt => FloatCC::LessThan,
                    Compare::Le => FloatCC::LessThanOrEqual,
                    Compare::Gt => FloatCC::GreaterThan,
                    Compare::Ge => FloatCC::GreaterThanOrEqual,
                };
                let m = b.ins().fcmp(cc, vals[a], vals[d]);
                to_float(b, m)
            }
            Expr::Select(c, x, y) => {
                let z = konst(b, 0.0);
                let m = b.ins().fcmp(FloatCC::NotEqual, vals[c], z);
                if vector {
                    let m = b.ins().bitcast(
                        ty,
                        MemFlagsData::new().with_endianness(Endianness::Little),
                        m,
                    );
                    b.ins().bitselect(m, vals[x], vals[y])
                } else {
                    b.ins().select(m, vals[x], vals[y])
                }
            }
            Expr::Trunc(a) => b.ins().trunc(vals[a]),
            Expr::NonZero(a) => {
                let z = konst(b, 0.0);
                let m = b.ins().fcmp(FloatCC::NotEqual, vals[a], z);
                to_float(b, m)
            }
            Expr::RoundBf16(a) => round_bf16(b, vals[a]),
        };
        vals.push(v);
    }
    for (k, s) in f.stores.iter().enumerate() {
        let a = addr(b, bases[f.leaves.len() + k], i);
        b.ins().store(mem, vals[*s], a, 0);
    }
}

/// Whether expression `k` is an operand of an add (so a multiply there can become fma).
fn feeds_add(f: &Program, k: usize) -> bool {
    f.exprs
        .iter()
        .any(|e| matches!(*e, Expr::Binary(Binary::Add, a, c) if a == k || c == k))
}

/// A constant of `x`'s type (a float or an int; splatted for vectors).
fn splat_const(b: &mut FunctionBuilder, ty: Type, c: f32) -> Value {
    let s = b.ins().f32const(c);
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

fn splat_int(b: &mut FunctionBuilder, ty: Type, c: i32) -> Value {
    let s = b.ins().iconst(types::I32, i64::from(c));
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

/// Reinterprets the bits of `x` as type `ty` (lane by lane for vectors).
fn bits(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    b.ins().bitcast(
        ty,
        MemFlagsData::new().with_endianness(Endianness::Little),
        x,
    )
}

/// `x` (an `f32` or `f32x4`) rounded to the nearest bfloat16, ties to even, as f32: the
/// upper half of its bits after adding `0x7fff` and the lowest bit kept (a carry rounds
/// into the exponent, past the largest bf16 to infinity). NaN is kept as it is (the add
/// could carry a NaN's payload into an infinity's bits).
fn round_bf16(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let ity = if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    };
    let v = bits(b, ity, x);
    let hi = b.ins().ushr_imm_u(v, 16);
    let one = splat_int(b, ity, 1);
    let lsb = b.ins().band(hi, one);
    let half = splat_int(b, ity, 0x7fff);
    let bias = b.ins().iadd(lsb, half);
    let r = b.ins().iadd(v, bias);
    let mask = splat_int(b, ity, 0xffff_0000_u32 as i32);
    let kept = b.ins().band(r, mask);
    let rounded = bits(b, ty, kept);
    let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    if ty.is_vector() {
        let m = bits(b, ty, nan);
        b.ins().bitselect(m, x, rounded)
    } else {
        b.ins().select(nan, x, rounded)
    }
}

/// `e^x` for an `f32` or `f32x4` `x`, Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln2/2`
/// (ln 2 split in two so `n·C1` is exact), `e^r` by a degree-7 polynomial, times `2^n`
/// built in the exponent bits, in two halves so that `2^n` stays normal over the whole
/// clamped range: below −104 the result is 0, above 89 it is inf, NaN stays NaN (`fmin`
/// and `fmax` propagate it).
fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let ity = if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    };
    let c = |b: &mut FunctionBuilder, v: f32| splat_const(b, ty, v);
    let (lo, hi) = (c(b, -104.0), c(b, 89.0));
    let x = b.ins().fmax(x, lo);
    let x = b.ins().fmin(x, hi);
    // n = round(x·log2 e): adding 1.5·2^23 rounds to an integer held in the low bits.
    let log2e = c(b, std::f32::consts::LOG2_E);
    let t = b.ins().fmul(x, log2e);
    let magic = c(b, 12_582_912.0);
    let shifted = b.ins().fadd(t, magic);
    let nf = b.ins().fsub(shifted, magic);
    let magic_bits = splat_int(b, ity, 0x4B40_0000);
    let sb = bits(b, ity, shifted);
    let n = b.ins().isub(sb, magic_bits);
    let (c1, c2) = (c(b, 0.693_359_4), c(b, -2.121_944_4e-4));
    let p1 = b.ins().fmul(nf, c1);
    let r = b.ins().fsub(x, p1);
    let p2 = b.ins().fmul(nf, c2);
    let r = b.ins().fsub(r, p2);
    let coeffs = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    let mut y = c(b, coeffs[0]);
    for k in &coeffs[1..] {
        let m = b.ins().fmul(y, r);
        let kc = c(b, *k);
        y = b.ins().fadd(m, kc);
    }
    let r2 = b.ins().fmul(r, r);
    let y = b.ins().fmul(y, r2);
    let y = b.ins().fadd(y, r);
    let one = c(b, 1.0);
    let y = b.ins().fadd(y, one);
    // 2^n = 2^n1 · 2^n2 with n1 = n >> 1: each factor's exponent stays in [−75, 64].
    // Shift amounts are scalars, for vectors too.
    let one_i = b.ins().iconst(types::I32, 1);
    let n1 = b.ins().sshr(n, one_i);
    let n2 = b.ins().isub(n, n1);
    let (bias, shift) = (splat_int(b, ity, 127), b.ins().iconst(types::I32, 23));
    let mut out = y;
    for h in [n1, n2] {
        let e = b.ins().iadd(h, bias);
        let e = b.ins().ishl(e, shift);
        let scale = bits(b, ty, e);
        out = b.ins().fmul(out, scale);
    }
    out
}

/// `tanh x`, Cephes' `tanhf`: `x + x³·P(x²)` below |x| = 0.625, where `1 − 2/(e^2|x| + 1)`
/// would cancel, else that with the sign of `x`.
fn tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let c = |b: &mut FunctionBuilder, v: f32| splat_const(b, ty, v);
    let a = b.ins().fabs(x);
    let two = c(b, 2.0);
    let a2 = b.ins().fmul(a, two);
    let e = exp(b, a2);
    let one = c(b, 1.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let big = b.ins().fsub(one, q);
    let big = if ty.is_vector() {
        // No vector fcopysign on x64: take the sign bit of x with a mask.
        let sign = splat_int(b, types::I32X4, i32::MIN);
        let sign = bits(b, ty, sign);
        b.ins().bitselect(sign, x, big)
    } else {
        b.ins().fcopysign(big, x)
    };
    let z = b.ins().fmul(x, x);
    let coeffs = [
        -5.704_988_7e-3,
        2.063_909e-2,
        -5.373_971_6e-2,
        1.333_144_2e-1,
        -3.333_328e-1,
    ];
    let mut y = c(b, coeffs[0]);
    for k in &coeffs[1..] {
        let m = b.ins().fmul(y, z);
        let kc = c(b, *k);
        y = b.ins().fadd(m, kc);
    }
    let y = b.ins().fmul(y, z);
    let y = b.ins().fmul(y, x);
    let small = b.ins().fadd(y, x);
    let limit = c(b, 0.625);
    let is_small = b.ins().fcmp(FloatCC::LessThan, a, limit);
    if ty.is_vector() {
        let m = bits(b, ty, is_small);
        b.ins().bitselect(m, small, big)
    } else {
        b.ins().select(is_small, small, big)
    }
}

/// `erf x` in f32 arithmetic, every lane computing both branches and selecting one:
///
/// * below |x| = 1.5: `x + x·P(x² − 1)`, `P` of degree 7 (odd in x, exact at 0 and −0;
///   NaN goes through);
/// * from 1.5: `L(t)` with the sign of x, `L` of degree 10 in `t = min(|x|, 3.92)·A + B`,
///   which maps [1.5, 3.92] onto [−1, 1]; from 3.91 on, `L` rounds to exactly 1.
///
/// The coefficients are our own fit (least squares on Chebyshev nodes, refined to
/// minimax in f64 against a double-precision erf, then rounded to f32 and tuned in f32
/// arithmetic). Checked over every positive f32 below 3.92 (larger inputs are clamped to
/// it) in emulated f32 with fused multiply-adds: at most 1.53 ulp, at x = 1.4996.
fn erf(b: &mut FunctionBuilder, x: Value) -> Value {
    const P: [f32; 8] = [
        -0.157_299_22,
        -0.213_796_68,
        0.056_570_798,
        -0.012_549_462,
        0.002_332_236_6,
        -0.000_371_113_04,
        5.236_935e-5,
        -5.709_096_5e-6,
    ];
    const L: [f32; 11] = [
        0.999_873_16,
        0.000_882_388_27,
        -0.002_895_292_4,
        0.005_900_247_5,
        -0.008_235_488,
        0.008_202_662,
        -0.005_862_523_3,
        0.002_650_714_3,
        -0.000_115_543_47,
        -0.000_688_562_3,
        0.000_288_242_7,
    ];
    let ty = b.func.dfg.value_type(x);
    let c = |b: &mut FunctionBuilder, v: f32| splat_const(b, ty, v);
    // Horner's rule with fused multiply-adds, highest degree first.
    let horner = |b: &mut FunctionBuilder, coeffs: &[f32], t: Value| {
        let mut y = c(b, coeffs[coeffs.len() - 1]);
        for k in coeffs[..coeffs.len() - 1].iter().rev() {
            let kc = c(b, *k);
            y = b.ins().fma(y, t, kc);
        }
        y
    };
    let a = b.ins().fabs(x);
    let minus_one = c(b, -1.0);
    let w = b.ins().fma(x, x, minus_one);
    let p = horner(b, &P, w);
    let small = b.ins().fma(x, p, x);
    let clamp = c(b, 3.92);
    let ac = b.ins().fmin(a, clamp);
    let (scale, shift) = (c(b, 0.826_446_3), c(b, -2.239_669_3));
    let t = b.ins().fma(ac, scale, shift);
    let large = horner(b, &L, t);
    let large = if ty.is_vector() {
        // No vector fcopysign on x64: take the sign bit of x with a mask.
        let sign = splat_int(b, types::I32X4, i32::MIN);
        let sign = bits(b, ty, sign);
        b.ins().bitselect(sign, x, large)
    } else {
        b.ins().fcopysign(large, x)
    };
    let threshold = c(b, 1.5);
    let is_large = b.ins().fcmp(FloatCC::GreaterThanOrEqual, a, threshold);
    if ty.is_vector() {
        let m = bits(b, ty, is_large);
        b.ins().bitselect(m, large, small)
    } else {
        b.ins().select(is_large, large, small)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `u` over `xs` through a compiled loop (vector lanes and scalar tail), and the worst
    /// error against f64 in units of the f32 spacing at the exact value (ulps).
    /// `exact` is `None` where the value is not compared.
    fn worst_ulps(u: Unary, xs: &[f32], exact: impl Fn(f64) -> Option<f64>) -> f64 {
        let f = Program {
            leaves: vec![Access::Linear],
            exprs: vec![Expr::Leaf(0), Expr::Unary(u, 0)],
            stores: vec![1],
        };
        assert!(f.vectorizes(&TARGET));
        let mut jit = Jit::new().expect("a JIT for this machine");
        jit.add(&f).expect("the loop compiles");
        let run = jit.finish().expect("the loop links")[0];
        let mut out = vec![0.0f32; xs.len()];
        let ptrs = [xs.as_ptr() as *mut f32, out.as_mut_ptr()];
        // SAFETY: one leaf and one output of xs.len() elements.
        unsafe { run(ptrs.as_ptr(), 0, xs.len()) };
        let mut worst = 0.0f64;
        for (x, y) in xs.iter().zip(&out) {
            let Some(e) = exact(f64::from(*x)) else {
                continue;
            };
            if e.is_nan() {
                assert!(y.is_nan(), "{u:?}({x}) = {y}, expected NaN");
                continue;
            }
            let want = e as f32;
            if want.is_infinite() || want == 0.0 {
                assert_eq!(*y, want, "{u:?}({x})");
                continue;
            }
            let ulp = f64::from(f32::from_bits(want.abs().to_bits() + 1) - want.abs());
            worst = worst.max((f64::from(*y) - e).abs() / ulp);
        }
        worst
    }

    /// Inputs over the whole range, with the edges of exp's clamping, of tanh's two
    /// branches, and 1003 elements so the scalar tail runs too.
    fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect();
        xs.extend((0..400).map(|i| (i as f32 - 200.0) * 0.9));
        xs.extend([
            -1e-7,
            1e-7,
            0.0,
            -0.0,
            0.6249,
            0.625,
            -0.625,
            88.7,
            88.8,
            89.5,
            -87.3,
            -103.0,
            -104.5,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-3,
            2e-38,
        ]);
        xs.extend([0.3, -0.7, 5.0]);
        xs
    }

    /// Broadcasts whose pattern does not repeat with the vector's period are gathered
    /// lane by lane: `exp(x − m[(i / inner) % len])` for periods of 1, 2, 3, 5 and 17
    /// (and 4, read as whole vectors), over odd ranges from odd starts, equals the same
    /// loop with the broadcast values laid out linearly, bit for bit.
    #[test]
    fn broadcasts_off_the_vector_period_are_gathered() {
        for (inner, len) in [(17, 5), (1, 7), (2, 3), (3, 1), (5, 9), (4, 6)] {
            let f = Program {
                leaves: vec![Access::Linear, Access::Bcast { inner, len }],
                exprs: vec![
                    Expr::Leaf(0),
                    Expr::Leaf(1),
                    Expr::Binary(Binary::Sub, 0, 1),
                    Expr::Unary(Unary::Exp, 2),
                ],
                stores: vec![3],
            };
            let mut jit = Jit::new().expect("a JIT for this machine");
            jit.add(&f).expect("the loop compiles");
            let run = jit.finish().expect("the loop links")[0];
            let n = 1013;
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 101) as f32 * 0.07 - 3.0)
                .collect();
            let m: Vec<f32> = (0..len).map(|j| j as f32 * 0.31 - 0.5).collect();
            let scalar = Program {
                leaves: vec![Access::Linear, Access::Linear],
                ..f.clone()
            };
            let mut jit1 = Jit::new().expect("a JIT for this machine");
            jit1.add(&scalar).expect("the loop compiles");
            let one = jit1.finish().expect("the loop links")[0];
            // A loop reading whole vectors of its broadcasts starts at a multiple of four.
            let starts: &[usize] = if f.vectorizes(&TARGET) {
                &[0, 4]
            } else {
                &[0, 1, 3, 6]
            };
            for &start in starts {
                let mut out = vec![f32::NAN; n];
                let ptrs = [
                    x.as_ptr() as *mut f32,
                    m.as_ptr() as *mut f32,
                    out.as_mut_ptr(),
                ];
                // SAFETY: x and out hold n elements; every broadcast index is below len.
                unsafe { run(ptrs.as_ptr(), start, n) };
                for k in start..n {
                    // The same expression with the broadcast value at k made linear.
                    let (xk, mk) = ([x[k]; 4], [m[(k / inner) % len]; 4]);
                    let mut want = [0.0f32; 4];
                    let p = [
                        xk.as_ptr() as *mut f32,
                        mk.as_ptr() as *mut f32,
                        want.as_mut_ptr(),
                    ];
                    // SAFETY: four elements each.
                    unsafe { one(p.as_ptr(), 0, 4) };
                    assert_eq!(
                        out[k].to_bits(),
                        want[0].to_bits(),
                        "inner {inner} len {len} start {start} at {k}"
                    );
                }
                assert!(
                    out[..start].iter().all(|v| v.is_nan()),
                    "written before start"
                );
            }
        }
    }

    /// The target the scheduler plans with says which functions run lane by lane: the
    /// ones this emitter calls.
    #[test]
    fn the_target_lists_the_called_functions() {
        let called: Vec<Unary> = CALLS.iter().map(|(_, u)| *u).collect();
        assert_eq!(called, TARGET.scalar_unary);
        assert_eq!(TARGET.scalar_binary, [Binary::Pow]);
        assert_eq!(TARGET.lanes, types::F32X4.lane_count() as usize);
    }

    #[test]
    fn inline_transcendentals_are_within_two_ulps() {
        let xs = inputs();
        // Denormal results lose relative precision by definition (and are flushed to 0
        // where e^x overflows inside sigmoid); compare those above the smallest normal.
        let exp = worst_ulps(Unary::Exp, &xs, |x| {
            let e = x.exp();
            (e == 0.0 || e >= f64::from(f32::MIN_POSITIVE)).then_some(e)
        });
        let sigmoid = worst_ulps(Unary::Sigmoid, &xs, |x| {
            let e = 1.0 / (1.0 + (-x).exp());
            (e == 0.0 || e >= f64::from(f32::MIN_POSITIVE)).then_some(e)
        });
        let tanh = worst_ulps(Unary::Tanh, &xs, |x| Some(x.tanh()));
        eprintln!("exp {exp:.2} ulp, sigmoid {sigmoid:.2} ulp, tanh {tanh:.2} ulp");
        assert!(exp <= 2.0 && sigmoid <= 2.0 && tanh <= 2.0);
    }

    /// The inline erf against f64's over the whole range, and densely (every 61st f32)
    /// across both branches and the switch at 1.5, with both signs: within 1.6 ulp (its
    /// measured worst over every f32 is 1.53); ±1 exactly from 3.92 on, ±0 kept.
    #[test]
    fn inline_erf_is_within_one_and_a_half_ulps() {
        let mut xs = inputs();
        let (lo, hi) = (0.25f32.to_bits(), 4.5f32.to_bits());
        xs.extend((lo..hi).step_by(61).map(f32::from_bits));
        xs.extend((lo..hi).step_by(61).map(|b| -f32::from_bits(b)));
        xs.extend([1.5, 1.499_999_9, 1.499_554_2, 3.919_999_8, 3.92, 3.909_264]);
        let worst = worst_ulps(Unary::Erf, &xs, |x| Some(libm::erf(x)));
        eprintln!("erf {worst:.2} ulp over {} inputs", xs.len());
        assert!(worst <= 1.6, "erf is {worst} ulp off");
        let f = Program {
            leaves: vec![Access::Linear],
            exprs: vec![Expr::Leaf(0), Expr::Unary(Unary::Erf, 0)],
            stores: vec![1],
        };
        let mut jit = Jit::new().expect("a JIT for this machine");
        jit.add(&f).expect("the loop compiles");
        let run = jit.finish().expect("the loop links")[0];
        let xs = [3.92f32, 10.0, -4.0, f32::INFINITY, 0.0, -0.0, 1e-30];
        let mut out = [0.0f32; 7];
        let ptrs = [xs.as_ptr() as *mut f32, out.as_mut_ptr()];
        // SAFETY: one leaf and one output of 7 elements.
        unsafe { run(ptrs.as_ptr(), 0, xs.len()) };
        assert_eq!(&out[..4], &[1.0, 1.0, -1.0, 1.0]);
        assert_eq!(out[4].to_bits(), 0.0f32.to_bits());
        assert_eq!(out[5].to_bits(), (-0.0f32).to_bits());
        assert!((out[6] - 1.128_379_2e-30).abs() <= 1e-36);
    }
}
