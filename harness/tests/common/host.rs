//! The host's own state, as kube-proxy or a lab could change it: links,
//! addresses, routes, rules, iptables (nft and legacy, v4 and v6), the nft
//! ruleset, host-global and per-namespace sysctls, and the files kube-proxy
//! or its tools could leave. Read from the calling thread's namespace (the
//! host's, in tests).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

/// Host-global sysctls (and the conntrack hash size) kube-proxy can write,
/// or a lab might; read from the test's own (the host's) namespace.
pub const HOST_SYSCTLS: &[&str] = &[
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/sys/module/nf_conntrack/parameters/hashsize",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
    "/proc/sys/net/ipv4/conf/all/route_localnet",
    "/proc/sys/net/ipv4/conf/all/arp_ignore",
    "/proc/sys/net/ipv4/conf/all/arp_announce",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
    // The lab lifts these inside its own namespaces only.
    "/proc/sys/net/ipv4/icmp_ratelimit",
    "/proc/sys/net/ipv4/icmp_msgs_per_sec",
    "/proc/sys/net/ipv4/icmp_msgs_burst",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/panic_on_oops",
];

/// Files kube-proxy or the tools it runs could leave on the host.
pub const HOST_FILES: &[&str] = &[
    "/run/xtables.lock",
    "/run/kube-proxy",
    "/var/run/kube-proxy",
    "/var/lib/kube-proxy",
    "/var/lib/kubelet",
    "/var/log/kube-proxy.log",
    "/etc/kubernetes",
];

pub fn cmd_text(cmd: &[&str]) -> String {
    match Command::new(cmd[0]).args(&cmd[1..]).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            if o.status.success() {
                String::new()
            } else {
                format!(
                    "(exit {}: {})",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
        ),
        Err(e) => format!("({} unavailable: {e})", cmd[0]),
    }
}

/// `iptables-save` without comments and chain counters.
pub fn strip_counters(t: &str) -> String {
    t.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.find('['), l.rfind(']')) {
            (Some(a), Some(b)) if l.starts_with(':') && b > a => {
                format!("{}{}", &l[..a], &l[b + 1..])
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything about the host that kube-proxy could change, by section.
pub fn host_snapshot() -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    for (what, cmd) in [
        ("links", &["ip", "-d", "-j", "link", "show"][..]),
        ("addresses", &["ip", "-j", "addr", "show"][..]),
        ("routes", &["ip", "-j", "route", "show", "table", "all"][..]),
        (
            "routes6",
            &["ip", "-6", "-j", "route", "show", "table", "all"][..],
        ),
        ("rules", &["ip", "-j", "rule", "show"][..]),
        ("iptables-save", &["iptables-save"][..]),
        ("ip6tables-save", &["ip6tables-save"][..]),
        ("iptables-legacy-save", &["iptables-legacy-save"][..]),
        ("ip6tables-legacy-save", &["ip6tables-legacy-save"][..]),
        ("nft", &["nft", "-s", "list", "ruleset"][..]),
    ] {
        s.insert(what.to_string(), strip_counters(&cmd_text(cmd)));
    }
    for path in HOST_SYSCTLS {
        let v = std::fs::read_to_string(path)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("({e})"));
        s.insert(path.to_string(), v);
    }
    for path in HOST_FILES {
        s.insert(path.to_string(), file_state(Path::new(path)));
    }
    s
}

pub fn file_state(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) => format!(
            "exists mode {:o} size {} mtime {}.{:09} uid {}",
            m.mode(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.uid()
        ),
        Err(e) => format!("({})", e.kind()),
    }
}

/// Paths under `roots` (to `depth` levels) changed or created since `since`,
/// outside what other labs and the system change anyway. For the report.
pub fn changed_since(since: SystemTime, roots: &[(&str, usize)]) -> Vec<String> {
    fn walk(p: &Path, depth: usize, since: SystemTime, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let s = path.to_string_lossy();
            if [
                "/run/netns",
                "/run/svclab",
                "/run/user",
                "/run/systemd",
                "/run/log",
            ]
            .iter()
            .any(|x| s.starts_with(x))
            {
                continue;
            }
            if let Ok(m) = e.metadata()
                && m.modified().is_ok_and(|t| t >= since)
            {
                out.push(s.into_owned());
            }
            if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, depth - 1, since, out);
            }
        }
    }
    let mut out = Vec::new();
    for (root, depth) in roots {
        walk(Path::new(root), *depth, since, &mut out);
    }
    out.sort();
    out
}

pub fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, b) in before {
        let a = after.get(k).map(String::as_str).unwrap_or("(gone)");
        if a != b {
            out.push_str(&format!("== {k}\n--- before\n{b}\n--- after\n{a}\n"));
        }
    }
    out
}
