//! A team of helper threads that spin between jobs, for steps too small for the pool.
//!
//! Handing work to a sleeping thread costs 30–70 µs on the 2-core machine we measure on
//! (a futex wake, then the scheduler), more than the linear net's matrix products take
//! on one thread (0.020–0.035 ms each), so those steps ran on one core. The team's
//! helpers instead spin on one atomic word while steps run and for [`SPIN`] after their
//! last job, as OpenMP runtimes do; a hand-off is then a cache-line transfer, well under
//! a microsecond. After [`SPIN`] without work a helper parks, and the next job wakes it.
//!
//! Whether a step uses the team is measured, not assumed: each executable's [`Tuner`]
//! times its steps with the team and alone, keeps the faster, and measures again later.
//! On the shared virtual machine we develop on the answer changes with the host's
//! phase: the linear net's step took 0.045 ms with the team against 0.067 ms alone in
//! most phases, and 0.09 ms with it in one where the two virtual cores seemed to share
//! a physical core.
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
    /// Whether the step running on this thread was told to run alone (by its [`Tuner`]).
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the next tuned step runs with the team, as its [`Tuner`] said after the last
/// one. Work between steps (the next batch, written by [`step`]) follows it, so a batch
/// is split when the products that read it are, and helpers stay parked while a tuner
/// times steps alone.
static TEAM_NEXT: AtomicBool = AtomicBool::new(true);

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
    /// Bumped by [`wake`]: a helper that sees it change spins another [`SPIN`].
    ping: AtomicU64,
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
}

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
    let mut ping = shared.ping.load(SeqCst);
    loop {
        if work(&shared) {
            idle_since = Instant::now();
            continue;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) {
            continue;
        }
        let now = shared.ping.load(SeqCst);
        if now != ping {
            (ping, idle_since) = (now, Instant::now());
        }
        if idle_since.elapsed() < SPIN && !shared.rest.load(SeqCst) {
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
/// threads (so `RAYON_NUM_THREADS=1` turns it off). `None` when it is off, on one core,
/// or if a thread could not be started.
fn team() -> Option<&'static Team> {
    if mode() == Mode::Off {
        return None;
    }
    TEAM.get_or_init(start).as_ref()
}

static TEAM: OnceLock<Option<Team>> = OnceLock::new();

/// When steps use the team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never (`NABLA_SPIN=0`).
    Off,
    /// When timing says it is faster (each executable's [`Tuner`]); the default.
    Tuned,
    /// Always (`NABLA_SPIN=always`): for measuring the team, and for tests, which must
    /// exercise it whatever the machine's phase.
    Always,
}

/// The mode: 0 until read from the environment, then 1 + its index in [`Mode`].
static MODE: AtomicU8 = AtomicU8::new(0);

/// When steps use the team: `$NABLA_SPIN` (`0`, `always`; anything else is the default,
/// [`Mode::Tuned`]) unless [`set_mode`] said otherwise.
pub fn mode() -> Mode {
    match MODE.load(SeqCst) {
        1 => Mode::Off,
        2 => Mode::Tuned,
        3 => Mode::Always,
        _ => {
            let m = match std::env::var("NABLA_SPIN").as_deref() {
                Ok("0") => Mode::Off,
                Ok("always") => Mode::Always,
                _ => Mode::Tuned,
            };
            set_mode(m);
            m
        }
    }
}

/// Sets when steps started from now on use the team.
pub fn set_mode(m: Mode) {
    let code = match m {
        Mode::Off => 1,
        Mode::Tuned => 2,
        Mode::Always => 3,
    };
    MODE.store(code, SeqCst);
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
        ping: AtomicU64::new(0),
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
    })
}

/// Tells spinning helpers to park now: the caller is about to keep every core busy
/// otherwise (a step on the pool), or to run a step alone, and a spinning helper would
/// take a core, or a core's share of the hardware, from it. The next job, or [`wake`],
/// wakes them.
pub fn rest() {
    if let Some(t) = TEAM.get().and_then(Option::as_ref) {
        t.shared.rest.store(true, SeqCst);
    }
}

/// Gets the helpers spinning (starting the team if need be) for [`SPIN`] from now, ahead
/// of jobs: on the virtual machine we measure on, a helper woken from a long park by a
/// job stalled that job by about a millisecond and ran slower for several more.
pub fn wake() {
    if let Some(t) = team() {
        t.shared.rest.store(false, SeqCst);
        t.shared.ping.fetch_add(1, SeqCst);
        for h in &t.helpers {
            if h.parked.swap(false, SeqCst) {
                h.thread.unpark();
            }
        }
    }
}

/// Runs `f` as a step that may use the team, if the next tuned step does (see
/// [`TEAM_NEXT`]): [`size`] is the team's size inside it.
pub fn step<R>(f: impl FnOnce() -> R) -> R {
    within(mode() != Mode::Always && !TEAM_NEXT.load(SeqCst), f)
}

/// Runs `f` as a step, alone or with the team (the caller then runs part of its jobs).
pub(crate) fn within<R>(alone: bool, f: impl FnOnce() -> R) -> R {
    let before = (IN_STEP.replace(true), ALONE.replace(alone));
    let result = f();
    IN_STEP.set(before.0);
    ALONE.set(before.1);
    result
}

/// How many parts work is cut into where the cut decides the order of a floating-point
/// sum (a matrix product's blocks in a step, a convolution's per-image partial gradients,
/// a reduction's partial sums): the machine's configured processors, read once, whatever
/// the affinity mask or CPU quota this process runs under. Never the number of threads
/// that run the parts, which `RAYON_NUM_THREADS`, `NABLA_SPIN`, `taskset`, a container's
/// quota and the tuner decide from run to run, so the same inputs give the same bits
/// however the threads were chosen (docs/conventions.md, "Reproducibility").
pub fn width() -> usize {
    static WIDTH: OnceLock<usize> = OnceLock::new();
    *WIDTH.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            if let Ok(n) = usize::try_from(n)
                && n > 0
            {
                return n;
            }
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    })
}

/// Whether this thread is running a [`step`] (which may use the team, or was told to
/// run alone).
pub fn in_step() -> bool {
    IN_STEP.get()
}

/// Runs `f(i)` for `i` in `0..parts` on the team when this step uses it, else one part
/// after another on this thread: the same parts either way.
pub fn run_in_step(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if size() > 1 {
        run(parts, f)
    } else {
        (0..parts).for_each(f)
    }
}

/// How many threads a job started here runs on: the team's size inside a [`step`] that
/// may use it (the caller and its helpers), 1 elsewhere.
pub fn size() -> usize {
    if !IN_STEP.get() || ALONE.get() {
        return 1; // and the team is not started for steps that never use it
    }
    team().map_or(1, |t| t.helpers.len() + 1)
}

/// Chooses, for one executable, whether its steps run with the team or alone, by timing
/// both. A round is [`PROBE`] steps alone (helpers parked), [`WARM_AHEAD`] steps alone
/// while the helpers are woken and spin (not timed), then [`PROBE`] steps with the team;
/// the side with the lower median is kept for a stretch that doubles (up to
/// [`KEEP_MAX`] steps) while the same side keeps winning, and then comes the next round.
///
/// Medians, because a step now and then loses its core to the host for milliseconds;
/// rounds again and again, because the host's phase changes. The team is timed last, so
/// that when it wins its helpers are already running: a helper woken from a long park
/// stalled the first job it took part in by about a millisecond here, and ran slower for
/// several steps more, while one woken ahead, during steps that do not wait on it, did
/// not. Where the team loses, its helpers park and cost nothing more.
#[derive(Debug, Clone)]
pub struct Tuner {
    stage: Stage,
    /// Steps left in the present stage.
    left: u32,
    /// How long the next kept stretch is.
    keep: u32,
    /// The side that won last, if any.
    last: Option<bool>,
    /// Step times (seconds) of this round's probes, with the team and alone.
    with: Vec<f64>,
    alone: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Timing steps with the team (true) or alone (false).
    Probe(bool),
    /// Running alone while the helpers wake up, before the team is timed.
    Warm,
    /// Running the winner: with the team (true) or alone.
    Keep(bool),
}

/// Steps timed each way per round; the first [`WARM_UP`] of each are not counted
/// (caches refilled after the other side's steps).
pub const PROBE: u32 = 10;
/// Probe steps not counted.
pub const WARM_UP: u32 = 2;
/// Steps run alone, untimed, between the two probes, while the helpers are woken and
/// kept spinning (see [`wake`]).
pub const WARM_AHEAD: u32 = 16;
/// The first kept stretch after a round of probes, in steps. Short, because the host's
/// phase here changes within seconds.
pub const KEEP_MIN: u32 = 64;
/// The longest kept stretch: a round then costs at most 10 steps on the slower side,
/// and 16 alone, in 1,060.
pub const KEEP_MAX: u32 = 1024;

impl Default for Tuner {
    fn default() -> Self {
        Tuner {
            stage: Stage::Probe(false),
            left: PROBE,
            keep: KEEP_MIN,
            last: None,
            with: Vec::new(),
            alone: Vec::new(),
        }
    }
}

impl Tuner {
    /// Whether the next step runs with the team.
    pub fn with_team(&self) -> bool {
        match self.stage {
            Stage::Probe(t) | Stage::Keep(t) => t,
            Stage::Warm => false,
        }
    }

    /// Whether the helpers should be woken and kept spinning for the next step (which
    /// runs alone).
    pub fn warming(&self) -> bool {
        self.stage == Stage::Warm
    }

    /// Records how long a step took (run as [`Tuner::with_team`] said) and moves on.
    pub fn record(&mut self, seconds: f64) {
        self.left = self.left.saturating_sub(1);
        if let Stage::Probe(t) = self.stage {
            let times = if t { &mut self.with } else { &mut self.alone };
            if self.left + WARM_UP < PROBE {
                times.push(seconds);
            }
        }
        if self.left > 0 {
            return;
        }
        (self.stage, self.left) = match self.stage {
            Stage::Probe(false) => (Stage::Warm, WARM_AHEAD),
            Stage::Warm => (Stage::Probe(true), PROBE),
            Stage::Probe(true) => {
                let won = median(&mut self.with) <= median(&mut self.alone);
                self.with.clear();
                self.alone.clear();
                self.keep = if self.last == Some(won) {
                    (self.keep * 2).min(KEEP_MAX)
                } else {
                    KEEP_MIN
                };
                self.last = Some(won);
                (Stage::Keep(won), self.keep)
            }
            Stage::Keep(_) => (Stage::Probe(false), PROBE),
        };
    }

    /// The side chosen by the latest round of probes (None before the first).
    pub fn decision(&self) -> Option<bool> {
        self.last
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY)
}

/// Runs `f` as one step of the executable that `tuner` belongs to, with the team or
/// alone as the tuner says, and times it for the tuner. Without a team (one core, or
/// `NABLA_SPIN=0`) it runs alone and nothing is timed.
pub fn tuned_step<R>(tuner: &mut Tuner, f: impl FnOnce() -> R) -> R {
    match mode() {
        Mode::Off => return within(true, f),
        Mode::Always => return within(false, f),
        Mode::Tuned if team().is_none() => return within(true, f),
        Mode::Tuned => {}
    }
    let with = tuner.with_team();
    if tuner.warming() {
        wake();
    } else if !with {
        // Timed alone, or alone because that was faster: a spinning helper must not
        // share the core's hardware meanwhile.
        rest();
    }
    let start = Instant::now();
    let result = within(!with, f);
    tuner.record(start.elapsed().as_secs_f64());
    TEAM_NEXT.store(tuner.with_team(), SeqCst);
    result
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
    for h in &team.helpers {
        if h.parked.swap(false, SeqCst) {
            h.thread.unpark();
        }
    }
    if catch_unwind(AssertUnwindSafe(|| f(0))).is_err() {
        s.panicked.store(true, SeqCst);
    }
    s.done.fetch_add(1, SeqCst);
    work(s);
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
    if s.panicked.swap(false, SeqCst) {
        panic!("a kernel panicked on a team thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once() {
        set_mode(Mode::Always);
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
        set_mode(Mode::Always);
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
        set_mode(Mode::Always);
        assert_eq!(size(), 1);
        assert!(step(size) >= 1);
        assert_eq!(within(true, size), 1, "a step told to run alone");
    }

    /// Feeds a tuner `steps` steps timed by `time(with_team)`; returns the sides it ran.
    fn drive(t: &mut Tuner, steps: u32, mut time: impl FnMut(bool) -> f64) -> Vec<bool> {
        (0..steps)
            .map(|_| {
                let with = t.with_team();
                t.record(time(with));
                with
            })
            .collect()
    }

    /// Steps in one round of probes.
    const ROUND: u32 = 2 * PROBE + WARM_AHEAD;

    #[test]
    fn a_round_times_alone_then_warms_the_helpers_then_times_the_team() {
        let mut t = Tuner::default();
        let mut seen = Vec::new();
        for _ in 0..ROUND {
            seen.push((t.with_team(), t.warming()));
            t.record(1.0);
        }
        let want: Vec<(bool, bool)> = std::iter::repeat_n((false, false), PROBE as usize)
            .chain(std::iter::repeat_n((false, true), WARM_AHEAD as usize))
            .chain(std::iter::repeat_n((true, false), PROBE as usize))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(
            t.decision(),
            Some(true),
            "a tie goes to the team, already warm"
        );
    }

    #[test]
    fn the_tuner_keeps_the_faster_side_and_measures_again() {
        for team_wins in [true, false] {
            let mut t = Tuner::default();
            let time = |with: bool| if with == team_wins { 1.0 } else { 1.5 };
            drive(&mut t, ROUND, time);
            assert_eq!(t.decision(), Some(team_wins));
            let kept = drive(&mut t, KEEP_MIN, time);
            assert!(kept.iter().all(|&w| w == team_wins));
            // Probed again, won again: the next stretch is twice as long.
            drive(&mut t, ROUND, time);
            let kept = drive(&mut t, 2 * KEEP_MIN, time);
            assert!(kept.iter().all(|&w| w == team_wins), "{team_wins}");
            assert!(
                !t.with_team() && !t.warming(),
                "a new round after 2·KEEP_MIN"
            );
        }
    }

    #[test]
    fn the_tuner_follows_a_change_of_phase() {
        let mut t = Tuner::default();
        drive(
            &mut t,
            ROUND + KEEP_MIN,
            |with| if with { 1.0 } else { 2.0 },
        );
        assert_eq!(t.decision(), Some(true));
        drive(&mut t, ROUND, |with| if with { 3.0 } else { 2.0 });
        assert_eq!(t.decision(), Some(false));
        let kept = drive(&mut t, KEEP_MIN, |with| if with { 3.0 } else { 2.0 });
        assert!(
            kept.iter().all(|&w| !w),
            "a changed winner keeps KEEP_MIN steps"
        );
    }

    #[test]
    fn warm_ups_and_outliers_do_not_decide() {
        let mut t = Tuner::default();
        let mut n = 0u32;
        // The team is faster, but its first probes (caches refilled) and one more (the
        // host took the core) are slow.
        drive(&mut t, ROUND, |with| {
            n += 1;
            let first = PROBE + WARM_AHEAD;
            match (with, n.saturating_sub(first)) {
                (true, 1 | 2 | 5) => 100.0,
                (true, _) => 1.0,
                (false, _) => 1.2,
            }
        });
        assert_eq!(t.decision(), Some(true));
    }
}
