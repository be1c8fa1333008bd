//! Proxy ports: each listener takes a free port of a fixed range in the
//! node's namespace (kube-proxy's `--proxy-port-range`). Ports are handed out
//! in rotation, so a port just released (whose old conntrack entries may
//! still point at it) is the last to be used again.

use std::collections::BTreeSet;
use std::io;
use std::ops::RangeInclusive;

/// The default range: 18000 ports, below the NodePort range (30000-32767)
/// and the kernel's default ephemeral range (32768-60999), so listeners
/// never take ports that outgoing connections and UDP sessions need, and
/// above the agent's own ports (kube-proxy's 10249 and 10256).
pub const DEFAULT_RANGE: RangeInclusive<u16> = 12000..=29999;

#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    cursor: u16,
    taken: BTreeSet<u16>,
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        PortAllocator {
            cursor: *range.start(),
            range,
            taken: BTreeSet::new(),
        }
    }

    /// Binds the first port from the cursor on that is neither ours already
    /// nor in use by someone else (`bind` fails with `AddrInUse`), and
    /// returns it with what `bind` made.
    pub fn allocate<T>(
        &mut self,
        mut bind: impl FnMut(u16) -> io::Result<T>,
    ) -> io::Result<(u16, T)> {
        let size = usize::from(self.range.end() - self.range.start()) + 1;
        for _ in 0..size {
            let port = self.cursor;
            self.cursor = if port == *self.range.end() {
                *self.range.start()
            } else {
                port + 1
            };
            if self.taken.contains(&port) {
                continue;
            }
            match bind(port) {
                Ok(v) => {
                    self.taken.insert(port);
                    return Ok((port, v));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "every proxy port in {}-{} is in use",
                self.range.start(),
                self.range.end()
            ),
        ))
    }

    pub fn release(&mut self, port: u16) {
        self.taken.remove(&port);
    }

    pub fn in_use(&self) -> usize {
        self.taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(port: u16) -> io::Result<u16> {
        Ok(port)
    }

    #[test]
    fn hands_out_in_rotation_and_skips_busy_ports() {
        let mut a = PortAllocator::new(100..=103);
        assert_eq!(a.allocate(ok).unwrap().0, 100);
        // 101 is held by another program.
        let busy = |p: u16| {
            if p == 101 {
                Err(io::Error::from(io::ErrorKind::AddrInUse))
            } else {
                Ok(p)
            }
        };
        assert_eq!(a.allocate(busy).unwrap().0, 102);
        a.release(100);
        // The cursor goes on; 100 comes back only after the rest.
        assert_eq!(a.allocate(ok).unwrap().0, 103);
        assert_eq!(a.allocate(ok).unwrap().0, 100);
        assert_eq!(a.allocate(ok).unwrap().0, 101);
        assert_eq!(a.in_use(), 4);
        let err = a.allocate(ok).unwrap_err();
        assert!(err.to_string().contains("100-103"), "{err}");
    }

    #[test]
    fn other_bind_errors_stop_the_search() {
        let mut a = PortAllocator::new(100..=103);
        let err = a
            .allocate(|_| Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied)))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(a.in_use(), 0);
    }
}
