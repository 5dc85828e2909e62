//! Shutdown racing itself and racing a failover: requests queued on a lane whose worker is still
//! draining it must run, not be failed with `ShuttingDown`.
use std::sync::Arc;
use std::time::Duration;

use freelane::{
    Batch, BatchConfig, Coordinator, ExecError, Executor, GpuId, Outcome, Policy, Request,
};

/// Every batch takes `delay`, then completes every entry with its payload.
struct Slow(Duration);

impl Executor for Slow {
    type Input = u64;
    type Output = u64;
    async fn run(&self, _gpu: GpuId, batch: &mut Batch<u64, u64>) -> Result<(), ExecError> {
        tokio::time::sleep(self.0).await;
        batch.finish_all(|e| *e.payload().unwrap());
        Ok(())
    }
}

fn one_at_a_time() -> BatchConfig {
    BatchConfig::builder()
        .max_batch_size(1)
        .max_wait(Duration::from_micros(100))
        .build()
        .unwrap()
}

fn describe(o: &Outcome<u64>) -> String {
    match o {
        Outcome::Completed(v) => format!("completed({v})"),
        Outcome::Failed(e) => format!("failed({:?})", e.kind()),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shutdown_waits_for_the_first_instead_of_failing_the_queue() {
    let c = Arc::new(
        Coordinator::builder(Slow(Duration::from_millis(50)))
            .gpus(1)
            .batch(one_at_a_time())
            .build()
            .unwrap(),
    );
    let handles: Vec<_> = (0..6)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c1 = Arc::clone(&c);
    let first = tokio::spawn(async move { c1.shutdown().await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.shutdown().await;
    // The second call returned only after the first finished: everything is answered.
    assert!(
        first.is_finished()
            || tokio::time::timeout(Duration::from_millis(50), first)
                .await
                .is_ok()
    );
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(describe(&h.await));
    }
    let want: Vec<_> = (0..6).map(|i| format!("completed({i})")).collect();
    assert_eq!(outcomes, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_shutdown_leaves_the_wait_to_the_next_call() {
    let c = Coordinator::builder(Slow(Duration::from_millis(40)))
        .gpus(1)
        .batch(one_at_a_time())
        .build()
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Give up on the first shutdown while the worker still drains.
    assert!(
        tokio::time::timeout(Duration::from_millis(30), c.shutdown())
            .await
            .is_err()
    );
    c.shutdown().await;
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(describe(&h.await), format!("completed({i})"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_during_the_drain_fails_nothing_queued_on_the_healthy_lane() {
    let c = Arc::new(
        Coordinator::builder(Slow(Duration::from_millis(30)))
            .gpus(2)
            .policy(Policy::RoundRobin)
            .work_stealing(false)
            .batch(one_at_a_time())
            .build()
            .unwrap(),
    );
    let handles: Vec<_> = (0..10)
        .map(|i| c.submit(Request::new(i, 1)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c1 = Arc::clone(&c);
    let drain = tokio::spawn(async move { c1.shutdown().await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    // GPU 1 fails during the drain: its queue moves to GPU 0, whose worker is still draining.
    c.mark_unhealthy(GpuId(1));
    drain.await.unwrap();
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(describe(&h.await));
    }
    let failed: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.starts_with("completed"))
        .collect();
    // Everything ran on GPU 0 or 1 (the batches GPU 1 was running when it was marked still
    // complete); nothing was failed by the reroute onto the closed-but-draining lane.
    assert!(failed.is_empty(), "{outcomes:?}");
}

/// GPU 0 completes at once; GPU 1 takes 100 ms and then fails its batch.
struct Gpu1Fails;

impl Executor for Gpu1Fails {
    type Input = u64;
    type Output = u64;
    async fn run(&self, gpu: GpuId, batch: &mut Batch<u64, u64>) -> Result<(), ExecError> {
        if gpu == GpuId(1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(ExecError::new("gpu 1 failed"));
        }
        batch.finish_all(|e| *e.payload().unwrap());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_onto_a_lane_whose_worker_stopped_is_answered() {
    let c = Coordinator::builder(Gpu1Fails)
        .gpus(2)
        .policy(Policy::RoundRobin)
        .work_stealing(false)
        .batch(one_at_a_time())
        .build()
        .unwrap();
    // Round robin: one request on each GPU.
    let a = c.submit(Request::new(0, 1)).unwrap();
    let b = c.submit(Request::new(1, 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Shutdown begins (lanes close; worker 0 finds its lane empty and stops), but the caller
    // gives up on the wait while GPU 1 still runs, so no final sweep happens.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), c.shutdown())
            .await
            .is_err()
    );
    assert_eq!(describe(&a.await), "completed(0)");
    // At ~100 ms GPU 1 fails: its request is retried onto lane 0, closed and undrained.
    let b = tokio::time::timeout(Duration::from_secs(2), b)
        .await
        .expect("the retried request was never answered");
    assert_eq!(describe(&b), "failed(ShuttingDown)");
    assert_eq!(c.queued(), 0);
}
