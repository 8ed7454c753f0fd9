//! Encoding: SentencePiece normalization (dummy prefix, space → `▁`), BPE
//! merges by rank with SentencePiece's tie-breaking, byte fallback.
//!
//! SentencePiece's BPE repeatedly merges the adjacent pair whose merged piece
//! scores best, the leftmost one among equals, and two symbols may merge
//! whenever their concatenation is a vocabulary piece. Ranks here come from
//! the merge list, which is sorted by that score, or (GGUF vocabularies) from
//! the scores themselves, equal scores sharing a rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::hash::SeededBuildHasher;
use crate::vocab::{Vocab, NONE, SPACE_SYMBOL, UNKNOWN_CHAR};

/// Segments with at most this many symbols use the quadratic scan, which
/// beats the heap on short words; longer ones use the heap.
const SMALL_SEGMENT: usize = 48;

/// Inputs at least this long cache the encoding of each repeated segment;
/// below it, hashing every segment costs more than the repeats save.
const CACHE_MIN_BYTES: usize = 16 << 10;

/// Sentinel for a symbol that has been merged into its left neighbour; it has
/// the [`UNKNOWN_CHAR`] bit so it never forms a pair.
const DEAD: u32 = u32::MAX;

/// The merge table as the merge loops see it: `(rank << 32 | merged id)` if two adjacent
/// symbols merge. Shared by the SentencePiece and the byte-level vocabularies.
pub(crate) trait PairTable {
    fn pair(&self, left: u32, right: u32) -> Option<u64>;
}

impl PairTable for Vocab {
    #[inline]
    fn pair(&self, left: u32, right: u32) -> Option<u64> {
        Vocab::pair(self, left, right)
    }
}

/// Reusable buffers for one encode call.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) symbols: Vec<u32>,
    pair_values: Vec<u64>,
    prev: Vec<u32>,
    next: Vec<u32>,
    heap: BinaryHeap<Reverse<u64>>,
}

impl Vocab {
    /// Encodes `text` as one stretch of plain text (no special tokens),
    /// appending ids to `out`. `dummy_prefix` prepends `▁` (when `text` is
    /// not empty), as SentencePiece's `add_dummy_prefix` does.
    pub(crate) fn encode_plain(
        &self,
        text: &str,
        dummy_prefix: bool,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        if text.is_empty() {
            return;
        }
        let span_start = out.len();
        if !self.split_before_spaces {
            self.load_symbols(text, dummy_prefix, scratch);
            self.merge_and_emit(scratch, span_start, out);
            return;
        }

        // Long inputs repeat the same words over and over: remember where each
        // segment's ids were first written and copy them. Keys are input text,
        // so the hasher is seeded at random.
        let mut cache: Option<HashMap<&str, (usize, usize), SeededBuildHasher>> =
            (text.len() >= CACHE_MIN_BYTES).then(|| HashMap::with_hasher(SeededBuildHasher::new()));
        for (index, segment) in Segments::new(text).enumerate() {
            let first = index == 0;
            if !first {
                if let Some(&(start, len)) = cache.as_ref().and_then(|c| c.get(segment)) {
                    out.extend_from_within(start..start + len);
                    continue;
                }
            }
            let start = out.len();
            self.load_symbols(segment, first && dummy_prefix, scratch);
            self.merge_and_emit(scratch, span_start, out);
            if let (false, Some(cache)) = (first, cache.as_mut()) {
                cache.insert(segment, (start, out.len() - start));
            }
        }
    }

    /// Fills `scratch.symbols` with one symbol per character of `text`
    /// (spaces as `▁`), after a `▁` if `prefix`.
    fn load_symbols(&self, text: &str, prefix: bool, scratch: &mut Scratch) {
        let symbols = &mut scratch.symbols;
        symbols.clear();
        if prefix {
            symbols.push(self.space_symbol);
        }
        for c in text.chars() {
            symbols.push(if c == ' ' || c == SPACE_SYMBOL {
                self.space_symbol
            } else {
                self.char_symbol(c)
            });
        }
    }

    fn merge_and_emit(&self, scratch: &mut Scratch, span_start: usize, out: &mut Vec<u32>) {
        merge(self, scratch, |symbol| self.emit(symbol, span_start, out));
    }

    /// Appends a final symbol: its id, or for a character outside the
    /// vocabulary its UTF-8 bytes as `<0xNN>` pieces (byte fallback), or
    /// `<unk>`, with consecutive unknowns fused as SentencePiece does.
    #[inline]
    fn emit(&self, symbol: u32, span_start: usize, out: &mut Vec<u32>) {
        if symbol & UNKNOWN_CHAR == 0 {
            out.push(symbol);
            return;
        }
        let c = char::from_u32(symbol & !UNKNOWN_CHAR).unwrap_or(char::REPLACEMENT_CHARACTER);
        if let Some(byte_ids) = &self.byte_ids {
            let mut buf = [0u8; 4];
            for &byte in c.encode_utf8(&mut buf).as_bytes() {
                out.push(byte_ids[usize::from(byte)]);
            }
        } else if let Some(unk) = self.unk_id {
            if out.len() <= span_start || out.last() != Some(&unk) {
                out.push(unk);
            }
        }
    }
}

/// Merges `scratch.symbols` by rank and calls `emit` with each final symbol in order: the
/// quadratic scan for short segments, the heap for long ones.
pub(crate) fn merge<P: PairTable>(table: &P, scratch: &mut Scratch, mut emit: impl FnMut(u32)) {
    if scratch.symbols.len() <= SMALL_SEGMENT {
        merge_by_scan(table, &mut scratch.symbols, &mut scratch.pair_values);
        for &symbol in &scratch.symbols {
            emit(symbol);
        }
    } else {
        merge_by_heap(table, scratch);
        let mut at = 0u32;
        while at != NONE {
            emit(scratch.symbols[at as usize]);
            at = scratch.next[at as usize];
        }
    }
}

/// Quadratic merge loop for short segments: find the best pair by scanning,
/// merge it, update the two neighbouring pair values.
fn merge_by_scan<P: PairTable>(vocab: &P, symbols: &mut Vec<u32>, pair_values: &mut Vec<u64>) {
    const NO_PAIR: u64 = u64::MAX;
    let value = |l: u32, r: u32| vocab.pair(l, r).unwrap_or(NO_PAIR);
    pair_values.clear();
    pair_values.extend(symbols.windows(2).map(|w| value(w[0], w[1])));
    loop {
        // Lowest rank; strict `<` keeps the leftmost among equals (pairs of equal rank may
        // form different pieces in a GGUF SentencePiece vocabulary, whose ranks are scores).
        let mut best = NO_PAIR;
        let mut at = 0;
        for (i, &v) in pair_values.iter().enumerate() {
            if v >> 32 < best >> 32 {
                best = v;
                at = i;
            }
        }
        if best == NO_PAIR {
            return;
        }
        symbols[at] = best as u32;
        symbols.remove(at + 1);
        pair_values.remove(at);
        if at > 0 {
            pair_values[at - 1] = value(symbols[at - 1], symbols[at]);
        }
        if at + 1 < symbols.len() {
            pair_values[at] = value(symbols[at], symbols[at + 1]);
        }
    }
}

/// O(n log n) merge loop: a doubly linked list of symbols and a min-heap of
/// candidate pairs keyed by `(rank, left position)`.
///
/// Heap entries are not removed when a merge invalidates them; instead an
/// entry is checked when popped: the pair now starting at `left` must still
/// produce a piece of the same rank. Ranks identify pieces and a symbol's start
/// never moves, so that is exactly the merge SentencePiece would make then.
fn merge_by_heap<P: PairTable>(vocab: &P, scratch: &mut Scratch) {
    let Scratch {
        symbols,
        prev,
        next,
        heap,
        ..
    } = scratch;
    let n = symbols.len();
    prev.clear();
    next.clear();
    heap.clear();
    // Positions are u32: a segment of 2^32 characters would be 4 GiB or more.
    prev.extend((0..n as u32).map(|i| i.wrapping_sub(1)));
    next.extend((1..=n as u32).map(|i| if i as usize == n { NONE } else { i }));
    let push = |heap: &mut BinaryHeap<Reverse<u64>>, left: u32, value: u64| {
        heap.push(Reverse((value & !u64::from(u32::MAX)) | u64::from(left)));
    };
    for i in 0..n.saturating_sub(1) {
        if let Some(v) = vocab.pair(symbols[i], symbols[i + 1]) {
            push(heap, i as u32, v);
        }
    }
    while let Some(Reverse(key)) = heap.pop() {
        let left = key as u32;
        let rank = key >> 32;
        let right = next[left as usize];
        if right == NONE {
            continue;
        }
        let Some(v) = vocab.pair(symbols[left as usize], symbols[right as usize]) else {
            continue;
        };
        if v >> 32 != rank {
            continue;
        }
        symbols[left as usize] = v as u32;
        symbols[right as usize] = DEAD;
        let after = next[right as usize];
        next[left as usize] = after;
        if after != NONE {
            prev[after as usize] = left;
        }
        let before = prev[left as usize];
        if before != NONE {
            if let Some(v) = vocab.pair(symbols[before as usize], symbols[left as usize]) {
                push(heap, before, v);
            }
        }
        if after != NONE {
            if let Some(v) = vocab.pair(symbols[left as usize], symbols[after as usize]) {
                push(heap, left, v);
            }
        }
    }
}

/// Splits text before each run of spaces (`' '` or `'▁'`) that follows some
/// other character: `"a  b c"` → `"a"`, `"  b"`, `" c"`. No mergeable piece
/// spans such a cut (checked when the vocabulary is built), so encoding the
/// segments one by one gives the same ids as encoding the whole text.
struct Segments<'a> {
    text: &'a str,
}

impl<'a> Segments<'a> {
    fn new(text: &'a str) -> Self {
        Segments { text }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.text.is_empty() {
            return None;
        }
        let bytes = self.text.as_bytes();
        // Skip the leading run of spaces, then find the next space.
        let mut i = 0;
        let mut in_leading_spaces = true;
        while i < bytes.len() {
            let b = bytes[i];
            let space_len = if b == b' ' {
                1
            } else if b == 0xE2
                && bytes.get(i + 1) == Some(&0x96)
                && bytes.get(i + 2) == Some(&0x81)
            {
                3
            } else {
                0
            };
            if space_len > 0 {
                if !in_leading_spaces {
                    break;
                }
                i += space_len;
            } else {
                in_leading_spaces = false;
                i += 1;
            }
        }
        // `i` is at a space or at the end, both char boundaries.
        let (segment, rest) = self.text.split_at_checked(i).unwrap_or((self.text, ""));
        self.text = rest;
        Some(segment)
    }
}

#[cfg(test)]
mod tests {
    //! The fast paths against the plain algorithm: the quadratic scan against
    //! the heap, and segment-by-segment encoding (with its cache) against
    //! encoding the whole text at once. Both sides are checked against
    //! SentencePiece by the fixture tests; these make sure the choice between
    //! them can never change the output.

    use super::*;
    use crate::load::parse_tokenizer_json;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn vocab(split: bool) -> &'static Vocab {
        static SPLIT: OnceLock<Vocab> = OnceLock::new();
        static WHOLE: OnceLock<Vocab> = OnceLock::new();
        let build = move || {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json"
            );
            let json = std::fs::read_to_string(path).expect("fixture");
            let mut vocab =
                Vocab::build(parse_tokenizer_json(&json).expect("parses")).expect("builds");
            assert!(
                vocab.split_before_spaces,
                "the Mistral vocabulary allows splitting"
            );
            vocab.split_before_spaces = split;
            vocab
        };
        if split {
            SPLIT.get_or_init(build)
        } else {
            WHOLE.get_or_init(build)
        }
    }

    /// The Mistral pieces as a GGUF-style vocabulary with coarse scores (200 pieces per
    /// score), so that pairs of equal rank forming different pieces are common.
    fn tied_scores() -> &'static Vocab {
        static VOCAB: OnceLock<Vocab> = OnceLock::new();
        VOCAB.get_or_init(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json"
            );
            let json = std::fs::read_to_string(path).expect("fixture");
            let mut vocab = parse_tokenizer_json(&json).expect("parses").vocab;
            vocab.sort_by_key(|&(_, id)| id);
            let pieces: Vec<String> = vocab.into_iter().map(|(p, _)| p).collect();
            let types = (0..pieces.len())
                .map(|id| match id {
                    0..=2 => 3,
                    3..=258 => 6,
                    _ => 1,
                })
                .collect();
            let scores = (0..pieces.len()).map(|id| -((id / 200) as f32)).collect();
            Vocab::from_sentencepiece(crate::SentencePieceVocab {
                pieces,
                scores,
                token_types: types,
                bos_id: Some(1),
                eos_id: Some(2),
                unk_id: Some(0),
                add_bos: true,
                add_space_prefix: true,
            })
            .expect("builds")
        })
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ ▁\t\na-e]{0,300}",
            "(the |an|in|ing|▁▁| {1,5}|[0-9]|\u{4e2d}|\u{1F600}|\u{E000}){0,200}",
            any::<String>(),
        ]
    }

    fn encode(vocab: &Vocab, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        vocab.encode_plain(text, true, &mut Scratch::default(), &mut out);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn scan_and_heap_merge_identically(text in text()) {
            let vocab = vocab(false);
            let mut scratch = Scratch::default();
            vocab.load_symbols(&text, true, &mut scratch);
            let mut by_scan = scratch.symbols.clone();
            merge_by_scan(vocab, &mut by_scan, &mut Vec::new());
            merge_by_heap(vocab, &mut scratch);
            let mut by_heap = Vec::new();
            let mut at = if scratch.symbols.is_empty() { NONE } else { 0 };
            while at != NONE {
                by_heap.push(scratch.symbols[at as usize]);
                at = scratch.next[at as usize];
            }
            prop_assert_eq!(by_scan, by_heap);
        }

        #[test]
        fn scan_and_heap_merge_identically_with_tied_scores(text in text()) {
            let vocab = tied_scores();
            let mut scratch = Scratch::default();
            vocab.load_symbols(&text, true, &mut scratch);
            let mut by_scan = scratch.symbols.clone();
            merge_by_scan(vocab, &mut by_scan, &mut Vec::new());
            merge_by_heap(vocab, &mut scratch);
            let mut by_heap = Vec::new();
            let mut at = if scratch.symbols.is_empty() { NONE } else { 0 };
            while at != NONE {
                by_heap.push(scratch.symbols[at as usize]);
                at = scratch.next[at as usize];
            }
            prop_assert_eq!(by_scan, by_heap);
        }

        #[test]
        fn segmented_encoding_equals_whole_text_encoding(text in text(), copies in 1usize..8) {
            // Repeating the text pushes it past the cache threshold.
            let text = text.repeat(copies);
            prop_assert_eq!(encode(vocab(true), &text), encode(vocab(false), &text));
        }
    }

    #[test]
    fn segments_cut_before_space_runs() {
        let parts: Vec<&str> = Segments::new("a  b▁c ▁d  ").collect();
        assert_eq!(parts, ["a", "  b", "▁c", " ▁d", "  "]);
        let parts: Vec<&str> = Segments::new("  x").collect();
        assert_eq!(parts, ["  x"]);
        assert_eq!(Segments::new("").count(), 0);
    }
}
