//! A team of helper threads that spin between jobs, for steps too small for the pool.
//!
//! Handing work to a sleeping thread costs 30–70 µs on the 2-core machine we measure on
//! (a futex wake, then the scheduler), more than the linear net's matrix products take
//! on one thread (0.020–0.035 ms each), so those steps ran on one core. The team's
//! helpers instead spin on one atomic word while steps run and for [`SPIN`] after their
//! last job, as OpenMP runtimes do; a hand-off is then a cache-line transfer, well under
//! a microsecond. After [`SPIN`] without work a helper parks, and the next job wakes it.
//!
//! A job never waits for a helper to arrive: its parts are claimed from a shared
//! counter, so the caller runs every part no helper has claimed yet. It waits only for
//! parts already claimed. One job runs at a time; a caller that finds the team busy
//! (another thread's step, or a job started inside a job) runs all its parts itself.
//!
//! Memory safety rests on one word, `(epoch, parts, next part)`: a helper reads the job
//! pointer after seeing an epoch and uses it only after claiming a part of that same
//! epoch with a compare-and-swap. A claimed part is unfinished, so the caller, which
//! waits for every part, has not returned, and the job it points to is alive.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it parks. Between two steps of the
/// linear net's training loop there are about 0.02 ms of batch assembly; a millisecond
/// covers that with a wide margin and costs a core only while training runs.
const SPIN: Duration = Duration::from_millis(1);

/// The most parts one job may have (they are counted in 16 bits of the word).
pub const MAX_PARTS: usize = 1 << 16;

thread_local! {
    /// Whether this thread is running a step that may use the team (see [`step`]).
    static IN_STEP: Cell<bool> = const { Cell::new(false) };
}

/// One job: run `f(i)` for every part `i`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    /// `epoch << 32 | parts << 16 | next`: the current job's number, its part count and
    /// its first unclaimed part.
    word: AtomicU64,
    /// The current job, valid while one of its parts is claimed and unfinished.
    job: AtomicPtr<Job<'static>>,
    /// Parts of the current job finished (by anyone).
    done: AtomicUsize,
    /// Whether a part panicked on a helper.
    panicked: AtomicBool,
    /// Set by [`rest`]: helpers park now instead of spinning out [`SPIN`].
    rest: AtomicBool,
}

struct Helper {
    thread: Thread,
    parked: Arc<AtomicBool>,
}

struct Team {
    shared: Arc<Shared>,
    helpers: Vec<Helper>,
    /// Held by the one caller whose job is running.
    busy: Mutex<()>,
    /// How many more jobs run on the caller alone (see [`LATE_BACKOFF`]).
    alone: AtomicUsize,
}

/// Jobs run on the caller alone after one where it waited for a late helper longer than
/// a quarter of its own share (plus [`LATE_SLACK`]). A helper is late when its core is
/// shared with other work: on the noisy 2-core machine a phase with the other core
/// loaded made the linear net's step 0.080 ms with the team against 0.067 ms without.
/// After these jobs (about 80 steps of the linear net) the team is tried again.
const LATE_BACKOFF: usize = 256;

/// Waiting this long for a helper is never held against it (a cache miss or two).
const LATE_SLACK: Duration = Duration::from_micros(2);

fn pack(epoch: u64, parts: usize, next: usize) -> u64 {
    epoch << 32 | (parts as u64) << 16 | next as u64
}

fn unpack(w: u64) -> (u64, usize, usize) {
    (w >> 32, (w >> 16 & 0xffff) as usize, (w & 0xffff) as usize)
}

/// Claims and runs parts of the current job until none is left; true if it ran any.
fn work(shared: &Shared) -> bool {
    let mut ran = false;
    loop {
        let w = shared.word.load(SeqCst);
        let (_, parts, next) = unpack(w);
        if next >= parts {
            return ran;
        }
        let job = shared.job.load(SeqCst);
        if shared
            .word
            .compare_exchange(w, w + 1, SeqCst, SeqCst)
            .is_err()
        {
            continue;
        }
        // SAFETY: part `next` of this epoch is claimed and unfinished, so its caller is
        // still waiting in `run` and `job` (stored before the epoch) points to its job.
        let f = unsafe { (*job).f };
        if catch_unwind(AssertUnwindSafe(|| f(next))).is_err() {
            shared.panicked.store(true, SeqCst);
        }
        shared.done.fetch_add(1, SeqCst);
        ran = true;
    }
}

/// A helper's life: work, spin for more, park when there has been none for [`SPIN`].
fn helper(shared: Arc<Shared>, parked: Arc<AtomicBool>) {
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        if work(&shared) {
            idle_since = Instant::now();
            continue;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) || (idle_since.elapsed() < SPIN && !shared.rest.load(SeqCst))
        {
            continue;
        }
        parked.store(true, SeqCst);
        let (_, parts, next) = unpack(shared.word.load(SeqCst));
        if next >= parts {
            std::thread::park();
        }
        parked.store(false, SeqCst);
        idle_since = Instant::now();
    }
}

/// The team: one helper per core beyond the caller's, as many as rayon's global pool has
/// threads (so `RAYON_NUM_THREADS=1` turns it off). `None` on one core or if a thread
/// could not be started.
fn team() -> Option<&'static Team> {
    if !enabled() {
        return None;
    }
    TEAM.get_or_init(start).as_ref()
}

static TEAM: OnceLock<Option<Team>> = OnceLock::new();

/// Whether the team is used: 0 until decided, then 1 (yes) or 2 (no).
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Whether steps use the team: off unless `NABLA_SPIN=1` or [`set_enabled`] says so.
///
/// Off by default because on the shared 2-core virtual machine we measure on, the gain
/// depends on where the host puts the two virtual cores. In some phases the linear
/// net's step took 0.045 ms with the team against 0.067 without, and a Fashion-MNIST
/// epoch 38–42 ms against 55–57; in others the step took 0.088–0.093 ms against 0.067,
/// apparently with a spinning helper slowing the core it shares hardware with. On a
/// machine with cores of its own, spinning helpers are what OpenMP runtimes use.
pub fn enabled() -> bool {
    match ENABLED.load(SeqCst) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("NABLA_SPIN").is_ok_and(|v| v == "1");
            ENABLED.store(if on { 1 } else { 2 }, SeqCst);
            on
        }
    }
}

/// Turns the team on or off for jobs started from now on (the CLI's `NABLA_SPIN`, and
/// tests, which must exercise it whatever the environment says).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, SeqCst);
}

fn start() -> Option<Team> {
    let count = rayon::current_num_threads().saturating_sub(1);
    if count == 0 {
        return None;
    }
    let shared = Arc::new(Shared {
        word: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        rest: AtomicBool::new(false),
    });
    let mut helpers = Vec::new();
    for i in 0..count {
        let (s, parked) = (shared.clone(), Arc::new(AtomicBool::new(false)));
        let p = parked.clone();
        let handle = std::thread::Builder::new()
            .name(format!("nabla-team-{i}"))
            .spawn(move || helper(s, p))
            .ok()?;
        helpers.push(Helper {
            thread: handle.thread().clone(),
            parked,
        });
    }
    Some(Team {
        shared,
        helpers,
        busy: Mutex::new(()),
        alone: AtomicUsize::new(0),
    })
}

/// Tells spinning helpers to park now: the caller is about to keep every core busy
/// otherwise (a step on the pool), and a spinning helper would take a core from it. The
/// next job wakes them.
pub fn rest() {
    if let Some(t) = TEAM.get().and_then(Option::as_ref) {
        t.shared.rest.store(true, SeqCst);
    }
}

/// Runs `f` as a step that may use the team: [`size`] is the team's size inside it.
pub fn step<R>(f: impl FnOnce() -> R) -> R {
    let before = IN_STEP.replace(true);
    let result = f();
    IN_STEP.set(before);
    result
}

/// How many threads a job started here runs on: the team's size inside a [`step`] (the
/// caller and its helpers), 1 elsewhere.
pub fn size() -> usize {
    if !IN_STEP.get() {
        return 1; // and the team is not started for steps that never use it
    }
    let Some(t) = team() else { return 1 };
    // A job sized for one thread while backing off from a late helper: it is cheaper
    // whole than split and run in parts by the caller.
    let backing_off = t
        .alone
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if backing_off { 1 } else { t.helpers.len() + 1 }
}

/// The block size that splits `len` rows (or columns) over `members` threads: a
/// multiple of 8, the GEMM micro-kernels' step. A batch written with
/// [`nabla_lang::backend::Backend::write_rows`] and the products that read it split
/// alike, so each thread reads the rows it wrote.
pub fn block(len: usize, members: usize) -> usize {
    len.div_ceil(members.max(1)).next_multiple_of(8).max(8)
}

/// Runs `f(i)` for `i` in `0..parts` on the team and returns when all have finished.
/// Parts run in any order and at once; each must touch memory no other part writes.
///
/// # Panics
/// If a part panicked, after all parts have finished.
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let serial = || (0..parts).for_each(f);
    let Some(team) = team().filter(|_| parts > 1 && parts < MAX_PARTS) else {
        return serial();
    };
    let _busy = match team.busy.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return serial(),
    };
    let s = &team.shared;
    let job = Job { f };
    s.done.store(0, SeqCst);
    s.rest.store(false, SeqCst);
    // The pointer outlives the job only while no part of its epoch can be claimed.
    s.job.store((&job as *const Job).cast_mut().cast(), SeqCst);
    let (epoch, _, _) = unpack(s.word.load(SeqCst));
    s.word
        .store(pack(epoch.wrapping_add(1) & 0xffff_ffff, parts, 1), SeqCst);
    let mut woke = false;
    for h in &team.helpers {
        if h.parked.swap(false, SeqCst) {
            h.thread.unpark();
            woke = true;
        }
    }
    let start = Instant::now();
    if catch_unwind(AssertUnwindSafe(|| f(0))).is_err() {
        s.panicked.store(true, SeqCst);
    }
    s.done.fetch_add(1, SeqCst);
    work(s);
    let own = start.elapsed();
    let mut spins = 0u32;
    while s.done.load(SeqCst) < parts {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            // A helper holding a part was descheduled: let it have this core.
            std::thread::yield_now();
        }
    }
    s.job.store(std::ptr::null_mut(), SeqCst);
    // A helper just woken starts on a cold core; only one that was already spinning is
    // judged (after a back-off the helpers have parked, so the job after the first
    // decides).
    if !woke && start.elapsed() - own > own / 4 + LATE_SLACK {
        team.alone.store(LATE_BACKOFF, SeqCst);
    }
    if s.panicked.swap(false, SeqCst) {
        panic!("a kernel panicked on a team thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once() {
        set_enabled(true);
        for parts in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                run(parts, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 50), "{parts} parts");
        }
    }

    #[test]
    fn concurrent_callers_each_finish_their_own_job() {
        set_enabled(true);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        run(8, &|i| {
                            sum.fetch_add(i + t, SeqCst);
                        });
                        assert_eq!(sum.load(SeqCst), 28 + 8 * t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("caller thread");
        }
    }

    #[test]
    fn size_is_one_outside_a_step() {
        set_enabled(true);
        assert_eq!(size(), 1);
        assert!(step(size) >= 1);
    }
}
