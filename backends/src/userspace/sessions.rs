//! The UDP sessions of one service port: which client talks to which
//! endpoint through which upstream socket, and when each last carried a
//! datagram. The relay in [`super::udp`] creates and ends them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::policy::{Front, Pool};

pub(super) type Key = (Front, SocketAddr);

/// The live sessions of one service port.
#[derive(Debug, Default)]
pub struct Sessions {
    pub(super) map: Mutex<HashMap<Key, Session>>,
    pub(super) next_id: AtomicU64,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) pool: Pool,
    pub(super) endpoint: SocketAddr,
    pub(super) upstream: Arc<UdpSocket>,
    pub(super) activity: Arc<Activity>,
    pub(super) task: AbortHandle,
}

impl Sessions {
    /// Ends every session whose endpoint `keep` rejects; returns how many.
    pub fn retain(&self, keep: impl Fn(Pool, SocketAddr) -> bool) -> usize {
        let mut map = self.map.lock().expect("sessions lock");
        let before = map.len();
        map.retain(|_, s| {
            let kept = keep(s.pool, s.endpoint);
            if !kept {
                s.task.abort();
            }
            kept
        });
        before - map.len()
    }

    /// Ends every session.
    pub fn clear(&self) {
        self.retain(|_, _| false);
    }

    /// Sessions alive now.
    pub fn live(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub(super) fn remove(&self, key: Key, id: u64) {
        let mut map = self.map.lock().expect("sessions lock");
        if map.get(&key).is_some_and(|s| s.id == id) {
            map.remove(&key);
        }
    }
}

/// When a session last carried a datagram.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub(super) fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}
