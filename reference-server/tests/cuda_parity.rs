//! CUDA executor vs CPU executor: same tokens at temperature 0 (and logits within a small
//! tolerance) for the same seed over many steps and batch sizes. Every test prints
//! "skipping: no CUDA device (...)" and passes on machines without a usable CUDA driver.
//!
//! Two `#[ignore]`d measurement tests are run by `bench/gpu/run-gpu-checks.sh` on a GPU
//! machine (`-- --ignored --nocapture`): pure cuBLAS GEMM time vs the engine's whole step for
//! the decode shapes, and the server under load at batch 1/8/32/128.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use freelane_server::executor::cpu::CpuEngine;
use freelane_server::executor::cuda::{self, CudaEngine, CudaRuntime};
use freelane_server::executor::{SampleParams, StepEngine};
use freelane_server::model::{
    self, context_window, sample_row, Scratch, SplitMix64, Weights, VOCAB,
};

/// The probed CUDA runtime, or `None` after printing why the test is skipped.
fn cuda_or_skip(test: &str) -> Option<CudaRuntime> {
    match cuda::probe() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{test}: skipping: no CUDA device ({e})");
            None
        }
    }
}

/// Logit tolerance between cuBLAS and the CPU GEMM (different summation orders, f32).
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 * (1.0 + a.abs().max(b.abs()))
}

/// Gap between the best and second-best logit of a row (how far from a tie the argmax is).
fn top2_gap(row: &[f32]) -> f32 {
    let mut s: Vec<f32> = row.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

/// Random printable prompts of varied lengths (some shorter than the context, some empty).
fn prompts(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let len = (rng.next_u64() % 20) as usize;
            (0..len)
                .map(|_| b' ' + (rng.next_u64() % 95) as u8)
                .collect()
        })
        .collect()
}

struct Compared {
    rows: usize,
    token_mismatches: usize,
    near_tie_mismatches: usize,
    max_logit_err: f32,
}

/// Runs `steps` decode steps over `batch` sequences on both engines, feeding the CPU's token
/// back into both, and compares tokens and logits row by row.
fn compare(
    w: &Arc<Weights>,
    gpu: &mut CudaEngine,
    batch: usize,
    steps: usize,
    temperature: f32,
    seed: u64,
) -> Compared {
    let k = w.dims().context;
    let mut cpu = CpuEngine::new(w.clone());
    let mut seqs = prompts(batch, seed);
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut ids = vec![0u8; batch * k];
    let mut params = vec![
        SampleParams {
            temperature,
            uniform: 0.0
        };
        batch
    ];
    let (mut next_cpu, mut next_gpu) = (vec![0u8; batch], vec![0u8; batch]);
    let mut scratch = Scratch::default();
    let mut out = Compared {
        rows: 0,
        token_mismatches: 0,
        near_tie_mismatches: 0,
        max_logit_err: 0.0,
    };
    for _ in 0..steps {
        for (s, ctx) in seqs.iter().zip(ids.chunks_exact_mut(k)) {
            context_window(s, ctx);
        }
        for p in &mut params {
            p.uniform = rng.next_f32();
        }
        cpu.step(&ids, &params, &mut next_cpu).expect("cpu step");
        gpu.step(&ids, &params, &mut next_gpu).expect("cuda step");
        model::forward(w, &ids, &mut scratch);
        let gl = gpu.last_logits(batch).expect("logits");
        for r in 0..batch {
            let c = &scratch.logits()[r * VOCAB..(r + 1) * VOCAB];
            let g = &gl[r * VOCAB..(r + 1) * VOCAB];
            for (a, b) in c.iter().zip(g) {
                assert!(close(*a, *b), "row {r}: cpu logit {a} vs cuda {b}");
                out.max_logit_err = out.max_logit_err.max((a - b).abs());
            }
            // The CPU engine is sample_row over the CPU logits.
            assert_eq!(
                next_cpu[r],
                sample_row(c, params[r].temperature, params[r].uniform)
            );
            if next_cpu[r] != next_gpu[r] {
                out.token_mismatches += 1;
                if top2_gap(c) <= 2e-3 * (1.0 + c.iter().fold(0.0f32, |m, x| m.max(x.abs()))) {
                    out.near_tie_mismatches += 1;
                }
            }
            out.rows += 1;
        }
        for (s, &t) in seqs.iter_mut().zip(&next_cpu) {
            // Keep going past a stop token: parity is about the math, not finishing.
            s.push(if t == 0 { b' ' } else { t });
        }
    }
    out
}

#[test]
fn cuda_matches_cpu_tokens_at_temperature_zero_over_many_steps_and_batch_sizes() {
    let Some(rt) = cuda_or_skip("parity") else {
        return;
    };
    let w = Arc::new(Weights::generate(42));
    // Start small so the largest batches also exercise buffer growth.
    let mut gpu = CudaEngine::new(w.clone(), 0, &rt.kernels, 4).expect("engine");
    eprintln!("{gpu:?} (kernels loaded as {})", gpu.kernel_image());
    for (i, &batch) in [1usize, 3, 8, 32, 128, 200].iter().enumerate() {
        let c = compare(&w, &mut gpu, batch, 40, 0.0, 100 + i as u64);
        eprintln!(
            "batch {batch}: {} rows, {} token mismatches ({} at near-ties), max |logit diff| {:e}",
            c.rows, c.token_mismatches, c.near_tie_mismatches, c.max_logit_err
        );
        assert_eq!(
            c.token_mismatches, c.near_tie_mismatches,
            "batch {batch}: a token differs where the argmax was not a near-tie"
        );
        assert!(
            c.token_mismatches * 1000 <= c.rows,
            "batch {batch}: too many near-tie flips"
        );
    }
    assert!(gpu.capacity_rows() >= 200 && gpu.grows() > 0);
}

#[test]
fn cuda_sampling_with_temperature_follows_the_host_uniforms() {
    let Some(rt) = cuda_or_skip("sampling") else {
        return;
    };
    let w = Arc::new(Weights::generate(7));
    let mut gpu = CudaEngine::new(w.clone(), 0, &rt.kernels, 64).expect("engine");
    let c = compare(&w, &mut gpu, 64, 30, 0.8, 9);
    eprintln!(
        "temperature 0.8: {} rows, {} token mismatches, max |logit diff| {:e}",
        c.rows, c.token_mismatches, c.max_logit_err
    );
    // Only a cumulative boundary moved past u by float rounding may differ.
    assert!(
        c.token_mismatches * 100 <= c.rows,
        "{} of {}",
        c.token_mismatches,
        c.rows
    );
}

#[test]
fn every_visible_device_computes_the_same_tokens() {
    let Some(rt) = cuda_or_skip("multi-gpu") else {
        return;
    };
    let w = Arc::new(Weights::generate(3));
    let k = w.dims().context;
    let seqs = prompts(16, 5);
    let mut ids = vec![0u8; 16 * k];
    for (s, ctx) in seqs.iter().zip(ids.chunks_exact_mut(k)) {
        context_window(s, ctx);
    }
    let params = vec![
        SampleParams {
            temperature: 0.0,
            uniform: 0.5
        };
        16
    ];
    let mut first: Option<Vec<u8>> = None;
    for dev in 0..rt.devices {
        let mut e = CudaEngine::new(w.clone(), dev, &rt.kernels, 16).expect("engine");
        let mut next = vec![0u8; 16];
        e.step(&ids, &params, &mut next).expect("step");
        match &first {
            None => first = Some(next),
            Some(f) => assert_eq!(f, &next, "device {dev} differs from device 0"),
        }
    }
    eprintln!("{} device(s) agree", rt.devices);
}

#[test]
fn bad_step_shapes_are_errors_not_panics() {
    let Some(rt) = cuda_or_skip("shapes") else {
        return;
    };
    let w = Arc::new(Weights::generate(1));
    let mut e = CudaEngine::new(w, 0, &rt.kernels, 8).expect("engine");
    let p = [SampleParams {
        temperature: 0.0,
        uniform: 0.0,
    }];
    let mut next = [0u8; 1];
    assert!(e.step(&[1, 2, 3], &p, &mut next).is_err());
    assert!(e.step(&[], &[], &mut []).is_ok());
}

#[test]
fn open_devices_gives_one_lane_per_device_or_explains_why_not() {
    let w = Arc::new(Weights::generate(1));
    match cuda::open_devices(&w, None) {
        Ok(lanes) => {
            assert!(!lanes.is_empty());
            // Build the first lane's engine as its lane thread would.
            let f = lanes.into_iter().next().unwrap();
            let engine = std::thread::spawn(f)
                .join()
                .expect("no panic")
                .expect("engine");
            assert_eq!(engine.context(), w.dims().context);
        }
        Err(e) => {
            let s = e.to_string();
            assert!(s.starts_with("cuda executor not available: "), "{s}");
            eprintln!("lanes: skipping: no CUDA device ({s})");
        }
    }
}

/// Mean wall time of one engine step at `batch` rows over `iters` steps.
fn time_steps(e: &mut CudaEngine, w: &Weights, batch: usize, iters: u32) -> Duration {
    let k = w.dims().context;
    let seqs = prompts(batch, 77);
    let mut ids = vec![0u8; batch * k];
    for (s, ctx) in seqs.iter().zip(ids.chunks_exact_mut(k)) {
        context_window(s, ctx);
    }
    let params = vec![
        SampleParams {
            temperature: 0.0,
            uniform: 0.5
        };
        batch
    ];
    let mut next = vec![0u8; batch];
    e.step(&ids, &params, &mut next).expect("warm-up");
    let t = Instant::now();
    for _ in 0..iters {
        e.step(&ids, &params, &mut next).expect("step");
    }
    t.elapsed() / iters
}

/// GPU measurement: pure cuBLAS (the step's two sgemms) vs the engine's whole step.
#[test]
#[ignore = "measurement; run on a GPU machine by bench/gpu/run-gpu-checks.sh"]
fn measure_step_vs_pure_cublas() {
    let Some(rt) = cuda_or_skip("measure") else {
        return;
    };
    let w = Arc::new(Weights::generate(42));
    let mut e = CudaEngine::new(w.clone(), 0, &rt.kernels, 128).expect("engine");
    println!("| batch | cuBLAS 2 sgemm (us) | engine step (us) | gemm/step | step tokens/s |");
    println!("|---|---|---|---|---|");
    for batch in [1usize, 8, 32, 128] {
        let gemm = e.time_gemms(batch, 2000).expect("gemm timing");
        let step = time_steps(&mut e, &w, batch, 2000);
        println!(
            "| {batch} | {:.1} | {:.1} | {:.2} | {:.0} |",
            gemm.as_secs_f64() * 1e6,
            step.as_secs_f64() * 1e6,
            gemm.as_secs_f64() / step.as_secs_f64(),
            batch as f64 / step.as_secs_f64()
        );
    }
}

/// GPU measurement: the in-process server with the cuda executor under a closed-loop load of
/// `batch` concurrent clients, for batch 1/8/32/128; tokens/s, requests/s, the mean decode
/// batch, and at batch 32 the serving overhead = server wall time per decode step over the bare
/// engine step time at the same batch size.
#[test]
#[ignore = "measurement; run on a GPU machine by bench/gpu/run-gpu-checks.sh"]
fn measure_server_under_load() {
    let Some(rt) = cuda_or_skip("serve") else {
        return;
    };
    let secs: u64 = std::env::var("FREELANE_GPU_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let max_tokens: u64 = 64;
    let w = Arc::new(Weights::generate(42));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    println!("| batch | requests/s | tokens/s | mean decode batch | wall/step (us) | engine step (us) | serving overhead |");
    println!("|---|---|---|---|---|---|---|");
    for batch in [1usize, 8, 32, 128] {
        // Bare engine step at this batch, same device, before the server holds it.
        let pure = {
            let mut e = CudaEngine::new(w.clone(), 0, &rt.kernels, batch).expect("engine");
            time_steps(&mut e, &w, batch, 1000)
        };
        let bs = batch.to_string();
        let (reqs, stats0, stats1, elapsed, bsum, bcount) = runtime.block_on(async {
            let server = common::TestServer::start(&[
                "--executor",
                "cuda",
                "--gpus",
                "1",
                "--max-batch-size",
                &bs,
                "--max-queue",
                "4096",
                "--log-format",
                "json",
            ])
            .await;
            let server = Arc::new(server);
            // Warm-up request (builds the lane's engine).
            let body =
                serde_json::json!({"prompt": "hello", "max_tokens": max_tokens, "temperature": 0});
            let (s, _) = server.complete(body.clone()).await;
            assert_eq!(s, 200);
            let (_, stats0) = server.get_json("/stats").await;
            let b0 = server
                .metric("freelane_decode_batch_size_sum")
                .await
                .unwrap_or(0.0);
            let c0 = server
                .metric("freelane_decode_batch_size_count")
                .await
                .unwrap_or(0.0);
            let end = Instant::now() + Duration::from_secs(secs);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..batch {
                let srv = server.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let body = serde_json::json!({
                            "prompt": format!("client {i} request {n}"),
                            "max_tokens": max_tokens,
                            "temperature": 0
                        });
                        let (s, _) = srv.complete(body).await;
                        assert_eq!(s, 200);
                        n += 1;
                    }
                    n
                }));
            }
            let mut reqs = 0u64;
            for t in tasks {
                reqs += t.await.unwrap();
            }
            let elapsed = start.elapsed();
            let (_, stats1) = server.get_json("/stats").await;
            let b1 = server
                .metric("freelane_decode_batch_size_sum")
                .await
                .unwrap_or(0.0);
            let c1 = server
                .metric("freelane_decode_batch_size_count")
                .await
                .unwrap_or(0.0);
            if let Ok(s) = Arc::try_unwrap(server) {
                let _ = s.shutdown().await;
            }
            (reqs, stats0, stats1, elapsed, b1 - b0, c1 - c0)
        });
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let tokens = num(&stats1, "generated_tokens") - num(&stats0, "generated_tokens");
        let steps = num(&stats1, "decode_steps") - num(&stats0, "decode_steps");
        let secs_f = elapsed.as_secs_f64();
        let wall_step = secs_f / steps;
        let mean_batch = if bcount > 0.0 {
            bsum / bcount
        } else {
            f64::NAN
        };
        println!(
            "| {batch} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:+.1}% |",
            reqs as f64 / secs_f,
            tokens / secs_f,
            mean_batch,
            wall_step * 1e6,
            pure.as_secs_f64() * 1e6,
            (wall_step / pure.as_secs_f64() - 1.0) * 100.0
        );
    }
}
