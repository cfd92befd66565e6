//! `nabla-sched`: the schedule every backend runs — from a graph to kernels over a static
//! memory plan, decided once for all devices. A backend contributes only a [`Target`]
//! (how it stores dtypes, its alignment and vector width, what it finds costly, the
//! largest buffer a kernel may bind, whether reductions may read loops) and the code
//! that builds and launches each kind of [`Kernel`].
//!
//! 1. **Aliases**: reshapes, `stop_gradient`, broadcasts that add only 1-sized dims and
//!    casts between dtypes the target holds alike that change no value name their
//!    source's storage ([`Plan::root`]).
//! 2. **Transposes into matmuls** are folded into the product's strides; a transpose
//!    whose every user is such a matmul is never materialized.
//! 3. **Fusion**: elementwise nodes (unary, binary, compare, select, casts, broadcasts
//!    that read with an [`Access`] pattern) are grouped in reverse order: a node joins
//!    its users' group when all its users are in one group and none of them reads it
//!    through a broadcast; a broadcast whose users are all loops of other groups is read
//!    through its pattern by each of them instead of being stored (when the pattern
//!    keeps the loop vectorized). Each group is one [`Program`] whose stores are its
//!    last member and any member that is a graph output; constants are immediates. A
//!    cheap node whose users are loops of several groups, and which reads at most one
//!    full-size tensor, is recomputed in each of them instead of stored (batchnorm's
//!    `x − μ` and `x̂`). A costly one (GELU's `erf`) joins the group that runs first,
//!    which stores it besides its last member; the others read it.
//! 4. **Reductions fused on read**: a loop whose only use is one sum or max over long
//!    enough contiguous runs is not stored: the reduction runs the loop run by run
//!    ([`Kernel::Reduced`]). Such loops feeding reductions of one op over the same axes
//!    of one shape become one loop with a store per reduction when everything the later
//!    ones read exists before the first (batchnorm's backward sums).
//! 5. **Matmul epilogues**: a loop that is only `base − s·p`, `p` a matrix product read by
//!    nothing else and `s` a scalar (SGD's `w − lr·g`), is no loop at all: the product
//!    accumulates `−s·a·b` into `base`'s values ([`Update`]), in place when the plan
//!    allows.
//! 6. **Kernels** run in the order of their last node, which is topological, except
//!    that a loop reading a value stored by a loop placed after it (a value of step 3,
//!    or a split of a loop too wide for the target's bindings) moves after that loop: a
//!    stable topological order of the kernels' reads and writes.
//! 7. **Memory** ([`alloc`]): every materialized value gets a byte region of one arena by
//!    liveness; state outputs are written into their inputs' buffers when safe.
//!
//! [`verify()`] checks a plan's invariants independently of how it was built.
//!
//! Invariants: this crate depends on the IR alone (no code generator, GEMM, thread pool
//! or device API); a plan is a pure function of the graph and the target.

pub mod alloc;
pub mod plan;
pub mod program;
pub mod schedule;
pub mod target;
pub mod verify;

#[cfg(test)]
mod tests;

use std::fmt;

use nabla_lang::ir::ValueId;

pub use plan::{Kernel, Loc, Plan, Scale, Update, describe, reads, writes};
pub use program::{Access, Expr, Program, broadcast_access};
pub use schedule::{plan, reduced_run};
pub use target::{ReduceOnRead, Target};
pub use verify::{Fault, verify};

/// Why a graph has no schedule on a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// A value larger than the largest buffer a kernel of the target may bind.
    TooLarge {
        value: ValueId,
        shape: Vec<usize>,
        limit: usize,
    },
    /// A state the scheduler rules out (a bug, reported rather than run).
    Internal(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            PlanError::TooLarge {
                value,
                shape,
                limit,
            } => write!(
                f,
                "{value} of shape {shape:?} is larger than the {limit} bytes one kernel may bind"
            ),
            PlanError::Internal(what) => write!(f, "internal error in the scheduler: {what}"),
        }
    }
}

impl std::error::Error for PlanError {}
