//! Decoding ids back to text, in one go or one id at a time.
//!
//! Both follow SentencePiece's `Decode`:
//! - `▁` becomes a space; the leading `▁` of the first normal piece is dropped
//!   if nothing visible came before it (control tokens are invisible), and
//!   once a piece has had its `▁` dropped no later piece loses one;
//! - runs of byte pieces are decoded as UTF-8 one character at a time, and a
//!   byte that does not start a well-formed character becomes one U+FFFD;
//! - control tokens decode to nothing and `<unk>` to ` ⁇ ` (to nothing in a GGUF
//!   vocabulary, as llama.cpp and transformers decode it); user-defined tokens of a GGUF
//!   vocabulary decode to their text as it is, unused ones to nothing.
//!
//! With `skip_special: false`, control and unknown tokens show their piece text
//! instead, and count as visible text.
//!
//! Ids outside the vocabulary are ignored, as if absent.

use crate::byte_level::ByteVocab;
use crate::options::DecodeOptions;
use crate::vocab::{TokenKind, Vocab};

/// SentencePiece's default surface for `<unk>`.
pub(crate) const UNK_SURFACE: &str = " \u{2047} ";

/// What SentencePiece's leading-space rule needs to remember.
#[derive(Debug, Clone, Copy)]
struct LeadingSpace {
    /// Whether the next normal piece may still lose a leading `▁`.
    may_strip: bool,
    /// Whether the previous non-byte piece had its `▁` stripped.
    just_stripped: bool,
}

impl LeadingSpace {
    const START: LeadingSpace = LeadingSpace {
        may_strip: true,
        just_stripped: false,
    };

    /// Appends the text of non-byte token `id` to `out`. `text_so_far_empty`
    /// says whether anything at all has been output before it.
    fn push_piece(
        &mut self,
        vocab: &Vocab,
        id: usize,
        kind: TokenKind,
        options: DecodeOptions,
        text_so_far_empty: bool,
        out: &mut String,
    ) {
        if self.just_stripped || !text_so_far_empty {
            self.may_strip = false;
        }
        self.just_stripped = false;
        match kind {
            TokenKind::Normal => {
                let surface = &*vocab.surfaces[id];
                if self.may_strip
                    && vocab.strip_leading_space
                    && vocab.pieces[id].starts_with(crate::vocab::SPACE_SYMBOL)
                {
                    out.push_str(surface.get(1..).unwrap_or_default());
                    self.just_stripped = true;
                } else {
                    out.push_str(surface);
                }
            }
            TokenKind::UserDefined => out.push_str(&vocab.surfaces[id]),
            TokenKind::Control | TokenKind::Unused if options.skip_special => {}
            TokenKind::Unused => {}
            // llama.cpp (and transformers) skip `<unk>` as a special token.
            TokenKind::Unknown if options.skip_special && vocab.llama_cpp.is_some() => {}
            TokenKind::Unknown if options.skip_special => out.push_str(UNK_SURFACE),
            TokenKind::Control | TokenKind::Unknown => out.push_str(&vocab.pieces[id]),
            // Callers handle bytes before calling this.
            TokenKind::Byte(_) => {}
        }
    }
}

/// One-shot decode.
pub(crate) fn decode(vocab: &Vocab, ids: &[u32], options: DecodeOptions) -> String {
    let mut out = String::with_capacity(ids.len() * 4);
    let mut bytes: Vec<u8> = Vec::new();
    let mut leading = LeadingSpace::START;
    for &id in ids {
        let Some(&kind) = vocab.kinds.get(id as usize) else {
            continue;
        };
        if let TokenKind::Byte(byte) = kind {
            bytes.push(byte);
            continue;
        }
        push_bytes_lossy(&bytes, &mut out);
        bytes.clear();
        let empty = out.is_empty();
        leading.push_piece(vocab, id as usize, kind, options, empty, &mut out);
    }
    push_bytes_lossy(&bytes, &mut out);
    out
}

/// Decodes a complete run of byte pieces the way SentencePiece does: one
/// well-formed UTF-8 character at a time, and one U+FFFD for each byte at which
/// no well-formed character starts (unlike `String::from_utf8_lossy`, which
/// replaces a whole ill-formed subsequence with one U+FFFD).
fn push_bytes_lossy(bytes: &[u8], out: &mut String) {
    let mut at = 0;
    while at < bytes.len() {
        match decode_utf8_char(&bytes[at..]) {
            Some((c, len)) => {
                out.push(c);
                at += len;
            }
            None => {
                out.push(char::REPLACEMENT_CHARACTER);
                at += 1;
            }
        }
    }
}

/// The well-formed UTF-8 character at the start of `bytes`, with its length
/// (SentencePiece's `DecodeUTF8`: no overlong forms, no surrogates, nothing
/// above U+10FFFF).
fn decode_utf8_char(bytes: &[u8]) -> Option<(char, usize)> {
    let lead = *bytes.first()?;
    let is_trail = |i: usize| bytes.get(i).is_some_and(|&b| b & 0xC0 == 0x80);
    let trail = |i: usize| u32::from(bytes[i] & 0x3F);
    let (len, cp, min) = if lead < 0x80 {
        return Some((char::from(lead), 1));
    } else if lead & 0xE0 == 0xC0 && is_trail(1) {
        (2, (u32::from(lead & 0x1F) << 6) | trail(1), 0x80)
    } else if lead & 0xF0 == 0xE0 && is_trail(1) && is_trail(2) {
        (
            3,
            (u32::from(lead & 0x0F) << 12) | (trail(1) << 6) | trail(2),
            0x800,
        )
    } else if lead & 0xF8 == 0xF0 && is_trail(1) && is_trail(2) && is_trail(3) {
        let cp = (u32::from(lead & 0x07) << 18) | (trail(1) << 12) | (trail(2) << 6) | trail(3);
        (4, cp, 0x10000)
    } else {
        return None;
    };
    if cp < min {
        return None;
    }
    // `from_u32` rejects surrogates and values above U+10FFFF.
    char::from_u32(cp).map(|c| (c, len))
}

/// Decodes ids one at a time, for printing tokens as they are generated.
///
/// Each [`push`](StreamDecoder::push) returns the text that became final with
/// that id (possibly empty): bytes of a character split across byte pieces
/// are held back until the character is complete, or until it is certain they
/// cannot form one (then each becomes U+FFFD, as in [`Tokenizer::decode`]).
/// [`finish`](StreamDecoder::finish) returns what is still held back. The
/// concatenation of everything returned equals `Tokenizer::decode` of the same
/// ids with the same options, for any id sequence.
///
/// [`Tokenizer::decode`]: crate::Tokenizer::decode
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    vocab: StreamVocab<'a>,
    options: DecodeOptions,
    /// Byte-piece bytes not yet output: a prefix of a possibly valid
    /// character, so at most 3 bytes.
    pending: Vec<u8>,
    leading: LeadingSpace,
    emitted_any: bool,
}

/// The tables a stream decodes with.
#[derive(Debug, Clone, Copy)]
enum StreamVocab<'a> {
    SentencePiece(&'a Vocab),
    ByteLevel(&'a ByteVocab),
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(vocab: &'a Vocab, options: DecodeOptions) -> Self {
        Self::with_vocab(StreamVocab::SentencePiece(vocab), options)
    }

    pub(crate) fn new_byte_level(vocab: &'a ByteVocab, options: DecodeOptions) -> Self {
        Self::with_vocab(StreamVocab::ByteLevel(vocab), options)
    }

    fn with_vocab(vocab: StreamVocab<'a>, options: DecodeOptions) -> Self {
        StreamDecoder {
            vocab,
            options,
            pending: Vec::with_capacity(4),
            leading: LeadingSpace::START,
            emitted_any: false,
        }
    }

    /// Feeds one id and returns the text it completes (often empty for byte
    /// pieces in the middle of a character). Ids outside the vocabulary are
    /// ignored.
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        self.push_to(id, &mut out);
        out
    }

    /// Like [`push`](Self::push), appending to `out` instead of allocating.
    pub fn push_to(&mut self, id: u32, out: &mut String) {
        let vocab = match self.vocab {
            StreamVocab::SentencePiece(vocab) => vocab,
            StreamVocab::ByteLevel(vocab) => {
                vocab.push_token_bytes(id, self.options.skip_special, &mut self.pending);
                self.drain_pending(false, out);
                return;
            }
        };
        let Some(&kind) = vocab.kinds.get(id as usize) else {
            return;
        };
        let start = out.len();
        if let TokenKind::Byte(byte) = kind {
            self.pending.push(byte);
            self.drain_pending(false, out);
        } else {
            self.drain_pending(true, out);
            let empty = !self.emitted_any && out.len() == start;
            self.leading
                .push_piece(vocab, id as usize, kind, self.options, empty, out);
        }
        self.emitted_any |= out.len() > start;
    }

    /// Ends the stream, returning any held-back bytes (each one U+FFFD, since
    /// they never completed a character).
    pub fn finish(mut self) -> String {
        let mut out = String::new();
        self.drain_pending(true, &mut out);
        out
    }

    /// Outputs every pending character whose fate is decided. With `end`,
    /// the byte run is over, so an incomplete character is decided too.
    ///
    /// An ill-formed sequence becomes one U+FFFD per byte for SentencePiece
    /// (its `DecodeUTF8`), one per sequence for byte-level streams (what
    /// `String::from_utf8_lossy` of the whole stream gives, as Hugging Face).
    fn drain_pending(&mut self, end: bool, out: &mut String) {
        let per_byte = matches!(self.vocab, StreamVocab::SentencePiece(_));
        let mut at = 0;
        while at < self.pending.len() {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(valid) => {
                    out.push_str(valid);
                    at = self.pending.len();
                }
                Err(error) => {
                    let valid_len = error.valid_up_to();
                    if let Ok(valid) = std::str::from_utf8(&self.pending[at..at + valid_len]) {
                        out.push_str(valid);
                    }
                    at += valid_len;
                    // `error_len() == None`: the bytes so far begin a
                    // well-formed character that more bytes could complete.
                    let bad = match error.error_len() {
                        None if !end => break,
                        None => self.pending.len() - at,
                        Some(bad) => bad,
                    };
                    out.push(char::REPLACEMENT_CHARACTER);
                    at += if per_byte { 1 } else { bad };
                }
            }
        }
        self.pending.drain(..at);
    }
}
