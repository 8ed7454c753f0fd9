//! GGUF vocabularies against llama.cpp (`llama-tokenize`) and `transformers`, on 2608 texts
//! each: the real Mistral v0.1 SentencePiece vocabulary, a small trained SentencePiece one
//! (with and without `add_space_prefix`), and a trained byte-level one per pre-tokenizer
//! (`gpt-2`, `default`, `smollm`, `llama-bpe`, `qwen2`, `tekken`). Fixtures from
//! `scripts/fixtures/make_gguf_tokenizer_fixtures.py`.
//!
//! The ids must equal llama.cpp's on every text, with and without special-token parsing, and
//! decoding the ids must give the text back. Where `transformers` disagrees with llama.cpp the
//! tests follow llama.cpp (the program that defines GGUF files) and check that the number of
//! disagreements is the one the fixtures record.
//!
//! The files are read by a small GGUF metadata reader below: the tokenizer crate knows no other
//! crate of the workspace.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use torchless_tokenizer::{
    token_type, AddedToken, ByteLevelBpe, DecodeOptions, EncodeOptions, Pretokenizer,
    SentencePieceVocab, TokenKind, Tokenizer,
};

const VOCABS: [&str; 9] = [
    "mistral-v0.1",
    "spm-small",
    "spm-small-noprefix",
    "gpt-2",
    "default",
    "smollm",
    "llama-bpe",
    "qwen2",
    "tekken",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

fn read(path: PathBuf) -> String {
    common::read_text(&path)
}

// ---------------------------------------------------------------------------------------------
// A GGUF metadata reader: just the key-value section (the files hold no tensors).

#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let len = self.u64() as usize;
        String::from_utf8(self.take(len).to_vec()).expect("GGUF strings are UTF-8")
    }
    fn value(&mut self, ty: u32) -> Value {
        match ty {
            0 => Value::Int(i64::from(self.take(1)[0])),
            1 => Value::Int(i64::from(self.take(1)[0] as i8)),
            2 => Value::Int(i64::from(u16::from_le_bytes(
                self.take(2).try_into().unwrap(),
            ))),
            3 => Value::Int(i64::from(i16::from_le_bytes(
                self.take(2).try_into().unwrap(),
            ))),
            4 => Value::Int(i64::from(self.u32())),
            5 => Value::Int(i64::from(self.u32() as i32)),
            6 => Value::Float(f64::from(f32::from_bits(self.u32()))),
            7 => Value::Bool(self.take(1)[0] != 0),
            8 => Value::Str(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64() as usize;
                Value::Array((0..n).map(|_| self.value(elem)).collect())
            }
            10 => Value::Int(self.u64() as i64),
            11 => Value::Int(self.u64() as i64),
            12 => Value::Float(f64::from_bits(self.u64())),
            other => panic!("GGUF value type {other}"),
        }
    }
}

fn gguf_metadata(name: &str) -> HashMap<String, Value> {
    let bytes = std::fs::read(fixtures().join(format!("gguf/{name}.gguf"))).expect("fixture");
    let mut r = Reader {
        bytes: &bytes,
        at: 0,
    };
    assert_eq!(r.take(4), b"GGUF");
    let version = r.u32();
    assert!(version == 2 || version == 3, "GGUF v{version}");
    let _tensors = r.u64();
    let count = r.u64();
    (0..count)
        .map(|_| {
            let key = r.string();
            let ty = r.u32();
            (key, r.value(ty))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tokenizer a GGUF file describes, with llama.cpp's defaults for absent keys.

struct Vocab {
    tokenizer: Tokenizer,
    bos_id: Option<u32>,
}

fn load(name: &str) -> Vocab {
    let kv = gguf_metadata(name);
    let get = |key: &str| kv.get(&format!("tokenizer.ggml.{key}"));
    let strings = |key: &str| -> Vec<String> {
        match get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => s.clone(),
                    other => panic!("{key}: {other:?}"),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let int = |key: &str| match get(key) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    };
    let flag = |key: &str| match get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let id = |key: &str| int(key).map(|i| i as u32);
    let tokens = strings("tokens");
    let types: Vec<i32> = match get("token_type") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => *i as i32,
                other => panic!("token_type: {other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    let model = match get("model") {
        Some(Value::Str(s)) => s.clone(),
        other => panic!("tokenizer.ggml.model: {other:?}"),
    };
    match model.as_str() {
        "llama" => {
            let scores = match get("scores") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::Float(f) => *f as f32,
                        other => panic!("scores: {other:?}"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let bos_id = id("bos_token_id").or(Some(1));
            let tokenizer = Tokenizer::from_sentencepiece_vocab(SentencePieceVocab {
                pieces: tokens,
                scores,
                token_types: types,
                bos_id,
                eos_id: id("eos_token_id").or(Some(2)),
                unk_id: id("unknown_token_id").or(Some(0)),
                add_bos: flag("add_bos_token").unwrap_or(true),
                add_space_prefix: flag("add_space_prefix").unwrap_or(true),
            })
            .expect("SentencePiece vocabulary builds");
            Vocab { tokenizer, bos_id }
        }
        "gpt2" => {
            let pre = match get("pre") {
                Some(Value::Str(s)) => s.clone(),
                other => panic!("tokenizer.ggml.pre: {other:?}"),
            };
            let pretokenizer = Pretokenizer::from_gguf_name(&pre).expect("known pre-tokenizer");
            assert_eq!(pretokenizer.gguf_name(), pre);
            let added_tokens = tokens
                .iter()
                .zip(&types)
                .enumerate()
                .filter(|(_, (_, &ty))| ty == token_type::CONTROL || ty == token_type::USER_DEFINED)
                .map(|(id, (content, &ty))| AddedToken {
                    id: id as u32,
                    content: content.clone(),
                    special: ty == token_type::CONTROL,
                })
                .collect();
            let bos_id = id("bos_token_id");
            let tokenizer = Tokenizer::from_gguf_byte_level_bpe(ByteLevelBpe {
                vocab: tokens.into_iter().zip(0..).collect(),
                merges: strings("merges"),
                pretokenizer,
                added_tokens,
                bos_id,
                eos_id: id("eos_token_id"),
                add_bos: flag("add_bos_token").unwrap_or(pretokenizer.gguf_default_add_bos()),
            })
            .expect("byte-level vocabulary builds");
            Vocab { tokenizer, bos_id }
        }
        other => panic!("tokenizer model {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Texts and expected ids.

#[derive(Deserialize)]
struct TextRef {
    sp: Option<usize>,
    bl: Option<usize>,
    text: Option<String>,
}

fn texts() -> &'static [String] {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        let lines = |path: &str| -> Vec<serde_json::Value> {
            read(fixtures().join(path))
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect()
        };
        let sp = lines("cases.jsonl.gz");
        let bl = lines("byte_level/cases.jsonl.gz");
        read(fixtures().join("gguf/texts.jsonl"))
            .lines()
            .map(|line| {
                let r: TextRef = serde_json::from_str(line).expect("text reference");
                let text = match (r.sp, r.bl, r.text) {
                    (Some(i), _, _) => &sp[i]["text"],
                    (_, Some(i), _) => &bl[i]["text"],
                    (_, _, Some(text)) => return text,
                    _ => panic!("empty text reference"),
                };
                text.as_str().expect("text").to_owned()
            })
            .collect()
    })
}

#[derive(Deserialize)]
struct Header {
    texts: usize,
    llama_cpp_equals_transformers: usize,
    plain_llama_cpp_equals_transformers: usize,
    transformers_round_trips: usize,
    bos_id: Option<u32>,
    tokens: usize,
    id_chars: usize,
    id_alphabet: String,
}

/// One line as stored: ids packed as base-64 digits (see the fixture script).
#[derive(Deserialize)]
struct Line {
    ids: String,
    plain: Option<String>,
    hf: Option<u8>,
    hf_plain: Option<u8>,
    hf_decoded: Option<u8>,
}

struct Expected {
    /// llama.cpp's ids with special tokens parsed.
    ids: Vec<u32>,
    /// llama.cpp's ids with special-token text as text.
    plain: Vec<u32>,
    transformers_differs: bool,
    transformers_plain_differs: bool,
    transformers_decode_differs: bool,
}

fn unpack(packed: &str, header: &Header) -> Vec<u32> {
    let digit = |c: u8| {
        header
            .id_alphabet
            .bytes()
            .position(|a| a == c)
            .expect("digit") as u32
    };
    packed
        .as_bytes()
        .chunks(header.id_chars)
        .map(|chunk| chunk.iter().fold(0, |id, &c| (id << 6) | digit(c)))
        .collect()
}

fn expected(name: &str) -> (Header, Vec<Expected>) {
    let text = read(fixtures().join(format!("gguf/{name}.jsonl.gz")));
    let mut lines = text.lines();
    let header: Header =
        serde_json::from_str(lines.next().expect("header")).expect("header parses");
    let cases = lines
        .map(|l| {
            let line: Line = serde_json::from_str(l).expect("case parses");
            let ids = unpack(&line.ids, &header);
            Expected {
                plain: line
                    .plain
                    .map_or_else(|| ids.clone(), |p| unpack(&p, &header)),
                ids,
                transformers_differs: line.hf.is_some(),
                transformers_plain_differs: line.hf_plain.is_some(),
                transformers_decode_differs: line.hf_decoded.is_some(),
            }
        })
        .collect();
    (header, cases)
}

fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let mut decoder = tokenizer.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        decoder.push_to(id, &mut out);
    }
    out + &decoder.finish()
}

/// The decoded stretches of text between user-defined tokens, joined by those tokens' text.
fn decode_stretches(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let mut out = String::new();
    for part in ids.split_inclusive(|&id| tokenizer.token_kind(id) == Some(TokenKind::UserDefined))
    {
        out += &tokenizer.decode(part, DecodeOptions::default());
    }
    out
}

/// Every text of one vocabulary, all mismatches reported at once.
fn check(name: &str) {
    let vocab = load(name);
    let tokenizer = &vocab.tokenizer;
    let (header, cases) = expected(name);
    let texts = texts();
    assert!(texts.len() >= 2000, "{} texts", texts.len());
    assert_eq!(cases.len(), texts.len());
    assert_eq!(header.texts, texts.len());
    assert_eq!(vocab.bos_id, header.bos_id.or(vocab.bos_id));
    assert_eq!(tokenizer.vocab_size(), header.tokens);
    let sentencepiece = !tokenizer.is_byte_level();
    let parse = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    let plain_options = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    let mut failures = Vec::new();
    let (mut hf_equal, mut hf_plain_equal, mut hf_round_trips) = (0, 0, 0);
    for (text, case) in texts.iter().zip(&cases) {
        let ids = tokenizer.encode(text, parse);
        if ids != case.ids {
            failures.push(format!("{text:?}: ids {ids:?}, llama.cpp {:?}", case.ids));
        }
        let plain = tokenizer.encode(text, plain_options);
        let expected_plain = &case.plain;
        if &plain != expected_plain {
            failures.push(format!(
                "{text:?}: plain {plain:?}, llama.cpp {expected_plain:?}"
            ));
        }
        let with_bos = tokenizer.encode(text, tokenizer.prompt_options());
        let bos: Vec<u32> = tokenizer
            .adds_bos()
            .then_some(vocab.bos_id)
            .flatten()
            .into_iter()
            .collect();
        if with_bos != [bos, plain.clone()].concat() {
            failures.push(format!("{text:?}: prompt ids {with_bos:?}"));
        }
        // SentencePiece reads `▁` as a space, so it decodes as one; and llama.cpp gives the
        // text after a user-defined token its own dummy prefix, which decodes as a space, so
        // there each stretch between user-defined tokens decodes back to its text.
        let decoded = if sentencepiece {
            decode_stretches(tokenizer, expected_plain)
        } else {
            tokenizer.decode(expected_plain, DecodeOptions::default())
        };
        let round_trip = if sentencepiece {
            text.replace('\u{2581}', " ")
        } else {
            text.clone()
        };
        if decoded != round_trip {
            failures.push(format!("{text:?}: decodes to {decoded:?}"));
        }
        let decoded = tokenizer.decode(expected_plain, DecodeOptions::default());
        let streamed = stream(tokenizer, expected_plain);
        if streamed != decoded {
            failures.push(format!("{text:?}: streams to {streamed:?}"));
        }
        hf_equal += usize::from(!case.transformers_differs);
        hf_plain_equal += usize::from(!case.transformers_plain_differs);
        hf_round_trips += usize::from(!case.transformers_decode_differs);
    }
    assert_eq!(hf_equal, header.llama_cpp_equals_transformers);
    assert_eq!(hf_plain_equal, header.plain_llama_cpp_equals_transformers);
    assert_eq!(hf_round_trips, header.transformers_round_trips);
    eprintln!(
        "{name}: {} texts, {} checks failed; the fixtures record transformers equal to \
         llama.cpp on {hf_equal} (special tokens parsed) and {hf_plain_equal} (plain), \
         decoding back {hf_round_trips}",
        texts.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} of {} checks failed:\n{}",
        failures.len(),
        texts.len() * 5,
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn mistral_v0_1_matches_llama_cpp() {
    check("mistral-v0.1");
}

#[test]
fn small_sentencepiece_matches_llama_cpp() {
    check("spm-small");
}

#[test]
fn small_sentencepiece_without_space_prefix_matches_llama_cpp() {
    check("spm-small-noprefix");
}

#[test]
fn gpt2_matches_llama_cpp() {
    check("gpt-2");
}

#[test]
fn default_matches_llama_cpp() {
    check("default");
}

#[test]
fn smollm_matches_llama_cpp() {
    check("smollm");
}

#[test]
fn llama_bpe_matches_llama_cpp() {
    check("llama-bpe");
}

#[test]
fn qwen2_matches_llama_cpp() {
    check("qwen2");
}

#[test]
fn tekken_matches_llama_cpp() {
    check("tekken");
}

#[test]
fn every_vocabulary_has_a_fixture() {
    for name in VOCABS {
        assert!(
            fixtures().join(format!("gguf/{name}.gguf")).is_file(),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Special and user-defined tokens, spelled out.

const PARSE: EncodeOptions = EncodeOptions {
    add_bos: false,
    parse_special: true,
};
const PLAIN: EncodeOptions = EncodeOptions {
    add_bos: false,
    parse_special: false,
};

fn id(tokenizer: &Tokenizer, piece: &str) -> u32 {
    tokenizer
        .piece_to_id(piece)
        .unwrap_or_else(|| panic!("{piece:?}"))
}

#[test]
fn mistral_control_tokens_are_parsed_only_when_asked() {
    let t = load("mistral-v0.1").tokenizer;
    assert!(t.adds_bos());
    assert_eq!(t.prompt_options(), EncodeOptions::default());
    // The converter types `<unk>` CONTROL, not UNKNOWN: Mistral's tokenizer_config.json
    // lists it among the special added tokens, which take precedence.
    for id in 0..3 {
        assert_eq!(t.token_kind(id), Some(TokenKind::Control), "{id}");
    }
    assert_eq!(t.unk_id(), Some(0));
    assert_eq!(t.token_kind(3), Some(TokenKind::Byte(0)));
    let hello = id(&t, "▁Hello");
    // Every stretch of text after a special token gets its own dummy prefix (llama.cpp).
    assert_eq!(t.encode("<s>Hello</s>", PARSE), [1, hello, 2]);
    assert_eq!(t.encode("Hello<unk>", PARSE), [hello, 0]);
    let plain = t.encode("<s>Hello</s>", PLAIN);
    assert!(!plain.contains(&1) && !plain.contains(&2), "{plain:?}");
    assert_eq!(t.decode(&plain, DecodeOptions::default()), "<s>Hello</s>");
    // Decoding drops control tokens and `<unk>` (as llama.cpp and transformers do), or shows
    // them without `skip_special`.
    let ids = [1, hello, 0, 2];
    assert_eq!(t.decode(&ids, DecodeOptions::default()), "Hello");
    assert_eq!(
        t.decode(
            &ids,
            DecodeOptions {
                skip_special: false
            }
        ),
        "<s> Hello<unk></s>"
    );
    // Byte fallback.
    let mut expected = vec![id(&t, "▁")];
    expected.extend("🦙".bytes().map(|b| 3 + u32::from(b)));
    assert_eq!(t.encode("🦙", PLAIN), expected);
}

#[test]
fn user_defined_tokens_are_matched_in_any_text_longest_first() {
    for name in ["spm-small", "llama-bpe", "tekken"] {
        let t = load(name).tokenizer;
        let sep = id(&t, "<sep>");
        let long = id(&t, "ep>>>>");
        for options in [PARSE, PLAIN] {
            let ids = t.encode("a<sep>b", options);
            assert!(ids.contains(&sep), "{name}: {ids:?}");
            // `ep>>>>` is longer than `<sep>`, so llama.cpp takes it first, although `<sep>`
            // starts earlier (leftmost-longest matching would take `<sep>`).
            let ids = t.encode("<sep>>>>", options);
            assert!(
                ids.contains(&long) && !ids.contains(&sep),
                "{name}: {ids:?}"
            );
            assert_eq!(t.decode(&ids, DecodeOptions::default()), "<sep>>>>");
        }
        assert!(!t.is_special(sep));
    }
    // The Hugging Face reading of the same byte-level vocabulary matches leftmost-longest.
    let kv = gguf_metadata("llama-bpe");
    let Some(Value::Array(tokens)) = kv.get("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    let Some(Value::Array(merges)) = kv.get("tokenizer.ggml.merges") else {
        panic!("merges")
    };
    let text = |v: &Value| match v {
        Value::Str(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    let tokens: Vec<String> = tokens.iter().map(text).collect();
    let spec = ByteLevelBpe {
        added_tokens: ["<sep>", "ep>>>>"]
            .iter()
            .map(|t| AddedToken {
                id: tokens.iter().position(|p| p == t).unwrap() as u32,
                content: t.to_string(),
                special: false,
            })
            .collect(),
        vocab: tokens.into_iter().zip(0..).collect(),
        merges: merges.iter().map(text).collect(),
        pretokenizer: Pretokenizer::Llama3,
        bos_id: None,
        eos_id: None,
        add_bos: false,
    };
    let hf = Tokenizer::from_byte_level_bpe(spec.clone()).unwrap();
    let llama_cpp = Tokenizer::from_gguf_byte_level_bpe(spec).unwrap();
    let sep = id(&hf, "<sep>");
    assert_eq!(hf.encode("<sep>>>>", PLAIN)[0], sep);
    assert_ne!(llama_cpp.encode("<sep>>>>", PLAIN)[0], sep);
}

#[test]
fn small_sentencepiece_control_unused_and_prefix() {
    let t = load("spm-small").tokenizer;
    let inst = id(&t, "[INST]");
    assert_eq!(t.token_kind(inst), Some(TokenKind::Control));
    assert_eq!(t.encode("[INST]", PARSE), [inst]);
    assert!(!t.encode("[INST]", PLAIN).contains(&inst));
    // The two slots the converter pads the vocabulary with are unused: decoded as nothing.
    let last = t.vocab_size() as u32 - 1;
    assert_eq!(t.token_kind(last), Some(TokenKind::Unused));
    assert_eq!(t.decode(&[last], DecodeOptions::default()), "");
    assert_eq!(t.token_kind(id(&t, "<sep>")), Some(TokenKind::UserDefined));
    // llama.cpp gives the text after a user-defined token its own dummy prefix (there is no
    // exact round trip there; transformers adds none).
    let ids = t.encode("a<sep>b", PLAIN);
    assert_eq!(ids[2], id(&t, "▁b"));
    assert_eq!(t.decode(&ids, DecodeOptions::default()), "a<sep> b");

    // Without `add_space_prefix`, no dummy prefix, and decoding keeps a leading space.
    let no_prefix = load("spm-small-noprefix").tokenizer;
    let with_prefix = t.encode("word", PLAIN);
    let without = no_prefix.encode("word", PLAIN);
    assert_ne!(with_prefix, without);
    assert_eq!(no_prefix.encode(" word", PLAIN), with_prefix);
    assert_eq!(
        no_prefix.decode(&with_prefix, DecodeOptions::default()),
        " word"
    );
    assert_eq!(t.decode(&with_prefix, DecodeOptions::default()), "word");
}

#[test]
fn byte_level_control_tokens_and_bos() {
    let vocab = load("llama-bpe");
    let t = &vocab.tokenizer;
    let start = id(t, "<|im_start|>");
    let end = id(t, "<|im_end|>");
    assert_eq!(t.token_kind(start), Some(TokenKind::Control));
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>", PARSE);
    assert_eq!((ids[0], *ids.last().unwrap()), (start, end));
    let plain = t.encode("<|im_start|>user\nhi<|im_end|>", PLAIN);
    assert!(!plain.contains(&start) && !plain.contains(&end));
    assert_eq!(
        t.decode(&ids, DecodeOptions::default()),
        "user\nhi",
        "control tokens are skipped"
    );
    // llama-bpe starts prompts with BOS (the file says so); gpt-2 does not.
    assert!(t.adds_bos());
    assert_eq!(t.encode("hi", t.prompt_options())[0], vocab.bos_id.unwrap());
    assert!(!load("gpt-2").tokenizer.adds_bos());
}

// ---------------------------------------------------------------------------------------------
// The score-based merges against a plain transcription of llama.cpp's `llm_tokenizer_spm`
// (strings, no tables): repeatedly merge the adjacent pair whose concatenation is a token with
// the highest score, leftmost among equals; a symbol that is no token becomes its bytes.

mod naive {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    pub struct Spm {
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        ids: HashMap<String, u32>,
    }

    impl Spm {
        fn load(name: &str, coarse: bool) -> Spm {
            let kv = gguf_metadata(name);
            let array = |key: &str| match kv.get(key) {
                Some(Value::Array(items)) => items.clone(),
                other => panic!("{key}: {other:?}"),
            };
            let pieces: Vec<String> = array("tokenizer.ggml.tokens")
                .into_iter()
                .map(|v| match v {
                    Value::Str(s) => s,
                    other => panic!("{other:?}"),
                })
                .collect();
            let scores = array("tokenizer.ggml.scores")
                .into_iter()
                .map(|v| match v {
                    // Coarse scores: many ties, so the leftmost rule decides often.
                    Value::Float(f) if coarse => (f / 50.0).round() as f32,
                    Value::Float(f) => f as f32,
                    other => panic!("{other:?}"),
                })
                .collect();
            let types = array("tokenizer.ggml.token_type")
                .into_iter()
                .map(|v| match v {
                    Value::Int(i) => i as i32,
                    other => panic!("{other:?}"),
                })
                .collect();
            let ids = pieces.iter().cloned().zip(0..).collect();
            Spm {
                pieces,
                scores,
                types,
                ids,
            }
        }

        fn tokenizer(&self) -> Tokenizer {
            Tokenizer::from_sentencepiece_vocab(SentencePieceVocab {
                pieces: self.pieces.clone(),
                scores: self.scores.clone(),
                token_types: self.types.clone(),
                bos_id: Some(1),
                eos_id: Some(2),
                unk_id: Some(0),
                add_bos: true,
                add_space_prefix: true,
            })
            .unwrap()
        }

        /// llama.cpp on one stretch of text (no special or user-defined token in it).
        pub fn encode(&self, text: &str) -> Vec<u32> {
            if text.is_empty() {
                return Vec::new();
            }
            let text = format!(" {text}").replace(' ', "\u{2581}");
            let mut symbols: Vec<String> = text.chars().map(String::from).collect();
            loop {
                let mut best: Option<(f32, usize)> = None;
                for i in 1..symbols.len() {
                    let joined = format!("{}{}", symbols[i - 1], symbols[i]);
                    if let Some(&id) = self.ids.get(&joined) {
                        let score = self.scores[id as usize];
                        if best.is_none_or(|(s, _)| score > s) {
                            best = Some((score, i - 1));
                        }
                    }
                }
                let Some((_, i)) = best else { break };
                let right = symbols.remove(i + 1);
                symbols[i].push_str(&right);
            }
            let mut out = Vec::new();
            for symbol in symbols {
                match self.ids.get(&symbol) {
                    Some(&id) => out.push(id),
                    None => out.extend(symbol.bytes().map(|b| self.ids[&format!("<0x{b:02X}>")])),
                }
            }
            out
        }
    }

    fn vocab(index: usize) -> &'static (Spm, Tokenizer) {
        static VOCABS: [OnceLock<(Spm, Tokenizer)>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        VOCABS[index].get_or_init(|| {
            let spm = match index {
                0 => Spm::load("spm-small", false),
                1 => Spm::load("spm-small", true),
                _ => Spm::load("mistral-v0.1", true),
            };
            let tokenizer = spm.tokenizer();
            (spm, tokenizer)
        })
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ a-e\u{2581}]{0,80}",
            "(the |an|in|ing| {1,4}|[0-9]|er|\u{4e2d}|\u{1F600}|\u{E000}|é|\t|\n){0,60}",
            "\\PC{0,60}",
        ]
        .prop_filter("no user-defined or special token text", |s| {
            ![
                "<sep>", "ep>>>>", "[INST]", "[/INST]", "<s>", "</s>", "<unk>",
            ]
            .iter()
            .any(|t| s.contains(t))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn score_merges_equal_llama_cpp_transcription(text in text(), which in 0usize..3) {
            let (spm, tokenizer) = vocab(which);
            prop_assert_eq!(tokenizer.encode(&text, PLAIN), spm.encode(&text));
        }
    }
}
