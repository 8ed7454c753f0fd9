//! A synthetic byte-fallback BPE vocabulary of any size, valid for the torchless tokenizer:
//! `<unk>`, `<s>`, `</s>` = 0, 1, 2; `<0x00>`..`<0xFF>` = 3..258; then single characters (`▁` and
//! printable ASCII); then longer pieces, each made by exactly one merge of a shorter piece and a
//! character, ranked in the order they are added. `▁` (the space marker) only starts pieces, as
//! in SentencePiece vocabularies.

use std::collections::HashSet;

use torchless_format::TokenizerData;

use crate::convert::error::ConvertError;

/// Specials and byte pieces.
const FIXED_PIECES: usize = 3 + 256;

const SPACE: char = '\u{2581}';

fn alphabet() -> Vec<char> {
    let mut chars = vec![SPACE];
    chars.extend('a'..='z');
    chars.extend('A'..='Z');
    chars.extend('0'..='9');
    chars.extend(
        (0x21u8..=0x7e)
            .map(char::from)
            .filter(|c| !c.is_ascii_alphanumeric()),
    );
    chars
}

/// A synthetic byte-fallback BPE vocabulary of exactly `size` pieces with consistent merges,
/// valid for the torchless tokenizer: `<unk>`, `<s>`, `</s>` = 0, 1, 2, the byte pieces
/// `<0x00>`..`<0xFF>` = 3..258, then characters and longer pieces, each made by one merge.
pub fn synthetic_vocab(size: usize) -> Result<TokenizerData, ConvertError> {
    if size < FIXED_PIECES + 1 {
        return Err(ConvertError::InvalidOption(format!(
            "a synthetic vocabulary needs at least {} pieces, not {size}",
            FIXED_PIECES + 1
        )));
    }
    let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut seen: HashSet<String> = pieces.iter().cloned().collect();
    let mut merges = Vec::new();

    let alphabet = alphabet();
    let mut level: Vec<String> = Vec::new();
    for c in &alphabet {
        if pieces.len() == size {
            break;
        }
        let piece = c.to_string();
        seen.insert(piece.clone());
        pieces.push(piece.clone());
        level.push(piece);
    }
    // Each level extends every piece of the previous one by one character (never `▁`).
    while pieces.len() < size {
        let mut next = Vec::new();
        'outer: for prefix in &level {
            for c in alphabet.iter().skip(1) {
                if pieces.len() == size {
                    break 'outer;
                }
                let piece = format!("{prefix}{c}");
                if !seen.insert(piece.clone()) {
                    continue;
                }
                merges.push(format!("{prefix} {c}"));
                pieces.push(piece.clone());
                next.push(piece);
            }
        }
        if next.is_empty() {
            return Err(ConvertError::InvalidOption(format!(
                "cannot build a synthetic vocabulary of {size} pieces"
            )));
        }
        level = next;
    }
    let vocab = pieces
        .into_iter()
        .enumerate()
        .map(|(id, piece)| (piece, id as u32))
        .collect();
    Ok(TokenizerData::sentencepiece(vocab, merges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use torchless_tokenizer::{EncodeOptions, Tokenizer};

    #[test]
    fn vocabularies_of_every_size_load_and_encode() {
        for size in [260, 300, 1024, 32000] {
            let data = synthetic_vocab(size).unwrap();
            assert_eq!(data.vocab.len(), size);
            assert_eq!(data.vocab[1], ("<s>".to_string(), 1));
            assert_eq!(data.vocab[3 + 0x41], ("<0x41>".to_string(), 3 + 0x41));
            let tokenizer = Tokenizer::from_vocab_and_merges(data.vocab, data.merges).unwrap();
            let ids = tokenizer.encode("hello world ✓", EncodeOptions::default());
            assert_eq!(ids[0], 1);
            assert!(ids.iter().all(|&id| (id as usize) < size));
        }
    }
}
