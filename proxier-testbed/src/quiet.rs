//! Waiting for the machine to go quiet between timed runs.
//!
//! A namespace that is dropped is torn down by the kernel later, on a
//! workqueue (`cleanup_net`): 280,000 IPVS real servers, 20,000
//! addresses of `kube-ipvs0` and their ipsets take seconds of CPU there.
//! On the VM's one vCPU that teardown runs inside the next timed sync
//! unless the bench waits for it. Check by hand: `top` (a `kworker` busy
//! after the namespace is gone), `grep '^cpu ' /proc/stat`.

use std::time::{Duration, Instant};

/// The busy and total jiffies of all CPUs (`/proc/stat`'s `cpu` line).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Waits until the CPUs are at most 10 % busy over two windows of 250 ms
/// in a row, or `max` has passed; returns how long it waited. Call it
/// after dropping what a timed run made, before the next run.
pub fn settle(max: Duration) -> Duration {
    let t0 = Instant::now();
    let mut quiet = 0;
    let Some(mut last) = cpu_jiffies() else {
        return Duration::ZERO;
    };
    while t0.elapsed() < max && quiet < 2 {
        std::thread::sleep(Duration::from_millis(250));
        let Some(now) = cpu_jiffies() else { break };
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        quiet = if total > 0 && busy * 10 <= total {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
    t0.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_machine_is_waited_for_up_to_the_bound() {
        let (busy, total) = cpu_jiffies().expect("/proc/stat");
        assert!(busy <= total && total > 0);
        // A spinning thread keeps one CPU busy: with every CPU busy the
        // wait runs to its bound; otherwise it returns on its own.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let waited = settle(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in spinners {
            s.join().expect("spinner");
        }
        assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    }
}
