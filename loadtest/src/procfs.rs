//! The node's own cost, read from Linux /proc: resident memory and CPU time.

use std::fs;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        rss_kib: vm_rss_kib(&status)?,
        cpu_s: cpu_ticks(&stat)? as f64 / clock_ticks(),
    })
}

/// `VmRSS:   12345 kB` from /proc/PID/status.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat, in clock ticks. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(
            vm_rss_kib("Name:\tx\nVmRSS:\t  20480 kB\nThreads: 3\n"),
            Some(20480)
        );
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(200));
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }
}
