//! Multi-turn chat with the Mistral instruct template:
//! `<s>[INST] question [/INST] answer</s>[INST] next question [/INST] ...`.

use torchless_tokenizer::EncodeOptions;

use crate::error::Result;
use crate::generate::{GenerateOptions, GeneratedToken, Generation};
use crate::model::Residency;
use crate::session::Session;

/// A conversation over one session: the KV cache is kept across turns, so each turn only
/// processes the new user message.
pub struct Chat<'s, 'm, R: Residency> {
    session: &'s mut Session<'m, R>,
    turns: usize,
}

impl<R: Residency> std::fmt::Debug for Chat<'_, '_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("turns", &self.turns).finish()
    }
}

impl<'s, 'm, R: Residency> Chat<'s, 'm, R> {
    /// Starts a conversation; the session is reset.
    pub fn new(session: &'s mut Session<'m, R>) -> Self {
        session.reset();
        Self { session, turns: 0 }
    }

    /// Number of completed turns.
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// The token ids of a user turn: `[INST] message [/INST]`, with BOS before the first turn.
    /// Control tokens (`[INST]` in vocabularies that have them, `<s>`, `</s>`) are parsed as
    /// special ids; the message text itself is encoded as plain text.
    pub fn user_turn_ids(&self, message: &str) -> Vec<u32> {
        let tokenizer = self.session.model().tokenizer();
        let mut ids = Vec::new();
        if self.turns == 0 {
            ids.extend(tokenizer.bos_id());
        }
        let plain = EncodeOptions {
            add_bos: false,
            parse_special: false,
        };
        let control = |piece: &str| {
            tokenizer
                .piece_to_id(piece)
                .filter(|&id| tokenizer.is_special(id))
        };
        match (control("[INST]"), control("[/INST]")) {
            // Newer vocabularies: the markers are control tokens, the message plain text.
            (Some(open), Some(close)) => {
                ids.push(open);
                ids.extend(tokenizer.encode(message.trim(), plain));
                ids.push(close);
            }
            // Mistral 7B v0.1: the markers are ordinary text, encoded together with the message
            // exactly as the reference template string would be. The message is never parsed for
            // special tokens, so it cannot inject them.
            _ => ids.extend(tokenizer.encode(&format!("[INST] {} [/INST]", message.trim()), plain)),
        }
        ids
    }

    /// Sends a user message and streams the answer through `on_token`. The answer ends at EOS (or
    /// `max_tokens`); the EOS stays in the cache to close the turn, as the template requires.
    pub fn send(
        &mut self,
        message: &str,
        options: GenerateOptions,
        on_token: impl FnMut(&GeneratedToken) -> std::ops::ControlFlow<()>,
    ) -> Result<Generation> {
        let ids = self.user_turn_ids(message);
        let answer = self.session.generate(&ids, options, on_token)?;
        self.turns += 1;
        Ok(answer)
    }
}
