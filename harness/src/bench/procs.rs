//! What the benchmarks read about processes and the kernel: the harness's
//! own CPU, an agent's CPU from /proc, an agent's tool children (to stop a
//! sync that blew its budget), and whether the kernel has finished freeing
//! the namespaces of the previous measurement.

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// CPU seconds (user + system) this process has used so far, all threads.
pub fn self_cpu() -> f64 {
    let r = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage(RUSAGE_SELF) cannot fail");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(r.user_time()) + secs(r.system_time())
}

/// CPU seconds process `pid` has used so far, summed over its live threads
/// from their scheduler statistics (nanoseconds, unlike /proc/pid/stat's
/// clock ticks).
pub fn process_cpu(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns: u64 = 0;
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// CPU seconds used so far by this process's threads whose name starts
/// with `prefix` (the prober's `probe:` threads, say).
pub fn threads_cpu(prefix: &str) -> f64 {
    let mut ns: u64 = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `roots` (not the roots themselves).
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &all {
            if parent == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// SIGKILLs every descendant of `roots` (an agent's iptables-restore or
/// nft that ran past the budget): the agent sees its tool fail and goes on.
pub fn kill_descendants(roots: &[u32]) -> usize {
    let victims = descendants(roots);
    for &pid in &victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    victims.len()
}

/// Network namespaces the kernel holds now (the `net_namespace` slab's
/// active objects), or `None` where /proc/slabinfo does not say.
pub fn live_netns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("net_namespace "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// System (kernel) CPU seconds the whole machine has used so far, from the
/// `cpu` line of /proc/stat.
fn machine_system_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq ...
    let system: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(system as f64 / hz)
}

/// Deleting a namespace only unlinks it; the kernel frees it later, on a
/// work queue. Waits (at most `limit`) until the kernel is done, so one
/// measurement does not pay for the previous one's teardown. Done means
/// at most `slack` more namespaces than `baseline` are alive, or, since the
/// slab count SLUB reports is approximate and may never get back to the
/// baseline, that the count has stopped falling for a second while the
/// machine's kernel CPU stayed under a tenth of a core. Returns how long it
/// waited; without slabinfo it waits a fixed two seconds.
pub fn wait_netns_freed(baseline: Option<u64>, slack: u64, limit: Duration) -> Duration {
    const QUIET: Duration = Duration::from_secs(1);
    let start = Instant::now();
    let Some(base) = baseline else {
        std::thread::sleep(Duration::from_secs(2).min(limit));
        return start.elapsed();
    };
    let mut last = (live_netns(), machine_system_cpu(), Instant::now());
    while start.elapsed() < limit {
        let Some(n) = live_netns() else { break };
        if n <= base + slack {
            break;
        }
        let now = Instant::now();
        if Some(n) < last.0 {
            last = (Some(n), machine_system_cpu(), now);
        } else if now - last.2 >= QUIET {
            let busy = match (machine_system_cpu(), last.1) {
                (Some(b), Some(a)) => (b - a) / (now - last.2).as_secs_f64(),
                _ => 0.0,
            };
            if busy < 0.1 {
                break;
            }
            last = (Some(n), machine_system_cpu(), now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_children_are_found_and_cpu_is_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(descendants(&[me]).contains(&child.id()));
        assert_eq!(kill_descendants(&[child.id()]), 0);
        assert!(process_cpu(me).unwrap() > 0.0);
        assert!(self_cpu() > 0.0);
        let busy = std::thread::Builder::new()
            .name("svclab-busy".into())
            .spawn(|| {
                // Spin until the thread's own counter shows 20 ms of CPU (a
                // fixed wall time may get little CPU on a loaded machine),
                // for at most 10 s.
                let t = std::time::Instant::now();
                let mut cpu = 0.0;
                while cpu < 0.02 && t.elapsed() < Duration::from_secs(10) {
                    let spin = std::time::Instant::now();
                    while spin.elapsed() < Duration::from_millis(5) {}
                    cpu = threads_cpu("svclab-busy");
                }
                cpu
            })
            .unwrap();
        assert!(busy.join().unwrap() >= 0.02);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
