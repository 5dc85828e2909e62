//! The shared core: the ring, the statistics, the writer, the drainer thread and the guard.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use freelane_sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use freelane_sync::sync::{Arc, Condvar, Mutex};
use freelane_sync::{Backoff, CachePadded};
use tracing_core::Level;

use crate::record::{self, Kind, Record, Renderer};
use crate::ring::{PushError, Ring};

/// What a caller does when the ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the event and count it ([`Stats::dropped`] is exact). The caller never waits.
    /// Levels at or above [`Builder::never_drop`] are written synchronously instead.
    #[default]
    Drop,
    /// Wait for room (lossless). The caller spins briefly, then sleeps until the drainer has
    /// freed slots (it wakes sleeping callers after each batch it consumes).
    Block,
}

/// Why a [`Builder`] refused its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The capacity must be between 2 and 2^24 slots.
    Capacity(usize),
    /// The batch size must be at least 1.
    Batch(usize),
    /// The drainer thread could not be started.
    Spawn(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Capacity(c) => write!(f, "capacity must be between 2 and 16777216, got {c}"),
            Self::Batch(b) => write!(f, "batch size must be at least 1, got {b}"),
            Self::Spawn(e) => write!(f, "could not start the log writer thread: {e}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// Why [`Guard::shutdown`] did not confirm a complete flush.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The drainer had not finished within the timeout (the writer is slow or blocked); it keeps
    /// draining in the background. The statistics at the time of the timeout are attached.
    TimedOut(Stats),
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut(s) => write!(
                f,
                "log writer did not finish within the timeout ({} events still queued)",
                s.depth
            ),
        }
    }
}

impl std::error::Error for ShutdownError {}

/// Counters of a logger, readable at any time ([`Logger::stats`], [`Guard::stats`]).
///
/// Once a logger is shut down and its callers are quiescent,
/// `emitted == written + dropped + failed` and `depth == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Events (and raw writes) submitted by callers.
    pub emitted: u64,
    /// Lines handed to the writer successfully (by the drainer or by a synchronous fallback).
    pub written: u64,
    /// Events dropped because the ring was full (`Overflow::Drop`) or the logger was shut down.
    pub dropped: u64,
    /// Events whose write failed (they were in a batch the writer returned an error for), or
    /// whose capture panicked (a field's `Debug` impl, say: the panic reaches the caller and the
    /// event is skipped).
    pub failed: u64,
    /// Events written synchronously by their caller because the ring was full or closed and their
    /// level is never dropped (included in `written` or `failed`).
    pub sync_writes: u64,
    /// Write or flush calls that returned an error (or panicked).
    pub writer_errors: u64,
    /// The deepest the drainer found the ring (events waiting) at the start of a batch.
    pub max_depth: u64,
    /// Events accepted into the ring and not yet consumed by the drainer.
    pub depth: u64,
    /// The ring's capacity.
    pub capacity: u64,
}

/// Configures a logger: capacity, overflow policy, never-dropped levels, batch size, timeouts.
#[derive(Debug, Clone)]
pub struct Builder {
    capacity: usize,
    overflow: Overflow,
    never_drop: Option<Level>,
    batch: usize,
    idle: Duration,
    shutdown_timeout: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// Defaults: 16384 slots (64 under miri), [`Overflow::Drop`] with ERROR never dropped, batches of up to 512
    /// events, the drainer polls at most every 1 ms when idle, 10 s shutdown timeout on drop.
    pub fn new() -> Self {
        Self {
            capacity: if freelane_sync::LOOM {
                2
            } else if cfg!(miri) {
                64 // keeps the miri suite fast
            } else {
                16_384
            },
            overflow: Overflow::Drop,
            never_drop: Some(Level::ERROR),
            batch: 512,
            idle: Duration::from_millis(1),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Ring capacity in events (rounded up to a power of two; 2 ..= 2^24).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// What to do when the ring is full.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Levels at or above `level` in severity (e.g. `Some(Level::WARN)`: WARN and ERROR) are
    /// never dropped: when the ring is full or closed they are written synchronously by the
    /// caller (possibly out of order with queued events). `None`: every level may be dropped.
    pub fn never_drop(mut self, level: Option<Level>) -> Self {
        self.never_drop = level;
        self
    }

    /// Most events rendered into one `write` call.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// How long the idle drainer sleeps between polls (it is also woken by flushes, shutdown,
    /// a full ring in `Overflow::Block` mode, and by callers that find the ring at least a quarter
    /// full, checked every capacity/16 events).
    pub fn idle_poll(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How long dropping the [`Guard`] waits for the drainer to write everything.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Starts a logger writing to `writer`; returns its handle and the guard that flushes it.
    pub fn build<W: Write + Send + 'static>(
        self,
        writer: W,
    ) -> Result<(Logger, Guard), BuildError> {
        if !(2..=1 << 24).contains(&self.capacity) {
            return Err(BuildError::Capacity(self.capacity));
        }
        if self.batch == 0 {
            return Err(BuildError::Batch(self.batch));
        }
        let capacity = self.capacity.next_power_of_two();
        let shared = Arc::new(Shared {
            ring: Ring::new(capacity),
            overflow: self.overflow,
            never_drop: self.never_drop,
            wake_every: (capacity / 16).max(1),
            writer: Mutex::new(Box::new(writer)),
            dropped: CachePadded::new(AtomicU64::new(0)),
            sync_writes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            writer_errors: AtomicU64::new(0),
            max_depth: AtomicU64::new(0),
            flushed: CachePadded::new(AtomicU64::new(0)),
            flush_requested: AtomicBool::new(false),
            done: AtomicBool::new(false),
            last_error: Mutex::new(None),
            parker: Parker::new(),
            room: RoomWait::new(),
        });
        let drainer = {
            let shared = Arc::clone(&shared);
            let (batch, idle) = (self.batch, self.idle);
            spawn_drainer(move || drain_loop(&shared, batch, idle))?
        };
        let _ = shared.parker.thread.set(drainer.thread().clone());
        let logger = Logger {
            shared: Arc::clone(&shared),
        };
        let guard = Guard {
            shared,
            drainer: Some(drainer),
            timeout: self.shutdown_timeout,
        };
        Ok((logger, guard))
    }
}

#[cfg(not(freelane_loom))]
std::thread_local! {
    /// Set on the drainer thread (see `reentrant`).
    static ON_DRAINER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// How deep this thread is inside the logger: capturing an event's fields (its ring slot
    /// claimed but not yet published) or writing an event synchronously (holding the writer
    /// lock). See `reentrant`.
    static INSIDE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether an event on this thread comes from inside the logger: from the writer on the
/// drainer thread, from a field's `Debug`/`Display` while an event is being captured, or from
/// the writer during a caller's synchronous write. Such an event must never wait for room (the
/// drainer may be waiting for this thread's unpublished slot, or be this thread) nor take the
/// writer lock (this thread or the drainer may hold it): on a full or closed ring it is
/// dropped (counted). Checked only on a full or closed ring. Always `false` under loom, whose
/// threads share one OS thread's thread-locals.
#[inline]
fn reentrant() -> bool {
    #[cfg(not(freelane_loom))]
    {
        ON_DRAINER.try_with(std::cell::Cell::get).unwrap_or(false)
            || INSIDE.try_with(std::cell::Cell::get).unwrap_or(0) > 0
    }
    #[cfg(freelane_loom)]
    {
        false
    }
}

/// Marks this thread as inside the logger (see `reentrant`) until dropped.
struct Inside;

impl Inside {
    #[inline]
    fn enter() -> Self {
        #[cfg(not(freelane_loom))]
        let _ = INSIDE.try_with(|c| c.set(c.get() + 1));
        Inside
    }
}

impl Drop for Inside {
    #[inline]
    fn drop(&mut self) {
        #[cfg(not(freelane_loom))]
        let _ = INSIDE.try_with(|c| c.set(c.get() - 1));
    }
}

#[cfg(not(freelane_loom))]
fn spawn_drainer(
    f: impl FnOnce() + Send + 'static,
) -> Result<freelane_sync::thread::JoinHandle<()>, BuildError> {
    std::thread::Builder::new()
        .name("freelane-log".into())
        .spawn(move || {
            ON_DRAINER.with(|c| c.set(true));
            f();
        })
        .map_err(|e| BuildError::Spawn(e.to_string()))
}

#[cfg(freelane_loom)]
fn spawn_drainer(
    f: impl FnOnce() + Send + 'static,
) -> Result<freelane_sync::thread::JoinHandle<()>, BuildError> {
    Ok(freelane_sync::thread::spawn(f))
}

/// Lets the drainer sleep when idle and callers wake it.
///
/// With std the drainer parks with a timeout and callers wake it only occasionally (a missed
/// wake-up costs at most one idle poll). Under loom there are no timeouts, so the model uses the
/// strict form: the drainer parks without a timeout and every push unparks it (park/unpark's
/// token makes an unpark that comes before the park count), which also shows that shutdown and
/// flush never depend on a timeout firing.
struct Parker {
    #[cfg_attr(freelane_loom, allow(dead_code))]
    sleeping: AtomicBool,
    /// The drainer thread, set by `Builder::build` right after spawning it.
    thread: std::sync::OnceLock<freelane_sync::thread::Thread>,
}

impl Parker {
    fn new() -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        }
    }

    /// Wakes the drainer if it is (about to be) asleep. A lost race only delays the drainer by
    /// one idle poll, never loses an event. Under loom: always unparks.
    #[inline]
    fn wake(&self) {
        #[cfg(freelane_loom)]
        self.wake_now();
        // Relaxed: a hint; the drainer re-checks the ring itself, and its sleep is bounded.
        #[cfg(not(freelane_loom))]
        if self.sleeping.load(Ordering::Relaxed) {
            self.wake_now();
        }
    }

    #[cold]
    fn wake_now(&self) {
        // Relaxed: see `wake`.
        #[cfg(not(freelane_loom))]
        self.sleeping.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Sleeps up to `idle` unless `ready()` says there is work (checked after announcing sleep).
    fn sleep(&self, idle: Duration, ready: impl Fn() -> bool) {
        // Relaxed: see `wake`; a missed wake-up costs at most `idle`. (Unused under loom.)
        #[cfg(not(freelane_loom))]
        self.sleeping.store(true, Ordering::Relaxed);
        if ready() {
            // Work is claimed but a producer is still filling its slot: let it run.
            freelane_sync::thread::yield_now();
        } else {
            #[cfg(not(freelane_loom))]
            std::thread::park_timeout(idle);
            #[cfg(freelane_loom)]
            {
                let _ = idle;
                freelane_sync::thread::park();
            }
        }
        // Relaxed: see `wake`.
        #[cfg(not(freelane_loom))]
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// Where lossless callers sleep while the ring is full: an event count. A waiter registers in
/// `waiters`, re-checks the ring, and only then sleeps on the condition variable; the drainer,
/// after each batch it consumes, looks at `waiters` (one fence and one load) and takes the lock
/// and notifies only when someone is registered. The mutex and condition variable are used only
/// on this slow path (a full ring in `Overflow::Block` mode), never by a caller that finds room.
///
/// No lost wake-up: the waiter's registration is followed by a `SeqCst` fence before its
/// re-check ([`Ring::is_full`]), and the drainer's frees are followed by a `SeqCst` fence before
/// its load of `waiters`. Either the re-check sees the freed slot (the waiter does not sleep) or
/// the drainer sees the registration; a waiter holds the lock from registration until it is
/// inside `wait`, and the drainer takes the lock before notifying, so the notification cannot
/// fall between the re-check and the wait. With std a waiter also wakes after [`ROOM_TIMEOUT`]
/// as a safety net (it re-checks and sleeps again); the loom model waits without a timeout, so
/// it checks that no wake-up depends on it.
struct RoomWait {
    /// Callers registered as (about to be) asleep.
    waiters: CachePadded<AtomicUsize>,
    lock: Mutex<()>,
    cond: Condvar,
}

/// The longest a waiting caller sleeps before re-checking the ring on its own (a safety net; the
/// drainer's notification is what normally wakes it).
#[cfg(not(freelane_loom))]
const ROOM_TIMEOUT: Duration = Duration::from_millis(5);

/// How many times a caller that found the ring full retries with a short spin before it sleeps.
/// Short: on a machine with fewer cores than threads a spinning caller takes CPU time from the
/// drainer it waits for. Zero under loom, whose model covers the sleeping path.
const SPIN_TRIES: u32 = if freelane_sync::LOOM { 0 } else { 6 };

impl RoomWait {
    fn new() -> Self {
        Self {
            waiters: CachePadded::new(AtomicUsize::new(0)),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        }
    }

    /// Sleeps until the drainer reports freed slots (or the safety timeout), unless the ring has
    /// room or is closed when re-checked after registering. The caller retries its push after.
    #[cold]
    fn wait_for_room(&self, ring: &Ring<Record>) {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: the SeqCst fence below orders the registration before the re-check.
        self.waiters.fetch_add(1, Ordering::Relaxed);
        // SeqCst: pairs with the drainer's fence in `notify` (store-load across two threads:
        // either our re-check sees its frees, or its load of `waiters` sees our registration).
        fence(Ordering::SeqCst);
        let guard = if ring.is_full() {
            #[cfg(not(freelane_loom))]
            let guard = match self.cond.wait_timeout(guard, ROOM_TIMEOUT) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            #[cfg(freelane_loom)]
            let guard = self.cond.wait(guard).unwrap_or_else(|e| e.into_inner());
            guard
        } else {
            guard
        };
        // Relaxed: a stale count only costs the drainer one needless lock and notify.
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        drop(guard);
    }

    /// Called by the drainer after it freed slots (and on exit): wakes the sleeping callers, if
    /// any are registered. The common case costs one fence and one load.
    #[inline]
    fn notify(&self) {
        // SeqCst: pairs with the fence in `wait_for_room` (see there).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.notify_slow();
        }
    }

    #[cold]
    fn notify_slow(&self) {
        // Taking the lock waits out any waiter between its registration and its `wait`.
        #[cfg(not(freelane_loom))]
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
        // Under loom the drainer must not block on a mutex: loom's `unpark` (callers wake the
        // drainer with it) makes a thread blocked on a mutex runnable and then fails its
        // acquisition. Spinning on `try_lock` takes the same lock without blocking.
        #[cfg(freelane_loom)]
        loop {
            match self.lock.try_lock() {
                Ok(guard) => break drop(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => break drop(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    freelane_sync::thread::yield_now();
                }
            }
        }
        self.cond.notify_all();
    }
}

pub(crate) struct Shared {
    ring: Ring<Record>,
    overflow: Overflow,
    never_drop: Option<Level>,
    wake_every: usize,
    writer: Mutex<Box<dyn Write + Send>>,
    dropped: CachePadded<AtomicU64>,
    sync_writes: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
    writer_errors: AtomicU64,
    max_depth: AtomicU64,
    /// Positions consumed and handed to the writer, followed by a writer flush.
    flushed: CachePadded<AtomicU64>,
    flush_requested: AtomicBool,
    /// Set by the drainer when it exits.
    done: AtomicBool,
    last_error: Mutex<Option<String>>,
    parker: Parker,
    room: RoomWait,
}

impl Shared {
    /// Submits one event: `fill` captures it into a record (in a ring slot, or a temporary one
    /// for a synchronous write). Never panics; never blocks unless the policy is `Block`.
    #[inline]
    pub(crate) fn submit<F: FnOnce(&mut Record)>(&self, level: Option<Level>, fill: F) {
        let fill = |rec: &mut Record| capture(rec, fill);
        let fill = match self.ring.try_push(fill) {
            Ok(pos) => {
                if freelane_sync::LOOM || pos % self.wake_every == 0 {
                    self.nudge(pos);
                }
                return;
            }
            Err((err, fill)) => {
                if reentrant() {
                    // Logged from inside the logger (the writer, or a field being captured)
                    // and the ring is full or closed: waiting or a synchronous write could
                    // deadlock on ourselves. Drop it (counted).
                    return self.drop_one();
                }
                if err == PushError::Full && self.overflow == Overflow::Block {
                    fill
                } else {
                    return self.overflowed(level, fill);
                }
            }
        };
        self.push_blocking(level, fill);
    }

    #[cold]
    fn drop_one(&self) {
        // Relaxed: a pure count, read by `stats`.
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Every `wake_every` positions: wakes the drainer if it sleeps and the ring is at least a
    /// quarter full. Below that its idle poll (`Builder::idle_poll`, 1 ms by default) comes soon
    /// enough, and a caller in a lightly loaded process makes no system call. Under loom: always
    /// wakes (the model's drainer has no timed poll).
    #[cold]
    #[inline(never)]
    fn nudge(&self, pos: usize) {
        if !freelane_sync::LOOM {
            // Negative when the drainer already consumed `pos` (no need to wake it then).
            let depth = pos.wrapping_sub(self.ring.consumed()) as isize;
            if depth < (self.ring.capacity() / 4) as isize {
                return;
            }
        }
        self.parker.wake();
    }

    /// `Overflow::Block` on a full ring: a few short spins, then sleep until the drainer frees
    /// slots (see [`RoomWait`]), retry, repeat.
    #[cold]
    #[inline(never)]
    fn push_blocking<F: FnOnce(&mut Record)>(&self, level: Option<Level>, mut fill: F) {
        let mut backoff = Backoff::new();
        let mut spins_left = SPIN_TRIES;
        loop {
            if spins_left > 0 {
                spins_left -= 1;
                backoff.spin();
            } else {
                // The ring is full, so the drainer has work: make sure it is not parked (it
                // parks only on an empty ring; an unpark before its park still counts).
                self.parker.wake_now();
                self.room.wait_for_room(&self.ring);
            }
            match self.ring.try_push(fill) {
                Ok(pos) => {
                    if freelane_sync::LOOM || pos % self.wake_every == 0 {
                        self.nudge(pos);
                    }
                    return;
                }
                Err((PushError::Full, f)) => fill = f,
                Err((PushError::Closed, f)) => return self.overflowed(level, f),
            }
        }
    }

    #[cold]
    fn overflowed(&self, level: Option<Level>, fill: impl FnOnce(&mut Record)) {
        let keep = matches!((level, self.never_drop), (Some(l), Some(n)) if l <= n);
        if !keep {
            // Relaxed: a pure count, read by `stats`.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut rec = Record::default();
        // Counted once captured: if `fill` panics, the event was never emitted.
        fill(&mut rec);
        // Relaxed: a pure count, read by `stats`.
        self.sync_writes.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(rec.buf.len() + 128);
        record::render(&rec, &mut out, &mut Renderer::default());
        let inside = Inside::enter();
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let ok = guarded_write(&mut **w, &out, true);
        drop(w);
        drop(inside);
        self.account(1, ok);
    }

    /// Counts `n` abandoned captures (see `capture`) as failed events.
    #[cold]
    fn account_abandoned(&self, n: u64) {
        // Relaxed: a pure count, read by `stats`.
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a written (or failed) group of `n` events.
    fn account(&self, n: u64, result: Result<(), String>) {
        match result {
            // Relaxed (all): pure counts, read by `stats`.
            Ok(()) => {
                self.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(n, Ordering::Relaxed);
                self.writer_errors.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let claimed = self.ring.claimed() as u64;
        let consumed = self.ring.consumed() as u64;
        // Relaxed (all): independent counters; a snapshot of stats is not atomic as a whole.
        let dropped = self.dropped.load(Ordering::Relaxed);
        let sync_writes = self.sync_writes.load(Ordering::Relaxed);
        Stats {
            emitted: claimed + dropped + sync_writes,
            written: self.written.load(Ordering::Relaxed),
            dropped,
            failed: self.failed.load(Ordering::Relaxed),
            sync_writes,
            writer_errors: self.writer_errors.load(Ordering::Relaxed),
            max_depth: self.max_depth.load(Ordering::Relaxed),
            depth: claimed.saturating_sub(consumed),
            capacity: self.ring.capacity() as u64,
        }
    }

    /// Waits until every event accepted before this call has been written and the writer
    /// flushed, or the timeout passes. Returns whether it completed.
    fn flush(&self, timeout: Option<Duration>) -> bool {
        let target = self.ring.claimed() as u64;
        let start = std::time::Instant::now();
        let mut backoff = Backoff::new();
        loop {
            // Acquire: pairs with the drainer's Release store after writing and flushing.
            if self.flushed.load(Ordering::Acquire) >= target {
                return true;
            }
            // Acquire: pairs with the drainer's Release store on exit (its final flush).
            if self.done.load(Ordering::Acquire) {
                return self.flushed.load(Ordering::Acquire) >= target;
            }
            if reentrant() || timeout.is_some_and(|t| start.elapsed() >= t) {
                // From inside the logger (the writer, or a field being captured) the wait could
                // be for this very thread: give up at once.
                return false;
            }
            // Relaxed: a request flag; the drainer publishes the result through `flushed`.
            self.flush_requested.store(true, Ordering::Relaxed);
            self.parker.wake_now();
            backoff.snooze();
            #[cfg(not(freelane_loom))]
            if backoff.is_completed() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

/// Writes `bytes` (and flushes if asked), turning errors and panics into an error message.
fn guarded_write(w: &mut dyn Write, bytes: &[u8], flush: bool) -> Result<(), String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.write_all(bytes)?;
        if flush {
            w.flush()?;
        }
        Ok::<(), io::Error>(())
    }));
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the writer panicked".to_string()),
    }
}

/// Runs the caller's `fill` on a ring slot's record. If it panics (user code runs here: a field's
/// `Debug` impl), the record is cleared and marked [`Kind::Abandoned`] before the panic goes on,
/// and the ring still publishes the slot (see `Ring::try_push`), so the drainer skips it, counts
/// it as failed, and the logger keeps working. Without this the slot was never published and the
/// drainer waited on it forever.
#[inline]
fn capture(rec: &mut Record, fill: impl FnOnce(&mut Record)) {
    struct Abandon<'a> {
        rec: &'a mut Record,
        done: bool,
    }
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            if !self.done {
                self.rec.clear();
                self.rec.kind = Kind::Abandoned;
            }
        }
    }
    let mut guard = Abandon { rec, done: false };
    let inside = Inside::enter();
    fill(guard.rec);
    drop(inside);
    guard.done = true;
}

/// The drainer: pops batches, renders them, writes each batch with one call, flushes when idle.
fn drain_loop(shared: &Shared, batch: usize, idle: Duration) {
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut renderer = Renderer::default();
    let mut dirty = false;
    // The drainer is the only consumer, so it tracks `head` locally (the ring's own `head` is
    // published for other readers in `pop_with`).
    let mut consumed = shared.ring.consumed();
    let mut published = consumed;
    let mut max_depth = 0u64;
    loop {
        out.clear();
        let mut n = 0usize;
        let mut abandoned = 0u64;
        while n < batch {
            // SAFETY: this thread is the ring's only consumer (no other code calls pop_with).
            let popped = unsafe {
                shared.ring.pop_with(|rec| {
                    if rec.kind == Kind::Abandoned {
                        abandoned += 1;
                    }
                    record::render(rec, &mut out, &mut renderer);
                    rec.clear();
                    if rec.buf.capacity() > 4096 {
                        rec.buf.shrink_to(1024);
                    }
                })
            };
            if !popped {
                break;
            }
            n += 1;
        }
        // One load of `tail`: if it says closed, no position can be claimed after it, so
        // `claimed == consumed` means everything accepted before the close has been consumed.
        // (Reading `claimed` and `closed` separately would race with a claim in between.)
        let (claimed, closed) = shared.ring.claimed_and_closed();
        if n > 0 {
            let depth = claimed.wrapping_sub(consumed) as u64;
            if depth > max_depth {
                max_depth = depth;
                // Relaxed: only the drainer writes it; readers want a recent value, nothing more.
                shared.max_depth.store(depth, Ordering::Relaxed);
            }
            consumed = consumed.wrapping_add(n);
            // The batch's slots are free: wake callers sleeping on a full ring (if any) now, so
            // they refill the ring while we write.
            shared.room.notify();
            let mut w = shared.writer.lock().unwrap_or_else(|e| e.into_inner());
            let r = guarded_write(&mut **w, &out, false);
            drop(w);
            shared.account(n as u64 - abandoned, r);
            if abandoned > 0 {
                shared.account_abandoned(abandoned);
            }
            dirty = true;
            if out.capacity() > 1 << 20 {
                out = Vec::with_capacity(64 * 1024);
            }
        }
        let empty = consumed == claimed;
        // The last pass before exiting always flushes (it may have been a full batch).
        let exiting = empty && closed;
        // Relaxed: a request flag (see `Shared::flush`); the result is published via `flushed`.
        if n < batch || exiting || shared.flush_requested.swap(false, Ordering::Relaxed) {
            if dirty {
                let mut w = shared.writer.lock().unwrap_or_else(|e| e.into_inner());
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.flush()));
                drop(w);
                if !matches!(r, Ok(Ok(()))) {
                    // Relaxed: a pure count.
                    shared.writer_errors.fetch_add(1, Ordering::Relaxed);
                }
                dirty = false;
            }
            if published != consumed {
                // Release: publishes "everything before `consumed` was written and flushed" to
                // the Acquire load in `Shared::flush`.
                shared.flushed.store(consumed as u64, Ordering::Release);
                published = consumed;
            }
        }
        if exiting {
            // Closed and everything claimed before the close has been consumed (and flushed
            // above): done.
            break;
        }
        if n == 0 {
            let ring = &shared.ring;
            shared.parker.sleep(idle, || {
                let (claimed, closed) = ring.claimed_and_closed();
                claimed != consumed || closed
            });
        }
    }
    // Release: pairs with the Acquire loads in `flush` and `Guard::shutdown`.
    shared.done.store(true, Ordering::Release);
    // Callers asleep on a full ring now find it closed (and write or drop their event).
    shared.room.notify();
}

/// A cheap, cloneable handle to a running logger: statistics, flush, and the front doors.
#[derive(Clone)]
pub struct Logger {
    pub(crate) shared: Arc<Shared>,
}

impl Logger {
    /// The current statistics (see [`Stats`]); lock-free, callable at any time.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Waits until everything accepted before this call is written and the writer flushed.
    /// Returns `false` if the logger was shut down before that could happen, and at once when
    /// called from inside the logger (from the writer, or from a field's `Debug` while its event
    /// is captured), where the wait could be for this very thread.
    pub fn flush(&self) -> bool {
        self.shared.flush(None)
    }

    /// As [`flush`](Self::flush), giving up after `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        self.shared.flush(Some(timeout))
    }

    /// The last writer error's message, if any write ever failed.
    pub fn last_writer_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Submits raw bytes (one record, written verbatim) at `level` (for the never-drop policy).
    pub fn write_raw(&self, level: Option<Level>, bytes: &[u8]) {
        self.shared.submit(level, |rec| {
            rec.clear();
            rec.buf.extend_from_slice(bytes);
        });
    }
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logger")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Flushes and stops the logger when dropped (or on [`shutdown`](Guard::shutdown)): everything
/// accepted before is written. Keep it alive for as long as you log (e.g. in `main`).
#[must_use = "dropping the guard shuts the logger down at once; keep it alive while logging"]
pub struct Guard {
    shared: Arc<Shared>,
    drainer: Option<freelane_sync::thread::JoinHandle<()>>,
    timeout: Duration,
}

impl Guard {
    /// The logger's current statistics.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Waits until everything accepted before this call is written and flushed.
    pub fn flush(&self) -> bool {
        self.shared.flush(None)
    }

    /// A handle to the logger (for stats from elsewhere, or more front doors).
    pub fn logger(&self) -> Logger {
        Logger {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Closes the logger and waits up to `timeout` for the drainer to write everything accepted
    /// so far. Events submitted afterwards are counted as dropped (or written synchronously at
    /// never-dropped levels). Returns the final statistics.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Stats, ShutdownError> {
        self.close(Some(timeout))
    }

    fn close(&mut self, timeout: Option<Duration>) -> Result<Stats, ShutdownError> {
        self.shared.ring.close();
        self.shared.parker.wake_now();
        let Some(handle) = self.drainer.take() else {
            return Ok(self.shared.stats());
        };
        #[cfg(not(freelane_loom))]
        if let Some(t) = timeout {
            let start = std::time::Instant::now();
            while !handle.is_finished() {
                if start.elapsed() >= t {
                    // Leave the drainer running in the background; it exits once done.
                    return Err(ShutdownError::TimedOut(self.shared.stats()));
                }
                self.shared.parker.wake_now();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        #[cfg(freelane_loom)]
        let _ = timeout;
        let _ = handle.join();
        Ok(self.shared.stats())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let t = self.timeout;
        let _ = self.close(Some(t));
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("stats", &self.stats())
            .finish()
    }
}
