//! Prints what a drift check reads of one table, and how long it took:
//! `ip netns exec NS cargo run -p proxier-netfilter --example census -- ip nat`
//! (family `ip` or `ip6`, then the table). The rule count per chain is
//! what `nft list table ip nat` shows, counted; read once with one dump
//! of the table and once with one dump per chain, both timed.

use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (family, table) = match args.as_slice() {
        [f, t] if f == "ip" => (2, t.clone()),
        [f, t] if f == "ip6" => (10, t.clone()),
        _ => {
            eprintln!("usage: census ip|ip6 TABLE");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    let generation = proxier_netfilter::ruleset_generation().await?;
    let t1 = Instant::now();
    let r = proxier_netfilter::nft_rules(family, &table, &["OUTPUT", "PREROUTING"]).await?;
    let t2 = Instant::now();
    let rules: usize = r.counts.values().sum();
    println!(
        "generation {generation} ({:?}); one dump of the table: {} chains with {rules} rules ({:?})",
        t1 - t0,
        r.counts.len(),
        t2 - t1
    );
    let names: Vec<&str> = r.counts.keys().map(String::as_str).collect();
    let t3 = Instant::now();
    let by_chain =
        proxier_netfilter::nft_chain_rules(family, &table, &names, &["OUTPUT", "PREROUTING"])
            .await?;
    println!(
        "one dump per chain: {} chains with {} rules ({:?}), same: {}",
        by_chain.counts.len(),
        by_chain.counts.values().sum::<usize>(),
        t3.elapsed(),
        by_chain == r
    );
    for (chain, targets) in &r.targets {
        println!("{chain}: {targets:?}");
    }
    Ok(())
}
