//! Prints the README's feature table from the behaviour suite's last run
//! (`target/proxier-features/`): one row per feature, one column per
//! backend and IP family; ✅ passed, ❌ failed, — unsupported (the reasons
//! are listed under the table), ? not run.
//!
//! `cargo nextest run --workspace && cargo run -p proxier-testbed --bin feature-table`

use std::collections::{BTreeMap, BTreeSet};

use proxier_testbed::suite::Feature;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/proxier-features");
    // (backend, family) → feature → (verdict, reason)
    let mut results: BTreeMap<(String, String), BTreeMap<String, (String, String)>> =
        BTreeMap::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let f: Vec<&str> = text.trim_end_matches('\n').split('\t').collect();
        // backend, feature, verdict, family, reason (results of runs
        // before the suite had families have three fields: skipped).
        if let [b, feat, v, fam, rest @ ..] = f.as_slice() {
            let why = rest.first().copied().unwrap_or("").to_string();
            results
                .entry((b.to_string(), fam.to_string()))
                .or_default()
                .insert(feat.to_string(), (v.to_string(), why));
        }
    }
    if results.is_empty() {
        eprintln!(
            "no results in {}: run the behaviour suite first",
            dir.display()
        );
        std::process::exit(1);
    }
    let columns: Vec<&(String, String)> = results.keys().collect();
    let heads: Vec<String> = columns.iter().map(|(b, f)| format!("{b} {f}")).collect();
    println!("| feature | {} |", heads.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    let mut reasons = BTreeSet::new();
    for feat in Feature::ALL {
        let cells: Vec<&str> = columns
            .iter()
            .map(|col| match results[*col].get(&feat.id()) {
                Some((v, _)) if v == "pass" => "✅",
                Some((v, _)) if v == "fail" => "❌",
                Some((v, why)) if v == "unsupported" => {
                    reasons.insert(format!("{} {}: {why}", col.0, col.1));
                    "—"
                }
                _ => "?",
            })
            .collect();
        println!("| {} | {} |", feat.label(), cells.join(" | "));
    }
    if !reasons.is_empty() {
        println!();
        for r in reasons {
            println!("— {r}");
        }
    }
}
