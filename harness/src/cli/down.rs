//! `svclab down`

use clap::Args;

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The lab's run id, 4 hex digits (default: the only lab on this host;
    /// see `svclab ls`).
    #[arg(long = "run", value_name = "RUN")]
    pub run_flag: Option<String>,
    /// The run id as a positional argument (kept for compatibility; same as
    /// --run).
    #[arg(value_name = "RUN", conflicts_with = "run_flag", hide = true)]
    pub run: Option<String>,
}

impl DownArgs {
    pub fn run(&self) -> Option<&str> {
        self.run_flag.as_deref().or(self.run.as_deref())
    }
}
