//! Runs the selected components, interleaving every (implementation, threads) candidate.

use std::cell::RefCell;
use std::time::Instant;

use super::cli::Options;
use super::components;
use super::report::Measurement;
use super::{Component, Impl};
use crate::{interleaved, Candidate};

/// Runs one component: every (implementation, thread count) pair is one candidate of
/// [`interleaved`], so each round runs all of them back to back.
pub fn run_component(component: Component, opts: &Options) -> Vec<Measurement> {
    let pairs: Vec<(Impl, usize)> = opts
        .threads
        .iter()
        .flat_map(|&n| opts.impls.iter().map(move |&i| (i, n)))
        .collect();
    // Every trial's samples, per candidate, including the warm-up trial (dropped below).
    let samples: Vec<RefCell<Vec<Vec<u64>>>> = pairs.iter().map(|_| RefCell::default()).collect();
    let names: Vec<String> = pairs
        .iter()
        .map(|(i, n)| format!("{}/{}/{n}", component.name(), i.name()))
        .collect();
    let duration = opts.duration;
    let outcomes = {
        let mut candidates: Vec<Candidate<'_>> = pairs
            .iter()
            .zip(&samples)
            .zip(&names)
            .map(|((&(imp, n), store), name)| Candidate {
                name,
                trial: Box::new(move || {
                    let trial = components::run(component, imp, n, duration);
                    let rate = trial.rate();
                    store.borrow_mut().push(trial.samples);
                    rate
                }),
            })
            .collect();
        interleaved(opts.reps, &mut candidates)
    };
    pairs
        .iter()
        .zip(outcomes)
        .zip(samples)
        .map(|((&(imp, threads), outcome), store)| Measurement {
            component,
            imp,
            threads,
            rates: outcome.rates,
            // The first trial is interleaved's untimed warm-up round.
            samples: store.into_inner().into_iter().skip(1).flatten().collect(),
        })
        .collect()
}

/// Runs every selected component, reporting progress on stderr.
pub fn run_all(opts: &Options) -> Vec<Measurement> {
    let mut out = Vec::new();
    for &c in &opts.components {
        let t0 = Instant::now();
        eprint!("mt-scaling: {:<10} ...", c.name());
        out.extend(run_component(c, opts));
        eprintln!(" {:.1} s", t0.elapsed().as_secs_f64());
    }
    out
}
