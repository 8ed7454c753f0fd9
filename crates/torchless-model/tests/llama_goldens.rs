//! The Llama-architecture fixtures (scripts/fixtures/make_llama_fixtures.py) agree with Hugging
//! Face `transformers` (LlamaForCausalLM): logits, NLL and greedy continuations, f32 and int8,
//! eager and lazy, with tied and untied embeddings, and their byte-level tokenizer gives the ids
//! Hugging Face `tokenizers` gave for every prompt.

mod common;

use std::ops::ControlFlow;

use common::{check_model, fixtures, read_goldens};
use torchless_model::tokenizer::EncodeOptions;
use torchless_model::{ChatMessage, GenerateOptions, LazyMistral, Mistral};

fn check(name: &str, quant: &str) {
    let path = fixtures().join(format!("{name}-{quant}.bin"));
    let goldens = read_goldens(&fixtures().join(format!("{name}-goldens-{quant}.json")));
    let eager = Mistral::load(&path).unwrap();
    assert!(check_model(&eager, &goldens) > 500);
    let lazy = LazyMistral::load(&path).unwrap();
    assert!(check_model(&lazy, &goldens) > 500);
}

#[test]
fn tied_f32() {
    check("llama-tied", "f32");
}

#[test]
fn tied_int8() {
    check("llama-tied", "int8");
}

#[test]
fn untied_f32() {
    check("llama-untied", "f32");
}

#[test]
fn untied_int8() {
    check("llama-untied", "int8");
}

#[test]
fn tied_file_has_no_output_matrix() {
    let model = Mistral::load(fixtures().join("llama-tied-f32.bin")).unwrap();
    assert!(model.config().tie_word_embeddings);
    assert!(model.file().tensor_info("lm_head.weight").is_err());
    let untied = Mistral::load(fixtures().join("llama-untied-f32.bin")).unwrap();
    assert!(!untied.config().tie_word_embeddings);
    assert!(untied.file().tensor_info("lm_head.weight").is_ok());
}

#[test]
fn tokenizer_gives_the_reference_ids() {
    let model = Mistral::load(fixtures().join("llama-tied-f32.bin")).unwrap();
    let goldens = read_goldens(&fixtures().join("llama-tied-goldens-f32.json"));
    let tokenizer = model.tokenizer();
    let options = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    for prompt in &goldens.prompts {
        assert_eq!(
            tokenizer.encode(&prompt.text, options),
            prompt.ids,
            "{:?}",
            prompt.text
        );
        assert_eq!(
            tokenizer.decode(&prompt.ids, Default::default()),
            prompt
                .text
                .replace("<|im_start|>", "")
                .replace("<|im_end|>", ""),
            "{:?}",
            prompt.text
        );
    }
    // The file says prompts get no BOS, so the model's own encoding of a prompt adds none.
    let chat = model
        .encode_chat(&[ChatMessage::user("What is two plus two?")], true)
        .unwrap();
    let chat_prompt = goldens.prompts.last().unwrap();
    assert_eq!(chat, chat_prompt.ids, "ChatML through the file's template");
}

#[test]
fn chat_stops_at_the_end_of_turn_token() {
    let model = Mistral::load(fixtures().join("llama-untied-f32.bin")).unwrap();
    let im_end = model.tokenizer().piece_to_id("<|im_end|>").unwrap();
    assert_eq!(im_end, 2);
    assert!(model.end_of_turn_ids().contains(&im_end));
    let prompt = model.encode_chat(&[ChatMessage::user("Hi")], true).unwrap();
    let greedy = |stop_tokens: Vec<u32>| {
        let mut session = model.session().unwrap();
        session
            .generate(
                &prompt,
                GenerateOptions {
                    max_tokens: 24,
                    stop_at_eos: false,
                    stop_tokens,
                    sampling: torchless_model::SamplingParams::greedy(),
                    ..GenerateOptions::default()
                },
                |_| ControlFlow::Continue(()),
            )
            .unwrap()
            .ids
    };
    let free = greedy(Vec::new());
    assert_eq!(free.len(), 24);
    // Stopping at a token the free run produces ends the run right after its first occurrence.
    let stop = free[5];
    let first = free.iter().position(|&t| t == stop).unwrap();
    assert_eq!(greedy(vec![stop]), free[..=first]);
}
