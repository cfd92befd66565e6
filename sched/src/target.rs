//! What a device tells the scheduler about itself: the few facts in which the CPU and
//! a GPU plan differ. Everything else about a schedule is the same for every device.

use nabla_lang::check::ty::DType;
use nabla_lang::ir::{Binary, Unary};

/// A device's description, read by [`crate::plan`].
#[derive(Clone, Debug)]
pub struct Target {
    /// For messages: `"cpu"`, `"wgpu"`.
    pub name: &'static str,
    /// The dtype a value of each dtype is held in (the CPU holds every dtype as `f32`,
    /// integers exact below 2²⁴). A cast between dtypes held alike that changes no value
    /// is an alias.
    pub storage: fn(DType) -> DType,
    /// Bytes every buffer starts on (and is rounded up to).
    pub align: usize,
    /// Elements a fused loop computes at once; a broadcast read must repeat with this
    /// period for the loop to stay vectorized.
    pub lanes: usize,
    /// Functions a fused loop evaluates one lane at a time (library calls): a loop using
    /// one does not vectorize.
    pub scalar_unary: &'static [Unary],
    pub scalar_binary: &'static [Binary],
    /// Functions too costly to recompute in every loop that uses their value.
    pub costly_unary: &'static [Unary],
    pub costly_binary: &'static [Binary],
    /// The largest buffer, in bytes, one kernel may bind.
    pub max_binding: usize,
    /// The most buffers one fused loop may bind (its leaves and stores): a loop that
    /// needs more is split in two, the first half storing what the second reads.
    pub max_bindings: usize,
    /// Whether a fused loop whose only use is a sum or max runs inside the reduction
    /// (never stored), and on what terms.
    pub reduce_on_read: Option<ReduceOnRead>,
}

/// When a reduction reads a fused loop's values as they are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceOnRead {
    /// The shortest contiguous run reduced at a time that amortizes running the loop
    /// for it.
    pub min_run: usize,
    /// At most this many reductions of one loop share it.
    pub max_merged: usize,
}

impl Target {
    /// Bytes one element of a `dtype` value occupies on the device.
    pub fn bytes(&self, dtype: DType) -> usize {
        match (self.storage)(dtype) {
            DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// Bytes of one page of the arena: the largest aligned size one kernel may bind. The
    /// arena is a run of such pages (a device holds each in a buffer of its own), and no
    /// value's region crosses from one page into the next.
    pub fn page(&self) -> usize {
        (self.max_binding / self.align).max(1) * self.align
    }

    /// Whether a loop computing unary `u` must run lane by lane.
    pub fn scalar(&self, u: Unary) -> bool {
        self.scalar_unary.contains(&u)
    }
}
