//! A small set of chains owned by a component, written and removed with
//! one `iptables-restore --noflush` per table: what the userspace
//! proxier's portal rules and the IPVS proxier's companion rules use, so
//! that neither copies the restore code, and what the iptables proxier
//! reads its jump rules with.
//!
//! Check by hand with `iptables-save -t nat | grep KUBE-`.

use std::fmt::Write as _;

use crate::iptables::{ExecError, Iptables, TableCensus};

/// The built-in chains of a table that jumps are read from.
pub fn builtin_chains(table: &str) -> &'static [&'static str] {
    match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        _ => &[],
    }
}

/// The target of a rule (`-j TARGET`).
pub fn rule_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" {
            return words.next();
        }
    }
    None
}

/// Where a jump goes in its built-in chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Ahead of every other rule (`-I CHAIN 1`).
    First,
    /// After every other rule (`-A CHAIN`).
    Last,
}

/// A rule in a built-in chain that jumps to one of the owned chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// The built-in chain (`PREROUTING`).
    pub from: &'static str,
    /// The rule after `-A CHAIN`, ending in `-j OWNED`.
    pub rule: String,
    /// Where it goes.
    pub position: Position,
}

/// The chains of one table, as they should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    /// Each owned chain with its `-A` lines (newline-terminated).
    pub chains: Vec<(String, String)>,
    /// The jumps into them.
    pub jumps: Vec<Jump>,
}

impl TableRules {
    /// Number of rules, jumps included.
    pub fn rule_count(&self) -> usize {
        self.jumps.len()
            + self
                .chains
                .iter()
                .map(|(_, b)| b.lines().count())
                .sum::<usize>()
    }
}

/// The `-D` lines for every rule in `table`'s built-in chains that jumps
/// to a chain `owns` claims, and the owned chains that exist.
async fn read_owned(
    ipt: &dyn Iptables,
    table: &str,
    owns: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(Vec<String>, Vec<String>), ExecError> {
    let listing = ipt.list_table(table, builtin_chains(table), true).await?;
    let deletes = listing
        .builtin
        .iter()
        .flat_map(|(_, rules)| rules)
        .filter(|r| rule_target(r).is_some_and(owns))
        .map(|r| format!("-D{}", &r[2..]))
        .collect();
    let existing = listing
        .chains
        .unwrap_or_default()
        .into_iter()
        .filter(|c| owns(c))
        .collect();
    Ok((deletes, existing))
}

/// What differs between a [`TableCensus`] of `table` and what was written
/// there: a chain holding another number of rules than its body has `-A`
/// lines (a flush, a deletion), or a built-in chain holding another number
/// of jumps to one of ours than were written. Rule text is not compared:
/// iptables rewrites it as it stores it. `None` when everything is in
/// place. A chain written empty and since deleted is not seen (nothing
/// could jump to it without a jump being seen).
pub fn census_drift<'a>(
    table: &str,
    census: &TableCensus,
    chains: impl IntoIterator<Item = (&'a str, &'a str)>,
    jumps: &[(&str, &str)],
) -> Option<String> {
    for (chain, body) in chains {
        let want = body.lines().filter(|l| l.starts_with("-A ")).count();
        let have = census.counts.get(chain).copied().unwrap_or(0);
        if want != have {
            return Some(format!(
                "chain {chain} of table {table} holds {have} rules, {want} written"
            ));
        }
    }
    for (from, rule) in jumps {
        let Some(to) = rule_target(rule) else {
            continue;
        };
        let want = jumps
            .iter()
            .filter(|(f, r)| f == from && rule_target(r) == Some(to))
            .count();
        let have = census
            .builtin
            .iter()
            .filter(|(c, _)| c == from)
            .flat_map(|(_, rules)| rules)
            .filter(|r| rule_target(r) == Some(to))
            .count();
        if want != have {
            return Some(format!(
                "{from} of table {table} holds {have} jumps to {to}, {want} written"
            ));
        }
    }
    None
}

/// What differs between `table` and `want` ([`census_drift`] on one
/// [`Iptables::census`]): what a verifying sync checks, so that a
/// firewall reload or a hand-run `iptables -F` is repaired within a sync
/// period. Check by hand with `iptables -t TABLE -S CHAIN`.
pub async fn owned_drift(
    ipt: &dyn Iptables,
    table: &str,
    want: &TableRules,
) -> Result<Option<String>, ExecError> {
    let chains: Vec<&str> = want.chains.iter().map(|(c, _)| c.as_str()).collect();
    let census = ipt.census(table, &chains, builtin_chains(table)).await?;
    let jumps: Vec<(&str, &str)> = want
        .jumps
        .iter()
        .map(|j| (j.from, j.rule.as_str()))
        .collect();
    Ok(census_drift(
        table,
        &census,
        want.chains.iter().map(|(c, b)| (c.as_str(), b.as_str())),
        &jumps,
    ))
}

/// Makes `table` hold exactly `want` among the chains `owns` claims:
/// one `iptables-restore --noflush` that flushes and refills each wanted
/// chain, moves the jumps (old ones deleted, new ones placed), and
/// deletes owned chains no longer wanted. Other rules are untouched.
/// Returns the payload written.
pub async fn write_owned(
    ipt: &dyn Iptables,
    table: &str,
    want: &TableRules,
    owns: &(dyn Fn(&str) -> bool + Sync),
) -> Result<String, ExecError> {
    let (deletes, existing) = read_owned(ipt, table, owns).await?;
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| !want.chains.iter().any(|(w, _)| w == *c))
        .collect();
    let mut out = format!("*{table}\n");
    for (c, _) in &want.chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for c in &stale {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for d in &deletes {
        out.push_str(d);
        out.push('\n');
    }
    for j in want
        .jumps
        .iter()
        .rev()
        .filter(|j| j.position == Position::First)
    {
        let _ = writeln!(out, "-I {} 1 {}", j.from, j.rule);
    }
    for j in want.jumps.iter().filter(|j| j.position == Position::Last) {
        let _ = writeln!(out, "-A {} {}", j.from, j.rule);
    }
    for (_, body) in &want.chains {
        out.push_str(body);
    }
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    ipt.restore(table, &out, true).await?;
    Ok(out)
}

/// Removes every chain `owns` claims from `table`, and the jumps to
/// them, in one restore. Does nothing when there is nothing to remove.
pub async fn remove_owned(
    ipt: &dyn Iptables,
    table: &str,
    owns: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(), ExecError> {
    let (deletes, existing) = read_owned(ipt, table, owns).await?;
    if deletes.is_empty() && existing.is_empty() {
        return Ok(());
    }
    let mut out = format!("*{table}\n");
    for c in &existing {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for d in &deletes {
        out.push_str(d);
        out.push('\n');
    }
    for c in &existing {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    ipt.restore(table, &out, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeIptables;
    use crate::iptables::Variant;

    fn ours(c: &str) -> bool {
        c.starts_with("TEST-")
    }

    #[tokio::test]
    async fn replace_moves_jumps_and_removes_stale_chains() {
        let ipt = FakeIptables::new(Variant::Nft);
        ipt.restore(
            "nat",
            "*nat\n:FOREIGN - [0:0]\n-A PREROUTING -j FOREIGN\n-A FOREIGN -j ACCEPT\nCOMMIT\n",
            true,
        )
        .await
        .unwrap();
        let mut want = TableRules {
            chains: vec![
                ("TEST-A".into(), "-A TEST-A -p tcp -j ACCEPT\n".into()),
                ("TEST-B".into(), "-A TEST-B -p udp -j ACCEPT\n".into()),
            ],
            jumps: vec![
                Jump {
                    from: "PREROUTING",
                    rule: "-j TEST-A".into(),
                    position: Position::First,
                },
                Jump {
                    from: "PREROUTING",
                    rule: "-j TEST-B".into(),
                    position: Position::Last,
                },
            ],
        };
        write_owned(&ipt, "nat", &want, &ours).await.unwrap();
        // Twice: the jumps are not duplicated.
        write_owned(&ipt, "nat", &want, &ours).await.unwrap();
        let pre = ipt.list_rules("nat", "PREROUTING").await.unwrap().unwrap();
        assert_eq!(
            pre,
            vec![
                "-A PREROUTING -j TEST-A",
                "-A PREROUTING -j FOREIGN",
                "-A PREROUTING -j TEST-B"
            ]
        );
        want.chains.pop();
        want.jumps.pop();
        write_owned(&ipt, "nat", &want, &ours).await.unwrap();
        assert!(ipt.list_rules("nat", "TEST-B").await.unwrap().is_none());
        remove_owned(&ipt, "nat", &ours).await.unwrap();
        let chains = ipt.list_chains("nat").await.unwrap();
        assert!(!chains.iter().any(|c| ours(c)), "{chains:?}");
        assert_eq!(
            ipt.list_rules("nat", "PREROUTING").await.unwrap().unwrap(),
            vec!["-A PREROUTING -j FOREIGN"]
        );
        assert_eq!(
            ipt.list_rules("nat", "FOREIGN").await.unwrap().unwrap(),
            vec!["-A FOREIGN -j ACCEPT"]
        );
    }

    #[tokio::test]
    async fn drift_sees_a_missing_chain_jump_or_rule() {
        let ipt = FakeIptables::new(Variant::Nft);
        let want = TableRules {
            chains: vec![("TEST-A".into(), "-A TEST-A -j ACCEPT\n".into())],
            jumps: vec![
                Jump {
                    from: "PREROUTING",
                    rule: "-j TEST-A".into(),
                    position: Position::First,
                },
                Jump {
                    from: "OUTPUT",
                    rule: "-j TEST-A".into(),
                    position: Position::First,
                },
            ],
        };
        assert!(
            owned_drift(&ipt, "nat", &want).await.unwrap().is_some(),
            "nothing written yet"
        );
        write_owned(&ipt, "nat", &want, &ours).await.unwrap();
        assert_eq!(owned_drift(&ipt, "nat", &want).await.unwrap(), None);
        ipt.tamper("nat", |t| t.get_mut("TEST-A").unwrap().1.clear());
        assert_eq!(
            owned_drift(&ipt, "nat", &want).await.unwrap().as_deref(),
            Some("chain TEST-A of table nat holds 0 rules, 1 written"),
            "a flushed chain"
        );
        write_owned(&ipt, "nat", &want, &ours).await.unwrap();
        ipt.restore("nat", "*nat\n-D OUTPUT -j TEST-A\nCOMMIT\n", true)
            .await
            .unwrap();
        assert_eq!(
            owned_drift(&ipt, "nat", &want).await.unwrap().as_deref(),
            Some("OUTPUT of table nat holds 0 jumps to TEST-A, 1 written"),
            "a jump deleted"
        );
        write_owned(&ipt, "nat", &want, &ours).await.unwrap();
        ipt.restore(
            "nat",
            "*nat\n:TEST-A - [0:0]\n-D PREROUTING -j TEST-A\n-D OUTPUT -j TEST-A\n-X TEST-A\nCOMMIT\n",
            true,
        )
        .await
        .unwrap();
        assert!(
            owned_drift(&ipt, "nat", &want).await.unwrap().is_some(),
            "the chain deleted"
        );
    }
}
