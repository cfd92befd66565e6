//! `nabla-jit`: the CPU backend (Cranelift-emitted fused loops, a tuned GEMM, a static
//! memory plan) and the host-code compiler. Not built yet: see the open issues.
