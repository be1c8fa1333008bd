//! Network programming latency as a client sees it: from the moment the
//! control plane emits a change to the first connection that follows it.
//!
//! A watcher in the client pod's namespace starts a bounded probe every
//! `interval`, whether or not earlier ones have finished, so a probe that
//! waits out its timeout does not blind the watcher. The change counts as
//! seen at the start of the earliest probe that showed the new state, once
//! every probe started before that one has finished (a slow earlier probe
//! could still show it first).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use svclab_backends::model::Protocol;
use tokio::sync::mpsc;

use crate::probe::{Outcome, ProbeSpec, run_probe};

/// The new state a change should produce, as one probe sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An echo server answers (a new endpoint or a new Service).
    Answered,
    /// The connection is refused (the last endpoint went: REJECT).
    Refused,
    /// Anything but an answer (a deleted Service's VIP).
    NotAnswered,
}

impl Signal {
    fn shown_by(self, outcome: &Outcome) -> bool {
        match self {
            Signal::Answered => *outcome == Outcome::Answered,
            Signal::Refused => *outcome == Outcome::Refused,
            Signal::NotAnswered => *outcome != Outcome::Answered,
        }
    }
}

/// How to watch.
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    pub target: SocketAddr,
    pub signal: Signal,
    /// The change was emitted at this instant.
    pub since: Instant,
    pub interval: Duration,
    pub probe_timeout: Duration,
    /// No new probe after this; `None` when nothing was seen by then.
    pub deadline: Instant,
}

/// What a watch saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seen {
    /// From the change to the start of the first probe that followed it.
    pub latency: Duration,
    pub probes: u64,
}

/// Runs on the vantage point's runtime (it spawns its probes there).
pub async fn watch(w: Watch) -> Option<Seen> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant, Outcome)>();
    let mut tick = tokio::time::interval(w.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut first: Option<Instant> = None;
    let mut launched = 0u64;
    loop {
        if let Some(b) = first
            && pending.values().all(|start| *start > b)
        {
            return Some(Seen {
                latency: b.saturating_duration_since(w.since),
                probes: launched,
            });
        }
        let launching = first.is_none() && Instant::now() < w.deadline;
        if !launching && pending.is_empty() {
            return None;
        }
        tokio::select! {
            _ = tick.tick(), if launching => {
                let id = launched;
                launched += 1;
                let start = Instant::now();
                pending.insert(id, start);
                let tx = tx.clone();
                let spec = ProbeSpec::new(w.target, Protocol::Tcp, w.probe_timeout);
                tokio::spawn(async move {
                    let r = run_probe(spec).await;
                    let _ = tx.send((id, start, r.outcome));
                });
            }
            Some((id, start, outcome)) = rx.recv() => {
                pending.remove(&id);
                if w.signal.shown_by(&outcome) && first.is_none_or(|b| start < b) {
                    first = Some(start);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_outcomes() {
        assert!(Signal::Answered.shown_by(&Outcome::Answered));
        assert!(!Signal::Answered.shown_by(&Outcome::Refused));
        assert!(Signal::Refused.shown_by(&Outcome::Refused));
        assert!(!Signal::Refused.shown_by(&Outcome::Timeout));
        assert!(Signal::NotAnswered.shown_by(&Outcome::Timeout));
        assert!(!Signal::NotAnswered.shown_by(&Outcome::Answered));
    }

    #[tokio::test]
    async fn a_refusal_is_seen_at_once_and_an_absent_answer_never() {
        // Nothing listens on the port: every probe is refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let since = Instant::now();
        let w = Watch {
            target: addr,
            signal: Signal::Refused,
            since,
            interval: Duration::from_millis(2),
            probe_timeout: Duration::from_millis(200),
            deadline: since + Duration::from_secs(2),
        };
        let seen = watch(w).await.expect("a closed port refuses");
        assert!(seen.latency < Duration::from_millis(100), "{seen:?}");
        let never = Watch {
            signal: Signal::Answered,
            deadline: Instant::now() + Duration::from_millis(50),
            ..w
        };
        assert_eq!(watch(never).await, None);
    }
}
