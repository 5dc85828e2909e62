//! Named metrics with help text and labels, and the Prometheus text exposition.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use freelane_sync::sync::{Arc, Mutex};

use crate::{Counter, Gauge, Histogram};

/// Why a registration was refused. Every message is lowercase and names the offending input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricError {
    /// The metric name is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    InvalidName(String),
    /// A label name is not `[a-zA-Z_][a-zA-Z0-9_]*`, starts with `__`, or is `le` on a histogram.
    InvalidLabel(String),
    /// The same label name appears twice.
    DuplicateLabel(String),
    /// The name is already registered as a different kind of metric.
    KindMismatch {
        /// The metric name.
        name: String,
        /// The kind it was first registered as.
        existing: &'static str,
        /// The kind asked for now.
        requested: &'static str,
    },
    /// A histogram family was registered again with different options (scale or buckets).
    OptionsMismatch(String),
    /// The histogram options are unusable (non-positive or non-finite scale, bad buckets).
    InvalidOptions(String),
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(n) => write!(f, "invalid metric name `{n}`"),
            Self::InvalidLabel(n) => write!(f, "invalid label name `{n}`"),
            Self::DuplicateLabel(n) => write!(f, "label `{n}` given twice"),
            Self::KindMismatch {
                name,
                existing,
                requested,
            } => write!(
                f,
                "metric `{name}` is already registered as a {existing}, not a {requested}"
            ),
            Self::OptionsMismatch(n) => write!(
                f,
                "histogram `{n}` is already registered with different options"
            ),
            Self::InvalidOptions(why) => write!(f, "invalid histogram options: {why}"),
        }
    }
}

impl std::error::Error for MetricError {}

/// How a histogram's values are exposed: a scale applied to recorded values (and to the sum)
/// and the `le` boundaries, in exposed units.
///
/// The internal buckets are far finer (about 0.8% wide); the exposed boundaries are a bounded set
/// chosen here so scrapes stay small. A value counts towards a boundary when its whole internal
/// bucket lies at or below it, so a count may be off by values within 0.8% of a boundary. The top
/// internal bucket also holds every larger (clamped) value, so values in it (recorded values of
/// about 2^44 · 0.996 and above, before scaling) count only towards `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramOpts {
    scale: f64,
    buckets: Vec<f64>,
}

/// `[m * 10^e for e in exps for m in (1, 2.5, 5)]`, parsed from decimal so they print cleanly.
fn one_two_five(exps: std::ops::RangeInclusive<i32>) -> Vec<f64> {
    exps.flat_map(|e| {
        ["1", "2.5", "5"]
            .into_iter()
            .map(move |m| format!("{m}e{e}").parse::<f64>().unwrap_or(0.0))
    })
    .collect()
}

impl HistogramOpts {
    /// Values exposed as recorded (scale 1), boundaries 1, 2.5, 5, 10, ... 5e9.
    pub fn new() -> Self {
        Self {
            scale: 1.0,
            buckets: one_two_five(0..=9),
        }
    }

    /// For nanosecond recordings exposed in seconds (name the metric `..._seconds`): scale 1e-9,
    /// boundaries 1 µs, 2.5 µs, 5 µs, ... 50 s, 100 s.
    pub fn nanos_as_seconds() -> Self {
        let mut buckets = one_two_five(-6..=1);
        buckets.push(100.0);
        Self {
            scale: 1e-9,
            buckets,
        }
    }

    /// Multiplies recorded values by `scale` on exposition (validated at registration).
    pub fn scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// Sets the exposed `le` boundaries, in exposed units, strictly increasing and finite
    /// (validated at registration); `+Inf` is always added.
    pub fn buckets(mut self, buckets: Vec<f64>) -> Self {
        self.buckets = buckets;
        self
    }

    fn validate(&self) -> Result<(), MetricError> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(MetricError::InvalidOptions(format!(
                "scale must be finite and positive, got {}",
                self.scale
            )));
        }
        if self.buckets.iter().any(|b| !b.is_finite()) {
            return Err(MetricError::InvalidOptions(
                "bucket boundaries must be finite (+Inf is implicit)".into(),
            ));
        }
        if self.buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MetricError::InvalidOptions(
                "bucket boundaries must be strictly increasing".into(),
            ));
        }
        Ok(())
    }
}

impl Default for HistogramOpts {
    fn default() -> Self {
        Self::new()
    }
}

/// A callback; std's `Arc` even under loom (loom's `Arc` does not coerce to `dyn`, and callbacks
/// are not part of any modelled protocol).
type ValueFn = std::sync::Arc<dyn Fn() -> f64 + Send + Sync>;

#[derive(Clone)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
    /// A value read from a callback at exposition time (e.g. a logger's statistics).
    Callback(ValueFn),
}

struct Series {
    labels: Vec<(String, String)>,
    metric: Metric,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    help: String,
    kind: Kind,
    opts: Option<HistogramOpts>,
    series: Vec<Series>,
}

/// A set of named metric families with help text and labels, rendered as Prometheus text.
///
/// Registration takes a lock (a cold path: do it once, keep the returned `Arc`); recording into
/// the returned metrics never touches the registry. Registering the same name and label set again
/// returns the same metric (label order does not matter).
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Family>>,
}

fn valid_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn normalize_labels(
    labels: &[(&str, &str)],
    kind: Kind,
) -> Result<Vec<(String, String)>, MetricError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(labels.len());
    for &(k, v) in labels {
        if !valid_name(k, false) || k.starts_with("__") || (kind == Kind::Histogram && k == "le") {
            return Err(MetricError::InvalidLabel(k.to_string()));
        }
        if out.iter().any(|(ek, _)| ek == k) {
            return Err(MetricError::DuplicateLabel(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    out.sort();
    Ok(out)
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    #[allow(clippy::too_many_arguments)] // private helper shared by every kind
    fn register<T>(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        opts: Option<HistogramOpts>,
        existing: impl Fn(&Metric) -> Option<T>,
        make: impl FnOnce() -> (Metric, T),
    ) -> Result<T, MetricError> {
        if !valid_name(name, true) {
            return Err(MetricError::InvalidName(name.to_string()));
        }
        if let Some(o) = &opts {
            o.validate()?;
        }
        let labels = normalize_labels(labels, kind)?;
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            opts: opts.clone(),
            series: Vec::new(),
        });
        if family.kind != kind {
            return Err(MetricError::KindMismatch {
                name: name.to_string(),
                existing: family.kind.as_str(),
                requested: kind.as_str(),
            });
        }
        if family.opts != opts {
            return Err(MetricError::OptionsMismatch(name.to_string()));
        }
        if let Some(s) = family.series.iter().find(|s| s.labels == labels) {
            return existing(&s.metric).ok_or_else(|| MetricError::KindMismatch {
                name: name.to_string(),
                existing: "callback",
                requested: kind.as_str(),
            });
        }
        let (metric, handle) = make();
        family.series.push(Series { labels, metric });
        Ok(handle)
    }

    /// Registers (or finds) a counter.
    pub fn try_counter(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Arc<Counter>, MetricError> {
        self.register(
            name,
            help,
            labels,
            Kind::Counter,
            None,
            |m| match m {
                Metric::Counter(c) => Some(Arc::clone(c)),
                _ => None,
            },
            || {
                let c = Arc::new(Counter::new());
                (Metric::Counter(Arc::clone(&c)), c)
            },
        )
    }

    /// Registers (or finds) a counter.
    ///
    /// # Panics
    /// On an invalid name or label or a kind clash (a programming error); use
    /// [`try_counter`](Self::try_counter) to handle these as values.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Counter> {
        self.try_counter(name, help, labels)
            .unwrap_or_else(|e| panic!("freelane-metrics: {e}"))
    }

    /// Registers (or finds) a gauge.
    pub fn try_gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Arc<Gauge>, MetricError> {
        self.register(
            name,
            help,
            labels,
            Kind::Gauge,
            None,
            |m| match m {
                Metric::Gauge(g) => Some(Arc::clone(g)),
                _ => None,
            },
            || {
                let g = Arc::new(Gauge::new());
                (Metric::Gauge(Arc::clone(&g)), g)
            },
        )
    }

    /// Registers (or finds) a gauge.
    ///
    /// # Panics
    /// As [`counter`](Self::counter); see [`try_gauge`](Self::try_gauge).
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Gauge> {
        self.try_gauge(name, help, labels)
            .unwrap_or_else(|e| panic!("freelane-metrics: {e}"))
    }

    /// Registers (or finds) a histogram exposed with `opts`. Every series of one family must use
    /// the same options.
    pub fn try_histogram_with(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        opts: HistogramOpts,
    ) -> Result<Arc<Histogram>, MetricError> {
        self.register(
            name,
            help,
            labels,
            Kind::Histogram,
            Some(opts),
            |m| match m {
                Metric::Histogram(h) => Some(Arc::clone(h)),
                _ => None,
            },
            || {
                let h = Arc::new(Histogram::new());
                (Metric::Histogram(Arc::clone(&h)), h)
            },
        )
    }

    /// Registers (or finds) a histogram exposed with `opts`
    /// (e.g. [`HistogramOpts::nanos_as_seconds`]).
    ///
    /// # Panics
    /// As [`counter`](Self::counter), and on invalid or mismatched options; see
    /// [`try_histogram_with`](Self::try_histogram_with).
    pub fn histogram_with(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        opts: HistogramOpts,
    ) -> Arc<Histogram> {
        self.try_histogram_with(name, help, labels, opts)
            .unwrap_or_else(|e| panic!("freelane-metrics: {e}"))
    }

    /// Registers (or finds) a histogram exposed as recorded ([`HistogramOpts::new`]).
    ///
    /// # Panics
    /// As [`histogram_with`](Self::histogram_with).
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Histogram> {
        self.histogram_with(name, help, labels, HistogramOpts::new())
    }

    /// Registers a counter whose value is read from `f` at exposition time (for counts kept
    /// elsewhere, e.g. a logger's drop count). Registering the same name and labels again fails.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Result<(), MetricError> {
        self.callback(name, help, labels, Kind::Counter, std::sync::Arc::new(f))
    }

    /// Registers a gauge whose value is read from `f` at exposition time.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Result<(), MetricError> {
        self.callback(name, help, labels, Kind::Gauge, std::sync::Arc::new(f))
    }

    fn callback(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        f: ValueFn,
    ) -> Result<(), MetricError> {
        self.register(
            name,
            help,
            labels,
            kind,
            None,
            |_| None::<()>,
            || (Metric::Callback(f), ()),
        )
    }

    /// Renders every family in the Prometheus text exposition format 0.0.4 (`# HELP`, `# TYPE`,
    /// one line per series; histograms as cumulative `_bucket{le=...}` including `+Inf`, then
    /// `_sum` and `_count`). Families are sorted by name, series by registration order.
    ///
    /// The registry's lock is held only to copy the list of families (names, labels and shared
    /// handles of the metrics); metrics are read and callbacks run after it is released, so a
    /// callback may itself register metrics or render without deadlocking.
    pub fn render_prometheus(&self) -> String {
        type SeriesView = (Vec<(String, String)>, Metric);
        let families: Vec<(String, Family, Vec<SeriesView>)> = {
            let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
            families
                .iter()
                .map(|(name, fam)| {
                    let series = fam
                        .series
                        .iter()
                        .map(|s| (s.labels.clone(), s.metric.clone()))
                        .collect();
                    let head = Family {
                        help: fam.help.clone(),
                        kind: fam.kind,
                        opts: fam.opts.clone(),
                        series: Vec::new(),
                    };
                    (name.clone(), head, series)
                })
                .collect()
        };
        let mut out = String::new();
        for (name, fam, series) in &families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&fam.help));
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind.as_str());
            for (series_labels, metric) in series {
                match metric {
                    Metric::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {}", labels(series_labels, None), c.get());
                    }
                    Metric::Gauge(g) => {
                        let _ = writeln!(out, "{name}{} {}", labels(series_labels, None), g.get());
                    }
                    Metric::Callback(f) => {
                        let v = fmt_float(f());
                        let _ = writeln!(out, "{name}{} {v}", labels(series_labels, None));
                    }
                    Metric::Histogram(h) => {
                        let opts = fam.opts.as_ref().cloned().unwrap_or_default();
                        render_histogram(&mut out, name, series_labels, h, &opts);
                    }
                }
            }
        }
        out
    }
}

fn render_histogram(
    out: &mut String,
    name: &str,
    series_labels: &[(String, String)],
    h: &Histogram,
    opts: &HistogramOpts,
) {
    let snap = h.snapshot();
    for &b in &opts.buckets {
        let raw = b / opts.scale;
        let n = if raw < 0.0 {
            0
        } else if raw >= u64::MAX as f64 {
            snap.count()
        } else {
            snap.count_le(raw.floor() as u64)
        };
        let _ = writeln!(
            out,
            "{name}_bucket{} {n}",
            labels(series_labels, Some(&fmt_float(b)))
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{} {}",
        labels(series_labels, Some("+Inf")),
        snap.count()
    );
    let _ = writeln!(
        out,
        "{name}_sum{} {}",
        labels(series_labels, None),
        fmt_float(snap.sum() as f64 * opts.scale)
    );
    let _ = writeln!(
        out,
        "{name}_count{} {}",
        labels(series_labels, None),
        snap.count()
    );
}

/// `{a="x",b="y"}` (with `le` last when given), or nothing when there are no labels.
fn labels(ls: &[(String, String)], le: Option<&str>) -> String {
    if ls.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in ls {
        if !first {
            s.push(',');
        }
        first = false;
        let _ = write!(s, "{k}=\"{}\"", escape_label(v));
    }
    if let Some(le) = le {
        if !first {
            s.push(',');
        }
        let _ = write!(s, "le=\"{le}\"");
    }
    s.push('}');
    s
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, or Rust's shortest round-trip decimal.
pub(crate) fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Registry")
            .field("families", &families.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;

    /// A callback that registers a metric and renders the registry (re-entering it) while the
    /// registry renders: it used to run under the registry's lock and deadlock.
    #[test]
    fn callbacks_run_outside_the_registry_lock() {
        use std::sync::atomic::{AtomicBool, Ordering as O};
        let r = Arc::new(Registry::new());
        // Weak: the registry owns the callback, so a strong handle would be a cycle (a leak).
        let inner = Arc::downgrade(&r);
        let nested = AtomicBool::new(false);
        r.gauge_fn(
            "reentrant",
            "a callback that uses the registry",
            &[],
            move || {
                let Some(inner) = inner.upgrade() else {
                    return 0.0;
                };
                inner
                    .counter("registered_from_callback", "made while rendering", &[])
                    .inc();
                // Render once from inside (the nested render's own call returns at once).
                // Relaxed: a recursion guard used on one thread at a time.
                if nested.swap(true, O::Relaxed) {
                    return 0.0;
                }
                let len = inner.render_prometheus().len() as f64;
                nested.store(false, O::Relaxed);
                len
            },
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = Arc::clone(&r);
        std::thread::spawn(move || tx.send(r2.render_prometheus()).unwrap());
        let text = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("render_prometheus deadlocked on a callback that uses the registry");
        assert!(text.contains("# TYPE reentrant gauge"), "{text}");
        assert!(r
            .render_prometheus()
            .contains("# TYPE registered_from_callback counter"));
    }

    #[test]
    fn same_name_and_labels_return_the_same_metric() {
        let r = Registry::new();
        let a = r.counter("req_total", "requests", &[("status", "ok"), ("gpu", "0")]);
        let b = r.counter("req_total", "requests", &[("gpu", "0"), ("status", "ok")]);
        a.inc();
        assert_eq!(b.get(), 1);
        let c = r.counter("req_total", "requests", &[("gpu", "1"), ("status", "ok")]);
        assert_eq!(c.get(), 0);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let r = Registry::new();
        assert_eq!(
            r.try_counter("1bad", "", &[]).unwrap_err().to_string(),
            "invalid metric name `1bad`"
        );
        assert!(matches!(
            r.try_counter("x", "", &[("__a", "1")]),
            Err(MetricError::InvalidLabel(_))
        ));
        assert!(matches!(
            r.try_counter("x", "", &[("a", "1"), ("a", "2")]),
            Err(MetricError::DuplicateLabel(_))
        ));
        r.counter("x", "", &[]);
        let e = r.try_gauge("x", "", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "metric `x` is already registered as a counter, not a gauge"
        );
        assert!(matches!(
            r.try_histogram_with("h", "", &[("le", "1")], HistogramOpts::new()),
            Err(MetricError::InvalidLabel(_))
        ));
        assert!(matches!(
            r.try_histogram_with("h", "", &[], HistogramOpts::new().scale(0.0)),
            Err(MetricError::InvalidOptions(_))
        ));
        assert!(matches!(
            r.try_histogram_with("h", "", &[], HistogramOpts::new().buckets(vec![2.0, 1.0])),
            Err(MetricError::InvalidOptions(_))
        ));
        r.histogram("h", "", &[]);
        assert!(matches!(
            r.try_histogram_with("h", "", &[], HistogramOpts::nanos_as_seconds()),
            Err(MetricError::OptionsMismatch(_))
        ));
    }

    #[test]
    fn exposition_has_help_type_buckets_sum_count() {
        let r = Registry::new();
        r.counter("freelane_requests_total", "Requests.", &[("status", "ok")])
            .add(3);
        r.gauge(
            "freelane_in_flight",
            "In flight.\nSecond line",
            &[("gpu", "0")],
        )
        .set(-2);
        let h = r.histogram_with(
            "freelane_latency_seconds",
            "Latency.",
            &[("gpu", "a\"b")],
            HistogramOpts::nanos_as_seconds(),
        );
        h.record(500); // 0.5 µs
        h.record(2_000_000); // 2 ms
        r.counter_fn("freelane_log_dropped_total", "Drops.", &[], || 7.0)
            .unwrap();
        let text = r.render_prometheus();
        assert!(text.contains("# HELP freelane_requests_total Requests.\n"));
        assert!(text.contains("# TYPE freelane_requests_total counter\n"));
        assert!(text.contains("freelane_requests_total{status=\"ok\"} 3\n"));
        assert!(text.contains("# HELP freelane_in_flight In flight.\\nSecond line\n"));
        assert!(text.contains("freelane_in_flight{gpu=\"0\"} -2\n"));
        assert!(text.contains("# TYPE freelane_latency_seconds histogram\n"));
        assert!(
            text.contains("freelane_latency_seconds_bucket{gpu=\"a\\\"b\",le=\"0.000001\"} 1\n")
        );
        assert!(text.contains("freelane_latency_seconds_bucket{gpu=\"a\\\"b\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("freelane_latency_seconds_bucket{gpu=\"a\\\"b\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("freelane_latency_seconds_sum{gpu=\"a\\\"b\"} 0.0020005\n"));
        assert!(text.contains("freelane_latency_seconds_count{gpu=\"a\\\"b\"} 2\n"));
        assert!(text.contains("freelane_log_dropped_total 7\n"));
    }
}
