//! Llama-family features on the fixture models: tied embeddings give exactly the logits of an
//! untied file whose `lm_head` is a copy of the embedding, and chat templates from the file are
//! rendered with message text kept out of special-token parsing.

use std::ops::ControlFlow;

use torchless_model::format::{Architecture, ModelFile, ModelWriter, TensorSpec};
use torchless_model::tokenizer::EncodeOptions;
use torchless_model::{ChatMessage, ChatTemplate, GenerateOptions, LazyMistral, Mistral};

const CHATML: &str = "{% for message in messages %}{{'<s>' + message['role'] + '\n' + message['content'] + '</s>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models"
    ))
    .join(name)
}

/// Rewrites `name` with the output matrix replaced by the embedding: `tied` drops `lm_head`
/// and sets `tie_word_embeddings`, otherwise `lm_head` holds a copy of the embedding.
fn rewrite(name: &str, tied: bool, chat_template: Option<&str>) -> Vec<u8> {
    let source = ModelFile::open(fixture(name)).unwrap();
    let mut config = source.config().clone();
    config.architecture = Architecture::Llama;
    config.tie_word_embeddings = tied;
    let mut metadata = config.to_metadata();
    if let Some(template) = chat_template {
        metadata.push(("chat_template".into(), template.into()));
    }
    let expected = config.expected_tensors();
    let specs: Vec<TensorSpec> = expected
        .iter()
        .map(|t| {
            let dtype = source.tensor_info(&t.name).unwrap().dtype;
            TensorSpec::new(t.name.clone(), dtype, t.shape.clone())
        })
        .collect();
    let tokenizer = source.tokenizer_data().unwrap();
    let mut writer =
        ModelWriter::new(Vec::new(), name, &metadata, specs, Some(&tokenizer)).unwrap();
    for t in &expected {
        let from = if t.name == "lm_head.weight" {
            "model.embed_tokens.weight"
        } else {
            &t.name
        };
        writer
            .write_tensor(&t.name, &source.tensor(from).unwrap().to_f32_vec())
            .unwrap();
    }
    writer.finish().unwrap()
}

fn all_logits(model: &Mistral, ids: &[u32]) -> Vec<f32> {
    let mut session = model.session().unwrap();
    let mut out = Vec::new();
    session
        .evaluate(ids, |_, row| out.extend_from_slice(row))
        .unwrap();
    out.extend_from_slice(session.step(5).unwrap());
    out
}

#[test]
fn tied_embeddings_equal_a_copied_lm_head() {
    for name in ["small-mqa-f32.bin", "small-gqa-int8.bin"] {
        let tied =
            Mistral::from_file(ModelFile::from_bytes(&rewrite(name, true, None)).unwrap()).unwrap();
        let copied =
            Mistral::from_file(ModelFile::from_bytes(&rewrite(name, false, None)).unwrap())
                .unwrap();
        assert!(tied.file().tensor_info("lm_head.weight").is_err());
        let ids: Vec<u32> = (0..19).map(|i| (i * 37 + 11) % 1000).collect();
        let (a, b) = (all_logits(&tied, &ids), all_logits(&copied, &ids));
        assert_eq!(a.len(), (ids.len() + 1) * tied.config().vocab_size);
        assert!(a == b, "{name}");
        // The whole embedding is read per token when it is the output matrix.
        assert!(tied.bytes_per_token() < copied.bytes_per_token());
    }
}

#[test]
fn tied_lazy_model_matches_eager() {
    let bytes = rewrite("small-gqa-int8.bin", true, None);
    let dir = std::env::temp_dir().join(format!("torchless-tied-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tied.bin");
    std::fs::write(&path, &bytes).unwrap();
    let eager = Mistral::load(&path).unwrap();
    let lazy = LazyMistral::load(&path).unwrap();
    let options = GenerateOptions {
        max_tokens: 12,
        stop_at_eos: false,
        ..Default::default()
    };
    let a = eager
        .session()
        .unwrap()
        .generate(&[1, 400, 500], options.clone(), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let b = lazy
        .session()
        .unwrap()
        .generate(&[1, 400, 500], options, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(a.ids, b.ids);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The template's markers are parsed as control tokens; a message that contains the same
/// marker text is encoded as plain text, so it cannot close its turn.
#[test]
fn jinja_template_keeps_messages_out_of_special_parsing() {
    let model = Mistral::from_file(
        ModelFile::from_bytes(&rewrite("small-gqa-f32.bin", false, Some(CHATML))).unwrap(),
    )
    .unwrap();
    assert_eq!(model.chat_template(), ChatTemplate::Jinja(CHATML.into()));
    let tok = model.tokenizer();
    let plain = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    let markup = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    let messages = [ChatMessage::user("hi </s> there")];
    let ids = model.encode_chat(&messages, true).unwrap();
    // Expected, written out by hand from the template: "<s>user\n" + content + "</s>\n" +
    // "<s>assistant\n"; the tokenizer adds BOS by convention, which the template wrote already.
    let mut expected = tok.encode("<s>user\n", markup);
    expected.extend(tok.encode("hi </s> there", plain));
    expected.extend(tok.encode("</s>\n<s>assistant\n", markup));
    assert_eq!(ids, expected);
    assert_eq!(ids[0], 1);
    assert_eq!(
        ids.iter().filter(|&&id| id == 2).count(),
        1,
        "only the template's </s>"
    );
    assert_eq!(model.end_of_turn_ids(), vec![2]);
    // Without a template, Mistral's [INST] format.
    let mistral = Mistral::load(fixture("small-gqa-f32.bin")).unwrap();
    assert_eq!(mistral.chat_template(), ChatTemplate::MistralInstruct);
    let ids = mistral
        .encode_chat(&[ChatMessage::user("  hello  ")], true)
        .unwrap();
    let mut expected = vec![1];
    expected.extend(mistral.tokenizer().encode("[INST] hello [/INST]", plain));
    assert_eq!(ids, expected);
}

#[test]
fn broken_templates_are_errors() {
    for template in [
        "{% for m in messages %}",
        "{{ raise_exception('no system role') }}",
    ] {
        let model = Mistral::from_file(
            ModelFile::from_bytes(&rewrite("small-mqa-f32.bin", false, Some(template))).unwrap(),
        )
        .unwrap();
        let err = model
            .encode_chat(&[ChatMessage::user("x")], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat_template"), "{err}");
    }
}
