//! The static memory plan: every materialized value gets a region of one arena, in
//! bytes, assigned once by liveness.
//!
//! The arena is a run of pages of [`Target::page`] bytes and no region crosses a page
//! boundary, so a device whose kernels bind at most a page holds each page in a buffer
//! of its own. A value's region is reused after its last reader (best fit among freed blocks); a
//! fused loop may write over a dying input it reads at the same index and of the same
//! element size. A state output (`state.N`) is written straight into input N's buffer
//! when every other reader of N runs before its writer (parameter updates), else copied
//! there after the run.

use std::collections::HashMap;

use nabla_lang::ir::{Graph, ValueId};

use crate::PlanError;
use crate::plan::{Kernel, Loc, Plan, reads, writes};
use crate::target::Target;

/// Assigns every materialized value of `p` its storage.
pub(crate) fn allocate(g: &Graph, p: &mut Plan, t: &Target) -> Result<(), PlanError> {
    let count = g.nodes.len();
    for (i, (v, _, _)) in p.inputs.iter().enumerate() {
        p.loc[v.index()] = Some(Loc::Input(i));
    }
    let kcount = p.kernels.len();
    let mut last_use = vec![0usize; count];
    let mut writer = vec![usize::MAX; count];
    for (k, kernel) in p.kernels.iter().enumerate() {
        for (v, _) in reads(p, kernel) {
            last_use[v.index()] = k;
        }
        for v in writes(p, kernel) {
            writer[v.index()] = k;
            last_use[v.index()] = last_use[v.index()].max(k);
        }
    }
    // Outputs live to the end.
    for (v, _) in &p.outputs {
        last_use[p.root[v.index()].index()] = kcount;
    }
    let in_place_of = in_place(p, &writer);
    let elem = |v: ValueId| t.bytes(g.node(v).dtype);
    let page = t.page();
    let bytes = |v: ValueId| -> Result<usize, PlanError> {
        let n = g.node(v);
        let raw = n.numel().max(1).checked_mul(elem(v));
        match raw.map(|b| b.div_ceil(t.align) * t.align) {
            Some(b) if b <= page => Ok(b),
            _ => Err(PlanError::TooLarge {
                value: v,
                shape: n.shape.clone(),
                limit: t.max_binding,
            }),
        }
    };
    // Free blocks (offset, size), and the arena's end.
    let mut free: Vec<(usize, usize)> = Vec::new();
    let mut end = 0usize;
    for k in 0..kcount {
        let kernel = p.kernels[k].clone();
        let ins = reads(p, &kernel);
        let outs = writes(p, &kernel);
        // Inputs handed over to an output of this kernel (not freed).
        let mut dying: Vec<ValueId> = Vec::new();
        for &v in &outs {
            if let Some(i) = in_place_of.get(&v) {
                p.loc[v.index()] = Some(Loc::Input(*i));
                continue;
            }
            let need = bytes(v)?;
            p.size[v.index()] = need;
            // A fused loop may overwrite an input it reads only linearly and last.
            let reuse = match kernel {
                Kernel::Fused { .. } => ins.iter().find(|(u, lin)| {
                    *lin && last_use[u.index()] == k
                        && p.size[u.index()] == need
                        && elem(*u) == elem(v)
                        && matches!(p.loc[u.index()], Some(Loc::Arena(_)))
                        && ins.iter().filter(|(w, _)| w == u).all(|(_, l)| *l)
                        && !dying.contains(u)
                }),
                _ => None,
            };
            if let Some((u, _)) = reuse {
                p.loc[v.index()] = p.loc[u.index()];
                dying.push(*u);
                last_use[u.index()] = usize::MAX;
                continue;
            }
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, (_, s))| *s >= need)
                .min_by_key(|(_, (_, s))| *s)
                .map(|(j, _)| j);
            let off = match best {
                Some(j) => {
                    let (off, s) = free.remove(j);
                    if s > need {
                        free.push((off + need, s - need));
                    }
                    off
                }
                None => {
                    // A region that would cross into the next page starts it instead;
                    // the rest of this page is free for smaller values.
                    let within = end % page;
                    if within + need > page {
                        free.push((end, page - within));
                        end += page - within;
                    }
                    end += need;
                    end - need
                }
            };
            p.loc[v.index()] = Some(Loc::Arena(off));
        }
        // Values whose last reader is this kernel are free for later kernels.
        let mut seen = Vec::new();
        for v in ins.iter().map(|(v, _)| *v).chain(outs.iter().copied()) {
            if last_use[v.index()] == k && !seen.contains(&v) {
                seen.push(v);
                if let Some(Loc::Arena(off)) = p.loc[v.index()] {
                    free.push((off, p.size[v.index()]));
                }
            }
        }
    }
    p.arena = end;
    Ok(())
}

/// State outputs written in place, with their input: the writer runs after every other
/// reader of the input, and reads it itself only at the index it writes (a fused loop,
/// or a matrix product's update of its base).
fn in_place(p: &mut Plan, writer: &[usize]) -> HashMap<ValueId, usize> {
    let mut in_place_of: HashMap<ValueId, usize> = HashMap::new();
    for o in 0..p.outputs.len() {
        let (v, target) = p.outputs[o];
        let (Some(i), v) = (target, p.root[v.index()]) else {
            continue;
        };
        let w = writer[v.index()];
        if w == usize::MAX
            || in_place_of.contains_key(&v)
            || p.outputs
                .iter()
                .filter(|(u, _)| p.root[u.index()] == v)
                .count()
                > 1
        {
            continue;
        }
        let input = p.inputs[i].0;
        let safe = p.kernels.iter().enumerate().all(|(k, kernel)| {
            reads(p, kernel).iter().all(|(rv, linear)| {
                *rv != input
                    || k < w
                    || (k == w
                        && *linear
                        && matches!(
                            kernel,
                            Kernel::Fused { .. }
                                | Kernel::MatMul {
                                    update: Some(_),
                                    ..
                                }
                        ))
            })
        });
        if safe {
            in_place_of.insert(v, i);
            p.in_place[o] = true;
        }
    }
    in_place_of
}
