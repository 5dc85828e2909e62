//! `freelane-server`: the reference HTTP inference server (issue 7).
//!
//! **Skeleton:** the server is not implemented yet; running it says so and exits with status 2.

fn main() {
    eprintln!("freelane-server: not implemented yet (issue 7)");
    std::process::exit(2);
}
