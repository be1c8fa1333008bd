//! Every exit path removes what the run made: Ctrl-C, SIGTERM, SIGHUP and
//! panics clean up every live run of this process before it ends. (A
//! SIGKILLed run is found later by `svclab cleanup` through its state file
//! and its namespaces' prefix.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::stop::{record_stop, signal_name, stop_signal};
use crate::topology::RunId;

static RUNS: Mutex<Vec<RunId>> = Mutex::new(Vec::new());
/// Commands that wind down on their own after a stop signal (see [`cooperate`]).
static COOPERATING: AtomicUsize = AtomicUsize::new(0);

/// How long a cooperating command may take to wind down after a stop
/// signal (cancel its checks, tear its lab down, mark its results) before
/// the signal handler removes everything itself and exits.
pub const WIND_DOWN_GRACE: Duration = Duration::from_secs(45);

/// While one of these lives, a stop signal does not tear the process down
/// at once: the holder notices [`crate::stop::stopped`], winds down (no new check, no
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
        crate::stop::mark_stopping();
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
