//! Turning plans into map updates, and remembering what is programmed so
//! that a sync writes only what changed.
//!
//! A Service never looks half-updated to a packet: new endpoint sets go
//! into the generation of backend slots the Service does not use, then each
//! service entry flips to it in one map update, and only then are the old
//! slots deleted.

use std::collections::{BTreeMap, BTreeSet};

use super::abi::{self, Backend, BackendKey, MemberKey, SvcKey, SvcVal};
use super::plan::ServicePlan;
use crate::model::{Protocol, ServicePortName};

/// One map operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} in BPF map `{map}`: {source}")]
pub struct MapOpError {
    pub map: &'static str,
    pub op: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The maps a sync writes. The kernel's are in `maps.rs`; tests use a
/// recording double.
pub trait Maps {
    fn put_service(&mut self, k: &SvcKey, v: &SvcVal) -> Result<(), MapOpError>;
    fn del_service(&mut self, k: &SvcKey) -> Result<(), MapOpError>;
    fn put_backend(&mut self, k: &BackendKey, v: &Backend) -> Result<(), MapOpError>;
    fn del_backend(&mut self, k: &BackendKey) -> Result<(), MapOpError>;
    fn put_member(&mut self, k: &MemberKey) -> Result<(), MapOpError>;
    fn del_member(&mut self, k: &MemberKey) -> Result<(), MapOpError>;
    /// Zeroes a service id's counters before the id is used again.
    fn reset_stats(&mut self, id: u32) -> Result<(), MapOpError>;
}

#[derive(Debug, thiserror::Error)]
#[error("Service port {service}: {source}")]
pub struct SyncError {
    pub service: String,
    #[source]
    pub source: MapOpError,
}

/// A service port as programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub id: u32,
    /// The live backend slot generation.
    pub generation: u8,
    pub plan: ServicePlan,
}

/// What the maps hold, per service port.
#[derive(Debug, Default)]
pub struct Book {
    services: BTreeMap<ServicePortName, Programmed>,
    free_ids: Vec<u32>,
    next_id: u32,
    /// Ids of ports deleted in the current sync, reusable after it.
    released: Vec<u32>,
    /// Kept up to date, so a partial sync costs nothing per other port.
    entries: u64,
}

/// The map entries one programmed port holds.
fn entries_of(p: &Programmed) -> u64 {
    let sets: usize = p.plan.sets.iter().map(Vec::len).sum();
    let members = if p.plan.affinity_seconds > 0 { sets } else { 0 };
    (p.plan.entries.len() + sets + members) as u64
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Map updates and deletions.
    pub written: u64,
    /// UDP endpoints a service id no longer uses: their flows are stale.
    pub stale_udp: BTreeSet<(u32, Backend)>,
}

impl Book {
    pub fn get(&self, name: &ServicePortName) -> Option<&Programmed> {
        self.services.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ServicePortName, &Programmed)> {
        self.services.iter()
    }

    pub fn names(&self) -> impl Iterator<Item = &ServicePortName> {
        self.services.keys()
    }

    /// Map entries programmed: service entries, backend slots, members.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Brings `name` to `desired` (None: not programmed). On an error the
    /// port is taken out of the maps as far as possible and forgotten, so
    /// the next sync programs it from scratch.
    pub fn apply(
        &mut self,
        maps: &mut dyn Maps,
        name: &ServicePortName,
        desired: Option<&ServicePlan>,
        out: &mut Applied,
    ) -> Result<(), SyncError> {
        let current = self.services.get(name).cloned();
        if current.as_ref().map(|c| &c.plan) == desired {
            return Ok(());
        }
        self.entries -= current.as_ref().map_or(0, entries_of);
        let result = self.change(maps, name, current.as_ref(), desired, out);
        self.entries += self.services.get(name).map_or(0, entries_of);
        result
    }

    fn change(
        &mut self,
        maps: &mut dyn Maps,
        name: &ServicePortName,
        current: Option<&Programmed>,
        desired: Option<&ServicePlan>,
        out: &mut Applied,
    ) -> Result<(), SyncError> {
        let result = match (current, desired) {
            (None, None) => Ok(()),
            (None, Some(plan)) => self.create(maps, name, plan, out),
            (Some(cur), None) => {
                self.services.remove(name);
                self.released.push(cur.id);
                remove(maps, cur, out)
            }
            (Some(cur), Some(plan)) => update(maps, cur, plan, out).map(|generation| {
                self.services.insert(
                    name.clone(),
                    Programmed {
                        id: cur.id,
                        generation,
                        plan: plan.clone(),
                    },
                );
            }),
        };
        if let Some(cur) = current
            && name.protocol == Protocol::Udp
        {
            let now = desired.map(ServicePlan::endpoints).unwrap_or_default();
            for ep in cur
                .plan
                .endpoints()
                .into_iter()
                .filter(|e| !now.contains(e))
            {
                out.stale_udp.insert((cur.id, ep));
            }
        }
        result.map_err(|source| {
            if let Some(p) = self.services.remove(name) {
                purge(
                    maps,
                    p.id,
                    [Some(&p.plan), current.map(|c| &c.plan), desired],
                );
                self.released.push(p.id);
            }
            SyncError {
                service: name.to_string(),
                source,
            }
        })
    }

    /// Makes the ids of ports deleted in this sync available again. Called
    /// after the sync's stale flows are gone, so no flow of a deleted port
    /// is mistaken for one of a new port with its id.
    pub fn release_ids(&mut self) {
        self.free_ids.append(&mut self.released);
    }

    fn create(
        &mut self,
        maps: &mut dyn Maps,
        name: &ServicePortName,
        plan: &ServicePlan,
        out: &mut Applied,
    ) -> Result<(), MapOpError> {
        let Some(id) = self.free_ids.pop().or_else(|| {
            (self.next_id < abi::MAX_SERVICE_IDS).then(|| {
                self.next_id += 1;
                self.next_id - 1
            })
        }) else {
            // Surfaced as a map error: the stats array is what is full.
            return Err(MapOpError {
                map: "stats",
                op: "allocating a service id",
                source: std::io::Error::other(format!(
                    "all {} service ids are in use",
                    abi::MAX_SERVICE_IDS
                )),
            });
        };
        let p = Programmed {
            id,
            generation: 0,
            plan: plan.clone(),
        };
        self.services.insert(name.clone(), p.clone());
        maps.reset_stats(id)?;
        out.written += 1;
        write_sets(maps, id, 0, plan, out)?;
        for m in members(id, plan) {
            maps.put_member(&m)?;
            out.written += 1;
        }
        write_entries(maps, &p, out)
    }
}

fn val(p: &Programmed, flags: u8) -> SvcVal {
    SvcVal {
        id: p.id,
        count: [p.plan.sets[0].len() as u16, p.plan.sets[1].len() as u16],
        affinity_seconds: p.plan.affinity_seconds,
        generation: p.generation,
        flags,
        pad: 0,
    }
}

fn write_sets(
    maps: &mut dyn Maps,
    id: u32,
    generation: u8,
    plan: &ServicePlan,
    out: &mut Applied,
) -> Result<(), MapOpError> {
    for (set, eps) in [abi::SET_CLUSTER, abi::SET_LOCAL]
        .into_iter()
        .zip(&plan.sets)
    {
        for (i, b) in eps.iter().enumerate() {
            maps.put_backend(&BackendKey::new(id, generation, set, i), b)?;
            out.written += 1;
        }
    }
    Ok(())
}

fn delete_sets(
    maps: &mut dyn Maps,
    id: u32,
    generation: u8,
    plan: &ServicePlan,
    out: &mut Applied,
) -> Result<(), MapOpError> {
    for (set, eps) in [abi::SET_CLUSTER, abi::SET_LOCAL]
        .into_iter()
        .zip(&plan.sets)
    {
        for i in 0..eps.len() {
            maps.del_backend(&BackendKey::new(id, generation, set, i))?;
            out.written += 1;
        }
    }
    Ok(())
}

fn write_entries(maps: &mut dyn Maps, p: &Programmed, out: &mut Applied) -> Result<(), MapOpError> {
    for (k, flags) in &p.plan.entries {
        maps.put_service(k, &val(p, *flags))?;
        out.written += 1;
    }
    Ok(())
}

/// Membership entries, only for ClientIP affinity ports (the programs
/// check a remembered endpoint against them).
fn members(id: u32, plan: &ServicePlan) -> BTreeSet<MemberKey> {
    if plan.affinity_seconds == 0 {
        return BTreeSet::new();
    }
    [abi::SET_CLUSTER, abi::SET_LOCAL]
        .into_iter()
        .zip(&plan.sets)
        .flat_map(|(set, eps)| {
            eps.iter().map(move |b| MemberKey {
                svc_id: id,
                addr: b.addr,
                port: b.port,
                set,
                pad: 0,
            })
        })
        .collect()
}

/// Returns the generation now live.
fn update(
    maps: &mut dyn Maps,
    cur: &Programmed,
    plan: &ServicePlan,
    out: &mut Applied,
) -> Result<u8, MapOpError> {
    let sets_changed = cur.plan.sets != plan.sets;
    let generation = if sets_changed {
        1 - cur.generation
    } else {
        cur.generation
    };
    if sets_changed {
        write_sets(maps, cur.id, generation, plan, out)?;
    }
    let old_members = members(cur.id, &cur.plan);
    let new_members = members(cur.id, plan);
    for m in new_members.difference(&old_members) {
        maps.put_member(m)?;
        out.written += 1;
    }
    let next = Programmed {
        id: cur.id,
        generation,
        plan: plan.clone(),
    };
    write_entries(maps, &next, out)?;
    for k in cur
        .plan
        .entries
        .keys()
        .filter(|k| !plan.entries.contains_key(k))
    {
        maps.del_service(k)?;
        out.written += 1;
    }
    if sets_changed {
        delete_sets(maps, cur.id, cur.generation, &cur.plan, out)?;
    }
    for m in old_members.difference(&new_members) {
        maps.del_member(m)?;
        out.written += 1;
    }
    Ok(generation)
}

/// Deletes whatever any of `plans` may have left under `id`, in both
/// generations, ignoring errors: the cleanup after a failed update.
fn purge(maps: &mut dyn Maps, id: u32, plans: [Option<&ServicePlan>; 3]) {
    for plan in plans.into_iter().flatten() {
        for k in plan.entries.keys() {
            let _ = maps.del_service(k);
        }
        for generation in 0..2 {
            let _ = delete_sets(maps, id, generation, plan, &mut Applied::default());
        }
        for m in members(id, plan) {
            let _ = maps.del_member(&m);
        }
    }
}

fn remove(maps: &mut dyn Maps, cur: &Programmed, out: &mut Applied) -> Result<(), MapOpError> {
    for k in cur.plan.entries.keys() {
        maps.del_service(k)?;
        out.written += 1;
    }
    delete_sets(maps, cur.id, cur.generation, &cur.plan, out)?;
    for m in members(cur.id, &cur.plan) {
        maps.del_member(&m)?;
        out.written += 1;
    }
    Ok(())
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
