//! The host compiler: a [`HostProgram`] (typed host code) to machine code with Cranelift,
//! and the small runtime the code calls into. Host code runs the same way whatever device
//! runs the tensor code (it calls into builtins, which call a backend), so this crate
//! knows no backend: the CPU backend and a GPU backend both use it as it is.
//!
//! Every host function becomes one Cranelift function `(ctx, params...) -> ret`: ints,
//! bools and handles are `i64`, floats `f64`; locals are SSA variables; loops and `if`
//! are blocks. Arithmetic, comparisons and control flow are inline instructions, so a
//! scalar loop runs at native speed. Strings, records, lists and builtins are calls into
//! `rt_*` functions that take the context first.
//!
//! Errors never unwind through generated code. A runtime function that fails records the
//! error in the context and sets `ctx.failed`; generated code checks the flag after every
//! call that can fail and returns at once, up to `main`. Integer division by zero is
//! checked inline and reported the same way, with the operator's span. A panic inside a
//! builtin is caught at the boundary and becomes an error.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cranelift_codegen::ir::{
    AbiParam, Block, FuncRef, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind,
    UserFuncName, Value, condcodes::FloatCC, condcodes::IntCC, types,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId as ClifFuncId, Linkage, Module};
use nabla_lang::Span;
use nabla_lang::host::heap::{Builtins, Heap, Object};
use nabla_lang::host::{HExpr, HKind, HTy, HostProgram, Piece, SiteId, Word};
use nabla_lang::syntax::ast::{BinOp, UnOp};

/// A host program stopped with an error at a span.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeError {
    pub message: String,
    pub span: Option<Span>,
    /// The calls the error passed through, innermost first (where each was called).
    pub trace: Vec<Span>,
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// What generated code sees through its first argument. `failed` must stay first and
/// `stack_limit` second: the code loads them at offsets 0 and 8.
#[repr(C)]
struct Ctx<'a> {
    failed: u64,
    /// The lowest stack address a host function may start at: below it, the function
    /// reports a stack overflow instead of running ([`STACK_RESERVE`] above the guard).
    stack_limit: u64,
    heap: &'a mut Heap,
    builtins: &'a mut dyn Builtins,
    prog: &'a HostProgram,
    error: Option<RuntimeError>,
    /// Strings being built by interpolation (nested interpolations push another).
    fmt: Vec<String>,
    /// Each format piece's type and spec, by index (see `rt_fmt_value`).
    pieces: &'a [(HTy, nabla_lang::host::FormatSpec)],
    /// A REPL session's globals.
    globals: &'a mut Vec<Word>,
}

impl Ctx<'_> {
    fn fail(&mut self, message: String, site: u64) {
        if self.error.is_none() {
            let span = usize::try_from(site)
                .ok()
                .and_then(|s| self.prog.sites.get(s))
                .copied();
            self.error = Some(RuntimeError {
                message,
                span,
                trace: vec![],
            });
        }
        self.failed = 1;
    }
}

/// Compiles and runs `prog`'s `main` with `heap` and `builtins`.
pub fn run(
    prog: &HostProgram,
    heap: &mut Heap,
    builtins: &mut dyn Builtins,
) -> Result<(), RuntimeError> {
    let compiled = compile(prog, heap).map_err(|m| RuntimeError {
        message: m,
        span: None,
        trace: vec![],
    })?;
    compiled.run(prog, heap, builtins, &mut vec![])
}

/// A compiled host program: its code lives as long as this does.
pub struct Compiled {
    _module: JITModule,
    main: extern "C" fn(*mut u8) -> i64,
    pieces: Vec<(HTy, nabla_lang::host::FormatSpec)>,
    /// Milliseconds spent in Cranelift.
    pub compile_ms: f64,
}

impl Compiled {
    /// Runs `main`. `globals` are a REPL session's (empty for a script); they are only
    /// updated when the run succeeds.
    pub fn run(
        &self,
        prog: &HostProgram,
        heap: &mut Heap,
        builtins: &mut dyn Builtins,
        globals: &mut Vec<Word>,
    ) -> Result<(), RuntimeError> {
        let mut next = globals.clone();
        next.resize(prog.globals.len().max(next.len()), 0);
        let mut ctx = Ctx {
            failed: 0,
            stack_limit: stack_limit(),
            heap,
            builtins,
            prog,
            error: None,
            fmt: vec![],
            pieces: &self.pieces,
            globals: &mut next,
        };
        let running = nabla_lang::host::interrupt::Running::start();
        (self.main)(&mut ctx as *mut Ctx as *mut u8);
        drop(running);
        match ctx.error.take() {
            Some(e) => Err(e),
            None => {
                *globals = next;
                Ok(())
            }
        }
    }
}

/// Stack kept free below the deepest host function for the builtins it calls (a training
/// step compiles and runs kernels; printing formats) and the Rust code around them.
const STACK_RESERVE: usize = 1 << 20;

/// The stack limit for host code started from here: [`STACK_RESERVE`] above the end of
/// this thread's stack (or 1 MiB below here when the stack's extent is unknown).
fn stack_limit() -> u64 {
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    let room = stacker::remaining_stack().unwrap_or(2 * STACK_RESERVE);
    here.saturating_sub(room.saturating_sub(STACK_RESERVE)) as u64
}

/// A Cranelift JIT builder for this machine's processor, optimizing for speed. The CPU
/// tensor backend builds its fused loops with it too.
pub fn native_builder() -> Result<cranelift_jit::JITBuilder, String> {
    use cranelift_codegen::settings::{self, Configurable};
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
    Ok(cranelift_jit::JITBuilder::with_isa(
        isa,
        cranelift_module::default_libcall_names(),
    ))
}

fn jit_error(e: impl std::fmt::Display) -> String {
    format!("the host compiler failed: {e}")
}

/// The runtime functions generated code imports: name, address, parameter and return
/// types (`I` = i64, `F` = f64).
fn runtime_fns() -> Vec<(&'static str, *const u8, &'static str, &'static str)> {
    vec![
        ("rt_builtin", rt_builtin as *const u8, "IIIII", "I"),
        ("rt_record", rt_record as *const u8, "IIII", "I"),
        ("rt_field", rt_field as *const u8, "III", "I"),
        ("rt_list", rt_list as *const u8, "III", "I"),
        ("rt_index", rt_index as *const u8, "IIII", "I"),
        ("rt_len", rt_len as *const u8, "II", "I"),
        ("rt_fmt_begin", rt_fmt_begin as *const u8, "I", ""),
        ("rt_fmt_lit", rt_fmt_lit as *const u8, "II", ""),
        ("rt_fmt_value", rt_fmt_value as *const u8, "III", ""),
        ("rt_fmt_end", rt_fmt_end as *const u8, "I", "I"),
        ("rt_fail", rt_fail as *const u8, "III", ""),
        ("rt_fmod", rt_fmod as *const u8, "FF", "F"),
        ("rt_trace", rt_trace as *const u8, "II", ""),
        ("rt_global", rt_global as *const u8, "II", "I"),
        ("rt_set_global", rt_set_global as *const u8, "III", ""),
        ("rt_stop", rt_stop as *const u8, "I", ""),
    ]
}

fn clif(t: char) -> types::Type {
    if t == 'F' { types::F64 } else { types::I64 }
}

fn value_type(t: &HTy) -> types::Type {
    if t.is_float() { types::F64 } else { types::I64 }
}

/// Compiles every function of `prog`; string literals and nets are allocated in `heap`.
pub fn compile(prog: &HostProgram, heap: &mut Heap) -> Result<Compiled, String> {
    let t0 = std::time::Instant::now();
    let mut jb = native_builder().map_err(jit_error)?;
    let rt = runtime_fns();
    for (name, f, _, _) in &rt {
        jb.symbol(*name, *f);
    }
    let mut module = JITModule::new(jb);
    let mut imports = HashMap::new();
    for (name, _, params, ret) in &rt {
        let mut sig = module.make_signature();
        sig.params
            .extend(params.chars().map(|c| AbiParam::new(clif(c))));
        sig.returns
            .extend(ret.chars().map(|c| AbiParam::new(clif(c))));
        imports.insert(
            *name,
            module
                .declare_function(name, Linkage::Import, &sig)
                .map_err(jit_error)?,
        );
    }
    let mut ids = Vec::new();
    for f in &prog.funcs {
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::I64));
        sig.params.extend(
            f.locals[..f.params]
                .iter()
                .map(|t| AbiParam::new(value_type(t))),
        );
        sig.returns.push(AbiParam::new(value_type(&f.ret)));
        ids.push((
            module.declare_anonymous_function(&sig).map_err(jit_error)?,
            sig,
        ));
    }
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut literals = Literals {
        heap,
        strings: HashMap::new(),
        pieces: vec![],
    };
    for (f, (id, sig)) in prog.funcs.iter().zip(&ids) {
        ctx.func.signature = sig.clone();
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let mut refs = HashMap::new();
            for (name, fid) in &imports {
                refs.insert(*name, module.declare_func_in_func(*fid, b.func));
            }
            let funcs: Vec<FuncRef> = ids
                .iter()
                .map(|(fid, _)| module.declare_func_in_func(*fid, b.func))
                .collect();
            let mut e = Emitter {
                b: &mut b,
                vars: vec![],
                ctx_val: None,
                rt: refs,
                funcs,
                loops: vec![],
                ret: value_type(&f.ret),
                lits: &mut literals,
            };
            e.function(f);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        module
            .define_function(*id, &mut ctx)
            .map_err(|e| jit_error(format!("{e:?}")))?;
        module.clear_context(&mut ctx);
    }
    module.finalize_definitions().map_err(jit_error)?;
    let main_id: ClifFuncId = ids
        .get(prog.main)
        .map(|(id, _)| *id)
        .ok_or("no main function")?;
    let code = module.get_finalized_function(main_id);
    // SAFETY: `main` was declared above as (i64 ctx) -> i64.
    let main = unsafe { std::mem::transmute::<*const u8, extern "C" fn(*mut u8) -> i64>(code) };
    let pieces = std::mem::take(&mut literals.pieces);
    Ok(Compiled {
        _module: module,
        main,
        pieces,
        compile_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// Constants made while compiling: interned strings and the format pieces' types.
struct Literals<'h> {
    heap: &'h mut Heap,
    strings: HashMap<String, Word>,
    pieces: Vec<(HTy, nabla_lang::host::FormatSpec)>,
}

impl Literals<'_> {
    fn string(&mut self, s: &str) -> Word {
        if let Some(h) = self.strings.get(s) {
            return *h;
        }
        let h = self.heap.string(s);
        self.strings.insert(s.to_string(), h);
        h
    }
}

struct Emitter<'a, 'b, 'h> {
    b: &'a mut FunctionBuilder<'b>,
    vars: Vec<Variable>,
    ctx_val: Option<Value>,
    rt: HashMap<&'static str, FuncRef>,
    funcs: Vec<FuncRef>,
    /// (continue target, break target) of the enclosing loops.
    loops: Vec<(Block, Block)>,
    ret: types::Type,
    lits: &'a mut Literals<'h>,
}

impl Emitter<'_, '_, '_> {
    fn ctx(&self) -> Value {
        self.ctx_val
            .unwrap_or_else(|| panic!("host compiler: ctx used before entry"))
    }

    fn function(&mut self, f: &nabla_lang::host::HFunc) {
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        let params: Vec<Value> = self.b.block_params(entry).to_vec();
        self.ctx_val = params.first().copied();
        self.guard_entry();
        for (i, t) in f.locals.iter().enumerate() {
            let v = self.b.declare_var(value_type(t));
            self.vars.push(v);
            let init = match params.get(i + 1) {
                Some(p) if i < f.params => *p,
                _ => self.zero(value_type(t)),
            };
            self.b.def_var(v, init);
        }
        if let Some(v) = self.expr(&f.body) {
            let v = if f.ret == HTy::Unit {
                self.zero(types::I64)
            } else {
                v
            };
            self.b.ins().return_(&[v]);
        }
    }

    /// A function's first instructions: stop with an error when the stack is nearly
    /// spent (deep or unbounded recursion) or an interrupt is pending. The hot path is two
    /// loads, a compare and one branch.
    fn guard_entry(&mut self) {
        let ctx = self.ctx();
        let sp = self.b.ins().get_stack_pointer(types::I64);
        let limit = self
            .b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), ctx, 8);
        let low = self.b.ins().icmp(IntCC::UnsignedLessThan, sp, limit);
        let flag = self.interrupt_flag();
        let stop = self.b.ins().bor(low, flag);
        self.bail_if(stop);
    }

    /// At a loop's back edge: stop when an interrupt is pending (one load and a branch).
    fn poll_interrupt(&mut self) {
        let flag = self.interrupt_flag();
        self.bail_if(flag);
    }

    /// The interrupt flag as an `i8` (nonzero when set). An atomic load: a plain one
    /// would let Cranelift reuse the value read at the function's entry in a loop that
    /// stores and calls nothing, which would then never see Ctrl-C (on x86 it is the
    /// same `mov`).
    fn interrupt_flag(&mut self) -> Value {
        let addr = nabla_lang::host::interrupt::flag_address() as i64;
        let addr = self.b.ins().iconst(types::I64, addr);
        let flag = self
            .b
            .ins()
            .atomic_load(types::I8, MemFlagsData::trusted(), addr);
        self.b.ins().icmp_imm_s(IntCC::NotEqual, flag, 0)
    }

    /// Returns from the function through `rt_stop` (which records why) when `cond` holds.
    fn bail_if(&mut self, cond: Value) {
        let bail = self.b.create_block();
        let cont = self.b.create_block();
        self.b.set_cold_block(bail);
        self.b.ins().brif(cond, bail, &[], cont, &[]);
        self.b.switch_to_block(bail);
        let ctx = self.ctx();
        self.call_rt("rt_stop", &[ctx]);
        let z = self.zero(self.ret);
        self.b.ins().return_(&[z]);
        self.b.switch_to_block(cont);
    }

    fn zero(&mut self, t: types::Type) -> Value {
        if t == types::F64 {
            self.b.ins().f64const(0.0)
        } else {
            self.b.ins().iconst(types::I64, 0)
        }
    }

    fn call_rt(&mut self, name: &str, args: &[Value]) -> Option<Value> {
        let f = *self
            .rt
            .get(name)
            .unwrap_or_else(|| panic!("host compiler: no runtime function {name}"));
        let inst = self.b.ins().call(f, args);
        self.b.inst_results(inst).first().copied()
    }

    /// After a call that can fail: return at once when `ctx.failed` is set.
    fn check_failed(&mut self) {
        self.check_failed_at(None);
    }

    /// As `check_failed`; a call of a host function also records its site in the trace
    /// (only on the failing path: the hot path is one load and a branch).
    fn check_failed_at(&mut self, site: Option<SiteId>) {
        let ctx = self.ctx();
        let failed = self
            .b
            .ins()
            .load(types::I64, MemFlagsData::trusted(), ctx, 0);
        let bail = self.b.create_block();
        let cont = self.b.create_block();
        self.b.ins().brif(failed, bail, &[], cont, &[]);
        self.b.switch_to_block(bail);
        if let Some(site) = site {
            let s = self.int(site as i64);
            self.call_rt("rt_trace", &[ctx, s]);
        }
        let z = self.zero(self.ret);
        self.b.ins().return_(&[z]);
        self.b.switch_to_block(cont);
    }

    /// Stores `vals` (as words) in a stack slot and returns its address.
    fn words(&mut self, vals: &[Value]) -> Value {
        let size = (vals.len().max(1) * 8) as u32;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            size,
            3,
        ));
        for (i, v) in vals.iter().enumerate() {
            let w = self.word(*v);
            self.b
                .ins()
                .stack_store(types::I64, w, slot, (i * 8) as i32);
        }
        self.b.ins().stack_addr(types::I64, slot, 0)
    }

    fn word(&mut self, v: Value) -> Value {
        if self.b.func.dfg.value_type(v) == types::F64 {
            self.b.ins().bitcast(types::I64, MemFlagsData::new(), v)
        } else {
            v
        }
    }

    fn from_word(&mut self, w: Value, t: &HTy) -> Value {
        if t.is_float() {
            self.b.ins().bitcast(types::F64, MemFlagsData::new(), w)
        } else {
            w
        }
    }

    fn int(&mut self, n: i64) -> Value {
        self.b.ins().iconst(types::I64, n)
    }

    /// Emits `e`; `None` when control does not continue after it.
    fn expr(&mut self, e: &HExpr) -> Option<Value> {
        Some(match &e.kind {
            HKind::Unit => self.int(0),
            HKind::Int(n) => self.int(*n),
            HKind::Bool(v) => self.int(i64::from(*v)),
            HKind::Float(x) => self.b.ins().f64const(*x),
            HKind::Str(s) => {
                let h = self.lits.string(s);
                self.int(h as i64)
            }
            HKind::Net(n) => {
                let h = self.lits.heap.alloc(Object::Net(n.clone()));
                self.int(h as i64)
            }
            HKind::Local(i) => self.b.use_var(self.vars[*i]),
            HKind::Global(g) => {
                let (ctx, g) = (self.ctx(), self.int(*g as i64));
                let w = self.call_rt("rt_global", &[ctx, g])?;
                self.from_word(w, &e.ty)
            }
            HKind::SetGlobal(g, v) => {
                let v = self.expr(v)?;
                let w = self.word(v);
                let (ctx, g) = (self.ctx(), self.int(*g as i64));
                self.call_rt("rt_set_global", &[ctx, g, w]);
                self.int(0)
            }
            HKind::Set(i, v) => {
                let v = self.expr(v)?;
                self.b.def_var(self.vars[*i], v);
                self.int(0)
            }
            HKind::Call(f, args, site) => {
                let mut vals = vec![self.ctx()];
                for a in args {
                    vals.push(self.expr(a)?);
                }
                let inst = self.b.ins().call(self.funcs[*f], &vals);
                let r = self.b.inst_results(inst)[0];
                self.check_failed_at(Some(*site));
                r
            }
            HKind::Builtin(id, args, site) => {
                let mut vals = Vec::new();
                for a in args {
                    vals.push(self.expr(a)?);
                }
                let ptr = self.words(&vals);
                let (ctx, id, n, site) = (
                    self.ctx(),
                    self.int(*id as i64),
                    self.int(vals.len() as i64),
                    self.int(*site as i64),
                );
                let w = self.call_rt("rt_builtin", &[ctx, id, ptr, n, site])?;
                self.check_failed();
                self.from_word(w, &e.ty)
            }
            HKind::Field(r, i) => {
                let r = self.expr(r)?;
                let (ctx, i) = (self.ctx(), self.int(*i as i64));
                let w = self.call_rt("rt_field", &[ctx, r, i])?;
                self.from_word(w, &e.ty)
            }
            HKind::Record(fields) => {
                let mut vals = Vec::new();
                for f in fields {
                    vals.push(self.expr(f)?);
                }
                let HTy::Record(id) = e.ty else {
                    return Some(self.int(0));
                };
                let ptr = self.words(&vals);
                let (ctx, id, n) = (self.ctx(), self.int(id as i64), self.int(vals.len() as i64));
                self.call_rt("rt_record", &[ctx, id, ptr, n])?
            }
            HKind::List(items) => {
                let mut vals = Vec::new();
                for i in items {
                    vals.push(self.expr(i)?);
                }
                let ptr = self.words(&vals);
                let (ctx, n) = (self.ctx(), self.int(vals.len() as i64));
                self.call_rt("rt_list", &[ctx, ptr, n])?
            }
            HKind::Index(l, i, site) => {
                let l = self.expr(l)?;
                let i = self.expr(i)?;
                let (ctx, site) = (self.ctx(), self.int(*site as i64));
                let w = self.call_rt("rt_index", &[ctx, l, i, site])?;
                self.check_failed();
                self.from_word(w, &e.ty)
            }
            HKind::IntToFloat(x) => {
                let v = self.expr(x)?;
                self.b.ins().fcvt_from_sint(types::F64, v)
            }
            HKind::Unary(op, x) => {
                let v = self.expr(x)?;
                match (op, &x.ty) {
                    (UnOp::Neg, HTy::Float) => self.b.ins().fneg(v),
                    (UnOp::Neg, _) => self.b.ins().ineg(v),
                    (UnOp::Not, _) => self.b.ins().bxor_imm_s(v, 1),
                }
            }
            HKind::Binary(op, a, b, site) => return self.binary(*op, a, b, *site),
            HKind::If(c, t, f) => return self.if_expr(c, t, f.as_deref(), &e.ty),
            HKind::While(c, body) => {
                // Rotated: the test is emitted before the loop and again at its bottom, so
                // an iteration takes one conditional branch and no jump.
                let inner = self.b.create_block();
                let test = self.b.create_block();
                let exit = self.b.create_block();
                let first = self.expr(c)?;
                self.b.ins().brif(first, inner, &[], exit, &[]);
                self.b.switch_to_block(inner);
                self.loops.push((test, exit));
                let done = self.expr(body);
                self.loops.pop();
                if done.is_some() {
                    self.b.ins().jump(test, &[]);
                }
                self.b.switch_to_block(test);
                self.poll_interrupt();
                let again = self.expr(c)?;
                self.b.ins().brif(again, inner, &[], exit, &[]);
                self.b.switch_to_block(exit);
                self.int(0)
            }
            HKind::ForRange {
                var,
                end_slot,
                start,
                end,
                body,
            } => {
                let s = self.expr(start)?;
                let n = self.expr(end)?;
                self.b.def_var(self.vars[*var], s);
                self.b.def_var(self.vars[*end_slot], n);
                self.counted_loop(*var, *end_slot, body, |_| Some(()))?
            }
            HKind::ForList {
                var,
                list_slot,
                index_slot,
                end_slot,
                list,
                body,
                site,
            } => {
                // Lists are immutable: the length is read once.
                let l = self.expr(list)?;
                self.b.def_var(self.vars[*list_slot], l);
                let ctx = self.ctx();
                let n = self.call_rt("rt_len", &[ctx, l])?;
                self.b.def_var(self.vars[*end_slot], n);
                let z = self.int(0);
                self.b.def_var(self.vars[*index_slot], z);
                let HTy::List(elem) = &list.ty else {
                    return Some(self.int(0));
                };
                self.counted_loop(*index_slot, *end_slot, body, |e| {
                    let (l, i, site) = (
                        e.b.use_var(e.vars[*list_slot]),
                        e.b.use_var(e.vars[*index_slot]),
                        e.int(*site as i64),
                    );
                    let w = e.call_rt("rt_index", &[ctx, l, i, site])?;
                    e.check_failed();
                    let v = e.from_word(w, elem);
                    e.b.def_var(e.vars[*var], v);
                    Some(())
                })?
            }
            HKind::Block(items) => {
                let mut last = self.int(0);
                for i in items {
                    last = self.expr(i)?;
                }
                if e.ty == HTy::Unit { self.int(0) } else { last }
            }
            HKind::Return(v) => {
                let r = match v {
                    Some(v) => self.expr(v)?,
                    None => self.zero(self.ret),
                };
                self.b.ins().return_(&[r]);
                return None;
            }
            HKind::Break | HKind::Continue => {
                let Some((cont, brk)) = self.loops.last().copied() else {
                    return Some(self.int(0));
                };
                let target = if matches!(e.kind, HKind::Break) {
                    brk
                } else {
                    cont
                };
                self.b.ins().jump(target, &[]);
                return None;
            }
            HKind::Format(pieces) => return self.format(pieces),
        })
    }

    /// `while counter < end { enter; body; counter += 1 }` with `continue` going to the
    /// increment; both slots are set by the caller. Rotated as `while` loops are: the
    /// bound is tested before the first iteration and after each increment.
    fn counted_loop(
        &mut self,
        counter: usize,
        end: usize,
        body: &HExpr,
        enter: impl FnOnce(&mut Self) -> Option<()>,
    ) -> Option<Value> {
        let inner = self.b.create_block();
        let step = self.b.create_block();
        let exit = self.b.create_block();
        let (i, n) = (
            self.b.use_var(self.vars[counter]),
            self.b.use_var(self.vars[end]),
        );
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, n);
        self.b.ins().brif(c, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        enter(self)?;
        self.loops.push((step, exit));
        let done = self.expr(body);
        self.loops.pop();
        if done.is_some() {
            self.b.ins().jump(step, &[]);
        }
        self.b.switch_to_block(step);
        self.poll_interrupt();
        let i = self.b.use_var(self.vars[counter]);
        let i1 = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(self.vars[counter], i1);
        let n = self.b.use_var(self.vars[end]);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i1, n);
        self.b.ins().brif(c, inner, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Some(self.int(0))
    }

    fn format(&mut self, pieces: &[Piece]) -> Option<Value> {
        let ctx = self.ctx();
        self.call_rt("rt_fmt_begin", &[ctx]);
        for p in pieces {
            match p {
                Piece::Lit(s) => {
                    let h = self.lits.string(s);
                    let h = self.int(h as i64);
                    self.call_rt("rt_fmt_lit", &[ctx, h]);
                }
                Piece::Value(v, spec) => {
                    let x = self.expr(v)?;
                    let w = self.word(x);
                    self.lits.pieces.push((v.ty.clone(), *spec));
                    let idx = self.int(self.lits.pieces.len() as i64 - 1);
                    self.call_rt("rt_fmt_value", &[ctx, idx, w]);
                }
            }
        }
        self.call_rt("rt_fmt_end", &[ctx])
    }

    fn if_expr(&mut self, c: &HExpr, t: &HExpr, f: Option<&HExpr>, ty: &HTy) -> Option<Value> {
        let c = self.expr(c)?;
        if speculable(t, &mut SPECULATE_MAX.clone())
            && f.is_none_or(|f| speculable(f, &mut SPECULATE_MAX.clone()))
        {
            return self.if_select(c, t, f, ty);
        }
        let then_b = self.b.create_block();
        let else_b = self.b.create_block();
        let join = self.b.create_block();
        let vt = value_type(ty);
        self.b.append_block_param(join, vt);
        self.b.ins().brif(c, then_b, &[], else_b, &[]);
        let mut reached = false;
        self.b.switch_to_block(then_b);
        if let Some(v) = self.expr(t) {
            let v = if *ty == HTy::Unit { self.zero(vt) } else { v };
            self.b.ins().jump(join, &[v.into()]);
            reached = true;
        }
        self.b.switch_to_block(else_b);
        let v = match f {
            Some(f) => self.expr(f),
            None => Some(self.zero(vt)),
        };
        if let Some(v) = v {
            let v = if *ty == HTy::Unit { self.zero(vt) } else { v };
            self.b.ins().jump(join, &[v.into()]);
            reached = true;
        }
        self.b.switch_to_block(join);
        if !reached {
            // Both arms diverge: the join block is unreachable; end it.
            let z = self.zero(self.ret);
            self.b.ins().return_(&[z]);
            return None;
        }
        Some(self.b.block_params(join)[0])
    }

    /// An `if` whose arms are a few pure assignments and arithmetic, branch-free: both arms
    /// run, and each variable either assigns takes its value through a `select` (a
    /// conditional move). A branch costs a misprediction whenever the pattern is not
    /// regular, and it splits the loop body into blocks Cranelift does not merge back.
    fn if_select(&mut self, c: Value, t: &HExpr, f: Option<&HExpr>, ty: &HTy) -> Option<Value> {
        let mut slots = Vec::new();
        assigned(t, &mut slots);
        if let Some(f) = f {
            assigned(f, &mut slots);
        }
        let before: Vec<Value> = slots
            .iter()
            .map(|s| self.b.use_var(self.vars[*s]))
            .collect();
        let vt = self.expr(t)?;
        let then: Vec<Value> = slots
            .iter()
            .map(|s| self.b.use_var(self.vars[*s]))
            .collect();
        for (s, v) in slots.iter().zip(&before) {
            self.b.def_var(self.vars[*s], *v);
        }
        let vf = match f {
            Some(f) => self.expr(f)?,
            None => self.zero(value_type(ty)),
        };
        for (i, s) in slots.iter().enumerate() {
            let other = self.b.use_var(self.vars[*s]);
            if other != then[i] {
                let v = self.b.ins().select(c, then[i], other);
                self.b.def_var(self.vars[*s], v);
            }
        }
        Some(if *ty == HTy::Unit {
            self.zero(value_type(ty))
        } else {
            self.b.ins().select(c, vt, vf)
        })
    }

    fn binary(&mut self, op: BinOp, a: &HExpr, b: &HExpr, site: SiteId) -> Option<Value> {
        if matches!(op, BinOp::And | BinOp::Or) {
            // Short-circuit: `a && b` is `if a { b } else { false }`.
            let x = self.expr(a)?;
            let rhs = self.b.create_block();
            let join = self.b.create_block();
            self.b.append_block_param(join, types::I64);
            if op == BinOp::And {
                self.b.ins().brif(x, rhs, &[], join, &[x.into()]);
            } else {
                self.b.ins().brif(x, join, &[x.into()], rhs, &[]);
            }
            self.b.switch_to_block(rhs);
            let y = self.expr(b)?;
            self.b.ins().jump(join, &[y.into()]);
            self.b.switch_to_block(join);
            return Some(self.b.block_params(join)[0]);
        }
        let x = self.expr(a)?;
        let y = self.expr(b)?;
        let float = a.ty.is_float();
        let ins = self.b.ins();
        Some(if float {
            match op {
                BinOp::Add => ins.fadd(x, y),
                BinOp::Sub => ins.fsub(x, y),
                BinOp::Mul => ins.fmul(x, y),
                BinOp::Div => ins.fdiv(x, y),
                BinOp::Rem => return self.call_rt("rt_fmod", &[x, y]),
                _ => {
                    let cc = match op {
                        BinOp::Eq => FloatCC::Equal,
                        BinOp::Ne => FloatCC::NotEqual,
                        BinOp::Lt => FloatCC::LessThan,
                        BinOp::Le => FloatCC::LessThanOrEqual,
                        BinOp::Gt => FloatCC::GreaterThan,
                        _ => FloatCC::GreaterThanOrEqual,
                    };
                    let c = ins.fcmp(cc, x, y);
                    self.b.ins().uextend(types::I64, c)
                }
            }
        } else {
            match op {
                BinOp::Add => ins.iadd(x, y),
                BinOp::Sub => ins.isub(x, y),
                BinOp::Mul => ins.imul(x, y),
                BinOp::Div | BinOp::Rem => {
                    // A positive power-of-two literal: floor division is a shift, its
                    // remainder a mask (two's complement rounds toward -inf already).
                    if let HKind::Int(k) = b.kind
                        && k > 0
                        && (k as u64).is_power_of_two()
                    {
                        return Some(if op == BinOp::Div {
                            self.b.ins().sshr_imm_s(x, i64::from(k.trailing_zeros()))
                        } else {
                            self.b.ins().band_imm_s(x, k - 1)
                        });
                    }
                    return self.int_division(op, x, y, site);
                }
                _ => {
                    let cc = match op {
                        BinOp::Eq => IntCC::Equal,
                        BinOp::Ne => IntCC::NotEqual,
                        BinOp::Lt => IntCC::SignedLessThan,
                        BinOp::Le => IntCC::SignedLessThanOrEqual,
                        BinOp::Gt => IntCC::SignedGreaterThan,
                        _ => IntCC::SignedGreaterThanOrEqual,
                    };
                    let c = ins.icmp(cc, x, y);
                    self.b.ins().uextend(types::I64, c)
                }
            }
        })
    }

    /// Floor division and its remainder (the sign of the divisor), as dims divide; a zero
    /// divisor is a runtime error; `MIN / -1` wraps instead of trapping.
    fn int_division(&mut self, op: BinOp, x: Value, y: Value, site: SiteId) -> Option<Value> {
        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, y, 0);
        let bad = self.b.create_block();
        let ok = self.b.create_block();
        self.b.ins().brif(zero, bad, &[], ok, &[]);
        self.b.switch_to_block(bad);
        let (ctx, site_v, code) = (self.ctx(), self.int(site as i64), self.int(1));
        self.call_rt("rt_fail", &[ctx, site_v, code]);
        let z = self.zero(self.ret);
        self.b.ins().return_(&[z]);
        self.b.switch_to_block(ok);
        let minus_one = self.b.ins().icmp_imm_s(IntCC::Equal, y, -1);
        let one = self.int(1);
        let safe = self.b.ins().select(minus_one, one, y);
        let q = self.b.ins().sdiv(x, safe);
        let neg = self.b.ins().ineg(x);
        let q = self.b.ins().select(minus_one, neg, q);
        let prod = self.b.ins().imul(q, y);
        let r = self.b.ins().isub(x, prod);
        // Truncation rounds toward zero; step down when the remainder and divisor differ in sign.
        let r_nz = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
        let sign = self.b.ins().bxor(r, y);
        let diff = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, sign, 0);
        let adjust = self.b.ins().band(r_nz, diff);
        let adjust = self.b.ins().uextend(types::I64, adjust);
        Some(if op == BinOp::Div {
            self.b.ins().isub(q, adjust)
        } else {
            let add = self.b.ins().imul(adjust, y);
            self.b.ins().iadd(r, add)
        })
    }
}

/// How many nodes both arms of an `if` may have together and still run unconditionally.
const SPECULATE_MAX: usize = 24;

/// Whether `e` may run whether or not its `if` takes it: no calls, no control flow, no
/// operation that can fail (an int division by anything but a positive power-of-two
/// literal can), and small; `budget` counts nodes down.
fn speculable(e: &HExpr, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match &e.kind {
        HKind::Unit | HKind::Int(_) | HKind::Float(_) | HKind::Bool(_) | HKind::Local(_) => true,
        HKind::Set(_, v) | HKind::IntToFloat(v) | HKind::Unary(_, v) => speculable(v, budget),
        HKind::Binary(op, a, b, _) => {
            let scalar = matches!(a.ty, HTy::Int | HTy::Float | HTy::Bool);
            let mask = matches!(b.kind, HKind::Int(k) if k > 0 && (k as u64).is_power_of_two());
            let divides = matches!(op, BinOp::Div | BinOp::Rem) && a.ty == HTy::Int && !mask;
            let inline =
                !matches!(op, BinOp::And | BinOp::Or) && !(op == &BinOp::Rem && a.ty == HTy::Float);
            scalar && inline && !divides && speculable(a, budget) && speculable(b, budget)
        }
        HKind::Block(items) => items.iter().all(|i| speculable(i, budget)),
        _ => false,
    }
}

/// The locals `e` assigns, each once, in order of first assignment.
fn assigned(e: &HExpr, out: &mut Vec<usize>) {
    match &e.kind {
        HKind::Set(i, v) => {
            assigned(v, out);
            if !out.contains(i) {
                out.push(*i);
            }
        }
        HKind::IntToFloat(v) | HKind::Unary(_, v) => assigned(v, out),
        HKind::Binary(_, a, b, _) => {
            assigned(a, out);
            assigned(b, out);
        }
        HKind::Block(items) => items.iter().for_each(|i| assigned(i, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------- the runtime

/// # Safety
/// `ctx` is the context `Compiled::run` passed to `main`.
unsafe fn cx<'a>(ctx: *mut u8) -> &'a mut Ctx<'a> {
    // SAFETY: generated code passes through the pointer `run` gave it.
    unsafe { &mut *(ctx as *mut Ctx) }
}

fn args<'a>(ptr: *const u64, n: i64) -> &'a [u64] {
    if n <= 0 || ptr.is_null() {
        return &[];
    }
    // SAFETY: generated code passes a stack slot of `n` words.
    unsafe { std::slice::from_raw_parts(ptr, n as usize) }
}

extern "C" fn rt_builtin(ctx: *mut u8, id: i64, ptr: *const u64, n: i64, site: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let a = args(ptr, n);
    let Some(decl) = c.prog.builtins.get(id as usize) else {
        c.fail(format!("no builtin {id}"), site as u64);
        return 0;
    };
    let arg = |i: usize| {
        a.get(i)
            .copied()
            .ok_or_else(|| format!("`{}` was given {} arguments", decl.name, a.len()))
    };
    let (heap, builtins) = (&mut *c.heap, &mut *c.builtins);
    let result = catch_unwind(AssertUnwindSafe(|| match decl.name.as_str() {
        "__str_concat" => {
            let s = format!("{}{}", heap.str(arg(0)?)?, heap.str(arg(1)?)?);
            Ok(heap.string(s))
        }
        "__str_eq" => Ok(Word::from(heap.str(arg(0)?)? == heap.str(arg(1)?)?)),
        "__int" => {
            let x = f64::from_bits(arg(0)?);
            if x.is_finite() {
                Ok(x.trunc() as i64 as Word)
            } else {
                Err(format!("cannot convert {x} to an int"))
            }
        }
        "__echo" => {
            println!("{}", heap.str(arg(0)?)?);
            Ok(0)
        }
        m if m.starts_with("__math_") => math(&m[7..], a).map(f64::to_bits),
        _ => builtins.call(id as usize, heap, a),
    }))
    .unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("internal error in `{}`: {why}", decl.name))
    });
    match result {
        Ok(w) => w as i64,
        Err(m) => {
            c.fail(m, site as u64);
            0
        }
    }
}

/// The host math builtins (`cos(x)` on a float).
fn math(name: &str, a: &[u64]) -> Result<f64, String> {
    let x = |i: usize| {
        a.get(i)
            .map(|w| f64::from_bits(*w))
            .ok_or_else(|| format!("`{name}` takes more arguments"))
    };
    Ok(match name {
        "exp" => x(0)?.exp(),
        "log" => x(0)?.ln(),
        "sqrt" => x(0)?.sqrt(),
        "sin" => x(0)?.sin(),
        "cos" => x(0)?.cos(),
        "tanh" => x(0)?.tanh(),
        "abs" => x(0)?.abs(),
        "pow" => x(0)?.powf(x(1)?),
        "maximum" => x(0)?.max(x(1)?),
        "minimum" => x(0)?.min(x(1)?),
        other => return Err(format!("no host math function `{other}`")),
    })
}

extern "C" fn rt_record(ctx: *mut u8, id: i64, ptr: *const u64, n: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    c.heap
        .alloc(Object::Record(id as usize, args(ptr, n).to_vec())) as i64
}

extern "C" fn rt_field(ctx: *mut u8, h: i64, i: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    c.heap
        .record(h as u64)
        .ok()
        .and_then(|r| r.get(i as usize))
        .copied()
        .unwrap_or(0) as i64
}

extern "C" fn rt_list(ctx: *mut u8, ptr: *const u64, n: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    c.heap.alloc(Object::List(args(ptr, n).to_vec())) as i64
}

extern "C" fn rt_index(ctx: *mut u8, h: i64, i: i64, site: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let len = c.heap.list(h as u64).map(|l| l.len()).unwrap_or(0);
    match usize::try_from(i).ok().filter(|i| *i < len) {
        Some(i) => c.heap.list(h as u64).map(|l| l[i]).unwrap_or(0) as i64,
        None => {
            c.fail(
                format!("index {i} is out of range for a list of {len}"),
                site as u64,
            );
            0
        }
    }
}

extern "C" fn rt_len(ctx: *mut u8, h: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    c.heap.list(h as u64).map(|l| l.len()).unwrap_or(0) as i64
}

extern "C" fn rt_fmt_begin(ctx: *mut u8) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    c.fmt.push(String::new());
}

extern "C" fn rt_fmt_lit(ctx: *mut u8, h: i64) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let s = c.heap.str(h as u64).unwrap_or("").to_string();
    if let Some(top) = c.fmt.last_mut() {
        top.push_str(&s);
    }
}

extern "C" fn rt_fmt_value(ctx: *mut u8, piece: i64, w: i64) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let Some((ty, spec)) = c.pieces.get(piece as usize) else {
        return;
    };
    let w = w as u64;
    let text = match ty {
        HTy::Float if *spec != Default::default() => spec.float(f64::from_bits(w)),
        HTy::Int if *spec != Default::default() => spec.float(w as i64 as f64),
        _ => c.heap.show(c.prog, ty, w),
    };
    if let Some(top) = c.fmt.last_mut() {
        top.push_str(&text);
    }
}

extern "C" fn rt_fmt_end(ctx: *mut u8) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let s = c.fmt.pop().unwrap_or_default();
    c.heap.string(s) as i64
}

extern "C" fn rt_fail(ctx: *mut u8, site: i64, code: i64) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let m = match code {
        1 => "division by zero".to_string(),
        _ => format!("runtime error {code}"),
    };
    c.fail(m, site as u64);
}

extern "C" fn rt_global(ctx: *mut u8, g: i64) -> i64 {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    c.globals.get(g as usize).copied().unwrap_or(0) as i64
}

extern "C" fn rt_set_global(ctx: *mut u8, g: i64, w: i64) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    if let Some(slot) = c.globals.get_mut(g as usize) {
        *slot = w as u64;
    }
}

/// The most calls an error's trace lists (a runaway recursion would list them all).
const TRACE_MAX: usize = 32;

extern "C" fn rt_trace(ctx: *mut u8, site: i64) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    let span = usize::try_from(site)
        .ok()
        .and_then(|s| c.prog.sites.get(s))
        .copied();
    let Some((e, span)) = c.error.as_mut().zip(span) else {
        return;
    };
    // An error raised at a function's entry (an interrupt, the stack limit) has no span
    // of its own: the innermost call is where it happened.
    if e.span.is_none() {
        e.span = Some(span);
    } else if !e.trace.contains(&span) && e.span != Some(span) && e.trace.len() < TRACE_MAX {
        // A recursion's call sites are listed once each.
        e.trace.push(span);
    }
}

/// Why a function entry or loop stopped: a pending interrupt, else the stack limit.
extern "C" fn rt_stop(ctx: *mut u8) {
    // SAFETY: see `cx`.
    let c = unsafe { cx(ctx) };
    // The flag stays set until the program has stopped: every poll on the way out sees it,
    // and whoever ran the program can tell an interrupt from an error.
    let message = if nabla_lang::host::interrupt::pending() {
        nabla_lang::host::interrupt::MESSAGE.to_string()
    } else {
        "stack overflow: host functions called each other too deeply (unbounded recursion?)"
            .to_string()
    };
    c.fail(message, u64::MAX);
}

extern "C" fn rt_fmod(x: f64, y: f64) -> f64 {
    x % y
}
