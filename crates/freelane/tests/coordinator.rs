//! The coordinator's rules: admission, failover, retry, stealing, cancellation, deadlines,
//! shutdown, and conservation under stress (every request exactly one outcome, load back to zero).
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use freelane::{
    Batch, BatchConfig, ConfigError, Coordinator, ErrorKind, ExecError, Executor, GpuId, Handle,
    HealthConfig, Outcome, Policy, Rejected, Request,
};

type Body = dyn Fn(GpuId, &mut Batch<u64, (u32, u64)>) -> Result<(), ExecError> + Send + Sync;
type Delay = dyn Fn(GpuId) -> Option<Duration> + Send + Sync;

/// A fake GPU: optional per-GPU delay, then a synchronous body.
struct Fake {
    body: Box<Body>,
    delay: Box<Delay>,
    runs: AtomicUsize,
}

impl Fake {
    fn new(
        body: impl Fn(GpuId, &mut Batch<u64, (u32, u64)>) -> Result<(), ExecError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            body: Box::new(body),
            delay: Box::new(|_| None),
            runs: AtomicUsize::new(0),
        }
    }
    fn with_delay(mut self, d: impl Fn(GpuId) -> Option<Duration> + Send + Sync + 'static) -> Self {
        self.delay = Box::new(d);
        self
    }
    fn ok() -> Self {
        Self::new(|gpu, b| {
            double(gpu, b);
            Ok(())
        })
    }
}

fn double(gpu: GpuId, b: &mut Batch<u64, (u32, u64)>) {
    b.finish_all(|e| (gpu.0, e.payload().copied().unwrap_or(0) * 2));
}

impl Executor for Fake {
    type Input = u64;
    type Output = (u32, u64);

    async fn run(&self, gpu: GpuId, batch: &mut Batch<u64, (u32, u64)>) -> Result<(), ExecError> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = (self.delay)(gpu) {
            tokio::time::sleep(d).await;
        }
        (self.body)(gpu, batch)
    }
}

fn batch_cfg(size: usize, wait: Duration) -> BatchConfig {
    BatchConfig::builder()
        .max_batch_size(size)
        .max_wait(wait)
        .build()
        .unwrap()
}

/// Drives every lane of a manual coordinator until nothing is queued, finishing with `double`.
fn drive_all(c: &Coordinator<Fake>) {
    let gpus = c.config().gpus();
    let mut idle_rounds = 0;
    while c.queued() > 0 {
        let mut any = false;
        for g in 0..gpus {
            if let Some(mut b) = c.try_next_batch(GpuId(g as u32)) {
                double(GpuId(g as u32), &mut b);
                c.complete(b, Ok(()));
                any = true;
            }
        }
        if !any {
            idle_rounds += 1;
            assert!(idle_rounds < 1000, "work stranded: {:?}", c.stats());
        }
    }
}

fn assert_load_zero(c: &Coordinator<Fake>) {
    for g in 0..c.config().gpus() {
        assert_eq!(c.load_board().in_flight(GpuId(g as u32)), 0, "gpu {g} load");
        assert_eq!(c.load_board().cost(GpuId(g as u32)), 0, "gpu {g} cost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_requests_complete_through_workers() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(4)
        .batch(batch_cfg(8, Duration::from_millis(1)))
        .build()
        .unwrap();
    let handles: Vec<_> = (0..200u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Outcome::Completed((_, v)) => assert_eq!(v, i as u64 * 2),
            other => panic!("request {i}: {other:?}"),
        }
    }
    let s = c.stats();
    assert_eq!(s.completed, 200);
    assert_eq!(s.accepted, 200);
    assert!(s.gpus.iter().map(|g| g.batches).sum::<u64>() >= 25);
    assert!(c.metrics().end_to_end.snapshot().count() == 200);
    assert!(c.metrics().batch_size.snapshot().max() <= 8);
    assert!(c
        .registry()
        .render_prometheus()
        .contains("freelane_request_seconds_count 200"));
    c.shutdown().await;
    assert_load_zero(&c);
}

#[test]
fn overloaded_when_the_lane_is_full_carries_a_retry_hint() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(1)
        .max_queue(2)
        .build_manual()
        .unwrap();
    let _a = c.submit(Request::new(1, 1)).unwrap();
    let _b = c.submit(Request::new(2, 1)).unwrap();
    match c.submit(Request::new(3, 1)) {
        Err(Rejected::Overloaded { retry_after }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(c.stats().rejected, 1);
    assert_eq!(
        c.load_board().in_flight(GpuId(0)),
        2,
        "the rejected request holds no load"
    );
    drive_all(&c);
    assert!(
        c.submit(Request::new(4, 1)).is_ok(),
        "capacity frees when batches are taken"
    );
}

#[test]
fn unavailable_when_no_gpu_is_usable() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .build_manual()
        .unwrap();
    c.mark_unhealthy(GpuId(0));
    assert!(c.submit(Request::new(1, 1)).is_ok());
    c.mark_unhealthy(GpuId(1));
    assert_eq!(
        c.submit(Request::new(1, 1)).unwrap_err(),
        Rejected::Unavailable
    );
}

#[test]
fn too_large_request_is_rejected() {
    let cfg = BatchConfig::builder()
        .max_batch_tokens(100)
        .build()
        .unwrap();
    let c = Coordinator::builder(Fake::ok())
        .batch(cfg)
        .build_manual()
        .unwrap();
    assert_eq!(
        c.submit(Request::new(1, 101)).unwrap_err(),
        Rejected::TooLarge {
            tokens: 101,
            limit: 100
        }
    );
    assert!(c.submit(Request::new(1, 100)).is_ok());
}

#[test]
fn builder_rejects_bad_settings_with_errors_not_panics() {
    let b = || Coordinator::builder(Fake::ok());
    assert_eq!(b().gpus(0).build_manual().unwrap_err(), ConfigError::NoGpus);
    assert_eq!(
        b().max_queue(0).build_manual().unwrap_err(),
        ConfigError::ZeroQueue
    );
    assert_eq!(
        b().request_timeout(Some(Duration::ZERO))
            .build_manual()
            .unwrap_err(),
        ConfigError::ZeroRequestTimeout
    );
    assert_eq!(
        b().exec_timeout(Some(Duration::ZERO))
            .build_manual()
            .unwrap_err(),
        ConfigError::ZeroExecTimeout
    );
    assert_eq!(
        b().idle_interval(Duration::ZERO)
            .build_manual()
            .unwrap_err(),
        ConfigError::ZeroIdleInterval
    );
    assert!(matches!(
        b().gpus(1 << 20).build_manual(),
        Err(ConfigError::TooManyGpus(_))
    ));
    assert_eq!(
        b().build().unwrap_err(),
        ConfigError::NoRuntime,
        "no tokio runtime here"
    );
    for e in [
        ConfigError::NoGpus,
        ConfigError::NoRuntime,
        ConfigError::ZeroQueue,
    ] {
        assert!(e.to_string().starts_with(|c: char| c.is_lowercase()));
    }
    for r in [
        Rejected::Unavailable,
        Rejected::ShuttingDown,
        Rejected::Overloaded {
            retry_after: Duration::from_millis(5),
        },
    ] {
        assert!(r.to_string().starts_with(|c: char| c.is_lowercase()));
    }
}

#[test]
fn failover_loses_nothing() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(3)
        .policy(Policy::RoundRobin)
        .build_manual()
        .unwrap();
    let handles: Vec<_> = (0..30u64)
        .map(|i| c.submit(Request::new(i, 2)).unwrap())
        .collect();
    let before = c.stats().gpus[0].queued;
    assert!(before > 0);
    c.mark_unhealthy(GpuId(0));
    let s = c.stats();
    assert_eq!(s.gpus[0].queued, 0, "the failed lane was drained");
    assert_eq!(s.gpus[0].moved_out, before as u64);
    assert_eq!(s.gpus[0].in_flight, 0, "load moved with the requests");
    assert_eq!(s.gpus[1].queued + s.gpus[2].queued, 30);
    drive_all(&c);
    for (i, mut h) in handles.into_iter().enumerate() {
        match h.try_outcome() {
            Some(Outcome::Completed((gpu, v))) => {
                assert_ne!(gpu, 0, "nothing ran on the failed gpu");
                assert_eq!(v, 2 * i as u64);
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_load_zero(&c);
}

#[test]
fn failover_with_no_usable_gpu_fails_clearly() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(1)
        .build_manual()
        .unwrap();
    let mut h = c.submit(Request::new(1, 1)).unwrap();
    c.mark_unhealthy(GpuId(0));
    match h.try_outcome() {
        Some(Outcome::Failed(e)) => assert_eq!(e.kind(), ErrorKind::Unavailable),
        other => panic!("{other:?}"),
    }
    assert_load_zero(&c);
}

#[test]
fn failed_batch_is_retried_once_elsewhere() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .policy(Policy::RoundRobin)
        .build_manual()
        .unwrap();
    let handles: Vec<_> = (0..6u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    let b = c.try_next_batch(GpuId(0)).unwrap();
    let n = b.active();
    assert_eq!(n, 3);
    c.complete(b, Err(ExecError::new("cuda error: illegal address")));
    let s = c.stats();
    assert_eq!(s.gpus[0].failed_batches, 1);
    assert_eq!(s.gpus[0].retried, 3);
    assert_eq!(
        s.gpus[1].queued, 6,
        "retried requests moved to the other gpu"
    );
    drive_all(&c);
    for mut h in handles {
        // Completed by gpu 1, or by gpu 0 stealing back (one failure leaves it usable).
        assert!(matches!(h.try_outcome(), Some(Outcome::Completed(_))));
    }
    assert_load_zero(&c);
}

#[test]
fn retry_happens_only_once_then_fails_with_the_error() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .build_manual()
        .unwrap();
    let mut h = c.submit(Request::new(1, 1)).unwrap();
    for _ in 0..2 {
        let b = (0..2).find_map(|g| c.try_next_batch(GpuId(g))).unwrap();
        c.complete(b, Err(ExecError::new("device lost")));
    }
    match h.try_outcome() {
        Some(Outcome::Failed(e)) => {
            assert_eq!(e.message(), "device lost");
            assert_eq!(e.kind(), ErrorKind::Executor);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.queued(), 0);
    assert_load_zero(&c);
}

#[test]
fn failed_batch_without_retry_fails_at_once() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .retry_on_failure(false)
        .build_manual()
        .unwrap();
    let mut h = c.submit(Request::new(1, 1)).unwrap();
    let b = (0..2).find_map(|g| c.try_next_batch(GpuId(g))).unwrap();
    c.complete(b, Err(ExecError::new("oom")));
    assert!(matches!(h.try_outcome(), Some(Outcome::Failed(e)) if e.message() == "oom"));
    assert_load_zero(&c);
}

#[test]
fn unfinished_entries_are_failed_not_dropped() {
    let c = Coordinator::builder(Fake::ok()).build_manual().unwrap();
    let mut h1 = c.submit(Request::new(1, 1)).unwrap();
    let mut h2 = c.submit(Request::new(2, 1)).unwrap();
    let mut b = c.try_next_batch(GpuId(0)).unwrap();
    b.finish(0, (0, 2)).unwrap();
    c.complete(b, Ok(()));
    assert!(matches!(h1.try_outcome(), Some(Outcome::Completed((0, 2)))));
    assert!(
        matches!(h2.try_outcome(), Some(Outcome::Failed(e)) if e.kind() == ErrorKind::Unfinished)
    );
    assert_eq!(freelane::batch::dropped_unanswered(), 0);
}

#[test]
fn cancelled_request_is_not_executed() {
    let c = Coordinator::builder(Fake::ok()).build_manual().unwrap();
    let h1 = c.submit(Request::new(1, 1)).unwrap();
    let mut h2 = c.submit(Request::new(2, 1)).unwrap();
    drop(h1);
    let mut b = c.try_next_batch(GpuId(0)).unwrap();
    let payloads: Vec<u64> = b.iter().map(|(_, e)| *e.payload().unwrap()).collect();
    assert_eq!(payloads, vec![2]);
    double(GpuId(0), &mut b);
    c.complete(b, Ok(()));
    assert!(matches!(h2.try_outcome(), Some(Outcome::Completed((0, 4)))));
    assert_eq!(c.stats().cancelled, 1);
    assert_load_zero(&c);
}

#[test]
fn request_timeout_answers_timed_out_without_executing() {
    let c = Coordinator::builder(Fake::ok())
        .request_timeout(Some(Duration::from_millis(1)))
        .build_manual()
        .unwrap();
    let mut h = c.submit(Request::new(1, 1)).unwrap();
    thread::sleep(Duration::from_millis(5));
    if let Some(b) = c.try_next_batch(GpuId(0)) {
        assert!(
            b.is_empty(),
            "an expired request never reaches the executor"
        );
        c.complete(b, Ok(()));
    }
    assert!(matches!(h.try_outcome(), Some(Outcome::TimedOut)));
    assert_eq!(c.stats().timed_out, 1);
    assert_load_zero(&c);
}

#[test]
fn work_stealing_takes_from_the_longest_lane_and_moves_the_load() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(3)
        .policy(Policy::RoundRobin)
        .build_manual()
        .unwrap();
    let _h: Vec<_> = (0..9u64)
        .map(|i| c.submit(Request::new(i, 5)).unwrap())
        .collect();
    // Empty lane 2 first, then let it steal.
    let mut own = c.try_next_batch(GpuId(2)).unwrap();
    double(GpuId(2), &mut own);
    c.complete(own, Ok(()));
    let stolen = c
        .try_next_batch(GpuId(2))
        .expect("steals from a non-empty lane");
    assert_eq!(stolen.active(), 3);
    assert_eq!(
        c.load_board().in_flight(GpuId(2)),
        3,
        "load follows the stolen requests"
    );
    assert_eq!(c.stats().gpus[2].stolen_batches, 1);
    let mut stolen = stolen;
    double(GpuId(2), &mut stolen);
    c.complete(stolen, Ok(()));
    drive_all(&c);
    assert_load_zero(&c);
}

#[test]
fn work_stealing_can_be_turned_off() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .policy(Policy::RoundRobin)
        .work_stealing(false)
        .build_manual()
        .unwrap();
    let _h: Vec<_> = (0..2u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    let b = c.try_next_batch(GpuId(1)).unwrap();
    c.complete(b, Ok(()));
    assert!(c.try_next_batch(GpuId(1)).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_panic_is_caught_and_the_batch_retried() {
    let exec = Fake::new(|gpu, b| {
        if gpu.0 == 0 {
            panic!("kernel exploded");
        }
        double(gpu, b);
        Ok(())
    });
    let c = Coordinator::builder(exec)
        .gpus(2)
        .policy(Policy::RoundRobin)
        .build()
        .unwrap();
    let handles: Vec<_> = (0..10u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    for h in handles {
        assert!(matches!(h.await, Outcome::Completed((1, _))));
    }
    assert!(c.stats().gpus[0].failed_batches >= 1);
    c.shutdown().await;
    assert_load_zero(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_steals_from_a_busy_lane() {
    let exec = Fake::ok().with_delay(|g| (g.0 == 0).then_some(Duration::from_millis(100)));
    let c = Coordinator::builder(exec)
        .gpus(2)
        .policy(Policy::RoundRobin)
        .batch(batch_cfg(1, Duration::ZERO))
        .idle_interval(Duration::from_millis(2))
        .build()
        .unwrap();
    let handles: Vec<_> = (0..20u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    let mut on_gpu1 = 0;
    for h in handles {
        if let Outcome::Completed((1, _)) = h.await {
            on_gpu1 += 1;
        }
    }
    let s = c.stats();
    assert!(s.gpus[1].stolen_batches > 0, "{s:?}");
    assert!(
        on_gpu1 > 10,
        "the fast gpu took work queued on the slow one ({on_gpu1})"
    );
    c.shutdown().await;
    assert_load_zero(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_heartbeat_fails_over_the_queued_requests() {
    // GPU 0 hangs in its first batch; the monitor notices the silence and moves its queue.
    let exec = Fake::ok().with_delay(|g| (g.0 == 0).then_some(Duration::from_secs(5)));
    let health = HealthConfig::builder()
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let c = Coordinator::builder(exec)
        .gpus(2)
        .policy(Policy::RoundRobin)
        .batch(batch_cfg(1, Duration::ZERO))
        .health(health)
        .work_stealing(false)
        .build()
        .unwrap();
    let first = c.submit(Request::new(0, 1)).unwrap(); // lands on gpu 0, which hangs
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Both the hung lane and the healthy one receive more work.
    let more: Vec<_> = (1..9u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    let t = Instant::now();
    for h in more {
        match h.await {
            Outcome::Completed((gpu, _)) => assert_eq!(gpu, 1),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "moved before the hang ended"
    );
    assert!(c.health().total_transitions().failovers() >= 1);
    assert!(
        matches!(first.await, Outcome::Completed((0, 0))),
        "the hung batch still finishes"
    );
    c.shutdown().await;
    assert_load_zero(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_brings_the_lane_back() {
    let health = HealthConfig::builder()
        .heartbeat_timeout(Duration::from_millis(100))
        .recover_after_heartbeats(2)
        .build()
        .unwrap();
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .health(health)
        .build()
        .unwrap();
    c.mark_unhealthy(GpuId(0));
    assert!(!c.health().is_usable(GpuId(0)));
    let t = Instant::now();
    while !c.health().is_usable(GpuId(0)) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "gpu 0 never recovered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Usable again: round-robin sends it work and it completes it.
    let c2 = &c;
    let mut ran_on_0 = false;
    for i in 0..20u64 {
        if let Outcome::Completed((0, _)) = c2.submit(Request::new(i, 1)).unwrap().await {
            ran_on_0 = true;
        }
    }
    assert!(ran_on_0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_queued_requests_and_rejects_new_ones() {
    let exec = Fake::ok().with_delay(|_| Some(Duration::from_millis(5)));
    let c = Coordinator::builder(exec)
        .gpus(2)
        .batch(batch_cfg(2, Duration::ZERO))
        .build()
        .unwrap();
    let handles: Vec<_> = (0..40u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    c.shutdown().await;
    assert_eq!(
        c.submit(Request::new(0, 1)).unwrap_err(),
        Rejected::ShuttingDown
    );
    for h in handles {
        assert!(matches!(h.await, Outcome::Completed(_)));
    }
    assert_load_zero(&c);
}

#[test]
fn manual_shutdown_fails_everything_queued() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .build_manual()
        .unwrap();
    let handles: Vec<_> = (0..10u64)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    c.shutdown_now();
    for mut h in handles {
        assert!(
            matches!(h.try_outcome(), Some(Outcome::Failed(e)) if e.kind() == ErrorKind::ShuttingDown)
        );
    }
    assert_eq!(
        c.submit(Request::new(0, 1)).unwrap_err(),
        Rejected::ShuttingDown
    );
    assert_load_zero(&c);
}

/// xorshift, shared across threads through an atomic (good enough for fault injection).
fn random(state: &AtomicU64) -> u64 {
    let mut x = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const STRESS_PER_THREAD: u64 = if cfg!(miri) { 20 } else { 3_000 };

/// Outcome bookkeeping shared by the stress tests: one outcome per submitted id (each handle
/// resolves once by construction, since answering takes the handle's sender, so this checks
/// the tests' own bookkeeping), completed values are the right ones, and the kinds are counted
/// for the callers' checks against the coordinator's statistics.
fn check_outcomes(outcomes: Vec<(u64, Outcome<(u32, u64)>)>, submitted: u64) -> [u64; 4] {
    let mut seen = HashSet::new();
    let mut kinds = [0u64; 4];
    for (id, o) in outcomes {
        assert!(
            seen.insert(id),
            "request id {id} collected twice by the test"
        );
        match o {
            Outcome::Completed((_, v)) => {
                assert_eq!(v, id * 2);
                kinds[0] += 1;
            }
            Outcome::TimedOut => kinds[1] += 1,
            Outcome::Cancelled => kinds[2] += 1,
            Outcome::Failed(_) => kinds[3] += 1,
        }
    }
    assert_eq!(
        seen.len() as u64,
        submitted,
        "every accepted request has an outcome"
    );
    kinds
}

/// 8 submitting threads on plain threads (no runtime), 4 GPUs driven by the same threads with a
/// fake executor that fails randomly (health transitions, failover and retries happen): every
/// accepted request gets exactly one outcome and the load returns to zero.
#[test]
#[cfg_attr(miri, ignore)]
fn stress_manual_random_failures_every_request_one_outcome() {
    let health = HealthConfig::builder()
        .degrade_after_failures(2)
        .unhealthy_after_failures(3)
        .recover_after_heartbeats(2)
        .recover_after_successes(2)
        .build()
        .unwrap();
    let c = Arc::new(
        Coordinator::builder(Fake::ok())
            .gpus(4)
            .policy(Policy::PowerOfTwoChoices)
            .batch(batch_cfg(16, Duration::ZERO))
            .max_queue(1 << 20)
            .health(health)
            .build_manual()
            .unwrap(),
    );
    let rng = Arc::new(AtomicU64::new(42));
    let rejected = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (c, rng, rejected) = (Arc::clone(&c), Arc::clone(&rng), Arc::clone(&rejected));
            thread::spawn(move || {
                let mut pending: Vec<(u64, Handle<(u32, u64)>)> = Vec::new();
                let mut done = Vec::new();
                for i in 0..STRESS_PER_THREAD {
                    let id = t * STRESS_PER_THREAD + i;
                    let mut req = Request::new(id, 1 + id % 7);
                    if id % 97 == 0 {
                        req = req.with_deadline(Instant::now()); // expires at once
                    }
                    match c.submit(req) {
                        Ok(h) => {
                            if id % 89 == 0 {
                                drop(h); // cancelled: its outcome is never observed
                                done.push((id, Outcome::Cancelled));
                            } else {
                                pending.push((id, h));
                            }
                        }
                        Err(_) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let r = random(&rng);
                    let g = GpuId((r % 4) as u32);
                    if r % 13 == 0 {
                        c.heartbeat(g); // lets failed GPUs recover
                    }
                    if let Some(mut b) = c.try_next_batch(g) {
                        if (r >> 8) % 10 == 0 {
                            c.complete(b, Err(ExecError::new("injected failure")));
                        } else {
                            double(g, &mut b);
                            c.complete(b, Ok(()));
                        }
                    }
                    pending.retain_mut(|(id, h)| match h.try_outcome() {
                        Some(o) => {
                            done.push((*id, o));
                            false
                        }
                        None => true,
                    });
                }
                (pending, done)
            })
        })
        .collect();
    let mut pending = Vec::new();
    let mut outcomes = Vec::new();
    for t in threads {
        let (p, d) = t.join().unwrap();
        pending.extend(p);
        outcomes.extend(d);
    }
    // Drain what is left (some GPUs may be unhealthy: a usable one steals their lanes).
    for g in 0..4 {
        c.heartbeat(GpuId(g));
        c.heartbeat(GpuId(g));
    }
    let mut rounds = 0;
    while c.queued() > 0 && rounds < 100_000 {
        rounds += 1;
        for g in 0..4 {
            if let Some(mut b) = c.try_next_batch(GpuId(g)) {
                double(GpuId(g), &mut b);
                c.complete(b, Ok(()));
            }
        }
    }
    c.shutdown_now(); // anything still stranded would be answered here (and counted below)
    for (id, mut h) in pending {
        let o = h
            .try_outcome()
            .unwrap_or_else(|| panic!("request {id} has no outcome"));
        outcomes.push((id, o));
    }
    let submitted = 8 * STRESS_PER_THREAD - rejected.load(Ordering::Relaxed);
    let kinds = check_outcomes(outcomes, submitted);
    assert!(kinds[0] > submitted / 2, "{kinds:?}");
    let s = c.stats();
    assert_eq!(s.accepted, submitted);
    assert_eq!(
        s.completed + s.timed_out + s.cancelled + s.failed,
        submitted,
        "{s:?}"
    );
    assert!(s.gpus.iter().map(|g| g.failed_batches).sum::<u64>() > 0);
    assert_eq!(freelane::batch::dropped_unanswered(), 0);
    assert_load_zero(&c);
}

/// The same with real workers (tokio tasks) and 8 submitting OS threads: random executor
/// failures, retries, failover; every request one outcome; load zero after shutdown.
#[test]
#[cfg_attr(miri, ignore)]
fn stress_workers_random_failures_every_request_one_outcome() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rng = Arc::new(AtomicU64::new(7));
    let r2 = Arc::clone(&rng);
    let exec = Fake::new(move |gpu, b| {
        if random(&r2) % 10 == 0 {
            return Err(ExecError::new("injected failure"));
        }
        double(gpu, b);
        Ok(())
    });
    let health = HealthConfig::builder()
        .heartbeat_timeout(Duration::from_millis(50))
        .recover_after_heartbeats(2)
        .build()
        .unwrap();
    let c = Arc::new({
        let _g = rt.enter();
        Coordinator::builder(exec)
            .gpus(4)
            .batch(batch_cfg(16, Duration::from_micros(200)))
            .max_queue(1 << 20)
            .health(health)
            .build()
            .unwrap()
    });
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                let mut hs = Vec::new();
                for i in 0..STRESS_PER_THREAD {
                    let id = t * STRESS_PER_THREAD + i;
                    loop {
                        match c.submit(Request::new(id, 1)) {
                            Ok(h) => {
                                hs.push((id, h));
                                break;
                            }
                            // All GPUs briefly unhealthy: wait for recovery.
                            Err(Rejected::Unavailable) => thread::sleep(Duration::from_millis(1)),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                hs
            })
        })
        .collect();
    let handles: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let outcomes = rt.block_on(async {
        let mut out = Vec::new();
        for (id, h) in handles {
            out.push((id, h.await));
        }
        c.shutdown().await;
        out
    });
    let kinds = check_outcomes(outcomes, 8 * STRESS_PER_THREAD);
    assert!(kinds[0] > 4 * STRESS_PER_THREAD, "{kinds:?}");
    assert_eq!(freelane::batch::dropped_unanswered(), 0);
    assert_load_zero(&c);
    let s = c.stats();
    assert_eq!(
        s.completed + s.failed + s.timed_out + s.cancelled,
        8 * STRESS_PER_THREAD
    );
}

/// A request whose batch failed on one GPU is retried on another, never on the GPU that failed
/// it: here that GPU, still usable after one failure and idle, asks for work first and would
/// steal the retry back from the other lane's front (it did before `Ticket::failed_on`).
#[test]
fn a_retry_is_not_stolen_back_by_the_gpu_that_failed_it() {
    let c = Coordinator::builder(Fake::ok())
        .gpus(2)
        .policy(Policy::RoundRobin)
        .build_manual()
        .unwrap();
    let mut h = c.submit(Request::new(21, 1)).unwrap();
    let first = (0..2).find_map(|g| c.try_next_batch(GpuId(g))).unwrap();
    let failed_on = first.lane() as u32;
    let other = 1 - failed_on;
    c.complete(first, Err(ExecError::new("device lost")));
    assert!(
        c.health().is_usable(GpuId(failed_on)),
        "one failure leaves it usable"
    );
    assert!(
        c.try_next_batch(GpuId(failed_on)).is_none(),
        "the retry stays off gpu {failed_on}"
    );
    let mut retry = c
        .try_next_batch(GpuId(other))
        .expect("the other GPU runs the retry");
    assert_eq!(retry.active(), 1);
    assert_eq!(
        retry.iter().next().unwrap().1.extra().failed_on(),
        Some(GpuId(failed_on))
    );
    double(GpuId(other), &mut retry);
    c.complete(retry, Ok(()));
    assert!(matches!(h.try_outcome(), Some(Outcome::Completed((g, 42))) if g == other));
}
