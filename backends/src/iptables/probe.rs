//! Whether this host can run a flavor: its tools are installed, and the
//! kernel takes its tables and every extension kube-proxy's rules use.
//! The kernel is asked inside a throwaway private network namespace, so
//! probing never touches the host's own rules.

use crate::Unavailable;
use crate::kernel::cmd;
use crate::kernel::iptables::{self, Flavor};
use crate::kernel::probe::in_throwaway_netns;

/// One rule per match and target the ruleset uses.
const EXTENSIONS: &str = "*filter\n\
:KUBE-PROBE - [0:0]\n\
-A KUBE-PROBE -m conntrack --ctstate INVALID -j DROP\n\
-A KUBE-PROBE -m comment --comment \"probe\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
-A KUBE-PROBE -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 1 -j REJECT\n\
COMMIT\n\
*nat\n\
:KUBE-PROBE - [0:0]\n\
-A KUBE-PROBE -m statistic --mode random --probability 0.5000000000 -j RETURN\n\
-A KUBE-PROBE -m recent --name KUBE-PROBE --rcheck --seconds 10 --reap -j RETURN\n\
-A KUBE-PROBE -m recent --name KUBE-PROBE --set -m udp -p udp -j DNAT --to-destination 10.0.0.1:1\n\
-A KUBE-PROBE -m addrtype --src-type LOCAL -j MARK --or-mark 0x4000\n\
-A KUBE-PROBE -j MARK --xor-mark 0x4000\n\
-A KUBE-PROBE -j MASQUERADE --random-fully\n\
COMMIT\n";

pub fn capability(flavor: Flavor) -> Result<(), Unavailable> {
    for program in [flavor.restore(), flavor.save(), flavor.iptables()] {
        if !cmd::have(program) {
            return Err(Unavailable::new(format!(
                "`{program}` is not installed: install iptables 1.8 or newer, which ships it"
            )));
        }
    }
    in_throwaway_netns(|| probe_kernel(flavor))?
}

fn probe_kernel(flavor: Flavor) -> Result<(), Unavailable> {
    let list = format!("{} -w -t nat -L -n", flavor.iptables());
    if let Err(e) = iptables::run(flavor, "nat", &["-L", "-n"]) {
        let needs = match flavor {
            Flavor::Nft => "nf_tables with nft_compat (CONFIG_NF_TABLES, CONFIG_NFT_COMPAT)",
            Flavor::Legacy => {
                "legacy x_tables with the nat table (CONFIG_IP_NF_IPTABLES, CONFIG_IP_NF_NAT)"
            }
        };
        return Err(Unavailable::new(format!(
            "the kernel refused `{list}` in a private network namespace, so it lacks {needs}: {e}"
        )));
    }
    iptables::restore(flavor, EXTENSIONS).map_err(|e| {
        Unavailable::new(format!(
            "the kernel lacks an iptables extension kube-proxy's rules use (conntrack, comment, \
             mark, addrtype, statistic, recent, REJECT, DNAT, MARK, MASQUERADE --random-fully): \
             {e}"
        ))
    })
}
