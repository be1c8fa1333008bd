//! iptables-legacy's part of a trace. Its rules live in x_tables, which
//! nf_tables tracing cannot see, so the rules a probe matched are found
//! from their packet counters instead: `iptables-legacy-save -c` before
//! and after the probe, and the rules whose counters rose, followed from
//! the built-in chains through their jumps in rule order. In an idle lab
//! the probe's own packets are the only ones; unlike a trace, this counts
//! every packet of the connection, not only its first.

use std::collections::BTreeMap;

use super::TraceError;
use super::nftrace::{HookPass, Packet, Step};
use super::tool::run_in;

/// (table, chain) -> its rules in order: (rule text, packets).
pub type Counters = BTreeMap<(String, String), Vec<(String, u64)>>;

/// How deep jumps are followed (kube-proxy's chains nest four deep).
const MAX_DEPTH: usize = 16;

pub fn snapshot(netns: &str) -> Result<Counters, TraceError> {
    Ok(parse(&run_in(
        netns,
        "iptables-legacy-save",
        &["-c"],
        None,
    )?))
}

/// Parses `iptables-save -c` output.
pub fn parse(text: &str) -> Counters {
    let mut out: Counters = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        // Chain declarations, so a jump to an empty chain is known as one.
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or("");
            out.entry((table.clone(), chain.to_string())).or_default();
            continue;
        }
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once("] ") else {
            continue;
        };
        let packets = counts
            .split(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let Some(rule) = rule.strip_prefix("-A ") else {
            continue;
        };
        let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
        out.entry((table.clone(), chain.to_string()))
            .or_default()
            .push((spec.to_string(), packets));
    }
    out
}

/// The target of a rule (`-j X`), and its verdict in nft's words.
fn verdict(spec: &str, table: &str, counters: &Counters) -> (Option<String>, String) {
    let t: Vec<&str> = spec.split_whitespace().collect();
    let target = t
        .windows(2)
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| (w[0], w[1]));
    match target {
        Some((flag, chain)) if counters.contains_key(&(table.to_string(), chain.to_string())) => (
            Some(chain.to_string()),
            format!("{} {chain}", if flag == "-g" { "goto" } else { "jump" }),
        ),
        Some((_, "MARK")) => (None, "continue".into()),
        Some((_, target)) => (None, target.to_lowercase()),
        None => (None, "continue".into()),
    }
}

fn walk(
    table: &str,
    chain: &str,
    before: &Counters,
    after: &Counters,
    depth: usize,
    steps: &mut Vec<Step>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let key = (table.to_string(), chain.to_string());
    let old = before.get(&key).map(Vec::as_slice).unwrap_or(&[]);
    for (i, (spec, packets)) in after.get(&key).into_iter().flatten().enumerate() {
        let was = old.get(i).filter(|(s, _)| s == spec).map_or(0, |(_, p)| *p);
        if *packets <= was {
            continue;
        }
        let (jump, verdict) = verdict(spec, table, after);
        steps.push(Step {
            chain: chain.to_string(),
            rule: Some(spec.clone()),
            verdict,
        });
        if let Some(next) = jump {
            walk(table, &next, before, after, depth + 1, steps);
        }
    }
}

/// The rules whose counters rose, per built-in chain, in hook order.
pub fn matched(before: &Counters, after: &Counters) -> Vec<HookPass> {
    const ORDER: [(&str, &str); 9] = [
        ("mangle", "PREROUTING"),
        ("nat", "PREROUTING"),
        ("mangle", "INPUT"),
        ("filter", "INPUT"),
        ("mangle", "FORWARD"),
        ("filter", "FORWARD"),
        ("nat", "OUTPUT"),
        ("filter", "OUTPUT"),
        ("nat", "POSTROUTING"),
    ];
    ORDER
        .iter()
        .filter_map(|(table, chain)| {
            let mut steps = Vec::new();
            walk(table, chain, before, after, 0, &mut steps);
            (!steps.is_empty()).then(|| HookPass {
                hook: chain.to_lowercase(),
                table: format!("ip {table} (legacy)"),
                base_chain: chain.to_string(),
                priority: None,
                packet: Packet::default(),
                steps,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n\
        [4:240] -A PREROUTING -j KUBE-PROXY-FIREWALL\n\
        [4:240] -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        [3:180] -A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL\n\
        [1:60] -A KUBE-SVC-CDGGSHYLG3RE2FKL -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-AAAA\n\
        [2:120] -A KUBE-SVC-CDGGSHYLG3RE2FKL -j KUBE-SEP-BBBB\n\
        [0:0] -A KUBE-SEP-AAAA -s 10.244.0.3/32 -j KUBE-MARK-MASQ\n\
        [1:60] -A KUBE-SEP-AAAA -p tcp -m tcp -j DNAT --to-destination 10.244.0.3:8080\n\
        [2:120] -A KUBE-SEP-BBBB -p tcp -m tcp -j DNAT --to-destination 10.244.1.3:8080\n\
        [0:0] -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
        COMMIT\n";

    #[test]
    fn follows_the_rules_whose_counters_rose() {
        let before = parse(BEFORE);
        let after = parse(
            &BEFORE
                .replace("[4:240] -A PREROUTING", "[5:300] -A PREROUTING")
                .replace("[3:180] -A KUBE-SERVICES", "[4:240] -A KUBE-SERVICES")
                .replace("[1:60] -A KUBE-SVC", "[2:120] -A KUBE-SVC")
                .replace("[1:60] -A KUBE-SEP-AAAA", "[2:120] -A KUBE-SEP-AAAA"),
        );
        let passes = matched(&before, &after);
        assert_eq!(passes.len(), 1);
        assert_eq!(passes[0].hook, "prerouting");
        let path: Vec<(&str, &str)> = passes[0]
            .steps
            .iter()
            .map(|s| (s.chain.as_str(), s.verdict.as_str()))
            .collect();
        assert_eq!(
            path,
            [
                ("PREROUTING", "jump KUBE-PROXY-FIREWALL"),
                ("PREROUTING", "jump KUBE-SERVICES"),
                ("KUBE-SERVICES", "jump KUBE-SVC-CDGGSHYLG3RE2FKL"),
                ("KUBE-SVC-CDGGSHYLG3RE2FKL", "jump KUBE-SEP-AAAA"),
                ("KUBE-SEP-AAAA", "dnat"),
            ]
        );
        assert!(matched(&before, &before).is_empty());
    }
}
