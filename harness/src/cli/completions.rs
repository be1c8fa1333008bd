//! `svclab completions`

use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Install, e.g.:\n  svclab completions bash > /etc/bash_completion.d/svclab\n  \
                  svclab completions zsh > \"${fpath[1]}/_svclab\"\n  \
                  svclab completions fish > ~/.config/fish/completions/svclab.fish"
)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes the script for `shell` to `out`.
pub fn write(shell: Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    let mut cmd = super::Cli::command();
    let g = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(g, &mut cmd, "svclab", out);
}
