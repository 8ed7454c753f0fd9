//! The vocabulary and merge table, built and validated from either source.

use std::collections::HashMap;

use crate::error::TokenizerError;
use crate::hash::PairBuildHasher;
use crate::options::{token_type, SentencePieceVocab};
use crate::special::{Partition, SpecialMatcher};

/// The SentencePiece whitespace symbol, U+2581 LOWER ONE EIGHTH BLOCK.
pub(crate) const SPACE_SYMBOL: char = '\u{2581}';

/// Marks a BPE symbol that is a character outside the vocabulary; the low
/// bits hold the character. Vocabulary ids are kept below this bit.
pub(crate) const UNKNOWN_CHAR: u32 = 1 << 31;

/// "No entry" in the id tables.
pub(crate) const NONE: u32 = u32::MAX;

/// What a token is, which decides how it is encoded and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// An ordinary piece: produced by BPE, decoded as its text with `▁` as space.
    Normal,
    /// A byte-fallback piece `<0xNN>`, decoded as the raw byte.
    Byte(u8),
    /// A control token such as `<s>`, `</s>` or `[INST]`: never produced from
    /// plain text, invisible when decoding with `skip_special`.
    Control,
    /// The unknown piece `<unk>`: decoded as ` ⁇ ` with `skip_special`, as
    /// SentencePiece does (as nothing for a GGUF vocabulary, as llama.cpp does).
    Unknown,
    /// A user-defined token of a GGUF vocabulary: matched whole in any text (before the
    /// merges), decoded as its text as it is.
    UserDefined,
    /// An unused slot of a GGUF vocabulary: decoded as nothing.
    Unused,
}

/// Where the dummy-prefix `▁` goes when text is split around special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrependScheme {
    /// Before every non-empty stretch of text (SentencePiece; the classic
    /// Llama/Mistral `tokenizer.json` normalizer `Prepend("▁")`).
    Always,
    /// Only before the stretch at the very start of the input (HF `Metaspace`
    /// with `prepend_scheme: "first"`).
    First,
    /// Never.
    Never,
}

/// A merge as given by the source: `"left right"` or `[left, right]`.
#[derive(Debug, Clone)]
pub(crate) enum MergeSpec {
    Joined(String),
    Pair(String, String),
}

/// Everything needed to build a tokenizer, gathered from either source.
#[derive(Debug)]
pub(crate) struct VocabSpec {
    pub vocab: Vec<(String, u64)>,
    pub merges: Vec<MergeSpec>,
    pub unk_piece: Option<String>,
    pub byte_fallback: bool,
    /// Special tokens listed by the source; `None` means "infer them".
    pub specials: Option<Vec<String>>,
    pub prepend: PrependScheme,
}

/// The built tokenizer tables. Immutable once built.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub pieces: Vec<Box<str>>,
    pub kinds: Vec<TokenKind>,
    /// Decoded text of normal pieces (`▁` → space), precomputed for decode.
    pub surfaces: Vec<Box<str>>,
    pub piece_ids: HashMap<Box<str>, u32, PairBuildHasher>,
    /// Id of each single-character normal piece: a table for the Basic
    /// Multilingual Plane (the hot path), a map above it.
    pub bmp_ids: Box<[u32]>,
    pub char_ids: HashMap<char, u32, PairBuildHasher>,
    /// Id of the `▁` piece, or [`UNKNOWN_CHAR`]-tagged `▁` when absent.
    pub space_symbol: u32,
    /// `(left << 32 | right)` → `(rank << 32 | merged)`.
    pub pairs: HashMap<u64, u64, PairBuildHasher>,
    pub byte_ids: Option<[u32; 256]>,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether no mergeable piece has a `▁` after another character, so text
    /// can be cut before each run of `▁` and the parts encoded independently.
    pub split_before_spaces: bool,
    pub specials: SpecialMatcher,
    pub prepend: PrependScheme,
    /// Whether prompts start with BOS (when there is one).
    pub add_bos: bool,
    /// Whether decoding drops the `▁` of the first piece (SentencePiece's dummy prefix).
    pub strip_leading_space: bool,
    /// A GGUF vocabulary, encoded and decoded as llama.cpp does: special and user-defined
    /// tokens found by [`Partition`] (longest first), `<unk>` decoded as nothing.
    pub llama_cpp: Option<Partition>,
}

/// `<0xNN>` with upper-case hex, as SentencePiece names byte pieces.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

pub(crate) fn split_merge(rank: usize, merge: &MergeSpec) -> Result<(&str, &str), TokenizerError> {
    match merge {
        MergeSpec::Pair(left, right) => Ok((left, right)),
        MergeSpec::Joined(text) => {
            let mut parts = text.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => {
                    Ok((left, right))
                }
                _ => Err(TokenizerError::MalformedMerge {
                    rank,
                    merge: text.clone(),
                }),
            }
        }
    }
}

pub(crate) fn merge_display(merge: &MergeSpec) -> String {
    match merge {
        MergeSpec::Joined(text) => text.clone(),
        MergeSpec::Pair(left, right) => format!("{left} {right}"),
    }
}

/// Puts every `(piece, id)` in its slot, checking that ids are exactly `0..n`, each used once,
/// and that no piece repeats. Returns the pieces by id and the piece → id table.
pub(crate) fn place_pieces(
    vocab: Vec<(String, u64)>,
) -> Result<(Vec<Box<str>>, PieceIds), TokenizerError> {
    let size = vocab.len();
    if size == 0 {
        return Err(TokenizerError::EmptyVocab);
    }

    // Ids must be exactly 0..size, each once.
    let mut slots: Vec<Option<String>> = vec![None; size];
    let mut piece_ids: HashMap<Box<str>, u32, PairBuildHasher> =
        HashMap::with_capacity_and_hasher(size, PairBuildHasher::default());
    let mut beyond_size = false;
    for (piece, id) in vocab {
        if id >= u64::from(UNKNOWN_CHAR) {
            return Err(TokenizerError::IdOutOfRange { piece, id });
        }
        let id32 = id as u32;
        if let Some(&first) = piece_ids.get(piece.as_str()) {
            return Err(TokenizerError::DuplicatePiece {
                piece,
                first,
                second: id32,
            });
        }
        let Some(slot) = slots.get_mut(id as usize) else {
            // An id beyond `size` means some id below it is missing:
            // reported once all pieces are placed.
            beyond_size = true;
            continue;
        };
        if let Some(first) = slot {
            return Err(TokenizerError::DuplicateId {
                id: id32,
                first: first.clone(),
                second: piece,
            });
        }
        piece_ids.insert(piece.as_str().into(), id32);
        *slot = Some(piece);
    }
    if beyond_size {
        let missing = first_missing(&slots);
        return Err(TokenizerError::MissingId { missing, size });
    }
    let pieces: Vec<Box<str>> = slots
        .into_iter()
        .map(|p| p.unwrap_or_default().into_boxed_str())
        .collect();

    Ok((pieces, piece_ids))
}

/// Piece text → id.
pub(crate) type PieceIds = HashMap<Box<str>, u32, PairBuildHasher>;

impl Vocab {
    pub(crate) fn build(spec: VocabSpec) -> Result<Self, TokenizerError> {
        let (pieces, piece_ids) = place_pieces(spec.vocab)?;
        let size = pieces.len();

        let unk_id = match &spec.unk_piece {
            Some(unk) => match piece_ids.get(unk.as_str()) {
                Some(&id) => Some(id),
                None if spec.byte_fallback => None,
                None => return Err(TokenizerError::MissingUnknownToken(unk.clone())),
            },
            None if spec.byte_fallback => None,
            None => return Err(TokenizerError::MissingUnknownToken("<unk>".into())),
        };
        let bos_id = piece_ids.get("<s>").copied();
        let eos_id = piece_ids.get("</s>").copied();

        // Validate merges and give each producible piece the rank of its
        // first merge: SentencePiece ranks merges by the score of the merged
        // piece, and the converter lists merges in that order. Pieces with
        // equal scores get distinct ranks here (the merge list has no ties);
        // in Mistral's vocabulary only the 14 whitespace pieces `▁▁`..`▁`×16
        // tie (score -1e9), and for runs of `▁` the listed order segments
        // like SentencePiece's leftmost-first rule (checked on runs of every
        // length up to 40 and beyond in the fixture corpus).
        let mut piece_rank = vec![NONE; size];
        let mut merged = String::new();
        for (rank, merge) in spec.merges.iter().enumerate() {
            let (left, right) = split_merge(rank, merge)?;
            let unknown = |piece: String| TokenizerError::MergeUnknownPiece {
                rank,
                merge: merge_display(merge),
                piece,
            };
            if !piece_ids.contains_key(left) {
                return Err(unknown(left.to_owned()));
            }
            if !piece_ids.contains_key(right) {
                return Err(unknown(right.to_owned()));
            }
            merged.clear();
            merged.push_str(left);
            merged.push_str(right);
            let Some(&merged_id) = piece_ids.get(merged.as_str()) else {
                return Err(unknown(merged));
            };
            let slot = &mut piece_rank[merged_id as usize];
            if *slot == NONE {
                *slot = u32::try_from(rank).unwrap_or(NONE - 1);
            }
        }

        let specials: Vec<String> = match spec.specials {
            Some(list) => list,
            None => infer_specials(&pieces, &piece_rank),
        };
        let mut kinds: Vec<TokenKind> = pieces
            .iter()
            .map(|p| match parse_byte_piece(p) {
                Some(byte) => TokenKind::Byte(byte),
                None => TokenKind::Normal,
            })
            .collect();
        for special in &specials {
            if let Some(&id) = piece_ids.get(special.as_str()) {
                kinds[id as usize] = TokenKind::Control;
            }
        }
        if let Some(id) = unk_id {
            kinds[id as usize] = TokenKind::Unknown;
        }

        let byte_ids = if spec.byte_fallback {
            let mut ids = [0u32; 256];
            for (byte, slot) in ids.iter_mut().enumerate() {
                let piece = format!("<0x{byte:02X}>");
                *slot = *piece_ids
                    .get(piece.as_str())
                    .ok_or(TokenizerError::MissingByteToken { byte: byte as u8 })?;
            }
            Some(ids)
        } else {
            None
        };

        // Pair table. Like SentencePiece, two adjacent symbols merge whenever
        // their concatenation is a (producible) normal piece, so every split
        // of such a piece into two normal pieces is a pair, at the piece's rank.
        let mut pairs: HashMap<u64, u64, PairBuildHasher> = HashMap::default();
        for (id, piece) in pieces.iter().enumerate() {
            let rank = piece_rank[id];
            if rank == NONE || kinds[id] != TokenKind::Normal {
                continue;
            }
            for (cut, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(cut);
                let (Some(&l), Some(&r)) = (piece_ids.get(left), piece_ids.get(right)) else {
                    continue;
                };
                if kinds[l as usize] == TokenKind::Normal && kinds[r as usize] == TokenKind::Normal
                {
                    let key = (u64::from(l) << 32) | u64::from(r);
                    pairs.insert(key, (u64::from(rank) << 32) | id as u64);
                }
            }
        }

        let mut bmp_ids = vec![NONE; 0x1_0000].into_boxed_slice();
        let mut char_ids: HashMap<char, u32, PairBuildHasher> = HashMap::default();
        for (id, piece) in pieces.iter().enumerate() {
            if kinds[id] != TokenKind::Normal {
                continue;
            }
            let mut chars = piece.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                match bmp_ids.get_mut(c as usize) {
                    Some(slot) => *slot = id as u32,
                    None => {
                        char_ids.insert(c, id as u32);
                    }
                }
            }
        }
        let space_symbol = match bmp_ids[SPACE_SYMBOL as usize] {
            NONE => UNKNOWN_CHAR | SPACE_SYMBOL as u32,
            id => id,
        };

        // Cutting before a `▁` that follows another character is only exact
        // if no piece that BPE can form contains such a `▁`, and if `▁` itself
        // is known (so an unknown run never straddles the cut).
        let split_before_spaces = space_symbol & UNKNOWN_CHAR == 0
            && pieces.iter().enumerate().all(|(id, piece)| {
                piece_rank[id] == NONE || {
                    let rest = piece.trim_start_matches(SPACE_SYMBOL);
                    !rest.contains(SPACE_SYMBOL)
                }
            });

        let surfaces = pieces
            .iter()
            .zip(&kinds)
            .map(|(piece, kind)| match kind {
                TokenKind::Normal => piece.replace(SPACE_SYMBOL, " ").into_boxed_str(),
                _ => Box::<str>::default(),
            })
            .collect();

        let specials = SpecialMatcher::new(
            pieces
                .iter()
                .zip(&kinds)
                .enumerate()
                .filter(|(_, (_, kind))| matches!(kind, TokenKind::Control | TokenKind::Unknown))
                .map(|(id, (piece, _))| (&**piece, id as u32)),
        );

        Ok(Vocab {
            pieces,
            kinds,
            surfaces,
            piece_ids,
            bmp_ids,
            char_ids,
            space_symbol,
            pairs,
            byte_ids,
            unk_id,
            bos_id,
            eos_id,
            split_before_spaces,
            specials,
            prepend: spec.prepend,
            add_bos: true,
            strip_leading_space: true,
            llama_cpp: None,
        })
    }

    /// Builds the tables of a GGUF SentencePiece vocabulary, as llama.cpp's
    /// `llm_tokenizer_spm` reads it: two adjacent symbols merge whenever their concatenation is
    /// a token (of any type), the token with the highest score first (the leftmost pair among
    /// equal scores). Scores become ranks (equal scores, equal ranks; the merge loops take the
    /// leftmost pair among equal ranks), so the merge loops of the other vocabularies apply.
    pub(crate) fn from_sentencepiece(spec: SentencePieceVocab) -> Result<Self, TokenizerError> {
        let SentencePieceVocab {
            pieces,
            scores,
            token_types,
            bos_id,
            eos_id,
            unk_id,
            add_bos,
            add_space_prefix,
        } = spec;
        let size = pieces.len();
        for (field, len) in [
            ("tokenizer.ggml.scores", scores.len()),
            ("tokenizer.ggml.token_type", token_types.len()),
        ] {
            if len != 0 && len != size {
                return Err(TokenizerError::Field {
                    field: field.into(),
                    problem: format!("{len} entries for {size} tokens"),
                });
            }
        }
        // llama.cpp renames an empty piece, which could never be matched anyway.
        let vocab = pieces
            .into_iter()
            .enumerate()
            .map(|(id, piece)| {
                let piece = if piece.is_empty() {
                    format!("[EMPTY_{id}]")
                } else {
                    piece
                };
                (piece, id as u64)
            })
            .collect();
        let (pieces, piece_ids) = place_pieces(vocab)?;
        for (field, id) in [
            ("tokenizer.ggml.bos_token_id", bos_id),
            ("tokenizer.ggml.eos_token_id", eos_id),
            ("tokenizer.ggml.unknown_token_id", unk_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= size) {
                return Err(TokenizerError::Field {
                    field: field.into(),
                    problem: format!("id {id} is not in the vocabulary of {size} tokens"),
                });
            }
        }

        let mut kinds = Vec::with_capacity(size);
        for (id, piece) in pieces.iter().enumerate() {
            let ty = token_types.get(id).copied().unwrap_or(token_type::NORMAL);
            kinds.push(match ty {
                token_type::NORMAL => TokenKind::Normal,
                token_type::UNKNOWN => TokenKind::Unknown,
                token_type::CONTROL => TokenKind::Control,
                token_type::USER_DEFINED => TokenKind::UserDefined,
                token_type::BYTE => match parse_byte_piece(piece) {
                    Some(byte) => TokenKind::Byte(byte),
                    None => {
                        return Err(TokenizerError::Field {
                            field: "tokenizer.ggml.token_type".into(),
                            problem: format!(
                                "token {id} {piece:?} has type BYTE but is not a piece <0xNN>"
                            ),
                        })
                    }
                },
                _ => TokenKind::Unused,
            });
        }

        // Ranks: scores in decreasing order, equal scores sharing a rank (`-0.0` equals `0.0`,
        // as in llama.cpp's float comparison).
        let score = |id: usize| {
            let s = scores.get(id).copied().unwrap_or(0.0);
            if s == 0.0 {
                0.0
            } else {
                s
            }
        };
        let mut order: Vec<usize> = (0..size).collect();
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        let mut rank_of = vec![0u32; size];
        let mut rank = 0u32;
        for (i, &id) in order.iter().enumerate() {
            if i > 0 && score(id).total_cmp(&score(order[i - 1])).is_ne() {
                rank += 1;
            }
            rank_of[id] = rank;
        }

        // Single characters that are tokens are symbols by id; others by the tagged character.
        let mut bmp_ids = vec![NONE; 0x1_0000].into_boxed_slice();
        let mut char_ids: HashMap<char, u32, PairBuildHasher> = HashMap::default();
        for (id, piece) in pieces.iter().enumerate() {
            let mut chars = piece.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                match bmp_ids.get_mut(c as usize) {
                    Some(slot) => *slot = id as u32,
                    None => {
                        char_ids.insert(c, id as u32);
                    }
                }
            }
        }
        let symbol_of = |text: &str| -> Option<u32> {
            if let Some(&id) = piece_ids.get(text) {
                return Some(id);
            }
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some(UNKNOWN_CHAR | c as u32),
                _ => None,
            }
        };

        // Every split of a token into two symbols is a pair, at the token's rank.
        let mut pairs: HashMap<u64, u64, PairBuildHasher> = HashMap::default();
        let mut mergeable = vec![false; size];
        for (id, piece) in pieces.iter().enumerate() {
            for (cut, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(cut);
                let (Some(l), Some(r)) = (symbol_of(left), symbol_of(right)) else {
                    continue;
                };
                pairs.insert(
                    (u64::from(l) << 32) | u64::from(r),
                    (u64::from(rank_of[id]) << 32) | id as u64,
                );
                mergeable[id] = true;
            }
        }

        // Byte fallback as llama.cpp's `byte_to_token`: the `<0xNN>` piece, else the one-byte
        // piece. Without all 256, characters outside the vocabulary become `<unk>`.
        let mut byte_table = [NONE; 256];
        for (byte, slot) in byte_table.iter_mut().enumerate() {
            let piece = format!("<0x{byte:02X}>");
            if let Some(&id) = piece_ids.get(piece.as_str()) {
                *slot = id;
            } else if byte < 0x80 {
                if let Some(&id) =
                    piece_ids.get(char::from(byte as u8).encode_utf8(&mut [0; 4]) as &str)
                {
                    *slot = id;
                }
            }
        }
        let byte_ids = byte_table
            .iter()
            .all(|&id| id != NONE)
            .then_some(byte_table);
        if byte_ids.is_none() && unk_id.is_none() {
            return Err(TokenizerError::MissingByteToken {
                byte: byte_table.iter().position(|&id| id == NONE).unwrap_or(0) as u8,
            });
        }

        let space_symbol = match bmp_ids[SPACE_SYMBOL as usize] {
            NONE => UNKNOWN_CHAR | SPACE_SYMBOL as u32,
            id => id,
        };
        let split_before_spaces = space_symbol & UNKNOWN_CHAR == 0
            && pieces.iter().enumerate().all(|(id, piece)| {
                !mergeable[id]
                    || !piece
                        .trim_start_matches(SPACE_SYMBOL)
                        .contains(SPACE_SYMBOL)
            });

        let surfaces = pieces
            .iter()
            .zip(&kinds)
            .map(|(piece, kind)| match kind {
                TokenKind::Normal => piece.replace(SPACE_SYMBOL, " ").into_boxed_str(),
                TokenKind::UserDefined => piece.clone(),
                _ => Box::<str>::default(),
            })
            .collect();
        let partition = Partition::new(
            pieces
                .iter()
                .zip(&kinds)
                .enumerate()
                .filter(|(_, (_, kind))| {
                    matches!(
                        kind,
                        TokenKind::Control | TokenKind::Unknown | TokenKind::UserDefined
                    )
                })
                .map(|(id, (piece, kind))| (&**piece, id as u32, *kind == TokenKind::UserDefined)),
        );

        Ok(Vocab {
            pieces,
            kinds,
            surfaces,
            piece_ids,
            bmp_ids,
            char_ids,
            space_symbol,
            pairs,
            byte_ids,
            unk_id,
            bos_id,
            eos_id,
            split_before_spaces,
            specials: SpecialMatcher::default(),
            prepend: if add_space_prefix {
                PrependScheme::Always
            } else {
                PrependScheme::Never
            },
            add_bos,
            strip_leading_space: add_space_prefix,
            llama_cpp: Some(partition),
        })
    }

    /// The id of the normal single-character piece `c`, or `c` tagged unknown.
    #[inline]
    pub(crate) fn char_symbol(&self, c: char) -> u32 {
        let id = match self.bmp_ids.get(c as usize) {
            Some(&id) => id,
            None => self.char_ids.get(&c).copied().unwrap_or(NONE),
        };
        if id == NONE {
            UNKNOWN_CHAR | c as u32
        } else {
            id
        }
    }

    /// `(rank << 32 | merged id)` if the two symbols merge. A character outside the
    /// vocabulary merges only in a GGUF vocabulary (llama.cpp merges any two symbols whose
    /// text is a token).
    #[inline]
    pub(crate) fn pair(&self, left: u32, right: u32) -> Option<u64> {
        if (left | right) & UNKNOWN_CHAR != 0 && self.llama_cpp.is_none() {
            return None;
        }
        self.pairs
            .get(&((u64::from(left) << 32) | u64::from(right)))
            .copied()
    }
}

fn first_missing(slots: &[Option<String>]) -> u32 {
    slots
        .iter()
        .position(Option::is_none)
        .unwrap_or(slots.len()) as u32
}

/// Special tokens when the source does not list them (the model-file header
/// has only vocab and merges): `<s>`, `</s>`, `<pad>`, and every multi-character
/// piece that no merge produces and that is not a byte piece. BPE can never
/// output such a piece from text, which is exactly what a control token is
/// (`[INST]`, `[/INST]`, `[TOOL_CALLS]`, ... in newer Mistral vocabularies).
/// `<unk>` is handled separately as the unknown token.
fn infer_specials(pieces: &[Box<str>], piece_rank: &[u32]) -> Vec<String> {
    pieces
        .iter()
        .zip(piece_rank)
        .filter(|(piece, &rank)| {
            matches!(&***piece, "<s>" | "</s>" | "<pad>")
                || (rank == NONE
                    && piece.chars().nth(1).is_some()
                    && parse_byte_piece(piece).is_none())
        })
        .map(|(piece, _)| piece.to_string())
        .collect()
}
