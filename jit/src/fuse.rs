//! Fused elementwise loops, emitted with Cranelift.
//!
//! A [`Fused`] program is a group of elementwise IR nodes over one iteration space of `n`
//! elements: leaves (materialized tensors read at the loop index, a scalar, or a
//! broadcast `(i / inner) % len`), expressions over them, and the expressions stored to
//! outputs. It compiles to `fn(ptrs: *const *mut f32, start: usize, end: usize)` looping
//! over `start..end`: four lanes at a time with `f32x4` (and `fma` where the host has it:
//! a multiply feeding only an add is fused), then a scalar tail. Transcendental functions
//! are calls into Rust, so a program that uses one runs in the scalar loop.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, Endianness, InstBuilder, MemFlagsData, Type, UserFuncName, Value, types,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};
use nabla_lang::ir::{Binary, Compare, Unary};

/// How a fused loop reads a leaf at loop index `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Linear,
    /// One value for every `i`.
    Scalar,
    /// Element `(i / inner) % len` (a broadcast along leading and trailing dims).
    Bcast {
        inner: usize,
        len: usize,
    },
}

impl Access {
    /// Whether four consecutive lanes starting at a multiple of 4 can be read as one
    /// vector (or one splatted scalar).
    pub fn vectorizes(self) -> bool {
        match self {
            Access::Linear | Access::Scalar => true,
            Access::Bcast { inner, len } => inner % 4 == 0 || (inner == 1 && len % 4 == 0),
        }
    }
}

/// One expression of a fused program; operands are indices of earlier expressions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expr {
    Leaf(usize),
    Const(f32),
    Unary(Unary, usize),
    Binary(Binary, usize, usize),
    /// 1.0 where the comparison holds, else 0.0.
    Compare(Compare, usize, usize),
    /// `c != 0 ? a : b`.
    Select(usize, usize, usize),
    /// Rounds toward zero (a cast to an integer type).
    Trunc(usize),
    /// 1.0 where nonzero (a cast to bool).
    NonZero(usize),
}

/// A fused elementwise program (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    pub leaves: Vec<Access>,
    pub exprs: Vec<Expr>,
    /// The expression stored to each output, in order (after the leaves in `ptrs`).
    pub stores: Vec<usize>,
}

impl Fused {
    fn transcendental(&self) -> bool {
        self.exprs.iter().any(|e| {
            matches!(
                e,
                Expr::Unary(
                    Unary::Exp
                        | Unary::Log
                        | Unary::Tanh
                        | Unary::Sigmoid
                        | Unary::Erf
                        | Unary::Sin
                        | Unary::Cos,
                    _
                ) | Expr::Binary(Binary::Pow, _, _)
            )
        })
    }
    /// Whether the four-lane loop is used.
    pub fn vectorizes(&self) -> bool {
        !self.transcendental() && self.leaves.iter().all(|a| a.vectorizes())
    }
}

/// A compiled fused loop.
pub type LoopFn = unsafe extern "C" fn(*const *mut f32, usize, usize);

extern "C" fn nb_exp(x: f32) -> f32 {
    x.exp()
}
extern "C" fn nb_log(x: f32) -> f32 {
    x.ln()
}
extern "C" fn nb_tanh(x: f32) -> f32 {
    x.tanh()
}
extern "C" fn nb_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
extern "C" fn nb_erf(x: f32) -> f32 {
    libm::erff(x)
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

const CALLS: [(&str, Unary); 7] = [
    ("nb_exp", Unary::Exp),
    ("nb_log", Unary::Log),
    ("nb_tanh", Unary::Tanh),
    ("nb_sigmoid", Unary::Sigmoid),
    ("nb_erf", Unary::Erf),
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

fn jit_error(e: impl std::fmt::Display) -> String {
    format!("the CPU backend could not compile a fused loop: {e}")
}

/// A JIT builder for this machine's ISA (native features such as FMA on), optimizing for
/// speed. Shared by the fused loops and the host-code compiler.
pub(crate) fn native_builder() -> Result<JITBuilder, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| format!("Cranelift setting {k}: {e}"))
    };
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    set(&mut flags, "opt_level", "speed")?;
    let isa = cranelift_native::builder()
        .map_err(|e| format!("no Cranelift backend for this machine: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())?;
    Ok(JITBuilder::with_isa(
        isa,
        cranelift_module::default_libcall_names(),
    ))
}

impl Jit {
    pub fn new() -> Result<Jit, String> {
        let mut jb = native_builder().map_err(jit_error)?;
        let fns: [(&str, *const u8); 8] = [
            ("nb_exp", nb_exp as *const u8),
            ("nb_log", nb_log as *const u8),
            ("nb_tanh", nb_tanh as *const u8),
            ("nb_sigmoid", nb_sigmoid as *const u8),
            ("nb_erf", nb_erf as *const u8),
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
    pub fn add(&mut self, f: &Fused) -> Result<(), String> {
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
    f: &Fused,
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
            Expr::Unary(_, a) | Expr::Trunc(a) | Expr::NonZero(a) => uses[a] += 1,
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
    let vector = f.vectorizes();
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
        body(b, f, &bases, &scalars, i, types::F32X4, &uses, calls, pow);
    }
    let next = b.ins().iadd_imm_s(i, 4);
    b.ins().jump(vhead, &[next.into()]);

    b.switch_to_block(shead);
    let i = b.block_params(shead)[0];
    let go = b.ins().icmp(IntCC::UnsignedLessThan, i, end);
    b.ins().brif(go, sbody, &[i.into()], exit, &[]);

    b.switch_to_block(sbody);
    let i = b.block_params(sbody)[0];
    body(b, f, &bases, &scalars, i, types::F32, &uses, calls, pow);
    let next = b.ins().iadd_imm_s(i, 1);
    b.ins().jump(shead, &[next.into()]);

    b.switch_to_block(exit);
    b.ins().return_(&[]);
}

/// One iteration at index `i` in type `ty` (`f32` or `f32x4`).
#[allow(clippy::too_many_arguments)]
fn body(
    b: &mut FunctionBuilder,
    f: &Fused,
    bases: &[Value],
    scalars: &[Option<Value>],
    i: Value,
    ty: Type,
    uses: &[usize],
    calls: &[(Unary, cranelift_codegen::ir::FuncRef)],
    pow: cranelift_codegen::ir::FuncRef,
) {
    let mem = MemFlagsData::trusted();
    let lanes = ty.lane_count();
    let vector = lanes > 1;
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
                    let q = if inner == 1 {
                        i
                    } else {
                        b.ins().udiv_imm_u(i, inner as i64)
                    };
                    let idx = if len == 1 {
                        b.ins().iconst(types::I64, 0)
                    } else {
                        b.ins().urem_imm_u(q, len as i64)
                    };
                    let a = addr(b, bases[l], idx);
                    if vector && inner % 4 == 0 {
                        let s = b.ins().load(types::F32, mem, a, 0);
                        b.ins().splat(ty, s)
                    } else {
                        b.ins().load(ty, mem, a, 0)
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
                    Unary::Sign => {
                        let z = konst(b, 0.0);
                        let gt = b.ins().fcmp(FloatCC::GreaterThan, x, z);
                        let lt = b.ins().fcmp(FloatCC::LessThan, x, z);
                        let (p, n) = (to_float(b, gt), to_float(b, lt));
                        b.ins().fsub(p, n)
                    }
                    _ => {
                        // Scalar loop only (see `Fused::vectorizes`).
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
        };
        vals.push(v);
    }
    for (k, s) in f.stores.iter().enumerate() {
        let a = addr(b, bases[f.leaves.len() + k], i);
        b.ins().store(mem, vals[*s], a, 0);
    }
}

/// Whether expression `k` is an operand of an add (so a multiply there can become fma).
fn feeds_add(f: &Fused, k: usize) -> bool {
    f.exprs
        .iter()
        .any(|e| matches!(*e, Expr::Binary(Binary::Add, a, c) if a == k || c == k))
}
