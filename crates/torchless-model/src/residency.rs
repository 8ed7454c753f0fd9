//! How weights stay in memory: [`Resident`] (pages stay mapped once used) or [`Lazy`] (each
//! layer's pages are brought in just before it runs and given back right after).
//!
//! A lazy forward pass is a sequence of steps, the layers then the output matrix a chunk of
//! rows at a time ([`PagingPlan`]); a helper thread maps the next step and gives back the
//! previous one while the pass computes the current one ([`PagingPlan::run`]).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use torchless_format::{Config, FormatError, FormatErrorKind, ModelFile, Residency as Advice};

use crate::error::Result;
use crate::weights::{layer_tensor_names, EMBEDDING};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Resident {}
    impl Sealed for super::Lazy {}
}

/// How a model's weights stay in memory. Implemented by [`Resident`] and [`Lazy`] only.
pub trait Residency: sealed::Sealed + Send + Sync + 'static {
    /// Short name for logs (`"resident"` or `"lazy"`).
    const NAME: &'static str;
    /// Whether pages are given back after each layer (and after the output projection).
    const RELEASE_AFTER_USE: bool;
}

/// Weight pages are mapped as they are first used and stay mapped: the fastest mode; after the
/// first token, resident memory is about the file size.
#[derive(Debug, Clone, Copy)]
pub struct Resident;

impl Residency for Resident {
    const NAME: &'static str = "resident";
    const RELEASE_AFTER_USE: bool = false;
}

/// Only the layer being computed is resident: its pages are requested just before it runs and
/// released right after, so resident memory stays around one layer plus the output matrix.
#[derive(Debug, Clone, Copy)]
pub struct Lazy;

impl Residency for Lazy {
    const NAME: &'static str = "lazy";
    const RELEASE_AFTER_USE: bool = true;
}

/// Most bytes of `lm_head` that lazy mode maps at once. It is the largest matrix (524 MB as f32
/// for 7B); mapped whole next to the last layers, it set the peak resident set.
const OUTPUT_CHUNK_BYTES: usize = 64 << 20;

/// Splits `rows` rows totalling `bytes` into consecutive ranges of at most about `max_bytes`
/// each (at least one row per range; one empty range for no rows).
pub(crate) fn split_rows(rows: usize, bytes: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let chunks = bytes.div_ceil(max_bytes.max(1)).clamp(1, rows.max(1));
    let per_chunk = rows.div_ceil(chunks).max(1);
    let mut ranges: Vec<Range<usize>> = (0..rows)
        .step_by(per_chunk)
        .map(|start| start..(start + per_chunk).min(rows))
        .collect();
    if ranges.is_empty() {
        ranges.push(0..0);
    }
    ranges
}

/// The steps of a lazy forward pass, in order: each layer's tensors, then row ranges of the
/// output matrix.
#[derive(Debug)]
pub(crate) struct PagingPlan {
    /// The tensors of each layer (advice goes by name: the file's only handle on a tensor).
    layers: Vec<[String; 9]>,
    /// The output matrix's name.
    output: &'static str,
    /// Row ranges of the output matrix, computed (and paged) one at a time.
    output_chunks: Vec<Range<usize>>,
}

impl PagingPlan {
    /// The plan for a model with `config` stored in `file` (validated).
    pub(crate) fn new(file: &ModelFile, config: &Config) -> Result<Self> {
        let output = config.output_tensor_name();
        let output_bytes = file.tensor_info(output)?.bytes_read();
        Ok(Self {
            layers: (0..config.n_layers).map(layer_tensor_names).collect(),
            output,
            output_chunks: split_rows(config.vocab_size, output_bytes, OUTPUT_CHUNK_BYTES),
        })
    }

    /// Row ranges of the output matrix that lazy mode computes one at a time.
    pub(crate) fn output_chunks(&self) -> &[Range<usize>] {
        &self.output_chunks
    }

    /// Replaces the output chunks (tests: uneven cuts of a small vocabulary).
    #[cfg(test)]
    pub(crate) fn set_output_chunks(&mut self, chunks: Vec<Range<usize>>) {
        self.output_chunks = chunks;
    }

    fn steps(&self) -> usize {
        self.layers.len() + self.output_chunks.len()
    }

    /// Runs `f`, one forward pass over weights in `file`: for [`Lazy`] with a [`Pager`] whose
    /// helper thread maps the step after the one being computed and gives back the one before,
    /// so the page-table work (kernel time on one core) overlaps the bandwidth-bound step
    /// instead of stalling both compute threads; for [`Resident`] directly.
    pub(crate) fn run<R: Residency, T>(
        &self,
        file: &ModelFile,
        f: impl FnOnce(Option<&Pager<'_>>) -> Result<T>,
    ) -> Result<T> {
        if !R::RELEASE_AFTER_USE {
            return f(None);
        }
        let pager = Pager {
            file,
            plan: self,
            progress: AtomicUsize::new(0),
        };
        let (result, helper) = std::thread::scope(|scope| {
            let helper = scope.spawn(|| pager.page_ahead());
            // Tells the helper to stop however this pass ends (result, error or unwinding).
            struct Finished<'a>(&'a AtomicUsize);
            impl Drop for Finished<'_> {
                fn drop(&mut self) {
                    self.0.store(usize::MAX, Ordering::Release);
                }
            }
            let finished = Finished(&pager.progress);
            let result = f(Some(&pager));
            drop(finished);
            (result, helper.join())
        });
        let released = helper.as_ref().map_or(0, |&released| released);
        for step in released..self.steps() {
            pager.advise(step, Advice::DontNeed);
        }
        if let Err(panic) = helper {
            // A bug in the helper: report it where the pass was asked for, pages given back.
            std::panic::resume_unwind(panic);
        }
        result
    }
}

/// Lazy mode during one forward pass: the pass reports where it is, a helper thread pages.
#[derive(Debug)]
pub(crate) struct Pager<'a> {
    file: &'a ModelFile,
    plan: &'a PagingPlan,
    /// The step being computed, or `usize::MAX` once the pass is over.
    progress: AtomicUsize,
}

impl Pager<'_> {
    /// The pass has read its rows of the embedding: give them back.
    pub(crate) fn embedding_read(&self) {
        best_effort(
            self.file
                .set_group_residency(&[EMBEDDING], Advice::DontNeed),
        );
    }

    /// The pass starts step `step`: layer `step`, then output chunk `step - n_layers`.
    pub(crate) fn enter(&self, step: usize) {
        self.progress.store(step, Ordering::Release);
    }

    /// The helper's loop: maps step `s + 1` and gives back step `s - 1` while the pass computes
    /// step `s`, never more than one step ahead, which bounds the resident set to about three
    /// layers. Returns the first step it has not given back (the caller releases the rest).
    fn page_ahead(&self) -> usize {
        let steps = self.plan.steps();
        let (mut released, mut next) = (0, 0);
        loop {
            let at = self.progress.load(Ordering::Acquire);
            if at == usize::MAX {
                return released;
            }
            while released < at.min(steps) {
                self.advise(released, Advice::DontNeed);
                released += 1;
            }
            if next < steps && at + 1 >= next {
                self.advise(next, Advice::Populate);
                next += 1;
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }

    /// Brings step `step`'s pages in or gives them back.
    fn advise(&self, step: usize, advice: Advice) {
        let plan = self.plan;
        let result = match plan.layers.get(step) {
            Some(names) => self
                .file
                .set_group_residency(&names.each_ref().map(String::as_str), advice),
            None => {
                let chunk = step - plan.layers.len();
                debug_assert!(chunk < plan.output_chunks.len(), "no lazy step {step}");
                let Some(rows) = plan.output_chunks.get(chunk) else {
                    return;
                };
                self.file
                    .set_rows_residency(plan.output, rows.clone(), advice)
            }
        };
        best_effort(result);
    }
}

/// Advice is best effort: the system refusing it costs speed or memory, never correctness. Any
/// other failure (a tensor or rows the file does not have) is a bug in the plan.
fn best_effort(result: std::result::Result<(), FormatError>) {
    if let Err(e) = result {
        debug_assert!(
            matches!(e.kind(), FormatErrorKind::Io(_)),
            "lazy paging: {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_into_chunks_of_bounded_size() {
        assert_eq!(split_rows(32000, 524 << 20, 64 << 20), {
            // 524 MiB in 64 MiB pieces: 9 chunks of 3556 rows, the last one shorter.
            let mut v: Vec<_> = (0..8).map(|c| c * 3556..(c + 1) * 3556).collect();
            v.push(28448..32000);
            v
        });
        assert_eq!(split_rows(10, 100, 1000), vec![0..10]);
        assert_eq!(split_rows(3, 100, 1), vec![0..1, 1..2, 2..3]);
        assert_eq!(split_rows(0, 0, 64), vec![0..0]);
    }

    /// Advice naming a tensor the file does not have is a bug in the plan: it must surface as a
    /// panic in the pass, whichever thread gave the advice, not be skipped like a refusal of
    /// the system's.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lazy paging")]
    fn paging_a_tensor_the_file_lacks_is_a_bug() {
        let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models");
        let file = ModelFile::open(format!("{models}/small-gqa-f32.bin")).unwrap();
        let plan = PagingPlan {
            layers: vec![layer_tensor_names(file.config().n_layers)],
            output: "lm_head.weight",
            output_chunks: Vec::new(),
        };
        plan.run::<Lazy, ()>(&file, |_| Ok(())).unwrap();
    }
}
