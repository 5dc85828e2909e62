//! Command line and environment configuration.
//!
//! Every flag is `--long`, has an environment variable `FREELANE_*` and a default, so the server
//! starts with no arguments at all (`cargo run --release -p freelane-server`). [`Args`] is what clap
//! parses; [`Args::validate`] turns it into a [`Config`] whose values are known to be usable, or a
//! [`ConfigError`] with a clear lowercase message (the binary prints it and exits with status 2).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which executor runs the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// CUDA when a GPU is found, otherwise the CPU model (with a log line saying so).
    Auto,
    /// The built-in byte-level model on CPU threads (one lane per `--gpus`).
    Cpu,
    /// The built-in model on NVIDIA GPUs (issue 8).
    Cuda,
    /// Simulated GPUs: no compute, a step time model, fault injection.
    Sim,
}

impl ExecutorKind {
    /// The lowercase name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Auto => "auto",
            ExecutorKind::Cpu => "cpu",
            ExecutorKind::Cuda => "cuda",
            ExecutorKind::Sim => "sim",
        }
    }
}

/// How a request picks its GPU lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Power of two random choices (robust against stale load information).
    P2c,
    /// Always the least loaded lane.
    LeastLoaded,
    /// Round robin over the usable lanes.
    RoundRobin,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The command line of `freelane-server`. Every flag also reads `FREELANE_<FLAG>`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "freelane-server",
    version,
    about = "OpenAI-style completion server batching across GPUs (or CPU lanes, or simulated GPUs)"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "FREELANE_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port to listen on (0 picks a free port; the log line says which).
    #[arg(long, env = "FREELANE_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Executor: auto (CUDA if a GPU is found, else CPU), cpu, cuda or sim.
    #[arg(long, env = "FREELANE_EXECUTOR", value_enum, default_value_t = ExecutorKind::Auto)]
    pub executor: ExecutorKind,

    /// Number of lanes (GPUs). Default: every visible device for cuda, 2 for sim, 1 for cpu.
    #[arg(long, env = "FREELANE_GPUS")]
    pub gpus: Option<usize>,

    /// Most sequences decoded together in one step.
    #[arg(long, env = "FREELANE_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,

    /// Token budget of one batch (prompt + max_tokens summed over its requests). Default: unlimited.
    #[arg(long, env = "FREELANE_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<u64>,

    /// Longest a lane waits to fill a batch before running a partial one, in microseconds.
    #[arg(long, env = "FREELANE_MAX_WAIT_US", default_value_t = 2000)]
    pub max_wait_us: u64,

    /// Admission capacity: most requests waiting in the queues at once (429 beyond). A request
    /// leaves the queue when a batch takes it, so at most `max_queue + gpus * max_batch_size`
    /// are in flight.
    #[arg(long, env = "FREELANE_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Lane selection policy.
    #[arg(long, env = "FREELANE_POLICY", value_enum, default_value_t = PolicyArg::P2c)]
    pub policy: PolicyArg,

    /// Deadline of a request from arrival, in milliseconds (504 after it).
    #[arg(long, env = "FREELANE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Longest one engine step (cpu, cuda) may take, in milliseconds: a step that overruns it
    /// fails its batch (requests are retried on another GPU or answered) and the GPU's engine is
    /// treated as hung from then on.
    #[arg(long, env = "FREELANE_STEP_TIMEOUT_MS", default_value_t = 10_000)]
    pub step_timeout_ms: u64,

    /// sim executor: base step time in microseconds (a step of batch B takes about
    /// sim_step_us * (1 + B/32)).
    #[arg(long, env = "FREELANE_SIM_STEP_US", default_value_t = 1000)]
    pub sim_step_us: u64,

    /// sim executor: index of a simulated GPU that fails (fault injection for failover tests).
    #[arg(long, env = "FREELANE_SIM_FAIL_GPU")]
    pub sim_fail_gpu: Option<usize>,

    /// sim executor: the failing GPU fails after this many decode steps.
    #[arg(long, env = "FREELANE_SIM_FAIL_AFTER", default_value_t = 100)]
    pub sim_fail_after: u64,

    /// Log format.
    #[arg(long, env = "FREELANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level filter: error, warn, info, debug or trace.
    #[arg(long, env = "FREELANE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Model weights (safetensors, f32: embed 256 x d, w1 k*d x h, b1 h, w2 h x 256, b2 256).
    /// Default: weights generated from --seed.
    #[arg(long, env = "FREELANE_WEIGHTS")]
    pub weights: Option<PathBuf>,

    /// Seed of the generated model weights (ignored with --weights).
    #[arg(long, env = "FREELANE_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "FREELANE_BODY_LIMIT", default_value_t = 1 << 20)]
    pub body_limit: usize,

    /// Model name reported by /v1/models and in completions.
    #[arg(long, env = "FREELANE_MODEL_NAME", default_value = "freelane-byte")]
    pub model_name: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Requested executor.
    pub executor: ExecutorKind,
    /// Requested lane count (`None`: the executor's default).
    pub gpus: Option<usize>,
    /// Most sequences per decode step.
    pub max_batch_size: usize,
    /// Token budget per batch.
    pub max_batch_tokens: Option<u64>,
    /// Longest wait to fill a batch.
    pub max_wait: Duration,
    /// Admission capacity.
    pub max_queue: usize,
    /// Lane selection policy.
    pub policy: PolicyArg,
    /// Request deadline.
    pub request_timeout: Duration,
    /// Longest engine step before the device counts as hung.
    pub step_timeout: Duration,
    /// sim executor base step time.
    pub sim_step: Duration,
    /// sim fault injection: (gpu, after steps).
    pub sim_fail: Option<(usize, u64)>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level.
    pub log_level: tracing::Level,
    /// Weights file.
    pub weights: Option<PathBuf>,
    /// Weights seed.
    pub seed: u64,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// Model name.
    pub model_name: String,
}

impl Config {
    /// The longest one engine step can take: deadlines are checked between steps, so this is
    /// how late after its deadline a request can be answered (once per GPU it is tried on). The
    /// sim executor sleeps `sim_step * (1 + B / 32)` for a batch of `B` (no step timeout); the
    /// engine-thread executors (cpu, cuda) fail a step after `step_timeout`.
    pub fn longest_step(&self) -> Duration {
        match self.executor {
            ExecutorKind::Sim => self
                .sim_step
                .saturating_add(self.sim_step.mul_f64(self.max_batch_size as f64 / 32.0)),
            _ => self.step_timeout,
        }
    }

    /// How long a graceful shutdown waits for open connections: the request timeout, plus two
    /// of the longest steps (the step that runs past a request's deadline, and one more on the
    /// GPU its failed batch is retried on), plus 2 s of slack. By then every accepted request
    /// has been answered; what is left is a client still sending its request (never accepted)
    /// or an idle keep-alive connection.
    pub fn shutdown_grace(&self) -> Duration {
        self.request_timeout
            .saturating_add(self.longest_step().saturating_mul(2))
            .saturating_add(Duration::from_secs(2))
    }
}

/// Most lanes accepted (a sanity bound, not a hardware limit).
pub const MAX_LANES: usize = 256;
/// Largest `max_tokens` a request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 4096;

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag at fault (e.g. `--max-batch-size`).
    pub flag: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.flag, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

impl Args {
    /// Checks every value and builds the typed [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let ip: IpAddr = self
            .host
            .parse()
            .map_err(|_| err("--host", format!("{:?} is not an ip address", self.host)))?;
        if let Some(g) = self.gpus {
            if g == 0 || g > MAX_LANES {
                return Err(err("--gpus", format!("must be 1..={MAX_LANES}, got {g}")));
            }
        }
        if self.max_batch_size == 0 || self.max_batch_size > 4096 {
            return Err(err(
                "--max-batch-size",
                format!("must be 1..=4096, got {}", self.max_batch_size),
            ));
        }
        if self.max_batch_tokens == Some(0) {
            return Err(err("--max-batch-tokens", "must be at least 1"));
        }
        if self.max_queue == 0 || self.max_queue > 1 << 24 {
            return Err(err(
                "--max-queue",
                format!("must be 1..=16777216, got {}", self.max_queue),
            ));
        }
        if self.max_wait_us > 10_000_000 {
            return Err(err("--max-wait-us", "must be at most 10 s (10000000)"));
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 3_600_000 {
            return Err(err(
                "--request-timeout-ms",
                format!("must be 1..=3600000, got {}", self.request_timeout_ms),
            ));
        }
        if self.step_timeout_ms == 0 || self.step_timeout_ms > 3_600_000 {
            return Err(err(
                "--step-timeout-ms",
                format!("must be 1..=3600000, got {}", self.step_timeout_ms),
            ));
        }
        if self.sim_step_us > 10_000_000 {
            return Err(err("--sim-step-us", "must be at most 10 s (10000000)"));
        }
        let sim_fail = match self.sim_fail_gpu {
            None => None,
            Some(g) => {
                if self.executor != ExecutorKind::Sim {
                    return Err(err("--sim-fail-gpu", "only applies to --executor sim"));
                }
                let lanes = self.gpus.unwrap_or(DEFAULT_SIM_LANES);
                if g >= lanes {
                    return Err(err(
                        "--sim-fail-gpu",
                        format!("gpu {g} does not exist (there are {lanes} simulated gpus)"),
                    ));
                }
                Some((g, self.sim_fail_after))
            }
        };
        let log_level: tracing::Level = self.log_level.parse().map_err(|_| {
            err(
                "--log-level",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.log_level
                ),
            )
        })?;
        if self.body_limit < 64 || self.body_limit > 1 << 30 {
            return Err(err(
                "--body-limit",
                format!("must be 64..=1073741824 bytes, got {}", self.body_limit),
            ));
        }
        if let Some(w) = &self.weights {
            if !w.is_file() {
                return Err(err(
                    "--weights",
                    format!("{} is not a readable file", w.display()),
                ));
            }
        }
        if self.model_name.is_empty() {
            return Err(err("--model-name", "must not be empty"));
        }
        Ok(Config {
            addr: SocketAddr::new(ip, self.port),
            executor: self.executor,
            gpus: self.gpus,
            max_batch_size: self.max_batch_size,
            max_batch_tokens: self.max_batch_tokens,
            max_wait: Duration::from_micros(self.max_wait_us),
            max_queue: self.max_queue,
            policy: self.policy,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            step_timeout: Duration::from_millis(self.step_timeout_ms),
            sim_step: Duration::from_micros(self.sim_step_us),
            sim_fail,
            log_format: self.log_format,
            log_level,
            weights: self.weights,
            seed: self.seed,
            body_limit: self.body_limit,
            model_name: self.model_name,
        })
    }
}

/// Default lane count of the sim executor.
pub const DEFAULT_SIM_LANES: usize = 2;
/// Default lane count of the cpu executor.
pub const DEFAULT_CPU_LANES: usize = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["freelane-server"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        a.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn no_flags_gives_documented_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.max_batch_size, 32);
        assert_eq!(c.max_queue, 1024);
        assert_eq!(c.max_wait, Duration::from_micros(2000));
        assert_eq!(c.request_timeout, Duration::from_millis(30_000));
        assert_eq!(c.step_timeout, Duration::from_millis(10_000));
        assert_eq!(c.executor, ExecutorKind::Auto);
        assert_eq!(c.policy, PolicyArg::P2c);
        assert_eq!(c.body_limit, 1 << 20);
    }

    #[test]
    fn shutdown_grace_covers_the_request_timeout_and_two_of_the_longest_steps() {
        // Engine threads: a step fails after --step-timeout-ms.
        let c = parse(&["--executor", "cpu", "--request-timeout-ms", "500"]).unwrap();
        assert_eq!(c.longest_step(), Duration::from_secs(10));
        assert_eq!(
            c.shutdown_grace(),
            Duration::from_millis(500 + 20_000 + 2_000)
        );
        // sim: its step at a full batch, 3 s * (1 + 64 / 32).
        let c = parse(&[
            "--executor",
            "sim",
            "--sim-step-us",
            "3000000",
            "--max-batch-size",
            "64",
            "--request-timeout-ms",
            "200",
        ])
        .unwrap();
        assert_eq!(c.longest_step(), Duration::from_secs(9));
        assert_eq!(
            c.shutdown_grace(),
            Duration::from_millis(200 + 18_000 + 2_000)
        );
        // The largest accepted values do not overflow.
        let c = parse(&[
            "--executor",
            "sim",
            "--sim-step-us",
            "10000000",
            "--max-batch-size",
            "4096",
            "--request-timeout-ms",
            "3600000",
        ])
        .unwrap();
        assert!(c.shutdown_grace() > Duration::from_secs(3600));
    }

    #[test]
    fn invalid_values_are_rejected_with_the_flag_named() {
        for (args, flag) in [
            (&["--max-batch-size", "0"][..], "--max-batch-size"),
            (&["--gpus", "0"][..], "--gpus"),
            (&["--max-queue", "0"][..], "--max-queue"),
            (&["--host", "not-an-ip"][..], "--host"),
            (&["--log-level", "loud"][..], "--log-level"),
            (&["--request-timeout-ms", "0"][..], "--request-timeout-ms"),
            (&["--step-timeout-ms", "0"][..], "--step-timeout-ms"),
            (&["--sim-fail-gpu", "1"][..], "--sim-fail-gpu"),
            (
                &["--executor", "sim", "--sim-fail-gpu", "5"][..],
                "--sim-fail-gpu",
            ),
            (
                &["--weights", "/nonexistent/w.safetensors"][..],
                "--weights",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn unknown_enum_values_fail_to_parse() {
        assert!(parse(&["--executor", "tpu"]).is_err());
        assert!(parse(&["--policy", "random"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
    }

    #[test]
    fn sim_fault_injection_parses() {
        let c = parse(&[
            "--executor",
            "sim",
            "--gpus",
            "3",
            "--sim-fail-gpu",
            "1",
            "--sim-fail-after",
            "7",
        ])
        .unwrap();
        assert_eq!(c.sim_fail, Some((1, 7)));
    }
}
