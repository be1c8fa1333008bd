//! A trace for people: plain text for the terminal, and an HTML fragment
//! for the run report.

use std::fmt::Write;

use super::{NodeTrace, Trace};
use crate::probe::Outcome;
use crate::results::html::esc;

fn headline(t: &Trace) -> String {
    let target = match &t.to.service {
        Some(s) => format!(
            "{s}{} {}/{}",
            t.to.port_name
                .as_deref()
                .map(|p| format!(":{p}"))
                .unwrap_or_default(),
            t.to.address,
            t.to.protocol
        ),
        None => format!("{}/{}", t.to.address, t.to.protocol),
    };
    format!(
        "{} {} ({}) -> {target}{}",
        t.from.kind,
        t.from.name,
        t.client,
        if t.to.node_port { " (NodePort)" } else { "" }
    )
}

fn outcome(t: &Trace) -> String {
    match (&t.probe.outcome, &t.answered_by) {
        (Outcome::Answered, Some(w)) => format!(
            "answered by {} ({}), which saw the client as {}",
            w.pod,
            std::net::SocketAddr::new(w.ip, w.port),
            w.peer
        ),
        (o, _) => format!("{o:?}").to_lowercase(),
    }
}

fn summary(t: &Trace) -> Vec<String> {
    let mut out = Vec::new();
    for n in &t.nodes {
        let path = super::path_of(std::slice::from_ref(n));
        if !path.is_empty() {
            out.push(format!("path in {}: {}", n.node, path.join(" -> ")));
        }
    }
    match t.dnat {
        Some(d) => out.push(format!("DNAT to {d}")),
        None => out.push("no DNAT".into()),
    }
    match t.snat {
        Some(s) => out.push(format!("SNAT (masquerade) to {s}")),
        None => out.push("source kept (no SNAT)".into()),
    }
    out
}

fn node_lines(n: &NodeTrace) -> Vec<String> {
    let mut out = vec![format!("node {} ({})", n.node, n.netns)];
    for h in &n.hooks {
        let packet = if h.packet.saddr.is_some() {
            format!(" [{}]", h.packet.summary())
        } else {
            String::new()
        };
        out.push(format!(
            "  {:<11} {} {}{packet}",
            h.hook, h.table, h.base_chain
        ));
        for s in &h.steps {
            match &s.rule {
                Some(r) => out.push(format!("    {:<28} {r}  => {}", s.chain, s.verdict)),
                None => out.push(format!("    {:<28} => {}", s.chain, s.verdict)),
            }
        }
    }
    for c in &n.conntrack {
        out.push(format!("  conntrack: {}", c.raw));
    }
    for c in n.ipvs.iter().flatten() {
        out.push(format!(
            "  ipvs: {} {} -> {} -> real server {} {} ({}s)",
            c.protocol, c.client, c.virtual_server, c.real_server, c.state, c.expires_seconds
        ));
    }
    if let Some(b) = &n.bpf {
        out.push(format!(
            "  bpf maps of agent {}: {}",
            b.agent_pid,
            b.maps.join(", ")
        ));
        match &b.service {
            Some(s) => out.push(format!(
                "  bpf services[{}] = id {} flags [{}] cluster endpoints [{}] local [{}] \
                 affinity {}s generation {}",
                s.key,
                s.id,
                s.flags.join(", "),
                s.cluster_endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.local_endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.affinity_seconds,
                s.generation
            )),
            None => out.push("  bpf services: no entry for this address".into()),
        }
        for f in &b.flows {
            out.push(format!(
                "  bpf conntrack {} {} -> rewrite to {} (endpoint {}, service id {})",
                f.kind, f.tuple, f.rewrite_to, f.endpoint, f.service_id
            ));
        }
        if let Some((p, c)) = b.counters {
            out.push(format!(
                "  bpf stats (since the Service was programmed): {p} packets, {c} connections"
            ));
        }
    }
    for note in &n.notes {
        out.push(format!("  note: {note}"));
    }
    out
}

/// The trace as terminal text.
pub fn text(t: &Trace) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "trace in run {} on {}: {}",
        t.run,
        t.backend.as_deref().unwrap_or("no backend"),
        headline(t)
    );
    let _ = writeln!(s, "  {}", outcome(t));
    for l in summary(t) {
        let _ = writeln!(s, "  {l}");
    }
    for n in &t.nodes {
        let _ = writeln!(s);
        for l in node_lines(n) {
            let _ = writeln!(s, "{l}");
        }
    }
    if !t.limits.is_empty() {
        let _ = writeln!(s);
        for l in &t.limits {
            let _ = writeln!(s, "limit: {l}");
        }
    }
    s
}

/// The trace as an HTML fragment (a `<details>` block) for a report.
pub fn html(t: &Trace) -> String {
    let mut s = format!(
        "<details class=\"trace\"><summary>trace: {} — {}</summary><ul>",
        esc(&headline(t)),
        esc(&outcome(t))
    );
    for l in summary(t) {
        let _ = write!(s, "<li>{}</li>", esc(&l));
    }
    s.push_str("</ul>");
    for n in &t.nodes {
        let _ = write!(s, "<pre>{}</pre>", esc(&node_lines(n).join("\n")));
    }
    for l in &t.limits {
        let _ = write!(s, "<p class=\"muted\">{}</p>", esc(l));
    }
    s.push_str("</details>");
    s
}
