//! How a mapped model file sits in the page cache: in 2 MiB folios, which a mapping asking for
//! huge pages maps with one page-table entry each, or in 4 KiB pages.
//!
//! A file just written or downloaded is cached in small pages, and a mapping of it stays in 4 KiB
//! pages until those are dropped: decode then streams the weights through 512 times as many
//! page-table entries, with as many more TLB misses (measured on a 2-vCPU Xeon, alternated:
//! 7B Q4_K_M decode 3.59-3.83 tok/s from a fresh copy, 4.51-4.81 once recached). Dropping a
//! file's clean pages loses nothing: the next read brings them back from disk, in 2 MiB folios
//! where the filesystem allows.

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use crate::error::{FormatError, FormatErrorKind};

/// Sample points touched before reading the kernel's figures.
const SAMPLES: usize = 8;
/// A huge page (x86-64, aarch64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// How much of a file mapping is resident in this process, and how much of that is mapped with
/// 2 MiB pages (Linux `/proc/self/smaps`: `Rss`, `FilePmdMapped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugePageShare {
    /// Bytes of the mapping resident in this process.
    pub resident_bytes: u64,
    /// Of those, bytes mapped by 2 MiB page-table entries.
    pub huge_bytes: u64,
}

impl HugePageShare {
    /// Less than half of the resident bytes in 2 MiB pages.
    pub fn mostly_small_pages(&self) -> bool {
        self.huge_bytes.saturating_mul(2) < self.resident_bytes
    }
}

/// Touches `SAMPLES` points spread over `bytes` (a file mapping; each on a 2 MiB boundary of the
/// address space, so that a fault there can map a whole huge page) and reads the mapping's
/// figures. `None` where they cannot be read (not Linux, no `/proc`, mapping not found).
pub(crate) fn sample(bytes: &[u8]) -> Option<HugePageShare> {
    if bytes.is_empty() {
        return None;
    }
    let base = bytes.as_ptr() as usize;
    let mut touched = 0u8;
    for k in 0..SAMPLES {
        let at = base + k * bytes.len() / SAMPLES;
        let aligned = (at & !(HUGE_PAGE - 1)).max(base);
        touched ^= std::hint::black_box(bytes[aligned - base]);
    }
    std::hint::black_box(touched);
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    share_in_smaps(&smaps, base..base + bytes.len())
}

/// Sums `Rss` and `FilePmdMapped` over the mappings of `smaps` (the text of `/proc/self/smaps`)
/// that overlap `range` (a mapping split by `madvise` has several entries).
fn share_in_smaps(smaps: &str, range: std::ops::Range<usize>) -> Option<HugePageShare> {
    let mut share = HugePageShare {
        resident_bytes: 0,
        huge_bytes: 0,
    };
    let (mut inside, mut found) = (false, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = start < range.end && range.start < end;
                found |= inside;
                continue;
            }
        }
        if !inside {
            continue;
        }
        let kib = |field: &str| -> Option<u64> {
            let rest = line.strip_prefix(field)?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        };
        if let Some(k) = kib("Rss:") {
            share.resident_bytes += k * 1024;
        } else if let Some(k) = kib("FilePmdMapped:") {
            share.huge_bytes += k * 1024;
        }
    }
    found.then_some(share)
}

/// Asks the kernel to drop a file's clean pages from the page cache (Linux; elsewhere a no-op).
///
/// Writers call this after syncing a new model file: the pages written sit in small page-cache
/// folios, and once dropped, the first model load reads the file back in 2 MiB folios (see
/// [`ModelFile::open`](crate::ModelFile::open)), which makes mapping and unmapping layers far cheaper.
pub fn evict_from_page_cache(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; an invalid descriptor is
        // reported as an error code, not undefined behaviour.
        let code =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(code));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// Drops the file at `path` from the page cache (its clean pages not mapped by any process), then
/// maps it asking for 2 MiB pages and touches sample points, so that the kernel reads those
/// ranges back: in 2 MiB folios where the kernel and filesystem allow, which every later mapping
/// of the file then gets. Returns the share measured on the samples (`None` where it cannot be
/// read). Pages that another process keeps mapped stay as they are.
pub fn recache(path: impl AsRef<Path>) -> Result<Option<HugePageShare>, FormatError> {
    let path = path.as_ref();
    let err =
        |e: std::io::Error| FormatError::new(path.display().to_string(), FormatErrorKind::Io(e));
    let file = File::open(path).map_err(err)?;
    evict_from_page_cache(&file).map_err(err)?;
    if file.metadata().map_err(err)?.len() == 0 {
        return Ok(None);
    }
    let mmap = map_file(&file, false).map_err(err)?;
    Ok(sample(&mmap))
}

/// Maps `file` read-only, asking for 2 MiB pages (Linux), every page up front with `populate`
/// (`MAP_POPULATE`): how every model file is mapped.
pub(crate) fn map_file(file: &File, populate: bool) -> std::io::Result<Mmap> {
    let mut options = MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: the map is read-only. Undefined behaviour would need another process to truncate or
    // rewrite the file while it is mapped; like every mmap-based loader (llama.cpp, safetensors)
    // we document that model files must not be modified while in use.
    let mmap = unsafe { options.map(file) }?;
    // Let the kernel back this mapping with 2 MiB pages where the page cache holds (or, on a
    // cold read, allocates) 2 MiB folios: far fewer TLB misses when streaming weights, and
    // mapping or dropping a layer costs one page-table entry per 2 MiB instead of 512.
    #[cfg(target_os = "linux")]
    let _ = mmap.advise(memmap2::Advice::HugePage);
    Ok(mmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_entries_overlapping_the_range_are_summed_and_others_ignored() {
        let smaps = "\
7f0000000000-7f0000400000 r--s 00000000 fd:01 12 /models/a.gguf
Size:               4096 kB
Rss:                4096 kB
FilePmdMapped:      2048 kB
7f0000400000-7f0000600000 r--s 00400000 fd:01 12 /models/a.gguf
Rss:                 512 kB
FilePmdMapped:         0 kB
7f0000600000-7f0000800000 rw-p 00000000 00:00 0
Rss:                2048 kB
FilePmdMapped:      2048 kB
";
        let share = share_in_smaps(smaps, 0x7f00_0000_0000..0x7f00_0060_0000).unwrap();
        assert_eq!(
            share,
            HugePageShare {
                resident_bytes: (4096 + 512) * 1024,
                huge_bytes: 2048 * 1024,
            }
        );
        assert!(share.mostly_small_pages());
        assert!(share_in_smaps(smaps, 0x1000..0x2000).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_recached_file_reports_its_resident_samples() {
        let dir = std::env::temp_dir().join(format!("torchless-recache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weights.bin");
        std::fs::write(&path, vec![7u8; 6 << 20]).unwrap();
        let share = recache(&path).unwrap().expect("smaps readable on Linux");
        // Every sample point was touched, so at least one page per sample is resident.
        assert!(share.resident_bytes >= 4096, "{share:?}");
        assert!(share.huge_bytes <= share.resident_bytes);
        let missing = recache(dir.join("missing.bin")).unwrap_err();
        assert!(missing.to_string().contains("missing.bin"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
