//! agent-restart: the proxy on one node is killed (SIGKILL, as a crash or
//! an OOM kill: nothing is cleaned up) and started again by the lab's
//! supervisor, as the kubelet restarts kube-proxy. Connections and flows
//! through Services must not notice: TCP connections opened before the
//! kill carry a request after it, UDP flows keep their endpoint (their
//! conntrack entries are not flushed, kubernetes/kubernetes#122740), the
//! new agent converges on the same rules, and nothing is programmed twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use svclab_backends::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::expect::Target;
use super::{CheckResult, Ctx, Evidence, Vantage};
use crate::rules::{Ruleset, dump};
use crate::workload::Whoami;

/// TCP connections held open across the restart.
const HELD: usize = 3;
/// UDP flows (fixed client ports) followed across the restart.
const UDP_PORTS: [u16; 3] = [41301, 41302, 41303];
/// While waiting for the restart, a held connection sends one byte of its
/// request this often, so the echo server's 5 s read timeout never fires
/// and packets cross the node during the restart.
const TRICKLE: Duration = Duration::from_millis(1500);
/// How long the supervisor may take to start the next agent.
const RESTART_WITHIN: Duration = Duration::from_secs(10);

/// The ClusterIP port of `protocol` with the most ready endpoints (two at
/// least), reached from anywhere (no internalTrafficPolicy Local) and
/// without session affinity.
fn widest(ctx: &Ctx<'_>, protocol: Protocol) -> Option<Target> {
    ctx.targets()
        .into_iter()
        .filter(|t| t.protocol == protocol && !t.itp_local && !t.affinity)
        .filter(|t| t.cluster().len() >= 2)
        .max_by_key(|t| t.cluster().len())
}

/// Rule lines per table and chain, counters and handles left out, so two
/// dumps of the same rules compare equal and a rule programmed twice shows
/// as a count of 2.
pub fn rule_lines(ruleset: Ruleset, text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    match ruleset {
        Ruleset::Iptables | Ruleset::IptablesLegacy => {
            let mut table = String::new();
            for l in text.lines() {
                if let Some(t) = l.strip_prefix('*') {
                    table = t.trim().to_string();
                } else if l.starts_with("-A ") {
                    *out.entry(format!("{table} {l}")).or_default() += 1;
                }
            }
        }
        // iptables rules as above; ipset entries, virtual and real servers
        // and kube-ipvs0's addresses one line each, under their section.
        Ruleset::Ipvs => {
            let (mut section, mut table) = (String::new(), String::new());
            for l in text.lines() {
                if let Some(s) = l.strip_prefix("# svclab: ") {
                    section = s.trim().to_string();
                } else if section == "iptables" {
                    if let Some(t) = l.strip_prefix('*') {
                        table = t.trim().to_string();
                    } else if l.starts_with("-A ") {
                        *out.entry(format!("{table} {l}")).or_default() += 1;
                    }
                } else if !l.trim().is_empty() && !l.starts_with("create ") {
                    *out.entry(format!("{section} {}", l.trim())).or_default() += 1;
                }
            }
        }
        Ruleset::Nftables => {
            let (mut table, mut chain) = (String::new(), None::<String>);
            for raw in text.lines() {
                let l = raw.trim();
                if let Some(t) = l.strip_prefix("table ") {
                    table = t.trim_end_matches('{').trim().to_string();
                } else if let Some(c) = l.strip_prefix("chain ") {
                    chain = Some(c.trim_end_matches('{').trim().to_string());
                } else if l == "}" {
                    chain = None;
                } else if let Some(c) = &chain {
                    if l.is_empty() || l.starts_with("type ") || l.starts_with("policy ") {
                        continue;
                    }
                    let rule = l.split(" # handle ").next().unwrap_or(l);
                    let rule = strip_counter(rule);
                    *out.entry(format!("{table} {c} {rule}")).or_default() += 1;
                }
            }
        }
    }
    out
}

/// `counter packets N bytes M` without its numbers.
fn strip_counter(rule: &str) -> String {
    let mut words = rule.split(' ').peekable();
    let mut out = Vec::new();
    while let Some(w) = words.next() {
        out.push(w);
        if w == "packets" || w == "bytes" {
            words.next();
        }
    }
    out.join(" ")
}

/// The Service's answer to a request sent over a connection opened before
/// the restart: one byte every [`TRICKLE`] until `go`, then the rest.
async fn held_request(
    addr: std::net::SocketAddr,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> Result<Whoami, String> {
    let connect =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await;
    let mut s = match connect {
        Ok(Ok(s)) => {
            let _ = connected.send(Ok(()));
            s
        }
        Ok(Err(e)) => {
            let _ = connected.send(Err(e.to_string()));
            return Err(format!("connect: {e}"));
        }
        Err(_) => {
            let _ = connected.send(Err("timeout".into()));
            return Err("connect: timeout".into());
        }
    };
    let request = b"whoami\n";
    let mut sent = 0;
    // Bounded: the request has 6 bytes before its newline.
    while sent < request.len() - 1 {
        let woke = tokio::time::timeout(TRICKLE, async { go.wait_for(|g| *g).await.map(drop) })
            .await
            .is_ok();
        if woke {
            break;
        }
        s.write_all(&request[sent..sent + 1])
            .await
            .map_err(|e| format!("while the agent restarted, sending: {e}"))?;
        sent += 1;
    }
    s.write_all(&request[sent..])
        .await
        .map_err(|e| format!("after the restart, sending: {e}"))?;
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await {
        Err(_) => Err("after the restart: no answer within 3 s".into()),
        Ok(Err(e)) => Err(format!("after the restart: {e}")),
        Ok(Ok(_)) => Whoami::parse(&String::from_utf8_lossy(&buf))
            .ok_or_else(|| format!("after the restart: not an answer: {buf:?}")),
    }
}

/// One UDP request per client port: port -> the pod that answered, or what
/// happened instead.
async fn udp_round(
    ctx: &Ctx<'_>,
    v: &Vantage,
    t: &Target,
) -> anyhow::Result<BTreeMap<u16, Result<String, String>>> {
    let specs = UDP_PORTS
        .iter()
        .map(|p| {
            let mut s = ctx.spec(t.vip_addr(), Protocol::Udp);
            s.source_port = Some(*p);
            s
        })
        .collect();
    let results = ctx.probe(v, specs).await?;
    Ok(results
        .into_iter()
        .map(|r| {
            let port = r.spec.source_port.unwrap_or(0);
            let seen = match r.answer {
                Some(w) => Ok(w.pod),
                None => Err(format!("{:?}", r.outcome).to_lowercase()),
            };
            (port, seen)
        })
        .collect())
}

pub async fn agent_restart(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(v) = ctx.clients().into_iter().next() else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    let node = v.node.clone().unwrap_or_default();
    let (tcp, udp) = (widest(ctx, Protocol::Tcp), widest(ctx, Protocol::Udp));
    if tcp.is_none() && udp.is_none() {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no TCP or UDP Service with 2 or more ready endpoints",
        ));
    }
    let ruleset = ctx
        .lab
        .backend
        .as_ref()
        .and_then(|b| Ruleset::of_backend(&b.to_string()));
    let netns = ctx
        .lab
        .topology
        .node(&node)
        .map(|n| n.netns.clone())
        .ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    let rules_before = match ruleset {
        Some(r) => Some(rule_lines(r, &dump(&netns, r)?)),
        None => None,
    };
    let udp_before = match &udp {
        Some(t) => udp_round(ctx, &v, t).await?,
        None => BTreeMap::new(),
    };

    // Connections opened before the kill, held until after the restart.
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut held = Vec::new();
    if let Some(t) = &tcp {
        let rt = ctx.lab.prober.vantage(&v.netns)?;
        let mut connected = Vec::new();
        for _ in 0..HELD {
            let (tx, rx) = tokio::sync::oneshot::channel();
            held.push(rt.spawn(held_request(t.vip_addr(), tx, go_rx.clone())));
            connected.push(rx);
        }
        for c in connected {
            // Each connect is bounded by 2 s; a failure shows in its answer.
            let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
        }
    }

    let started = Instant::now();
    let agents = ctx
        .lab
        .agents
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("the lab runs no agents"))?;
    let restarted = agents
        .kill_and_restart(
            &node,
            RESTART_WITHIN * crate::results::HostFacts::slowdown(),
        )
        .await;
    let synced = match &restarted {
        Ok(_) => ctx.lab.wait_synced().await.map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    let took = started.elapsed().as_secs_f64();
    let _ = go_tx.send(true);

    let mut evidence = vec![Evidence {
        vantage: format!("node {node}"),
        target: "the agent".into(),
        expected: "killed with SIGKILL, restarted and synced again".into(),
        observed: match (&restarted, &synced) {
            (Ok((old, new)), Ok(())) => {
                format!("pid {old} killed, pid {new} synced {took:.1} s later")
            }
            (Ok((old, new)), Err(e)) => format!("pid {old} killed, pid {new} did not sync: {e}"),
            (Err(e), _) => e.to_string(),
        },
        ok: restarted.is_ok() && synced.is_ok(),
        probes: 0,
    }];

    if let Some(t) = &tcp {
        for (i, h) in held.into_iter().enumerate() {
            let answer = match h.await {
                Ok(a) => a,
                Err(e) => Err(format!("task: {e}")),
            };
            let ok = answer.as_ref().is_ok_and(|w| {
                t.cluster()
                    .iter()
                    .any(|e| e.pod == w.pod && e.port == w.port)
            });
            evidence.push(Evidence {
                vantage: ctx.vantage_label(&v, t),
                target: format!(
                    "{} (connection {} held across the restart)",
                    t.label(),
                    i + 1
                ),
                expected: "the connection carries a request after the restart".into(),
                observed: match answer {
                    Ok(w) => format!("answered by {}:{}", w.pod, w.port),
                    Err(e) => e,
                },
                ok,
                probes: 1,
            });
        }
    }

    if let Some(t) = &udp {
        let after = udp_round(ctx, &v, t).await?;
        for (port, before) in &udp_before {
            let now = after.get(port).cloned().unwrap_or(Err("not sent".into()));
            let show = |r: &Result<String, String>| match r {
                Ok(p) => p.clone(),
                Err(e) => e.clone(),
            };
            evidence.push(Evidence {
                vantage: ctx.vantage_label(&v, t),
                target: format!("{} from client port {port}", t.label()),
                expected: format!(
                    "the flow keeps its endpoint after the restart: {}",
                    show(before)
                ),
                observed: show(&now),
                ok: before.is_ok() && now == *before,
                probes: 2,
            });
        }
    }

    if let (Some(r), Some(before)) = (ruleset, rules_before) {
        let after = rule_lines(r, &dump(&netns, r)?);
        let count = |m: &BTreeMap<String, usize>| m.values().sum::<usize>();
        let twice: Vec<String> = after
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(l, n)| format!("{l} ×{n}"))
            .collect();
        let (gone, new): (Vec<_>, Vec<_>) = (
            before.keys().filter(|l| !after.contains_key(*l)).collect(),
            after.keys().filter(|l| !before.contains_key(*l)).collect(),
        );
        let mut observed = format!(
            "{} rule line(s) before, {} after; {} programmed twice",
            count(&before),
            count(&after),
            twice.len()
        );
        for (what, lines) in [
            ("twice", twice.iter().collect::<Vec<_>>()),
            ("gone", gone.clone()),
            ("new", new.clone()),
        ] {
            if let Some(l) = lines.first() {
                observed.push_str(&format!("; {what}: {l}"));
            }
        }
        evidence.push(Evidence {
            vantage: format!("node {node}"),
            target: format!("the node's rules ({r:?})"),
            expected: "the same rules after the restart, none programmed twice".into(),
            observed,
            ok: twice.is_empty() && before == after,
            probes: 0,
        });
    }
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicated_rules_are_counted_and_counters_ignored() {
        let ipt = "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n\
                   -A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        let m = rule_lines(Ruleset::Iptables, ipt);
        assert_eq!(m["nat -A PREROUTING -j KUBE-SERVICES"], 2);
        assert_eq!(m["nat -A KUBE-SERVICES -j RETURN"], 1);

        let nft = "table ip kube-proxy {\n\tchain a {\n\t\ttype nat hook prerouting priority \
                   dstnat; policy accept;\n\t\tjump b # handle 4\n\t\tcounter packets 3 bytes \
                   180 jump c # handle 5\n\t}\n\tchain b {\n\t\tjump b # handle 9\n\t}\n}\n";
        let other = nft.replace("packets 3 bytes 180", "packets 9 bytes 999");
        let m = rule_lines(Ruleset::Nftables, nft);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m, rule_lines(Ruleset::Nftables, &other));
        assert!(m.contains_key("ip kube-proxy a jump b"), "{m:?}");
    }
}
