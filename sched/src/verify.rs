//! The plan verifier: checks, independently of how [`crate::plan`] decided anything,
//! that running a plan's kernels in order computes the graph.
//!
//! 1. **Programs are well formed**: operands precede their use, leaves and stores are in
//!    range, a kernel's arguments match its program, and no loop binds more buffers
//!    than the target allows.
//! 2. **Every kernel reads only values already computed** (graph inputs, or outputs of an
//!    earlier kernel), each with a place, and each value has one writer.
//! 3. **Regions fit**: every arena region lies inside the arena and holds its value.
//! 4. **No two values live at the same time share bytes.** A value lives from the kernel
//!    that writes it (before the first kernel for graph inputs) to its last reader (past
//!    the last kernel for graph outputs).
//! 5. **In place only at the same index**: where a kernel writes over bytes it reads, the
//!    regions are identical, the kernel is a fused loop (or a matrix product's update of
//!    its base), and it reads that value only at the index it writes.
//! 6. **Every graph output is written**, and an output updated in place lives in its
//!    input's buffer.

use std::fmt;

use nabla_lang::ir::{Graph, ValueId};

use crate::plan::{Kernel, Loc, Plan, reads, writes};
use crate::program::Expr;
use crate::target::Target;

/// Where a region lives: the arena, or the buffer of graph input `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Space {
    Arena,
    Input(usize),
}

/// A broken invariant of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Kernel `kernel`'s program or arguments are malformed.
    Malformed { kernel: usize, what: String },
    /// A value a kernel reads or writes has no place.
    Unplaced { kernel: usize, value: ValueId },
    /// Kernel `kernel` reads `value` before any kernel computes it.
    ReadBeforeWrite { kernel: usize, value: ValueId },
    /// `value`'s region (`offset`, `bytes`) does not fit the arena or the value.
    Region {
        value: ValueId,
        offset: usize,
        bytes: usize,
        need: usize,
        arena: usize,
    },
    /// `value`'s region (`offset`, `bytes`) crosses from one page of `page` bytes into
    /// the next.
    CrossesPage {
        value: ValueId,
        offset: usize,
        bytes: usize,
        page: usize,
    },
    /// `a` and `b` share bytes while both are live (`a` from kernel `from`).
    Overlap { a: ValueId, b: ValueId, from: usize },
    /// Kernel `kernel` writes `written` over `read` other than at the same index.
    InPlace {
        kernel: usize,
        read: ValueId,
        written: ValueId,
    },
    /// Graph output `output` is never computed or has no place.
    OutputNotWritten { output: usize, value: ValueId },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Fault::Malformed { kernel, what } => write!(f, "kernel {kernel}: {what}"),
            Fault::Unplaced { kernel, value } => {
                write!(f, "kernel {kernel} uses {value}, which has no place")
            }
            Fault::ReadBeforeWrite { kernel, value } => {
                write!(f, "kernel {kernel} reads {value} before it is computed")
            }
            Fault::Region {
                value,
                offset,
                bytes,
                need,
                arena,
            } => write!(
                f,
                "{value} at byte {offset} with {bytes} bytes (needs {need}) in an arena of {arena}"
            ),
            Fault::CrossesPage {
                value,
                offset,
                bytes,
                page,
            } => write!(
                f,
                "{value}'s region at {offset} ({bytes} bytes) crosses a boundary of {page}-byte pages"
            ),
            Fault::Overlap { a, b, from } => {
                write!(
                    f,
                    "{a} and {b} share bytes while both are live (from kernel {from})"
                )
            }
            Fault::InPlace {
                kernel,
                read,
                written,
            } => write!(
                f,
                "kernel {kernel} writes {written} over {read} other than at the same index"
            ),
            Fault::OutputNotWritten { output, value } => {
                write!(f, "output {output} ({value}) is never written")
            }
        }
    }
}

/// A value's region and lifetime; times are kernel indices plus one (0: graph inputs,
/// kernels + 1: graph outputs).
#[derive(Clone, Copy, Debug)]
struct Life {
    value: ValueId,
    space: Space,
    offset: usize,
    bytes: usize,
    from: usize,
    to: usize,
}

/// Checks `p`, a plan of `g` for `t` (see the module doc); every fault found.
pub fn verify(g: &Graph, p: &Plan, t: &Target) -> Result<(), Vec<Fault>> {
    let mut faults = Vec::new();
    let count = g.nodes.len();
    let kcount = p.kernels.len();
    let need = |v: ValueId| {
        let n = g.node(v);
        n.numel().max(1).saturating_mul(t.bytes(n.dtype))
    };
    // Where each value lives: its space, offset and bytes (`None`: no place).
    let place = |v: ValueId| -> Option<(Space, usize, usize)> {
        match p.loc.get(v.index()).copied().flatten()? {
            Loc::Arena(off) => Some((Space::Arena, off, p.size[v.index()])),
            Loc::Input(i) => Some((Space::Input(i), 0, need(v))),
        }
    };
    for (k, kernel) in p.kernels.iter().enumerate() {
        well_formed(p, t, k, kernel, &mut faults);
    }
    if !faults.is_empty() {
        return Err(faults);
    }
    // 2: reads follow writes; lifetimes.
    let mut from = vec![usize::MAX; count];
    let mut to = vec![0usize; count];
    for (i, (v, _, _)) in p.inputs.iter().enumerate() {
        from[v.index()] = 0;
        if p.loc[v.index()] != Some(Loc::Input(i)) {
            faults.push(Fault::Unplaced {
                kernel: 0,
                value: *v,
            });
        }
    }
    for (k, kernel) in p.kernels.iter().enumerate() {
        let time = k + 1;
        for (v, _) in reads(p, kernel) {
            if place(v).is_none() {
                faults.push(Fault::Unplaced {
                    kernel: k,
                    value: v,
                });
            } else if from[v.index()] >= time {
                faults.push(Fault::ReadBeforeWrite {
                    kernel: k,
                    value: v,
                });
            }
            to[v.index()] = to[v.index()].max(time);
        }
        for v in writes(p, kernel) {
            if place(v).is_none() {
                faults.push(Fault::Unplaced {
                    kernel: k,
                    value: v,
                });
            }
            if from[v.index()] != usize::MAX && !p.inputs.iter().any(|(i, _, _)| *i == v) {
                faults.push(Fault::Malformed {
                    kernel: k,
                    what: format!("{v} is written again (one writer per value)"),
                });
            }
            from[v.index()] = from[v.index()].min(time);
            to[v.index()] = to[v.index()].max(time);
        }
    }
    // 6: outputs.
    for (o, (v, target)) in p.outputs.iter().enumerate() {
        let r = p.root[v.index()];
        if from[r.index()] == usize::MAX || place(r).is_none() {
            faults.push(Fault::OutputNotWritten {
                output: o,
                value: r,
            });
            continue;
        }
        to[r.index()] = kcount + 1;
        if p.in_place[o] && (target.is_none() || p.loc[r.index()] != target.map(Loc::Input)) {
            faults.push(Fault::OutputNotWritten {
                output: o,
                value: r,
            });
        }
    }
    // 3: regions.
    let mut lives = Vec::new();
    for i in 0..count {
        let v = ValueId(i as u32);
        if from[i] == usize::MAX {
            continue;
        }
        let Some((space, offset, bytes)) = place(v) else {
            continue;
        };
        let page = t.page();
        if space == Space::Arena && bytes > 0 && offset / page != (offset + bytes - 1) / page {
            faults.push(Fault::CrossesPage {
                value: v,
                offset,
                bytes,
                page,
            });
        }
        if space == Space::Arena
            && (bytes < need(v) || offset.checked_add(bytes).is_none_or(|e| e > p.arena))
        {
            faults.push(Fault::Region {
                value: v,
                offset,
                bytes,
                need: need(v),
                arena: p.arena,
            });
        }
        lives.push(Life {
            value: v,
            space,
            offset,
            bytes,
            from: from[i],
            to: to[i].max(from[i]),
        });
    }
    // 4: no two live values share bytes, except where one dies at the kernel that writes
    // the other (checked by rule 5).
    lives.sort_by_key(|l| (l.space, l.from));
    let mut active: Vec<Life> = Vec::new();
    let mut space = None;
    for l in lives {
        if space != Some(l.space) {
            active.clear();
            space = Some(l.space);
        }
        active.retain(|a| a.to >= l.from);
        for a in &active {
            let shared = a.offset < l.offset + l.bytes && l.offset < a.offset + a.bytes;
            if shared && a.to > l.from {
                faults.push(Fault::Overlap {
                    a: a.value,
                    b: l.value,
                    from: l.from.saturating_sub(1),
                });
            }
        }
        active.push(l);
    }
    // 5: writes over read bytes happen only at the same index.
    for (k, kernel) in p.kernels.iter().enumerate() {
        let ins = reads(p, kernel);
        let outs = writes(p, kernel);
        for (j, &w) in outs.iter().enumerate() {
            let Some(wp) = place(w) else { continue };
            let shares = |v: ValueId| {
                place(v).is_some_and(|(s, o, b)| s == wp.0 && o < wp.1 + wp.2 && wp.1 < o + b)
            };
            for &(r, _) in &ins {
                if r == w || !shares(r) {
                    continue;
                }
                let same =
                    place(r) == Some(wp) && t.bytes(g.node(r).dtype) == t.bytes(g.node(w).dtype);
                let linear = ins.iter().filter(|(u, _)| *u == r).all(|(_, lin)| *lin);
                let kind = match kernel {
                    Kernel::Fused { .. } => true,
                    Kernel::MatMul {
                        update: Some(u), ..
                    } => u.base == r,
                    _ => false,
                };
                if !(same && linear && kind) {
                    faults.push(Fault::InPlace {
                        kernel: k,
                        read: r,
                        written: w,
                    });
                }
            }
            for &other in &outs[j + 1..] {
                if shares(other) {
                    faults.push(Fault::Overlap {
                        a: w,
                        b: other,
                        from: k,
                    });
                }
            }
        }
    }
    if faults.is_empty() {
        Ok(())
    } else {
        Err(faults)
    }
}

/// Rule 1 for kernel `k`.
fn well_formed(p: &Plan, t: &Target, k: usize, kernel: &Kernel, faults: &mut Vec<Fault>) {
    let mut bad = |what: String| faults.push(Fault::Malformed { kernel: k, what });
    let func = match kernel {
        Kernel::Fused { func, .. } | Kernel::Reduced { func, .. } => *func,
        Kernel::MatMul { .. } | Kernel::Node { .. } => return,
    };
    let Some(f) = p.programs.get(func) else {
        return bad(format!("loop {func} does not exist"));
    };
    let (args, stores) = match kernel {
        Kernel::Fused { args, .. } => (args.len(), f.stores.len()),
        Kernel::Reduced { args, nodes, .. } => {
            if nodes.len() != f.stores.len() {
                bad(format!(
                    "{} reductions of {} stores",
                    nodes.len(),
                    f.stores.len()
                ));
            }
            (args.len(), 0)
        }
        _ => return,
    };
    if args > t.max_bindings {
        bad(format!(
            "{args} buffers bound, where {} allows {}",
            t.name, t.max_bindings
        ));
    }
    if args != f.leaves.len() + stores {
        bad(format!(
            "{args} arguments for {} leaves and {stores} stores",
            f.leaves.len()
        ));
    }
    for (i, e) in f.exprs.iter().enumerate() {
        let ok = match *e {
            Expr::Leaf(l) => l < f.leaves.len(),
            Expr::Const(_) => true,
            Expr::Unary(_, a) | Expr::Trunc(a) | Expr::NonZero(a) | Expr::RoundBf16(a) => a < i,
            Expr::Binary(_, a, b) | Expr::Compare(_, a, b) => a < i && b < i,
            Expr::Select(c, a, b) => c < i && a < i && b < i,
        };
        if !ok {
            bad(format!("expression {i} of loop {func} reads a later one"));
        }
    }
    if f.stores.iter().any(|s| *s >= f.exprs.len()) {
        bad(format!("loop {func} stores an expression it lacks"));
    }
}
