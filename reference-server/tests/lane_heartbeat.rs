//! A lane running one long, full batch keeps heartbeating: the monitor must not mistake a busy
//! GPU for a hung one (which would fail over its queue and answer 503s while it works).
use std::sync::Arc;
use std::time::{Duration, Instant};

use freelane::{BatchConfig, Coordinator, GpuId, GpuState, HealthConfig, Outcome, Request};
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
