//! Property tests against sequential models: quantiles vs exact sorted data, exact histogram
//! statistics, and an exposition that parses back (with a strict parser of the text format
//! written here) to the registered values. Also `promtool check metrics` when it is installed.

use std::collections::BTreeMap;
use std::sync::Arc;

use freelane_metrics::{Histogram, HistogramOpts, Registry};
use proptest::prelude::*;

/// The nearest-rank quantile of sorted data, as `Snapshot::quantile` defines it.
fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    if q <= 0.0 {
        return sorted[0];
    }
    let n = sorted.len() as u64;
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    sorted[rank as usize - 1]
}

/// Values spread over many orders of magnitude (1 ns .. ~hours) plus small exact ones.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        (0u32..42, any::<u64>()).prop_map(|(shift, r)| (1u64 << shift) + r % (1u64 << shift)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    #[cfg_attr(miri, ignore)]
    fn quantiles_are_within_one_percent_of_exact_sorted_data(
        mut values in prop::collection::vec(value(), 1..2000),
        qs in prop::collection::vec(0.0f64..=1.0, 1..20),
    ) {
        let h = Histogram::new();
        for &v in &values {
            h.record(v);
        }
        let s = h.snapshot();
        values.sort_unstable();
        prop_assert_eq!(s.count(), values.len() as u64);
        prop_assert_eq!(s.sum(), values.iter().sum::<u64>());
        prop_assert_eq!(s.min(), values[0]);
        prop_assert_eq!(s.max(), *values.last().unwrap());
        for q in qs.into_iter().chain([0.0, 0.5, 0.9, 0.99, 0.999, 1.0]) {
            let exact = exact_quantile(&values, q) as f64;
            let got = s.quantile(q) as f64;
            prop_assert!(
                (got - exact).abs() <= exact * 0.01,
                "q={} exact={} got={}", q, exact, got
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text format 0.0.4 (the subset a registry emits).

#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    /// (metric name incl. suffix, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn unescape(s: &str, quote: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quote => out.push('"'),
                other => return Err(format!("bad escape \\{other:?} in {s:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    // `s` starts right after '{'; returns the labels and the rest after '}'.
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            }
        }
        let end = end.ok_or("unterminated label value")?;
        let value = unescape(&rest[..end], true)?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("duplicate label {name}"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        }
    }
}

/// A series' labels other than `le`, sorted.
type SeriesKey = Vec<(String, String)>;
/// A series' `(le, cumulative count)` buckets and its `_count`.
type SeriesData = (Vec<(f64, f64)>, Option<f64>);

/// Parses an exposition into families keyed by name, checking the structure as it goes.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let f = fams.entry(name.to_string()).or_default();
            if f.help.is_some() || !f.samples.is_empty() {
                return Err(format!("HELP for {name} repeated or after samples"));
            }
            f.help = Some(unescape(help, false)?);
            current = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("TYPE without kind")?;
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!("unknown type {kind}"));
            }
            let f = fams.entry(name.to_string()).or_default();
            if f.kind.is_some() || !f.samples.is_empty() {
                return Err(format!("TYPE for {name} repeated or after samples"));
            }
            f.kind = Some(kind.to_string());
            current = Some(name.to_string());
        } else if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line {line:?}"));
        } else {
            let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
            let metric = &line[..name_end];
            if !valid_metric_name(metric) {
                return Err(format!("bad metric name {metric:?}"));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..])?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let value = parse_value(rest.strip_prefix(' ').ok_or("no space before value")?)?;
            let fam_name = current.clone().ok_or("sample before any TYPE")?;
            let f = fams.get_mut(&fam_name).unwrap();
            let ok = match f.kind.as_deref() {
                Some("histogram") => [
                    format!("{fam_name}_bucket"),
                    format!("{fam_name}_sum"),
                    format!("{fam_name}_count"),
                ]
                .contains(&metric.to_string()),
                _ => metric == fam_name,
            };
            if !ok {
                return Err(format!(
                    "sample {metric} does not belong to family {fam_name}"
                ));
            }
            f.samples.push((metric.to_string(), labels, value));
        }
    }
    // Histogram structure: per series, buckets cumulative, ending in +Inf == _count.
    for (name, f) in &fams {
        if f.kind.as_deref() != Some("histogram") {
            continue;
        }
        let mut series: BTreeMap<SeriesKey, SeriesData> = BTreeMap::new();
        for (metric, labels, v) in &f.samples {
            let mut key: Vec<_> = labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            key.sort();
            let e = series.entry(key).or_default();
            if metric.ends_with("_bucket") {
                let le = parse_value(labels.get("le").ok_or("bucket without le")?)?;
                e.0.push((le, *v));
            } else if metric.ends_with("_count") {
                e.1 = Some(*v);
            }
        }
        for (key, (buckets, count)) in series {
            let count = count.ok_or(format!("{name}{key:?} has no _count"))?;
            let last = buckets.last().ok_or("no buckets")?;
            if last.0 != f64::INFINITY || last.1 != count {
                return Err(format!("{name}: +Inf bucket missing or != _count"));
            }
            for w in buckets.windows(2) {
                if w[0].0 >= w[1].0 || w[0].1 > w[1].1 {
                    return Err(format!("{name}: buckets not increasing/cumulative"));
                }
            }
        }
    }
    Ok(fams)
}

#[derive(Debug, Clone)]
enum Op {
    Counter {
        name: usize,
        label: String,
        add: u64,
    },
    Gauge {
        name: usize,
        label: String,
        set: i64,
    },
    Hist {
        name: usize,
        label: String,
        values: Vec<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let label = "\\PC{0,12}"; // any printable text, incl. quotes and backslashes
    prop_oneof![
        (0usize..3, label, 0u64..1_000_000).prop_map(|(name, label, add)| Op::Counter {
            name,
            label,
            add
        }),
        (0usize..3, label, any::<i64>()).prop_map(|(name, label, set)| Op::Gauge {
            name,
            label,
            set
        }),
        (0usize..3, label, prop::collection::vec(value(), 0..50)).prop_map(
            |(name, label, values)| Op::Hist {
                name,
                label,
                values
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    #[cfg_attr(miri, ignore)]
    fn exposition_parses_back_to_the_registered_values(
        ops in prop::collection::vec(op(), 1..30),
        newline_help in any::<bool>(),
    ) {
        let r = Registry::new();
        let help = if newline_help { "Help with \\ and\nnewline." } else { "Help." };
        // Model: (family, label value) -> expected value.
        let mut counters: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut gauges: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut hists: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Counter { name, label, add } => {
                    let n = format!("c{name}_total");
                    r.counter(&n, help, &[("l", label)]).add(*add);
                    *counters.entry((n, label.clone())).or_default() += add;
                }
                Op::Gauge { name, label, set } => {
                    let n = format!("g{name}");
                    r.gauge(&n, help, &[("l", label)]).set(*set);
                    gauges.insert((n, label.clone()), *set);
                }
                Op::Hist { name, label, values } => {
                    let n = format!("h{name}_seconds");
                    let h = r.histogram_with(&n, help, &[("l", label)], HistogramOpts::nanos_as_seconds());
                    for &v in values {
                        h.record(v);
                    }
                    hists.entry((n, label.clone())).or_default().extend(values);
                }
            }
        }
        let text = r.render_prometheus();
        let fams = parse_exposition(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        for f in fams.values() {
            prop_assert_eq!(f.help.as_deref(), Some(help));
        }
        for ((n, l), v) in &counters {
            let f = &fams[n];
            prop_assert_eq!(f.kind.as_deref(), Some("counter"));
            let s = f.samples.iter().find(|s| s.1["l"] == *l).unwrap();
            prop_assert_eq!(s.2, *v as f64);
        }
        for ((n, l), v) in &gauges {
            let s = fams[n].samples.iter().find(|s| s.1["l"] == *l).unwrap();
            prop_assert_eq!(s.2, *v as f64);
        }
        for ((n, l), vs) in &hists {
            let f = &fams[n];
            let series: Vec<_> = f.samples.iter().filter(|s| s.1["l"] == *l).collect();
            let count = series.iter().find(|s| s.0.ends_with("_count")).unwrap().2;
            let sum = series.iter().find(|s| s.0.ends_with("_sum")).unwrap().2;
            prop_assert_eq!(count, vs.len() as f64);
            let exact_sum = vs.iter().sum::<u64>() as f64 * 1e-9;
            prop_assert!((sum - exact_sum).abs() <= exact_sum * 1e-12 + 1e-18);
            // Each exposed bucket is within the documented slack: exact counts of values
            // at most 0.8% below the boundary are a lower bound, all values <= it an upper bound.
            for s in series.iter().filter(|s| s.0.ends_with("_bucket")) {
                let le = parse_value(&s.1["le"]).unwrap();
                if le.is_infinite() {
                    continue;
                }
                let raw = le / 1e-9;
                let upper = vs.iter().filter(|&&v| v as f64 <= raw).count() as f64;
                let lower = vs.iter().filter(|&&v| (v as f64) <= raw * (1.0 - 1.0 / 128.0) - 1.0).count() as f64;
                prop_assert!(s.2 <= upper && s.2 >= lower, "le={} got {} want [{}, {}]", le, s.2, lower, upper);
            }
        }
    }
}

#[test]
fn histogram_record_racing_snapshots_never_exceeds_what_was_recorded() {
    const N: u64 = if cfg!(miri) { 40 } else { 50_000 };
    let h = Arc::new(Histogram::new());
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                for i in 0..N {
                    h.record(i % 1000);
                }
            })
        })
        .collect();
    let mut last = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        let c = h.snapshot().count();
        assert!(c <= 3 * N);
        assert!(c >= last, "count went backwards");
        last = c;
    }
    for w in writers {
        w.join().unwrap();
    }
    let s = h.snapshot();
    assert_eq!(s.count(), 3 * N);
    assert_eq!(s.sum(), 3 * (0..N).map(|i| i % 1000).sum::<u64>());
}

#[test]
#[cfg_attr(miri, ignore)]
fn promtool_accepts_the_exposition() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("skipping: promtool is not installed (apt-get install prometheus provides it)");
        return;
    };
    assert!(out.status.success());
    let r = Registry::new();
    r.counter(
        "freelane_requests_total",
        "Requests answered.",
        &[("status", "ok")],
    )
    .add(5);
    r.gauge("freelane_in_flight", "Requests in flight.", &[("gpu", "0")])
        .set(3);
    let h = r.histogram_with(
        "freelane_request_duration_seconds",
        "End-to-end latency.",
        &[("gpu", "0")],
        HistogramOpts::nanos_as_seconds(),
    );
    for v in [900, 15_000, 2_000_000, 3_000_000_000] {
        h.record(v);
    }
    r.counter_fn(
        "freelane_log_dropped_total",
        "Log events dropped.",
        &[],
        || 0.0,
    )
    .unwrap();
    let text = r.render_prometheus();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
