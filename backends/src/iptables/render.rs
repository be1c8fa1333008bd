//! Renders kube-proxy's iptables-mode ruleset as `iptables-restore
//! --noflush` input, rule for rule as kube-proxy's `syncProxyRules` writes
//! it (pkg/proxy/iptables/proxier.go), with nodePortAddresses set to the
//! node IP and the local-traffic detector set to the cluster CIDR.
//!
//! Pure: no kernel, no I/O. A full render writes every chain. A partial
//! render writes the chains of the changed service ports and deletes the
//! chains no longer used (kube-proxy's MinimizeIPTablesRestore); it goes
//! one step further than kube-proxy, which rewrites the top-level chains
//! on every sync: it writes them only when their text changed, and leaves
//! out a changed service port that renders exactly as before. The rules in
//! the kernel are the same either way.
//!
//! Rules in KUBE-SERVICES and KUBE-NODEPORTS come in descending order of
//! their target chain's name rather than kube-proxy's (random) map order;
//! their matches are disjoint, so the order only matters to
//! iptables-nft's speed (see [`Config::chains_per_transaction`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hasher};
use std::sync::OnceLock;

use super::book::{Book, FixedRules, ServiceEntry, Update};
use super::names::{Chain, FILTER_TOP, ServiceChains, endpoint_chain};
use crate::model::{
    Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName, categorize_endpoints,
};
use crate::{BackendOptions, Fault};

/// kube-proxy's default masquerade bit 14.
const MASQ_MARK: &str = "0x4000";

/// Above this many endpoints kube-proxy drops the per-endpoint comments
/// (its "large cluster mode"), which shrinks the ruleset by ~40%.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// What shapes the rules besides the state: deliberate faults and one
/// kernel setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub missing_masquerade: bool,
    pub wrong_probability: bool,
    pub no_reject: bool,
    /// Fault: reject what reaches the service CIDR without a DNAT.
    pub reject_unallocated: bool,
    /// `nf_conntrack_tcp_be_liberal` is set; kube-proxy then leaves out
    /// its DROP of INVALID packets.
    pub conntrack_tcp_liberal: bool,
    /// Start another nat transaction (`*nat` .. `COMMIT`) once this many
    /// chains were declared in the current one; `None`: one per table.
    ///
    /// iptables-nft 1.8.9 keeps the chains one `--noflush` transaction
    /// names in a sorted list, inserting by linear scan, so a transaction
    /// naming N chains costs O(N^2): minutes at 10k Services x 10
    /// endpoints. Each service port's chains stay in one transaction, and
    /// the top-level chains and the deletions come in the last, so each
    /// state in between is one a partial sync could leave. iptables-legacy
    /// rewrites the whole table per transaction and wants just one.
    pub chains_per_transaction: Option<usize>,
}

/// The transaction size for iptables-nft; from measurements at 10k x 10,
/// where 250 to 1000 cost about the same and the kernel's per-transaction
/// validation grows below that.
pub const NFT_CHAINS_PER_TRANSACTION: usize = 1000;

impl Config {
    pub fn new(options: &BackendOptions) -> Self {
        Config {
            missing_masquerade: options.has_fault(Fault::MissingMasquerade),
            wrong_probability: options.has_fault(Fault::WrongProbability),
            no_reject: options.has_fault(Fault::NoReject),
            reject_unallocated: options.has_fault(Fault::RejectUnallocated),
            conntrack_tcp_liberal: false,
            chains_per_transaction: None,
        }
    }
}

/// Which service ports a render rewrites.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    Full,
    /// These changed since the last successful sync.
    Partial(&'a BTreeSet<ServicePortName>),
}

/// One sync's restore input and the bookkeeping to apply once the kernel
/// has accepted it.
#[derive(Debug)]
pub struct Rendered {
    pub text: String,
    /// A partial scope is rendered in full when nothing was synced yet or
    /// kube-proxy's large cluster mode flipped.
    pub full: bool,
    /// Lines of `text`.
    pub lines: u64,
    pub deleted_chains: u64,
    pub update: Update,
}

/// The whole ruleset for `state`, as the first sync writes it.
pub fn render_full(state: &ProxyState, node: &NodeContext, options: &BackendOptions) -> String {
    render(
        &Config::new(options),
        state,
        node,
        Scope::Full,
        &Book::default(),
    )
    .text
}

/// Renders `scope` against what `book` says is programmed.
pub fn render(
    config: &Config,
    state: &ProxyState,
    node: &NodeContext,
    scope: Scope<'_>,
    book: &Book,
) -> Rendered {
    let large_cluster = endpoints_in_use(state) > LARGE_CLUSTER_ENDPOINTS;
    let changed = match scope {
        // The comment style of every endpoint rule changes when large
        // cluster mode flips, so a flip rewrites everything.
        Scope::Partial(changed) if book.is_synced() && large_cluster == book.large_cluster() => {
            Some(changed)
        }
        _ => None,
    };
    let full = changed.is_none();
    let ctx = ServiceCtx {
        config,
        node,
        large_cluster,
    };
    let mut nat = NatSections::new(config.chains_per_transaction, state, full);
    let mut fixed = FixedRules::default();
    if full {
        fixed.nat = nat.fixed(config);
    }
    let mut entries: Vec<(ServicePortName, ServiceEntry)> = Vec::new();
    let mut kept: Vec<&ServiceEntry> = Vec::new();
    let mut pending = Pending {
        full,
        deletes: Vec::new(),
        removed: Vec::new(),
        top_changed: full,
        filter_changed: full,
    };

    // Walk the book alongside the state (both sorted by name), so finding
    // a service port's cached entry costs one comparison, not a lookup.
    let mut cached = book.services().iter().peekable();
    for (name, svc) in &state.services {
        let mut prior = None;
        while let Some((k, e)) = cached.peek() {
            match (*k).cmp(name) {
                std::cmp::Ordering::Less => {
                    pending.forget(k, e);
                    cached.next();
                }
                std::cmp::Ordering::Equal => {
                    prior = Some(*e);
                    cached.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let rewrite = match (changed, prior) {
            (Some(changed), Some(_)) => changed.contains(name),
            _ => true,
        };
        if !rewrite {
            kept.push(prior.expect("kept service ports have an entry"));
            continue;
        }
        let mark = nat.mark_for_service();
        let (chain_lines, rules) = nat.buffers();
        let mut entry = ctx.service(chain_lines, rules, name, svc, state.endpoints_of(name));
        entry.digest = nat.digest_since(&mark);
        if let Some(p) = prior.filter(|p| !full && **p == entry) {
            // Rendered exactly as programmed (say, an endpoint that is not
            // ready came or went): a partial sync has nothing to write.
            nat.truncate(&mark);
            kept.push(p);
            continue;
        }
        pending.replace(prior, &entry);
        entries.push((name.clone(), entry));
    }
    for (k, e) in cached {
        pending.forget(k, e);
    }
    let Pending {
        mut deletes,
        removed,
        top_changed,
        filter_changed,
        ..
    } = pending;
    if full && !book.orphans().is_empty() {
        let active: HashSet<Chain> = entries
            .iter()
            .flat_map(|(_, e)| e.chains.iter().copied())
            .collect();
        let known: HashSet<Chain> = deletes.iter().copied().collect();
        deletes.extend(
            book.orphans()
                .iter()
                .filter(|c| !active.contains(c) && !known.contains(c)),
        );
    }

    let mut filter = None;
    if top_changed || filter_changed {
        let mut order: Vec<&ServiceEntry> = entries.iter().map(|(_, e)| e).chain(kept).collect();
        // Jumps in descending chain-name order: iptables-nft inserts each
        // jump target into a sorted list by linear scan, and a name smaller
        // than all before it is found at once.
        order.sort_unstable_by_key(|e| std::cmp::Reverse(e.chains_id));
        if top_changed {
            fixed.nat += nat.top(&order, node);
        }
        if filter_changed {
            let (buf, forward) = filter_table(&order, config, node);
            fixed.filter = forward;
            filter = Some(buf);
        }
    }
    nat.deletions(&deletes);

    let (text, lines) = assemble(filter, nat);
    let update = if full {
        Update::Full {
            services: entries.into_iter().collect::<BTreeMap<_, _>>(),
            fixed,
            large_cluster,
        }
    } else {
        Update::Partial {
            services: entries
                .into_iter()
                .map(|(k, e)| (k, Some(e)))
                .chain(removed.into_iter().map(|k| (k, None)))
                .collect(),
        }
    };
    Rendered {
        text,
        full,
        lines,
        deleted_chains: deletes.len() as u64,
        update,
    }
}

/// What a render writes besides the rewritten service ports' chains.
struct Pending {
    full: bool,
    /// Chains no longer used.
    deletes: Vec<Chain>,
    /// Service ports gone since the last sync (partial renders).
    removed: Vec<ServicePortName>,
    /// Whether the top-level chains' content differs from what is
    /// programmed. kube-proxy rewrites them on every sync; when their text
    /// is the same, the restore leaves them out.
    top_changed: bool,
    filter_changed: bool,
}

impl Pending {
    /// A programmed service port that is gone.
    fn forget(&mut self, name: &ServicePortName, e: &ServiceEntry) {
        self.deletes.extend_from_slice(&e.chains);
        self.top_changed |= !e.nat_top.is_empty();
        self.filter_changed |= !e.filter.is_empty();
        if !self.full {
            self.removed.push(name.clone());
        }
    }

    /// A service port rendered again, over what was programmed, if any.
    fn replace(&mut self, prior: Option<&ServiceEntry>, new: &ServiceEntry) {
        match prior {
            Some(p) => {
                stale_chains(&p.chains, &new.chains, &mut self.deletes);
                self.top_changed |= p.nat_top != new.nat_top;
                self.filter_changed |= p.filter != new.filter;
            }
            None => {
                self.top_changed |= !new.nat_top.is_empty();
                self.filter_changed |= !new.filter.is_empty();
            }
        }
    }
}

/// Endpoints of known service ports, as kube-proxy counts them for large
/// cluster mode.
fn endpoints_in_use(state: &ProxyState) -> usize {
    let mut services = state.services.keys().peekable();
    let mut total = 0;
    for (name, eps) in &state.endpoints {
        while services.next_if(|s| *s < name).is_some() {}
        if services.peek() == Some(&name) {
            total += eps.len();
        }
    }
    total
}

/// Appends the chains of `old` missing from `new` (both sorted).
fn stale_chains(old: &[Chain], new: &[Chain], out: &mut Vec<Chain>) {
    let mut new = new.iter().peekable();
    for c in old {
        while new.next_if(|n| *n < c).is_some() {}
        if new.peek() != Some(&c) {
            out.push(*c);
        }
    }
}

/// Lines of text with a running count.
#[derive(Default)]
struct Buf {
    text: String,
    lines: u64,
}

impl Buf {
    fn with_capacity(n: usize) -> Self {
        Buf {
            text: String::with_capacity(n),
            lines: 0,
        }
    }

    fn line(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
        self.lines += 1;
    }

    fn chain(&mut self, chain: impl fmt::Display) {
        self.line(format_args!(":{chain} - [0:0]"));
    }

    fn append(&mut self, text: &str, lines: u64) {
        self.text.push_str(text);
        self.lines += lines;
    }
}

/// One `*nat` .. `COMMIT` transaction: iptables-restore wants a table's
/// chain lines before its rules.
struct NatSection {
    chains: Buf,
    rules: Buf,
}

/// Lengths and line counts of the current transaction's buffers.
struct Mark {
    chains: (usize, u64),
    rules: (usize, u64),
}

/// The nat table's transactions: service ports fill them in order, the
/// last one also gets the top-level chains and the deletions.
struct NatSections {
    done: Vec<NatSection>,
    current: NatSection,
    limit: Option<usize>,
    capacity: usize,
}

impl NatSections {
    fn new(limit: Option<usize>, state: &ProxyState, full: bool) -> Self {
        let total = if full {
            state.endpoint_count() * 300 + state.services.len() * 400
        } else {
            8192
        };
        let capacity = limit.map_or(total, |l| total.min(l * 400));
        NatSections {
            done: Vec::new(),
            current: NatSections::section(capacity),
            limit,
            capacity,
        }
    }

    fn section(capacity: usize) -> NatSection {
        NatSection {
            chains: Buf::with_capacity(capacity / 8),
            rules: Buf::with_capacity(capacity),
        }
    }

    /// Starts a new transaction if the current one is full, and marks
    /// where the next service port's chains begin.
    fn mark_for_service(&mut self) -> Mark {
        if self
            .limit
            .is_some_and(|l| self.current.chains.lines >= l as u64)
        {
            let next = NatSections::section(self.capacity);
            self.done.push(std::mem::replace(&mut self.current, next));
        }
        Mark {
            chains: (self.current.chains.text.len(), self.current.chains.lines),
            rules: (self.current.rules.text.len(), self.current.rules.lines),
        }
    }

    fn buffers(&mut self) -> (&mut Buf, &mut Buf) {
        (&mut self.current.chains, &mut self.current.rules)
    }

    /// A digest of what was written since `mark`, to tell whether a
    /// service port renders as it did before without keeping its text.
    fn digest_since(&self, mark: &Mark) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(&self.current.chains.text.as_bytes()[mark.chains.0..]);
        h.write(&self.current.rules.text.as_bytes()[mark.rules.0..]);
        h.finish()
    }

    /// Drops what was written since `mark`.
    fn truncate(&mut self, mark: &Mark) {
        let NatSection { chains, rules } = &mut self.current;
        chains.text.truncate(mark.chains.0);
        chains.lines = mark.chains.1;
        rules.text.truncate(mark.rules.0);
        rules.lines = mark.rules.1;
    }

    /// KUBE-POSTROUTING and KUBE-MARK-MASQ, which never change: written by
    /// full syncs only, first, since every endpoint chain jumps to
    /// KUBE-MARK-MASQ. Returns their rule count.
    fn fixed(&mut self, config: &Config) -> u64 {
        let NatSection { chains, rules } = &mut self.current;
        let before = rules.lines;
        chains.chain("KUBE-POSTROUTING");
        chains.chain("KUBE-MARK-MASQ");
        rules.line(format_args!(
            "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
        ));
        // Un-marks the packet so it is not masqueraded again if it
        // traverses the stack once more.
        rules.line(format_args!(
            "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
        ));
        if !config.missing_masquerade {
            rules.line(format_args!(
                "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring \
                 SNAT\" -j MASQUERADE --random-fully"
            ));
        }
        rules.line(format_args!(
            "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
        ));
        rules.lines - before
    }

    /// KUBE-SERVICES and KUBE-NODEPORTS in full. Returns the count of the
    /// rules that belong to no service port.
    fn top(&mut self, order: &[&ServiceEntry], node: &NodeContext) -> u64 {
        let NatSection { chains, rules } = &mut self.current;
        chains.chain("KUBE-SERVICES");
        chains.chain("KUBE-NODEPORTS");
        for e in order {
            rules.append(&e.nat_top, e.nat_top_rules);
        }
        // One jump per address in nodePortAddresses, as kube-proxy writes
        // them when the setting is not `all`.
        // Loopback too when the setting covers it (kube-proxy's
        // localhostNodePorts; route_localnet is set in setup).
        let mut ips: Vec<String> = node
            .nodeport_ips()
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        if node.localhost_node_ports {
            ips.push("127.0.0.1/32".into());
        }
        for ip in &ips {
            rules.line(format_args!(
                "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: \
                 this must be the last rule in this chain\" -d {ip} -j KUBE-NODEPORTS"
            ));
        }
        ips.len() as u64
    }

    /// Flushes and deletes `deletes`, after every rule that stopped
    /// referring to them was rewritten.
    fn deletions(&mut self, deletes: &[Chain]) {
        for c in deletes {
            self.current.chains.chain(c);
        }
        for c in deletes {
            self.current.rules.line(format_args!("-X {c}"));
        }
    }
}

/// The filter table, always whole (it is small). Returns it and the count
/// of its rules that belong to no service port.
fn filter_table(order: &[&ServiceEntry], config: &Config, node: &NodeContext) -> (Buf, u64) {
    let mut b = Buf::with_capacity(4096);
    for c in FILTER_TOP {
        b.chain(c);
    }
    for e in order {
        b.append(&e.filter, e.filter_rules);
    }
    let before = b.lines;
    if config.reject_unallocated {
        // kube-proxy's iptables mode leaves such traffic to routing.
        b.line(format_args!(
            "-A KUBE-SERVICES -m comment --comment \"fault: reject unallocated ClusterIPs\" -d \
             {} -j REJECT --reject-with {}",
            node.service_cidr,
            match node.family() {
                crate::model::IpFamily::IPv4 => "icmp-host-unreachable",
                crate::model::IpFamily::IPv6 => "icmp6-addr-unreachable",
            }
        ));
    }
    if !config.conntrack_tcp_liberal {
        b.line(format_args!(
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
        ));
    }
    b.line(format_args!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark \
         {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    ));
    b.line(format_args!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m \
         conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));
    if node.localhost_node_ports {
        // route_localnet lets a packet to 127.0.0.0/8 be routed; this guard
        // (kube-proxy's, CVE-2020-8558) keeps others from reaching the
        // node's loopback services through it.
        b.line(format_args!(
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d \
             127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ));
    }
    let forward = b.lines - before;
    (b, forward)
}

/// Joins the transactions into restore input; returns it and its lines.
/// Empty when nothing needs writing.
fn assemble(filter: Option<Buf>, nat: NatSections) -> (String, u64) {
    let sections: Vec<NatSection> = nat
        .done
        .into_iter()
        .chain(std::iter::once(nat.current))
        .filter(|s| s.chains.lines + s.rules.lines > 0)
        .collect();
    let len = filter.as_ref().map_or(0, |f| f.text.len())
        + sections
            .iter()
            .map(|s| s.chains.text.len() + s.rules.text.len() + 16)
            .sum::<usize>()
        + 32;
    let mut text = String::with_capacity(len);
    let mut lines = 0;
    let mut table = |name: &str, parts: &[&Buf]| {
        text.push_str(name);
        for p in parts {
            text.push_str(&p.text);
            lines += p.lines;
        }
        text.push_str("COMMIT\n");
        lines += 2;
    };
    if let Some(f) = &filter {
        table("*filter\n", &[f]);
    }
    for s in &sections {
        table("*nat\n", &[&s.chains, &s.rules]);
    }
    (text, lines)
}

/// Everything one service port's rules depend on besides the port itself.
struct ServiceCtx<'a> {
    config: &'a Config,
    node: &'a NodeContext,
    large_cluster: bool,
}

impl ServiceCtx<'_> {
    /// Writes the service port's own chains into `chain_lines`/`rules` and
    /// returns its entry, whose top-level fragments the caller places.
    fn service(
        &self,
        chain_lines: &mut Buf,
        rules: &mut Buf,
        name: &ServicePortName,
        svc: &ServicePort,
        eps: &[Endpoint],
    ) -> ServiceEntry {
        let p = svc.protocol.lower();
        let cip = svc.cluster_ip;
        let port = svc.port;
        let cidr = self.node.cluster_cidr;
        let cat = categorize_endpoints(svc, eps);
        let names = ServiceChains::new(name);
        let (svc_chain, svl_chain, ext_chain) = (names.svc(), names.svl(), names.ext());
        let external_local = svc.externally_accessible() && svc.external_policy_local;
        // The model fills each set only when the policy uses it, as
        // kube-proxy's usesClusterPolicyChain / usesLocalPolicyChain.
        let uses_cluster_chain = !cat.cluster.is_empty();
        let uses_local_chain = !cat.local.is_empty();
        let internal_chain = if svc.internal_policy_local {
            svl_chain
        } else {
            svc_chain
        };
        let has_internal = cat.has_any && (!svc.internal_policy_local || uses_local_chain);
        let external_policy_chain = if external_local { svl_chain } else { svc_chain };
        let has_external = cat.has_any && (!external_local || uses_local_chain);
        let uses_ext_chain = cat.has_any && svc.externally_accessible();
        let (internal_filter, external_filter) = if !cat.has_any {
            let reject = (!self.config.no_reject).then_some(("REJECT", "has no endpoints"));
            (reject, reject)
        } else {
            let drop = ("DROP", "has no local endpoints");
            (
                (!has_internal).then_some(drop),
                (!has_external).then_some(drop),
            )
        };

        let mut top = Buf::default();
        let mut filter = Buf::default();
        if has_internal {
            top.line(format_args!(
                "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d \
                 {cip} --dport {port} -j {internal_chain}"
            ));
        } else if let Some((target, why)) = internal_filter {
            filter.line(format_args!(
                "-A KUBE-SERVICES -m comment --comment \"{name} {why}\" -m {p} -p {p} -d {cip} \
                 --dport {port} -j {target}"
            ));
        }
        for eip in &svc.external_ips {
            if cat.has_any {
                top.line(format_args!(
                    "-A KUBE-SERVICES -m comment --comment \"{name} external IP\" -m {p} -p {p} \
                     -d {eip} --dport {port} -j {ext_chain}"
                ));
            }
            if let (false, Some((target, why))) = (has_external, external_filter) {
                filter.line(format_args!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} {why}\" -m {p} -p \
                     {p} -d {eip} --dport {port} -j {target}"
                ));
            }
        }
        // Load balancer IPs go to the EXT chain, or through the firewall
        // chain when source ranges restrict them; what the firewall chain
        // does not DNAT, KUBE-PROXY-FIREWALL drops.
        let fw_chain = names.fw();
        let uses_fw = cat.has_any && svc.uses_firewall();
        let lb_chain = if uses_fw { fw_chain } else { ext_chain };
        for lbip in &svc.load_balancer_ips {
            if cat.has_any {
                top.line(format_args!(
                    "-A KUBE-SERVICES -m comment --comment \"{name} loadbalancer IP\" -m {p} -p \
                     {p} -d {lbip} --dport {port} -j {lb_chain}"
                ));
            }
            if uses_fw {
                filter.line(format_args!(
                    "-A KUBE-PROXY-FIREWALL -m comment --comment \"{name} traffic not accepted \
                     by {fw_chain}\" -m {p} -p {p} -d {lbip} --dport {port} -j DROP"
                ));
            }
        }
        if let (false, Some((target, why))) = (has_external, external_filter) {
            for lbip in &svc.load_balancer_ips {
                filter.line(format_args!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} {why}\" -m {p} -p \
                     {p} -d {lbip} --dport {port} -j {target}"
                ));
            }
        }
        if let Some(np) = svc.node_port {
            if cat.has_any {
                top.line(format_args!(
                    "-A KUBE-NODEPORTS -m comment --comment {name} -m {p} -p {p} --dport {np} \
                     -j {ext_chain}"
                ));
            }
            if let (false, Some((target, why))) = (has_external, external_filter) {
                filter.line(format_args!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} {why}\" -m addrtype \
                     --dst-type LOCAL -m {p} -p {p} --dport {np} -j {target}"
                ));
            }
        }
        if let Some(hc) = svc.health_check_node_port {
            filter.line(format_args!(
                "-A KUBE-NODEPORTS -m comment --comment \"{name} health check node port\" -m tcp \
                 -p tcp --dport {hc} -j ACCEPT"
            ));
        }

        let rules_before = rules.lines;
        let mut chains = Vec::with_capacity(cat.all_reachable.len() + 3);
        if has_internal {
            // Masquerades off-cluster traffic to the ClusterIP: a node may
            // route the service CIDR for outside clients.
            rules.line(format_args!(
                "-A {internal_chain} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d \
                 {cip} --dport {port} ! -s {cidr} -j KUBE-MARK-MASQ"
            ));
        }
        if uses_ext_chain {
            chain_lines.chain(ext_chain);
            chains.push(ext_chain);
            if !external_local {
                rules.line(format_args!(
                    "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external \
                     destinations\" -j KUBE-MARK-MASQ"
                ));
            } else {
                // Pods and the node itself reach external destinations as
                // if through an outside load balancer: Cluster policy.
                rules.line(format_args!(
                    "-A {ext_chain} -m comment --comment \"pod traffic for {name} external \
                     destinations\" -s {cidr} -j {svc_chain}"
                ));
                rules.line(format_args!(
                    "-A {ext_chain} -m comment --comment \"masquerade LOCAL traffic for {name} \
                     external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                ));
                rules.line(format_args!(
                    "-A {ext_chain} -m comment --comment \"route LOCAL traffic for {name} \
                     external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}"
                ));
            }
            if has_external {
                rules.line(format_args!("-A {ext_chain} -j {external_policy_chain}"));
            }
        }
        if uses_fw {
            chain_lines.chain(fw_chain);
            chains.push(fw_chain);
            // A range holding this node's IP also lets the node's own
            // traffic in when it comes from the load balancer IP itself (the
            // VIP as a local address, #119656's fix).
            let mut allow_from_node = false;
            for cidr in &svc.load_balancer_source_ranges {
                rules.line(format_args!(
                    "-A {fw_chain} -m comment --comment \"{name} loadbalancer IP\" -s {cidr} -j \
                     {ext_chain}"
                ));
                allow_from_node |= cidr.contains(&self.node.node_ip);
            }
            if allow_from_node {
                for lbip in &svc.load_balancer_ips {
                    rules.line(format_args!(
                        "-A {fw_chain} -m comment --comment \"{name} loadbalancer IP\" -s {lbip} \
                         -j {ext_chain}"
                    ));
                }
            }
            rules.line(format_args!(
                "-A {fw_chain} -m comment --comment \"other traffic to {name} will be dropped by \
                 KUBE-PROXY-FIREWALL\""
            ));
        }
        let seps: Vec<Chain> = cat
            .all_reachable
            .iter()
            .map(|e| endpoint_chain(name, e))
            .collect();
        let reachable = Reachable {
            eps: &cat.all_reachable,
            chains: &seps,
        };
        if uses_cluster_chain {
            chain_lines.chain(svc_chain);
            chains.push(svc_chain);
            self.balance(rules, name, svc, svc_chain, &cat.cluster, &reachable);
        }
        if uses_local_chain {
            chain_lines.chain(svl_chain);
            chains.push(svl_chain);
            self.balance(rules, name, svc, svl_chain, &cat.local, &reachable);
        }
        for (ep, sep) in cat.all_reachable.iter().zip(&seps) {
            chain_lines.chain(sep);
            chains.push(*sep);
            let comment = Comment::service(name, self.large_cluster);
            // Hairpin: an endpoint reaching itself through the Service is
            // masqueraded, or its reply would bypass the DNAT.
            rules.line(format_args!(
                "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ",
                ep.ip
            ));
            let affinity = Affinity {
                sep: *sep,
                on: svc.session_affinity_seconds.is_some(),
            };
            rules.line(format_args!(
                "-A {sep}{comment}{affinity} -m {p} -p {p} -j DNAT --to-destination {}",
                ep.addr()
            ));
        }
        chains.sort_unstable();
        ServiceEntry {
            chains_id: names,
            digest: 0,
            chains,
            chain_rules: rules.lines - rules_before,
            nat_top: top.text,
            nat_top_rules: top.lines,
            filter: filter.text,
            filter_rules: filter.lines,
        }
    }

    /// kube-proxy's writeServiceToEndpointRules: affinity rules first, then
    /// one probabilistic jump per endpoint, the last unconditional.
    fn balance(
        &self,
        rules: &mut Buf,
        name: &ServicePortName,
        svc: &ServicePort,
        chain: Chain,
        eps: &[&Endpoint],
        reachable: &Reachable<'_>,
    ) {
        if let Some(seconds) = svc.session_affinity_seconds {
            let mut cursor = 0;
            for ep in eps {
                let sep = reachable.chain_of(ep, &mut cursor);
                let comment = Comment::to_endpoint(name, ep, self.large_cluster);
                rules.line(format_args!(
                    "-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {seconds} \
                     --reap -j {sep}"
                ));
            }
        }
        let n = eps.len();
        let mut cursor = 0;
        for (i, ep) in eps.iter().enumerate() {
            let sep = reachable.chain_of(ep, &mut cursor);
            let comment = Comment::to_endpoint(name, ep, self.large_cluster);
            if i + 1 < n {
                let p = Probability(if self.config.wrong_probability {
                    n
                } else {
                    n - i
                });
                rules.line(format_args!(
                    "-A {chain}{comment} -m statistic --mode random --probability {p} -j {sep}"
                ));
            } else {
                rules.line(format_args!("-A {chain}{comment} -j {sep}"));
            }
        }
    }
}

/// The endpoint chains of a service port, aligned with its reachable
/// endpoints.
struct Reachable<'a> {
    eps: &'a [&'a Endpoint],
    chains: &'a [Chain],
}

impl Reachable<'_> {
    /// The chain of `ep`. The cluster and local sets are subsequences of
    /// the reachable set in the same order, so a cursor finds each in
    /// amortised constant time; the wrap-around keeps it right regardless.
    fn chain_of(&self, ep: &Endpoint, cursor: &mut usize) -> Chain {
        let n = self.eps.len();
        for step in 0..n {
            let i = (*cursor + step) % n;
            if self.eps[i] == ep {
                *cursor = i + 1;
                return self.chains[i];
            }
        }
        unreachable!("categorized endpoints are all reachable")
    }
}

/// ` -m comment --comment ...` on endpoint rules, left out in large
/// cluster mode as kube-proxy does.
struct Comment<'a> {
    name: &'a ServicePortName,
    target: Option<&'a Endpoint>,
    omit: bool,
}

impl<'a> Comment<'a> {
    fn service(name: &'a ServicePortName, omit: bool) -> Self {
        Comment {
            name,
            target: None,
            omit,
        }
    }

    fn to_endpoint(name: &'a ServicePortName, ep: &'a Endpoint, omit: bool) -> Self {
        Comment {
            name,
            target: Some(ep),
            omit,
        }
    }
}

impl fmt::Display for Comment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.omit, self.target) {
            (true, _) => Ok(()),
            (false, None) => write!(f, " -m comment --comment {}", self.name),
            (false, Some(ep)) => write!(
                f,
                " -m comment --comment \"{} -> {}\"",
                self.name,
                ep.addr()
            ),
        }
    }
}

/// ` -m recent --name SEP --set` on the DNAT rule under ClientIP affinity.
struct Affinity {
    sep: Chain,
    on: bool,
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on {
            write!(f, " -m recent --name {} --set", self.sep)
        } else {
            Ok(())
        }
    }
}

/// 1/n with 10 decimals, as kube-proxy prints it; the common ones are
/// formatted once.
struct Probability(usize);

const PRECOMPUTED_PROBABILITIES: usize = 1024;

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        static TABLE: OnceLock<Vec<String>> = OnceLock::new();
        if self.0 < PRECOMPUTED_PROBABILITIES {
            let table = TABLE.get_or_init(|| {
                (0..PRECOMPUTED_PROBABILITIES)
                    .map(|n| format!("{:.10}", 1.0 / n.max(1) as f64))
                    .collect()
            });
            f.write_str(&table[self.0])
        } else {
            write!(f, "{:.10}", 1.0 / self.0 as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_print_like_kube_proxy() {
        assert_eq!(Probability(2).to_string(), "0.5000000000");
        assert_eq!(Probability(3).to_string(), "0.3333333333");
        assert_eq!(Probability(7).to_string(), "0.1428571429");
        assert_eq!(Probability(2000).to_string(), "0.0005000000");
    }

    #[test]
    fn stale_chains_are_the_difference() {
        let name = ServicePortName::new("ns", "svc", "", crate::model::Protocol::Tcp);
        let c = ServiceChains::new(&name);
        let mut old = vec![c.svc(), c.ext(), c.svl()];
        old.sort();
        let mut new = vec![c.svc()];
        new.sort();
        let mut out = Vec::new();
        stale_chains(&old, &new, &mut out);
        out.sort();
        let mut want = vec![c.ext(), c.svl()];
        want.sort();
        assert_eq!(out, want);
    }
}
