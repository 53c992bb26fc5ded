//! The process's own memory, as `/proc/self/status` reports it: what the
//! benches print as RSS (`grep -E 'VmRSS|VmHWM' /proc/PID/status` by
//! hand).

/// A `/proc/self/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`, the peak
/// since the last `echo 5 > /proc/self/clear_refs`); 0 if unreadable.
pub fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
