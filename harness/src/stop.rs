//! The process-wide stop flag: set once a stop signal (SIGINT, SIGTERM,
//! SIGHUP) arrives or a panic starts tearing the process down. It sits
//! below everything that creates something (namespaces first), so that
//! nothing new starts after it is set; [`crate::guard`] sets it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOPPING: AtomicBool = AtomicBool::new(false);
/// The first stop signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Carries the stop signal to whoever awaits [`stopped`].
static STOP: LazyLock<tokio::sync::watch::Sender<i32>> =
    LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// True once the process is shutting down: nothing new may be created.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// The stop signal (SIGINT, SIGTERM, SIGHUP) received, if any.
pub fn stop_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit code a stopped process ends with: 128 + the signal.
pub fn exit_code() -> Option<u8> {
    stop_signal().map(|s| (128 + s) as u8)
}

/// `SIGINT`, `SIGTERM`, `SIGHUP`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Records a stop signal (the first one wins) and wakes [`stopped`].
pub fn record_stop(sig: i32) {
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    STOPPING.store(true, Ordering::SeqCst);
    STOP.send_replace(SIGNAL.load(Ordering::SeqCst));
}

/// Resolves once a stop signal has arrived (at once if one already has),
/// with the signal.
pub async fn stopped() -> i32 {
    let mut rx = STOP.subscribe();
    match rx.wait_for(|s| *s != 0).await {
        Ok(s) => *s,
        // The sender is a static: it is never dropped.
        Err(_) => std::future::pending().await,
    }
}

/// Marks the process as shutting down without a signal (a panic).
pub fn mark_stopping() {
    STOPPING.store(true, Ordering::SeqCst);
}
