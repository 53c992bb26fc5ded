//! Memory as `/proc` reports it: the process's own RSS
//! (`/proc/self/status`, `grep -E 'VmRSS|VmHWM' /proc/PID/status` by
//! hand) and the machine's (`/proc/meminfo`).

/// A `/proc/self/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`, the peak
/// since the last `echo 5 > /proc/self/clear_refs`); 0 if unreadable.
pub fn rss_kib(field: &str) -> u64 {
    proc_kib("/proc/self/status", field)
}

/// A `/proc/meminfo` field in KiB (`"MemAvailable:"`); 0 if unreadable.
pub fn meminfo_kib(field: &str) -> u64 {
    proc_kib("/proc/meminfo", field)
}

fn proc_kib(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
