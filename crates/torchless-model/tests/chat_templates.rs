//! Chat templates rendered as Python `jinja2` renders them through `transformers`'
//! `apply_chat_template(tokenize=False)`: the expected texts in tests/fixtures/chat-templates were
//! written by scripts/fixtures/make_chat_template_fixtures.py with jinja2 and transformers.
//!
//! Two sets: 17 templates written out in the script (`*.json`), and `real-templates.json.gz`:
//! 66 model repositories' own templates as llama.cpp keeps them in its source
//! (models/templates/*.jinja of the llama-cpp-python 0.3.36 sdist; file names and sha256 in the
//! fixture), each with 8 conversations (system + user, multi-turn, an assistant message last
//! without generation prompt, non-ASCII/quotes/newlines, a tool call and its result with a
//! `tools` list, parallel tool calls, `tools` alone, reasoning with `enable_thinking`), at the
//! fixture's fixed `strftime_now` instant. Where jinja2 raises (the template's
//! `raise_exception`, or Python failing on the data), the renderer must fail too, with the
//! template's message when it is the template's own.
//!
//! Left out of llama.cpp's 70 templates:
//! - `llama-cpp-deepseek-r1` and `llama-cpp-rwkv-world`: llama.cpp's own, no model's;
//! - firefunction-v2: it reads a `functions` variable that transformers never passes, so no
//!   conversation renders in jinja2 either;
//! - functionary-medium-v3.1: its `"..."|safe + text` makes jinja2 HTML-escape `text`
//!   (MarkupSafe's `Markup.__add__`: `"` becomes `&#34;` in the tool descriptions), which
//!   minijinja's `+` does not do and has no hook for; its cases without tools do match.

use std::io::Read as _;
use std::path::PathBuf;

use flate2::read::GzDecoder;
use serde_json::Value as Json;
use torchless_model::{strftime, ChatMessage, ChatOptions, ChatRenderer, TemplateValue};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates")
}

fn value(json: &Json) -> TemplateValue {
    TemplateValue::from_serialize(json)
}

fn message(json: &Json) -> ChatMessage {
    let object = json.as_object().unwrap();
    let content = object["content"].as_str().unwrap_or("");
    let mut message = ChatMessage::new(object["role"].as_str().unwrap(), content);
    // Every field, role and content included, in the fixture's order (as a Python dict).
    for (key, v) in object {
        message = message.with(key.as_str(), value(v));
    }
    message
}

fn options(case: &Json, now: Option<i64>) -> ChatOptions {
    ChatOptions {
        add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
        tools: case.get("tools").map(value),
        extra: case
            .get("extra")
            .and_then(Json::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), value(v))).collect())
            .unwrap_or_default(),
        now,
    }
}

/// Renders one fixture case and records how it differs from jinja2's result; whether it
/// rendered.
fn check_case(
    renderer: &ChatRenderer,
    (bos, eos): (&str, &str),
    case: &Json,
    now: Option<i64>,
    name: &str,
    failures: &mut Vec<String>,
) -> bool {
    let messages: Vec<ChatMessage> = case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(message)
        .collect();
    let ours = renderer.render(&messages, &options(case, now), bos, eos);
    let rendered = ours.is_ok();
    match (case.get("expected"), case.get("error"), ours) {
        (Some(expected), _, Ok(text)) if text == expected.as_str().unwrap() => {}
        (Some(expected), _, Ok(text)) => failures.push(format!(
            "{name}: rendered\n{text:?}\njinja2:\n{:?}",
            expected.as_str().unwrap()
        )),
        (Some(_), _, Err(e)) => failures.push(format!("{name}: error {e}")),
        (None, Some(error), Err(e)) => {
            let error = error.as_str().unwrap();
            if !e.to_string().contains(error) {
                failures.push(format!("{name}: error {e}, jinja2's: {error}"));
            }
        }
        (None, _, Ok(text)) => failures.push(format!("{name}: rendered {text:?}, jinja2 raised")),
        // Python itself failed (e.g. `str + dict`): it is enough that rendering fails.
        (None, None, Err(_)) if case.get("error_any").is_some() => {}
        (None, None, Err(e)) => failures.push(format!("{name}: bad fixture ({e})")),
    }
    rendered
}

#[test]
fn templates_render_as_jinja2_does() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().unwrap() != "strftime.json")
        .collect();
    files.sort();
    assert!(files.len() >= 16, "fixtures missing: {files:?}");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let renderer = ChatRenderer::new(doc["template"].as_str().unwrap()).unwrap();
        let tokens = (
            doc["bos_token"].as_str().unwrap(),
            doc["eos_token"].as_str().unwrap(),
        );
        for case in doc["cases"].as_array().unwrap() {
            let name = format!(
                "{} / {}",
                file.file_stem().unwrap().to_string_lossy(),
                case["name"].as_str().unwrap()
            );
            check_case(&renderer, tokens, case, None, &name, &mut failures);
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(checked >= 170, "{checked} cases");
}

fn real_templates() -> Json {
    let file = fixtures().join("real-templates.json.gz");
    let mut text = String::new();
    GzDecoder::new(std::fs::File::open(&file).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn real_model_templates_render_as_jinja2_does() {
    let doc = real_templates();
    // The instant the fixture's `strftime_now` saw.
    let now = doc["now"].as_f64().unwrap() as i64;
    let templates = doc["templates"].as_array().unwrap();
    let (mut checked, mut rendered) = (0, 0);
    let mut failures = Vec::new();
    for template in templates {
        let file = template["file"].as_str().unwrap();
        let renderer = match ChatRenderer::new(template["template"].as_str().unwrap()) {
            Ok(renderer) => renderer,
            Err(e) => {
                failures.push(format!("{file}: {e}"));
                continue;
            }
        };
        let tokens = (
            template["bos_token"].as_str().unwrap(),
            template["eos_token"].as_str().unwrap(),
        );
        let cases = template["cases"].as_array().unwrap();
        assert!(cases.len() >= 5, "{file}: {} cases", cases.len());
        for case in cases {
            let name = format!("{file} / {}", case["name"].as_str().unwrap());
            rendered += usize::from(check_case(
                &renderer,
                tokens,
                case,
                Some(now),
                &name,
                &mut failures,
            ));
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(templates.len() >= 30, "{} templates", templates.len());
    assert!(rendered >= 300, "{rendered} of {checked} cases render");
}

#[test]
fn strftime_matches_python() {
    let rows: Json =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("strftime.json")).unwrap())
            .unwrap();
    for row in rows.as_array().unwrap() {
        let (unix, format) = (
            row["unix"].as_i64().unwrap(),
            row["format"].as_str().unwrap(),
        );
        assert_eq!(
            strftime(format, unix),
            row["expected"].as_str().unwrap(),
            "{format} at {unix}"
        );
    }
}

#[test]
fn a_template_that_does_not_parse_is_an_error() {
    let e = ChatRenderer::new("{% for m in messages %}{{ m.content }").unwrap_err();
    assert!(e.to_string().contains("does not parse"), "{e}");
}
