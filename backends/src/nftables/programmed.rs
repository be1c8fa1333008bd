//! What the `ip kube-proxy` table holds, as this backend last programmed it,
//! and the transactions that move it to a new state: a full one that
//! rewrites everything (but endpoint chains that are already right), and a
//! partial one (kube-proxy's partial sync) that rewrites only the chains of
//! changed service ports, changes only the map elements that differ, and
//! deletes what removed ports left behind.
//!
//! Planning is pure: a [`Plan`] is applied to the bookkeeping only after the
//! kernel has accepted its text, so a failed transaction changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::BackendOptions;
use crate::model::{ChangeSet, NodeContext, ProxyState, ServicePortName};
use crate::nftables::existing::Existing;
use crate::nftables::objects::{
    AffinitySet, Chain, Container, ElementValue, PortObjects, port_objects,
};
use crate::nftables::skeleton::{SKELETON_ELEMENTS, write_skeleton};
use crate::nftables::tx::Tx;
use crate::protocol::SyncMode;

type ElementKey = (Container, String);

/// Service ports contributing to one element, with what each wants. Two
/// ports can share a key (every port of a Service adds its ClusterIP to
/// `cluster-ips`); the smallest port name wins, as in a full sync, which
/// writes ports in that order and keeps the first.
type Owners = BTreeMap<ServicePortName, ElementValue>;

fn effective(owners: Option<&Owners>) -> Option<&ElementValue> {
    owners.and_then(|o| o.values().next())
}

/// The objects one service port has in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRecord {
    pub chains: Vec<String>,
    pub sets: Vec<AffinitySet>,
    pub rules: u64,
    /// Keys this port contributes to.
    pub elements: Vec<ElementKey>,
}

/// The bookkeeping of the whole table.
#[derive(Clone, Debug, Default)]
pub struct Programmed {
    ports: HashMap<ServicePortName, PortRecord>,
    elements: HashMap<ElementKey, Owners>,
    skeleton_rules: u64,
}

/// Counts for stats and sync outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub service_ports: u64,
    pub chains: u64,
    pub rules: u64,
    pub elements: u64,
    pub affinity_sets: u64,
}

/// One transaction and the bookkeeping it leads to.
#[derive(Debug)]
pub struct Plan {
    pub mode: SyncMode,
    pub text: String,
    pub lines: u64,
    /// Service ports whose chains this transaction rewrites or deletes.
    pub ports_written: u64,
    replace_all: bool,
    skeleton_rules: u64,
    ports: Vec<(ServicePortName, Option<PortRecord>)>,
    elements: Vec<(ElementKey, Option<Owners>)>,
}

impl Programmed {
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            service_ports: self.ports.len() as u64,
            chains: 0,
            rules: self.skeleton_rules,
            elements: self.elements.len() as u64 + SKELETON_ELEMENTS,
            affinity_sets: 0,
        };
        for r in self.ports.values() {
            c.chains += r.chains.len() as u64;
            c.rules += r.rules;
            c.affinity_sets += r.sets.len() as u64;
        }
        c
    }

    /// What the bookkeeping says the table holds.
    pub fn existing(&self) -> Existing {
        let mut e = Existing::default();
        for r in self.ports.values() {
            e.chains.extend(r.chains.iter().cloned());
            e.sets.extend(r.sets.iter().map(|s| s.name.clone()));
        }
        e
    }

    /// Rewrites the whole table for `state`: the skeleton, every service
    /// port's chains and elements, and deletions of whatever in `existing`
    /// `state` no longer needs. As in kube-proxy, endpoint chains already in
    /// `existing` (with their affinity set) are kept rather than rewritten:
    /// their content follows from their name.
    pub fn plan_full(
        &self,
        state: &ProxyState,
        node: &NodeContext,
        options: &BackendOptions,
        existing: &Existing,
    ) -> Plan {
        let mut tx = Tx::with_capacity(node.family(), estimate_bytes(state));
        write_skeleton(&mut tx, node, options);
        let skeleton_rules = tx.rules();

        let mut records = Vec::with_capacity(state.services.len());
        let mut elements: HashMap<ElementKey, Owners> = HashMap::new();
        let mut element_order: Vec<ElementKey> = Vec::new();
        let keep = |c: &Chain| {
            c.endpoint.as_ref().is_some_and(|e| {
                existing.chains.contains(&c.name) && existing.sets.contains(&e.affinity_set)
            })
        };
        let mut live_chains: HashSet<String> = HashSet::new();
        let mut live_sets: HashSet<String> = HashSet::new();
        for (name, svc) in &state.services {
            let objs = port_objects(svc, state.endpoints_of(name), node, options);
            write_port(&mut tx, &objs, keep);
            for el in objs.elements.iter() {
                let key = (el.container, el.key.clone());
                let owners = elements.entry(key.clone()).or_default();
                if owners.is_empty() {
                    element_order.push(key);
                }
                owners.insert(name.clone(), el.value.clone());
            }
            let record = record_of(&objs);
            if !existing.chains.is_empty() || !existing.sets.is_empty() {
                live_chains.extend(record.chains.iter().cloned());
                live_sets.extend(record.sets.iter().map(|s| s.name.clone()));
            }
            records.push((name.clone(), Some(record)));
        }
        let stale = Stale {
            chains: existing
                .chains
                .iter()
                .map(String::as_str)
                .filter(|c| !live_chains.contains(*c))
                .collect(),
            sets: existing
                .sets
                .iter()
                .map(String::as_str)
                .filter(|s| !live_sets.contains(*s))
                .collect(),
        };
        for key in &element_order {
            let value = effective(elements.get(key)).expect("element has an owner");
            tx.add_element(key.0, &key.1, value);
        }
        stale.write(&mut tx);

        let lines = tx.lines();
        Plan {
            mode: SyncMode::Full,
            text: tx.into_text(),
            lines,
            ports_written: records.len() as u64,
            replace_all: true,
            skeleton_rules,
            ports: records,
            elements: elements.into_iter().map(|(k, v)| (k, Some(v))).collect(),
        }
    }

    /// Rewrites only what `changes` names (kube-proxy's partial sync).
    pub fn plan_partial(
        &self,
        state: &ProxyState,
        changes: &ChangeSet,
        node: &NodeContext,
        options: &BackendOptions,
    ) -> Plan {
        let mut tx = Tx::with_capacity(node.family(), 4096 * changes.changed.len().max(1));
        let mut records = Vec::with_capacity(changes.changed.len());
        // What the changed ports now want, per key.
        let mut wanted: HashMap<ElementKey, Vec<(&ServicePortName, ElementValue)>> = HashMap::new();
        let mut touched: BTreeSet<ElementKey> = BTreeSet::new();
        let mut stale = Stale::default();

        for name in &changes.changed {
            let old = self.ports.get(name);
            let objs = state
                .services
                .get(name)
                .map(|svc| port_objects(svc, state.endpoints_of(name), node, options));
            if let Some(objs) = &objs {
                write_port(&mut tx, objs, |_| false);
                for e in &objs.elements {
                    let key = (e.container, e.key.clone());
                    touched.insert(key.clone());
                    wanted.entry(key).or_default().push((name, e.value.clone()));
                }
            }
            let record = objs.as_ref().map(record_of);
            if let Some(old) = old {
                touched.extend(old.elements.iter().cloned());
                stale.add(old, record.as_ref());
            }
            records.push((name.clone(), record));
        }

        let mut element_updates = Vec::with_capacity(touched.len());
        for key in touched {
            let before = self.elements.get(&key);
            let mut after: Owners = before.cloned().unwrap_or_default();
            after.retain(|owner, _| !changes.changed.contains(owner));
            for (name, value) in wanted.remove(&key).unwrap_or_default() {
                after.insert(name.clone(), value);
            }
            let old_value = effective(before);
            let new_value = effective(Some(&after));
            match (old_value, new_value) {
                (None, Some(v)) => tx.add_element(key.0, &key.1, v),
                (Some(_), None) => tx.delete_element(key.0, &key.1),
                (Some(o), Some(v)) if o != v => {
                    tx.delete_element(key.0, &key.1);
                    tx.add_element(key.0, &key.1, v);
                }
                _ => {}
            }
            element_updates.push((key, (!after.is_empty()).then_some(after)));
        }

        stale.write(&mut tx);

        let lines = tx.lines();
        Plan {
            mode: SyncMode::Partial,
            text: tx.into_text(),
            lines,
            ports_written: records.len() as u64,
            replace_all: false,
            skeleton_rules: self.skeleton_rules,
            ports: records,
            elements: element_updates,
        }
    }

    /// Takes in a plan the kernel has accepted.
    pub fn apply(&mut self, plan: Plan) {
        if plan.replace_all {
            self.ports.clear();
            self.elements.clear();
        }
        self.skeleton_rules = plan.skeleton_rules;
        for (name, record) in plan.ports {
            match record {
                Some(r) => {
                    self.ports.insert(name, r);
                }
                None => {
                    self.ports.remove(&name);
                }
            }
        }
        for (key, owners) in plan.elements {
            match owners {
                Some(o) => {
                    self.elements.insert(key, o);
                }
                None => {
                    self.elements.remove(&key);
                }
            }
        }
    }
}

/// A rough size of a full transaction, so its text is allocated once.
fn estimate_bytes(state: &ProxyState) -> usize {
    8192 + state.services.len() * 1024 + state.endpoint_count() * 400
}

fn record_of(objs: &PortObjects) -> PortRecord {
    PortRecord {
        chains: objs.chains.iter().map(|c| c.name.clone()).collect(),
        sets: objs.sets.clone(),
        rules: objs.rule_count() as u64,
        elements: objs
            .elements
            .iter()
            .map(|e| (e.container, e.key.clone()))
            .collect(),
    }
}

/// One port's sets, then its chains (created and emptied before any rule,
/// since rules jump between them), then their rules. Chains `keep` accepts
/// are already in the kernel as they should be and are left alone.
fn write_port(tx: &mut Tx, objs: &PortObjects, keep: impl Fn(&Chain) -> bool) {
    for set in &objs.sets {
        tx.add_affinity_set(set);
    }
    let rewrite: Vec<&Chain> = objs.chains.iter().filter(|c| !keep(c)).collect();
    for chain in &rewrite {
        tx.ensure_chain(&chain.name);
    }
    for chain in &rewrite {
        for rule in &chain.rules {
            tx.add_rule(&chain.name, rule);
        }
    }
}

/// Chains and sets the kernel has that the new state no longer needs.
#[derive(Debug, Default)]
struct Stale<'a> {
    chains: Vec<&'a str>,
    sets: Vec<&'a str>,
}

impl<'a> Stale<'a> {
    /// A port's objects are named after the port, so only its own new
    /// record can still hold them.
    fn add(&mut self, old: &'a PortRecord, new: Option<&PortRecord>) {
        let kept_chain = |c: &str| new.is_some_and(|n| n.chains.iter().any(|x| x == c));
        let kept_set = |s: &str| new.is_some_and(|n| n.sets.iter().any(|x| x.name == s));
        self.chains.extend(
            old.chains
                .iter()
                .map(String::as_str)
                .filter(|c| !kept_chain(c)),
        );
        self.sets.extend(
            old.sets
                .iter()
                .map(|s| s.name.as_str())
                .filter(|s| !kept_set(s)),
        );
    }

    /// Empties the chains first (they may refer to each other and to the
    /// sets), then deletes. By now no map element points at them.
    fn write(mut self, tx: &mut Tx) {
        self.chains.sort_unstable();
        self.sets.sort_unstable();
        for c in &self.chains {
            tx.flush_chain(c);
        }
        for s in &self.sets {
            tx.delete_set(s);
        }
        for c in &self.chains {
            tx.delete_chain(c);
        }
    }
}
