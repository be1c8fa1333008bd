//! kube-proxy's chain names. A chain name is a prefix plus the first 16
//! base32 characters of sha256(service port name + protocol [+ endpoint]),
//! so the names here match what kube-proxy generates for the same Service.

use std::fmt::{self, Write as _};

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, ServicePortName};

/// The per-service-port and per-endpoint chain families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainKind {
    /// Dispatch to endpoints for Cluster traffic policy.
    Svc,
    /// Dispatch to this node's endpoints for Local traffic policy.
    Svl,
    /// External destinations (NodePort, external IPs).
    Ext,
    /// Load-balancer source ranges; never created here (the model has no
    /// LoadBalancer IPs) but recognised so cleanup removes kube-proxy's.
    Fw,
    /// One endpoint.
    Sep,
}

impl ChainKind {
    pub const ALL: [ChainKind; 5] = [
        ChainKind::Svc,
        ChainKind::Svl,
        ChainKind::Ext,
        ChainKind::Fw,
        ChainKind::Sep,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            ChainKind::Svc => "KUBE-SVC-",
            ChainKind::Svl => "KUBE-SVL-",
            ChainKind::Ext => "KUBE-EXT-",
            ChainKind::Fw => "KUBE-FW-",
            ChainKind::Sep => "KUBE-SEP-",
        }
    }
}

const HASH_LEN: usize = 16;

/// A per-service-port or per-endpoint chain. Copy and 17 bytes, so the
/// bookkeeping of 100k endpoint chains stays cheap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Chain {
    kind: ChainKind,
    hash: [u8; HASH_LEN],
}

impl Chain {
    pub fn kind(self) -> ChainKind {
        self.kind
    }

    /// Recognises a service or endpoint chain name (as iptables-save
    /// prints it); other names give `None`.
    pub fn parse(name: &str) -> Option<Chain> {
        ChainKind::ALL.into_iter().find_map(|kind| {
            let hash = name.strip_prefix(kind.prefix())?.as_bytes();
            let hash: [u8; HASH_LEN] = hash.try_into().ok()?;
            hash.iter()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(b))
                .then_some(Chain { kind, hash })
        })
    }

    fn hash_str(&self) -> &str {
        // Built only from base32 output or checked base32 text.
        std::str::from_utf8(&self.hash).unwrap_or("????????????????")
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.prefix())?;
        f.write_str(self.hash_str())
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The chains of one service port: KUBE-SVC, KUBE-SVL and KUBE-EXT share
/// one hash (kube-proxy's `portProtoHash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceChains {
    hash: [u8; HASH_LEN],
}

impl ServiceChains {
    pub fn new(name: &ServicePortName) -> Self {
        let mut h = Hasher(Sha256::new());
        let _ = write!(h, "{name}{}", name.protocol.lower());
        ServiceChains { hash: h.finish() }
    }

    pub fn svc(self) -> Chain {
        self.chain(ChainKind::Svc)
    }

    pub fn svl(self) -> Chain {
        self.chain(ChainKind::Svl)
    }

    pub fn ext(self) -> Chain {
        self.chain(ChainKind::Ext)
    }

    pub fn fw(self) -> Chain {
        self.chain(ChainKind::Fw)
    }

    fn chain(self, kind: ChainKind) -> Chain {
        Chain {
            kind,
            hash: self.hash,
        }
    }
}

/// KUBE-SEP chain of one endpoint of one service port.
pub fn endpoint_chain(name: &ServicePortName, ep: &Endpoint) -> Chain {
    let mut h = Hasher(Sha256::new());
    // `ip:port` as Go's JoinHostPort writes it: `[fd00::1]:80` for IPv6.
    let _ = write!(h, "{name}{}{}", name.protocol.lower(), ep.addr());
    Chain {
        kind: ChainKind::Sep,
        hash: h.finish(),
    }
}

/// Feeds formatted text straight into sha256, so hashing a name allocates
/// nothing.
struct Hasher(Sha256);

impl fmt::Write for Hasher {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

impl Hasher {
    fn finish(self) -> [u8; HASH_LEN] {
        let digest = self.0.finalize();
        // 10 bytes are exactly 16 base32 characters, the same prefix the
        // encoding of the whole digest starts with.
        let mut out = [0u8; HASH_LEN];
        data_encoding::BASE32.encode_mut(&digest[..10], &mut out);
        out
    }
}

/// kube-proxy's chains in the nat table that belong to no service port.
pub const NAT_TOP: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// kube-proxy's chains in the filter table, in its order (KUBE-FIREWALL,
/// which kubelet shares, holds the guard of localhost NodePorts).
pub const FILTER_TOP: [&str; 6] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FIREWALL",
];

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;
    use crate::testkit;

    fn ep(ip: [u8; 4], port: u16) -> Endpoint {
        testkit::endpoint(Ipv4Addr::from(ip), port, None, false)
    }

    /// Pairs from kube-proxy's TestOverallIPTablesRules
    /// (pkg/proxy/iptables/proxier_test.go).
    #[test]
    fn names_match_kube_proxy() {
        let cases = [
            ("ns1", "svc1", "KUBE-SVC-XPGD46QRK7WJZT7O"),
            ("ns2", "svc2", "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
            ("ns3", "svc3", "KUBE-SVC-X27LE4BHSL4DOUIK"),
            ("ns4", "svc4", "KUBE-SVC-4SW47YFZTEDKD3PK"),
            ("ns5", "svc5", "KUBE-SVC-NUKIZ6OKUXPJNT4C"),
        ];
        for (ns, svc, want) in cases {
            let name = ServicePortName::new(ns, svc, "p80", Protocol::Tcp);
            assert_eq!(ServiceChains::new(&name).svc().to_string(), want);
        }
        let ns2 = ServiceChains::new(&ServicePortName::new("ns2", "svc2", "p80", Protocol::Tcp));
        assert_eq!(ns2.ext().to_string(), "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
        assert_eq!(ns2.svl().to_string(), "KUBE-SVL-GNZBNJ2PO5MGZ6GT");

        let seps = [
            ("ns1", "svc1", [10, 180, 0, 1], "KUBE-SEP-SXIVWICOYRO3J4NJ"),
            ("ns2", "svc2", [10, 180, 0, 2], "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
            ("ns3", "svc3", [10, 180, 0, 3], "KUBE-SEP-OYPFS5VJICHGATKP"),
            ("ns4", "svc4", [10, 180, 0, 4], "KUBE-SEP-UKSFD7AGPMPPLUHC"),
            ("ns4", "svc4", [10, 180, 0, 5], "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
            ("ns5", "svc5", [10, 180, 0, 3], "KUBE-SEP-I77PXRDZVX7PMWMN"),
        ];
        for (ns, svc, ip, want) in seps {
            let name = ServicePortName::new(ns, svc, "p80", Protocol::Tcp);
            assert_eq!(endpoint_chain(&name, &ep(ip, 80)).to_string(), want);
        }
    }

    #[test]
    fn protocol_and_port_name_change_the_hash() {
        let tcp = ServicePortName::new("ns", "dns", "dns", Protocol::Tcp);
        let udp = ServicePortName::new("ns", "dns", "dns", Protocol::Udp);
        let unnamed = ServicePortName::new("ns", "dns", "", Protocol::Udp);
        let a = ServiceChains::new(&tcp).svc();
        let b = ServiceChains::new(&udp).svc();
        let c = ServiceChains::new(&unnamed).svc();
        assert_ne!(a, b);
        assert_ne!(b, c);
    }

    #[test]
    fn parse_round_trips_and_rejects_others() {
        let name = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        let chains = ServiceChains::new(&name);
        for c in [chains.svc(), chains.svl(), chains.ext()] {
            assert_eq!(Chain::parse(&c.to_string()), Some(c));
        }
        let sep = endpoint_chain(&name, &ep([10, 180, 0, 1], 80));
        assert_eq!(Chain::parse(&sep.to_string()), Some(sep));
        let fw = Chain::parse("KUBE-FW-NUKIZ6OKUXPJNT4C").unwrap();
        assert_eq!(fw.kind(), ChainKind::Fw);
        for other in [
            "KUBE-SERVICES",
            "KUBE-MARK-MASQ",
            "KUBE-SVC-short",
            "KUBE-SVC-xpgd46qrk7wjzt7o",
            "KUBE-SVC-XPGD46QRK7WJZT7OX",
        ] {
            assert_eq!(Chain::parse(other), None, "{other}");
        }
    }
}
