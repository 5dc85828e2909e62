//! `mt-scaling`: multi-thread scaling report, freelane vs mutex designs (issue 9).
//!
//! **Skeleton:** not implemented yet; running it says so and exits with status 2.

fn main() {
    eprintln!("mt-scaling: not implemented yet (issue 9)");
    std::process::exit(2);
}
