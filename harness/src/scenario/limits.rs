//! Bounds on scenario input, checked before anything is allocated for it:
//! a small file must never make svclab build something huge, hang, or
//! print more than a screenful.

/// The largest scenario file read (a generated 50,000-Service scenario is
/// about 11 MiB).
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Alias uses in one file, and the values they may expand to in total
/// (counted in YAML nodes): a few aliases nested ten deep otherwise expand
/// a kilobyte into gigabytes.
pub const MAX_ALIASES: usize = 10_000;
pub const MAX_ALIAS_NODES: usize = 1_000_000;
/// Collections nested deeper than this are not Kubernetes objects.
pub const MAX_DEPTH: usize = 64;
/// Errors kept and shown; the rest are counted.
pub const MAX_ERRORS: usize = 20;
/// Longest value quoted in a message before it is elided.
pub const MAX_QUOTED: usize = 64;
/// Longest message or field kept for one error.
pub const MAX_MESSAGE: usize = 400;
/// Pods on one node: a Linux bridge (the node's `cni0`) takes at most
/// 1024 ports (BR_MAX_PORTS).
pub const MAX_PODS_PER_NODE: usize = 1023;
/// What one pod costs the host: its network namespace, veth pair, echo
/// sockets and their buffers. An upper estimate, so that the limit below
/// keeps the host usable.
pub const POD_COST_BYTES: u64 = 2 << 20;
/// Planned churn events (each is a step kept in memory and an update sent
/// to every agent).
pub const MAX_CHURN_EVENTS: f64 = 1_000_000.0;

/// Limits that depend on the machine.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Pods in the whole lab, and why that many.
    pub max_pods: usize,
    pub max_pods_why: String,
}

impl Limits {
    /// What this machine can hold now: half its available memory at
    /// [`POD_COST_BYTES`] per pod, and no more network namespaces than the
    /// kernel allows.
    pub fn for_this_machine() -> Limits {
        let avail = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024);
        let netns_max = std::fs::read_to_string("/proc/sys/user/max_net_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        Limits::from_figures(avail, netns_max)
    }

    fn from_figures(mem_available: Option<u64>, netns_max: Option<usize>) -> Limits {
        let avail = mem_available.unwrap_or(1 << 30);
        let by_memory = (avail / 2 / POD_COST_BYTES) as usize;
        let mut why = format!(
            "half of this machine's {} MiB available memory at {} MiB per pod",
            avail >> 20,
            POD_COST_BYTES >> 20
        );
        let mut max = by_memory;
        // Nodes, the fabric and the external client need namespaces too.
        if let Some(n) = netns_max.map(|n| n.saturating_sub(300))
            && n < max
        {
            max = n;
            why = "the kernel's user.max_net_namespaces, less the nodes' own".into();
        }
        Limits {
            max_pods: max.max(1),
            max_pods_why: why,
        }
    }
}

/// `value` quoted, or its start and its length when it is long.
pub fn elide(value: &str) -> String {
    if value.len() <= MAX_QUOTED {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTED - 16;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

/// `text` cut to at most `max` bytes, saying how much was cut.
pub fn truncate(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elision_and_machine_limits() {
        assert_eq!(elide("web"), "\"web\"");
        let long = "é".repeat(10_000);
        let e = elide(&long);
        assert!(e.len() < 100 && e.ends_with("(20000 bytes)"), "{e}");
        let t = truncate("x".repeat(1000), 10);
        assert_eq!(t, format!("{}... (990 more bytes)", "x".repeat(10)));
        let l = Limits::from_figures(Some(4 << 30), None);
        assert_eq!(l.max_pods, 1024);
        assert!(l.max_pods_why.contains("4096 MiB"), "{}", l.max_pods_why);
        let l = Limits::from_figures(Some(4 << 30), Some(500));
        assert_eq!(l.max_pods, 200);
        assert!(l.max_pods_why.contains("max_net_namespaces"));
    }
}
