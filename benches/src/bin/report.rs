//! `cargo run -p benches --bin report [-- --publish]`: turns the latest
//! side-by-side results (`target/proxier-report/modes.json`, written by
//! `cargo bench -p benches --bench modes`) into `report.md` and three SVG
//! charts in `target/proxier-report/`: sync time, latency and objects
//! against N, one line per mode. `--publish` also copies them to
//! `docs/bench/` for the README.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

const MODES: [(&str, &str); 3] = [
    ("iptables", "#1f77b4"),
    ("userspace", "#2ca02c"),
    ("ipvs", "#d62728"),
];

/// One line of a chart: its name, its colour, its `(N, value)` points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn fmt_s(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A log-log line chart, one series per mode.
fn chart(title: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, l, r, t, b) = (640.0, 400.0, 80.0, 130.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    if pts.is_empty() {
        svg.push_str("</svg>\n");
        return svg;
    }
    let lg = |v: f64| v.log10();
    let (x0, x1) = (
        pts.iter().map(|p| lg(p.0)).fold(f64::MAX, f64::min).floor(),
        pts.iter().map(|p| lg(p.0)).fold(f64::MIN, f64::max).ceil(),
    );
    let (y0, y1) = (
        pts.iter().map(|p| lg(p.1)).fold(f64::MAX, f64::min).floor(),
        pts.iter().map(|p| lg(p.1)).fold(f64::MIN, f64::max).ceil(),
    );
    let (x1, y1) = (x1.max(x0 + 1.0), y1.max(y0 + 1.0));
    let px = |x: f64| l + (lg(x) - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (lg(y) - y0) / (y1 - y0) * (h - t - b);
    // Grid and axes: one line per decade.
    let mut d = x0;
    while d <= x1 {
        let x = l + (d - x0) / (x1 - x0) * (w - l - r);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            h - b,
            h - b + 18.0,
            thousands(10f64.powf(d))
        );
        d += 1.0;
    }
    let mut d = y0;
    while d <= y1 {
        let y = h - b - (d - y0) / (y1 - y0) * (h - t - b);
        let v = 10f64.powf(d);
        let label = if y_label.ends_with("(s)") {
            fmt_s(v)
        } else {
            thousands(v)
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            w - r,
            l - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">services (N, × 10 endpoints)</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{y_label}</text>",
        l + (w - l - r) / 2.0,
        h - 10.0,
        t + (h - t - b) / 2.0,
        t + (h - t - b) / 2.0
    );
    for (i, (name, color, data)) in series.iter().enumerate() {
        let data: Vec<&(f64, f64)> = data.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
        if data.is_empty() {
            continue;
        }
        let path: Vec<String> = data
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in &data {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(*x),
                py(*y)
            );
        }
        let ly = t + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 35.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn main() {
    let publish = std::env::args().any(|a| a == "--publish");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/proxier-report");
    let path = dir.join("modes.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "error: {}: {e} (run `cargo bench -p benches --bench modes` first)",
                path.display()
            );
            std::process::exit(1);
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            std::process::exit(1);
        }
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut res: BTreeMap<(String, usize, String), f64> = BTreeMap::new();
    let mut sizes = BTreeSet::new();
    if let Some(m) = v["results"].as_object() {
        for (k, val) in m {
            let parts: Vec<&str> = k.splitn(3, '/').collect();
            if let ([mode, n, metric], Some(x)) = (&parts[..], val.as_f64())
                && let Ok(n) = n.parse::<usize>()
            {
                sizes.insert(n);
                res.insert(((*mode).into(), n, (*metric).into()), x);
            }
        }
    }
    let get = |mode: &str, n: usize, m: &str| res.get(&(mode.into(), n, m.into())).copied();
    let mut md = format!(
        "# proxier: the three modes side by side\n\n{} — {}.{}\n\n\
         N ClusterIP services × 10 endpoints. Control plane: first full sync, a resync \
         (full, nothing changed), one endpoint changed, one service added (medians), and the \
         objects the mode owns afterwards (iptables: rules; ipvs: virtual + real servers; \
         userspace: listeners + portal rules). Data plane: connect + 1-byte echo p50 and \
         single-stream throughput from a client pod through a cluster IP, with a direct \
         connection to the same endpoint as the baseline in the same run.\n\n",
        s("date"),
        s("machine"),
        if s("note").is_empty() {
            String::new()
        } else {
            format!(" {}.", s("note"))
        }
    );
    md.push_str("| N | mode | objects | full sync | resync | one endpoint | service added | echo p50: service / direct | throughput: service / direct |\n|---|---|---|---|---|---|---|---|---|\n");
    for &n in &sizes {
        for (mode, _) in MODES {
            let Some(full) = get(mode, n, "full_sync_s") else {
                continue;
            };
            let o = |m: &str| get(mode, n, m).map(fmt_s).unwrap_or_else(|| "–".into());
            let lat = match (
                get(mode, n, "echo_p50_service_us"),
                get(mode, n, "echo_p50_direct_us"),
            ) {
                (Some(a), Some(b)) => format!("{a:.0} / {b:.0} µs ({:.2}×)", a / b),
                _ => "–".into(),
            };
            let tp = match (
                get(mode, n, "throughput_service_gibps"),
                get(mode, n, "throughput_direct_gibps"),
            ) {
                (Some(a), Some(b)) => format!("{a:.2} / {b:.2} GiB/s ({:.2}×)", a / b),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {mode} | {} | {} | {} | {} | {} | {lat} | {tp} |",
                thousands(n as f64),
                thousands(get(mode, n, "objects").unwrap_or(0.0)),
                fmt_s(full),
                o("resync_s"),
                o("one_endpoint_s"),
                o("service_added_s"),
            );
        }
    }
    let series = |metric: &str, f: &dyn Fn(f64, &str, usize) -> f64| -> Vec<Series<'_>> {
        MODES
            .iter()
            .map(|(m, c)| {
                let pts = sizes
                    .iter()
                    .filter_map(|&n| get(m, n, metric).map(|y| (n as f64, f(y, m, n))))
                    .collect();
                let name = if *m == "ipvs" { "ipvs (VM)" } else { *m };
                (name, *c, pts)
            })
            .collect()
    };
    let id = |y: f64, _: &str, _: usize| y;
    let charts = [
        (
            "sync.svg",
            chart(
                "First full sync vs N",
                "full sync (s)",
                &series("full_sync_s", &id),
            ),
        ),
        (
            "latency.svg",
            chart(
                "Connect + 1-byte echo through a cluster IP, × direct",
                "service p50, % of direct p50",
                &series("echo_p50_service_us", &|y, m, n| {
                    get(m, n, "echo_p50_direct_us")
                        .map(|d| 100.0 * y / d)
                        .unwrap_or(0.0)
                }),
            ),
        ),
        (
            "objects.svg",
            chart(
                "Kernel objects / rules owned vs N",
                "rules, servers or listeners",
                &series("objects", &id),
            ),
        ),
    ];
    md.push_str("\n![sync time](sync.svg) ![latency](latency.svg) ![objects](objects.svg)\n");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("report.md"), &md).expect("write report.md");
    for (name, svg) in &charts {
        std::fs::write(dir.join(name), svg).expect("write chart");
    }
    if publish {
        let docs = root.join("docs/bench");
        std::fs::create_dir_all(&docs).expect("docs/bench");
        std::fs::write(docs.join("report.md"), &md).expect("write");
        for (name, svg) in &charts {
            std::fs::write(docs.join(name), svg).expect("write");
        }
    }
    println!("{md}");
    eprintln!("wrote {}/report.md and 3 charts", dir.display());
}
