//! Whether this host can run the userspace backend: the iptables-nft tools
//! are installed, the kernel takes the rules it writes (REDIRECT, DNAT,
//! REJECT, comment and conntrack matches) and answers ctnetlink. The kernel is
//! asked inside a throwaway network namespace, never the host's own.

use super::hooks::FLAVOR;
use crate::Unavailable;
use crate::kernel::cmd;
use crate::kernel::conntrack;
use crate::kernel::iptables;
use crate::kernel::probe::in_throwaway_netns;

const PROBE_RULES: &str = "*nat\n\
:KUBE-PROBE - [0:0]\n\
-A KUBE-PROBE -d 10.0.0.1/32 -p tcp -m comment --comment \"probe\" -m tcp --dport 80 -j REDIRECT --to-ports 40000\n\
-A KUBE-PROBE -d 10.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2:40001\n\
COMMIT\n\
*filter\n\
:KUBE-PROBE - [0:0]\n\
-A KUBE-PROBE -m conntrack --ctstate NEW -d 10.0.0.1/32 -p tcp -m tcp --dport 81 -j REJECT\n\
COMMIT\n";

pub fn capability() -> Result<(), Unavailable> {
    for program in [FLAVOR.restore(), FLAVOR.save(), FLAVOR.iptables()] {
        if !cmd::have(program) {
            return Err(Unavailable::new(format!(
                "`{program}` is not installed: install the iptables package (1.8 or newer)"
            )));
        }
    }
    in_throwaway_netns(|| {
        iptables::restore(FLAVOR, PROBE_RULES).map_err(|e| {
            Unavailable::new(format!(
                "the kernel refused the userspace backend's iptables rules (nf_tables with \
                 nft_compat and the REDIRECT, DNAT, REJECT, comment and conntrack \
                 extensions): {e}"
            ))
        })?;
        conntrack::probe().map_err(Unavailable::new)
    })?
}
