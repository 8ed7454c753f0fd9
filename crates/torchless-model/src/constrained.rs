//! Structured output: constraining generation to a JSON schema with
//! [llguidance](https://github.com/guidance-ai/llguidance) (a structured-output backend of llama.cpp
//! and vLLM).
//!
//! Three objects, from the longest-lived to the shortest:
//!
//! - [`ConstraintVocab`]: the tokenizer's vocabulary as llguidance sees it (every token's bytes
//!   in a trie); built once per tokenizer, shared by every grammar.
//! - [`Grammar`]: a compiled JSON schema; cheap to clone, shared by every request that uses it,
//!   given to generation in [`GenerateOptions::grammar`](crate::GenerateOptions::grammar).
//! - [`Constraint`]: one generation's parser state: masks a row of logits so that only tokens
//!   that keep the output a valid prefix can be sampled, and advances with each sampled token.
//!
//! Stop tokens (EOS, a chat template's end of turn) are allowed exactly when the output so far
//! is a complete document; once the grammar allows nothing more the generation ends.

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use torchless_tokenizer::{TokenKind, Tokenizer};

/// What can go wrong building or running a constraint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConstraintError {
    /// The vocabulary could not be given to the constraint library.
    #[error("cannot build the constraint vocabulary: {0}")]
    Vocabulary(String),
    /// The schema is not valid JSON, or uses something the library cannot compile.
    #[error("invalid JSON schema: {0}")]
    Schema(String),
    /// A token the grammar does not allow was given to [`Constraint::accept`].
    #[error("token {token} is not allowed by the grammar here: {message}")]
    Rejected {
        /// The token id.
        token: u32,
        /// The library's reason.
        message: String,
    },
    /// The library failed computing the mask (a parser limit reached, or an internal error).
    #[error("the grammar's parser failed: {0}")]
    Parser(String),
    /// No token of the vocabulary can continue the output (the grammar cannot be satisfied
    /// with this vocabulary, or it is finished and no stop token was given).
    #[error("no token can continue the structured output")]
    NoTokenAllowed,
}

/// The tokenizer's vocabulary as the constraint library needs it: each token's bytes, control
/// tokens marked so that no text ever matches them. Build it once per tokenizer (it takes tens of
/// milliseconds on a 50k vocabulary) and share it.
#[derive(Clone)]
pub struct ConstraintVocab {
    factory: Arc<ParserFactory>,
    vocab_size: usize,
}

impl std::fmt::Debug for ConstraintVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintVocab")
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl ConstraintVocab {
    /// The vocabulary of `tokenizer` (byte-level BPE or SentencePiece with byte fallback).
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, ConstraintError> {
        let n = tokenizer.vocab_size();
        let mut words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let bytes = match tokenizer.token_kind(id) {
                    // A GGUF user-defined token decodes as its piece, as it is.
                    Some(TokenKind::UserDefined) => tokenizer
                        .token_to_piece(id)
                        .unwrap_or("")
                        .as_bytes()
                        .to_vec(),
                    _ => tokenizer.token_bytes(id).unwrap_or_default(),
                };
                // toktrie's convention: a leading 0xFF marks a special token (0xFF never
                // occurs in UTF-8 text, so the grammar can never produce it). Control tokens and
                // tokens with no bytes must never be sampled under a constraint.
                if tokenizer.is_special(id) || bytes.is_empty() {
                    let mut special = vec![0xFF];
                    special.extend(tokenizer.token_to_piece(id).unwrap_or("").as_bytes());
                    special.extend(format!("[{id}]").as_bytes());
                    special
                } else {
                    bytes
                }
            })
            .collect();
        // The library's own EOS is an extra, unsampleable token: which real ids end the
        // generation depends on the request (EOS, end of turn), so `Constraint` decides that.
        words.push(b"\xFF<constraint-eos>".to_vec());
        let info = TokRxInfo::new(words.len() as u32, n as u32);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            vocab_size: n,
        })
    }

    /// Number of real tokens (the tokenizer's vocabulary size).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// A compiled grammar (today: a JSON schema). Clones share the compiled form; each generation
/// gets its own [`Constraint`] from it.
#[derive(Clone)]
pub struct Grammar {
    /// The schema as given (equality and `Debug` use it).
    source: Arc<str>,
    vocab_size: usize,
    /// A parser in its initial state, deep-cloned for each generation (compiling again per
    /// request would cost the schema compilation each time). The mutex only makes it shareable
    /// across threads: it is locked for the clone.
    start: Arc<Mutex<Matcher>>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("source", &self.source)
            .finish()
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Grammar {
    /// A grammar for JSON documents that match `schema` (a JSON Schema, as OpenAI's
    /// `response_format.json_schema.schema`). Unless the schema sets llguidance's `x-guidance`
    /// options, the output is compact JSON with `", "` and `": "` separators and no other
    /// whitespace (free whitespace lets a small model ramble until `max_tokens`).
    ///
    /// Fails with [`ConstraintError::Schema`] naming the problem when the schema cannot be
    /// compiled (unsupported keyword, bad pattern, unsatisfiable, ...).
    pub fn json_schema(vocab: &ConstraintVocab, schema: &Value) -> Result<Self, ConstraintError> {
        let source: Arc<str> = schema.to_string().into();
        let mut schema = schema.clone();
        match &mut schema {
            Value::Object(map) => {
                if !map.contains_key("x-guidance") {
                    map.insert(
                        "x-guidance".into(),
                        serde_json::json!({
                            "whitespace_flexible": false,
                            "item_separator": ", ",
                            "key_separator": ": ",
                        }),
                    );
                }
            }
            Value::Bool(_) => {}
            other => {
                return Err(ConstraintError::Schema(format!(
                    "a schema is an object or a boolean, not {other}"
                )))
            }
        }
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = vocab
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Schema(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Schema(e));
        }
        Ok(Self {
            source,
            vocab_size: vocab.vocab_size,
            start: Arc::new(Mutex::new(matcher)),
        })
    }

    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    pub fn json_object(vocab: &ConstraintVocab) -> Result<Self, ConstraintError> {
        Self::json_schema(vocab, &serde_json::json!({"type": "object"}))
    }

    /// The schema this grammar was compiled from, as JSON text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A fresh constraint, at the start of a document.
    pub fn constraint(&self) -> Constraint {
        let matcher = self
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deep_clone();
        Constraint {
            matcher,
            vocab_size: self.vocab_size,
            mask: None,
        }
    }
}

/// The parser state of one generation under a [`Grammar`].
pub struct Constraint {
    matcher: Matcher,
    vocab_size: usize,
    /// The mask of the current position, computed at most once per position.
    mask: Option<SimpleVob>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl Constraint {
    /// Sets to `-inf` every logit the grammar does not allow here: tokens outside the
    /// vocabulary, tokens that would break the document, and `stop_tokens` unless the document
    /// is complete. Call it before any other sampling step (penalties, temperature, top-k/p).
    ///
    /// Returns how many tokens remain; [`ConstraintError::NoTokenAllowed`] if none.
    pub fn mask_logits(
        &mut self,
        logits: &mut [f32],
        stop_tokens: &[u32],
    ) -> Result<usize, ConstraintError> {
        let accepting = self.is_accepting();
        let n = self.vocab_size;
        let mask = self.mask()?;
        let mut allowed = 0;
        for (id, logit) in logits.iter_mut().enumerate() {
            let ok = if stop_tokens.contains(&(id as u32)) {
                accepting
            } else {
                id < n && mask.is_allowed(id as u32)
            };
            if ok {
                allowed += 1;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        if allowed == 0 {
            return Err(ConstraintError::NoTokenAllowed);
        }
        Ok(allowed)
    }

    /// Whether the grammar allows `token` next (stop tokens are not known here: see
    /// [`is_accepting`](Self::is_accepting)).
    pub fn allows(&mut self, token: u32) -> Result<bool, ConstraintError> {
        let n = self.vocab_size;
        Ok((token as usize) < n && self.mask()?.is_allowed(token))
    }

    fn mask(&mut self) -> Result<&SimpleVob, ConstraintError> {
        let mask = match self.mask.take() {
            Some(mask) => mask,
            None => self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| ConstraintError::Parser(e.to_string()))?,
        };
        Ok(self.mask.insert(mask))
    }

    /// Advances past `token`, which must be one the grammar allows (not a stop token).
    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        if !self.allows(token)? {
            return Err(ConstraintError::Rejected {
                token,
                message: "not in the mask".into(),
            });
        }
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Rejected {
                token,
                message: e.to_string(),
            })
    }

    /// Whether the output so far is a complete document (a stop token may come next).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the document is complete and nothing may follow it: the generation should end.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/models/llama-tokenizer.json"
        );
        Tokenizer::from_file(path).unwrap()
    }

    #[test]
    fn a_bad_schema_is_an_error_naming_the_problem() {
        let vocab = ConstraintVocab::new(&tokenizer()).unwrap();
        let bad = serde_json::json!({"type": "string", "pattern": "(unclosed"});
        let e = Grammar::json_schema(&vocab, &bad).unwrap_err();
        assert!(matches!(e, ConstraintError::Schema(_)), "{e}");
        let e = Grammar::json_schema(&vocab, &serde_json::json!({"type": "nonsense"})).unwrap_err();
        assert!(e.to_string().contains("nonsense"), "{e}");
        assert!(Grammar::json_schema(&vocab, &serde_json::json!(3)).is_err());
    }

    #[test]
    fn forcing_a_document_token_by_token_finishes_it() {
        let tok = tokenizer();
        let vocab = ConstraintVocab::new(&tok).unwrap();
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"], "additionalProperties": false});
        let grammar = Grammar::json_schema(&vocab, &schema).unwrap();
        let mut c = grammar.constraint();
        let eos = tok.piece_to_id("<|im_end|>").unwrap();
        // Greedy over a flat row: always the lowest allowed id, which must end in a document.
        let mut text = Vec::new();
        for _ in 0..64 {
            let mut logits = vec![0.0f32; tok.vocab_size()];
            c.mask_logits(&mut logits, &[eos]).unwrap();
            let id = logits.iter().position(|l| l.is_finite()).unwrap() as u32;
            if id == eos {
                break;
            }
            c.accept(id).unwrap();
            text.extend(tok.token_bytes(id).unwrap());
            if c.is_finished() {
                break;
            }
        }
        let value: Value = serde_json::from_slice(&text).unwrap();
        assert!(matches!(value["a"].as_str(), Some("x" | "y")), "{value}");
        assert!(c.is_accepting());
        assert!(matches!(
            c.accept(0),
            Err(ConstraintError::Rejected { token: 0, .. })
        ));
    }
}
