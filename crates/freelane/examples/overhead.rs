//! Single-thread coordinator overhead on the runtime-free path: submit -> try_next_batch ->
//! finish_all (zero-time executor) -> complete, at batch size 32. Prints ns per request.
//! A smoke number for tuning only; the interleaved multi-thread comparison is the mt-scaling
//! benchmark. `cargo run --release -p freelane --example overhead`
use std::time::Instant;

use freelane::{Batch, BatchConfig, Coordinator, ExecError, Executor, GpuId, Request};

struct Zero;

impl Executor for Zero {
    type Input = u64;
    type Output = u64;
    async fn run(&self, _gpu: GpuId, batch: &mut Batch<u64, u64>) -> Result<(), ExecError> {
        batch.finish_all(|_| 0);
        Ok(())
    }
}

fn main() {
    let quick = std::env::var_os("FREELANE_BENCH_QUICK").is_some();
    let rounds: u64 = if quick { 2_000 } else { 50_000 };
    let c = Coordinator::builder(Zero)
        .gpus(4)
        .batch(BatchConfig::builder().max_batch_size(32).build().unwrap())
        .build_manual()
        .unwrap();
    for rep in 0..3 {
        let t = Instant::now();
        let mut n = 0u64;
        let mut handles = Vec::with_capacity(32);
        for r in 0..rounds {
            for i in 0..32 {
                handles.push(c.submit(Request::new(i, 1)).unwrap());
            }
            let gpu = GpuId((r % 4) as u32);
            while let Some(mut b) = c.try_next_batch(gpu) {
                n += b.active() as u64;
                b.finish_all(|_| 0);
                c.complete(b, Ok(()));
            }
            handles.clear();
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("rep {rep}: {n} requests, {ns:.0} ns/request (1 thread, batch 32)");
    }
}
