//! Chat templates rendered as Python `jinja2` renders them through `transformers`'
//! `apply_chat_template(tokenize=False)`: the expected texts in tests/fixtures/chat-templates were
//! written by scripts/fixtures/make_chat_template_fixtures.py with jinja2 and transformers.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

#[test]
fn templates_render_as_jinja2_does() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "strftime.json")
        .collect();
    files.sort();
    assert!(files.len() >= 16, "fixtures missing: {files:?}");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let renderer = ChatRenderer::new(doc["template"].as_str().unwrap()).unwrap();
        let (bos, eos) = (
            doc["bos_token"].as_str().unwrap(),
            doc["eos_token"].as_str().unwrap(),
        );
        for case in doc["cases"].as_array().unwrap() {
            let name = format!(
                "{} / {}",
                file.file_stem().unwrap().to_string_lossy(),
                case["name"].as_str().unwrap()
            );
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(message)
                .collect();
            let options = ChatOptions {
                add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
                tools: case.get("tools").map(value),
                extra: case
                    .get("extra")
                    .and_then(Json::as_object)
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), value(v))).collect())
                    .unwrap_or_else(BTreeMap::new),
            };
            let ours = renderer.render(&messages, &options, bos, eos);
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
                (None, _, Ok(text)) => {
                    failures.push(format!("{name}: rendered {text:?}, jinja2 raised"))
                }
                // Python itself failed (e.g. `str + dict`): it is enough that rendering fails.
                (None, None, Err(_)) if case.get("error_any").is_some() => {}
                (None, None, Err(e)) => failures.push(format!("{name}: bad fixture ({e})")),
            }
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
