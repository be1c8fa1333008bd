//! Can this host run the nftables backend? The tools must be there, and the
//! kernel must accept what the backend writes: concatenated verdict maps,
//! `numgen`, NAT, `fib`, `reject` and timeout sets. The probe programs a
//! small table in a throwaway network namespace, never the caller's.

use crate::Unavailable;
use crate::kernel::cmd;
use crate::kernel::conntrack;
use crate::kernel::probe::in_throwaway_netns;

/// One of each construct the backend relies on.
const PROBE: &str = "\
add table ip svclab-probe
add map ip svclab-probe vips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip svclab-probe no-eps { type ipv4_addr . inet_proto . inet_service : verdict ; }
add set ip svclab-probe sticky { type ipv4_addr ; flags dynamic,timeout ; timeout 10s ; }
add chain ip svclab-probe ep/a
add chain ip svclab-probe ep/b
add chain ip svclab-probe reject-chain
add chain ip svclab-probe svc/x
add chain ip svclab-probe pre { type nat hook prerouting priority -100 ; }
add chain ip svclab-probe post { type nat hook postrouting priority 100 ; }
add chain ip svclab-probe out { type filter hook output priority 0 ; }
add rule ip svclab-probe reject-chain reject
add rule ip svclab-probe ep/a update @sticky { ip saddr }
add rule ip svclab-probe ep/a meta l4proto tcp dnat to 10.0.0.1:80
add rule ip svclab-probe ep/b meta l4proto tcp dnat to 10.0.0.2:80
add rule ip svclab-probe svc/x ip saddr @sticky goto ep/a
add rule ip svclab-probe svc/x numgen random mod 2 vmap { 0 : goto ep/a, 1 : goto ep/b }
add rule ip svclab-probe pre ip daddr . meta l4proto . th dport vmap @vips
add rule ip svclab-probe post fib saddr type local mark set mark or 0x4000
add rule ip svclab-probe post mark and 0x4000 != 0 masquerade fully-random
add rule ip svclab-probe out ct state new ip daddr . meta l4proto . th dport vmap @no-eps
add element ip svclab-probe vips { 10.96.0.1 . tcp . 80 : goto svc/x }
add element ip svclab-probe no-eps { 10.96.0.2 . tcp . 80 comment \"no endpoints\" : goto reject-chain }
";

pub fn capability() -> Result<(), Unavailable> {
    if !cmd::have("nft") {
        return Err(Unavailable::new(
            "`nft` is not installed (apt-get install nftables); the nftables backend needs it",
        ));
    }
    in_throwaway_netns(|| {
        cmd::run("nft", &["-f", "-"], Some(PROBE.as_bytes())).map_err(|e| {
            Unavailable::new(format!(
                "the kernel rejects kube-proxy's nftables constructs (verdict maps, \
                 numgen, NAT, fib, reject, timeout sets): {e}"
            ))
        })?;
        conntrack::probe().map_err(Unavailable::new)
    })?
}
