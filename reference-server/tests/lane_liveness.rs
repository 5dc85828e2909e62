//! Telling a busy GPU from a hung one. A lane running one long, full batch keeps heartbeating:
//! the monitor must not fail over a GPU that works. A step that never returns is cut off by the
//! step timeout: its requests are answered instead of waiting forever.
use std::sync::Arc;
use std::time::{Duration, Instant};

use freelane::{
    BatchConfig, Coordinator, ErrorKind, GpuId, GpuState, HealthConfig, Outcome, Request,
};
use freelane_server::executor::decode::Job;
use freelane_server::executor::lane::{ExecStats, ServerExecutor};
use freelane_server::executor::{EngineError, SampleParams, StepEngine};

/// An engine whose every step takes 2 ms (and produces byte 0).
struct Slow;
impl StepEngine for Slow {
    fn context(&self) -> usize {
        1
    }
    fn step(&mut self, _: &[u8], _: &[SampleParams], out: &mut [u8]) -> Result<(), EngineError> {
        std::thread::sleep(Duration::from_millis(2));
        out.fill(b'a');
        Ok(())
    }
}

fn job(max_tokens: u32) -> Job {
    Job {
        prompt: b"hi".to_vec(),
        max_tokens,
        temperature: 0.0,
        seed: 1,
        sink: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_full_batch_keeps_its_gpu_healthy() {
    let factory: freelane_server::executor::cuda::EngineFactory =
        Box::new(|| Ok(Box::new(Slow) as Box<dyn StepEngine>));
    let exec = ServerExecutor::compute("cpu", vec![factory], None, Arc::new(ExecStats::default()));
    let c = Coordinator::builder(exec)
        .gpus(1)
        // One request per batch: the first one fills its batch for its whole run.
        .batch(
            BatchConfig::builder()
                .max_batch_size(1)
                .max_wait(Duration::from_micros(500))
                .build()
                .unwrap(),
        )
        .health(
            HealthConfig::builder()
                .heartbeat_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // About 400 steps of 2 ms: twice the heartbeat timeout and more in one full batch.
    let long = job(400);
    let cost = long.cost();
    let first = c.submit(Request::new(long, cost)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued = job(2);
    let cost = queued.cost();
    let second = c.submit(Request::new(queued, cost)).unwrap();
    let both = tokio::spawn(async move { (first.await, second.await) });
    let start = Instant::now();
    while !both.is_finished() {
        assert_eq!(
            c.health().state(GpuId(0)),
            GpuState::Healthy,
            "the busy gpu was failed over {:?} into the long batch",
            start.elapsed()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "requests did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (a, b) = both.await.unwrap();
    assert!(matches!(a, Outcome::Completed(_)), "{a:?}");
    assert!(matches!(b, Outcome::Completed(_)), "{b:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "the batch was not long"
    );
    c.shutdown().await;
}

/// An engine whose steps "hang" (sleep far longer than the step timeout).
struct Hang;
impl StepEngine for Hang {
    fn context(&self) -> usize {
        1
    }
    fn step(&mut self, _: &[u8], _: &[SampleParams], _: &mut [u8]) -> Result<(), EngineError> {
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_step_is_cut_off_and_its_request_answered() {
    let factory: freelane_server::executor::cuda::EngineFactory =
        Box::new(|| Ok(Box::new(Hang) as Box<dyn StepEngine>));
    let exec = ServerExecutor::compute("cpu", vec![factory], None, Arc::new(ExecStats::default()))
        .with_step_timeout(Duration::from_millis(200));
    let c = Coordinator::builder(exec)
        .gpus(1)
        .request_timeout(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    let j = job(4);
    let cost = j.cost();
    let start = Instant::now();
    let h = c.submit(Request::new(j, cost)).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(2), h)
        .await
        .expect("the request of a hung step was not answered");
    match outcome {
        Outcome::Failed(e) => assert_ne!(e.kind(), ErrorKind::Dropped, "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(200));
    // Later batches on the hung engine fail at once instead of queueing behind it.
    let j = job(4);
    let cost = j.cost();
    if let Ok(h) = c.submit(Request::new(j, cost)) {
        let t = Instant::now();
        let o = tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .expect("answered");
        assert!(matches!(o, Outcome::Failed(_)), "{o:?}");
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }
    // Shutdown does not wait for the hung thread.
    tokio::time::timeout(Duration::from_secs(2), c.shutdown())
        .await
        .expect("shutdown waited for the hung step");
}
