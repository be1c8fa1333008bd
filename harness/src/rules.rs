//! The programmed ruleset of a node, normalised so two proxies' rules can be
//! compared line by line: `svclab rules` prints it, and the rules-equality
//! test compares svclab's backends with upstream kube-proxy's.
//!
//! Normalising drops what differs between two runs of the same proxy on the
//! same Services: iptables-save's comment lines, packet and byte counters,
//! `COMMIT`, the built-in chains' policy lines; nft's rule handles and
//! counters; and the order of rules within a chain where order carries no
//! meaning to the comparison (the test compares sets of lines, each line
//! prefixed with its table and chain so that a rule moved to another chain
//! is a difference). Set and map elements are split one per line and sorted.
//!
//! An IPVS node's ruleset is four reads in one dump, each under a section
//! line: `iptables-save` (the fixed rules keyed on ipsets), `ipset save`
//! (minus the hash seed and bucket size, which differ per run),
//! `ipvsadm -Sn` (virtual and real servers) and the addresses on
//! `kube-ipvs0`.

use std::collections::BTreeSet;
use std::process::Command;

/// Which ruleset a dump reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ruleset {
    /// `iptables-save` (the nft flavour, as the lab's iptables backends and
    /// kube-proxy's iptables mode write).
    Iptables,
    /// `iptables-legacy-save`.
    IptablesLegacy,
    /// `nft list ruleset`.
    Nftables,
    /// IPVS mode: iptables, ipsets, virtual servers and `kube-ipvs0`.
    Ipvs,
}

/// The reads behind each ruleset: (section, program, arguments). Only an
/// IPVS dump has more than one, each under `# svclab: <section>`.
type Read = (&'static str, &'static str, &'static [&'static str]);

const IPVS_READS: &[Read] = &[
    ("iptables", "iptables-save", &[]),
    ("ipset", "ipset", &["save"]),
    ("ipvs", "ipvsadm", &["-S", "-n"]),
    (
        "kube-ipvs0",
        "ip",
        &["-o", "-4", "addr", "show", "dev", "kube-ipvs0"],
    ),
];

impl Ruleset {
    /// The ruleset a backend programs (`None` for those that program none
    /// of these: userspace, eBPF, exec).
    pub fn of_backend(backend: &str) -> Option<Ruleset> {
        use svclab_backends::BackendKind;
        use svclab_backends::kubeproxy::Mode;
        match backend.parse::<BackendKind>().ok()? {
            BackendKind::Builtin("iptables")
            | BackendKind::KubeProxy {
                mode: Mode::Iptables,
                ..
            } => Some(Ruleset::Iptables),
            BackendKind::Builtin("ipvs")
            | BackendKind::KubeProxy {
                mode: Mode::Ipvs, ..
            } => Some(Ruleset::Ipvs),
            BackendKind::Builtin("iptables-legacy") => Some(Ruleset::IptablesLegacy),
            BackendKind::Builtin("nftables" | "nftables-flat")
            | BackendKind::KubeProxy {
                mode: Mode::Nftables,
                ..
            } => Some(Ruleset::Nftables),
            _ => None,
        }
    }

    fn reads(self) -> &'static [Read] {
        match self {
            Ruleset::Iptables => &[("iptables", "iptables-save", &[])],
            Ruleset::IptablesLegacy => &[("iptables", "iptables-legacy-save", &[])],
            Ruleset::Nftables => &[("nft", "nft", &["list", "ruleset"])],
            Ruleset::Ipvs => IPVS_READS,
        }
    }
}

/// The raw ruleset inside the network namespace `netns` (a lab's).
pub fn dump(netns: &str, ruleset: Ruleset) -> anyhow::Result<String> {
    let fd = crate::netns::NetNs::new(netns).open()?;
    let reads = ruleset.reads();
    let mut text = String::new();
    for (section, program, args) in reads {
        let mut cmd = Command::new(program);
        cmd.args(*args).env("PATH", crate::kubeproxy::PATH);
        crate::netns::prepare_child(
            &mut cmd,
            Some(fd.try_clone()?),
            crate::netns::Group::Inherit,
        );
        let out = cmd
            .output()
            .map_err(|e| anyhow::anyhow!("running {program} in {netns}: {e}"))?;
        // A node without Services has no kube-ipvs0 yet: no addresses.
        let missing_device = *section == "kube-ipvs0" && !out.status.success();
        if !out.status.success() && !missing_device {
            anyhow::bail!(
                "{program} in {netns} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if reads.len() > 1 {
            text.push_str(&format!("# svclab: {section}\n"));
        }
        if !missing_device {
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    Ok(text)
}

/// `dump`, normalised (see the module notes).
/// Reads node `netns`'s ruleset and writes it, normalised, to
/// `DIR/<scenario>/<backend>.rules` (the layout `svclab rules --up --out`
/// and `svclab run --rules-out` share, for `diff` and the tests); returns
/// the file.
pub fn write_normalised(
    dir: &std::path::Path,
    scenario: &str,
    backend: &str,
    lines: BTreeSet<String>,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let dir = dir.join(scenario);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{}.rules", backend.replace([':', '@'], "_")));
    let mut body = lines.into_iter().collect::<Vec<_>>().join("\n");
    body.push('\n');
    std::fs::write(&file, body).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

pub fn normalise(ruleset: Ruleset, text: &str) -> BTreeSet<String> {
    match ruleset {
        Ruleset::Iptables | Ruleset::IptablesLegacy => normalise_iptables(text),
        Ruleset::Nftables => normalise_nft(text),
        Ruleset::Ipvs => normalise_ipvs(text),
    }
}

/// An IPVS dump (see the module notes) -> `iptables`' lines as
/// [`normalise_iptables`] makes them, `ipset: create|add …`,
/// `ipvs: -A|-a …` and `kube-ipvs0: <address>` lines.
pub fn normalise_ipvs(text: &str) -> BTreeSet<String> {
    let mut sections: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# svclab: ") {
            sections.push((name.trim(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let mut out = BTreeSet::new();
    for (name, body) in sections {
        match name {
            "iptables" => out.extend(normalise_iptables(&body)),
            "ipset" => out.extend(body.lines().filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let mut kept = Vec::with_capacity(words.len());
                let mut i = 0;
                while i < words.len() {
                    // The per-run hash seed and the kernel's bucket size.
                    if matches!(words[i], "initval" | "bucketsize") {
                        i += 2;
                        continue;
                    }
                    kept.push(words[i]);
                    i += 1;
                }
                (!kept.is_empty()).then(|| format!("ipset: {}", kept.join(" ")))
            })),
            "ipvs" => out.extend(
                body.lines()
                    .map(squeeze)
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("ipvs: {l}")),
            ),
            "kube-ipvs0" => out.extend(body.lines().filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                Some(format!("kube-ipvs0: {}", words.next()?))
            })),
            _ => {}
        }
    }
    out
}

/// iptables-save output -> `table: rule` lines (chains declared as
/// `table: :CHAIN`, user chains only).
pub fn normalise_iptables(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        if let Some(chain) = line.strip_prefix(':') {
            let mut parts = chain.split_whitespace();
            let name = parts.next().unwrap_or("");
            // Built-in chains carry a policy (ACCEPT/DROP); user chains "-".
            if parts.next() == Some("-") {
                out.insert(format!("{table}: :{name}"));
            }
            continue;
        }
        out.insert(format!("{table}: {}", squeeze(line)));
    }
    out
}

/// `nft list ruleset` -> `table/block: line` lines; set and map elements
/// one per line; handles and counters dropped.
pub fn normalise_nft(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut table = String::new();
    let mut block = String::new();
    let mut elements: Option<String> = None;
    for raw in text.lines() {
        let line = strip_nft_noise(raw.trim());
        if let Some(acc) = elements.as_mut() {
            acc.push(' ');
            acc.push_str(&line);
            if line.ends_with('}') {
                let all = elements.take().unwrap_or_default();
                push_elements(&mut out, &table, &block, &all);
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches('{').trim().to_string();
            block.clear();
            out.insert(table.clone());
            continue;
        }
        if line == "}" {
            if block.is_empty() {
                table.clear();
            } else {
                block.clear();
            }
            continue;
        }
        if line.ends_with('{')
            && ["chain ", "set ", "map ", "flowtable ", "counter ", "ct "]
                .iter()
                .any(|p| line.starts_with(p))
        {
            block = line.trim_end_matches('{').trim().to_string();
            out.insert(format!("{table}/{block}"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("elements = {") {
            let acc = rest.to_string();
            if acc.trim_end().ends_with('}') {
                push_elements(&mut out, &table, &block, &acc);
            } else {
                elements = Some(acc);
            }
            continue;
        }
        out.insert(format!("{table}/{block}: {}", squeeze(&line)));
    }
    out
}

fn push_elements(out: &mut BTreeSet<String>, table: &str, block: &str, list: &str) {
    let list = list.trim().trim_end_matches('}');
    for e in split_top_level(list) {
        let e = squeeze(e.trim());
        if !e.is_empty() {
            out.insert(format!("{table}/{block}: element {e}"));
        }
    }
}

/// Splits on commas outside braces (a map element's value may be a set).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Drops `# handle N` and `counter packets N bytes M`.
fn strip_nft_noise(line: &str) -> String {
    let line = match line.find(" # handle ") {
        Some(i) => &line[..i],
        None => line,
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
            i += 5;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Lines in `a` only and in `b` only.
pub fn diff(a: &BTreeSet<String>, b: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    (
        a.difference(b).cloned().collect(),
        b.difference(a).cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_counters_comments_and_builtin_policies_are_dropped() {
        let a = "# Generated by iptables-nft-save v1.8.9 on Sun Dec  6 05:00:00 2026\n\
                 *nat\n:PREROUTING ACCEPT [12:720]\n:KUBE-SERVICES - [0:0]\n\
                 -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 COMMIT\n";
        let b = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
                 -A PREROUTING  -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 COMMIT\n# Completed on Sun Dec  6 05:00:09 2026\n";
        let (na, nb) = (normalise_iptables(a), normalise_iptables(b));
        assert_eq!(na, nb);
        assert!(na.contains("nat: :KUBE-SERVICES"));
        assert!(!na.iter().any(|l| l.contains("PREROUTING ACCEPT")));
        // A rule in another table is a difference.
        let c = b.replace("*nat", "*filter");
        let (only_a, only_c) = diff(&na, &normalise_iptables(&c));
        assert_eq!(only_a.len(), 2);
        assert_eq!(only_c.len(), 2);
    }

    #[test]
    fn nft_elements_are_split_and_sorted_handles_and_counters_dropped() {
        let a = "table ip kube-proxy { # handle 4\n\
                 \tset cluster-ips { # handle 7\n\t\ttype ipv4_addr\n\
                 \t\telements = { 10.96.0.11, 10.96.0.1,\n\t\t\t     10.96.0.12 }\n\t}\n\
                 \tchain services { # handle 9\n\
                 \t\tip daddr . meta l4proto . th dport vmap @service-ips counter packets 3 bytes 180 # handle 20\n\
                 \t}\n}\n";
        let b = "table ip kube-proxy {\n\
                 \tset cluster-ips {\n\t\ttype ipv4_addr\n\
                 \t\telements = { 10.96.0.1, 10.96.0.12, 10.96.0.11 }\n\t}\n\
                 \tchain services {\n\
                 \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
                 \t}\n}\n";
        let na = normalise_nft(a);
        assert_eq!(na, normalise_nft(b));
        assert!(na.contains("ip kube-proxy/set cluster-ips: element 10.96.0.12"));
        assert!(
            na.contains(
                "ip kube-proxy/chain services: ip daddr . meta l4proto . th dport vmap @service-ips"
            ),
            "{na:#?}"
        );
        // A map whose values are sets stays one element per key.
        let m = "table ip t {\n\tmap m {\n\t\telements = { 1 : { 2, 3 }, 4 : 5 }\n\t}\n}\n";
        let nm = normalise_nft(m);
        assert!(nm.contains("ip t/map m: element 1 : { 2, 3 }"), "{nm:#?}");
        assert!(nm.contains("ip t/map m: element 4 : 5"));
    }

    #[test]
    fn backends_map_to_their_rulesets() {
        assert_eq!(
            Ruleset::of_backend("kube-proxy:nftables@v1.34.4"),
            Some(Ruleset::Nftables)
        );
        assert_eq!(Ruleset::of_backend("iptables"), Some(Ruleset::Iptables));
        assert_eq!(Ruleset::of_backend("ebpf"), None);
        assert_eq!(Ruleset::of_backend("ipvs"), Some(Ruleset::Ipvs));
        assert_eq!(
            Ruleset::of_backend("kube-proxy:ipvs@v1.34.4"),
            Some(Ruleset::Ipvs)
        );
    }

    #[test]
    fn ipvs_dumps_split_into_sections_and_drop_the_hash_seed() {
        let a = "# svclab: iptables\n*nat\n:KUBE-SERVICES - [0:0]\n\
                 -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n\
                 # svclab: ipset\n\
                 create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 \
                 bucketsize 12 initval 0x5e0bd0a1\n\
                 add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n\
                 # svclab: ipvs\n-A -t 10.96.0.10:80 -s rr\n\
                 -a -t 10.96.0.10:80 -r 10.244.0.5:8080 -m -w 1\n\
                 # svclab: kube-ipvs0\n\
                 7: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\\       \
                 valid_lft forever preferred_lft forever\n";
        let n = normalise_ipvs(a);
        let want: BTreeSet<String> = [
            "nat: :KUBE-SERVICES",
            "nat: -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
            "ipset: create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536",
            "ipset: add KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
            "ipvs: -A -t 10.96.0.10:80 -s rr",
            "ipvs: -a -t 10.96.0.10:80 -r 10.244.0.5:8080 -m -w 1",
            "kube-ipvs0: 10.96.0.10/32",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(n, want);
        // The same sets from another run, with another seed, are equal.
        let b = a.replace("initval 0x5e0bd0a1", "initval 0x11111111");
        assert_eq!(normalise_ipvs(&b), n);
    }
}
