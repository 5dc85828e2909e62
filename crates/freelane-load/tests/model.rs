//! proptest: the load board against exact sums kept by a plain sequential model.

use std::sync::Arc;

use freelane_load::{GpuId, LoadBoard, LoadGuard, Policy};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire { gpu: u32, cost: u64 },
    PickAndAcquire { policy: u8, cost: u64, mask: u16 },
    Release { index: usize },
    Fail { index: usize },
    RecordFailure { gpu: u32 },
    Pick { policy: u8, mask: u16 },
}

fn op(gpus: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..gpus + 1, 0..1000u64).prop_map(|(gpu, cost)| Op::Acquire { gpu, cost }),
        (0..3u8, 0..1000u64, any::<u16>()).prop_map(|(policy, cost, mask)| Op::PickAndAcquire {
            policy,
            cost,
            mask
        }),
        any::<usize>().prop_map(|index| Op::Release { index }),
        any::<usize>().prop_map(|index| Op::Fail { index }),
        (0..gpus + 1).prop_map(|gpu| Op::RecordFailure { gpu }),
        (0..3u8, any::<u16>()).prop_map(|(policy, mask)| Op::Pick { policy, mask }),
    ]
}

fn policy(p: u8) -> Policy {
    [
        Policy::LeastLoaded,
        Policy::PowerOfTwoChoices,
        Policy::RoundRobin,
    ][p as usize % 3]
}

#[derive(Default, Clone, Copy, Debug)]
struct ModelGpu {
    in_flight: u64,
    cost: u64,
    allocations: u64,
    releases: u64,
    failures: u64,
}

fn check(board: &LoadBoard, model: &[ModelGpu]) {
    for (g, m) in model.iter().enumerate() {
        let s = board.stats(GpuId(g as u32)).unwrap();
        assert_eq!(
            (s.in_flight, s.cost, s.allocations, s.releases, s.failures),
            (m.in_flight, m.cost, m.allocations, m.releases, m.failures),
            "gpu{g}"
        );
        assert_eq!(board.load(GpuId(g as u32)), m.in_flight + m.cost);
    }
}

/// `g`'s weighted load (before this pick's acquire) is minimal among the eligible GPUs:
/// `load_g / w_g <= load_h / w_h`.
fn lightest(
    model: &[ModelGpu],
    weights: &[u32],
    g: GpuId,
    eligible: impl Fn(GpuId) -> bool,
) -> Result<(), TestCaseError> {
    let load = |h: usize| u128::from(model[h].in_flight + model[h].cost);
    for h in (0..model.len()).filter(|&h| eligible(GpuId(h as u32))) {
        prop_assert!(
            load(g.index()) * u128::from(weights[h]) <= load(h) * u128::from(weights[g.index()]),
            "picked {} but gpu{} is lighter",
            g,
            h
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    /// Every counter equals the exact sum of the live guards / recorded events after every
    /// operation, picks only return eligible GPUs, `LeastLoaded` returns a minimum-load eligible
    /// GPU, and the board is back to zero when every guard is gone.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn load_accounting_matches_exact_sums(
        (weights, unweighted) in (prop::collection::vec(1u32..4, 1..13), any::<bool>()),
        ops in prop::collection::vec(op(12), 0..120),
    ) {
        // Half the boards unweighted (every weight 1: the one-block fast path for up to eight
        // GPUs), half weighted; 1 to 12 GPUs, so one and two blocks.
        let weights: Vec<u32> = if unweighted { vec![1; weights.len()] } else { weights };
        let n = weights.len();
        let board = Arc::new(LoadBoard::with_weights(&weights).unwrap());
        let mut model = vec![ModelGpu::default(); n];
        let mut live: Vec<LoadGuard> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire { gpu, cost } => {
                    let r = board.try_acquire(GpuId(gpu), cost);
                    if (gpu as usize) < n {
                        let g = r.unwrap();
                        let m = &mut model[gpu as usize];
                        m.in_flight += 1;
                        m.cost += cost;
                        m.allocations += 1;
                        live.push(g);
                    } else {
                        prop_assert!(r.is_err());
                    }
                }
                Op::PickAndAcquire { policy: p, cost, mask } => {
                    let eligible = |g: GpuId| mask & (1 << g.0) != 0;
                    match board.pick_and_acquire(policy(p), cost, eligible) {
                        Some(g) => {
                            prop_assert!(eligible(g.gpu()));
                            if policy(p) == Policy::LeastLoaded {
                                lightest(&model, &weights, g.gpu(), eligible)?;
                            }
                            let m = &mut model[g.gpu().index()];
                            m.in_flight += 1;
                            m.cost += cost;
                            m.allocations += 1;
                            live.push(g);
                        }
                        None => prop_assert!((0..n as u32).all(|g| !eligible(GpuId(g)))),
                    }
                }
                Op::Release { index } | Op::Fail { index } if !live.is_empty() => {
                    let g = live.swap_remove(index % live.len());
                    let m = &mut model[g.gpu().index()];
                    m.in_flight -= 1;
                    m.cost -= g.cost();
                    m.releases += 1;
                    if matches!(op, Op::Fail { .. }) {
                        m.failures += 1;
                        g.fail();
                    } else {
                        drop(g);
                    }
                }
                Op::Release { .. } | Op::Fail { .. } => {}
                Op::RecordFailure { gpu } => {
                    let r = board.record_failure(GpuId(gpu));
                    prop_assert_eq!(r.is_ok(), (gpu as usize) < n);
                    if let Some(m) = model.get_mut(gpu as usize) {
                        m.failures += 1;
                    }
                }
                Op::Pick { policy: p, mask } => {
                    let eligible = |g: GpuId| mask & (1 << g.0) != 0;
                    let picked = board.pick(policy(p), eligible);
                    let any = (0..n as u32).any(|g| eligible(GpuId(g)));
                    prop_assert_eq!(picked.is_some(), any);
                    if let Some(g) = picked {
                        prop_assert!(eligible(g));
                        if policy(p) == Policy::LeastLoaded {
                            lightest(&model, &weights, g, eligible)?;
                        }
                    }
                }
            }
            check(&board, &model);
        }
        drop(live);
        for m in &mut model {
            m.releases += m.in_flight;
            m.in_flight = 0;
            m.cost = 0;
        }
        check(&board, &model);
    }
}
