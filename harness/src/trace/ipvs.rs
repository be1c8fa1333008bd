//! IPVS's own connection entry for the probe: IPVS balances in the
//! LOCAL_IN and LOCAL_OUT hooks without nf_tables rules, so the trace
//! shows only the iptables part and this table says which real server
//! IPVS picked. Read from the node namespace's /proc/net/ip_vs_conn.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::netns::NetNs;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsConn {
    pub protocol: String,
    pub client: SocketAddrV4,
    pub virtual_server: SocketAddrV4,
    pub real_server: SocketAddrV4,
    pub state: String,
    pub expires_seconds: u64,
}

fn addr(ip: &str, port: &str) -> Option<SocketAddrV4> {
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?),
        u16::from_str_radix(port, 16).ok()?,
    ))
}

/// Parses /proc/net/ip_vs_conn (addresses and ports in hex).
pub fn parse(text: &str) -> Vec<IpvsConn> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 9 {
                return None;
            }
            Some(IpvsConn {
                protocol: f[0].to_string(),
                client: addr(f[1], f[2])?,
                virtual_server: addr(f[3], f[4])?,
                real_server: addr(f[5], f[6])?,
                state: f[7].to_string(),
                expires_seconds: f[8].parse().ok()?,
            })
        })
        .collect()
}

/// The entries of `client` in `netns`; `Err` says why none can be read.
pub fn connections(netns: &str, client: SocketAddrV4) -> Result<Vec<IpvsConn>, String> {
    let text = NetNs::new(netns)
        .run(|| std::fs::read_to_string("/proc/thread-self/net/ip_vs_conn"))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("/proc/net/ip_vs_conn in {netns}: {e} (is IP_VS loaded?)"))?;
    Ok(parse(&text)
        .into_iter()
        .filter(|c| c.client == client)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_table() {
        let text = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n\
                    TCP 0AF40002 B26E 0A60000B 0050 0AF40103 1F90 TIME_WAIT       119\n\
                    UDP 0AF40002 9C41 0A60000D 0035 0AF40003 14E9 UDP             299\n";
        let c = parse(text);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].client, "10.244.0.2:45678".parse().unwrap());
        assert_eq!(c[0].virtual_server, "10.96.0.11:80".parse().unwrap());
        assert_eq!(c[0].real_server, "10.244.1.3:8080".parse().unwrap());
        assert_eq!(c[0].state, "TIME_WAIT");
        assert_eq!(c[1].protocol, "UDP");
        assert_eq!(c[1].real_server.port(), 5353);
    }
}
