//! Every exit path removes what the run made: Ctrl-C, SIGTERM, SIGHUP and
//! panics clean up every live run of this process before it ends. (A
//! SIGKILLed run is found later by `svclab cleanup` through its state file
//! and its namespaces' prefix.)

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::topology::RunId;

static RUNS: Mutex<Vec<RunId>> = Mutex::new(Vec::new());
static STOPPING: AtomicBool = AtomicBool::new(false);
/// The first stop signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Commands that wind down on their own after a stop signal (see [`cooperate`]).
static COOPERATING: AtomicUsize = AtomicUsize::new(0);
/// Carries the stop signal to whoever awaits [`stopped`].
static STOP: LazyLock<tokio::sync::watch::Sender<i32>> =
    LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// How long a cooperating command may take to wind down after a stop
/// signal (cancel its checks, tear its lab down, mark its results) before
/// the signal handler removes everything itself and exits.
pub const WIND_DOWN_GRACE: Duration = Duration::from_secs(45);

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

/// While one of these lives, a stop signal does not tear the process down
/// at once: the holder notices [`stopped`], winds down (no new check, no
/// verdict for an unfinished one, its lab removed, its results marked) and
/// drops it; the handler waits for that, up to [`WIND_DOWN_GRACE`] or a
/// second signal.
pub struct Cooperation(());

pub fn cooperate() -> Cooperation {
    COOPERATING.fetch_add(1, Ordering::SeqCst);
    Cooperation(())
}

impl Drop for Cooperation {
    fn drop(&mut self) {
        COOPERATING.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn register(run: &RunId) {
    RUNS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(run.clone());
}

pub fn unregister(run: &RunId) {
    RUNS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|r| r != run);
}

/// Removes every registered run; safe to call more than once.
pub fn cleanup_registered() {
    let runs: Vec<RunId> = RUNS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for run in runs {
        let mut report = crate::cleanup::CleanupReport::default();
        crate::cleanup::cleanup_run(&run, true, &mut report);
        for e in &report.errors {
            tracing::error!("svclab: cleanup of run {run}: {e}");
        }
    }
}

/// Removes one run and forgets it.
pub fn cleanup_registered_run(run: &RunId) {
    let mut report = crate::cleanup::CleanupReport::default();
    crate::cleanup::cleanup_run(run, true, &mut report);
    for e in &report.errors {
        tracing::error!("svclab: cleanup of run {run}: {e}");
    }
    unregister(run);
}

/// Installs the panic hook and the signal handlers (on `rt`).
pub fn install(rt: &tokio::runtime::Handle) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        STOPPING.store(true, Ordering::SeqCst);
        cleanup_registered();
    }));
    rt.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        let sig = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        record_stop(sig);
        let code = 128 + stop_signal().unwrap_or(sig);
        if COOPERATING.load(Ordering::SeqCst) > 0 {
            tracing::warn!(
                "svclab: interrupted ({}); winding down and removing the lab",
                signal_name(sig)
            );
            let deadline = tokio::time::Instant::now() + WIND_DOWN_GRACE;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = int.recv() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tick.tick() => {
                        if COOPERATING.load(Ordering::SeqCst) == 0 {
                            // The command wound down and returns its exit
                            // code itself; this is only the fallback.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            break;
                        }
                    }
                }
            }
        } else if !RUNS.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            tracing::warn!("svclab: interrupted; removing the lab");
        }
        cleanup_registered();
        // A namespace being created right now finishes within milliseconds
        // and no new one starts (see `stopping`); sweep once more.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        cleanup_registered();
        std::process::exit(code);
    });
}
