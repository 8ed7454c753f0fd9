//! A spinning team of the current rayon pool's threads for runs of many short parallel jobs.
//!
//! A single-token decode step is a few hundred parallel products of 1-70 MB each, with a little
//! serial work between them. Handing each one to rayon costs a wake-up of the other threads,
//! and under a hypervisor that is tens of microseconds, a sizeable share of a job of a few MB.
//!
//! [`with_spinning_workers`] keeps the pool's other threads in a loop that waits for the next
//! job by spinning (and lets rayon run any other pending work meanwhile), for as long as a
//! closure runs; `par_segments` and `for_each_chunk_mut` post their jobs to that team instead of
//! spawning rayon tasks. Every job is a loop that takes chunks from a shared counter, so the
//! caller alone can finish it: a member that never started (a busy pool) only costs speed.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};

/// A job as the members see it: the address of a `&(dyn Fn() + Sync)` on the poster's stack.
type JobRef<'a> = &'a (dyn Fn() + Sync);

/// The shared state of one team.
struct Team {
    /// `generation << 1 | open`: a member runs the posted job only while it is open.
    state: AtomicUsize,
    /// Members inside the current job; its poster waits for 0 before returning.
    busy: AtomicUsize,
    /// Points to the posted [`JobRef`] (valid while `state` is open or `busy > 0`).
    job: AtomicPtr<()>,
    /// Set when the closure of [`with_spinning_workers`] returns: the members leave.
    stop: AtomicBool,
}

thread_local! {
    /// The team whose poster is this thread (set by `with_spinning_workers` for its closure).
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Spins before a member lets rayon look for other work (`rayon::yield_now`).
const SPINS_PER_YIELD: u32 = 64;

impl Team {
    fn new() -> Self {
        Team {
            state: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            stop: AtomicBool::new(false),
        }
    }

    /// A member's loop: join each open job once, until `stop`.
    fn member(&self) {
        let mut done_generation = usize::MAX;
        let mut idle = 0u32;
        while !self.stop.load(SeqCst) {
            let state = self.state.load(SeqCst);
            if state & 1 == 1 && state >> 1 != done_generation {
                // Enter, then check the job is still open: the poster closes it and then reads
                // `busy` (both sequentially consistent), so either it sees this member and waits
                // for it, or this member sees it closed and leaves the job alone.
                let _leave = Leave(&self.busy);
                self.busy.fetch_add(1, SeqCst);
                if self.state.load(SeqCst) == state {
                    let job = self.job.load(SeqCst) as *const JobRef<'_>;
                    // SAFETY: the job is open and this member is counted in `busy`, so the
                    // poster's `JobRef` (and what it borrows) lives until `busy` drops back.
                    unsafe { (*job)() };
                }
                done_generation = state >> 1;
                idle = 0;
                continue;
            }
            idle = idle.wrapping_add(1);
            if idle.is_multiple_of(SPINS_PER_YIELD) {
                let _ = rayon::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Runs `work` on this thread and on every member that joins, returning when all are done.
    fn run(&self, work: &(dyn Fn() + Sync)) {
        let generation = (self.state.load(SeqCst) >> 1).wrapping_add(1);
        let job: JobRef<'_> = work;
        self.job.store(&job as *const JobRef<'_> as *mut (), SeqCst);
        self.state.store(generation << 1 | 1, SeqCst);
        // Closes the job and waits for the members in it, also if `work` panics here.
        let _close = Close {
            team: self,
            closed: generation << 1,
        };
        work();
    }
}

/// Decrements a member count when dropped (also when the job panics).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Closes a posted job and waits until no member is inside it.
struct Close<'a> {
    team: &'a Team,
    closed: usize,
}

impl Drop for Close<'_> {
    fn drop(&mut self) {
        self.team.state.store(self.closed, SeqCst);
        while self.team.busy.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// Resets this thread's team and sends the members home when the closure ends.
struct Disband<'a>(&'a Team);

impl Drop for Disband<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(std::ptr::null()));
        self.0.stop.store(true, SeqCst);
    }
}

/// Runs `f` with the current pool's other threads spinning between the parallel jobs `f`
/// posts (see the module comment): for a burst of short jobs such as one decode step. Outside
/// a pool, the global pool's threads join (one fewer than its size, this thread being the
/// other). Nested calls, or a single thread, just run `f`. While `f` runs, the members keep
/// their CPUs busy: do not wrap long serial work in it.
pub fn with_spinning_workers<R>(f: impl FnOnce() -> R) -> R {
    let members = rayon::current_num_threads().saturating_sub(1);
    if members == 0 || !CURRENT.with(|c| c.get()).is_null() {
        return f();
    }
    let team = Team::new();
    rayon::in_place_scope(|scope| {
        for _ in 0..members {
            scope.spawn(|_| team.member());
        }
        CURRENT.with(|c| c.set(&team));
        let _disband = Disband(&team);
        f()
    })
}

/// Runs `work` on this thread's team if it has one (see [`with_spinning_workers`]); returns
/// `false`, without running it, otherwise.
pub(crate) fn run_on_team(work: &(dyn Fn() + Sync)) -> bool {
    let team = CURRENT.with(|c| c.get());
    if team.is_null() {
        return false;
    }
    // SAFETY: CURRENT is non-null only inside `with_spinning_workers` on this thread, while the
    // team it points to (a local of that call) is alive.
    unsafe { &*team }.run(work);
    true
}

/// Whether this thread posts its parallel jobs to a team.
pub(crate) fn in_team() -> bool {
    !CURRENT.with(|c| c.get()).is_null()
}
