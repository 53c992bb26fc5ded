//! `cargo run -p benches --bin report [-- --publish]`: turns the latest
//! side-by-side results (`target/proxier-report/modes.json`, written by
//! `cargo bench -p benches --bench modes`) into `report.md` and three SVG
//! charts in `target/proxier-report/`: sync time, latency and objects
//! against N, one line per mode (latency: the absolute p50 through a
//! service, solid, and to a non-service address, dashed, since the
//! latter slows with N in iptables and userspace modes too), and the
//! dual-stack run. `--publish` also copies them to `docs/bench/` for the
//! README.
//!
//! `report --iptables [N …]` prints the README's iptables table instead,
//! from criterion's own results of `cargo bench -p benches --bench
//! iptables` (`target/criterion/…/new/estimates.json`): medians, and each
//! sync's ratio to the bare-restore floor measured in the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

const MODES: [(&str, &str); 4] = [
    ("iptables", "#1f77b4"),
    ("nftables", "#ff7f0e"),
    ("userspace", "#2ca02c"),
    ("ipvs", "#d62728"),
];

/// One line of a chart.
struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    /// `(N, value)`.
    points: Vec<(f64, f64)>,
}

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
fn chart(title: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (640.0, 400.0, 80.0, 130.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
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
    for (i, line) in series.iter().enumerate() {
        let (name, color) = (&line.name, line.color);
        let dash = if line.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let data: Vec<&(f64, f64)> = line
            .points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .collect();
        if data.is_empty() {
            continue;
        }
        let path: Vec<String> = data
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
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
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{name}</text>",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 35.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A criterion median, in seconds: `target/criterion/GROUP/BENCH`.
fn criterion_median(root: &Path, group: &str, bench: &str) -> Option<f64> {
    let p = root
        .join("target/criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? / 1e9)
}

/// The iptables table (what `scripts/bench-table` printed).
fn iptables_table(root: &Path, sizes: &[usize]) -> String {
    let f = |s: Option<f64>| s.map(fmt_s).unwrap_or_else(|| "–".into());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let mut md = String::from(
        "| N × 10 | variant | render | full sync | floor | ratio | no-op | one endpoint | floor | ratio | service added |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &n in sizes {
        let render = criterion_median(root, &format!("iptables_{n}x10"), "render");
        for v in ["nft", "legacy"] {
            let g = format!("iptables-{v}_{n}x10");
            let m = |b: &str| criterion_median(root, &g, b);
            let (full, floor_full) = (m("full_sync"), m("floor_full_restore"));
            let (one, floor_one) = (m("one_endpoint"), m("floor_one_endpoint"));
            let _ = writeln!(
                md,
                "| {} | {v} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(n as f64),
                f(render),
                f(full),
                f(floor_full),
                ratio(full, floor_full),
                f(m("noop_sync")),
                f(one),
                f(floor_one),
                ratio(one, floor_one),
                f(m("service_added")),
            );
        }
    }
    md
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--iptables") {
        let mut sizes: Vec<usize> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
        if sizes.is_empty() {
            sizes = vec![1000, 5000, 10000];
        }
        print!("{}", iptables_table(&root, &sizes));
        return;
    }
    let publish = args.iter().any(|a| a == "--publish");
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
        "# proxier: the four modes side by side\n\n{} — {}.{}\n\n\
         N ClusterIP services × 10 endpoints. Control plane: first full sync, a resync \
         (full, nothing changed), one endpoint changed, one service added (medians), and the \
         objects the mode owns afterwards (iptables: rules; nftables: chains, rules, set and \
         map elements; ipvs: virtual + real servers; userspace: listeners + portal rules). Data plane: connect + 1-byte echo p50 and \
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
    // The dual-stack run: both families in one round beside IPv4 alone.
    let dual: Vec<String> = sizes
        .iter()
        .flat_map(|&n| MODES.iter().map(move |(m, _)| (n, *m)))
        .filter_map(|(n, m)| {
            let single = get(m, n, "dual_single_v4_s")?;
            let total = get(m, n, "dual_total_s")?;
            let fam = |k: &str| get(m, n, k).map(fmt_s).unwrap_or_else(|| "–".into());
            Some(format!(
                "| {} | {m} | {} | {} | {} | {} | {} | {:.2}× |",
                thousands(n as f64),
                fmt_s(single),
                fam("dual_single_v6_s"),
                fam("dual_v4_s"),
                fam("dual_v6_s"),
                fmt_s(total),
                total / single
            ))
        })
        .collect();
    if !dual.is_empty() {
        md.push_str(
            "\nDual stack: N dual-stack services × 10 endpoints per family, first full sync on a \
             fresh test bed; IPv4 alone, IPv6 alone, then both families in one round of the runner (they \
             sync at once, each timed from its own start), medians of 3. Target: round ≤ 2.1 × \
             IPv4 alone.\n\n| N | mode | IPv4 alone | IPv6 alone | dual: IPv4 | dual: IPv6 | \
             dual: round | round / IPv4 alone |\n|---|---|---|---|---|---|---|---|\n",
        );
        for row in dual {
            let _ = writeln!(md, "{row}");
        }
    }
    let label = |m: &str| {
        if m == "ipvs" {
            "ipvs (VM)".to_string()
        } else {
            m.to_string()
        }
    };
    let series = |metric: &str, name: &dyn Fn(&str) -> String, dashed: bool| -> Vec<Series> {
        MODES
            .iter()
            .map(|(m, c)| Series {
                name: name(m),
                color: c,
                dashed,
                points: sizes
                    .iter()
                    .filter_map(|&n| get(m, n, metric).map(|y| (n as f64, y)))
                    .collect(),
            })
            .collect()
    };
    let mut latency = series(
        "echo_p50_service_us",
        &|m| format!("{} svc", label(m)),
        false,
    );
    latency.extend(series(
        "echo_p50_direct_us",
        &|m| format!("{} direct", label(m)),
        true,
    ));
    let charts = [
        (
            "sync.svg",
            chart(
                "First full sync vs N",
                "full sync (s)",
                &series("full_sync_s", &label, false),
            ),
        ),
        (
            "latency.svg",
            chart(
                "Connect + 1-byte echo p50: through a cluster IP, and direct",
                "p50 (µs)",
                &latency,
            ),
        ),
        (
            "objects.svg",
            chart(
                "Kernel objects / rules owned vs N",
                "rules, servers or listeners",
                &series("objects", &label, false),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iptables_table_reads_criterion_medians_and_ratios() {
        let root = std::env::temp_dir().join(format!("report-test-{}", std::process::id()));
        let put = |group: &str, bench: &str, ns: f64| {
            let d = root
                .join("target/criterion")
                .join(group)
                .join(bench)
                .join("new");
            std::fs::create_dir_all(&d).unwrap();
            let v = serde_json::json!({ "median": { "point_estimate": ns } });
            std::fs::write(d.join("estimates.json"), v.to_string()).unwrap();
        };
        put("iptables_100x10", "render", 2.5e6);
        put("iptables-nft_100x10", "full_sync", 3.0e9);
        put("iptables-nft_100x10", "floor_full_restore", 1.5e9);
        put("iptables-nft_100x10", "noop_sync", 40e3);
        let md = iptables_table(&root, &[100]);
        let _ = std::fs::remove_dir_all(&root);
        let rows: Vec<&str> = md.lines().collect();
        assert_eq!(rows.len(), 4, "{md}");
        assert_eq!(
            rows[2],
            "| 100 | nft | 2.5 ms | 3.00 s | 1.50 s | 2.00 | 40 µs | – | – | – | – |"
        );
        assert!(rows[3].starts_with("| 100 | legacy | 2.5 ms | – |"), "{md}");
    }
}
