//! The connection-tracking entry a probe created in a node, read with
//! `conntrack -L` filtered on the probe's original source.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use svclab_backends::model::Protocol;

use super::TraceError;
use super::tool::run_in;

/// One direction of a tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackEntry {
    pub protocol: String,
    /// TCP state (`TIME_WAIT`...); none for UDP.
    pub state: Option<String>,
    pub original: Tuple,
    pub reply: Tuple,
    /// Flags such as `ASSURED`, `UNREPLIED`.
    pub flags: Vec<String>,
    pub mark: Option<String>,
    /// The line as conntrack printed it.
    pub raw: String,
}

impl ConntrackEntry {
    /// The destination after DNAT: where the reply comes from.
    pub fn dnat_to(&self) -> Option<SocketAddr> {
        (self.reply.src != self.original.dst).then_some(self.reply.src)
    }

    /// The source after SNAT: where the reply goes to.
    pub fn snat_to(&self) -> Option<SocketAddr> {
        (self.reply.dst != self.original.src).then_some(self.reply.dst)
    }

    /// Parses one line of `conntrack -L`.
    pub fn parse(line: &str) -> Option<ConntrackEntry> {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let protocol = tokens.first()?.to_string();
        let mut kv: Vec<(&str, &str)> = Vec::new();
        let mut flags = Vec::new();
        let mut state = None;
        for t in &tokens[1..] {
            if let Some((k, v)) = t.split_once('=') {
                kv.push((k, v));
            } else if let Some(f) = t.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
                flags.push(f.to_string());
            } else if t.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !t.is_empty() {
                state = Some(t.to_string());
            }
        }
        fn all<'a>(kv: &'a [(&'a str, &'a str)], key: &'a str) -> impl Iterator<Item = &'a str> {
            kv.iter().filter(move |(k, _)| *k == key).map(|(_, v)| *v)
        }
        let ips: Vec<IpAddr> = all(&kv, "src")
            .zip(all(&kv, "dst"))
            .flat_map(|(s, d)| [s.parse().ok(), d.parse().ok()])
            .collect::<Option<Vec<_>>>()?;
        let ports: Vec<u16> = all(&kv, "sport")
            .zip(all(&kv, "dport"))
            .flat_map(|(s, d)| [s.parse().ok(), d.parse().ok()])
            .collect::<Option<Vec<_>>>()?;
        if ips.len() < 4 || ports.len() < 4 {
            return None;
        }
        Some(ConntrackEntry {
            protocol,
            state,
            original: Tuple {
                src: SocketAddr::new(ips[0], ports[0]),
                dst: SocketAddr::new(ips[1], ports[1]),
            },
            reply: Tuple {
                src: SocketAddr::new(ips[2], ports[2]),
                dst: SocketAddr::new(ips[3], ports[3]),
            },
            flags,
            mark: all(&kv, "mark").next().map(str::to_string),
            raw: line.trim().to_string(),
        })
    }
}

/// The entries in `netns` whose original direction starts at `src`.
pub fn entries(
    netns: &str,
    protocol: Protocol,
    src: SocketAddr,
) -> Result<Vec<ConntrackEntry>, TraceError> {
    let ip = src.ip().to_string();
    let port = src.port().to_string();
    let family = if src.is_ipv6() { "ipv6" } else { "ipv4" };
    let out = run_in(
        netns,
        "conntrack",
        &[
            "-L",
            "-f",
            family,
            "-p",
            protocol.lower(),
            "-s",
            &ip,
            "--sport",
            &port,
        ],
        None,
    )?;
    Ok(out.lines().filter_map(ConntrackEntry::parse).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_udp_lines() {
        let tcp = ConntrackEntry::parse(
            "tcp      6 116 TIME_WAIT src=172.18.0.254 dst=172.18.0.2 sport=44486 dport=30080 \
             src=10.244.1.3 dst=172.18.0.2 sport=8080 dport=40890 [ASSURED] mark=0 use=1",
        )
        .unwrap();
        assert_eq!(tcp.state.as_deref(), Some("TIME_WAIT"));
        assert_eq!(tcp.original.dst, "172.18.0.2:30080".parse().unwrap());
        assert_eq!(tcp.dnat_to(), Some("10.244.1.3:8080".parse().unwrap()));
        assert_eq!(tcp.snat_to(), Some("172.18.0.2:40890".parse().unwrap()));
        assert_eq!(tcp.flags, ["ASSURED"]);
        let udp = ConntrackEntry::parse(
            "udp      17 29 src=10.244.0.2 dst=10.96.0.13 sport=37345 dport=53 \
             src=10.244.0.3 dst=10.244.0.2 sport=5353 dport=37345 mark=0 use=1",
        )
        .unwrap();
        assert_eq!(udp.state, None);
        assert_eq!(udp.snat_to(), None);
        assert_eq!(udp.dnat_to(), Some("10.244.0.3:5353".parse().unwrap()));
        assert!(ConntrackEntry::parse("conntrack v1.4.7: 0 flow entries").is_none());
        // Recorded with kube-proxy:nftables in a dual-stack lab.
        let v6 = ConntrackEntry::parse(
            "tcp      6 9 CLOSE src=fd00:10:244::2 dst=fd00:10:96::b sport=41299 dport=80 \
             src=fd00:10:244:2::3 dst=fd00:10:244::2 sport=8080 dport=41299 [ASSURED] mark=0 use=1",
        )
        .unwrap();
        assert_eq!(v6.original.dst, "[fd00:10:96::b]:80".parse().unwrap());
        assert_eq!(
            v6.dnat_to(),
            Some("[fd00:10:244:2::3]:8080".parse().unwrap())
        );
        assert_eq!(v6.snat_to(), None);
    }
}
