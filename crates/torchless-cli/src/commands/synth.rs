//! `torchless synth`: being written (issue 7).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output model file.
    pub output: PathBuf,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("synth {} is not available yet", args.output.display())
}
