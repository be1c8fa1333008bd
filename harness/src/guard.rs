//! Every exit path removes what the run made: Ctrl-C, SIGTERM, SIGHUP and
//! panics clean up every live run of this process before it ends. (A
//! SIGKILLed run is found later by `svclab cleanup` through its state file
//! and its namespaces' prefix.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::topology::RunId;

static RUNS: Mutex<Vec<RunId>> = Mutex::new(Vec::new());
static STOPPING: AtomicBool = AtomicBool::new(false);

/// True once the process is shutting down: nothing new may be created.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
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
            eprintln!("svclab: cleanup of run {run}: {e}");
        }
    }
}

/// Removes one run and forgets it.
pub fn cleanup_registered_run(run: &RunId) {
    let mut report = crate::cleanup::CleanupReport::default();
    crate::cleanup::cleanup_run(run, true, &mut report);
    for e in &report.errors {
        eprintln!("svclab: cleanup of run {run}: {e}");
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
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
            _ = hup.recv() => 129,
        };
        STOPPING.store(true, Ordering::SeqCst);
        let live = !RUNS.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if live {
            eprintln!("svclab: interrupted; removing the lab");
        }
        cleanup_registered();
        // A namespace being created right now finishes within milliseconds
        // and no new one starts (see `stopping`); sweep once more.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        cleanup_registered();
        std::process::exit(code);
    });
}
