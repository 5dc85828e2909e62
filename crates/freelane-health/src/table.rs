//! [`HealthTable`]: one seqlock'd [`GpuRecord`] per GPU plus a hot atomic state, driven by the
//! failover/recovery state machine.

use std::fmt;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use freelane_load::GpuId;
use freelane_sync::atomic::{AtomicU64, AtomicU8, Ordering};
use freelane_sync::CachePadded;

use crate::config::HealthConfig;
use crate::seqlock::SeqLock;

/// A GPU's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum GpuState {
    /// Serving normally.
    Healthy = 0,
    /// Serving, but failing or erroring more than the config allows; still usable.
    Degraded = 1,
    /// Not usable: failed too often, missed heartbeats, or was marked (device error).
    Unhealthy = 2,
    /// Heartbeats are back after being Unhealthy: usable as a probe; the next failure makes it
    /// Unhealthy again, enough successes make it Healthy.
    Recovering = 3,
}

impl GpuState {
    /// All states, in discriminant order.
    pub const ALL: [GpuState; 4] = [
        GpuState::Healthy,
        GpuState::Degraded,
        GpuState::Unhealthy,
        GpuState::Recovering,
    ];

    /// `true` for the states routers may send work to: Healthy, Degraded and Recovering (as a
    /// probe).
    #[inline]
    pub const fn is_usable(self) -> bool {
        !matches!(self, GpuState::Unhealthy)
    }

    /// Decodes a discriminant; anything out of range reads as Unhealthy (never usable).
    #[inline]
    pub const fn from_u8(v: u8) -> GpuState {
        match v {
            0 => GpuState::Healthy,
            1 => GpuState::Degraded,
            3 => GpuState::Recovering,
            _ => GpuState::Unhealthy,
        }
    }

    /// The lower-case name (`healthy`, `degraded`, `unhealthy`, `recovering`).
    pub const fn as_str(self) -> &'static str {
        match self {
            GpuState::Healthy => "healthy",
            GpuState::Degraded => "degraded",
            GpuState::Unhealthy => "unhealthy",
            GpuState::Recovering => "recovering",
        }
    }
}

impl fmt::Display for GpuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One GPU's health record, as stored in its [`SeqLock`] (72 bytes, plain old data).
///
/// Times are nanoseconds since the table's [epoch](HealthTable::epoch). Two records are equal
/// when their bytes are (so a record whose temperature is unknown, NaN, equals itself).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct GpuRecord {
    /// Time of the last heartbeat (0 = the epoch; the table counts a GPU as having beaten at
    /// creation).
    pub last_heartbeat_ns: u64,
    /// Successes ever reported.
    pub successes: u64,
    /// Failures ever reported, including forced marks ([`HealthTable::mark_unhealthy`]).
    pub failures: u64,
    /// Device memory in use, bytes, as last reported (0 if unknown).
    pub memory_used_bytes: u64,
    /// Error-rate EWMA in `[0, 1]` (1 per reported failure, 0 per success; forced marks do not
    /// enter it). Reset to 0 on entering Recovering.
    pub error_rate: f64,
    /// Latency EWMA of successful requests, nanoseconds (0 before the first success).
    pub latency_ewma_ns: f64,
    /// Reported failures since the last success (forced marks are not counted here).
    pub consecutive_failures: u32,
    /// Successes since the last failure (reset on entering Recovering).
    pub consecutive_successes: u32,
    /// Heartbeats since becoming Unhealthy (or since its last heartbeat timeout), counting only
    /// heartbeats newer than the previous one.
    pub heartbeats_since_unhealthy: u32,
    /// The state (`GpuState as u32`); use [`GpuRecord::state`].
    pub state: u32,
    /// Temperature in °C as last reported; NaN if unknown.
    pub temperature_c: f32,
    /// Number of state changes so far (wraps).
    pub state_changes: u32,
}

impl PartialEq for GpuRecord {
    /// Bitwise: a derived comparison would make every record with an unknown (NaN)
    /// temperature differ from itself.
    fn eq(&self, other: &Self) -> bool {
        bytemuck::bytes_of(self) == bytemuck::bytes_of(other)
    }
}

impl Eq for GpuRecord {}

impl GpuRecord {
    /// The record of a GPU at table creation: Healthy, heartbeat at the epoch.
    pub fn initial() -> Self {
        GpuRecord {
            temperature_c: f32::NAN,
            ..GpuRecord::zeroed()
        }
    }

    /// The recorded state.
    pub fn state(&self) -> GpuState {
        GpuState::from_u8(u8::try_from(self.state).unwrap_or(u8::MAX))
    }

    /// The temperature, if known.
    pub fn temperature(&self) -> Option<f32> {
        (!self.temperature_c.is_nan()).then_some(self.temperature_c)
    }

    /// The last heartbeat as a duration since the epoch.
    pub fn last_heartbeat(&self) -> Duration {
        Duration::from_nanos(self.last_heartbeat_ns)
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Consecutive failures reached a threshold (or a probe failed while Recovering).
    Failures,
    /// The error-rate EWMA reached a threshold.
    ErrorRate,
    /// Consecutive successes reached `recover_after_successes`.
    Successes,
    /// Heartbeats resumed (`recover_after_heartbeats` of them).
    Heartbeats,
    /// No heartbeat within `heartbeat_timeout`.
    MissedHeartbeats,
    /// [`HealthTable::mark_unhealthy`] (e.g. a device error).
    Forced,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Failures => "consecutive failures",
            Cause::ErrorRate => "error rate",
            Cause::Successes => "consecutive successes",
            Cause::Heartbeats => "heartbeats resumed",
            Cause::MissedHeartbeats => "missed heartbeats",
            Cause::Forced => "marked unhealthy",
        })
    }
}

/// One state change of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The GPU.
    pub gpu: GpuId,
    /// The state before.
    pub from: GpuState,
    /// The state after.
    pub to: GpuState,
    /// Why.
    pub cause: Cause,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {} ({})",
            self.gpu, self.from, self.to, self.cause
        )
    }
}

/// How often each `from -> to` transition happened (exact, monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransitionCounts {
    counts: [[u64; 4]; 4],
}

impl TransitionCounts {
    /// Transitions from `from` to `to`.
    pub fn get(&self, from: GpuState, to: GpuState) -> u64 {
        self.counts[from as usize][to as usize]
    }

    /// Transitions into `state` from any other state.
    pub fn entered(&self, state: GpuState) -> u64 {
        self.counts.iter().map(|row| row[state as usize]).sum()
    }

    /// Failovers: transitions into Unhealthy.
    pub fn failovers(&self) -> u64 {
        self.entered(GpuState::Unhealthy)
    }

    /// Recoveries: Recovering -> Healthy.
    pub fn recoveries(&self) -> u64 {
        self.get(GpuState::Recovering, GpuState::Healthy)
    }

    /// All transitions.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    fn add(&mut self, other: &TransitionCounts) {
        for (a, b) in self
            .counts
            .iter_mut()
            .flatten()
            .zip(other.counts.iter().flatten())
        {
            *a += b;
        }
    }
}

/// Errors of the health table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthError {
    /// The GPU is not in the table.
    UnknownGpu {
        /// The offending id.
        gpu: GpuId,
        /// How many GPUs the table has.
        gpus: usize,
    },
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::UnknownGpu { gpu, gpus } => {
                write!(f, "unknown {gpu}: the health table has {gpus} gpus")
            }
        }
    }
}

impl std::error::Error for HealthError {}

/// An input to the state machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Event {
    Success { latency_ns: u64 },
    Failure,
    Heartbeat { now_ns: u64 },
    Check { now_ns: u64 },
    Forced,
}

/// Applies `event` to `rec` (counters, EWMAs, state) and returns the state change, if any.
///
/// At most one state change per event; the nominal cycle is Healthy -> Degraded -> Unhealthy
/// -> Recovering -> Healthy, with shortcuts to Unhealthy (forced, heartbeat timeout, failed
/// probe) and Degraded -> Healthy (recovered without failing over).
pub(crate) fn step(
    c: &HealthConfig,
    rec: &mut GpuRecord,
    event: Event,
) -> Option<(GpuState, Cause)> {
    use GpuState::*;
    let state = rec.state();
    let a = c.ewma_alpha;
    let next = match event {
        Event::Success { latency_ns } => {
            rec.successes = rec.successes.wrapping_add(1);
            rec.consecutive_successes = rec.consecutive_successes.saturating_add(1);
            rec.consecutive_failures = 0;
            rec.error_rate *= 1.0 - a;
            let l = latency_ns as f64;
            // The first success sets the average (a 0 ns sample must not look like "no sample
            // yet" to the next one).
            rec.latency_ewma_ns = if rec.successes == 1 {
                l
            } else {
                rec.latency_ewma_ns + a * (l - rec.latency_ewma_ns)
            };
            let enough = rec.consecutive_successes >= c.recover_after_successes;
            match state {
                Degraded if enough && rec.error_rate < c.degraded_error_rate => {
                    Some((Healthy, Cause::Successes))
                }
                Recovering if enough => Some((Healthy, Cause::Successes)),
                _ => None,
            }
        }
        Event::Failure => {
            rec.failures = rec.failures.wrapping_add(1);
            rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
            rec.consecutive_successes = 0;
            rec.error_rate += a * (1.0 - rec.error_rate);
            // In floating point the EWMA stops moving once alpha * (1 - r) is below half an ULP
            // of r (2^-54), i.e. at 1 - r of about 2^-54 / alpha (1 - 2^-52 for alpha 0.2,
            // 1 - 1.1e-15 for 0.05), which would make an `unhealthy_error_rate` of 1.0
            // unreachable: snap it from four times that distance (alpha is at least 1e-9, so
            // that is at most 2.2e-7).
            if 1.0 - rec.error_rate <= f64::EPSILON / a {
                rec.error_rate = 1.0;
            }
            match state {
                Healthy if rec.consecutive_failures >= c.degrade_after_failures => {
                    Some((Degraded, Cause::Failures))
                }
                Healthy if rec.error_rate >= c.degraded_error_rate => {
                    Some((Degraded, Cause::ErrorRate))
                }
                Degraded if rec.consecutive_failures >= c.unhealthy_after_failures => {
                    Some((Unhealthy, Cause::Failures))
                }
                Degraded if rec.error_rate >= c.unhealthy_error_rate => {
                    Some((Unhealthy, Cause::ErrorRate))
                }
                Recovering => Some((Unhealthy, Cause::Failures)),
                _ => None,
            }
        }
        Event::Heartbeat { now_ns } => {
            let previous = rec.last_heartbeat_ns;
            rec.last_heartbeat_ns = previous.max(now_ns);
            if state == Unhealthy && now_ns > previous {
                // Only a heartbeat newer than the last one counts toward recovery (a late or
                // duplicate one says nothing new), and a silence of `heartbeat_timeout` since
                // the last one restarts the count even if no `check_heartbeats` ran during it.
                if c.is_silent(now_ns - previous) {
                    rec.heartbeats_since_unhealthy = 0;
                }
                rec.heartbeats_since_unhealthy = rec.heartbeats_since_unhealthy.saturating_add(1);
                (rec.heartbeats_since_unhealthy >= c.recover_after_heartbeats)
                    .then_some((Recovering, Cause::Heartbeats))
            } else {
                None
            }
        }
        Event::Check { now_ns } => {
            let silent = c.is_silent(now_ns.saturating_sub(rec.last_heartbeat_ns));
            if !silent {
                None
            } else if state == Unhealthy {
                // Heartbeats must come back without another timeout before recovery.
                rec.heartbeats_since_unhealthy = 0;
                None
            } else {
                Some((Unhealthy, Cause::MissedHeartbeats))
            }
        }
        Event::Forced => {
            rec.failures = rec.failures.wrapping_add(1);
            rec.consecutive_successes = 0;
            if state == Unhealthy {
                // Restart the recovery countdown.
                rec.heartbeats_since_unhealthy = 0;
                None
            } else {
                Some((Unhealthy, Cause::Forced))
            }
        }
    };
    if let Some((to, _)) = next {
        rec.state = to as u32;
        rec.state_changes = rec.state_changes.wrapping_add(1);
        match to {
            Unhealthy => rec.heartbeats_since_unhealthy = 0,
            Recovering => {
                rec.consecutive_failures = 0;
                rec.consecutive_successes = 0;
                rec.error_rate = 0.0;
            }
            Healthy | Degraded => {}
        }
    }
    next
}

/// One GPU's slot: the hot state byte, the record and the transition counters.
struct Slot {
    /// Mirror of `record.state` for the one-load `is_usable` (written under the record's
    /// writer lock).
    state: AtomicU8,
    record: SeqLock<GpuRecord>,
    /// `transitions[from * 4 + to]`.
    transitions: [AtomicU64; 16],
}

/// Per-GPU health: a seqlock'd [`GpuRecord`] per GPU, a one-atomic-load
/// [`is_usable`](HealthTable::is_usable) for routers, and the failover/recovery state machine.
///
/// See the [crate documentation](crate) for the state machine, guarantees and orderings.
pub struct HealthTable {
    slots: Box<[CachePadded<Slot>]>,
    config: HealthConfig,
    epoch: Instant,
}

impl fmt::Debug for HealthTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states: Vec<GpuState> = (0..self.slots.len())
            .map(|g| self.state(GpuId(g as u32)))
            .collect();
        f.debug_struct("HealthTable")
            .field("states", &states)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HealthTable {
    /// A table of `gpus` Healthy GPUs whose epoch (time 0, counted as everyone's first
    /// heartbeat) is now.
    pub fn new(gpus: usize, config: HealthConfig) -> Self {
        Self::with_epoch(gpus, config, Instant::now())
    }

    /// A table whose epoch is `epoch` (for tests and simulations with a synthetic clock).
    /// Times passed to the table before `epoch` count as `epoch`.
    pub fn with_epoch(gpus: usize, config: HealthConfig, epoch: Instant) -> Self {
        let slots = (0..gpus)
            .map(|_| {
                CachePadded::new(Slot {
                    state: AtomicU8::new(GpuState::Healthy as u8),
                    record: SeqLock::new(GpuRecord::initial()),
                    transitions: std::array::from_fn(|_| AtomicU64::new(0)),
                })
            })
            .collect();
        Self {
            slots,
            config,
            epoch,
        }
    }

    /// The number of GPUs.
    pub fn gpus(&self) -> usize {
        self.slots.len()
    }

    /// The configuration.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Time 0 of the records' timestamps.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn slot(&self, gpu: GpuId) -> Result<&Slot, HealthError> {
        self.slots
            .get(gpu.index())
            .map(|s| &**s)
            .ok_or(HealthError::UnknownGpu {
                gpu,
                gpus: self.slots.len(),
            })
    }

    /// `true` if routers may send work to `gpu`: Healthy, Degraded or Recovering (a
    /// Recovering GPU is usable as a probe: its next failure fails it over again, and enough
    /// successes restore it). One atomic load. `false` for an unknown GPU.
    #[inline]
    pub fn is_usable(&self, gpu: GpuId) -> bool {
        self.state(gpu).is_usable()
    }

    /// The current state (one atomic load); Unhealthy for an unknown GPU.
    #[inline]
    pub fn state(&self, gpu: GpuId) -> GpuState {
        match self.slots.get(gpu.index()) {
            // Acquire: pairs with the Release store in `apply`, so the transition counter
            // incremented before that store is visible to a later `transitions()` read.
            Some(s) => GpuState::from_u8(s.state.load(Ordering::Acquire)),
            None => GpuState::Unhealthy,
        }
    }

    /// A consistent snapshot of `gpu`'s record (seqlock read: never torn).
    pub fn record(&self, gpu: GpuId) -> Result<GpuRecord, HealthError> {
        Ok(self.slot(gpu)?.record.read())
    }

    /// How often each transition happened on `gpu`.
    pub fn transitions(&self, gpu: GpuId) -> Result<TransitionCounts, HealthError> {
        let s = self.slot(gpu)?;
        let mut counts = TransitionCounts::default();
        for (i, c) in s.transitions.iter().enumerate() {
            // Relaxed: monotonic counters; see `state` for the ordering with the state byte.
            counts.counts[i / 4][i % 4] = c.load(Ordering::Relaxed);
        }
        Ok(counts)
    }

    /// Transition counts summed over all GPUs.
    pub fn total_transitions(&self) -> TransitionCounts {
        let mut total = TransitionCounts::default();
        for g in 0..self.slots.len() {
            if let Ok(c) = self.transitions(GpuId(g as u32)) {
                total.add(&c);
            }
        }
        total
    }

    /// The usable GPUs right now (one state load each).
    pub fn usable_gpus(&self) -> impl Iterator<Item = GpuId> + '_ {
        (0..self.slots.len() as u32)
            .map(GpuId)
            .filter(|&g| self.is_usable(g))
    }

    /// Runs one event through the state machine under `gpu`'s writer lock.
    fn apply(&self, gpu: GpuId, event: Event) -> Result<Option<Transition>, HealthError> {
        let s = self.slot(gpu)?;
        Ok(s.record.update(|rec| {
            let from = rec.state();
            let (to, cause) = step(&self.config, rec, event)?;
            // Relaxed: a counter; made visible with the state by the Release store below.
            s.transitions[from as usize * 4 + to as usize].fetch_add(1, Ordering::Relaxed);
            // Release: publishes the counter increment above to `state()`'s Acquire load.
            // Stored under the record's writer lock, so state stores follow the record's
            // write order (the byte never disagrees with the record once the write ends).
            s.state.store(to as u8, Ordering::Release);
            Some(Transition {
                gpu,
                from,
                to,
                cause,
            })
        }))
    }

    /// Reports a successful request that took `latency`.
    pub fn report_success(
        &self,
        gpu: GpuId,
        latency: Duration,
    ) -> Result<Option<Transition>, HealthError> {
        let latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.apply(gpu, Event::Success { latency_ns })
    }

    /// Reports a failed request.
    pub fn report_failure(&self, gpu: GpuId) -> Result<Option<Transition>, HealthError> {
        self.apply(gpu, Event::Failure)
    }

    /// Records a heartbeat from `gpu` at `now` (the monitor's clock; never read inside).
    pub fn heartbeat(&self, gpu: GpuId, now: Instant) -> Result<Option<Transition>, HealthError> {
        let now_ns = self.nanos(now);
        self.apply(gpu, Event::Heartbeat { now_ns })
    }

    /// Marks `gpu` Unhealthy at once (e.g. a device error), counting a failure; if it already
    /// is, restarts its recovery countdown.
    pub fn mark_unhealthy(&self, gpu: GpuId) -> Result<Option<Transition>, HealthError> {
        self.apply(gpu, Event::Forced)
    }

    /// Updates the resource readings of `gpu` (no state change). A NaN temperature reads as
    /// unknown, as `None` does.
    pub fn report_resources(
        &self,
        gpu: GpuId,
        memory_used_bytes: u64,
        temperature_c: Option<f32>,
    ) -> Result<(), HealthError> {
        self.slot(gpu)?.record.update(|rec| {
            rec.memory_used_bytes = memory_used_bytes;
            // Any NaN reads as unknown; store the one NaN `initial` uses, so that equal
            // readings give equal records.
            rec.temperature_c = temperature_c.filter(|t| !t.is_nan()).unwrap_or(f32::NAN);
        });
        Ok(())
    }

    /// The monitor's periodic check: every usable GPU silent for `heartbeat_timeout` at `now`
    /// becomes Unhealthy (and an Unhealthy one restarts its recovery countdown). Returns the
    /// transitions made. Skips the writer lock for GPUs whose heartbeat is fresh.
    pub fn check_heartbeats(&self, now: Instant) -> Vec<Transition> {
        let now_ns = self.nanos(now);
        let mut out = Vec::new();
        for g in 0..self.slots.len() {
            let gpu = GpuId(g as u32);
            let rec = self.slots[g].record.read();
            if !self
                .config
                .is_silent(now_ns.saturating_sub(rec.last_heartbeat_ns))
            {
                continue;
            }
            if let Ok(Some(t)) = self.apply(gpu, Event::Check { now_ns }) {
                out.push(t);
            }
        }
        out
    }
}
