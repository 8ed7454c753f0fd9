//! Byte-level BPE, as GPT-2 introduced it and the Llama-family files use it (SmolLM, Llama 3).
//!
//! Text is first split into pre-tokens (a regex per family, and for SmolLM every digit on its
//! own), each pre-token's UTF-8 bytes become symbols (one vocabulary piece per byte, written in
//! GPT-2's printable byte↔unicode table: space is `Ġ`, newline `Ċ`), and adjacent symbols are
//! merged by the rank of their merge rule, the leftmost pair first among equals: exactly
//! Hugging Face `tokenizers`' BPE model. Added tokens (`<|im_start|>`, ...) are matched in the
//! raw text first, leftmost-longest; special ones only when asked.
//!
//! Decoding concatenates the bytes of the tokens and reads them as UTF-8, replacing each
//! ill-formed sequence with one U+FFFD (`String::from_utf8_lossy`), as Hugging Face's
//! `ByteLevel` decoder does.

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::encode::{merge, PairTable, Scratch};
use crate::error::TokenizerError;
use crate::hash::PairBuildHasher;
use crate::options::{AddedToken, ByteLevelBpe, Pretokenizer};
use crate::special::{Partition, SpecialMatcher};
use crate::vocab::{merge_display, place_pieces, split_merge, PieceIds, TokenKind, NONE};

/// GPT-2's split: contractions, letters, numbers, other symbols, each optionally after one
/// space; whitespace runs keep their last space for the next word.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's split: case-insensitive contractions, numbers in groups of up to three digits,
/// newlines kept with the symbols before them.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split as llama.cpp writes it (`llama-vocab.cpp`, and its hand-written splitter in
/// `unicode.cpp`): the contractions' case spelled out, so `'ſ` (long s, which case-folds to
/// `s`) is not one.
const LLAMA3_LLAMA_CPP_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's split as llama.cpp writes it: Llama 3's with single number characters.
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tekken's split as llama.cpp writes it: `((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+` is
/// a run of letters other than `a`-`z` then a run of letters other than `A`-`Z` (written here
/// as class intersections, which match the same). Unlike the original regex (`[\p{Lu}\p{Lt}
/// \p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+`), combining marks are not letters and only
/// ASCII case counts.
const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `default` pre-tokenizer: four regexes, each splitting the pieces of the one
/// before (a match and the text between matches are pieces).
const DEFAULT_PATTERNS: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// How far fancy-regex may backtrack before giving up on a match. These patterns backtrack at
/// most one step per match, so the limit is only a guard; text past a failed match becomes
/// one pre-token.
const BACKTRACK_LIMIT: usize = 1 << 26;

/// The names llama.cpp (`llama-vocab.cpp`, 0.3.36) accepts in `tokenizer.ggml.pre` for each
/// pre-tokenizer: those it tokenizes exactly alike (same regexes, same use of the merges).
const GGUF_NAMES: [(Pretokenizer, &[&str]); 6] = [
    (
        Pretokenizer::Gpt2,
        &[
            "gpt-2", "phi-2", "mpt", "olmo", "jais", "gigachat", "a.x-4.0", "mellum", "trillion",
            "exaone4", "jina-es", "jina-de",
        ],
    ),
    (
        Pretokenizer::SmolLm,
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
    ),
    (
        Pretokenizer::Llama3,
        &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
    ),
    (Pretokenizer::Default, &["default"]),
    (
        Pretokenizer::Qwen2,
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
        ],
    ),
    (Pretokenizer::Tekken, &["tekken"]),
];

/// One way of cutting text; the pieces of one step are cut again by the next.
#[derive(Debug)]
enum Step {
    /// Every numeric character on its own (Hugging Face's `Digits(individual_digits)`,
    /// llama.cpp's `\p{N}`).
    Digits,
    /// Each match, and the text between matches, is a piece.
    Regex(Regex),
}

impl Pretokenizer {
    /// The name torchless model files store for this pre-tokenizer: `"gpt2"`, `"smollm"`,
    /// `"llama-bpe"`, `"default"`, `"qwen2"`, `"tekken"` (the GGUF name, except GPT-2's; see
    /// [`gguf_name`](Self::gguf_name)).
    pub fn name(self) -> &'static str {
        match self {
            Pretokenizer::Gpt2 => "gpt2",
            other => other.gguf_name(),
        }
    }

    /// The pre-tokenizer with this name as [`name`](Self::name) or
    /// [`gguf_name`](Self::gguf_name) gives it (`"llama3"` is accepted too).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gpt2" | "gpt-2" => Some(Pretokenizer::Gpt2),
            "smollm" => Some(Pretokenizer::SmolLm),
            "llama-bpe" | "llama3" => Some(Pretokenizer::Llama3),
            "default" => Some(Pretokenizer::Default),
            "qwen2" => Some(Pretokenizer::Qwen2),
            "tekken" => Some(Pretokenizer::Tekken),
            _ => None,
        }
    }

    /// The name llama.cpp writes in GGUF files (`tokenizer.ggml.pre`): `"gpt-2"`, `"smollm"`,
    /// `"llama-bpe"`, `"default"`, `"qwen2"`, `"tekken"`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Pretokenizer::Gpt2 => "gpt-2",
            Pretokenizer::SmolLm => "smollm",
            Pretokenizer::Llama3 => "llama-bpe",
            Pretokenizer::Default => "default",
            Pretokenizer::Qwen2 => "qwen2",
            Pretokenizer::Tekken => "tekken",
        }
    }

    /// The pre-tokenizer a GGUF file's `tokenizer.ggml.pre` names, or `None` if this version
    /// does not implement it (the caller refuses the file, naming it: guessing would give
    /// other ids). Besides the names [`gguf_name`](Self::gguf_name) gives, the other names
    /// llama.cpp 0.3.36 tokenizes exactly alike are accepted (`"llama3"`, `"falcon3"`,
    /// `"pixtral"`, ... for Llama 3; `"phi-2"`, `"mpt"`, `"olmo"`, ... for GPT-2;
    /// `"starcoder"`, `"command-r"`, ... for SmolLM; `"deepseek-r1-qwen"`, `"stablelm2"`, ...
    /// for Qwen 2). An empty or missing name, which llama.cpp reads as `default` with a
    /// warning, is the caller's to decide.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        GGUF_NAMES
            .iter()
            .find(|(_, names)| names.contains(&name))
            .map(|&(p, _)| p)
    }

    /// Whether llama.cpp starts prompts with BOS for this pre-tokenizer when the file has no
    /// `tokenizer.ggml.add_bos_token`: true for Llama 3 and Tekken, false for the others.
    pub fn gguf_default_add_bos(self) -> bool {
        matches!(self, Pretokenizer::Llama3 | Pretokenizer::Tekken)
    }

    /// The splitting steps, as Hugging Face's regexes or as llama.cpp's.
    fn steps(self, llama_cpp: bool) -> Result<Vec<Step>, TokenizerError> {
        let patterns: &[&str] = match self {
            Pretokenizer::Gpt2 | Pretokenizer::SmolLm => &[GPT2_PATTERN],
            Pretokenizer::Llama3 if llama_cpp => &[LLAMA3_LLAMA_CPP_PATTERN],
            Pretokenizer::Llama3 => &[LLAMA3_PATTERN],
            Pretokenizer::Default => &DEFAULT_PATTERNS,
            Pretokenizer::Qwen2 => &[QWEN2_PATTERN],
            Pretokenizer::Tekken => &[TEKKEN_PATTERN],
        };
        let mut steps = Vec::with_capacity(patterns.len() + 1);
        if self == Pretokenizer::SmolLm {
            steps.push(Step::Digits);
        }
        for pattern in patterns {
            let regex = fancy_regex::RegexBuilder::new(pattern)
                .backtrack_limit(BACKTRACK_LIMIT)
                .build()
                .map_err(|e| TokenizerError::Field {
                    field: "pre_tokenizer".into(),
                    problem: format!("regex does not compile: {e}"),
                })?;
            steps.push(Step::Regex(regex));
        }
        Ok(steps)
    }

    /// Llama 3 and Tekken emit a pre-token that is itself a vocabulary piece without merging
    /// it.
    fn ignores_merges(self) -> bool {
        matches!(self, Pretokenizer::Llama3 | Pretokenizer::Tekken)
    }

    /// Recognizes a Hugging Face `pre_tokenizer` section: GPT-2's `ByteLevel` with its regex,
    /// SmolLM's `Digits(individual_digits)` then `ByteLevel`, or Llama 3's regex `Split` then
    /// `ByteLevel` without regex.
    pub(crate) fn from_hf_json(pre: &serde_json::Value) -> Result<Self, String> {
        fn ty(v: &serde_json::Value) -> Option<&str> {
            v.get("type").and_then(|t| t.as_str())
        }
        let flag = |v: &serde_json::Value, key: &str, default: bool| {
            v.get(key).and_then(|b| b.as_bool()).unwrap_or(default)
        };
        let byte_level = |v: &serde_json::Value, regex: bool| {
            ty(v) == Some("ByteLevel")
                && flag(v, "use_regex", true) == regex
                && !flag(v, "add_prefix_space", false)
        };
        let steps: Vec<&serde_json::Value> = match ty(pre) {
            Some("Sequence") => pre
                .get("pretokenizers")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
            _ => vec![pre],
        };
        match steps.as_slice() {
            [only] if byte_level(only, true) => Ok(Pretokenizer::Gpt2),
            [digits, bl]
                if ty(digits) == Some("Digits")
                    && flag(digits, "individual_digits", false)
                    && byte_level(bl, true) =>
            {
                Ok(Pretokenizer::SmolLm)
            }
            [split, bl]
                if ty(split) == Some("Split")
                    && split.pointer("/pattern/Regex").and_then(|p| p.as_str())
                        == Some(LLAMA3_PATTERN)
                    && split.get("behavior").and_then(|b| b.as_str()) == Some("Isolated")
                    && !flag(split, "invert", false)
                    && byte_level(bl, false) =>
            {
                Ok(Pretokenizer::Llama3)
            }
            _ => Err(format!(
                "byte-level pre-tokenizer {pre} is not one this version knows \
                 (GPT-2's ByteLevel, SmolLM's Digits + ByteLevel, Llama 3's Split + ByteLevel)"
            )),
        }
    }
}

/// GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68 bytes (controls,
/// space, DEL, NBSP, soft hyphen) for U+0100 onwards, in byte order.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let printable = matches!(byte, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            byte as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The inverse table, indexed by code point (all of them are below 324).
fn char_to_byte(table: &[char; 256]) -> Vec<Option<u8>> {
    let mut inverse = vec![None; 324];
    for (byte, &c) in table.iter().enumerate() {
        inverse[c as usize] = Some(byte as u8);
    }
    inverse
}

/// The built byte-level tables. Immutable once built.
pub(crate) struct ByteVocab {
    pub pieces: Vec<Box<str>>,
    /// What each token decodes to: its piece read through the byte table, or, for a piece with
    /// characters outside the table (added tokens such as `<|im_start|>` have none), its text.
    pub bytes: Vec<Box<[u8]>>,
    pub kinds: Vec<TokenKind>,
    pub piece_ids: PieceIds,
    /// The single-byte piece of each byte, `NONE` if the vocabulary lacks it.
    byte_ids: [u32; 256],
    byte_chars: [char; 256],
    pairs: HashMap<u64, u64, PairBuildHasher>,
    pub pretokenizer: Pretokenizer,
    steps: Vec<Step>,
    /// Built from a GGUF file, encoded as llama.cpp does: added tokens found by [`Partition`]
    /// (longest first), llama.cpp's regexes, the first of repeated merges.
    llama_cpp: Option<Partition>,
    /// Every added token, for `parse_special`.
    all_added: SpecialMatcher,
    /// The added tokens that are not special: matched in any text, as Hugging Face does.
    plain_added: SpecialMatcher,
    pub added: Vec<AddedToken>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
}

impl std::fmt::Debug for ByteVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteVocab")
            .field("vocab_size", &self.pieces.len())
            .field("merge_pairs", &self.pairs.len())
            .field("pretokenizer", &self.pretokenizer)
            .finish()
    }
}

impl PairTable for ByteVocab {
    #[inline]
    fn pair(&self, left: u32, right: u32) -> Option<u64> {
        self.pairs
            .get(&((u64::from(left) << 32) | u64::from(right)))
            .copied()
    }
}

/// Calls `f` with each pre-token of `text`: the pieces of the first step, each cut by the
/// steps after it.
fn split(steps: &[Step], text: &str, f: &mut dyn FnMut(&str)) {
    let Some((step, rest)) = steps.split_first() else {
        if !text.is_empty() {
            f(text);
        }
        return;
    };
    match step {
        Step::Digits => {
            let mut start = 0;
            for (at, c) in text.char_indices() {
                if c.is_numeric() {
                    split(rest, &text[start..at], f);
                    let end = at + c.len_utf8();
                    split(rest, &text[at..end], f);
                    start = end;
                }
            }
            split(rest, &text[start..], f);
        }
        Step::Regex(regex) => {
            let mut last = 0;
            for found in regex.find_iter(text) {
                let Ok(found) = found else { break };
                if found.start() > last {
                    split(rest, &text[last..found.start()], f);
                }
                if found.end() > found.start() {
                    split(rest, found.as_str(), f);
                }
                last = found.end();
            }
            if last < text.len() {
                split(rest, &text[last..], f);
            }
        }
    }
}

impl ByteVocab {
    pub(crate) fn build(spec: ByteLevelBpe, llama_cpp: bool) -> Result<Self, TokenizerError> {
        let ByteLevelBpe {
            mut vocab,
            merges,
            pretokenizer,
            added_tokens,
            bos_id,
            eos_id,
            add_bos,
        } = spec;

        // Added tokens may lie beyond the model's vocabulary (Hugging Face keeps them apart);
        // one that is in it must have the same id.
        {
            let by_piece: HashMap<&str, u32> =
                vocab.iter().map(|(p, id)| (p.as_str(), *id)).collect();
            let mut extra = Vec::new();
            for token in &added_tokens {
                match by_piece.get(token.content.as_str()) {
                    Some(&id) if id != token.id => {
                        return Err(TokenizerError::AddedToken {
                            content: token.content.clone(),
                            id: u64::from(token.id),
                            problem: format!("the vocabulary gives it id {id}"),
                        })
                    }
                    Some(_) => {}
                    None => extra.push((token.content.clone(), token.id)),
                }
            }
            vocab.extend(extra);
        }
        let (pieces, piece_ids) = place_pieces(
            vocab
                .into_iter()
                .map(|(p, id)| (p, u64::from(id)))
                .collect(),
        )?;
        let size = pieces.len() as u32;
        for (what, id) in [("bos", bos_id), ("eos", eos_id)] {
            if let Some(id) = id.filter(|&id| id >= size) {
                return Err(TokenizerError::Field {
                    field: format!("{what}_id"),
                    problem: format!("id {id} is not in the vocabulary of {size} pieces"),
                });
            }
        }

        let byte_chars = byte_to_char();
        let to_byte = char_to_byte(&byte_chars);
        let mut byte_ids = [NONE; 256];
        let mut buf = [0u8; 4];
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            if let Some(&id) = piece_ids.get(&*byte_chars[byte].encode_utf8(&mut buf)) {
                *slot = id;
            }
        }
        let mut bytes: Vec<Box<[u8]>> = pieces
            .iter()
            .map(|piece| {
                let mapped: Option<Vec<u8>> = piece
                    .chars()
                    .map(|c| to_byte.get(c as usize).copied().flatten())
                    .collect();
                mapped
                    .unwrap_or_else(|| piece.as_bytes().to_vec())
                    .into_boxed_slice()
            })
            .collect();
        // llama.cpp decodes control and user-defined tokens as their text as it is.
        if llama_cpp {
            for token in &added_tokens {
                bytes[token.id as usize] = token.content.as_bytes().into();
            }
        }

        // Later duplicates of a merge replace earlier ones, as in Hugging Face's table; llama.cpp
        // keeps the first.
        let mut pairs = HashMap::with_capacity_and_hasher(merges.len(), PairBuildHasher::default());
        let mut merged = String::new();
        for (rank, text) in merges.iter().enumerate() {
            let spec = crate::vocab::MergeSpec::Joined(text.clone());
            let (left, right) = split_merge(rank, &spec)?;
            let unknown = |piece: &str| TokenizerError::MergeUnknownPiece {
                rank,
                merge: merge_display(&spec),
                piece: piece.to_owned(),
            };
            let left_id = *piece_ids.get(left).ok_or_else(|| unknown(left))?;
            let right_id = *piece_ids.get(right).ok_or_else(|| unknown(right))?;
            merged.clear();
            merged.push_str(left);
            merged.push_str(right);
            let merged_id = *piece_ids
                .get(merged.as_str())
                .ok_or_else(|| unknown(&merged))?;
            let rank = u64::try_from(rank)
                .unwrap_or(u64::MAX)
                .min(u64::from(u32::MAX));
            let key = (u64::from(left_id) << 32) | u64::from(right_id);
            if !(llama_cpp && pairs.contains_key(&key)) {
                pairs.insert(key, (rank << 32) | u64::from(merged_id));
            }
        }

        let mut kinds = vec![TokenKind::Normal; pieces.len()];
        for token in &added_tokens {
            if token.special {
                kinds[token.id as usize] = TokenKind::Control;
            }
        }
        let all_added = SpecialMatcher::new(added_tokens.iter().map(|t| (&*t.content, t.id)));
        let plain_added = SpecialMatcher::new(
            added_tokens
                .iter()
                .filter(|t| !t.special)
                .map(|t| (&*t.content, t.id)),
        );
        let steps = pretokenizer.steps(llama_cpp)?;
        let llama_cpp = llama_cpp
            .then(|| Partition::new(added_tokens.iter().map(|t| (&*t.content, t.id, !t.special))));

        Ok(ByteVocab {
            pieces,
            bytes,
            kinds,
            piece_ids,
            byte_ids,
            byte_chars,
            pairs,
            pretokenizer,
            steps,
            llama_cpp,
            all_added,
            plain_added,
            added: added_tokens,
            bos_id,
            eos_id,
            add_bos,
        })
    }

    /// Encodes `text`, appending ids to `out` (BOS is the caller's business).
    pub(crate) fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        let found = match &self.llama_cpp {
            Some(partition) => partition.find_all(text, parse_special),
            None if parse_special => self.all_added.find_all(text),
            None => self.plain_added.find_all(text),
        };
        let mut scratch = Scratch::default();
        let mut word = String::new();
        let mut pos = 0;
        for found in found {
            let stretch = text.get(pos..found.start).unwrap_or_default();
            self.encode_plain(stretch, &mut scratch, &mut word, out);
            out.push(found.id);
            pos = found.end;
        }
        let rest = text.get(pos..).unwrap_or_default();
        self.encode_plain(rest, &mut scratch, &mut word, out);
    }

    fn encode_plain(
        &self,
        text: &str,
        scratch: &mut Scratch,
        word: &mut String,
        out: &mut Vec<u32>,
    ) {
        let mut encode_word = |piece: &str| self.encode_word(piece, scratch, word, out);
        split(&self.steps, text, &mut encode_word);
    }

    fn encode_word(
        &self,
        piece: &str,
        scratch: &mut Scratch,
        word: &mut String,
        out: &mut Vec<u32>,
    ) {
        if self.pretokenizer.ignores_merges() {
            word.clear();
            word.extend(piece.bytes().map(|b| self.byte_chars[usize::from(b)]));
            if let Some(&id) = self.piece_ids.get(word.as_str()) {
                out.push(id);
                return;
            }
        }
        scratch.symbols.clear();
        // A byte without a piece is dropped, as Hugging Face's BPE does without an unknown token.
        scratch.symbols.extend(
            piece
                .bytes()
                .map(|b| self.byte_ids[usize::from(b)])
                .filter(|&id| id != NONE),
        );
        if scratch.symbols.is_empty() {
            return;
        }
        merge(self, scratch, |id| out.push(id));
    }

    /// The bytes `ids` decode to, special tokens left out when `skip_special`.
    pub(crate) fn decode_bytes(&self, ids: &[u32], skip_special: bool, out: &mut Vec<u8>) {
        for &id in ids {
            self.push_token_bytes(id, skip_special, out);
        }
    }

    #[inline]
    pub(crate) fn push_token_bytes(&self, id: u32, skip_special: bool, out: &mut Vec<u8>) {
        let Some(kind) = self.kinds.get(id as usize) else {
            return;
        };
        if skip_special && *kind == TokenKind::Control {
            return;
        }
        out.extend_from_slice(&self.bytes[id as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let table = byte_to_char();
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[0], '\u{100}');
        assert_eq!(table[0xAD], '\u{143}');
        let inverse = char_to_byte(&table);
        for (byte, &c) in table.iter().enumerate() {
            assert_eq!(inverse[c as usize], Some(byte as u8));
        }
        let mut sorted: Vec<char> = table.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256, "the table is a bijection");
    }

    fn pieces(p: Pretokenizer, llama_cpp: bool, text: &str) -> Vec<String> {
        let steps = p.steps(llama_cpp).expect("compiles");
        let mut out = Vec::new();
        split(&steps, text, &mut |piece| out.push(piece.to_owned()));
        assert_eq!(out.concat(), text, "pieces cover the text");
        out
    }

    #[test]
    fn pretokenizers_split_as_llama_cpp() {
        // `default`: punctuation runs, then GPT-2's regex, then number runs, then ASCII
        // digits in threes.
        assert_eq!(
            pieces(Pretokenizer::Default, true, "Hello, world!! 12345 $x"),
            ["Hello", ",", " world", "!!", " ", "123", "45", " ", "$", "x"]
        );
        // Qwen 2: case-spelled contractions, one number character at a time.
        assert_eq!(
            pieces(Pretokenizer::Qwen2, true, "I'M 2024 ok"),
            ["I", "'M", " ", "2", "0", "2", "4", " ok"]
        );
        // Tekken: words cut where ASCII case goes from lower to upper, `/` kept with the
        // letters after it; a combining mark is not a letter (llama.cpp's regex).
        assert_eq!(
            pieces(Pretokenizer::Tekken, true, "camelCaseWORD fooBar/baz"),
            ["camel", "Case", "WORD", " foo", "Bar", "/baz"]
        );
        assert_eq!(
            pieces(Pretokenizer::Tekken, true, "cafe\u{301}"),
            ["cafe", "\u{301}"]
        );
        // SmolLM: each digit on its own before GPT-2's regex.
        assert_eq!(
            pieces(Pretokenizer::SmolLm, true, "a12 b"),
            ["a", "1", "2", " b"]
        );
        // Llama 3: `'ſ` (long s) is a contraction for Hugging Face's case-insensitive regex,
        // not for llama.cpp's `'[sS]`.
        assert_eq!(
            pieces(Pretokenizer::Llama3, false, "x'ſa"),
            ["x", "'ſ", "a"]
        );
        assert_eq!(pieces(Pretokenizer::Llama3, true, "x'ſa"), ["x", "'ſa"]);
        assert_eq!(
            pieces(Pretokenizer::Llama3, true, "x'Sa 1234"),
            ["x", "'S", "a", " ", "123", "4"]
        );
    }

    #[test]
    fn pretokenizer_names_round_trip() {
        let all = [
            Pretokenizer::Gpt2,
            Pretokenizer::SmolLm,
            Pretokenizer::Llama3,
            Pretokenizer::Default,
            Pretokenizer::Qwen2,
            Pretokenizer::Tekken,
        ];
        for p in all {
            assert_eq!(Pretokenizer::from_name(p.name()), Some(p));
            assert_eq!(Pretokenizer::from_name(p.gguf_name()), Some(p));
            assert_eq!(Pretokenizer::from_gguf_name(p.gguf_name()), Some(p));
            for llama_cpp in [false, true] {
                assert!(p.steps(llama_cpp).is_ok(), "{p:?} compiles");
            }
        }
        assert_eq!(Pretokenizer::from_name("qwen3"), None);
        // llama.cpp refuses `gpt2` as a pre-tokenizer name (it is the model name), and names
        // that tokenize differently (`dbrx`: Llama 3's regex without ignore_merges).
        for name in ["gpt2", "", "dbrx", "smaug-bpe", "deepseek-llm", "Llama-bpe"] {
            assert_eq!(Pretokenizer::from_gguf_name(name), None, "{name}");
        }
        assert_eq!(
            Pretokenizer::from_gguf_name("falcon3"),
            Some(Pretokenizer::Llama3)
        );
    }
}
