//! Shared helpers for the loom models in `tests/`.
//!
//! The models only exist under `--cfg freelane_loom`; in a normal build this crate is empty and
//! its test files compile to nothing. Run the suite with:
//!
//! ```text
//! RUSTFLAGS="--cfg freelane_loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS=2 \
//!   CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release
//! ```
#![warn(missing_docs)]

/// The preemption bound: `LOOM_MAX_PREEMPTIONS`, or 2 when unset or unparsable.
pub fn max_preemptions() -> usize {
    std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2)
}

/// Explores every interleaving of `f` (up to the preemption bound) and reports how the model went.
///
/// `name` labels the model in the output so a failing or slow model is easy to find. A panic or
/// a race detected in any interleaving fails the calling test.
#[cfg(freelane_loom)]
pub fn run_model<F>(name: &str, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    run_model_bounded(name, max_preemptions(), f);
}

/// [`run_model`] at an explicit preemption bound, for models too large for the default bound
/// (three threads that each register with crossbeam-epoch, for example). The bound is lowered
/// to `LOOM_MAX_PREEMPTIONS` when that is smaller, so a quick run stays quick.
#[cfg(freelane_loom)]
pub fn run_model_bounded<F>(name: &str, bound: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(bound.min(max_preemptions()));
    let start = std::time::Instant::now();
    eprintln!(
        "loom model `{name}`: exploring (preemption bound {:?})",
        builder.preemption_bound
    );
    // Count the executions explored: a concurrent model that explores only one has found no
    // interleaving to try, i.e. it checks nothing about concurrency (see the health models).
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&executions);
    builder.check(move || {
        // Relaxed: a diagnostic count, read after `check` has joined every execution.
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "loom model `{name}`: done in {:.2?}, {} executions",
        start.elapsed(),
        // Relaxed: as above.
        executions.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Like [`run_model`], for a model whose main closure returns a label of the outcome it reached:
/// fails unless every label in `expected` was reached in some execution. A model whose
/// interesting branch loom never enters checks nothing there; this makes that a failure.
#[cfg(freelane_loom)]
pub fn run_model_outcomes<F>(name: &str, expected: &'static [&'static str], f: F)
where
    F: Fn() -> &'static str + Sync + Send + 'static,
{
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let record = std::sync::Arc::clone(&seen);
    run_model(name, move || {
        let outcome = f();
        *record.lock().unwrap().entry(outcome).or_insert(0usize) += 1;
    });
    let seen = seen.lock().unwrap();
    eprintln!("loom model `{name}`: outcomes {seen:?}");
    for e in expected {
        assert!(
            seen.contains_key(e),
            "loom model `{name}` never reached outcome `{e}` (reached: {seen:?})"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn preemption_bound_defaults_to_two() {
        // Only meaningful when the variable is not set by the caller.
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            assert_eq!(super::max_preemptions(), 2);
        }
    }
}
