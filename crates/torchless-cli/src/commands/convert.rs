//! `torchless convert HF_DIR OUT.bin`: being written (issue 7).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Hugging Face checkpoint directory.
    pub input: PathBuf,
    /// Output model file.
    pub output: PathBuf,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    anyhow::bail!("convert {} is not available yet", args.input.display())
}
