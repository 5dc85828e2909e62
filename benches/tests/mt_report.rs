//! The mt-scaling report math: efficiency, paired speed-up, rows, summary, derived
//! recommendations, the JSON shape and the plot; plus a smoke run of every real component.

use std::time::Duration;

use freelane_benches::mt::cli::Options;
use freelane_benches::mt::report::{
    build_rows, efficiency, paired_speedup, recommend, summarize, Measurement, Report,
};
use freelane_benches::mt::{components, plot, runner, Component, Impl};
use freelane_benches::Machine;

fn opts() -> Options {
    Options::parse(Vec::<String>::new(), None).unwrap()
}

fn machine(cores: usize) -> Machine {
    Machine {
        cores,
        cpu: "test cpu".into(),
        date: "2026-01-01T00:00:00Z".into(),
    }
}

/// A measurement with three rounds at `rate` (x0.9, x1, x1.1) and latencies 1..=1000 ns.
fn m(component: Component, imp: Impl, threads: usize, rate: f64) -> Measurement {
    Measurement {
        component,
        imp,
        threads,
        rates: vec![rate * 0.9, rate, rate * 1.1],
        samples: (1..=1000).rev().collect(),
    }
}

/// A component whose freelane side scales by `scale` per thread up to `cores` (flat after) and
/// whose mutex side is `mutex_ratio` of freelane's 1-thread rate, flat.
fn component(
    c: Component,
    threads: &[usize],
    cores: usize,
    scale: f64,
    mutex_ratio: f64,
) -> Vec<Measurement> {
    let one = 1e6;
    threads
        .iter()
        .flat_map(|&n| {
            let par = n.min(cores) as f64;
            [
                m(c, Impl::Freelane, n, one * (1.0 + (par - 1.0) * scale)),
                m(c, Impl::Mutex, n, one * mutex_ratio),
            ]
        })
        .collect()
}

#[test]
fn efficiency_divides_by_min_of_threads_and_cores() {
    assert_eq!(efficiency(180.0, 2, 100.0, 2), Some(0.9));
    // Oversubscribed: 16 threads on 2 cores are judged against 2 x throughput(1).
    assert_eq!(efficiency(200.0, 16, 100.0, 2), Some(1.0));
    assert_eq!(efficiency(100.0, 1, 100.0, 2), Some(1.0));
    assert_eq!(efficiency(50.0, 4, 0.0, 2), None);
    assert_eq!(efficiency(50.0, 4, f64::NAN, 2), None);
}

#[test]
fn speedup_is_the_median_of_paired_round_ratios() {
    assert_eq!(
        paired_speedup(&[10.0, 40.0, 9.0], &[5.0, 10.0, 3.0]),
        Some(3.0)
    );
    assert_eq!(paired_speedup(&[1.0], &[1.0, 2.0]), None);
    assert_eq!(paired_speedup(&[1.0], &[0.0]), None);
}

#[test]
fn rows_carry_median_throughput_efficiency_speedup_and_percentiles() {
    let ms = [
        m(Component::Queue, Impl::Mutex, 2, 50.0),
        m(Component::Queue, Impl::Freelane, 1, 100.0),
        m(Component::Queue, Impl::Freelane, 2, 170.0),
        m(Component::Queue, Impl::Mutex, 1, 80.0),
    ];
    let rows = build_rows(&ms, 2);
    // Ordered by component, impl (freelane first), threads.
    let keys: Vec<(Impl, usize)> = rows.iter().map(|r| (r.imp, r.threads)).collect();
    assert_eq!(
        keys,
        [
            (Impl::Freelane, 1),
            (Impl::Freelane, 2),
            (Impl::Mutex, 1),
            (Impl::Mutex, 2)
        ]
    );
    let f2 = &rows[1];
    assert!((f2.throughput_ops_s - 170.0).abs() < 1e-9);
    assert!((f2.efficiency.unwrap() - 0.85).abs() < 1e-9);
    assert!((f2.speedup_vs_mutex.unwrap() - 3.4).abs() < 1e-9);
    assert_eq!((f2.p50_ns, f2.p99_ns, f2.p999_ns), (501, 990, 999));
    assert_eq!(f2.latency_samples, 1000);
    assert_eq!(
        rows[3].speedup_vs_mutex, None,
        "mutex rows have no speed-up"
    );
    assert!((rows[3].efficiency.unwrap() - 50.0 / 160.0).abs() < 1e-9);

    // Without a 1-thread row there is no efficiency.
    let rows = build_rows(&ms[..1], 2);
    assert_eq!(rows[0].efficiency, None);
}

fn kinds(report: &Report) -> Vec<(String, Option<Component>)> {
    report
        .recommendations
        .iter()
        .map(|r| (r.kind.clone(), r.component))
        .collect()
}

#[test]
fn recommendations_name_the_limiter_low_efficiency_slow_components_and_missed_targets() {
    let threads = [1, 2, 4, 16];
    let mut ms = Vec::new();
    ms.extend(component(Component::Queue, &threads, 2, 0.95, 0.5)); // 97.5% eff, 2x+
    ms.extend(component(Component::Load, &threads, 2, 0.40, 0.5)); // 70% eff
    ms.extend(component(Component::Metrics, &threads, 2, 0.95, 1.5)); // slower than mutex at 1
    ms.extend(component(Component::EndToEnd, &threads, 2, 0.95, 0.8)); // 2.4x, misses 3x
    let report = Report::build(machine(2), &opts(), &ms);
    let k = kinds(&report);

    let limiter = report.summary.scaling_limiter.as_ref().unwrap();
    assert_eq!((limiter.component, limiter.threads), (Component::Load, 2));
    assert!((limiter.efficiency - 0.70).abs() < 1e-9);
    assert!(k.contains(&("scaling_limiter".into(), Some(Component::Load))));
    assert!(k.contains(&("low_efficiency".into(), Some(Component::Load))));
    assert!(!k.contains(&("low_efficiency".into(), Some(Component::Queue))));
    assert!(k.contains(&("not_faster_than_mutex".into(), Some(Component::Metrics))));
    assert!(!k.contains(&("not_faster_than_mutex".into(), Some(Component::Queue))));
    assert!(k.contains(&("target_missed".into(), Some(Component::EndToEnd))));
    assert!(!k.iter().any(|(kind, _)| kind == "ok"));

    // end_to_end at 2 threads: 1.95e6 / 0.8e6 = 2.4375x, short of the 3x target.
    let sp = report
        .summary
        .targets
        .iter()
        .find(|t| t.name == "end_to_end freelane speed-up over mutex at 2 threads")
        .unwrap();
    assert!((sp.value - 2.4375).abs() < 1e-9 && !sp.met);
    let eff = report
        .summary
        .targets
        .iter()
        .find(|t| t.name == "end_to_end freelane efficiency at 2 threads")
        .unwrap();
    assert!((eff.value - 0.975).abs() < 1e-9 && eff.met);
    // Oversubscribed 16 threads keep 100% of the 2-thread throughput.
    let ret = report
        .summary
        .targets
        .iter()
        .find(|t| {
            t.name
                .starts_with("end_to_end freelane throughput at 16 threads")
        })
        .unwrap();
    assert!(ret.met && (ret.value - 1.0).abs() < 1e-9);

    // The most expensive part per op is the one with the lowest throughput at 2 threads.
    let cost = report
        .recommendations
        .iter()
        .find(|r| r.kind == "costliest_part")
        .unwrap();
    assert_eq!(cost.component, Some(Component::Load));
}

#[test]
fn an_all_good_run_says_ok_and_a_bad_one_does_not() {
    let threads = [1, 2, 16];
    let good = component(Component::EndToEnd, &threads, 2, 1.0, 0.2);
    let report = Report::build(machine(2), &opts(), &good);
    assert!(
        report.summary.targets.iter().all(|t| t.met),
        "{:?}",
        report.summary.targets
    );
    assert!(kinds(&report).contains(&("ok".into(), None)));

    let bad = component(Component::EndToEnd, &threads, 2, 0.5, 0.2);
    let report = Report::build(machine(2), &opts(), &bad);
    let missed: Vec<&str> = report
        .summary
        .targets
        .iter()
        .filter(|t| !t.met)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(missed, ["end_to_end freelane efficiency at 2 threads"]);
    assert!(!kinds(&report).iter().any(|(k, _)| k == "ok"));
}

#[test]
fn sixteen_cores_judge_efficiency_at_sixteen_threads() {
    let threads = [1, 2, 8, 16];
    let ms = component(Component::EndToEnd, &threads, 16, 0.8, 0.1);
    let rows = build_rows(&ms, 16);
    let s = summarize(&rows, 16, &opts());
    assert_eq!(s.reference_threads, Some(16));
    let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"end_to_end freelane efficiency at 16 threads"));
    // Not oversubscribed: no retention target.
    assert!(!names.iter().any(|n| n.contains("throughput at")));
    let e16 = s
        .targets
        .iter()
        .find(|t| t.name.ends_with("at 16 threads"))
        .unwrap();
    assert!(
        !e16.met,
        "0.8 per extra thread is {:.3} efficiency",
        e16.value
    );
    let rec = recommend(&rows, &s);
    assert!(rec.iter().any(|r| r.kind == "low_efficiency"));
}

#[test]
fn noisy_rows_and_missing_baseline_are_reported() {
    let mut noisy = m(Component::Metrics, Impl::Freelane, 2, 100.0);
    noisy.rates = vec![50.0, 100.0, 200.0];
    let ms = [noisy, m(Component::Metrics, Impl::Mutex, 2, 100.0)];
    let report = Report::build(machine(2), &opts(), &ms);
    let k = kinds(&report);
    assert!(k.contains(&("noisy".into(), None)));
    assert!(k.contains(&("no_baseline".into(), None)));
}

#[test]
fn json_has_the_issue_shape() {
    let threads = [1, 2];
    let ms = component(Component::Queue, &threads, 2, 0.9, 0.5);
    let report = Report::build(machine(2), &opts(), &ms);
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for key in ["machine", "results", "summary", "recommendations"] {
        assert!(top.contains(&key), "missing {key} in {top:?}");
    }
    assert_eq!(v["machine"]["cores"], 2);
    assert_eq!(v["machine"]["cpu"], "test cpu");
    assert!(v["machine"]["date"].is_string());
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        for key in [
            "component",
            "impl",
            "threads",
            "throughput_ops_s",
            "p50_ns",
            "p99_ns",
            "p999_ns",
            "efficiency",
            "speedup_vs_mutex",
        ] {
            assert!(row.get(key).is_some(), "row lacks {key}: {row}");
        }
    }
    assert_eq!(rows[0]["component"], "queue");
    assert_eq!(rows[0]["impl"], "freelane");
    assert!(rows[0]["speedup_vs_mutex"].is_number());
    assert!(rows[2]["speedup_vs_mutex"].is_null());
    assert_eq!(v["summary"]["cores"], 2);
    assert_eq!(
        v["summary"]["config"]["threads"],
        serde_json::json!([1, 2, 4, 8, 12, 16])
    );
    assert!(v["summary"]["components"][0]["freelane"]["efficiency_at_reference"].is_number());
    for r in v["recommendations"].as_array().unwrap() {
        assert!(r["kind"].is_string() && r["message"].is_string());
    }
}

#[test]
fn plot_draws_one_panel_per_component() {
    let threads = [1, 2, 4];
    let mut ms = component(Component::Queue, &threads, 2, 0.9, 0.5);
    ms.extend(component(Component::EndToEnd, &threads, 2, 0.9, 0.5));
    let rows = build_rows(&ms, 2);
    let svg = plot::render_svg(&rows, "test plot").unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
    for text in [
        "test plot",
        "queue",
        "end_to_end",
        "freelane",
        "mutex",
        "threads",
    ] {
        assert!(svg.contains(text), "svg lacks {text}");
    }
    assert!(plot::render_svg(&[], "empty").is_err());
}

#[test]
#[cfg_attr(miri, ignore)]
fn every_component_runs_in_both_implementations() {
    for c in Component::ALL {
        for imp in Impl::ALL {
            for threads in [1, 3] {
                let t = components::run(c, imp, threads, Duration::from_millis(5));
                assert!(t.ops > 0, "{}/{}/{threads}: no ops", c.name(), imp.name());
                assert!(!t.samples.is_empty());
                assert!(t.rate() > 0.0);
            }
        }
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn runner_interleaves_and_drops_the_warm_up_samples() {
    let o = Options::parse(
        [
            "--threads",
            "1,2",
            "--components",
            "metrics",
            "--duration-ms",
            "5",
            "--reps",
            "2",
        ]
        .map(String::from),
        None,
    )
    .unwrap();
    let ms = runner::run_all(&o);
    assert_eq!(ms.len(), 4);
    for m in &ms {
        assert_eq!(m.rates.len(), 2, "two timed rounds, the warm-up excluded");
        assert!(m.rates.iter().all(|&r| r > 0.0));
    }
}
