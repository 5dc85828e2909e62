//! Atomic per-GPU load counters, GPU selection policies and RAII load guards.
//!
//! A [`LoadBoard`] holds, for every GPU, the number of requests in flight and their outstanding
//! cost (e.g. prompt + generation tokens). Routers call [`LoadBoard::pick`] (or, better,
//! [`LoadBoard::pick_and_acquire`], which reserves load at selection time so that concurrent
//! routers do not all choose the same GPU) on every request; the returned [`LoadGuard`] releases
//! exactly what it added when it is dropped, also on panic or when a task is cancelled.
//!
//! ```
//! use std::sync::Arc;
//! use freelane_load::{GpuId, LoadBoard, Policy};
//!
//! let board = Arc::new(LoadBoard::new(4));
//! let usable = |g: GpuId| g != GpuId(2); // e.g. `|g| health.is_usable(g)`
//! let guard = board.pick_and_acquire(Policy::LeastLoaded, 128, usable).expect("a gpu is usable");
//! assert_ne!(guard.gpu(), GpuId(2));
//! assert_eq!(board.in_flight(guard.gpu()), 1);
//! assert_eq!(board.cost(guard.gpu()), 128);
//! drop(guard);
//! assert_eq!(board.in_flight(GpuId(0)) + board.in_flight(GpuId(1)) + board.in_flight(GpuId(3)), 0);
//! ```
//!
//! # Guarantees
//! - **Exact accounting.** Every acquire adds one packed delta (in-flight count and cost
//!   together) to its GPU's word with one read-modify-write, and its guard's drop subtracts the
//!   very same delta with one `fetch_sub`, so the counters are exact sums of the live guards
//!   (read-modify-writes on one location are totally ordered) and the live guards never exceed
//!   the limits. The one exception, for an instant: a `fetch_add` refused after a reading stale
//!   by millions of acquires shows its add until it takes it back (see "Overflow"). When no
//!   guard is live and no acquire is running, every counter reads zero.
//! - **No ineligible pick.** [`pick`](LoadBoard::pick) only returns GPUs for which `eligible`
//!   returned `true` during that call, and `None` when there is none.
//! - **Lock-free, mostly wait-free.** Guard drop, `pick` with `LeastLoaded` /
//!   `PowerOfTwoChoices` / `RoundRobin` and every statistics read are wait-free (a bounded number
//!   of loads and RMWs); `acquire` is wait-free far below the limits for costs up to 65535
//!   (one `fetch_add`) and otherwise lock-free (its compare-and-swap retries only when another
//!   acquire or release changed the same GPU's word meanwhile); nothing ever blocks.
//! - **Staleness.** A pick reads each GPU's counter once with `Relaxed`; it may be overtaken by
//!   concurrent acquires (the load it saw is a snapshot, not a lock). That is why
//!   `pick_and_acquire` reserves immediately, and why `PowerOfTwoChoices` exists (robust to
//!   stale load information where "always the least loaded" herds).
//! - **Statistics** (`allocations`, `releases`, `failures`, success rate) are counters read
//!   without locks, monotonic (an allocation is counted once its add has succeeded, so a
//!   refused acquire never shows in them). `allocations` and
//!   `failures` are exact; `releases` is derived as `allocations - in_flight` and is exact when
//!   no acquire or release is concurrent with the read (otherwise it may be off by the number of
//!   concurrent operations).
//! - **Bad input.** An out-of-range [`GpuId`] never corrupts anything: `in_flight`/`cost` read 0,
//!   `stats` returns `None`, [`try_acquire`](LoadBoard::try_acquire) and
//!   [`record_failure`](LoadBoard::record_failure) return [`LoadError::UnknownGpu`], `pick`
//!   never returns it. Only [`acquire`](LoadBoard::acquire) panics on it, as documented (it
//!   has no error channel by contract).
//!
//! # Implementation
//! **Layout: packed, read-mostly load words.** Each GPU's load is one `AtomicU64`: the in-flight
//! count in the low 24 bits and the load score (in-flight count plus outstanding cost, what
//! picks compare) in the top 40 bits, so the least-loaded scan's key for a GPU is its word with
//! the low 24 bits masked off and replaced by a rank, without unpacking. The words of eight
//! GPUs share one cache-padded block, so `LeastLoaded` reads all eight GPUs with one cache-line
//! fetch; an acquire is one `fetch_add` of that word (a compare-and-swap for costs over 65535;
//! plus one plain increment on this thread's allocation stripe) and a release one `fetch_sub`.
//! The issue's measurements found per-GPU
//! *padded* counters slower for pick-heavy loads (a scan touches one line per GPU, each being
//! invalidated by other routers' RMWs); on our shared 2-vCPU machine `benches/benches/load.rs`
//! measured padded and unpadded bare scans within noise of each other, so the packed layout
//! is kept for its single-line scan and single-RMW acquire. A third layout, exact counters
//! padded per GPU plus a packed snapshot line that picks scan (each acquire and release stores
//! the counter's new value into it), was the fastest single-threaded (it has the bare scan's
//! cost) and the slowest at 2–8 threads (0.45–0.80x the packed bare scan: every operation now
//! writes two lines, and the snapshot line is written twice), so it was not adopted. The
//! allocation counter, which picks never read, is striped: each thread counts into its own row
//! of padded blocks, so routers on different threads never bounce a statistics line between
//! them; a stats read sums the rows. Twelve rows are owned, each by at most one live thread,
//! which counts with a plain load and store (no locked instruction: a single-threaded
//! pick + acquire + release measured about 1.25x faster than with an RMW there) and hands the
//! row back when it exits; threads that find none free share the other four rows round-robin,
//! with RMWs. Failures (rare) keep one padded
//! counter per GPU. The least-loaded scan is branch-free: it reduces one integer key per GPU
//! (load, then tie-break rank) with `min`, so a random tie-break costs no mispredicted branches.
//! The common board (unweighted, at most eight GPUs: one block) picks the least loaded and
//! acquires in one straight-line path (no block loop, no bounds checks the pick already
//! guarantees; `PowerOfTwoChoices` stays inline too, and every other board and policy takes a
//! general path, out of line so that its registers do not crowd these): the general path
//! measured about 7 ns of 25 more single-threaded than the same features written out by hand. Measured against a bare
//! `[AtomicU64; 8]` scan (no tie-break, no statistics) in docs/BENCHMARKS.md.
//!
//! **Orderings.** Counter operations are `Relaxed` except the guard's subtract (`Release`) and
//! the board's final check in `Drop` (`Acquire`; see "Guards and the board's lifetime"): the
//! counters publish no other data, and the only property needed — that the value is the exact
//! sum of all deltas — holds for any ordering because RMWs on one location form a single
//! modification order. Threads that want to read a quiescent zero synchronize through something
//! else (a join, a channel), which supplies the happens-before edge. See `docs/ORDERINGS.md`.
//!
//! **Overflow.** A GPU may hold up to [`MAX_IN_FLIGHT`] (`2^23 - 1`) guards, and its load
//! score (in-flight count plus outstanding cost) is at most [`MAX_LOAD`] (`2^39 - 1`); an
//! acquire that would exceed either returns [`LoadError::Overflow`] and leaves the counters as
//! they were. The cost of a single acquire is clamped to [`MAX_COST`] (`MAX_LOAD - 1`, so one
//! request of any cost fits on an idle GPU). Two ways to add:
//! - **Below half of both limits** (fewer than 2^22 in flight and a score below 2^38, as read
//!   by the pick, or by one load for [`try_acquire`](LoadBoard::try_acquire) and round robin),
//!   a cost up to 65535 is added with one `fetch_add`, checked on the value it returns, and
//!   taken back with a `fetch_sub` if that was already at a limit — which takes, between the
//!   reading and the add, over four million acquires on that GPU, or acquires adding 2^38 of
//!   cost (one large acquire can: "reserve the whole GPU" with a cost near `MAX_COST`).
//! - **Otherwise** (near a limit, larger costs, and after such a refusal) one compare-and-swap
//!   checks and adds; it adds nothing when it refuses.
//!
//! So a refused add is only ever visible after such a stale reading: while it is, a racing
//! acquire counts it and may be refused too (rarely: the window is a few instructions long,
//! unless the thread is preempted inside it), and a reader may see up to one request (and its
//! cost) more per such refusal in progress, also above a limit. A request that never fits,
//! retried in a loop near a limit, cannot keep refusing ones that do: near a limit it takes the
//! compare-and-swap. Each field's upper half is headroom for those excesses (24 bits
//! for at most 2^23 - 1 in flight, 40 bits for a score of at most 2^39 - 1, each refused add at
//! most 2^16 on the score), so no carry ever leaves a field as long as at most 2^23 threads are
//! inside a refused `fetch_add` on the same GPU at once (Linux caps a whole system at 2^22
//! threads; elsewhere that many would need tens of GiB of stacks). The in-flight field is
//! therefore exact, which the board's `Drop` relies on. (A `fetch_add` without the headroom let
//! racing refusals wrap a full in-flight field to 0, which the board's `Drop` then trusted; the
//! compare-and-swap-only design of 2026-12-02 fixed that but measured 0.6–0.96x this design's
//! throughput with 2–8 routers, and a load of the word just before the `fetch_add` 0.72–0.79x.)
//!
//! **Randomness.** Each thread keeps a Weyl sequence (its state advances by a fixed odd
//! constant per call) seeded on first use from `std`'s `RandomState`: no shared RNG state.
//! `PowerOfTwoChoices` mixes each value into wyrand's output (one 64 x 64 -> 128-bit
//! multiply), so its two choices look independent from call to call. A `LeastLoaded` tie-break
//! needs only that every GPU gets its share, and uses the value as it is: the values of a Weyl
//! sequence are equidistributed (successive ones are correlated: on an idle board of eight, one
//! thread's successive picks step through the GPUs about five apart, like a round robin with a
//! stride), and it keeps the multiply off the pick's critical path, where it cost about 2 ns
//! of 23 per single-threaded pick + acquire + release. Threads start at independent random
//! points: two routers breaking full ties at the same moment pick the same GPU 1/n of the time
//! on average, as with independent draws, but for a given pair of threads that share is set by
//! how far apart their starting points are. The thread-local has no destructor,
//! so (with native thread-locals, as on Linux, macOS and Windows MSVC) it is read without a
//! liveness check and works from other thread-locals' destructors too. An unweighted
//! `LeastLoaded` pick breaks ties by XOR-ing the GPU indices with a GPU index drawn from that
//! value (a permutation per call: a full tie goes to that GPU, so each wins an equal share of
//! full ties, and every GPU of a partial tie can win); weighted picks break ties by a rotation
//! by it. Under loom the generator is a `loom::thread_local!` xorshift64* with a fixed seed, so
//! models stay deterministic.
//!
//! **Guards and the board's lifetime.** A [`LoadGuard`] is `'static` but holds no `Arc` of the
//! board (its reference count would be two contended RMWs per request): it points at its GPU's
//! load word and failure counter. The board's destructor frees those two slices only when every
//! GPU's in-flight count is zero (Acquire loads pairing with the guards' Release subtracts, so
//! every guard has finished with them); a board dropped while guards are still out leaks them
//! (a few cache lines) so that those guards can still release. `acquire` still takes
//! `self: &Arc<Self>` (the API contract), with `std::sync::Arc` also under loom: loom's `Arc`
//! cannot be a method receiver on stable Rust, and the reference count is not part of the
//! protocol being model-checked (the counters are).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::Arc;

use freelane_sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use freelane_sync::CachePadded;

/// Bits of the packed load word below the load score: they hold the in-flight count.
const LOAD_SHIFT: u32 = 24;
/// Mask of the in-flight field in a packed load word.
const IN_FLIGHT_MASK: u64 = (1 << LOAD_SHIFT) - 1;
/// The most guards one GPU can hold at once (`2^23 - 1`). The in-flight field has 24 bits: the
/// upper half is headroom for the moment a refused acquire's add is visible (see "Overflow" in
/// the crate docs).
pub const MAX_IN_FLIGHT: u64 = (1 << (LOAD_SHIFT - 1)) - 1;
/// The largest load score (in-flight count plus outstanding cost) one GPU can hold
/// (`2^39 - 1`). The score field has 40 bits: the upper half is headroom, as for
/// [`MAX_IN_FLIGHT`].
pub const MAX_LOAD: u64 = (1 << (64 - LOAD_SHIFT - 1)) - 1;
/// The largest cost of a single acquire (`2^39 - 2`, so that it fits on an idle GPU); larger
/// costs are clamped to it.
pub const MAX_COST: u64 = MAX_LOAD - 1;
/// Costs up to this (`2^16 - 1`) are acquired far below the limits with one `fetch_add`,
/// checked after the fact and taken back if refused; larger ones, and every acquire near a
/// limit, with a compare-and-swap that checks before it adds. The
/// bound keeps refused adds inside the headroom (see "Overflow" in the crate docs): up to 2^23
/// of them, each adding at most 2^16 to the score, add at most 2^39.
const FAA_MAX_COST: u64 = (1 << 16) - 1;
// Headroom: 2^23 refused adds (one per thread inside an acquire) fit above each limit.
const _: () = assert!(IN_FLIGHT_MASK - MAX_IN_FLIGHT >= 1 << 23);
const _: () = assert!((1 << (64 - LOAD_SHIFT)) - 1 - MAX_LOAD >= (1 << 23) * (FAA_MAX_COST + 1));

/// Most GPUs one board tracks: 2^20, far beyond any single serving process, and a bound on the
/// board's memory (about 420 bytes per GPU, so at most ~440 MB) so that a bad size is an error
/// ([`LoadError::TooManyGpus`]) instead of an allocation failure.
pub const MAX_GPUS: usize = 1 << 20;
/// Bits of a least-loaded pick key that hold the tie-break rank (the GPU index XOR a random
/// mask). `MAX_GPUS` is at most 2^22, so every unweighted board takes the branch-free scan.
const RANK_BITS: u32 = 22;
const _: () = assert!(MAX_GPUS <= 1 << RANK_BITS);
// The least-loaded key puts the rank where the in-flight field's low 22 bits were, keeping its
// top two bits (see `pick_least_loaded` and `far_from_the_limits`).
const _: () = assert!(RANK_BITS == LOAD_SHIFT - 2);
/// Mask of the rank in a pick key.
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;
/// GPUs per cache-padded block of packed load words.
const WORDS_PER_BLOCK: usize = 8;

/// The index of a GPU on a [`LoadBoard`] (and a `HealthTable`): `0..gpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GpuId(pub u32);

impl GpuId {
    /// The index as `usize`.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for GpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpu{}", self.0)
    }
}

impl From<u32> for GpuId {
    fn from(v: u32) -> Self {
        GpuId(v)
    }
}

/// How [`LoadBoard::pick`] chooses among the eligible GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Scan every eligible GPU and take the one with the lowest weighted load (ties broken at a
    /// random starting point so that routers do not herd onto GPU 0).
    #[default]
    LeastLoaded,
    /// Sample two random eligible GPUs and take the less loaded one (max load about `ln ln n`,
    /// robust to stale load information).
    PowerOfTwoChoices,
    /// The next eligible GPU after a shared rotating cursor.
    RoundRobin,
}

impl Policy {
    /// The policy's name as accepted by [`FromStr`]: `least-loaded`, `p2c`, `round-robin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::PowerOfTwoChoices => "p2c",
            Policy::RoundRobin => "round-robin",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Policy`] from a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePolicyError {
    input: String,
}

impl fmt::Display for ParsePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown gpu selection policy `{}` (expected least-loaded, p2c or round-robin)",
            self.input
        )
    }
}

impl std::error::Error for ParsePolicyError {}

impl FromStr for Policy {
    type Err = ParsePolicyError;

    /// Accepts `least-loaded`, `p2c` (also `power-of-two-choices`) and `round-robin`,
    /// case-insensitively, with `_` for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "least-loaded" | "leastloaded" => Ok(Policy::LeastLoaded),
            "p2c" | "power-of-two-choices" | "power-of-two" => Ok(Policy::PowerOfTwoChoices),
            "round-robin" | "roundrobin" | "rr" => Ok(Policy::RoundRobin),
            _ => Err(ParsePolicyError {
                input: s.to_string(),
            }),
        }
    }
}

/// Errors of the load board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The GPU index is not on the board.
    UnknownGpu {
        /// The offending id.
        gpu: GpuId,
        /// How many GPUs the board has.
        gpus: usize,
    },
    /// The GPU already holds [`MAX_IN_FLIGHT`] guards or its load score (in-flight count plus
    /// outstanding cost) would exceed [`MAX_LOAD`]. (Far from the limits, an acquire racing
    /// another's refused `fetch_add` counts that add too: see "Overflow" in the crate docs.)
    Overflow {
        /// The GPU whose counters are full.
        gpu: GpuId,
    },
    /// A capacity weight of zero was given.
    ZeroWeight {
        /// The GPU with weight zero.
        gpu: GpuId,
    },
    /// More GPUs than [`MAX_GPUS`].
    TooManyGpus {
        /// The requested number of GPUs.
        gpus: usize,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::UnknownGpu { gpu, gpus } => {
                write!(f, "unknown {gpu}: the load board has {gpus} gpus")
            }
            LoadError::Overflow { gpu } => write!(
                f,
                "load counters of {gpu} are full (at most {MAX_IN_FLIGHT} in flight, and in-flight count plus outstanding cost at most {MAX_LOAD})"
            ),
            LoadError::ZeroWeight { gpu } => {
                write!(f, "capacity weight of {gpu} is zero (weights must be at least 1)")
            }
            LoadError::TooManyGpus { gpus } => {
                write!(f, "{gpus} gpus requested, a load board tracks at most {MAX_GPUS}")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A lock-free snapshot of one GPU's statistics (see [`LoadBoard::stats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuStats {
    /// The GPU.
    pub gpu: GpuId,
    /// Requests in flight (live guards, plus any `fetch_add` being refused at that instant).
    pub in_flight: u64,
    /// Outstanding cost of the live guards (plus that of any `fetch_add` being refused).
    pub cost: u64,
    /// Guards ever handed out (exact).
    pub allocations: u64,
    /// Guards released (`allocations - in_flight`; exact when no acquire/release is concurrent).
    pub releases: u64,
    /// Failures recorded with [`LoadBoard::record_failure`] or [`LoadGuard::fail`] (exact).
    pub failures: u64,
    /// The capacity weight.
    pub weight: u32,
}

impl GpuStats {
    /// `1 - failures / allocations`, clamped to `0.0..=1.0`; `1.0` before the first allocation.
    pub fn success_rate(&self) -> f64 {
        if self.allocations == 0 {
            1.0
        } else {
            (1.0 - self.failures as f64 / self.allocations as f64).clamp(0.0, 1.0)
        }
    }
}

/// Rows of allocation counters: each thread counts into one row (see `rng::stripe`), so routers
/// on different threads do not share the line they count on. A read sums the rows.
const STRIPES: usize = if cfg!(freelane_loom) { 1 } else { 16 };
/// Rows `0..OWNED_ROWS` are owned by one live thread at a time (plain load + store); the rest
/// are shared round-robin by threads that found none free (RMWs). See `rng::stripe`.
const OWNED_ROWS: usize = if cfg!(freelane_loom) { 0 } else { 12 };
const _: () = assert!(OWNED_ROWS < STRIPES && OWNED_ROWS <= 32);

/// Per-GPU load counters shared by all routers (through `Arc`).
///
/// See the [crate documentation](crate) for the guarantees and the layout.
pub struct LoadBoard {
    /// Packed load words (`(in_flight + cost) << 24 | in_flight`), eight GPUs per padded block. `LoadGuard`s
    /// point into it; freed on drop only when no guard is live (see `Drop for LoadBoard`).
    blocks: HeapSlice<CachePadded<[AtomicU64; WORDS_PER_BLOCK]>>,
    /// Allocation counters, `STRIPES` rows of `blocks.len()` padded blocks: row `s` counts GPU
    /// `g` at `allocations[s * blocks.len() + g / 8][g % 8]`.
    allocations: Box<[CachePadded<[AtomicU64; WORDS_PER_BLOCK]>]>,
    /// Failure counters (rare: one padded counter per GPU). `LoadGuard::fail` points into it;
    /// freed together with `blocks`.
    failures: HeapSlice<CachePadded<AtomicU64>>,
    /// Capacity weights, or `None` when every GPU has weight 1 (the fast path).
    weights: Option<Box<[u32]>>,
    /// The round-robin cursor.
    cursor: CachePadded<AtomicUsize>,
    gpus: usize,
}

impl fmt::Debug for LoadBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loads: Vec<(u64, u64)> = (0..self.gpus)
            .map(|g| {
                let w = self.word(g);
                (in_flight_of(w), cost_of(w))
            })
            .collect();
        f.debug_struct("LoadBoard")
            .field("gpus", &self.gpus)
            .field("in_flight_and_cost", &loads)
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

impl LoadBoard {
    /// A board for `gpus` GPUs of equal capacity, all idle. Zero GPUs is allowed (every pick
    /// returns `None`).
    ///
    /// # Panics
    /// If `gpus` exceeds [`MAX_GPUS`]; use [`try_new`](Self::try_new) for an error instead.
    pub fn new(gpus: usize) -> Self {
        match Self::try_new(gpus) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// A board for `gpus` GPUs of equal capacity, or [`LoadError::TooManyGpus`].
    pub fn try_new(gpus: usize) -> Result<Self, LoadError> {
        if gpus > MAX_GPUS {
            return Err(LoadError::TooManyGpus { gpus });
        }
        let nblocks = gpus.div_ceil(WORDS_PER_BLOCK);
        let blocks = HeapSlice::new(
            (0..nblocks)
                .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        );
        let allocations = (0..nblocks * STRIPES)
            .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        let failures = HeapSlice::new(
            (0..gpus)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        );
        Ok(Self {
            blocks,
            allocations,
            failures,
            weights: None,
            cursor: CachePadded::new(AtomicUsize::new(0)),
            gpus,
        })
    }

    /// A board whose GPU `i` has capacity weight `weights[i]` (e.g. relative memory or
    /// throughput): weighted picks compare `load / weight`, so a GPU of weight 2 takes about
    /// twice the load of one of weight 1. Every weight must be at least 1.
    pub fn with_weights(weights: &[u32]) -> Result<Self, LoadError> {
        let mut board = Self::try_new(weights.len())?;
        if let Some(i) = weights.iter().position(|&w| w == 0) {
            return Err(LoadError::ZeroWeight {
                gpu: GpuId(i as u32),
            });
        }
        if weights.iter().any(|&w| w != 1) {
            board.weights = Some(weights.into());
        }
        Ok(board)
    }

    /// The number of GPUs.
    #[inline]
    pub fn gpus(&self) -> usize {
        self.gpus
    }

    /// The capacity weight of `gpu` (1 unless built [`with_weights`](Self::with_weights));
    /// `None` for an unknown GPU.
    pub fn weight(&self, gpu: GpuId) -> Option<u32> {
        (gpu.index() < self.gpus).then(|| self.weight_of(gpu.index()))
    }

    #[inline]
    fn weight_of(&self, g: usize) -> u32 {
        match &self.weights {
            Some(w) => w[g],
            None => 1,
        }
    }

    /// The packed word of GPU `g` (must be in range).
    #[inline]
    fn slot(&self, g: usize) -> &AtomicU64 {
        &self.blocks[g / WORDS_PER_BLOCK][g % WORDS_PER_BLOCK]
    }

    #[inline]
    fn word(&self, g: usize) -> u64 {
        // Relaxed: a statistical snapshot; the counter publishes no other data.
        self.slot(g).load(Ordering::Relaxed)
    }

    /// Requests in flight on `gpu` (live guards, plus any `fetch_add` being refused at that
    /// instant: see "Overflow" in the crate docs); 0 for an unknown GPU.
    #[inline]
    pub fn in_flight(&self, gpu: GpuId) -> u64 {
        if gpu.index() < self.gpus {
            in_flight_of(self.word(gpu.index()))
        } else {
            0
        }
    }

    /// Outstanding cost on `gpu` (sum of the live guards' costs, plus that of any `fetch_add`
    /// being refused at that instant); 0 for an unknown GPU.
    #[inline]
    pub fn cost(&self, gpu: GpuId) -> u64 {
        if gpu.index() < self.gpus {
            cost_of(self.word(gpu.index()))
        } else {
            0
        }
    }

    /// The load score picks compare: `in_flight + cost` (each request counts one unit on top of
    /// its cost, so cost-0 requests still balance). 0 for an unknown GPU.
    pub fn load(&self, gpu: GpuId) -> u64 {
        if gpu.index() < self.gpus {
            score(self.word(gpu.index()))
        } else {
            0
        }
    }

    /// A lock-free snapshot of `gpu`'s statistics; `None` for an unknown GPU.
    pub fn stats(&self, gpu: GpuId) -> Option<GpuStats> {
        let g = gpu.index();
        if g >= self.gpus {
            return None;
        }
        let w = self.word(g);
        let nblocks = self.blocks.len();
        let allocations = (0..STRIPES)
            .map(|s| {
                // Relaxed: monotonic statistics counters; no other data hangs off them.
                self.allocations[s * nblocks + g / WORDS_PER_BLOCK][g % WORDS_PER_BLOCK]
                    .load(Ordering::Relaxed)
            })
            .fold(0u64, u64::wrapping_add);
        // Relaxed: as above.
        let failures = self.failures[g].load(Ordering::Relaxed);
        let in_flight = in_flight_of(w);
        Some(GpuStats {
            gpu,
            in_flight,
            cost: cost_of(w),
            allocations,
            releases: allocations.saturating_sub(in_flight),
            failures,
            weight: self.weight_of(g),
        })
    }

    /// `gpu`'s success rate (see [`GpuStats::success_rate`]); `None` for an unknown GPU.
    pub fn success_rate(&self, gpu: GpuId) -> Option<f64> {
        self.stats(gpu).map(|s| s.success_rate())
    }

    /// Counts one failed request on `gpu` (for [`GpuStats::failures`] and the success rate).
    pub fn record_failure(&self, gpu: GpuId) -> Result<(), LoadError> {
        let f = self
            .failures
            .get(gpu.index())
            .ok_or(LoadError::UnknownGpu {
                gpu,
                gpus: self.gpus,
            })?;
        // Relaxed: a statistics counter; exact because RMWs on one location never lose updates.
        f.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds one request of `cost` to `gpu` and returns the guard that removes it again.
    ///
    /// # Panics
    /// If `gpu` is not on the board or its counters are full (see
    /// [`try_acquire`](Self::try_acquire), which returns these as errors instead).
    #[inline]
    pub fn acquire(self: &Arc<Self>, gpu: GpuId, cost: u64) -> LoadGuard {
        match self.try_acquire(gpu, cost) {
            Ok(g) => g,
            Err(e) => panic!("LoadBoard::acquire: {e}"),
        }
    }

    /// Adds one request of `cost` (clamped to [`MAX_COST`]) to `gpu` and returns the guard that
    /// removes exactly that again; [`LoadError::UnknownGpu`] or [`LoadError::Overflow`] leave
    /// the board as it was (an overflow's add is visible for an instant before it is taken
    /// back: see the crate docs on overflow).
    #[inline]
    pub fn try_acquire(self: &Arc<Self>, gpu: GpuId, cost: u64) -> Result<LoadGuard, LoadError> {
        let delta = self.add(gpu, cost)?;
        Ok(self.guard(gpu, self.slot(gpu.index()), delta))
    }

    /// The guard for `delta` just added to `word`, the load word of `gpu` (on the board).
    #[inline]
    fn guard(self: &Arc<Self>, gpu: GpuId, word: &AtomicU64, delta: u64) -> LoadGuard {
        LoadGuard {
            word: NonNull::from(word),
            failures: NonNull::from(&*self.failures[gpu.index()]),
            gpu,
            delta,
        }
    }

    /// Picks a GPU for which `eligible` returns `true`, by `policy`; `None` when none is
    /// eligible. Reads the load words once each (`Relaxed`); reserves nothing (see
    /// [`pick_and_acquire`](Self::pick_and_acquire)).
    #[inline]
    pub fn pick(&self, policy: Policy, eligible: impl Fn(GpuId) -> bool) -> Option<GpuId> {
        match policy {
            Policy::RoundRobin => self.pick_round_robin(&eligible),
            _ => self
                .pick_with(policy, &eligible, rng::weyl())
                .map(|(g, _)| g),
        }
    }

    /// `pick` with `x`, this thread's next Weyl value (`rng::weyl`): the tie-break takes it
    /// as it is, the two choices mixed. Also returns the bitwise OR of the load words the pick
    /// read, the chosen GPU's among them (`None` if it read none), for
    /// [`add_with`](Self::add_with)'s choice of path.
    #[inline]
    fn pick_with(
        &self,
        policy: Policy,
        eligible: &impl Fn(GpuId) -> bool,
        x: u64,
    ) -> Option<(GpuId, Option<u64>)> {
        match policy {
            Policy::LeastLoaded => self.pick_least_loaded(eligible, x),
            Policy::PowerOfTwoChoices => self.pick_two_choices(eligible, rng::mix(x)),
            Policy::RoundRobin => self.pick_round_robin(eligible).map(|g| (g, None)),
        }
    }

    /// Picks and adds `cost` in one go, reading this thread's local state (Weyl value and
    /// statistics row) once for both.
    #[inline]
    fn pick_and_add(
        &self,
        policy: Policy,
        cost: u64,
        eligible: &impl Fn(GpuId) -> bool,
    ) -> Option<(GpuId, &AtomicU64, u64)> {
        let (x, stripe) = rng::weyl_and_stripe();
        match (policy, &self.weights, &*self.blocks) {
            (Policy::LeastLoaded, None, [block]) => {
                self.least_loaded_in_one_block(block, cost, eligible, x, stripe)
            }
            (Policy::PowerOfTwoChoices, ..) => {
                let (gpu, seen) = self.pick_two_choices(eligible, rng::mix(x))?;
                let delta = self.add_with(gpu, cost, stripe, seen).ok()?;
                Some((gpu, self.slot(gpu.index()), delta))
            }
            _ => self.pick_and_add_general(policy, cost, eligible, x, stripe),
        }
    }

    /// `pick_and_add` for weighted or larger boards picking the least loaded, and for round
    /// robin. Out of line, so that its registers do not crowd the common paths' (inline, it cost
    /// the one-block path about 2 ns of 21 single-threaded; out of line, `PowerOfTwoChoices`
    /// lost 2–4 ns until it was kept inline).
    #[inline(never)]
    fn pick_and_add_general(
        &self,
        policy: Policy,
        cost: u64,
        eligible: &impl Fn(GpuId) -> bool,
        x: u64,
        stripe: (usize, bool),
    ) -> Option<(GpuId, &AtomicU64, u64)> {
        let (gpu, seen) = self.pick_with(policy, eligible, x)?;
        let delta = self.add_with(gpu, cost, stripe, seen).ok()?;
        Some((gpu, self.slot(gpu.index()), delta))
    }

    /// `pick_and_add` for the common board: unweighted, one to eight GPUs (one block), least
    /// loaded. The same scan and the same acquire as the general path (`pick_least_loaded`,
    /// `add_with`), with the layout folded in: no block loop, no division, no bounds check
    /// that the pick already guarantees. (The general path's generality measured about 7 ns of
    /// 25 single-threaded, where a hand-written version of the same features ran as fast as a
    /// bare scan.)
    #[inline]
    fn least_loaded_in_one_block<'a>(
        &self,
        block: &'a [AtomicU64; WORDS_PER_BLOCK],
        cost: u64,
        eligible: &impl Fn(GpuId) -> bool,
        x: u64,
        stripe: (usize, bool),
    ) -> Option<(GpuId, &'a AtomicU64, u64)> {
        // As in `pick_least_loaded`, with one block: `mask` below `n` (0 when `n` is 1).
        let mask = rng::below(x, self.gpus);
        let best = least_key(block, 0, self.gpus, eligible, RANK_MASK ^ mask as u64);
        if best == u64::MAX {
            return None;
        }
        // Below `n`, at most 8: the modulo (an AND) only spares the bounds checks.
        let g = ((best & RANK_MASK) as usize ^ mask) % WORDS_PER_BLOCK;
        debug_assert!(g < self.gpus, "the winner {g} is not on the board");
        let gpu = GpuId(g as u32);
        // One block: row `row` of the statistics is block `row`.
        let alloc = &self.allocations[stripe.0][g];
        let word = &block[g];
        let delta = add_to(word, alloc, stripe.1, gpu, cost, best & !RANK_MASK).ok()?;
        Some((gpu, word, delta))
    }

    /// Picks like [`pick`](Self::pick) and immediately acquires `cost` on the chosen GPU, so
    /// that routers deciding at the same time see each other's reservations. `None` when no GPU
    /// is eligible (or, in the absurd case that the chosen GPU's counters are full, when the
    /// reservation fails with [`LoadError::Overflow`]; no other GPU is tried).
    #[inline]
    pub fn pick_and_acquire(
        self: &Arc<Self>,
        policy: Policy,
        cost: u64,
        eligible: impl Fn(GpuId) -> bool,
    ) -> Option<LoadGuard> {
        let (gpu, word, delta) = self.pick_and_add(policy, cost, &eligible)?;
        Some(self.guard(gpu, word, delta))
    }

    /// Like [`try_acquire`](Self::try_acquire) but returns a guard that borrows the board
    /// instead of owning an `Arc` clone: no reference-count traffic on the shared `Arc` (which
    /// every router would otherwise increment and decrement on one cache line). Use it when
    /// the load is held within one scope (a synchronous request handler, a benchmark).
    #[inline]
    pub fn try_acquire_local(
        &self,
        gpu: GpuId,
        cost: u64,
    ) -> Result<LocalLoadGuard<'_>, LoadError> {
        let delta = self.add(gpu, cost)?;
        Ok(LocalLoadGuard {
            board: self,
            word: self.slot(gpu.index()),
            gpu,
            delta,
        })
    }

    /// [`pick_and_acquire`](Self::pick_and_acquire) with a borrowed guard (see
    /// [`try_acquire_local`](Self::try_acquire_local)).
    #[inline]
    pub fn pick_and_acquire_local(
        &self,
        policy: Policy,
        cost: u64,
        eligible: impl Fn(GpuId) -> bool,
    ) -> Option<LocalLoadGuard<'_>> {
        let (gpu, word, delta) = self.pick_and_add(policy, cost, &eligible)?;
        Some(LocalLoadGuard {
            board: self,
            word,
            gpu,
            delta,
        })
    }

    /// Adds one request of `cost` to `gpu`; returns the packed delta to subtract on release.
    #[inline]
    fn add(&self, gpu: GpuId, cost: u64) -> Result<u64, LoadError> {
        self.add_with(gpu, cost, rng::stripe(), None)
    }

    /// `add`, counting the allocation in statistics row `stripe` (from `rng::stripe`). `seen`:
    /// the OR of load words a pick just read, the chosen GPU's among them; `None` reads the
    /// GPU's word here instead.
    #[inline]
    fn add_with(
        &self,
        gpu: GpuId,
        cost: u64,
        stripe: (usize, bool),
        seen: Option<u64>,
    ) -> Result<u64, LoadError> {
        let g = gpu.index();
        if g >= self.gpus {
            return Err(LoadError::UnknownGpu {
                gpu,
                gpus: self.gpus,
            });
        }
        // Count the allocation on this thread's own row (see `add_to`).
        let (row, own) = stripe;
        let alloc =
            &self.allocations[row * self.blocks.len() + g / WORDS_PER_BLOCK][g % WORDS_PER_BLOCK];
        let slot = self.slot(g);
        // Relaxed: a guess, only to choose the path; whichever is taken checks what it adds to.
        // (A pick passes the words it read instead: a load of the word just before the
        // `fetch_add` measured 0.72–0.79x the throughput with 2–8 routers.)
        let seen = seen.unwrap_or_else(|| slot.load(Ordering::Relaxed));
        add_to(slot, alloc, own, gpu, cost, seen)
    }

    /// Removes a delta added by `add` (the tests' stand-in for a guard).
    #[cfg(test)]
    fn remove(&self, gpu: GpuId, delta: u64) {
        // Removes exactly the delta the matching `add` added (Release: see `release`).
        release(self.slot(gpu.index()), delta);
    }

    /// `true` when `a` is strictly less loaded than `b`, after weighting.
    #[inline]
    fn less(&self, a: (usize, u64), b: (usize, u64)) -> bool {
        match &self.weights {
            None => a.1 < b.1,
            Some(w) => {
                // a.1 / w[a] < b.1 / w[b]  <=>  a.1 * w[b] < b.1 * w[a] (no overflow in u128).
                u128::from(a.1) * u128::from(w[b.0]) < u128::from(b.1) * u128::from(w[a.0])
            }
        }
    }

    #[inline]
    fn pick_least_loaded(
        &self,
        eligible: &impl Fn(GpuId) -> bool,
        x: u64,
    ) -> Option<(GpuId, Option<u64>)> {
        let n = self.gpus;
        if n == 0 {
            return None;
        }
        if self.weights.is_none() && n <= 1 << RANK_BITS {
            // Unweighted fast path: one forward pass over the packed words, no division, no
            // data-dependent branches. Each eligible GPU `g` gets the key
            // `word with its low RANK_BITS replaced by (g ^ mask)` and an ineligible one
            // `u64::MAX`; the score is the word's top 40 bits, so the least key is the least
            // load. `mask` is a GPU index per call, from this thread's Weyl value `x`
            // (equidistributed over `0..n`): XOR with it permutes the indices (below the next
            // power of two of `n`, hence below 2^RANK_BITS), and XOR again recovers the winner.
            // When every eligible GPU is tied (e.g. an idle board) the winner is `mask`
            // itself, so each GPU wins an equal share of full ties; among a subset of tied GPUs
            // every one can win. (A rotation would do the same but
            // costs a select per GPU: measured 24 vs 13.5 ns per pick + acquire + release.)
            // The key takes three instructions after the load, no unpacking (that unpacking
            // measured about a tenth of a pick + acquire + release). A real key never reaches `u64::MAX`: its rank is
            // below the next power of two of `n`, at most `MAX_GPUS` = 2^20 < 2^RANK_BITS.
            // The key keeps the word's in-flight bits 22 and 23 above the rank, so that the
            // winner's key tells `add_with` whether its word is far below both limits (2^22 in
            // flight, 2^38 of score) without a second look at the word. (It also makes a GPU
            // with 2^22 or more requests in flight lose ties, which matters to nobody. OR-ing
            // all the words instead kept them alive beside the keys: spilled registers, +1 to
            // 2.6 ns per operation.)
            let mask = rng::below(x, n); // 0 when `n` is 1
            let flip = RANK_MASK ^ mask as u64;
            let best = self
                .blocks
                .iter()
                .enumerate()
                .fold(u64::MAX, |best, (b, block)| {
                    let base = b * WORDS_PER_BLOCK;
                    best.min(least_key(block, base, n - base, eligible, flip))
                });
            if best == u64::MAX {
                return None;
            }
            let gpu = GpuId(((best & RANK_MASK) as usize ^ mask) as u32);
            // The winner's word above the rank: where `far_from_the_limits` looks.
            return Some((gpu, Some(best & !RANK_MASK)));
        }
        // A rotation by the Weyl value breaks ties differently per call: among equal loads the
        // first eligible GPU at or after `start` wins.
        let start = if n == 1 { 0 } else { rng::below(x, n) };
        let mut best: Option<(usize, u64)> = None;
        let mut seen = 0;
        for k in 0..n {
            let g = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            if !eligible(GpuId(g as u32)) {
                continue;
            }
            let w = self.word(g);
            seen |= w;
            let cand = (g, score(w));
            match best {
                Some(b) if !self.less(cand, b) => {}
                _ => best = Some(cand),
            }
        }
        best.map(|(g, _)| (GpuId(g as u32), Some(seen)))
    }

    /// The first eligible GPU at or after `start` (wrapping), skipping `skip`.
    #[inline]
    fn first_eligible_from(
        &self,
        start: usize,
        skip: Option<usize>,
        eligible: &impl Fn(GpuId) -> bool,
    ) -> Option<usize> {
        let n = self.gpus;
        (0..n)
            .map(|k| {
                if start + k >= n {
                    start + k - n
                } else {
                    start + k
                }
            })
            .find(|&g| Some(g) != skip && eligible(GpuId(g as u32)))
    }

    #[inline]
    fn pick_two_choices(
        &self,
        eligible: &impl Fn(GpuId) -> bool,
        r: u64,
    ) -> Option<(GpuId, Option<u64>)> {
        let n = self.gpus;
        if n == 0 {
            return None;
        }
        let (i, j) = (reduce(r as u32, n), reduce((r >> 32) as u32, n));
        let a = self.first_eligible_from(i, None, eligible)?;
        let Some(b) = self.first_eligible_from(j, Some(a), eligible) else {
            return Some((GpuId(a as u32), None));
        };
        let (wa, wb) = (self.word(a), self.word(b));
        let pick = if self.less((b, score(wb)), (a, score(wa))) {
            b
        } else {
            a
        };
        Some((GpuId(pick as u32), Some(wa | wb)))
    }

    #[inline]
    fn pick_round_robin(&self, eligible: &impl Fn(GpuId) -> bool) -> Option<GpuId> {
        let n = self.gpus;
        if n == 0 {
            return None;
        }
        // Relaxed: the cursor only spreads picks; it publishes no data.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        self.first_eligible_from(start, None, eligible)
            .map(|g| GpuId(g as u32))
    }
}

/// Adds one request of `cost` to the load word `slot` of `gpu` and counts it in `alloc` (this
/// thread's row, `own` as from `rng::stripe`); returns the packed delta to subtract on release.
/// `seen`: the word (or an OR of words including it) as a pick just read it, which chooses the
/// path.
#[inline(always)]
fn add_to(
    slot: &AtomicU64,
    alloc: &AtomicU64,
    own: bool,
    gpu: GpuId,
    cost: u64,
    seen: u64,
) -> Result<u64, LoadError> {
    let cost = cost.min(MAX_COST);
    // One in flight, and its load unit plus its cost on the score.
    let delta = ((1 + cost) << LOAD_SHIFT) | 1;
    // The allocation is counted after the add succeeds, so the statistic never counts a refused
    // acquire, and the store (on this thread's own row) does not delay the locked add: on x86
    // a locked instruction waits for every older store to drain, and this one's address is
    // known only once the pick is decided (counted first, it measured about 1 ns of 24
    // single-threaded; docs/BENCHMARKS.md, "load").
    if cost <= FAA_MAX_COST && far_from_the_limits(seen) {
        // The common case, far below the limits: add first, check after. One `lock xadd`
        // that cannot fail; a compare-and-swap (the word read first, then the CAS) measured
        // 0.6–0.96x this throughput with 2–8 routers (docs/BENCHMARKS.md, "load").
        // The count is read before the add and stored after it: a load issued after a locked
        // instruction waits for it to finish, and this one's latency then delayed the release
        // (about 1 ns of 22 single-threaded; docs/BENCHMARKS.md, "load").
        let counted = peek(alloc, own);
        // Relaxed: the packed counter publishes no data; exactness only needs the RMW's
        // atomicity (one modification order per word), which every ordering gives.
        let old = slot.fetch_add(delta, Ordering::Relaxed);
        if fits(old, cost) {
            count_from(alloc, own, counted);
            return Ok(delta);
        }
        // Refused (the reading was stale: millions of acquires, or a large cost, landed
        // since): take the add back. Until then the word reads one more request (and this
        // cost) than is live; the headroom above the limits holds that excess for up to 2^23
        // racing refusals without a carry out of either field, and `fits` counts it, so it can
        // only cause refusals, never admit past a limit.
        // Relaxed: as above; this thread still borrows the board, so no free can race it.
        slot.fetch_sub(delta, Ordering::Relaxed);
        #[cfg(test)]
        tests::after_refused_fetch_add(slot);
        // What refused it may have been another refused add rather than live guards: check
        // once more, exactly, below.
    }
    // Near a limit, large costs, and a refused `fetch_add`: check the limits and add in one
    // compare-and-swap, which adds nothing when it refuses (so near a limit no refused add is
    // ever visible, and a request that fits is never refused because of one that does not).
    // Relaxed: a first guess for the CAS, which validates it.
    let mut cur = slot.load(Ordering::Relaxed);
    while fits(cur, cost) {
        // Relaxed (both): as for the `fetch_add` above.
        match slot.compare_exchange_weak(cur, cur + delta, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                count(alloc, own);
                return Ok(delta);
            }
            Err(now) => cur = now,
        }
    }
    Err(LoadError::Overflow { gpu })
}

/// The least unweighted least-loaded key (see `LoadBoard::pick_least_loaded`) among the first
/// `len` words of `block` (all eight when `len >= 8`), which hold GPUs `base..`; `u64::MAX`
/// when none is eligible. `flip` is `RANK_MASK ^ mask`.
#[inline(always)]
fn least_key(
    block: &[AtomicU64; WORDS_PER_BLOCK],
    base: usize,
    len: usize,
    eligible: &impl Fn(GpuId) -> bool,
    flip: u64,
) -> u64 {
    // `(w | RANK_MASK) ^ g ^ flip` is `(w & !RANK_MASK) | (g ^ mask)` (both `g` and `mask` are
    // below 2^RANK_BITS) in one OR and two XORs, no copies: the key in three instructions
    // after the load.
    let key = |g: usize, word: &AtomicU64| {
        // Relaxed: a statistical snapshot; the counter publishes no other data.
        let w = word.load(Ordering::Relaxed);
        if eligible(GpuId(g as u32)) {
            (w | RANK_MASK) ^ g as u64 ^ flip
        } else {
            u64::MAX
        }
    };
    if len >= WORDS_PER_BLOCK {
        // A full block: fixed trip count (unrolled), reduced pairwise so the minimum is not one
        // long dependency chain.
        let k: [u64; WORDS_PER_BLOCK] = std::array::from_fn(|i| key(base + i, &block[i]));
        let m = [
            k[0].min(k[1]),
            k[2].min(k[3]),
            k[4].min(k[5]),
            k[6].min(k[7]),
        ];
        m[0].min(m[1]).min(m[2].min(m[3]))
    } else {
        block[..len]
            .iter()
            .enumerate()
            .fold(u64::MAX, |best, (i, word)| best.min(key(base + i, word)))
    }
}

/// Counts one allocation on a counter of this thread's row. `own`: the row is this thread's
/// alone (see `rng::stripe`), so a load and a store are exact and skip the locked instruction,
/// which measured about a fifth of a single-threaded pick + acquire + release; a shared row
/// takes an RMW.
#[inline]
fn count(counter: &AtomicU64, own: bool) {
    count_from(counter, own, peek(counter, own));
}

/// The value of `counter` on this thread's own row (`own`), read ahead for
/// [`count_from`]; 0 (unused) on a shared row.
#[inline]
fn peek(counter: &AtomicU64, own: bool) -> u64 {
    if own {
        // Relaxed: no other thread writes this row (readers only sum it), so this sees our
        // own last store; the counter publishes no other data.
        counter.load(Ordering::Relaxed)
    } else {
        0
    }
}

/// [`count`] with the counter's value `peeked` earlier on this thread (by [`peek`]). Exact on
/// an owned row because this thread is its only writer, so nothing changed it in between.
#[inline]
fn count_from(counter: &AtomicU64, own: bool, peeked: u64) {
    if own {
        // Relaxed: as in `peek`; the store cannot lose another writer's update (there is
        // none), and the counter publishes no other data.
        counter.store(peeked.wrapping_add(1), Ordering::Relaxed);
    } else {
        // Relaxed: exact by RMW atomicity among the threads sharing the row; no other data.
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `true` when one more request of `cost` (at most [`MAX_COST`]) fits on a GPU whose word
/// reads `word`: its in-flight count stays within [`MAX_IN_FLIGHT`] and its score within
/// [`MAX_LOAD`]. A word showing refused adds not yet taken back reads higher than its live
/// guards, which can only make this stricter.
#[inline]
fn fits(word: u64, cost: u64) -> bool {
    in_flight_of(word) < MAX_IN_FLIGHT && score(word) < MAX_LOAD - cost
}

/// `true` when `words` (one load word, or the OR of several) shows fewer than 2^22 requests in
/// flight and a load score below 2^38, half of each limit: then a `fetch_add` of a small cost
/// (at most [`FAA_MAX_COST`]) made soon after reading it is refused only if over 4 million
/// requests (or 2^38 of load) were acquired on that GPU in between. Near a limit every acquire
/// takes the compare-and-swap, which never shows a refused add, so requests that fit are not
/// refused because of ones that do not. (On an OR of words, one GPU near a limit sends the
/// others to the compare-and-swap too; a single mask test, no per-word comparison.)
#[inline]
fn far_from_the_limits(words: u64) -> bool {
    const NEAR: u64 = (0b11 << (LOAD_SHIFT - 2)) | (0b11 << 62);
    words & NEAR == 0
}
// `NEAR` above: in-flight bits 22-23 (2^22 and up) and score bits 38-39 (word bits 62-63).
const _: () = assert!(MAX_IN_FLIGHT >> (LOAD_SHIFT - 2) == 1 && MAX_LOAD >> 38 == 1);

/// The load score of a packed word: in-flight requests plus outstanding cost.
#[inline]
fn score(word: u64) -> u64 {
    word >> LOAD_SHIFT
}

/// The in-flight count of a packed word.
#[inline]
fn in_flight_of(word: u64) -> u64 {
    word & IN_FLIGHT_MASK
}

/// The outstanding cost of a packed word (its score less one unit per request in flight).
#[inline]
fn cost_of(word: u64) -> u64 {
    score(word) - in_flight_of(word)
}

/// Maps a uniform `u32` onto `0..n` (Lemire's multiply-shift; `n <= 2^32`).
#[inline]
fn reduce(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

/// A reservation of load on one GPU; dropping it releases exactly what was added.
///
/// `'static` and `Send`: hold it in the request (across `.await`s, threads, queues) for as long
/// as the GPU works on it.
#[must_use = "dropping a LoadGuard immediately releases the load it reserved"]
pub struct LoadGuard {
    /// The GPU's packed load word, inside the board's `blocks`.
    word: NonNull<AtomicU64>,
    /// The GPU's failure counter, inside the board's `failures`.
    failures: NonNull<AtomicU64>,
    gpu: GpuId,
    delta: u64,
}

// SAFETY: the pointers refer to atomics, which any thread may use through a shared reference,
// and they stay valid while the guard lives (a board frees them only when no guard is live; see
// `Drop for LoadBoard`).
unsafe impl Send for LoadGuard {}
// SAFETY: as above; `&LoadGuard` only reads plain fields.
unsafe impl Sync for LoadGuard {}

impl LoadGuard {
    /// The GPU this guard holds load on.
    #[inline]
    pub fn gpu(&self) -> GpuId {
        self.gpu
    }

    /// The cost this guard added (after clamping to [`MAX_COST`]).
    #[inline]
    pub fn cost(&self) -> u64 {
        (self.delta >> LOAD_SHIFT) - 1
    }

    /// Records a failure of this request on its GPU (see [`LoadBoard::record_failure`]) and
    /// releases the load.
    pub fn fail(self) {
        // SAFETY: the guard is live (it releases its load only in `drop`, after this), so its
        // board has not freed the counters (see `Drop for LoadBoard`).
        let failures = unsafe { self.failures.as_ref() };
        // Relaxed: a statistics counter, exact by RMW atomicity; the Release subtract in `drop`
        // below orders it before the board may free the counter.
        failures.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for LoadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGuard")
            .field("gpu", &self.gpu)
            .field("cost", &self.cost())
            .finish()
    }
}

impl Drop for LoadGuard {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard still counts as in flight on its GPU until the subtract below
        // completes, so the board has not freed the word (see `Drop for LoadBoard`); after it
        // the guard touches nothing of the board.
        release(unsafe { self.word.as_ref() }, self.delta);
    }
}

/// Removes a delta added by `LoadBoard::add` from `word`.
#[inline]
fn release(word: &AtomicU64, delta: u64) {
    // Release: pairs with the Acquire loads in `Drop for LoadBoard`, so this guard's last
    // access to the board's memory happens-before the board frees it. The exact sum itself
    // needs only RMW atomicity. (A plain `lock xadd` on x86 either way.)
    word.fetch_sub(delta, Ordering::Release);
}

/// A boxed slice whose memory a `LoadBoard` frees explicitly (or deliberately leaks), because
/// `LoadGuard`s hold raw pointers into it instead of an `Arc` of the board.
struct HeapSlice<T> {
    /// From `Box::into_raw`; used for every access and for the final `Box::from_raw`.
    raw: NonNull<[T]>,
}

// SAFETY: a `HeapSlice<T>` owns its elements like a `Box<[T]>` does.
unsafe impl<T: Send> Send for HeapSlice<T> {}
// SAFETY: as above; shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for HeapSlice<T> {}

impl<T> HeapSlice<T> {
    fn new(b: Box<[T]>) -> Self {
        Self {
            raw: NonNull::from(Box::leak(b)),
        }
    }

    /// Frees the slice.
    ///
    /// # Safety
    /// Called at most once, and no reference or pointer into the slice is used afterwards.
    unsafe fn free(&mut self) {
        // SAFETY: `raw` came from `Box::into_raw` (via `leak`) and, by the caller's contract, is
        // freed once and never used again.
        drop(unsafe { Box::from_raw(self.raw.as_ptr()) });
    }
}

impl<T> std::ops::Deref for HeapSlice<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: the slice is only freed by `LoadBoard::drop`, which never dereferences it
        // afterwards (and the board, with this field, is gone when its drop returns), so
        // whenever this runs the memory is live.
        unsafe { self.raw.as_ref() }
    }
}

/// Under miri, slices leaked on purpose (a board dropped with guards out) are kept reachable
/// from a static, so that miri's leak check (which the CI runs strictly) reports only accidental
/// leaks, while the guards' later accesses to that memory are still checked.
#[cfg(miri)]
mod miri_graveyard {
    use std::ptr::NonNull;
    use std::sync::Mutex;

    struct Kept(
        #[allow(dead_code)] NonNull<u8>,
        #[allow(dead_code)] NonNull<u8>,
    );
    // SAFETY: never dereferenced through this list; it only keeps the pointers reachable.
    unsafe impl Send for Kept {}

    static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

    pub(super) fn keep(a: NonNull<u8>, b: NonNull<u8>) {
        KEPT.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Kept(a, b));
    }
}

impl Drop for LoadBoard {
    fn drop(&mut self) {
        // A `LoadGuard` does not keep its board alive: it points into `blocks` and `failures`.
        // Free them only if no guard is live, i.e. every GPU's in-flight count is zero; a board
        // dropped while guards are still out (say, requests outliving the router) leaks these
        // two small slices instead, so those guards can still release. Every guard adds one
        // in-flight unit before the caller's `Arc` of the board is dropped (so before this
        // destructor, through `Arc`'s drop fences) and subtracts it with a Release RMW in its
        // own drop; reading zero therefore means every guard has finished with the memory.
        let live = (0..self.gpus).any(|g| {
            // Acquire: pairs with the Release subtract in `release`, so each guard's last access
            // happens-before the free below.
            in_flight_of(self.slot(g).load(Ordering::Acquire)) != 0
        });
        if !live {
            // SAFETY: no guard is live (see above) and `&mut self` excludes every borrow of the
            // board, so nothing uses the slices afterwards; each is freed exactly once here.
            unsafe {
                self.blocks.free();
                self.failures.free();
            }
        } else {
            #[cfg(miri)]
            miri_graveyard::keep(self.blocks.raw.cast(), self.failures.raw.cast());
        }
    }
}

/// A reservation like [`LoadGuard`] that borrows its board (no `Arc` reference counting);
/// dropping it releases exactly what was added.
#[must_use = "dropping a LocalLoadGuard immediately releases the load it reserved"]
pub struct LocalLoadGuard<'a> {
    board: &'a LoadBoard,
    /// `gpu`'s load word on `board`, kept so that the release need not look it up again.
    word: &'a AtomicU64,
    gpu: GpuId,
    delta: u64,
}

impl LocalLoadGuard<'_> {
    /// The GPU this guard holds load on.
    #[inline]
    pub fn gpu(&self) -> GpuId {
        self.gpu
    }

    /// The cost this guard added (after clamping to [`MAX_COST`]).
    #[inline]
    pub fn cost(&self) -> u64 {
        (self.delta >> LOAD_SHIFT) - 1
    }

    /// Records a failure of this request on its GPU and releases the load.
    pub fn fail(self) {
        // Cannot fail: the guard's GPU is on its board.
        let _ = self.board.record_failure(self.gpu);
    }
}

impl fmt::Debug for LocalLoadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLoadGuard")
            .field("gpu", &self.gpu)
            .field("cost", &self.cost())
            .finish()
    }
}

impl Drop for LocalLoadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Removes exactly the delta the matching add added (Release: see `release`).
        release(self.word, self.delta);
    }
}

/// The thread-local random source (no shared RNG state) and the thread's statistics stripe,
/// kept in one thread-local so that a pick-and-acquire reads it once. The source is a Weyl
/// sequence (the state advances by a fixed odd constant per call) seeded per thread: its raw
/// values are equidistributed, which is all a least-loaded tie-break needs, and [`mix`] turns
/// one into wyrand's well-mixed output for the two random choices. (Under loom: a deterministic
/// xorshift64* per thread and one shared row.)
mod rng {
    use std::cell::Cell;

    /// This thread's generator state and statistics row.
    #[cfg(not(freelane_loom))]
    struct Local {
        /// 0 until seeded, then the Weyl sequence's state.
        state: Cell<u64>,
        /// `usize::MAX` until first use, then this thread's stripe (an owned row is handed
        /// back when the thread exits, by `RowOwner`).
        row: Cell<usize>,
    }

    // No destructor: with native thread-locals (Linux, macOS, Windows MSVC, ...) one without is
    // a plain thread-local static, read with no liveness check and usable even from other
    // thread-locals' destructors (the row's hand-back lives in `ROW_OWNER`, touched only when
    // claiming). Where thread-locals are OS keys, `LOCAL` may be recreated after thread exit
    // began; `claim_row` copes.
    #[cfg(not(freelane_loom))]
    std::thread_local! {
        static LOCAL: Local = const {
            Local {
                state: Cell::new(0),
                row: Cell::new(usize::MAX),
            }
        };
    }

    #[cfg(not(freelane_loom))]
    const _: () = assert!(!std::mem::needs_drop::<Local>());

    /// The Weyl sequence's increment (wyrand's; odd, so the sequence has period 2^64).
    #[cfg(not(freelane_loom))]
    const WEYL: u64 = 0xA076_1D64_78BD_642F;

    #[cfg(not(freelane_loom))]
    impl Local {
        /// The next value of this thread's Weyl sequence (seeded on first use).
        #[inline]
        fn weyl(&self) -> u64 {
            let mut x = self.state.get();
            if x == 0 {
                x = seed();
            }
            self.step(x)
        }

        /// Returns the (seeded) state `x` and advances the sequence past it. The value is the
        /// state as loaded, not a function of it, so a pick that uses it waits for one load
        /// only: deriving it with wyrand's multiply put about 2 ns of 23 on
        /// a single-threaded pick + acquire + release's critical path (docs/BENCHMARKS.md).
        #[inline]
        fn step(&self, x: u64) -> u64 {
            self.state.set(x.wrapping_add(WEYL));
            x
        }

        /// This thread's row and whether it owns it (see `stripe`).
        #[inline]
        fn stripe(&self) -> (usize, bool) {
            let mut r = self.row.get();
            if r == usize::MAX {
                r = self.first_use();
            }
            (r, r < super::OWNED_ROWS)
        }

        /// `weyl()` and `stripe()` with one first-use check: a thread's first `stripe` also
        /// seeds the sequence.
        #[inline]
        fn weyl_and_stripe(&self) -> (u64, (usize, bool)) {
            let mut r = self.row.get();
            if r == usize::MAX {
                r = self.first_use();
            }
            (self.step(self.state.get()), (r, r < super::OWNED_ROWS))
        }

        /// Seeds the sequence (if `weyl` has not) and claims a row.
        #[cold]
        fn first_use(&self) -> usize {
            if self.state.get() == 0 {
                self.state.set(seed());
            }
            let r = claim_row();
            self.row.set(r);
            r
        }
    }

    /// The owned row this thread claimed (`usize::MAX` for none), handed back when the thread
    /// exits. Its destructor is registered (by the first access) before the claim, so every
    /// owned row has one; it keeps the row itself, so the hand-back does not depend on `LOCAL`
    /// still holding it.
    #[cfg(not(freelane_loom))]
    struct RowOwner(Cell<usize>);

    #[cfg(not(freelane_loom))]
    impl Drop for RowOwner {
        fn drop(&mut self) {
            let r = self.0.get();
            if r < super::OWNED_ROWS {
                // Later counts on this thread (from other thread-locals' destructors) go to a
                // shared row with RMWs. (Where thread-locals are OS keys rather than native
                // TLS, `LOCAL` may be gone already; then a later use starts a fresh one, whose
                // claim finds `ROW_OWNER` gone and takes a shared row.)
                let _ = LOCAL.try_with(|l| l.row.set(super::STRIPES - 1));
                // Release: this thread's last stores to the row's counters happen-before the
                // next owner's Acquire claim, so its loads start from our final counts.
                FREE_ROWS.fetch_or(1 << r, std::sync::atomic::Ordering::Release);
            }
        }
    }

    #[cfg(not(freelane_loom))]
    std::thread_local! {
        static ROW_OWNER: RowOwner = const { RowOwner(Cell::new(usize::MAX)) };
    }

    /// Bit `r` set: owned row `r` is free.
    #[cfg(not(freelane_loom))]
    static FREE_ROWS: std::sync::atomic::AtomicU32 =
        std::sync::atomic::AtomicU32::new(((1u64 << super::OWNED_ROWS) - 1) as u32);
    #[cfg(freelane_loom)]
    loom::thread_local! {
        static STATE: Cell<u64> = Cell::new(0x9E37_79B9_7F4A_7C15);
    }

    /// Hands out the shared rows round-robin to threads that found no owned row free.
    #[cfg(not(freelane_loom))]
    static NEXT_SHARED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Claims a free owned row (recorded in `ROW_OWNER`, which hands it back at thread exit),
    /// or picks a shared one when none is free or `ROW_OWNER` is already destroyed (its
    /// destructor has run, so nothing would hand a row back).
    #[cfg(not(freelane_loom))]
    #[cold]
    fn claim_row() -> usize {
        use std::sync::atomic::Ordering;
        // The first access registers `RowOwner`'s destructor, before any row is claimed.
        let owned = ROW_OWNER.try_with(|owner| {
            if owner.0.get() < super::OWNED_ROWS {
                // Already claimed (a second first use: `LOCAL` was recreated where
                // thread-locals are OS keys): keep the one row.
                return Some(owner.0.get());
            }
            // Relaxed: a first guess for the CAS, which validates it.
            let mut free = FREE_ROWS.load(Ordering::Relaxed);
            while free != 0 {
                let r = free.trailing_zeros();
                // Acquire (success): pairs with the previous owner's Release hand-back, so its
                // counter stores happen-before our loads (we continue from its counts). Relaxed
                // (failure): just retry with the current mask.
                match FREE_ROWS.compare_exchange_weak(
                    free,
                    free & !(1 << r),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        owner.0.set(r as usize);
                        return Some(r as usize);
                    }
                    Err(now) => free = now,
                }
            }
            None
        });
        if let Ok(Some(r)) = owned {
            return r;
        }
        // Relaxed: only spreads threads over the shared rows; any row is correct.
        super::OWNED_ROWS
            + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % (super::STRIPES - super::OWNED_ROWS)
    }

    #[cfg(not(freelane_loom))]
    #[cold]
    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is randomly keyed per process and per call: a cheap per-thread seed.
        let s = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        s | 1
    }

    /// The next value of this thread's Weyl sequence: equidistributed, randomly seeded per
    /// thread, but successive values are not independent (use [`mix`] for that).
    #[inline]
    pub(crate) fn weyl() -> u64 {
        #[cfg(not(freelane_loom))]
        {
            LOCAL.with(Local::weyl)
        }
        #[cfg(freelane_loom)]
        {
            STATE.with(|c| {
                let mut x = c.get();
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                c.set(x);
                x.wrapping_mul(0x2545_F491_4F6C_DD1D)
            })
        }
    }

    /// wyrand's output for the Weyl value `x` (one 64 x 64 -> 128-bit multiply): 64 bits that
    /// look independent from call to call. (Under loom, `weyl` is already mixed.)
    #[inline]
    pub(crate) fn mix(x: u64) -> u64 {
        #[cfg(not(freelane_loom))]
        {
            let x = x.wrapping_add(WEYL);
            let t = u128::from(x) * u128::from(x ^ 0xE703_7ED1_A0B4_28DB);
            (t >> 64) as u64 ^ t as u64
        }
        #[cfg(freelane_loom)]
        {
            x
        }
    }

    /// An index in `0..n` (`n >= 1`) from the random bits `r` (their upper half).
    #[inline]
    pub(crate) fn below(r: u64, n: usize) -> usize {
        super::reduce((r >> 32) as u32, n)
    }

    /// This thread's row of the striped statistics counters (`0..STRIPES`) and whether the row
    /// is this thread's alone. A thread claims a free owned row on first use and hands it back
    /// when it exits (so a pool that replaces its threads keeps owning rows); a row has at most
    /// one live owner, its only writer. Threads that find no owned row free, or count after
    /// their row was handed back (from a thread-local destructor that runs later), use a shared
    /// row with RMWs.
    #[inline]
    pub(crate) fn stripe() -> (usize, bool) {
        #[cfg(not(freelane_loom))]
        {
            LOCAL.with(Local::stripe)
        }
        #[cfg(freelane_loom)]
        {
            // One shared row under loom: every thread counts with RMWs.
            (0, false)
        }
    }

    /// `weyl()` and `stripe()` from one access to the thread-local.
    #[inline]
    pub(crate) fn weyl_and_stripe() -> (u64, (usize, bool)) {
        #[cfg(not(freelane_loom))]
        {
            LOCAL.with(Local::weyl_and_stripe)
        }
        #[cfg(freelane_loom)]
        {
            (weyl(), stripe())
        }
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;

    #[test]
    fn guard_releases_exactly_what_it_added() {
        let b = Arc::new(LoadBoard::new(3));
        let g1 = b.acquire(GpuId(1), 10);
        let g2 = b.acquire(GpuId(1), 5);
        assert_eq!((b.in_flight(GpuId(1)), b.cost(GpuId(1))), (2, 15));
        drop(g1);
        assert_eq!((b.in_flight(GpuId(1)), b.cost(GpuId(1))), (1, 5));
        drop(g2);
        assert_eq!((b.in_flight(GpuId(1)), b.cost(GpuId(1))), (0, 0));
        let s = b.stats(GpuId(1)).unwrap();
        assert_eq!((s.allocations, s.releases, s.failures), (2, 2, 0));
    }

    #[test]
    fn unknown_gpu_is_an_error_not_a_panic() {
        let b = Arc::new(LoadBoard::new(2));
        assert_eq!(b.in_flight(GpuId(7)), 0);
        assert_eq!(b.cost(GpuId(7)), 0);
        assert!(b.stats(GpuId(7)).is_none());
        let e = b.try_acquire(GpuId(7), 1).unwrap_err();
        assert_eq!(
            e,
            LoadError::UnknownGpu {
                gpu: GpuId(7),
                gpus: 2
            }
        );
        assert_eq!(e.to_string(), "unknown gpu7: the load board has 2 gpus");
        assert!(b.record_failure(GpuId(2)).is_err());
    }

    #[test]
    #[should_panic(expected = "unknown gpu3")]
    fn acquire_panics_on_unknown_gpu_with_a_clear_message() {
        let b = Arc::new(LoadBoard::new(2));
        let _g = b.acquire(GpuId(3), 0);
    }

    #[test]
    fn overflow_is_reported_and_leaves_the_board_unchanged() {
        let b = Arc::new(LoadBoard::new(1));
        let big = b.acquire(GpuId(0), MAX_COST - 1);
        assert_eq!(b.cost(GpuId(0)), MAX_COST - 1);
        assert_eq!(b.load(GpuId(0)), MAX_LOAD - 1);
        let overflow = Err(LoadError::Overflow { gpu: GpuId(0) });
        assert_eq!(b.try_acquire(GpuId(0), 1).map(|g| g.cost()), overflow);
        assert_eq!((b.in_flight(GpuId(0)), b.cost(GpuId(0))), (1, MAX_COST - 1));
        // The last unit of load fits a request of cost 0; then nothing does.
        let zero = b.acquire(GpuId(0), 0);
        assert_eq!((b.in_flight(GpuId(0)), b.load(GpuId(0))), (2, MAX_LOAD));
        assert_eq!(b.try_acquire(GpuId(0), 0).map(|g| g.cost()), overflow);
        assert_eq!((b.in_flight(GpuId(0)), b.cost(GpuId(0))), (2, MAX_COST - 1));
        drop((big, zero));
        assert_eq!((b.in_flight(GpuId(0)), b.cost(GpuId(0))), (0, 0));
        // Clamping: a cost above MAX_COST is clamped, fits an idle GPU, and is released exactly.
        let g = b.acquire(GpuId(0), u64::MAX);
        assert_eq!(g.cost(), MAX_COST);
        assert_eq!((b.in_flight(GpuId(0)), b.load(GpuId(0))), (1, MAX_LOAD));
        drop(g);
        assert_eq!(b.cost(GpuId(0)), 0);
        assert_eq!(b.stats(GpuId(0)).unwrap().allocations, 3);
    }

    std::thread_local! {
        /// Called by `add_with` after a refused `fetch_add` is taken back (fault injection).
        static AFTER_REFUSED: std::cell::Cell<Option<fn(&AtomicU64)>> =
            const { std::cell::Cell::new(None) };
    }

    /// The hook `add_with` calls between a refused `fetch_add`'s take-back and its second look.
    pub(super) fn after_refused_fetch_add(slot: &AtomicU64) {
        if let Some(f) = AFTER_REFUSED.with(|h| h.get()) {
            f(slot);
        }
    }

    #[test]
    fn a_fetch_add_refused_by_another_refused_add_looks_again_and_is_admitted() {
        // The word shows live guards with room for exactly a cost of 0 plus another acquire's
        // refused add of cost 10 not yet taken back. A `fetch_add` from a stale reading is
        // refused (it counts that add); the other takes its add back (the hook) before the
        // second look, which then admits the request.
        let b = Arc::new(LoadBoard::new(1));
        let live = pack(0, MAX_COST);
        let other = (11 << LOAD_SHIFT) | 1;
        b.slot(0).store(live + other, Ordering::Relaxed);
        AFTER_REFUSED.with(|h| {
            h.set(Some(|slot| {
                // Relaxed: single-threaded test.
                slot.fetch_sub((11 << LOAD_SHIFT) | 1, Ordering::Relaxed);
            }))
        });
        let admitted = b.add_with(GpuId(0), 0, rng::stripe(), Some(0));
        AFTER_REFUSED.with(|h| h.set(None));
        let delta = admitted.expect("the second look admits it");
        assert_eq!(b.load(GpuId(0)), MAX_LOAD);
        b.remove(GpuId(0), delta);
        assert_eq!(b.slot(0).load(Ordering::Relaxed), live);
        b.slot(0).store(0, Ordering::Relaxed);
    }

    #[test]
    fn a_refused_fetch_add_is_never_counted_as_an_allocation() {
        // The hook runs after the refused add was taken back and before the second look, which
        // refuses too (the GPU is full, at `MAX_LOAD`): the allocation count must read 0 there
        // and after.
        static BOARD: std::sync::LazyLock<LoadBoard> =
            std::sync::LazyLock::new(|| LoadBoard::new(1));
        std::thread_local! {
            static SEEN: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
        }
        BOARD.slot(0).store(pack(1, MAX_COST), Ordering::Relaxed);
        AFTER_REFUSED.with(|h| {
            h.set(Some(|_| {
                let allocations = BOARD.stats(GpuId(0)).unwrap().allocations;
                SEEN.with(|s| s.set(Some(allocations)));
            }))
        });
        let refused = BOARD.add_with(GpuId(0), 0, rng::stripe(), Some(0));
        AFTER_REFUSED.with(|h| h.set(None));
        assert!(
            matches!(refused, Err(LoadError::Overflow { .. })),
            "{refused:?}"
        );
        assert_eq!(SEEN.with(|s| s.get()), Some(0), "counted while refused");
        assert_eq!(BOARD.stats(GpuId(0)).unwrap().allocations, 0);
        BOARD.slot(0).store(0, Ordering::Relaxed);
    }

    /// A packed load word (test presets).
    fn pack(in_flight: u64, cost: u64) -> u64 {
        assert!(in_flight <= MAX_IN_FLIGHT && in_flight + cost <= MAX_LOAD);
        ((in_flight + cost) << LOAD_SHIFT) | in_flight
    }

    /// How a racer in `race_refused_acquires` acquires.
    #[derive(Clone, Copy, PartialEq)]
    enum Racer {
        /// `try_acquire` (near a limit: the compare-and-swap, which never changes the word
        /// when it refuses).
        TryAcquire,
        /// `pick_and_acquire_local` (the same path choice, from the word the pick read).
        Pick,
        /// `add_with` told that the word was far below the limits, as a pick that read it just
        /// before many other acquires could: the `fetch_add` path, refused and taken back.
        StaleFetchAdd,
    }

    /// Presets GPU 0's word, races acquires of each of `costs` on its own thread (every one must
    /// be refused) while a sampler checks every value the word takes: never below the preset,
    /// and never above it by more than one request of each racer's cost (the refused adds not
    /// yet taken back), field by field, so no add ever carries out of a field; for racers that
    /// do not force the `fetch_add`, never changed at all. Restores 0 at the end.
    fn race_refused_acquires(preset: u64, costs: &'static [u64], racer: Racer) {
        use std::sync::atomic::AtomicBool;
        let b = Arc::new(LoadBoard::new(1));
        b.slot(0).store(preset, Ordering::Relaxed);
        let iters = if cfg!(miri) { 40 } else { 200_000 };
        let unchanged = racer != Racer::StaleFetchAdd;
        let excess = if unchanged {
            (0, 0)
        } else {
            (costs.len() as u64, costs.iter().map(|c| 1 + c).sum::<u64>())
        };
        let (lo, hi) = (
            (in_flight_of(preset), score(preset)),
            (in_flight_of(preset) + excess.0, score(preset) + excess.1),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sampling = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (b, stop, sampling) = (Arc::clone(&b), Arc::clone(&stop), Arc::clone(&sampling));
            std::thread::spawn(move || {
                let mut excess_seen = false;
                // Relaxed: a start signal only; it carries no data.
                sampling.store(true, Ordering::Relaxed);
                // Relaxed: a flag; the join below synchronizes the result.
                while !stop.load(Ordering::Relaxed) {
                    // Relaxed: any value the word ever holds is what we check.
                    let w = b.slot(0).load(Ordering::Relaxed);
                    let seen = (in_flight_of(w), score(w));
                    assert!(
                        lo.0 <= seen.0 && seen.0 <= hi.0 && lo.1 <= seen.1 && seen.1 <= hi.1,
                        "word (in flight, score) = {seen:?} outside {lo:?}..={hi:?}"
                    );
                    excess_seen |= seen != lo;
                    std::hint::spin_loop();
                }
                excess_seen
            })
        };
        let racers: Vec<_> = costs
            .iter()
            .map(|&cost| {
                let (b, sampling) = (Arc::clone(&b), Arc::clone(&sampling));
                std::thread::spawn(move || {
                    // Relaxed: a start signal only. Race only while the sampler watches.
                    while !sampling.load(Ordering::Relaxed) {
                        std::thread::yield_now();
                    }
                    for _ in 0..iters {
                        let admitted = match racer {
                            Racer::TryAcquire => match b.try_acquire(GpuId(0), cost) {
                                Err(LoadError::Overflow { .. }) => None,
                                Ok(g) => Some(g.cost()),
                                Err(e) => panic!("unexpected error {e}"),
                            },
                            Racer::Pick => b
                                .pick_and_acquire_local(Policy::LeastLoaded, cost, |_| true)
                                .map(|g| g.cost()),
                            Racer::StaleFetchAdd => {
                                match b.add_with(GpuId(0), cost, rng::stripe(), Some(0)) {
                                    Err(LoadError::Overflow { .. }) => None,
                                    Ok(delta) => {
                                        b.remove(GpuId(0), delta);
                                        Some(cost)
                                    }
                                    Err(e) => panic!("unexpected error {e}"),
                                }
                            }
                        };
                        assert_eq!(admitted, None, "admitted past the limit");
                    }
                })
            })
            .collect();
        for r in racers {
            r.join().unwrap();
        }
        // Relaxed: the racers are joined; the sampler only reads.
        stop.store(true, Ordering::Relaxed);
        let excess_seen = sampler.join().unwrap();
        if unchanged {
            assert!(!excess_seen);
        }
        assert_eq!(b.slot(0).load(Ordering::Relaxed), preset);
        assert_eq!(b.stats(GpuId(0)).unwrap().allocations, 0);
        b.slot(0).store(0, Ordering::Relaxed);
    }

    #[test]
    fn racing_refusals_on_a_full_in_flight_field_never_carry() {
        // A full in-flight field (2^23 - 1). Acquires near a limit take the compare-and-swap
        // and leave the word alone; a `fetch_add` from a stale "far below the limits" reading
        // is refused, and its add sits in the field's upper half until it is taken back.
        // Without that headroom (the field once had 24 bits of limit) racing adds wrapped it
        // to 0 in between, one could admit itself, and the board read 0 with 2^24 guards live.
        // Four racers on two cores: oversubscribed.
        for racer in [Racer::TryAcquire, Racer::Pick, Racer::StaleFetchAdd] {
            race_refused_acquires(pack(MAX_IN_FLIGHT, 0), &[0, 0, 0, 0], racer);
        }
    }

    #[test]
    fn racing_cost_refusals_never_carry() {
        // Room for a cost of 5 only: every racer is refused every time; the forced `fetch_add`s
        // (costs up to 65535 only) keep their excesses within the score's headroom.
        for racer in [Racer::TryAcquire, Racer::Pick] {
            race_refused_acquires(
                pack(0, MAX_COST - 5),
                &[10, 6, FAA_MAX_COST, FAA_MAX_COST + 1, MAX_COST],
                racer,
            );
        }
        race_refused_acquires(
            pack(0, MAX_COST - 5),
            &[10, 6, FAA_MAX_COST],
            Racer::StaleFetchAdd,
        );
        let b = Arc::new(LoadBoard::new(1));
        b.slot(0).store(pack(0, MAX_COST - 5), Ordering::Relaxed);
        let g = b.try_acquire(GpuId(0), 5).unwrap();
        assert_eq!((b.in_flight(GpuId(0)), b.cost(GpuId(0))), (1, MAX_COST));
        assert_eq!(b.load(GpuId(0)), MAX_LOAD);
        drop(g);
        assert_eq!(b.slot(0).load(Ordering::Relaxed), pack(0, MAX_COST - 5));
        b.slot(0).store(0, Ordering::Relaxed);
    }

    #[test]
    fn both_acquire_paths_are_exact_at_the_threshold() {
        let b = Arc::new(LoadBoard::new(1));
        for cost in [
            FAA_MAX_COST - 1,
            FAA_MAX_COST,
            FAA_MAX_COST + 1,
            FAA_MAX_COST + 2,
        ] {
            let g = b.acquire(GpuId(0), cost);
            assert_eq!(g.cost(), cost);
            assert_eq!((b.in_flight(GpuId(0)), b.cost(GpuId(0))), (1, cost));
            drop(g);
            assert_eq!(b.slot(0).load(Ordering::Relaxed), 0);
            // Exactly room for `cost`: admitted; one more unit: refused, word unchanged.
            let preset = pack(0, MAX_COST - cost);
            b.slot(0).store(preset, Ordering::Relaxed);
            let g = b.try_acquire(GpuId(0), cost).expect("fits exactly");
            assert_eq!(b.load(GpuId(0)), MAX_LOAD);
            drop(g);
            b.slot(0)
                .store(pack(0, MAX_COST - cost + 1), Ordering::Relaxed);
            assert_eq!(
                b.try_acquire(GpuId(0), cost).unwrap_err(),
                LoadError::Overflow { gpu: GpuId(0) }
            );
            assert_eq!(
                b.slot(0).load(Ordering::Relaxed),
                pack(0, MAX_COST - cost + 1)
            );
            b.slot(0).store(0, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_headroom_holds_2_pow_23_refused_adds_exactly() {
        // The worst case the headroom is sized for: live guards at both limits and 2^23 - 1
        // refused adds of the largest `fetch_add` delta not yet taken back. Every acquire path
        // must refuse without changing the word, and readers must not underflow; the 2^23rd
        // refused add fills both fields to the last bit without a carry.
        let b = Arc::new(LoadBoard::new(1));
        let live = (MAX_LOAD << LOAD_SHIFT) | MAX_IN_FLIGHT;
        let largest = ((1 + FAA_MAX_COST) << LOAD_SHIFT) | 1;
        let pending = (1u64 << 23) - 1;
        let word = live + pending * largest;
        assert_eq!(in_flight_of(word), MAX_IN_FLIGHT + pending);
        assert_eq!(score(word), MAX_LOAD + pending * (1 + FAA_MAX_COST));
        b.slot(0).store(word, Ordering::Relaxed);
        assert_eq!(b.cost(GpuId(0)), cost_of(word));
        assert_eq!(b.stats(GpuId(0)).unwrap().releases, 0);
        for cost in [0, 1, FAA_MAX_COST, FAA_MAX_COST + 1, MAX_COST, u64::MAX] {
            assert_eq!(
                b.try_acquire(GpuId(0), cost).unwrap_err(),
                LoadError::Overflow { gpu: GpuId(0) }
            );
            assert!(b
                .pick_and_acquire(Policy::LeastLoaded, cost, |_| true)
                .is_none());
            // The `fetch_add` path, as after a stale "far below the limits" reading.
            assert_eq!(
                b.add_with(GpuId(0), cost, rng::stripe(), Some(0)),
                Err(LoadError::Overflow { gpu: GpuId(0) })
            );
            assert_eq!(b.slot(0).load(Ordering::Relaxed), word);
        }
        let last = word + largest;
        assert_eq!(in_flight_of(last), IN_FLIGHT_MASK);
        assert_eq!(score(last), (1 << (64 - LOAD_SHIFT)) - 1);
        b.slot(0).store(0, Ordering::Relaxed);
    }

    #[test]
    fn near_a_limit_a_request_that_never_fits_never_refuses_one_that_does() {
        // Room for 10 units on every GPU: one thread keeps asking for 11 (cost 10, always
        // refused) while this one asks for 1 (cost 0, which fits at every instant), alternately
        // through `try_acquire` and `pick_and_acquire_local`, for each pick path: least loaded
        // (one GPU), two choices (two GPUs) and weighted least loaded (one GPU of weight 2, so
        // that every pick lands where the other thread's do). Near a limit
        // all of them take the compare-and-swap, which never shows a refused add, so no fitting
        // ask is refused. (With the `fetch_add` there, about a fifth were: 367977 of 2M in a
        // review; with a compare-and-swap second look after a refused `fetch_add`, 0.1-0.5%
        // alone and 10-16% beside the other tests, when the refusing thread was preempted
        // mid-refusal.)
        use std::sync::atomic::AtomicBool;
        let preset = pack(0, MAX_COST - 9);
        assert_eq!(MAX_LOAD - score(preset), 10);
        let cases = [
            (LoadBoard::new(1), Policy::LeastLoaded),
            (LoadBoard::new(2), Policy::PowerOfTwoChoices),
            (LoadBoard::with_weights(&[2]).unwrap(), Policy::LeastLoaded),
        ];
        for (board, policy) in cases {
            let b = Arc::new(board);
            let gpus = b.gpus();
            for g in 0..gpus {
                b.slot(g).store(preset, Ordering::Relaxed);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let started = Arc::new(AtomicBool::new(false));
            let doomed = {
                let (b, stop, started) = (Arc::clone(&b), Arc::clone(&stop), Arc::clone(&started));
                std::thread::spawn(move || {
                    let mut tries = 0u64;
                    loop {
                        assert!(b.try_acquire(GpuId(0), 10).is_err());
                        assert!(b.pick_and_acquire_local(policy, 10, |_| true).is_none());
                        tries += 2;
                        // Relaxed (both): flags; the join synchronizes the result.
                        started.store(true, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            return tries;
                        }
                    }
                })
            };
            // Ask only once the refusing thread runs (on a busy machine it may not be
            // scheduled at all during the asks otherwise).
            // Relaxed: a start signal only.
            while !started.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            let asks = if cfg!(miri) { 100 } else { 200_000 };
            let mut refused = 0u64;
            for i in 0..asks {
                let admitted = if i % 2 == 0 {
                    b.try_acquire(GpuId(0), 0).is_ok()
                } else {
                    b.pick_and_acquire_local(policy, 0, |_| true).is_some()
                };
                refused += u64::from(!admitted);
            }
            // Relaxed: a flag; the join synchronizes.
            stop.store(true, Ordering::Relaxed);
            let tries = doomed.join().unwrap();
            assert!(tries > 0);
            for g in 0..gpus {
                assert_eq!(b.slot(g).load(Ordering::Relaxed), preset);
                b.slot(g).store(0, Ordering::Relaxed);
            }
            assert_eq!(
                refused,
                0,
                "{policy} on {gpus} GPUs (weights {:?}): {refused} of {asks} fitting asks refused",
                b.weight(GpuId(0))
            );
        }
    }

    #[test]
    fn far_below_the_limits_means_half_of_each() {
        assert!(far_from_the_limits(pack(
            (1 << 22) - 1,
            (1 << 38) - (1 << 22)
        )));
        assert!(!far_from_the_limits(pack(1 << 22, 0)));
        assert!(!far_from_the_limits(pack(0, 1 << 38)));
        assert!(!far_from_the_limits(pack(
            MAX_IN_FLIGHT,
            MAX_COST - MAX_IN_FLIGHT
        )));
        // An OR of words is near if any one is.
        assert!(!far_from_the_limits(pack(1, 1) | pack(0, 1 << 38)));
    }

    #[test]
    fn too_many_gpus_is_an_error_not_an_allocation_failure() {
        for gpus in [MAX_GPUS + 1, u32::MAX as usize, usize::MAX] {
            let e = LoadBoard::try_new(gpus).expect_err("must be refused");
            assert_eq!(e, LoadError::TooManyGpus { gpus });
            assert!(e.to_string().contains("at most 1048576"), "{e}");
        }
        if !cfg!(miri) {
            // (A million-element vector is slow to build under miri.)
            let weights = vec![1u32; MAX_GPUS + 1];
            assert!(matches!(
                LoadBoard::with_weights(&weights),
                Err(LoadError::TooManyGpus { .. })
            ));
        }
    }

    #[test]
    fn in_flight_overflow_is_detected() {
        let b = Arc::new(LoadBoard::new(1));
        // Simulate a full in-flight field without creating 8M guards.
        b.slot(0).store(pack(MAX_IN_FLIGHT, 0), Ordering::Relaxed);
        assert_eq!(
            b.try_acquire(GpuId(0), 0).unwrap_err(),
            LoadError::Overflow { gpu: GpuId(0) }
        );
        assert_eq!(b.in_flight(GpuId(0)), MAX_IN_FLIGHT);
    }

    #[test]
    fn pick_returns_none_when_nothing_is_eligible() {
        let b = LoadBoard::new(4);
        for p in [
            Policy::LeastLoaded,
            Policy::PowerOfTwoChoices,
            Policy::RoundRobin,
        ] {
            assert_eq!(b.pick(p, |_| false), None);
        }
        let empty = LoadBoard::new(0);
        for p in [
            Policy::LeastLoaded,
            Policy::PowerOfTwoChoices,
            Policy::RoundRobin,
        ] {
            assert_eq!(empty.pick(p, |_| true), None);
        }
    }

    #[test]
    fn least_loaded_picks_the_minimum_eligible_load() {
        let b = Arc::new(LoadBoard::new(4));
        let _a = b.acquire(GpuId(0), 3);
        let _c = b.acquire(GpuId(1), 1);
        let _d = b.acquire(GpuId(3), 0);
        // Loads: 4, 2, 0, 1.
        assert_eq!(b.pick(Policy::LeastLoaded, |_| true), Some(GpuId(2)));
        assert_eq!(
            b.pick(Policy::LeastLoaded, |g| g != GpuId(2)),
            Some(GpuId(3))
        );
        assert_eq!(b.pick(Policy::LeastLoaded, |g| g.0 < 2), Some(GpuId(1)));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "thousands of picks, statistical; no unsafe code involved"
    )]
    fn two_choices_picks_an_eligible_gpu_and_the_lesser_of_two() {
        let b = Arc::new(LoadBoard::new(2));
        let _h = b.acquire(GpuId(0), 100);
        for _ in 0..100 {
            // With only two GPUs both are sampled, so the lesser always wins.
            assert_eq!(b.pick(Policy::PowerOfTwoChoices, |_| true), Some(GpuId(1)));
            assert_eq!(
                b.pick(Policy::PowerOfTwoChoices, |g| g == GpuId(0)),
                Some(GpuId(0))
            );
        }
        let b = LoadBoard::new(8);
        for _ in 0..1000 {
            let g = b.pick(Policy::PowerOfTwoChoices, |g| g.0 % 3 == 1).unwrap();
            assert_eq!(g.0 % 3, 1);
        }
    }

    #[test]
    fn round_robin_cycles_through_eligible_gpus() {
        let b = LoadBoard::new(3);
        let picks: Vec<u32> = (0..6)
            .map(|_| b.pick(Policy::RoundRobin, |_| true).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let picks: Vec<u32> = (0..4)
            .map(|_| b.pick(Policy::RoundRobin, |g| g != GpuId(1)).unwrap().0)
            .collect();
        assert!(picks.iter().all(|&g| g != 1));
    }

    #[test]
    fn weights_make_bigger_gpus_take_proportionally_more() {
        let b = Arc::new(LoadBoard::with_weights(&[1, 3]).unwrap());
        let guards: Vec<_> = (0..400)
            .map(|_| {
                b.pick_and_acquire(Policy::LeastLoaded, 0, |_| true)
                    .unwrap()
            })
            .collect();
        let (a, c) = (b.in_flight(GpuId(0)), b.in_flight(GpuId(1)));
        assert_eq!(a + c, 400);
        assert!((99..=101).contains(&a), "gpu0 took {a}, gpu1 {c}");
        drop(guards);
        assert_eq!(
            LoadBoard::with_weights(&[1, 0]).unwrap_err(),
            LoadError::ZeroWeight { gpu: GpuId(1) }
        );
    }

    #[test]
    fn pick_and_acquire_spreads_load_evenly() {
        let b = Arc::new(LoadBoard::new(4));
        let guards: Vec<_> = (0..40)
            .map(|_| {
                b.pick_and_acquire(Policy::LeastLoaded, 1, |_| true)
                    .unwrap()
            })
            .collect();
        for g in 0..4 {
            assert_eq!(b.in_flight(GpuId(g)), 10);
        }
        drop(guards);
        assert!((0..4).all(|g| b.load(GpuId(g)) == 0));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "thousands of picks, statistical; no unsafe code involved"
    )]
    fn least_loaded_breaks_ties_across_every_gpu() {
        // Idle boards of sizes around block and power-of-two edges, weighted and not, picked
        // alone and picked and acquired (one block unweighted takes its own path there): every
        // GPU wins a tie sometimes, and ineligible ones never do.
        for n in [2usize, 3, 5, 8, 9, 12, 17] {
            for weighted in [false, true] {
                for acquire in [false, true] {
                    let b = if weighted {
                        LoadBoard::with_weights(&vec![2; n]).unwrap()
                    } else {
                        LoadBoard::new(n)
                    };
                    let eligible = |g: GpuId| g.index() != 1;
                    let mut seen = vec![0u32; n];
                    for _ in 0..4000 {
                        let g = if acquire {
                            // Acquired and released at once: the board stays idle.
                            let guard = b.pick_and_acquire_local(Policy::LeastLoaded, 0, eligible);
                            guard.unwrap().gpu()
                        } else {
                            b.pick(Policy::LeastLoaded, eligible).unwrap()
                        };
                        seen[g.index()] += 1;
                    }
                    assert_eq!(seen[1], 0, "n={n}: picked an ineligible gpu");
                    for (g, &c) in seen.iter().enumerate() {
                        assert!(
                            g == 1 || c > 0,
                            "n={n} weighted={weighted} acquire={acquire}: gpu {g} never won a \
                             tie: {seen:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "thousands of picks, statistical; no unsafe code involved"
    )]
    fn least_loaded_spreads_a_full_tie_uniformly() {
        // Sizes that are not powers of two are where a naive XOR tie-break would favour the
        // top indices (e.g. GPU 8 of 9 winning half of the ties). Picked alone and picked and
        // acquired (up to eight GPUs, that takes the one-block path), and on a thread of its
        // own each time so that every run starts from a fresh seed.
        for n in [2usize, 3, 5, 8, 9, 12, 17] {
            for acquire in [false, true] {
                let seen = std::thread::spawn(move || {
                    let b = LoadBoard::new(n);
                    let mut seen = vec![0usize; n];
                    for _ in 0..2000 * n {
                        let g = if acquire {
                            let guard = b.pick_and_acquire_local(Policy::LeastLoaded, 0, |_| true);
                            guard.unwrap().gpu()
                        } else {
                            b.pick(Policy::LeastLoaded, |_| true).unwrap()
                        };
                        seen[g.index()] += 1;
                    }
                    seen
                })
                .join()
                .unwrap();
                let expected = 2000;
                for (g, &c) in seen.iter().enumerate() {
                    assert!(
                        c > expected * 8 / 10 && c < expected * 12 / 10,
                        "n={n} acquire={acquire}: gpu {g} won {c} ties (expected about \
                         {expected}): {seen:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_thread_seeds_its_own_sequence() {
        // The tie-break walks each thread's Weyl sequence, so routers on different threads
        // only break ties differently if their seeds differ: check that they do (and that
        // the first value is not the unseeded 0).
        let firsts: Vec<u64> = (0..4)
            .map(|_| std::thread::spawn(rng::weyl))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let mut distinct = firsts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            firsts.len(),
            "threads share a seed: {firsts:x?}"
        );
        assert!(!firsts.contains(&0), "an unseeded sequence: {firsts:x?}");
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "thousands of picks, statistical; no unsafe code involved"
    )]
    fn least_loaded_prefers_lower_load_over_any_tie_break() {
        let b = Arc::new(LoadBoard::new(9));
        let held: Vec<_> = (0..9u32)
            .filter(|&g| g != 6)
            .map(|g| b.acquire(GpuId(g), 1))
            .collect();
        for _ in 0..1000 {
            assert_eq!(b.pick(Policy::LeastLoaded, |_| true), Some(GpuId(6)));
        }
        drop(held);
    }

    #[test]
    fn failures_and_success_rate() {
        let b = Arc::new(LoadBoard::new(1));
        assert_eq!(b.success_rate(GpuId(0)), Some(1.0));
        for i in 0..4 {
            let g = b.acquire(GpuId(0), 1);
            if i == 0 {
                g.fail();
            }
        }
        let s = b.stats(GpuId(0)).unwrap();
        assert_eq!(
            (s.allocations, s.releases, s.failures, s.in_flight),
            (4, 4, 1, 0)
        );
        assert_eq!(s.success_rate(), 0.75);
    }

    #[test]
    fn local_guard_releases_exactly_what_it_added() {
        let b = LoadBoard::new(2);
        let g = b
            .pick_and_acquire_local(Policy::LeastLoaded, 9, |g| g == GpuId(1))
            .unwrap();
        assert_eq!(
            (g.gpu(), b.in_flight(GpuId(1)), b.cost(GpuId(1))),
            (GpuId(1), 1, 9)
        );
        g.fail();
        assert_eq!(b.load(GpuId(1)), 0);
        let s = b.stats(GpuId(1)).unwrap();
        assert_eq!((s.allocations, s.releases, s.failures), (1, 1, 1));
        assert!(b.try_acquire_local(GpuId(2), 0).is_err());
        // A directly acquired borrowed guard releases its own GPU's word.
        let g = b.try_acquire_local(GpuId(1), 5).unwrap();
        assert_eq!((b.load(GpuId(0)), b.load(GpuId(1))), (0, 6));
        drop(g);
        assert_eq!((b.load(GpuId(0)), b.load(GpuId(1))), (0, 0));
    }

    #[test]
    fn policy_parses_and_displays() {
        for p in [
            Policy::LeastLoaded,
            Policy::PowerOfTwoChoices,
            Policy::RoundRobin,
        ] {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        assert_eq!("P2C".parse::<Policy>().unwrap(), Policy::PowerOfTwoChoices);
        assert_eq!(
            "least_loaded".parse::<Policy>().unwrap(),
            Policy::LeastLoaded
        );
        let e = "fastest".parse::<Policy>().unwrap_err();
        assert!(e
            .to_string()
            .starts_with("unknown gpu selection policy `fastest`"));
    }

    #[test]
    fn guards_release_and_fail_after_the_board_is_dropped_elsewhere() {
        // Guards do not keep the board alive; one dropped while guards are out leaks its
        // counters so that those guards can still release (and record failures) safely.
        let b = Arc::new(LoadBoard::new(2));
        let a = b.acquire(GpuId(0), 7);
        let c = b.acquire(GpuId(1), 1);
        drop(b);
        assert_eq!((a.gpu(), a.cost()), (GpuId(0), 7));
        drop(a);
        c.fail();
    }

    #[test]
    fn a_board_whose_guards_are_released_frees_its_counters_and_fail_counts() {
        let b = Arc::new(LoadBoard::new(3));
        let g = b.acquire(GpuId(2), 4);
        let h = b.acquire(GpuId(2), 1);
        g.fail();
        drop(h);
        let s = b.stats(GpuId(2)).unwrap();
        assert_eq!((s.allocations, s.releases, s.failures), (2, 2, 1));
        assert_eq!(b.load(GpuId(2)), 0);
        // Dropped with no guard out: the free path (miri checks it frees exactly once).
        drop(b);
    }

    #[test]
    fn guards_released_on_other_threads_while_the_board_goes_away() {
        let (tx, rx) = std::sync::mpsc::channel::<LoadGuard>();
        let releaser = std::thread::spawn(move || rx.into_iter().count());
        let n = if cfg!(miri) { 20 } else { 2000 };
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let b = Arc::new(LoadBoard::new(4));
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..n {
                        let g = b.pick_and_acquire(Policy::LeastLoaded, i % 5, |_| true);
                        tx.send(g.unwrap()).unwrap();
                    }
                    // The board's last `Arc` goes here, racing the releaser; whichever way the
                    // race goes (free or leak), no guard touches freed memory.
                    drop(b);
                })
            })
            .collect();
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(releaser.join().unwrap(), 2 * n as usize);
    }

    #[test]
    fn owned_statistics_rows_are_handed_back_when_threads_exit() {
        // Threads one after another, each counting on the board: each finds an owned row free
        // again (unless other tests' threads hold all of them at that moment). Without the
        // hand-back the first OWNED_ROWS threads would keep the rows and every later thread
        // would count on a shared row.
        let threads = if cfg!(miri) {
            OWNED_ROWS + 4
        } else {
            3 * OWNED_ROWS
        };
        let b = Arc::new(LoadBoard::new(2));
        let owned = (0..threads)
            .filter(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    drop(b.pick_and_acquire(Policy::LeastLoaded, 0, |_| true));
                    rng::stripe().1
                })
                .join()
                .unwrap()
            })
            .count();
        assert!(
            owned > OWNED_ROWS + (threads - OWNED_ROWS) / 2,
            "{owned} of {threads} threads owned a row"
        );
        let allocations: u64 = (0..2).map(|g| b.stats(GpuId(g)).unwrap().allocations).sum();
        assert_eq!(allocations, threads as u64);
    }

    /// The board to use, and where to report the stripe, from `LateUse`'s destructor.
    type LateJob = (Arc<LoadBoard>, std::sync::mpsc::Sender<(usize, bool)>);

    /// A thread-local whose destructor acquires on the board and reports this thread's stripe.
    struct LateUse(std::cell::RefCell<Option<LateJob>>);

    impl Drop for LateUse {
        fn drop(&mut self) {
            if let Some((b, tx)) = self.0.borrow_mut().take() {
                drop(b.pick_and_acquire(Policy::LeastLoaded, 1, |_| true));
                tx.send(rng::stripe()).unwrap();
            }
        }
    }

    std::thread_local! {
        static LATE_USE: LateUse = const { LateUse(std::cell::RefCell::new(None)) };
    }

    #[test]
    fn thread_local_destructors_can_still_pick_and_count() {
        let b = Arc::new(LoadBoard::new(2));
        let (tx, rx) = std::sync::mpsc::channel();
        // First: `LATE_USE`'s destructor is registered before this thread's row is claimed, so
        // it runs after the row was handed back (destructors run in reverse order of
        // registration); it then counts on a shared row.
        let (b2, tx2) = (Arc::clone(&b), tx.clone());
        std::thread::spawn(move || {
            LATE_USE.with(|l| *l.0.borrow_mut() = Some((Arc::clone(&b2), tx2)));
            drop(b2.pick_and_acquire(Policy::LeastLoaded, 1, |_| true));
            assert!(rng::stripe().0 < STRIPES);
        })
        .join()
        .unwrap();
        let late = rx.recv().unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(
                late,
                (STRIPES - 1, false),
                "counted on an owned row after hand-back"
            );
        }
        // Second: the thread's first use of the board is in that destructor (the row is
        // claimed, and its hand-back registered, while the thread's destructors run).
        let b3 = Arc::clone(&b);
        std::thread::spawn(move || {
            LATE_USE.with(|l| *l.0.borrow_mut() = Some((b3, tx)));
        })
        .join()
        .unwrap();
        assert!(rx.recv().unwrap().0 < STRIPES);
        let stats: Vec<GpuStats> = (0..2).map(|g| b.stats(GpuId(g)).unwrap()).collect();
        assert_eq!(stats.iter().map(|s| s.allocations).sum::<u64>(), 3);
        assert_eq!(stats.iter().map(|s| s.in_flight + s.cost).sum::<u64>(), 0);
    }

    #[test]
    fn guard_is_static_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<LoadGuard>();
        check::<LoadBoard>();
        assert_eq!(GpuId(3).to_string(), "gpu3");
    }
}
