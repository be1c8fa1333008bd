//! What the backend has programmed, per service port: its chains (so a
//! partial sync can delete the stale ones without running iptables-save)
//! and its rendered top-level rules (so a partial sync copies the rules of
//! unchanged service ports instead of rendering them again).

use std::collections::BTreeMap;

use serde_json::json;

use super::names::{Chain, ChainKind, FILTER_TOP, NAT_TOP, ServiceChains};
use crate::model::ServicePortName;

/// What one service port contributes to the ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The hash its KUBE-SVC/SVL/EXT chains share.
    pub chains_id: ServiceChains,
    /// Its KUBE-SVC/SVL/EXT/SEP chains, sorted.
    pub chains: Vec<Chain>,
    /// Rules in those chains.
    pub chain_rules: u64,
    /// Digest of the text of those chains, as last written.
    pub digest: u64,
    /// Its rules in the nat top-level chains (KUBE-SERVICES, KUBE-NODEPORTS).
    pub nat_top: String,
    pub nat_top_rules: u64,
    /// Its rules in the filter chains (REJECT/DROP, health check ACCEPT).
    pub filter: String,
    pub filter_rules: u64,
}

/// Rules a sync writes whatever the service ports are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedRules {
    pub nat: u64,
    pub filter: u64,
}

/// How to bring the book up to date after a successful restore.
#[derive(Debug)]
pub enum Update {
    /// Everything was rewritten.
    Full {
        services: BTreeMap<ServicePortName, ServiceEntry>,
        fixed: FixedRules,
        large_cluster: bool,
    },
    /// Only these service ports were rewritten (`None`: removed).
    Partial {
        services: Vec<(ServicePortName, Option<ServiceEntry>)>,
    },
}

/// The programmed state, as far as this backend wrote it.
#[derive(Debug, Default)]
pub struct Book {
    services: BTreeMap<ServicePortName, ServiceEntry>,
    fixed: FixedRules,
    large_cluster: bool,
    synced: bool,
    /// Service chains found in the kernel before the first sync (left by an
    /// earlier run); the next full sync deletes them.
    orphans: Vec<Chain>,
}

impl Book {
    pub fn services(&self) -> &BTreeMap<ServicePortName, ServiceEntry> {
        &self.services
    }

    /// Whether a full sync has succeeded since the book was created or
    /// reset; partial syncs need one first.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether the last full sync left out the per-endpoint comments
    /// (kube-proxy's large cluster mode).
    pub fn large_cluster(&self) -> bool {
        self.large_cluster
    }

    pub fn orphans(&self) -> &[Chain] {
        &self.orphans
    }

    pub fn set_orphans(&mut self, orphans: Vec<Chain>) {
        self.orphans = orphans;
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Full {
                services,
                fixed,
                large_cluster,
            } => {
                self.services = services;
                self.fixed = fixed;
                self.large_cluster = large_cluster;
                self.orphans.clear();
            }
            Update::Partial { services } => {
                for (name, entry) in services {
                    match entry {
                        Some(e) => {
                            self.services.insert(name, e);
                        }
                        None => {
                            self.services.remove(&name);
                        }
                    }
                }
            }
        }
        self.synced = true;
    }

    /// Forgets everything (after cleanup).
    pub fn reset(&mut self) {
        *self = Book::default();
    }

    /// Rules now programmed in the backend's chains of both tables.
    pub fn rules(&self) -> u64 {
        self.fixed.nat
            + self.fixed.filter
            + self
                .services
                .values()
                .map(|e| e.chain_rules + e.nat_top_rules + e.filter_rules)
                .sum::<u64>()
    }

    /// Rule and chain counts per table, and chains per kind, for stats().
    pub fn detail(&self) -> serde_json::Value {
        let mut per_kind: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut nat_rules, mut filter_rules) = (self.fixed.nat, self.fixed.filter);
        for e in self.services.values() {
            for c in &e.chains {
                *per_kind
                    .entry(c.kind().prefix().trim_end_matches('-'))
                    .or_default() += 1;
            }
            nat_rules += e.chain_rules + e.nat_top_rules;
            filter_rules += e.filter_rules;
        }
        let nat_chains: u64 = per_kind.values().sum::<u64>() + NAT_TOP.len() as u64;
        let mut kinds = serde_json::Map::new();
        for kind in ChainKind::ALL {
            let key = kind.prefix().trim_end_matches('-');
            kinds.insert(key.into(), json!(per_kind.get(key).copied().unwrap_or(0)));
        }
        json!({
            "servicePorts": self.services.len(),
            "largeClusterMode": self.large_cluster,
            "nat": {
                "rules": nat_rules,
                "chains": nat_chains,
                "topLevelChains": NAT_TOP.len(),
                "chainsByKind": kinds,
            },
            "filter": {
                "rules": filter_rules,
                "chains": FILTER_TOP.len(),
                "topLevelChains": FILTER_TOP.len(),
            },
        })
    }
}
