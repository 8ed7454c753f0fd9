//! Multi-turn chat in the model's own template: the Jinja template the file carries (ChatML for
//! SmolLM2-Instruct, Llama 3's headers, ...), or Mistral's `[INST]` format for files without one
//! (`<s>[INST] question [/INST] answer</s>[INST] next question [/INST] ...`).
//!
//! Message text never becomes control tokens: a rendering is encoded whole (as Hugging Face
//! does) only when no message's text holds a control token's text; otherwise the messages are
//! encoded as plain text between the template's parts, so a user who types `<|im_end|>` cannot
//! end a turn or inject a role.

use torchless_tokenizer::{EncodeOptions, Tokenizer};

use crate::error::Result;
use crate::generate::{GenerateOptions, GeneratedToken, Generation, StopReason};
use crate::model::{Model, Residency};
use crate::session::Session;
use crate::template::{template_error, ChatMessage, ChatOptions, ChatRenderer};

/// How a model lays out a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// Mistral 7B Instruct's format, built in: used when the file carries no template.
    MistralInstruct,
    /// A Hugging Face chat template (Jinja source), as stored in the file's `chat_template`.
    Jinja(String),
}

/// Control-token texts that end an assistant turn in the templates people use (ChatML, Llama 3,
/// Phi, Gemma). Those that occur in a model's template join its EOS as stop tokens.
const END_OF_TURN_MARKERS: [&str; 5] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
];

/// Brackets around a message's index in a rendering: private-use characters that no template
/// writes, so the rendered text can be cut back into template parts and message parts.
const SLOT_OPEN: char = '\u{F8F0}';
const SLOT_CLOSE: char = '\u{F8F1}';

impl<R: Residency> Model<R> {
    /// The model's chat template: the one set by [`Model::set_chat_template`], else the file's
    /// own, else [`ChatTemplate::MistralInstruct`].
    pub fn chat_template(&self) -> ChatTemplate {
        let source = self
            .chat_template_override
            .as_deref()
            .or(self.file().chat_template());
        match source {
            Some(source) if !source.trim().is_empty() => ChatTemplate::Jinja(source.to_string()),
            _ => ChatTemplate::MistralInstruct,
        }
    }

    /// Replaces the file's chat template (`None`: back to the file's). A template that does
    /// not parse is an error, and the model keeps the template it had.
    pub fn set_chat_template(&mut self, source: Option<String>) -> Result<()> {
        if let Some(source) = &source {
            ChatRenderer::new(source)?;
        }
        self.chat_template_override = source;
        Ok(())
    }

    /// The text of a conversation in the model's template, as Hugging Face's
    /// `apply_chat_template(tokenize=False)` renders it (`/apply-template`).
    pub fn render_chat(&self, messages: &[ChatMessage], options: &ChatOptions) -> Result<String> {
        let tokenizer = self.tokenizer();
        match self.chat_template() {
            ChatTemplate::MistralInstruct => Ok(mistral_text(tokenizer, messages, options)),
            ChatTemplate::Jinja(source) => {
                let (bos, eos) = special_texts(tokenizer);
                ChatRenderer::new(&source)?.render(messages, options, &bos, &eos)
            }
        }
    }

    /// The token ids of a conversation in the model's template; with `add_generation_prompt`,
    /// followed by the opening of an assistant turn (what a reply is generated after).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode_chat_with(
            messages,
            &ChatOptions::generation_prompt(add_generation_prompt),
        )
    }

    /// [`Model::encode_chat`] with the template's other inputs (`tools`, ...).
    pub fn encode_chat_with(
        &self,
        messages: &[ChatMessage],
        options: &ChatOptions,
    ) -> Result<Vec<u32>> {
        let tokenizer = self.tokenizer();
        match self.chat_template() {
            ChatTemplate::MistralInstruct => Ok(mistral_ids(tokenizer, messages)),
            ChatTemplate::Jinja(source) => jinja_ids(tokenizer, &source, messages, options),
        }
    }

    /// The ids that end an assistant turn: EOS, and the end-of-turn markers the template uses
    /// (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3).
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        let tokenizer = self.tokenizer();
        let mut ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        if let ChatTemplate::Jinja(source) = self.chat_template() {
            for marker in END_OF_TURN_MARKERS {
                if let Some(id) = tokenizer.piece_to_id(marker) {
                    if source.contains(marker) && tokenizer.is_special(id) && !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        ids
    }
}

/// Mistral's `[INST]` layout. System messages are put before the first user message, as the
/// Mistral template does; assistant messages are closed with EOS.
fn mistral_ids(tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Vec<u32> {
    let plain = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    let control = |piece: &str| {
        tokenizer
            .piece_to_id(piece)
            .filter(|&id| tokenizer.is_special(id))
    };
    let mut ids: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    let mut system = String::new();
    for message in messages {
        match message.role.as_str() {
            "system" => {
                system.push_str(message.content.trim());
                system.push_str("\n\n");
            }
            "assistant" => {
                // The reference template writes `" " + answer + eos`; the answer follows
                // `[/INST]` with its own leading space piece.
                ids.extend(tokenizer.encode(message.content.trim(), plain));
                ids.extend(tokenizer.eos_id());
            }
            _ => {
                let text = format!("{system}{}", message.content.trim());
                system.clear();
                match (control("[INST]"), control("[/INST]")) {
                    // Newer vocabularies: the markers are control tokens, the message plain text.
                    (Some(open), Some(close)) => {
                        ids.push(open);
                        ids.extend(tokenizer.encode(&text, plain));
                        ids.push(close);
                    }
                    // Mistral 7B v0.1: the markers are ordinary text, encoded together with the
                    // message exactly as the reference template string would be.
                    _ => ids.extend(tokenizer.encode(&format!("[INST] {text} [/INST]"), plain)),
                }
            }
        }
    }
    ids
}

/// The text [`mistral_ids`] encodes: `<s>[INST] question [/INST] answer</s>...`.
fn mistral_text(tokenizer: &Tokenizer, messages: &[ChatMessage], options: &ChatOptions) -> String {
    let (bos, eos) = special_texts(tokenizer);
    let mut text = bos;
    let mut system = String::new();
    for message in messages {
        match message.role.as_str() {
            "system" => {
                system.push_str(message.content.trim());
                system.push_str("\n\n");
            }
            "assistant" => {
                text.push(' ');
                text.push_str(message.content.trim());
                text.push_str(&eos);
            }
            _ => {
                text.push_str(&format!(
                    "[INST] {system}{} [/INST]",
                    message.content.trim()
                ));
                system.clear();
            }
        }
    }
    // The layout has no separate opening of the assistant's turn: `[/INST]` is it.
    let _ = options.add_generation_prompt;
    text
}

/// The texts of BOS and EOS, as templates see them in `bos_token` and `eos_token`.
fn special_texts(tokenizer: &Tokenizer) -> (String, String) {
    let piece = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token_to_piece(id))
            .unwrap_or("")
            .to_string()
    };
    (piece(tokenizer.bos_id()), piece(tokenizer.eos_id()))
}

/// Encodes a Jinja template's rendering. When no message's text holds a control token's text,
/// that is the rendering encoded whole, as Hugging Face does. Otherwise each message's content
/// is replaced by a numbered slot, and the template's text is encoded with special tokens parsed
/// and each message's text without, so a message cannot forge a turn.
fn jinja_ids(
    tokenizer: &Tokenizer,
    source: &str,
    messages: &[ChatMessage],
    options: &ChatOptions,
) -> Result<Vec<u32>> {
    let renderer = ChatRenderer::new(source)?;
    let (bos, eos) = special_texts(tokenizer);
    let markup = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    let plain = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    let forges = messages
        .iter()
        .any(|m| tokenizer.encode(&m.content, markup) != tokenizer.encode(&m.content, plain));
    let with_bos = |mut ids: Vec<u32>| {
        // A template that writes `bos_token` itself has put it in already; otherwise the
        // tokenizer's convention decides.
        if let Some(bos) = tokenizer.bos_id().filter(|_| tokenizer.adds_bos()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    };
    if !forges {
        let text = renderer.render(messages, options, &bos, &eos)?;
        return Ok(with_bos(tokenizer.encode(&text, markup)));
    }
    let slots: Vec<ChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage {
            content: format!("{SLOT_OPEN}{i}{SLOT_CLOSE}"),
            ..m.clone()
        })
        .collect();
    let rendered = renderer.render(&slots, options, &bos, &eos)?;

    let mut ids = Vec::new();
    let mut rest = rendered.as_str();
    while let Some(open) = rest.find(SLOT_OPEN) {
        let (before, after) = rest.split_at(open);
        ids.extend(tokenizer.encode(before, markup));
        let after = &after[SLOT_OPEN.len_utf8()..];
        let close = after
            .find(SLOT_CLOSE)
            .ok_or_else(|| template_error("it cut a message's text apart"))?;
        let index: usize = after[..close]
            .parse()
            .map_err(|_| template_error("it changed a message's text"))?;
        let message = messages
            .get(index)
            .ok_or_else(|| template_error("it changed a message's text"))?;
        ids.extend(tokenizer.encode(&message.content, plain));
        rest = &after[close + SLOT_CLOSE.len_utf8()..];
    }
    ids.extend(tokenizer.encode(rest, markup));
    Ok(with_bos(ids))
}

/// A conversation over one session: the KV cache is kept across turns, so each turn only
/// processes what is new since the cache (usually just the new user message).
pub struct Chat<'s, 'm, R: Residency> {
    session: &'s mut Session<'m, R>,
    messages: Vec<ChatMessage>,
    turns: usize,
}

impl<R: Residency> std::fmt::Debug for Chat<'_, '_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("turns", &self.turns)
            .field("messages", &self.messages.len())
            .finish()
    }
}

impl<'s, 'm, R: Residency> Chat<'s, 'm, R> {
    /// Starts a conversation; the session is reset.
    pub fn new(session: &'s mut Session<'m, R>) -> Self {
        session.reset();
        Self {
            session,
            messages: Vec::new(),
            turns: 0,
        }
    }

    /// Starts a conversation with a system message.
    pub fn with_system(session: &'s mut Session<'m, R>, system: impl Into<String>) -> Self {
        let mut chat = Self::new(session);
        chat.messages.push(ChatMessage::system(system));
        chat
    }

    /// Number of completed turns.
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The token ids of the whole conversation followed by `message` and the opening of the
    /// assistant's answer, in the model's template.
    pub fn prompt_ids(&self, message: &str) -> Result<Vec<u32>> {
        let mut messages = self.messages.clone();
        messages.push(ChatMessage::user(message.trim()));
        self.session.model().encode_chat(&messages, true)
    }

    /// Sends a user message and streams the answer through `on_token`. The answer ends at an
    /// end-of-turn token (or `max_tokens`), which stays in the cache to close the turn.
    pub fn send(
        &mut self,
        message: &str,
        options: GenerateOptions,
        on_token: impl FnMut(&GeneratedToken) -> std::ops::ControlFlow<()>,
    ) -> Result<Generation> {
        let ids = self.prompt_ids(message)?;
        // Keep the cached prefix the new rendering shares; recompute the rest (the previous
        // answer re-encoded may differ from the tokens that were sampled).
        // The session's tokens include a pending (sampled, not yet run) last token.
        let cached = self.session.tokens();
        let shared = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        if shared < cached.len() {
            // `shared` is at most the run position here (only the pending token may lie past it).
            self.session.rewind(shared)?;
        }
        let mut options = options;
        for id in self.session.model().end_of_turn_ids() {
            if !options.stop_tokens.contains(&id) {
                options.stop_tokens.push(id);
            }
        }
        let answer = self.session.generate(&ids[shared..], options, on_token)?;
        self.messages.push(ChatMessage::user(message.trim()));
        let mut text = answer.text.clone();
        if answer.stats.stop_reason != StopReason::EndOfSequence {
            text = text.trim_end().to_string();
        }
        self.messages.push(ChatMessage::assistant(text.trim()));
        self.turns += 1;
        Ok(answer)
    }
}
