//! `torchless recache FILE...`: drops model files from the page cache and reads sample ranges
//! back, so that the kernel caches them in 2 MiB pages (see `torchless_format::recache`). A file
//! just written or downloaded sits in 4 KiB pages, and decoding from a mapping of it is slower
//! (7B Q4_K_M: 3.6-3.8 → 4.5-4.8 tok/s measured); the model commands print a note when they see
//! it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct RecacheArgs {
    /// Model files (any file: nothing is parsed).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: RecacheArgs) -> anyhow::Result<()> {
    for path in &args.files {
        let share = torchless_model::format::recache(path).context("cannot recache")?;
        match share {
            Some(s) if s.mostly_small_pages() => println!(
                "{}: dropped from the page cache and read back, still in 4 KiB pages ({} of {} \
                 MiB sampled in 2 MiB pages): this kernel or filesystem does not cache it in \
                 2 MiB pages, so recaching brings nothing here",
                path.display(),
                s.huge_bytes >> 20,
                s.resident_bytes >> 20
            ),
            Some(s) => println!(
                "{}: dropped from the page cache and read back in 2 MiB pages ({} of {} MiB \
                 sampled)",
                path.display(),
                s.huge_bytes >> 20,
                s.resident_bytes >> 20
            ),
            None => println!(
                "{}: dropped from the page cache (page sizes not measurable here)",
                path.display()
            ),
        }
    }
    Ok(())
}
