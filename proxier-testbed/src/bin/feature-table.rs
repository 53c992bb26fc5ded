//! Prints the README's feature table from the behaviour suite's last run
//! (`target/proxier-features/`): one row per feature, one column per
//! backend; ✅ passed, ❌ failed, — declared unsupported, ? not run.
//!
//! `cargo nextest run --workspace && cargo run -p proxier-testbed --bin feature-table`

use std::collections::{BTreeMap, BTreeSet};

use proxier_testbed::suite::Feature;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/proxier-features");
    let mut results: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut backends = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut f = text.trim().split('\t');
        if let (Some(b), Some(feat), Some(v)) = (f.next(), f.next(), f.next()) {
            backends.insert(b.to_string());
            results.insert((b.to_string(), feat.to_string()), v.to_string());
        }
    }
    if backends.is_empty() {
        eprintln!(
            "no results in {}: run the behaviour suite first",
            dir.display()
        );
        std::process::exit(1);
    }
    let backends: Vec<String> = backends.into_iter().collect();
    println!("| feature | {} |", backends.join(" | "));
    println!("|---|{}", "---|".repeat(backends.len()));
    for feat in Feature::ALL {
        let cells: Vec<&str> = backends
            .iter()
            .map(
                |b| match results.get(&(b.clone(), feat.id())).map(String::as_str) {
                    Some("pass") => "✅",
                    Some("fail") => "❌",
                    Some("unsupported") => "—",
                    _ => "?",
                },
            )
            .collect();
        println!("| {} | {} |", feat.label(), cells.join(" | "));
    }
}
