//! `mt-scaling`: the multi-thread scaling report, freelane vs the mutex design (issue 9).
//!
//! ```text
//! cargo run --release -p freelane-benches --bin mt-scaling -- \
//!     [--threads 1,2,4,8,12,16] [--quick] [--json FILE] [--svg FILE] \
//!     [--components queue,load,health,logger,metrics,end_to_end] [--duration-ms N] [--reps N]
//! ```
//! See [`freelane_benches::mt`] for what is measured and how.

use std::process::ExitCode;

use freelane_benches::mt::cli::{CliError, Options, USAGE};
use freelane_benches::mt::report::{table, Report};
use freelane_benches::mt::{plot, runner};
use freelane_benches::Machine;

fn main() -> ExitCode {
    let quick_env = std::env::var("FREELANE_BENCH_QUICK").ok();
    let opts = match Options::parse(std::env::args().skip(1), quick_env.as_deref()) {
        Ok(o) => o,
        Err(CliError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mt-scaling: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let machine = Machine::detect();
    eprintln!(
        "mt-scaling: {} cores ({}), threads {:?}, {} ms x {} rounds (+1 warm-up), interleaved",
        machine.cores,
        machine.cpu,
        opts.threads,
        opts.duration.as_millis(),
        opts.reps
    );
    let measurements = runner::run_all(&opts);
    let report = Report::build(machine, &opts, &measurements);

    println!("{}", table(&report.results));
    println!("recommendations:");
    for r in &report.recommendations {
        println!("  - [{}] {}", r.kind, r.message);
    }
    for t in &report.summary.targets {
        println!(
            "target {}: {} ({:.2}, needs >= {:.2})",
            t.name,
            if t.met { "met" } else { "MISSED" },
            t.value,
            t.target
        );
    }

    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &opts.json {
        match std::fs::write(path, report.to_json() + "\n") {
            Ok(()) => eprintln!("mt-scaling: wrote {}", path.display()),
            Err(e) => {
                eprintln!("mt-scaling: cannot write {}: {e}", path.display());
                status = ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &opts.svg {
        let title = format!(
            "mt-scaling: throughput vs threads ({} cores, {})",
            report.machine.cores, report.machine.date
        );
        match plot::write_svg(path, &report.results, &title) {
            Ok(()) => eprintln!("mt-scaling: wrote {}", path.display()),
            Err(e) => {
                eprintln!("mt-scaling: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
