//! The kernel's own packet tracing: a temporary `ip svclab-trace-<run>`
//! table (`ip6` for an IPv6 probe) whose chains set `meta nftrace` on the probe's first packet, and
//! `nft monitor trace` reading what every traced chain and rule did. This
//! covers the nftables backend and iptables-nft (its rules are nf_tables
//! rules in the `ip nat` and `ip filter` tables).
//!
//! The monitor's text is parsed, not JSON: with nftables 1.0.6 (Debian 12)
//! `nft -j monitor trace` prints the very same text lines as `nft monitor
//! trace` (checked in a throwaway namespace with a `meta nftrace set 1`
//! rule), so there is no JSON to read.
//!
//! The marking chains run at priority -180: after conntrack (-200), so
//! `ct state new` limits the trace to the connection's first packet (the
//! only one the nat chains see), and before mangle, DNAT and filter. The
//! raw table (-300) runs before them and is not traced.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::Child;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use svclab_backends::model::Protocol;

use super::TraceError;
use super::tool::{run_in, spawn_in};

/// Priority of the marking chains (see the module doc).
const MARK_PRIORITY: i32 = -180;
/// nfnetlink group of trace events (NFNLGRP_NFTRACE), as a bit of the
/// group mask /proc/net/netlink prints.
const NFTRACE_GROUP_BIT: u32 = 1 << (9 - 1);
/// How long a monitor may take to subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most monitor output kept per node.
const MAX_OUTPUT: u64 = 4 << 20;

/// Which packets a node marks for tracing.
#[derive(Clone, Debug)]
pub struct Selector {
    pub protocol: Protocol,
    /// The probe's own tuple start: client address and source port. Its
    /// family is the table's.
    pub client: SocketAddr,
    /// Also packets from this address (the node that SNATed the probe)
    /// to this node's pods: masquerading picks a new source port.
    pub snat_from: Option<(IpAddr, IpNet)>,
}

impl Selector {
    /// The nf_tables family of the marking table: `ip` or `ip6`.
    pub fn family(&self) -> &'static str {
        family_of(self.client.ip())
    }
}

/// `ip` for an IPv4 address, `ip6` for an IPv6 one: the nf_tables family
/// and the keyword its address matches start with.
fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { "ip6" } else { "ip" }
}

pub fn table_name(run: &str) -> String {
    format!("svclab-trace-{run}")
}

/// The table as one `nft -f` transaction.
pub fn table_text(run: &str, sel: &Selector) -> String {
    let l4 = sel.protocol.lower();
    let ip = sel.family();
    let mut rules = vec![format!(
        "{ip} saddr {} {l4} sport {} ct state new meta nftrace set 1",
        sel.client.ip(),
        sel.client.port()
    )];
    if let Some((from, pods)) = sel.snat_from {
        rules.push(format!(
            "{ip} saddr {from} {ip} daddr {pods} meta l4proto {l4} ct state new meta nftrace set 1"
        ));
    }
    let mut s = format!("table {ip} {} {{\n", table_name(run));
    for (chain, hook) in [("mark-prerouting", "prerouting"), ("mark-output", "output")] {
        s.push_str(&format!(
            "  chain {chain} {{\n    type filter hook {hook} priority {MARK_PRIORITY}; policy accept;\n"
        ));
        for r in &rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The marking table in one node, deleted again on drop.
pub struct MarkTable {
    netns: String,
    run: String,
    family: &'static str,
    live: bool,
}

impl MarkTable {
    pub fn create(netns: &str, run: &str, sel: &Selector) -> Result<MarkTable, TraceError> {
        let family = sel.family();
        // A table left by an interrupted trace would double the marks.
        let _ = run_in(
            netns,
            "nft",
            &["delete", "table", family, &table_name(run)],
            None,
        );
        run_in(netns, "nft", &["-f", "-"], Some(&table_text(run, sel)))?;
        Ok(MarkTable {
            netns: netns.to_string(),
            run: run.to_string(),
            family,
            live: true,
        })
    }

    fn remove(&self) -> Result<String, TraceError> {
        run_in(
            &self.netns,
            "nft",
            &["delete", "table", self.family, &table_name(&self.run)],
            None,
        )
    }

    pub fn delete(mut self) -> Result<(), TraceError> {
        self.live = false;
        self.remove().map(|_| ())
    }
}

impl Drop for MarkTable {
    fn drop(&mut self) {
        if self.live {
            let _ = self.remove();
        }
    }
}

/// `nft monitor trace` in one node.
pub struct Monitor {
    netns: String,
    child: Option<Child>,
}

impl Monitor {
    /// Starts the monitor and waits until it receives trace events.
    pub fn start(netns: &str) -> Result<Monitor, TraceError> {
        let args = ["monitor", "trace"];
        let child = spawn_in(netns, "nft", &args)?;
        let mut m = Monitor {
            netns: netns.to_string(),
            child: Some(child),
        };
        let pid = m.child.as_ref().map(|c| c.id()).unwrap_or(0);
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        while !subscribed(pid) {
            if Instant::now() > deadline {
                return Err(TraceError::tool(
                    netns,
                    "nft",
                    &args,
                    format!(
                        "did not subscribe to trace events within {}s",
                        SUBSCRIBE_TIMEOUT.as_secs()
                    ),
                ));
            }
            if let Some(Ok(Some(status))) = m.child.as_mut().map(Child::try_wait) {
                let err = m.stop().unwrap_or_default();
                return Err(TraceError::tool(
                    netns,
                    "nft",
                    &args,
                    format!("exited ({status}): {}", err.trim()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(m)
    }

    /// Stops the monitor; everything it printed.
    pub fn stop(&mut self) -> Result<String, TraceError> {
        let Some(mut child) = self.child.take() else {
            return Ok(String::new());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = stdout.take(MAX_OUTPUT).read_to_end(&mut out);
        }
        let _ = child.kill();
        let _ = child.wait();
        if out.is_empty() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            if !err.trim().is_empty() {
                return Err(TraceError::tool(
                    &self.netns,
                    "nft",
                    &["monitor", "trace"],
                    err.trim().to_string(),
                ));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether process `pid` holds a netfilter netlink socket that joined the
/// trace group (read from its namespace's /proc/net/netlink).
fn subscribed(pid: u32) -> bool {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 10
            && f[1] == "12"
            && u32::from_str_radix(f[3], 16).is_ok_and(|g| g & NFTRACE_GROUP_BIT != 0)
            && inodes.iter().any(|i| i == f[9])
    })
}

/// The packet as a hook saw it first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Packet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oif: Option<String>,
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The IPv4 header's id, or the IPv6 header's flow label: the same
    /// packet keeps it across hooks, nodes and NAT, and a retransmission
    /// gets a new one (Linux rehashes an IPv6 flow's label on a
    /// retransmission timeout).
    pub ip_id: Option<u32>,
}

impl Packet {
    fn parse(text: &str) -> Packet {
        let t: Vec<&str> = text.split_whitespace().collect();
        let after = |keys: &[&str]| {
            t.windows(keys.len() + 1)
                .find(|w| w[..keys.len()] == *keys)
                .map(|w| w[keys.len()].trim_matches('"').to_string())
        };
        let port = |name: &str| {
            ["tcp", "udp", "sctp", "th"]
                .iter()
                .find_map(|p| after(&[p, name]))
                .and_then(|v| v.parse().ok())
        };
        let addr = |name: &str| {
            ["ip", "ip6"]
                .iter()
                .find_map(|f| after(&[f, name]))
                .and_then(|v| v.parse().ok())
        };
        Packet {
            iif: after(&["iif"]),
            oif: after(&["oif"]),
            saddr: addr("saddr"),
            daddr: addr("daddr"),
            sport: port("sport"),
            dport: port("dport"),
            ip_id: after(&["ip", "id"])
                .or_else(|| after(&["ip6", "flowlabel"]))
                .and_then(|v| v.parse().ok()),
        }
    }

    pub fn summary(&self) -> String {
        let addr = |a: Option<IpAddr>, p: Option<u16>| match (a, p) {
            (Some(a), Some(p)) => SocketAddr::new(a, p).to_string(),
            (Some(a), None) => a.to_string(),
            _ => "?".into(),
        };
        let mut s = format!(
            "{} -> {}",
            addr(self.saddr, self.sport),
            addr(self.daddr, self.dport)
        );
        if let Some(i) = &self.iif {
            s.push_str(&format!(" in {i}"));
        }
        if let Some(o) = &self.oif {
            s.push_str(&format!(" out {o}"));
        }
        s
    }
}

/// One rule that matched (or a chain's policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub chain: String,
    /// The rule as nft prints it, counters left out; `None` for a policy.
    pub rule: Option<String>,
    /// `jump KUBE-SVC-…`, `accept`, `drop`, `return`, `continue`, `policy
    /// accept`...
    pub verdict: String,
}

/// One base chain's run over the packet (a netfilter hook in one table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookPass {
    /// prerouting, input, forward, output, postrouting.
    pub hook: String,
    /// `ip nat`, `ip filter`, `ip kube-proxy`...
    pub table: String,
    pub base_chain: String,
    pub priority: Option<i64>,
    pub packet: Packet,
    pub steps: Vec<Step>,
}

/// Base chains of a namespace's ruleset: (table, chain) -> (hook, priority).
pub type BaseChains = BTreeMap<(String, String), (String, i64)>;

/// Reads the base chains with `nft -j list chains`.
pub fn base_chains(netns: &str) -> Result<BaseChains, TraceError> {
    let args = ["-j", "list", "chains"];
    let out = run_in(netns, "nft", &args, None)?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| TraceError::tool(netns, "nft", &args, format!("unreadable JSON: {e}")))?;
    let mut m = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["chain"];
        if let (Some(family), Some(table), Some(name), Some(hook)) = (
            c["family"].as_str(),
            c["table"].as_str(),
            c["name"].as_str(),
            c["hook"].as_str(),
        ) {
            m.insert(
                (format!("{family} {table}"), name.to_string()),
                (hook.to_string(), c["prio"].as_i64().unwrap_or(0)),
            );
        }
    }
    Ok(m)
}

/// Parses `nft monitor trace` output into hook passes, in order. Events
/// of `skip_table` (our own marking table) are left out, and so are
/// packets other than the one with IP id `ip_id` (by default the first
/// one traced): retransmissions carry another id, while forwarding and
/// NAT keep it.
pub fn parse(
    text: &str,
    bases: &BaseChains,
    skip_table: &str,
    ip_id: Option<u32>,
) -> Vec<HookPass> {
    let mut passes: Vec<HookPass> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("trace id ") else {
            continue;
        };
        let mut parts = rest.splitn(5, ' ');
        let (Some(_id), Some(family), Some(table), Some(chain), Some(event)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        if table == skip_table {
            continue;
        }
        let table = format!("{family} {table}");
        if let Some(pkt) = event.strip_prefix("packet: ") {
            let (hook, priority) = match bases.get(&(table.clone(), chain.to_string())) {
                Some((h, p)) => (h.clone(), Some(*p)),
                None => ("?".to_string(), None),
            };
            passes.push(HookPass {
                hook,
                table,
                base_chain: chain.to_string(),
                priority,
                packet: Packet::parse(pkt),
                steps: Vec::new(),
            });
            continue;
        }
        let Some(pass) = passes.last_mut() else {
            continue;
        };
        if let Some(r) = event.strip_prefix("rule ") {
            let (rule, verdict) = match r.rfind(" (verdict ") {
                Some(i) => (
                    &r[..i],
                    r[i + " (verdict ".len()..].trim_end_matches(')').trim(),
                ),
                None => (r, ""),
            };
            pass.steps.push(Step {
                chain: chain.to_string(),
                rule: Some(without_counters(rule)),
                verdict: verdict.to_string(),
            });
        } else if let Some(p) = event.strip_prefix("policy ") {
            pass.steps.push(Step {
                chain: chain.to_string(),
                rule: None,
                verdict: format!("policy {}", p.split_whitespace().next().unwrap_or("")),
            });
        } else if let Some(v) = event.strip_prefix("verdict ") {
            pass.steps.push(Step {
                chain: chain.to_string(),
                rule: None,
                verdict: v.trim().to_string(),
            });
        }
    }
    let want = ip_id.or_else(|| passes.first().and_then(|p| p.packet.ip_id));
    passes.retain(|p| want.is_none() || p.packet.ip_id == want);
    passes
}

/// The packet as the marking table (`own_table`) saw it at each hook:
/// proof that it reached netfilter when no other table traced a rule, as
/// with dataplanes that rewrite it before netfilter (eBPF at tc).
pub fn marked(text: &str, own_table: &str) -> Vec<(String, Packet)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("trace id ")?;
            let mut parts = rest.splitn(5, ' ');
            let (_id, _family, table, chain, event) = (
                parts.next()?,
                parts.next()?,
                parts.next()?,
                parts.next()?,
                parts.next()?,
            );
            let pkt = event.strip_prefix("packet: ")?;
            let hook = chain.strip_prefix("mark-")?;
            (table == own_table).then(|| (hook.to_string(), Packet::parse(pkt)))
        })
        .collect()
}

/// Leaves out `counter packets N bytes M`: counts of other packets.
fn without_counters(rule: &str) -> String {
    let t: Vec<&str> = rule.split_whitespace().collect();
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if t[i] == "counter" && t.get(i + 1) == Some(&"packets") && t.get(i + 3) == Some(&"bytes") {
            i += 5;
            continue;
        }
        out.push(t[i]);
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from a lab on the iptables backend (iptables-nft).
    const IPTABLES: &str = r#"trace id a552b964 ip svclab-trace-1358 mark-prerouting packet: iif "cni0" ether saddr 62:64:4e:59:2f:3c ether daddr 56:24:37:2e:ba:ae ip saddr 10.244.0.2 ip daddr 10.96.0.11 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 45757 ip length 60 tcp sport 45678 tcp dport 80 tcp flags == syn tcp window 64240 
trace id a552b964 ip svclab-trace-1358 mark-prerouting rule ip saddr 10.244.0.2 tcp sport 45678 ct state new meta nftrace set 1 (verdict continue)
trace id a552b964 ip svclab-trace-1358 mark-prerouting policy accept 
trace id a552b964 ip nat PREROUTING packet: iif "cni0" ether saddr 62:64:4e:59:2f:3c ether daddr 56:24:37:2e:ba:ae ip saddr 10.244.0.2 ip daddr 10.96.0.11 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 45757 ip length 60 tcp sport 45678 tcp dport 80 tcp flags == syn tcp window 64240 
trace id a552b964 ip nat PREROUTING rule  counter packets 1 bytes 40 jump KUBE-SERVICES (verdict jump KUBE-SERVICES)
trace id a552b964 ip nat KUBE-SERVICES rule meta l4proto tcp ip daddr 10.96.0.11  tcp dport 80 counter packets 0 bytes 0 jump KUBE-SVC-CDGGSHYLG3RE2FKL (verdict jump KUBE-SVC-CDGGSHYLG3RE2FKL)
trace id a552b964 ip nat KUBE-SVC-CDGGSHYLG3RE2FKL rule  counter packets 0 bytes 0 jump KUBE-SEP-2AZ33KU3V5PGPQZH (verdict jump KUBE-SEP-2AZ33KU3V5PGPQZH)
trace id a552b964 ip nat KUBE-SEP-2AZ33KU3V5PGPQZH rule meta l4proto tcp   counter packets 0 bytes 0 dnat to 10.244.1.3:8080 (verdict accept)
trace id 35aa89a6 ip filter FORWARD packet: iif "cni0" oif "eth0" ether saddr 62:64:4e:59:2f:3c ether daddr 56:24:37:2e:ba:ae ip saddr 10.244.0.2 ip daddr 10.244.1.3 ip dscp cs0 ip ecn not-ect ip ttl 63 ip id 45757 ip length 60 tcp sport 45678 tcp dport 8080 tcp flags == syn tcp window 64240 
trace id 35aa89a6 ip filter FORWARD rule ct state new  counter packets 0 bytes 0 jump KUBE-PROXY-FIREWALL (verdict jump KUBE-PROXY-FIREWALL)
trace id 35aa89a6 ip filter FORWARD policy accept 
trace id 35aa89a6 ip nat POSTROUTING packet: iif "cni0" oif "eth0" ether saddr 62:64:4e:59:2f:3c ether daddr 56:24:37:2e:ba:ae ip saddr 10.244.0.2 ip daddr 10.244.1.3 ip dscp cs0 ip ecn not-ect ip ttl 63 ip id 45757 ip length 60 tcp sport 45678 tcp dport 8080 tcp flags == syn tcp window 64240 
trace id 35aa89a6 ip nat POSTROUTING rule  counter packets 0 bytes 0 jump KUBE-POSTROUTING (verdict jump KUBE-POSTROUTING)
trace id 35aa89a6 ip nat KUBE-POSTROUTING rule meta mark & 0x00004000 != 0x00004000 counter packets 0 bytes 0 return (verdict return)
trace id 35aa89a6 ip nat POSTROUTING policy accept 
trace id 7777aaaa ip nat PREROUTING packet: iif "cni0" ip saddr 10.244.0.2 ip daddr 10.96.0.11 ip id 45758 tcp sport 45678 tcp dport 80
trace id 7777aaaa ip nat PREROUTING rule jump KUBE-SERVICES (verdict jump KUBE-SERVICES)
"#;

    fn bases() -> BaseChains {
        [
            ("ip nat", "PREROUTING", "prerouting", -100),
            ("ip filter", "FORWARD", "forward", 0),
            ("ip nat", "POSTROUTING", "postrouting", 100),
        ]
        .into_iter()
        .map(|(t, c, h, p)| ((t.to_string(), c.to_string()), (h.to_string(), p)))
        .collect()
    }

    #[test]
    fn parses_hooks_rules_and_verdicts() {
        let passes = parse(IPTABLES, &bases(), "svclab-trace-1358", None);
        let hooks: Vec<&str> = passes.iter().map(|p| p.hook.as_str()).collect();
        assert_eq!(hooks, ["prerouting", "forward", "postrouting"]);
        let pre = &passes[0];
        assert_eq!(pre.table, "ip nat");
        assert_eq!(pre.packet.saddr, Some("10.244.0.2".parse().unwrap()));
        assert_eq!(pre.packet.dport, Some(80));
        assert_eq!(pre.packet.iif.as_deref(), Some("cni0"));
        let chains: Vec<&str> = pre.steps.iter().map(|s| s.chain.as_str()).collect();
        assert_eq!(
            chains,
            [
                "PREROUTING",
                "KUBE-SERVICES",
                "KUBE-SVC-CDGGSHYLG3RE2FKL",
                "KUBE-SEP-2AZ33KU3V5PGPQZH"
            ]
        );
        assert_eq!(pre.steps[1].verdict, "jump KUBE-SVC-CDGGSHYLG3RE2FKL");
        assert_eq!(
            pre.steps[3].rule.as_deref(),
            Some("meta l4proto tcp dnat to 10.244.1.3:8080")
        );
        assert_eq!(passes[1].steps.last().unwrap().verdict, "policy accept");
        assert_eq!(passes[1].packet.daddr, Some("10.244.1.3".parse().unwrap()));
        let seen = marked(IPTABLES, "svclab-trace-1358");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "prerouting");
        assert_eq!(seen[0].1.sport, Some(45678));
    }

    #[test]
    fn the_marking_table_matches_the_probe_tuple() {
        let sel = Selector {
            protocol: Protocol::Udp,
            client: "10.244.0.2:40001".parse().unwrap(),
            snat_from: Some((
                "172.18.0.2".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
            )),
        };
        let t = table_text("ab12", &sel);
        assert!(t.starts_with("table ip svclab-trace-ab12 {"), "{t}");
        assert!(
            t.contains("type filter hook prerouting priority -180;"),
            "{t}"
        );
        assert!(t.contains("type filter hook output priority -180;"), "{t}");
        assert!(
            t.contains("ip saddr 10.244.0.2 udp sport 40001 ct state new meta nftrace set 1"),
            "{t}"
        );
        assert!(
            t.contains("ip saddr 172.18.0.2 ip daddr 10.244.1.0/24 meta l4proto udp"),
            "{t}"
        );
    }

    #[test]
    fn an_ipv6_probe_is_marked_in_an_ip6_table() {
        let sel = Selector {
            protocol: Protocol::Tcp,
            client: "[fd00:10:244::2]:40001".parse().unwrap(),
            snat_from: Some((
                "fd00:172:18::2".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            )),
        };
        let t = table_text("ab12", &sel);
        assert!(t.starts_with("table ip6 svclab-trace-ab12 {"), "{t}");
        assert!(
            t.contains("ip6 saddr fd00:10:244::2 tcp sport 40001 ct state new meta nftrace set 1"),
            "{t}"
        );
        assert!(
            t.contains("ip6 saddr fd00:172:18::2 ip6 daddr fd00:10:244:1::/64 meta l4proto tcp"),
            "{t}"
        );
    }

    /// Recorded from a dual-stack lab on kube-proxy:nftables (v1.37.2).
    const IP6: &str = r#"trace id e086fde9 ip6 svclab-trace-a738 mark-prerouting packet: iif "cni0" ether saddr 32:c3:ca:a0:e4:8d ether daddr 62:c2:c0:7c:63:c2 ip6 saddr fd00:10:244::2 ip6 daddr fd00:10:96::b ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 64 ip6 flowlabel 499556 ip6 length 40 tcp sport 45403 tcp dport 80 tcp flags == syn tcp window 64800 
trace id e086fde9 ip6 svclab-trace-a738 mark-prerouting unknown rule handle 3 (verdict continue)
trace id e086fde9 ip6 svclab-trace-a738 mark-prerouting policy accept 
trace id e086fde9 ip6 kube-proxy nat-prerouting packet: iif "cni0" ether saddr 32:c3:ca:a0:e4:8d ether daddr 62:c2:c0:7c:63:c2 ip6 saddr fd00:10:244::2 ip6 daddr fd00:10:96::b ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 64 ip6 flowlabel 499556 ip6 length 40 tcp sport 45403 tcp dport 80 tcp flags == syn tcp window 64800 
trace id e086fde9 ip6 kube-proxy nat-prerouting rule jump services (verdict jump services)
trace id e086fde9 ip6 kube-proxy services rule ip6 daddr . meta l4proto . th dport vmap @service-ips (verdict goto service-PFISGYVC-default/web/tcp/)
trace id e086fde9 ip6 kube-proxy service-PFISGYVC-default/web/tcp/ rule meta l4proto tcp dnat ip6 to numgen random mod 2 map { 0 : fd00:10:244:1::3 . 8080, 1 : fd00:10:244::3 . 8080 } (verdict accept)
trace id 3f804a48 ip6 kube-proxy filter-forward packet: iif "cni0" oif "eth0" ether saddr 32:c3:ca:a0:e4:8d ether daddr 62:c2:c0:7c:63:c2 ip6 saddr fd00:10:244::2 ip6 daddr fd00:10:244:1::3 ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 63 ip6 flowlabel 499556 ip6 length 40 tcp sport 45403 tcp dport 8080 tcp flags == syn tcp window 64800 
trace id 3f804a48 ip6 kube-proxy filter-forward policy accept 
trace id 77777777 ip6 kube-proxy nat-prerouting packet: iif "cni0" ip6 saddr fd00:10:244::2 ip6 daddr fd00:10:96::b ip6 flowlabel 1234 tcp sport 45403 tcp dport 80 
"#;

    #[test]
    fn parses_an_ipv6_trace_and_follows_the_flow_label() {
        let mut bases = BaseChains::new();
        for (c, hook, prio) in [
            ("nat-prerouting", "prerouting", -100),
            ("filter-forward", "forward", 0),
        ] {
            bases.insert(
                ("ip6 kube-proxy".to_string(), c.to_string()),
                (hook.to_string(), prio),
            );
        }
        let passes = parse(IP6, &bases, "svclab-trace-a738", None);
        // The last packet (another flow label: a retransmission) is left out.
        assert_eq!(passes.len(), 2, "{passes:#?}");
        let pre = &passes[0];
        assert_eq!(pre.table, "ip6 kube-proxy");
        assert_eq!(pre.hook, "prerouting");
        assert_eq!(pre.packet.saddr, Some("fd00:10:244::2".parse().unwrap()));
        assert_eq!(pre.packet.daddr, Some("fd00:10:96::b".parse().unwrap()));
        assert_eq!(pre.packet.ip_id, Some(499556));
        assert_eq!(
            pre.packet.summary(),
            "[fd00:10:244::2]:45403 -> [fd00:10:96::b]:80 in cni0"
        );
        assert_eq!(
            pre.steps[1].verdict,
            "goto service-PFISGYVC-default/web/tcp/"
        );
        assert_eq!(
            passes[1].packet.daddr,
            Some("fd00:10:244:1::3".parse().unwrap())
        );
        let marked = marked(IP6, "svclab-trace-a738");
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0].0, "prerouting");
    }
}
