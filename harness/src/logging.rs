//! Diagnostics on stderr, through `tracing`.
//!
//! What a command reports (tables, reports, JSON) goes to stdout with
//! `println!`; everything else (progress, warnings, what an agent is doing)
//! is a `tracing` event on stderr. The level comes from `SVCLAB_LOG` (an
//! [`EnvFilter`] directive, e.g. `debug` or `svclab::agent=trace`) or else
//! from the number of `-v` flags:
//!
//! | flags | svclab's own events | other crates' events |
//! |---|---|---|
//! | (none) | info and above | warnings and errors |
//! | `-v` | debug and above | info and above |
//! | `-vv` | everything (trace) | debug and above |
//!
//! Warnings and info lines are printed as their bare message, as the
//! progress lines always were; debug and trace lines say their level and
//! where they come from. The filter in effect is put into `SVCLAB_LOG` for
//! the processes svclab starts (agents, the pods' servers, a detached lab),
//! which log to files in the run folder.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable holding the filter.
pub const ENV: &str = "SVCLAB_LOG";

/// The filter for `verbose` `-v` flags when `SVCLAB_LOG` is not set.
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn,svclab=info,svclab_backends=info",
        1 => "info,svclab=debug,svclab_backends=debug",
        _ => "debug,svclab=trace,svclab_backends=trace",
    }
}

/// The filter directive in effect: `SVCLAB_LOG` if it is set and valid,
/// else the one `-v` picks. A bad `SVCLAB_LOG` is said, not fatal.
fn directive(verbose: u8) -> (String, Option<String>) {
    match std::env::var(ENV) {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(_) => (s, None),
            Err(e) => (
                default_filter(verbose).to_string(),
                Some(format!("svclab: ignoring {ENV}={s:?}: {e}")),
            ),
        },
        _ => (default_filter(verbose).to_string(), None),
    }
}

/// Installs the stderr subscriber and passes the filter on to children.
///
/// Call it first thing in `main`, before any thread starts: it sets an
/// environment variable.
pub fn init(verbose: u8) {
    let (directive, complaint) = directive(verbose);
    if std::env::var(ENV).ok().as_deref() != Some(directive.as_str()) {
        // SAFETY: called from `main` before any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(ENV, &directive) };
    }
    let filter =
        EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new(default_filter(verbose)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Plain)
        .try_init();
    if let Some(c) = complaint {
        tracing::warn!("{c}");
    }
}

/// Bare messages at info and above (as the progress lines always looked),
/// `debug target: message` below; other crates' events name their crate.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let level = *meta.level();
        let ours = meta.target().starts_with("svclab");
        if level > Level::INFO {
            write!(
                writer,
                "{} {}: ",
                level.as_str().to_lowercase(),
                meta.target()
            )?;
        } else if !ours {
            write!(writer, "{}: ", meta.target())?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_filter_parses() {
        for v in 0..4 {
            EnvFilter::try_new(default_filter(v)).unwrap();
        }
    }
}
