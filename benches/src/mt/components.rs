//! The trial of every (component, implementation) pair.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

use std::collections::VecDeque;

use freelane::{Coordinator, ExecError, Executor, GpuId, Policy};
use freelane_health::SeqLock;
use freelane_load::LoadBoard;
use freelane_log::{Guard, Overflow};

use super::baseline::{
    HealthRecord, LockedBoard, LockedHealth, LockedHistogram, LockedJsonLayer, LockedQueue,
    MutexCoordinator, Request,
};
use super::driver::{drive, Trial, XorShift};
use super::{Component, Impl, GPUS};

/// Requests taken per batch in `end_to_end` (at most): the freelane coordinator's default.
pub const MAX_BATCH: usize = 32;
/// Load cost (tokens) of one `end_to_end` request.
pub const TOKENS: u64 = 16;
/// Pause between two health-table writes of the `health` writer thread.
pub const HEALTH_WRITE_PERIOD: Duration = Duration::from_micros(20);

/// Runs one trial of `component` in implementation `imp`.
pub fn run(component: Component, imp: Impl, threads: usize, duration: Duration) -> Trial {
    match (component, imp) {
        (Component::Queue, Impl::Mutex) => queue_mutex(threads, duration),
        (Component::Queue, Impl::Freelane) => queue_freelane(threads, duration),
        (Component::Load, Impl::Mutex) => load_mutex(threads, duration),
        (Component::Load, Impl::Freelane) => load_freelane(threads, duration),
        (Component::Health, Impl::Mutex) => health_mutex(threads, duration),
        (Component::Health, Impl::Freelane) => health_freelane(threads, duration),
        (Component::Logger, Impl::Mutex) => logger_mutex(threads, duration),
        (Component::Logger, Impl::Freelane) => logger_freelane(threads, duration),
        (Component::Metrics, Impl::Mutex) => metrics_mutex(threads, duration),
        (Component::Metrics, Impl::Freelane) => metrics_freelane(threads, duration),
        (Component::EndToEnd, Impl::Mutex) => end_to_end_mutex(threads, duration),
        (Component::EndToEnd, Impl::Freelane) => end_to_end_freelane(threads, duration),
    }
}

fn request(id: u64, submitted: Instant) -> Request {
    Request {
        id,
        tokens: 16,
        gpu: 0,
        submitted,
    }
}

/// Emits the benchmark's log event (the same call for both implementations).
#[inline]
pub fn log_event(id: u64, gpu: u32, latency_ns: u64) {
    tracing::info!(
        request = id,
        gpu = gpu,
        tokens = 16u32,
        latency_ns = latency_ns,
        "completed"
    );
}

fn queue_mutex(threads: usize, duration: Duration) -> Trial {
    let q = Arc::new(LockedQueue::<Request>::default());
    drive(threads, duration, move |t| {
        let q = Arc::clone(&q);
        let (mut id, now) = ((t as u64) << 40, Instant::now());
        move || {
            id += 1;
            q.push(request(id, now));
            black_box(q.pop());
        }
    })
}

fn queue_freelane(threads: usize, duration: Duration) -> Trial {
    let q = Arc::new(freelane_queue::Queue::<Request>::new());
    drive(threads, duration, move |t| {
        let q = Arc::clone(&q);
        let (mut id, now) = ((t as u64) << 40, Instant::now());
        move || {
            id += 1;
            q.push(request(id, now));
            black_box(q.pop());
        }
    })
}

fn load_mutex(threads: usize, duration: Duration) -> Trial {
    let board = Arc::new(LockedBoard::default());
    drive(threads, duration, move |_| {
        let board = Arc::clone(&board);
        move || {
            if let Some(g) = board.pick_and_acquire(|_| true, 1) {
                board.release(black_box(g), 1);
            }
        }
    })
}

fn load_freelane(threads: usize, duration: Duration) -> Trial {
    let board = Arc::new(LoadBoard::new(GPUS));
    drive(threads, duration, move |_| {
        let board = Arc::clone(&board);
        move || {
            // Dropping the guard releases the load.
            black_box(board.pick_and_acquire(Policy::LeastLoaded, 1, |_| true));
        }
    })
}

/// Runs `readers` under [`drive`] while one writer thread replaces a GPU's record every
/// [`HEALTH_WRITE_PERIOD`]; `write(gpu, record)` is the implementation's write.
fn with_health_writer<W, M, F>(threads: usize, duration: Duration, write: W, make: M) -> Trial
where
    W: Fn(usize, HealthRecord) + Send + 'static,
    M: Fn(usize) -> F + Send + Sync + 'static,
    F: FnMut(),
{
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut generation = 0u64;
            // Relaxed: the flag carries no data; join() orders the rest.
            while !done.load(Ordering::Relaxed) {
                generation += 1;
                write(
                    generation as usize % GPUS,
                    HealthRecord::for_generation(generation),
                );
                std::thread::sleep(HEALTH_WRITE_PERIOD);
            }
            generation
        })
    };
    let trial = drive(threads, duration, make);
    // Relaxed: see above.
    done.store(true, Ordering::Relaxed);
    let _writes = writer.join().expect("health writer panicked");
    trial
}

fn health_mutex(threads: usize, duration: Duration) -> Trial {
    let table = Arc::new(LockedHealth::default());
    let w = Arc::clone(&table);
    with_health_writer(
        threads,
        duration,
        move |g, r| w.write(g, r),
        move |t| {
            let table = Arc::clone(&table);
            let mut g = t;
            move || {
                g = (g + 1) % GPUS;
                let r = table.read(g);
                assert!(r.is_consistent(), "torn health record: {r:?}");
                black_box(r);
            }
        },
    )
}

fn health_freelane(threads: usize, duration: Duration) -> Trial {
    let table: Arc<[SeqLock<HealthRecord>; GPUS]> = Arc::new(std::array::from_fn(|_| {
        SeqLock::new(HealthRecord::for_generation(0))
    }));
    let w = Arc::clone(&table);
    with_health_writer(
        threads,
        duration,
        move |g, r| w[g].write(r),
        move |t| {
            let table = Arc::clone(&table);
            let mut g = t;
            move || {
                g = (g + 1) % GPUS;
                let r = table[g].read();
                assert!(r.is_consistent(), "torn health record: {r:?}");
                black_box(r);
            }
        },
    )
}

/// Runs `drive` with every thread's default `tracing` dispatcher set to `dispatch`.
fn with_dispatch<M, F>(threads: usize, duration: Duration, dispatch: Dispatch, make: M) -> Trial
where
    M: Fn(usize) -> F + Send + Sync + 'static,
    F: FnMut(),
{
    drive(threads, duration, move |t| {
        let guard = tracing::dispatcher::set_default(&dispatch);
        let mut op = make(t);
        move || {
            let _ = &guard;
            op();
        }
    })
}

fn locked_logger_dispatch() -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(LockedJsonLayer::new(std::io::sink())))
}

fn logger_mutex(threads: usize, duration: Duration) -> Trial {
    with_dispatch(threads, duration, locked_logger_dispatch(), |t| {
        let mut id = (t as u64) << 40;
        move || {
            id += 1;
            log_event(id, (id % GPUS as u64) as u32, 1_000 + (id & 0xFFF));
        }
    })
}

/// A freelane-log logger in lossless mode ([`Overflow::Block`]: callers wait for room, so the
/// throughput counts only events that reach the writer) writing JSON lines to `io::sink()`.
fn freelane_logger_dispatch() -> (Dispatch, Guard) {
    let (layer, guard) = freelane_log::Builder::new()
        .overflow(Overflow::Block)
        .build_layer(std::io::sink())
        .unwrap_or_else(|e| panic!("mt-scaling: cannot start freelane-log: {e}"));
    (
        Dispatch::new(tracing_subscriber::registry().with(layer)),
        guard,
    )
}

/// Shuts the freelane logger down and checks that it lost nothing.
fn finish_freelane_logger(guard: Guard) {
    match guard.shutdown(Duration::from_secs(30)) {
        Ok(stats) => assert!(
            stats.dropped == 0 && stats.failed == 0 && stats.written == stats.emitted,
            "freelane-log lost events in lossless mode: {stats:?}"
        ),
        Err(e) => panic!("mt-scaling: freelane-log shutdown: {e}"),
    }
}

fn logger_freelane(threads: usize, duration: Duration) -> Trial {
    let (dispatch, guard) = freelane_logger_dispatch();
    let trial = with_dispatch(threads, duration, dispatch, |t| {
        let mut id = (t as u64) << 40;
        move || {
            id += 1;
            log_event(id, (id % GPUS as u64) as u32, 1_000 + (id & 0xFFF));
        }
    });
    finish_freelane_logger(guard);
    trial
}

fn histogram_value(rng: &mut XorShift) -> u64 {
    1_000 + (rng.next_u64() & 0xF_FFFF)
}

fn metrics_mutex(threads: usize, duration: Duration) -> Trial {
    let h = Arc::new(LockedHistogram::default());
    drive(threads, duration, move |t| {
        let h = Arc::clone(&h);
        let mut rng = XorShift::new(t as u64 + 1);
        move || h.record(histogram_value(&mut rng))
    })
}

fn metrics_freelane(threads: usize, duration: Duration) -> Trial {
    let h = Arc::new(freelane_metrics::Histogram::new());
    drive(threads, duration, move |t| {
        let h = Arc::clone(&h);
        let mut rng = XorShift::new(t as u64 + 1);
        move || h.record(histogram_value(&mut rng))
    })
}

/// Pops every answered request off the front of a thread's pending queue.
fn reap<H>(pending: &mut VecDeque<H>, mut answered: impl FnMut(&mut H) -> bool) {
    while let Some(front) = pending.front_mut() {
        if !answered(front) {
            break;
        }
        pending.pop_front();
    }
}

fn end_to_end_mutex(threads: usize, duration: Duration) -> Trial {
    let c = Arc::new(MutexCoordinator::default());
    with_dispatch(threads, duration, locked_logger_dispatch(), move |t| {
        let c = Arc::clone(&c);
        let mut id = (t as u64) << 40;
        let mut pending = VecDeque::new();
        move || {
            id += 1;
            if let Some(rx) = c.submit(id, TOKENS) {
                pending.push_back(rx);
            }
            if let Some(batch) = c.try_next_batch(t % GPUS, MAX_BATCH) {
                c.execute_and_complete(batch);
            }
            reap(&mut pending, |rx| rx.try_recv().is_ok());
        }
    })
}

/// The simulated GPU: "executes" a batch in zero time (answers every request with its payload).
#[derive(Debug, Clone, Copy)]
pub struct ZeroTimeExecutor;

impl Executor for ZeroTimeExecutor {
    type Input = u64;
    type Output = u64;

    async fn run(
        &self,
        _gpu: GpuId,
        batch: &mut freelane::Batch<u64, u64>,
    ) -> Result<(), ExecError> {
        batch.finish_all(|e| e.payload().copied().unwrap_or(0));
        Ok(())
    }
}

fn end_to_end_freelane(threads: usize, duration: Duration) -> Trial {
    let c = Arc::new(
        Coordinator::builder(ZeroTimeExecutor)
            .gpus(GPUS)
            .build_manual()
            .unwrap_or_else(|e| panic!("mt-scaling: coordinator config: {e}")),
    );
    let (dispatch, guard) = freelane_logger_dispatch();
    let driver = Arc::clone(&c);
    let trial = with_dispatch(threads, duration, dispatch, move |t| {
        let c = Arc::clone(&driver);
        let mut id = (t as u64) << 40;
        let mut pending = VecDeque::new();
        let gpu = GpuId((t % GPUS) as u32);
        move || {
            id += 1;
            if let Ok(handle) = c.submit(freelane::Request::new(id, TOKENS)) {
                pending.push_back(handle);
            }
            if let Some(mut batch) = c.try_next_batch(gpu) {
                batch.finish_all(|e| e.payload().copied().unwrap_or(0));
                c.complete(batch, Ok(()));
            }
            reap(&mut pending, |h| h.try_outcome().is_some());
        }
    });
    c.shutdown_now();
    finish_freelane_logger(guard);
    trial
}
