//! In-memory fakes of the kernel seam, for unit tests of the sync logic.
//!
//! [`FakeIptables`] applies `iptables-restore` input with the real tool's
//! rules: `--noflush` or not, `:CHAIN` creates or flushes, `-X` refuses a
//! chain that is still referenced, a jump to a missing chain fails the
//! whole table, and a failed restore changes nothing. It is a model, not
//! a substitute: the kernel tests run the real tools.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use proxier_core::IpFamily;

use crate::conntrack::{Conntrack, ConntrackError, DumpFilter, Flow};
use crate::iptables::{ExecError, Iptables, Variant};
use crate::owned::{builtin_chains as builtins, rule_target as target};
use crate::sysctl::{Sysctl, SysctlError};

const BUILTIN_TARGETS: [&str; 10] = [
    "ACCEPT",
    "DROP",
    "REJECT",
    "RETURN",
    "MARK",
    "MASQUERADE",
    "DNAT",
    "SNAT",
    "LOG",
    "SET",
];

/// One table: chain → (policy for built-ins, rules without `-A CHAIN`).
pub type Table = BTreeMap<String, (Option<String>, Vec<String>)>;

/// What the fake holds and saw.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
    /// Every restore: table, payload, noflush.
    pub restores: Vec<(String, String, bool)>,
    /// Fail the next N restores (as a held lock would).
    pub fail_next: usize,
    /// Bumped by every change (a restore, [`FakeIptables::tamper`]), as
    /// nf_tables' generation is.
    pub generation: u32,
}

/// An in-memory iptables.
#[derive(Debug)]
pub struct FakeIptables {
    variant: Variant,
    /// Shared state.
    pub state: Mutex<FakeState>,
}

fn empty_table(table: &str) -> Table {
    builtins(table)
        .iter()
        .map(|c| (c.to_string(), (Some("ACCEPT".to_string()), Vec::new())))
        .collect()
}

impl FakeIptables {
    /// An empty machine.
    pub fn new(variant: Variant) -> Self {
        FakeIptables {
            variant,
            state: Mutex::new(FakeState::default()),
        }
    }

    /// Changes a table as another program would (`iptables -F CHAIN`),
    /// bumping the generation.
    pub fn tamper(&self, table: &str, f: impl FnOnce(&mut Table)) {
        let mut st = self.state.lock().expect("lock");
        let t = st
            .tables
            .entry(table.to_string())
            .or_insert_with(|| empty_table(table));
        f(t);
        st.generation += 1;
    }

    /// A copy of one table.
    pub fn table(&self, table: &str) -> Table {
        let st = self.state.lock().expect("lock");
        st.tables
            .get(table)
            .cloned()
            .unwrap_or_else(|| empty_table(table))
    }

    /// The rules of one chain as `iptables -S` prints them.
    pub fn rules(&self, table: &str, chain: &str) -> Vec<String> {
        self.table(table)
            .get(chain)
            .map(|(_, r)| r.iter().map(|x| format!("-A {chain} {x}")).collect())
            .unwrap_or_default()
    }

    /// Checks a table for dangling jumps; every chain of `owned` that no
    /// rule jumps to is reported too (unused chains).
    pub fn check(table: &Table) -> Result<(), String> {
        for (c, (_, rules)) in table {
            for r in rules {
                if let Some(t) = target(r)
                    && !BUILTIN_TARGETS.contains(&t)
                    && !table.contains_key(t)
                {
                    return Err(format!("{c}: jump to missing chain {t}"));
                }
            }
        }
        Ok(())
    }

    fn apply(
        table_name: &str,
        current: &Table,
        payload: &str,
        noflush: bool,
    ) -> Result<Table, (usize, String)> {
        let mut t = if noflush {
            current.clone()
        } else {
            let mut t = empty_table(table_name);
            for (c, (p, _)) in current {
                if let Some(p) = p {
                    t.insert(c.clone(), (Some(p.clone()), Vec::new()));
                }
            }
            t
        };
        let mut in_table = false;
        let mut committed = false;
        for (i, line) in payload.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if name != table_name {
                    return Err((n, format!("unexpected table {name}")));
                }
                in_table = true;
                continue;
            }
            if !in_table {
                return Err((n, "no table".into()));
            }
            if line == "COMMIT" {
                committed = true;
                in_table = false;
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let mut w = decl.split_whitespace();
                let chain = w.next().ok_or((n, "empty chain line".to_string()))?;
                let policy = w.next().unwrap_or("-");
                let e = t.entry(chain.to_string()).or_insert((None, Vec::new()));
                e.1.clear();
                if policy != "-" {
                    e.0 = Some(policy.to_string());
                }
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            let cmd = parts.next().unwrap_or("");
            let chain = parts.next().ok_or((n, "no chain".to_string()))?.to_string();
            let rest = parts.next().unwrap_or("").to_string();
            match cmd {
                "-A" => {
                    let rules = &mut t
                        .get_mut(&chain)
                        .ok_or((n, format!("Chain '{chain}' does not exist")))?
                        .1;
                    rules.push(rest);
                }
                "-I" => {
                    let (pos, rule) = match rest.split_once(' ') {
                        Some((p, r)) if p.parse::<usize>().is_ok() => {
                            (p.parse::<usize>().unwrap_or(1), r.to_string())
                        }
                        _ => (1, rest.clone()),
                    };
                    let rules = &mut t
                        .get_mut(&chain)
                        .ok_or((n, format!("Chain '{chain}' does not exist")))?
                        .1;
                    if pos == 0 || pos > rules.len() + 1 {
                        return Err((n, "index of insertion too big".into()));
                    }
                    rules.insert(pos - 1, rule);
                }
                "-D" => {
                    let rules = &mut t
                        .get_mut(&chain)
                        .ok_or((n, format!("Chain '{chain}' does not exist")))?
                        .1;
                    let at = rules.iter().position(|r| *r == rest).ok_or((
                        n,
                        "Bad rule (does a matching rule exist in that chain?)".to_string(),
                    ))?;
                    rules.remove(at);
                }
                "-X" => {
                    let (p, rules) = t
                        .get(&chain)
                        .ok_or((n, format!("Chain '{chain}' does not exist")))?;
                    if p.is_some() {
                        return Err((n, "cannot delete built-in chain".into()));
                    }
                    if !rules.is_empty() {
                        return Err((n, format!("Directory not empty: {chain}")));
                    }
                    if t.iter()
                        .any(|(_, (_, rs))| rs.iter().any(|r| target(r) == Some(chain.as_str())))
                    {
                        return Err((n, format!("Device or resource busy: {chain} is referenced")));
                    }
                    t.remove(&chain);
                }
                _ => return Err((n, format!("unknown command {cmd}"))),
            }
        }
        if !committed {
            return Err((payload.lines().count(), "no COMMIT".into()));
        }
        Self::check(&t).map_err(|e| (payload.lines().count(), e))?;
        Ok(t)
    }
}

#[async_trait]
impl Iptables for FakeIptables {
    fn variant(&self) -> Variant {
        self.variant
    }

    async fn restore(&self, table: &str, payload: &str, noflush: bool) -> Result<(), ExecError> {
        let mut st = self.state.lock().expect("lock");
        st.restores
            .push((table.to_string(), payload.to_string(), noflush));
        let err = |status, detail: String| ExecError {
            command: format!("fake-iptables-restore (table {table})"),
            status: Some(status),
            detail,
        };
        if st.fail_next > 0 {
            st.fail_next -= 1;
            return Err(err(
                4,
                "Another app is currently holding the xtables lock".into(),
            ));
        }
        let current = st
            .tables
            .get(table)
            .cloned()
            .unwrap_or_else(|| empty_table(table));
        match Self::apply(table, &current, payload, noflush) {
            Ok(t) => {
                st.tables.insert(table.to_string(), t);
                st.generation += 1;
                Ok(())
            }
            Err((line, msg)) => Err(err(
                1,
                crate::iptables::restore_context(
                    &format!("{msg}\nError occurred at line: {line}\n"),
                    payload,
                ),
            )),
        }
    }

    async fn list_rules(&self, table: &str, chain: &str) -> Result<Option<Vec<String>>, ExecError> {
        let t = self.table(table);
        Ok(t.get(chain)
            .map(|(_, r)| r.iter().map(|x| format!("-A {chain} {x}")).collect()))
    }

    async fn policy(&self, table: &str, chain: &str) -> Result<String, ExecError> {
        Ok(self
            .table(table)
            .get(chain)
            .and_then(|(p, _)| p.clone())
            .unwrap_or_else(|| "ACCEPT".into()))
    }

    async fn list_chains(&self, table: &str) -> Result<Vec<String>, ExecError> {
        Ok(self.table(table).keys().cloned().collect())
    }

    async fn generation(&self) -> Result<Option<u32>, ExecError> {
        Ok(Some(self.state.lock().expect("lock").generation))
    }
}

/// An in-memory conntrack table: [`FakeConntrack::flows`] is what a dump
/// returns, and deletes remove from it and are recorded.
#[derive(Debug, Default)]
pub struct FakeConntrack {
    /// The table.
    pub flows: Mutex<Vec<Flow>>,
    /// Every flow deleted, in order.
    pub deleted: Mutex<Vec<Flow>>,
    /// Dumps asked for.
    pub dumps: Mutex<usize>,
    /// The kernel-side filter of the last dump.
    pub filters: Mutex<DumpFilter>,
    /// Fail every call with this errno (a socket without permission).
    pub fail_with: Mutex<Option<i32>>,
}

impl FakeConntrack {
    fn failure(&self) -> Option<ConntrackError> {
        self.fail_with
            .lock()
            .expect("lock")
            .map(|e| ConntrackError::Socket {
                what: "fake".into(),
                source: std::io::Error::from_raw_os_error(e),
            })
    }
}

#[async_trait]
impl Conntrack for FakeConntrack {
    async fn dump(
        &self,
        family: IpFamily,
        filter: DumpFilter,
        keep: &(dyn for<'f> Fn(&'f Flow) -> bool + Send + Sync),
    ) -> Result<(Vec<Flow>, usize), ConntrackError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        *self.dumps.lock().expect("lock") += 1;
        let flows = self.flows.lock().expect("lock");
        *self.filters.lock().expect("lock") = filter;
        let of_family: Vec<&Flow> = flows
            .iter()
            .filter(|f| f.family() == family)
            .filter(|f| filter.protocol.is_none_or(|p| f.protocol == p))
            .filter(|f| !filter.dnat_only || f.dnat)
            .collect();
        let kept = of_family.iter().filter(|f| keep(f)).map(|f| **f).collect();
        Ok((kept, of_family.len()))
    }

    async fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let mut table = self.flows.lock().expect("lock");
        table.retain(|f| !flows.contains(f));
        self.deleted.lock().expect("lock").extend_from_slice(flows);
        Ok(flows.len())
    }
}

/// In-memory kernel parameters: what was read and written.
#[derive(Debug, Default)]
pub struct FakeSysctl {
    /// Current values by key (`net/ipv4/vs/conntrack`).
    pub values: Mutex<BTreeMap<String, String>>,
    /// Every write, in order.
    pub writes: Mutex<Vec<(String, String)>>,
}

impl FakeSysctl {
    /// Parameters with these values.
    pub fn with(values: &[(&str, &str)]) -> FakeSysctl {
        FakeSysctl {
            values: Mutex::new(
                values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            writes: Mutex::default(),
        }
    }
}

impl Sysctl for FakeSysctl {
    fn get(&self, key: &str) -> Result<String, SysctlError> {
        self.values
            .lock()
            .expect("lock")
            .get(key)
            .cloned()
            .ok_or_else(|| SysctlError {
                key: key.into(),
                value: None,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
    }

    fn set(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        self.values
            .lock()
            .expect("lock")
            .insert(key.into(), value.into());
        self.writes
            .lock()
            .expect("lock")
            .push((key.into(), value.into()));
        Ok(())
    }
}
