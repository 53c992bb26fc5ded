//! The iptables seam: running `iptables-restore`, listing chains.
//! [`Iptables`] is a narrow trait; [`IptablesCmd`] runs the real tools
//! (legacy or nf_tables, `iptables` or `ip6tables`), and `FakeIptables`
//! (feature `testing`) applies restore input in memory for unit tests.
//!
//! Check by hand with `iptables-save -t nat`, `iptables -t nat -S CHAIN`
//! and `nft list chains ip`.

use std::fmt;
use std::process::Stdio;

use async_trait::async_trait;
use proxier_core::IpFamily;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `iptables-legacy` (x_tables blobs, `/run/xtables.lock`).
    Legacy,
    /// `iptables-nft` (nf_tables underneath).
    Nft,
}

impl Variant {
    /// `legacy` or `nft`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command}: {detail}")]
pub struct ExecError {
    /// The command line.
    pub command: String,
    /// Exit status (None: killed or not started).
    pub status: Option<i32>,
    /// What it said, and for a restore the input line at fault.
    pub detail: String,
}

/// The iptables seam: everything the backend asks of the kernel's
/// packet filter.
#[async_trait]
pub trait Iptables: Send + Sync + fmt::Debug {
    /// Which implementation this is.
    fn variant(&self) -> Variant;

    /// `iptables-restore -w 5 -W 100000 [--noflush]` with `payload` (one
    /// `*table` … `COMMIT` block) on stdin. Atomic per table.
    async fn restore(&self, table: &str, payload: &str, noflush: bool) -> Result<(), ExecError>;

    /// `iptables -t TABLE -S CHAIN`: the chain's rules as `-A` lines (the
    /// `-P`/`-N` line dropped), or `None` when the chain does not exist.
    async fn list_rules(&self, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError>;

    /// The policy of a built-in chain (`ACCEPT`, `DROP`).
    async fn policy(&self, table: &str, chain: &str) -> Result<String, ExecError>;

    /// The name of every chain in `table` (`nft list chains`, or the
    /// `:CHAIN` lines of `iptables-save -t TABLE`).
    async fn list_chains(&self, table: &str) -> Result<Vec<String>, ExecError>;

    /// The rules of the built-in chains `builtins`, and (if asked) every
    /// chain's name: what a full sync reads before writing. By default
    /// one `-S` per chain, all at once.
    async fn list_table(
        &self,
        table: &str,
        builtins: &[&str],
        with_chains: bool,
    ) -> Result<TableListing, ExecError> {
        list_by_parts(self, table, builtins, with_chains).await
    }

    /// The number of rules in each of the chains `chains` of `table` (a
    /// chain without rules, or missing, may be absent; others may be
    /// present) and the rules of the built-in chains `builtins`: what a
    /// drift check compares with what was written (`iptables-save -t
    /// TABLE`, count the `-A CHAIN` lines). By default one
    /// [`Iptables::list_table`], then one `-S` per chain if that did not
    /// read the whole table.
    async fn census(
        &self,
        table: &str,
        chains: &[&str],
        builtins: &[&str],
    ) -> Result<TableCensus, ExecError> {
        let listing = self.list_table(table, builtins, true).await?;
        let counts = match listing.all_rules {
            Some(all) => all.into_iter().map(|(c, r)| (c, r.len())).collect(),
            None => {
                let mut counts = std::collections::BTreeMap::new();
                for c in chains {
                    let n = self.list_rules(table, c).await?.map_or(0, |r| r.len());
                    counts.insert(c.to_string(), n);
                }
                counts
            }
        };
        Ok(TableCensus {
            counts,
            builtin: listing.builtin,
        })
    }

    /// A number that changes whenever any nf_tables table of the network
    /// namespace changes ([`crate::ruleset_generation`]), or `None` where
    /// there is none (iptables-legacy): a drift check that finds it
    /// unchanged since it last looked need not read the table.
    async fn generation(&self) -> Result<Option<u32>, ExecError> {
        Ok(None)
    }
}

/// What [`Iptables::census`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableCensus {
    /// Rules per chain.
    pub counts: std::collections::BTreeMap<String, usize>,
    /// Rules of each built-in chain asked for, as `-A CHAIN …` lines.
    pub builtin: Vec<(String, Vec<String>)>,
}

/// What [`Iptables::list_table`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableListing {
    /// Every chain's name, when asked for.
    pub chains: Option<Vec<String>>,
    /// Rules of each built-in chain asked for, as `-A CHAIN …` lines.
    pub builtin: Vec<(String, Vec<String>)>,
    /// Rules of every chain, when the listing read the whole table
    /// (`iptables-save`); `None` when only the built-ins were read.
    pub all_rules: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

async fn list_by_parts<I: Iptables + ?Sized>(
    ipt: &I,
    table: &str,
    builtins: &[&str],
    with_chains: bool,
) -> Result<TableListing, ExecError> {
    let rules = futures::future::try_join_all(builtins.iter().map(|c| ipt.list_rules(table, c)));
    let chains = async {
        if with_chains {
            ipt.list_chains(table).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (rules, chains) = tokio::join!(rules, chains);
    Ok(TableListing {
        chains: chains?,
        builtin: builtins
            .iter()
            .zip(rules?)
            .map(|(c, r)| (c.to_string(), r.unwrap_or_default()))
            .collect(),
        all_rules: None,
    })
}

/// Parses `iptables-save -t TABLE` output.
pub fn parse_save(out: &str, builtins: &[&str]) -> TableListing {
    let chains: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut all: std::collections::BTreeMap<String, Vec<String>> =
        chains.iter().map(|c| (c.clone(), Vec::new())).collect();
    for l in out.lines().filter(|l| l.starts_with("-A ")) {
        if let Some(c) = l.split_whitespace().nth(1) {
            all.entry(c.to_owned()).or_default().push(l.to_owned());
        }
    }
    let builtin = builtins
        .iter()
        .map(|c| (c.to_string(), all.get(*c).cloned().unwrap_or_default()))
        .collect();
    TableListing {
        chains: Some(chains),
        builtin,
        all_rules: Some(all),
    }
}

/// The real tools, run as child processes (in the caller's network
/// namespace).
#[derive(Debug, Clone)]
pub struct IptablesCmd {
    family: IpFamily,
    variant: Variant,
    /// `-w SECONDS` for the xtables lock (legacy only; nft has none).
    pub lock_wait_secs: u32,
}

async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(Option<i32>, String, String), ExecError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| ExecError {
        command: command.clone(),
        status: None,
        detail: format!("cannot start: {e}"),
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        let input = input.to_owned();
        // Write concurrently with reading the output (large inputs).
        tokio::spawn(async move {
            let _ = pipe.write_all(input.as_bytes()).await;
            let _ = pipe.shutdown().await;
        });
    }
    let out = child.wait_with_output().await.map_err(|e| ExecError {
        command: command.clone(),
        status: None,
        detail: e.to_string(),
    })?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// For a restore that failed with "Error occurred at line: N", the lines
/// around N (kube-proxy logs the same).
pub fn restore_context(stderr: &str, payload: &str) -> String {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error occurred at line: "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    let mut detail = stderr.trim().replace('\n', "; ");
    if let Some(n) = line {
        let lines: Vec<&str> = payload.lines().collect();
        let lo = n.saturating_sub(2);
        let hi = (n + 1).min(lines.len());
        for (i, l) in lines.iter().enumerate().take(hi).skip(lo) {
            detail.push_str(&format!(
                "\n  {:>6}{} {l}",
                i + 1,
                if i + 1 == n { ">" } else { ":" }
            ));
        }
    }
    detail
}

impl IptablesCmd {
    /// The tools of `variant` for `family`.
    pub fn new(family: IpFamily, variant: Variant) -> Self {
        IptablesCmd {
            family,
            variant,
            lock_wait_secs: 5,
        }
    }

    /// Uses what `iptables --version` reports (`(nf_tables)` or
    /// `(legacy)`): the variant the machine's alternatives point at.
    pub async fn detect(family: IpFamily) -> Result<Self, ExecError> {
        let prog = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let (status, out, err) = run(prog, &["--version"], None).await?;
        let variant = if out.contains("nf_tables") {
            Variant::Nft
        } else if status == Some(0) {
            Variant::Legacy
        } else {
            return Err(ExecError {
                command: format!("{prog} --version"),
                status,
                detail: err,
            });
        };
        Ok(Self::new(family, variant))
    }

    fn prog(&self, suffix: &str) -> String {
        let base = match self.family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        format!("{base}-{}{suffix}", self.variant.as_str())
    }

    fn wait_args(&self) -> Vec<String> {
        vec![
            "-w".into(),
            self.lock_wait_secs.to_string(),
            "-W".into(),
            "100000".into(),
        ]
    }

    /// `ip` or `ip6`: the nf_tables family iptables-nft writes.
    fn family_table(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    /// `iptables-save -t TABLE`.
    async fn save(&self, table: &str) -> Result<String, ExecError> {
        let prog = self.prog("-save");
        let (status, out, err) = run(&prog, &["-t", table], None).await?;
        if status != Some(0) {
            return Err(ExecError {
                command: format!("{prog} -t {table}"),
                status,
                detail: err,
            });
        }
        Ok(out)
    }
}

/// Parses `nft list chains <family>` output: the chain names of `table`.
pub fn parse_nft_chains(out: &str, table: &str) -> Vec<String> {
    let mut in_table = false;
    let mut chains = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            in_table = rest.split_whitespace().nth(1) == Some(table);
        } else if let Some(rest) = t.strip_prefix("chain ")
            && in_table
            && let Some(name) = rest.split_whitespace().next()
        {
            chains.push(name.trim_matches('"').to_owned());
        }
    }
    chains
}

#[async_trait]
impl Iptables for IptablesCmd {
    fn variant(&self) -> Variant {
        self.variant
    }

    async fn restore(&self, table: &str, payload: &str, noflush: bool) -> Result<(), ExecError> {
        let prog = self.prog("-restore");
        let mut args = self.wait_args();
        if noflush {
            args.push("--noflush".into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut attempt = 0;
        let (status, err) = loop {
            let (status, _out, err) = run(&prog, &argv, Some(payload)).await?;
            // iptables-nft 1.8.9 on kernel 6.1 now and then fails to read
            // the ruleset generation before it starts ("Could not fetch
            // rule set generation id: Invalid argument"): nothing was
            // written, so the same restore is tried again, twice at most.
            if status != Some(0)
                && attempt < 2
                && err.contains("Could not fetch rule set generation id")
            {
                attempt += 1;
                tracing::debug!(
                    table,
                    attempt,
                    "iptables-restore could not read the generation; retrying"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                continue;
            }
            break (status, err);
        };
        if status == Some(0) {
            Ok(())
        } else {
            Err(ExecError {
                command: format!("{prog} {} (table {table})", argv.join(" ")),
                status,
                detail: restore_context(&err, payload),
            })
        }
    }

    async fn list_rules(&self, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError> {
        let prog = self.prog("");
        let mut args = self.wait_args();
        args.truncate(2);
        args.extend(["-t".into(), table.into(), "-S".into(), chain.into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, out, err) = run(&prog, &argv, None).await?;
        match status {
            Some(0) => Ok(Some(
                out.lines()
                    .filter(|l| l.starts_with("-A "))
                    .map(str::to_owned)
                    .collect(),
            )),
            Some(1) if err.contains("No chain") || err.contains("does not exist") => Ok(None),
            _ => Err(ExecError {
                command: format!("{prog} {}", argv.join(" ")),
                status,
                detail: err,
            }),
        }
    }

    async fn policy(&self, table: &str, chain: &str) -> Result<String, ExecError> {
        let prog = self.prog("");
        let (status, out, err) = run(&prog, &["-w", "5", "-t", table, "-S", chain], None).await?;
        if status != Some(0) {
            return Err(ExecError {
                command: format!("{prog} -t {table} -S {chain}"),
                status,
                detail: err,
            });
        }
        Ok(out
            .lines()
            .find_map(|l| l.strip_prefix("-P "))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("ACCEPT")
            .to_owned())
    }

    async fn list_table(
        &self,
        table: &str,
        builtins: &[&str],
        with_chains: bool,
    ) -> Result<TableListing, ExecError> {
        if self.variant == Variant::Legacy {
            // Every legacy command reads the whole table blob under the
            // xtables lock: one save is cheaper than one `-S` per chain.
            return Ok(parse_save(&self.save(table).await?, builtins));
        }
        list_by_parts(self, table, builtins, with_chains).await
    }

    async fn census(
        &self,
        table: &str,
        chains: &[&str],
        builtins: &[&str],
    ) -> Result<TableCensus, ExecError> {
        if self.variant == Variant::Legacy {
            let listing = parse_save(&self.save(table).await?, builtins);
            return Ok(TableCensus {
                counts: listing
                    .all_rules
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(c, r)| (c, r.len()))
                    .collect(),
                builtin: listing.builtin,
            });
        }
        // Netlink dumps of the chains asked for instead of
        // `iptables-nft-save`, which at 100,000 chains takes minutes, and
        // no `-S` per built-in chain (each process reads every chain of
        // the table): the jumps are read from the rules' verdicts.
        let mut wanted: Vec<&str> = chains.to_vec();
        wanted.extend(builtins.iter().filter(|b| !chains.contains(b)));
        let r = crate::nft_chain_rules(crate::nfproto(self.family), table, &wanted, builtins)
            .await
            .map_err(|source| ExecError {
                command: format!(
                    "nf_tables rule dump of table {} {table}",
                    self.family_table()
                ),
                status: None,
                detail: source.to_string(),
            })?;
        let builtin = builtins
            .iter()
            .map(|c| {
                let lines = r
                    .targets
                    .get(*c)
                    .into_iter()
                    .flatten()
                    .map(|t| match t {
                        Some(t) => format!("-A {c} -j {t}"),
                        None => format!("-A {c}"),
                    })
                    .collect();
                (c.to_string(), lines)
            })
            .collect();
        Ok(TableCensus {
            counts: r.counts,
            builtin,
        })
    }

    async fn generation(&self) -> Result<Option<u32>, ExecError> {
        if self.variant == Variant::Legacy {
            return Ok(None);
        }
        crate::ruleset_generation()
            .await
            .map(Some)
            .map_err(|source| ExecError {
                command: "nf_tables NFT_MSG_GETGEN".into(),
                status: None,
                detail: source.to_string(),
            })
    }

    async fn list_chains(&self, table: &str) -> Result<Vec<String>, ExecError> {
        if self.variant == Variant::Nft {
            // `iptables-nft-save` at 100,000 chains takes minutes (and was
            // seen to crash); `nft list chains` lists names only.
            let fam = match self.family {
                IpFamily::V4 => "ip",
                IpFamily::V6 => "ip6",
            };
            if let Ok((Some(0), out, _)) = run("nft", &["list", "chains", fam], None).await {
                return Ok(parse_nft_chains(&out, table));
            }
        }
        Ok(parse_save(&self.save(table).await?, &[])
            .chains
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_chain_listing() {
        let out = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n\tchain KUBE-SERVICES {\n\t}\n}\ntable ip nat {\n\tchain KUBE-SERVICES {\n\t}\n\tchain KUBE-SEP-ABC {\n\t}\n}\n";
        assert_eq!(
            parse_nft_chains(out, "nat"),
            vec!["KUBE-SERVICES", "KUBE-SEP-ABC"]
        );
        assert_eq!(
            parse_nft_chains(out, "filter"),
            vec!["INPUT", "KUBE-SERVICES"]
        );
        assert!(parse_nft_chains(out, "mangle").is_empty());
    }

    #[test]
    fn restore_error_shows_the_line() {
        let payload = "*nat\n:A - [0:0]\n-A A -j NOPE\nCOMMIT\n";
        let d = restore_context(
            "iptables-restore: line 3 failed\nError occurred at line: 3\n",
            payload,
        );
        assert!(d.contains("3> -A A -j NOPE"), "{d}");
        assert!(d.contains("2: :A - [0:0]"), "{d}");
    }
}
