//! The kernel's maps, owned by the backend once the programs are loaded.

use std::collections::BTreeSet;
use std::io;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, MapError};

use super::abi::{Backend, BackendKey, CtKey, CtVal, MemberKey, SvcKey, SvcStats, SvcVal};
use super::flows;
use super::sync::{MapOpError, Maps};

pub struct KernelMaps {
    services: HashMap<MapData, SvcKey, SvcVal>,
    backends: HashMap<MapData, BackendKey, Backend>,
    members: HashMap<MapData, MemberKey, u8>,
    conntrack: HashMap<MapData, CtKey, CtVal>,
    stats: Array<MapData, SvcStats>,
}

fn op_error(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapOpError {
    move |e| MapOpError {
        map,
        op,
        source: match e {
            MapError::SyscallError(s) => s.io_error,
            other => io::Error::other(other.to_string()),
        },
    }
}

/// A deletion of something already gone is not an error: a failed sync
/// may have left only part of a port behind.
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        other => other,
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, MapOpError> {
    let map = ebpf.take_map(name).ok_or_else(|| MapOpError {
        map: name,
        op: "finding",
        source: io::Error::new(io::ErrorKind::NotFound, "not in the BPF object"),
    })?;
    T::try_from(map).map_err(op_error(name, "opening"))
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapOpError> {
        Ok(KernelMaps {
            services: take(ebpf, "services")?,
            backends: take(ebpf, "backends")?,
            members: take(ebpf, "members")?,
            conntrack: take(ebpf, "conntrack")?,
            stats: take(ebpf, "stats")?,
        })
    }

    /// A service id's counters.
    pub fn counters(&self, id: u32) -> Result<SvcStats, MapOpError> {
        self.stats.get(&id, 0).map_err(op_error("stats", "reading"))
    }

    /// Deletes the conntrack entries of connections to `stale` endpoints
    /// (per service id). Returns how many were deleted.
    pub fn flush_flows(&mut self, stale: &BTreeSet<(u32, Backend)>) -> Result<usize, MapOpError> {
        if stale.is_empty() {
            return Ok(0);
        }
        // Keys first: deleting while walking restarts the kernel's walk.
        let mut doomed = Vec::new();
        for entry in self.conntrack.iter() {
            let (k, v) = match entry {
                Ok(kv) => kv,
                // Evicted between listing and reading: nothing to delete.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(op_error("conntrack", "walking")(e)),
            };
            if flows::is_stale(&k, &v, stale) {
                doomed.push(k);
            }
        }
        for k in &doomed {
            absent_ok(self.conntrack.remove(k)).map_err(op_error("conntrack", "deleting"))?;
        }
        Ok(doomed.len())
    }
}

impl Maps for KernelMaps {
    fn put_service(&mut self, k: &SvcKey, v: &SvcVal) -> Result<(), MapOpError> {
        self.services
            .insert(k, v, 0)
            .map_err(op_error("services", "updating"))
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<(), MapOpError> {
        absent_ok(self.services.remove(k)).map_err(op_error("services", "deleting"))
    }
    fn put_backend(&mut self, k: &BackendKey, v: &Backend) -> Result<(), MapOpError> {
        self.backends
            .insert(k, v, 0)
            .map_err(op_error("backends", "updating"))
    }
    fn del_backend(&mut self, k: &BackendKey) -> Result<(), MapOpError> {
        absent_ok(self.backends.remove(k)).map_err(op_error("backends", "deleting"))
    }
    fn put_member(&mut self, k: &MemberKey) -> Result<(), MapOpError> {
        self.members
            .insert(k, 1, 0)
            .map_err(op_error("members", "updating"))
    }
    fn del_member(&mut self, k: &MemberKey) -> Result<(), MapOpError> {
        absent_ok(self.members.remove(k)).map_err(op_error("members", "deleting"))
    }
    fn reset_stats(&mut self, id: u32) -> Result<(), MapOpError> {
        self.stats
            .set(id, SvcStats::default(), 0)
            .map_err(op_error("stats", "zeroing"))
    }
}
