//! Command-line options of the `mt-scaling` binary, parsed and validated without panics.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Component, Impl};

/// Usage text printed by `--help` and after a usage error.
pub const USAGE: &str = "\
usage: mt-scaling [--threads 1,2,4,8,12,16] [--quick] [--json FILE] [--svg FILE]
                  [--components queue,load,health,logger,metrics,end_to_end]
                  [--impls freelane,mutex] [--duration-ms N] [--reps N]

  --threads LIST     thread counts to measure (default 1,2,4,8,12,16; include 1 for efficiency)
  --quick            short trials (also FREELANE_BENCH_QUICK=1): 60 ms x 3 reps
  --json FILE        write the JSON report to FILE
  --svg FILE         write the throughput-vs-threads plot (SVG) to FILE
  --components LIST  components to run (default: all)
  --impls LIST       implementations to run (default: freelane,mutex; one alone is for
                     profiling, e.g. under `perf record`: no speed-ups then)
  --duration-ms N    length of one trial in milliseconds (default 200, quick 60)
  --reps N           timed rounds after one warm-up round (default 5, quick 3)
  --help             print this text";

/// Longest accepted trial, to catch typos such as an extra zero or two.
const MAX_DURATION_MS: u64 = 60_000;
/// Most threads accepted in `--threads`.
const MAX_THREADS: usize = 1024;
/// Most timed rounds accepted in `--reps`.
const MAX_REPS: usize = 1000;

/// Validated options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Options {
    /// Thread counts, ascending, without duplicates.
    pub threads: Vec<usize>,
    /// Components to run, in the canonical order.
    pub components: Vec<Component>,
    /// Implementations to run, in the canonical order.
    pub impls: Vec<Impl>,
    /// Length of one trial.
    #[serde(serialize_with = "ser_ms", rename = "duration_ms")]
    pub duration: Duration,
    /// Timed rounds (after one untimed warm-up round).
    pub reps: usize,
    /// Whether quick mode was asked for.
    pub quick: bool,
    /// Where to write the JSON report.
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// Where to write the SVG plot.
    #[serde(skip)]
    pub svg: Option<PathBuf>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// What went wrong while parsing the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// `--help` was given: print [`USAGE`] and exit successfully.
    Help,
    /// A flag that this binary does not know.
    UnknownFlag(String),
    /// A flag that needs a value was last on the line.
    MissingValue(&'static str),
    /// A value that does not parse or is out of range.
    BadValue {
        /// The flag.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help => f.write_str("help requested"),
            CliError::UnknownFlag(s) => write!(f, "unknown argument `{s}`"),
            CliError::MissingValue(flag) => write!(f, "`{flag}` needs a value"),
            CliError::BadValue {
                flag,
                value,
                reason,
            } => write!(f, "invalid value `{value}` for `{flag}`: {reason}"),
        }
    }
}

impl std::error::Error for CliError {}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> CliError {
    CliError::BadValue {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse_threads(value: &str) -> Result<Vec<usize>, CliError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad("--threads", value, "empty entry in the list"));
        }
        let n: usize = part
            .parse()
            .map_err(|_| bad("--threads", value, format!("`{part}` is not a number")))?;
        if n == 0 || n > MAX_THREADS {
            return Err(bad(
                "--threads",
                value,
                format!("thread counts must be between 1 and {MAX_THREADS}"),
            ));
        }
        out.push(n);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_components(value: &str) -> Result<Vec<Component>, CliError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim) {
        let c = Component::from_name(part).ok_or_else(|| {
            bad(
                "--components",
                value,
                format!(
                    "unknown component `{part}` (known: {})",
                    Component::ALL.map(Component::name).join(", ")
                ),
            )
        })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| Component::ALL.iter().position(|x| x == c));
    Ok(out)
}

fn parse_impls(value: &str) -> Result<Vec<Impl>, CliError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim) {
        let i = Impl::ALL
            .into_iter()
            .find(|i| i.name() == part)
            .ok_or_else(|| {
                bad(
                    "--impls",
                    value,
                    format!("unknown implementation `{part}` (known: freelane, mutex)"),
                )
            })?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out.sort_by_key(|i| Impl::ALL.iter().position(|x| x == i));
    Ok(out)
}

fn parse_u64(flag: &'static str, value: &str, min: u64, max: u64) -> Result<u64, CliError> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| bad(flag, value, "not a whole number"))?;
    if n < min || n > max {
        return Err(bad(flag, value, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

impl Options {
    /// Parses the arguments after the program name. `quick_env` is the value of
    /// `FREELANE_BENCH_QUICK` (quick mode when it is set to anything but "" or "0").
    pub fn parse<I>(args: I, quick_env: Option<&str>) -> Result<Options, CliError>
    where
        I: IntoIterator<Item = String>,
    {
        let mut threads = None;
        let mut components = None;
        let mut impls = None;
        let mut duration_ms = None;
        let mut reps = None;
        let mut quick = matches!(quick_env, Some(v) if !v.is_empty() && v != "0");
        let mut json = None;
        let mut svg = None;

        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &'static str| -> Result<String, CliError> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args.next().ok_or(CliError::MissingValue(name)),
                }
            };
            match flag.as_str() {
                "--help" | "-h" => return Err(CliError::Help),
                "--quick" => {
                    if inline.is_some() {
                        return Err(CliError::UnknownFlag(arg));
                    }
                    quick = true;
                }
                "--threads" => threads = Some(parse_threads(&value("--threads")?)?),
                "--components" => components = Some(parse_components(&value("--components")?)?),
                "--impls" => impls = Some(parse_impls(&value("--impls")?)?),
                "--duration-ms" => {
                    duration_ms = Some(parse_u64(
                        "--duration-ms",
                        &value("--duration-ms")?,
                        1,
                        MAX_DURATION_MS,
                    )?)
                }
                "--reps" => {
                    reps =
                        Some(parse_u64("--reps", &value("--reps")?, 1, MAX_REPS as u64)? as usize)
                }
                "--json" => json = Some(PathBuf::from(value("--json")?)),
                "--svg" => svg = Some(PathBuf::from(value("--svg")?)),
                _ => return Err(CliError::UnknownFlag(arg)),
            }
        }
        let (default_ms, default_reps) = if quick { (60, 3) } else { (200, 5) };
        Ok(Options {
            threads: threads.unwrap_or_else(|| vec![1, 2, 4, 8, 12, 16]),
            components: components.unwrap_or_else(|| Component::ALL.to_vec()),
            impls: impls.unwrap_or_else(|| Impl::ALL.to_vec()),
            duration: Duration::from_millis(duration_ms.unwrap_or(default_ms)),
            reps: reps.unwrap_or(default_reps),
            quick,
            json,
            svg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, CliError> {
        Options::parse(args.iter().map(|s| s.to_string()), None)
    }

    #[test]
    fn defaults_cover_every_component_and_the_issue_thread_counts() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.threads, vec![1, 2, 4, 8, 12, 16]);
        assert_eq!(o.components, Component::ALL.to_vec());
        assert_eq!(
            (o.duration, o.reps, o.quick),
            (Duration::from_millis(200), 5, false)
        );
    }

    #[test]
    fn quick_shortens_trials_from_flag_or_env() {
        let o = parse(&["--quick"]).unwrap();
        assert_eq!((o.duration, o.reps), (Duration::from_millis(60), 3));
        let o = Options::parse(Vec::<String>::new(), Some("1")).unwrap();
        assert!(o.quick);
        let o = Options::parse(Vec::<String>::new(), Some("0")).unwrap();
        assert!(!o.quick);
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_both_value_forms_work() {
        let o = parse(&[
            "--threads",
            "4,1,4,2",
            "--components=end_to_end,queue,queue",
        ])
        .unwrap();
        assert_eq!(o.threads, vec![1, 2, 4]);
        assert_eq!(o.components, vec![Component::Queue, Component::EndToEnd]);
        let o = parse(&["--impls", "mutex,freelane,mutex"]).unwrap();
        assert_eq!(o.impls, vec![Impl::Freelane, Impl::Mutex]);
        let o = parse(&["--duration-ms=5", "--reps", "2", "--json", "x.json"]).unwrap();
        assert_eq!(o.duration, Duration::from_millis(5));
        assert_eq!(o.reps, 2);
        assert_eq!(o.json, Some(PathBuf::from("x.json")));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            parse(&["--threads", "0"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--threads", "1,,2"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--threads", "two"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--reps", "0"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--duration-ms", "-3"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--components", "gpu"]),
            Err(CliError::BadValue { .. })
        ));
        assert_eq!(parse(&["--json"]), Err(CliError::MissingValue("--json")));
        assert_eq!(
            parse(&["--fast"]),
            Err(CliError::UnknownFlag("--fast".into()))
        );
        assert_eq!(parse(&["--help"]), Err(CliError::Help));
        let msg = parse(&["--threads", "0"]).unwrap_err().to_string();
        assert!(
            msg.starts_with("invalid value `0` for `--threads`"),
            "{msg}"
        );
    }
}
