//! Structured output: every sample at temperature 1 under a JSON-schema grammar parses and
//! matches its schema, alone and through the scheduler (several constrained requests batched),
//! and the per-token cost of the mask on SmolLM2's 49152-token vocabulary stays small.

mod common;

use std::io::Read;
use std::sync::mpsc;
use std::time::Instant;

use common::fixtures;
use serde_json::{json, Value};
use torchless_model::scheduler::{Event, FinishReason, Request};
use torchless_model::{
    ConstraintVocab, GenerateOptions, Grammar, Mistral, SamplingParams, Scheduler,
    SchedulerOptions, Tokenizer,
};

/// Schemas with nested objects, arrays, enums, required fields, numbers and patterned strings.
/// Free strings have a `maxLength` and numbers are integers: the tiny fixture model is random,
/// and would otherwise fill a string or the decimals of a number until `max_tokens`
/// (scripts/server/check_structured.py runs unbounded ones on a real model).
fn schemas() -> Vec<Value> {
    let name = json!({"type": "string", "maxLength": 12});
    vec![
        json!({"type": "object", "properties": {"name": name, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 4}}, "required": ["tags"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10, "maximum": 10}}, "required": ["x", "y"], "additionalProperties": false}}, "required": ["point"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}, "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"}}, "required": ["zip", "code"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": ["string", "null"], "maxLength": 8}}, "required": ["ok", "note"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 5}),
        json!({"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 1000}, "roles": {"type": "array", "items": {"enum": ["admin", "dev", "ops"]}, "maxItems": 3}}, "required": ["id", "roles"], "additionalProperties": false}, "active": {"type": "boolean"}}, "required": ["user", "active"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"level": {"enum": [1, 2, 3]}, "label": {"const": "fixed"}, "score": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": ["level", "label", "score"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[a-z]{3}[0-9]{3}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["sku", "qty"], "additionalProperties": false}, "minItems": 1, "maxItems": 3}}, "required": ["items"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"}, "optional": {"type": "integer", "minimum": 0, "maximum": 5}}, "required": ["email"], "additionalProperties": false}),
    ]
}

/// The JSON Schema keywords the schemas above use, checked as `jsonschema` would.
fn validate(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let fail = |what: String| Err(format!("{at}: {what} ({value})"));
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return fail("not in enum".into());
        }
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            return fail("not the const".into());
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let is = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            return fail(format!("not of type {t}"));
        }
    }
    if let Some(x) = value.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| x < m)
        {
            return fail("below minimum".into());
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| x > m)
        {
            return fail("above maximum".into());
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| chars > m)
        {
            return fail("too long".into());
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            if !regex::Regex::new(p).unwrap().is_match(s) {
                return fail(format!("does not match {p}"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as u64;
        if schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            return fail("too few items".into());
        }
        if schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            return fail("too many items".into());
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate(v, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(map) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !map.contains_key(r.as_str().unwrap()) {
                return fail(format!("missing required {r}"));
            }
        }
        for (k, v) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(v, s, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    return fail(format!("extra property {k}"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed,
        ..Default::default()
    }
}

fn model() -> Mistral {
    Mistral::load(fixtures().join("llama-tied-f32.gguf")).unwrap()
}

#[test]
fn every_sample_at_temperature_1_parses_and_matches_its_schema() {
    let model = model();
    let tokenizer = model.tokenizer();
    let vocab = ConstraintVocab::new(tokenizer).unwrap();
    let prompt = tokenizer.encode("Answer in JSON:", tokenizer.prompt_options());
    for (s, schema) in schemas().iter().enumerate() {
        let grammar = Grammar::json_schema(&vocab, schema).unwrap();
        for seed in 0..4 {
            let mut session = model.session().unwrap();
            let options = GenerateOptions {
                max_tokens: 400,
                sampling: sampling(seed * 31 + s as u64),
                grammar: Some(grammar.clone()),
                ..Default::default()
            };
            let g = session
                .generate(&prompt, options, |_| std::ops::ControlFlow::Continue(()))
                .unwrap();
            let value: Value = serde_json::from_str(&g.text).unwrap_or_else(|e| {
                panic!("schema {s} seed {seed}: {e} in {:?}", g.text);
            });
            validate(&value, schema, "$")
                .unwrap_or_else(|e| panic!("schema {s} seed {seed}: {e} in {}", g.text));
        }
    }
}

#[test]
fn batched_constrained_requests_each_keep_their_own_state() {
    let model = model();
    let tokenizer = model.tokenizer();
    let vocab = ConstraintVocab::new(tokenizer).unwrap();
    let prompt = tokenizer.encode("JSON:", tokenizer.prompt_options());
    let schemas = schemas();
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(
        &model,
        SchedulerOptions {
            slots: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let mut receivers = Vec::new();
    for (i, schema) in schemas.iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        // One unconstrained request among them: the grammar of one slot is not another's.
        let grammar = (i != 3).then(|| Grammar::json_schema(&vocab, schema).unwrap());
        let options = GenerateOptions {
            max_tokens: 400,
            sampling: sampling(100 + i as u64),
            grammar,
            ..Default::default()
        };
        scheduler
            .submit(Request::new(prompt.clone(), options, tx))
            .unwrap();
        receivers.push(rx);
    }
    scheduler.run_until_idle();
    for (i, rx) in receivers.iter().enumerate() {
        let mut text = String::new();
        let mut finish = None;
        for event in rx.try_iter() {
            match event {
                Event::Token(t) => text.push_str(&t.text),
                Event::Done(f) => finish = Some(f.reason),
                Event::Failed(f) => panic!("request {i}: {f}"),
            }
        }
        if i == 3 {
            continue;
        }
        assert_eq!(finish, Some(FinishReason::EndOfSequence), "request {i}");
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("request {i}: {e} in {text:?}"));
        validate(&value, &schemas[i], "$").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
}

#[test]
fn json_object_mode_gives_an_object() {
    let model = model();
    let tokenizer = model.tokenizer();
    let vocab = ConstraintVocab::new(tokenizer).unwrap();
    let grammar = Grammar::json_object(&vocab).unwrap();
    let prompt = tokenizer.encode("{", tokenizer.prompt_options());
    let mut finished = 0;
    for seed in 0..6 {
        let options = GenerateOptions {
            max_tokens: 300,
            // Greedy-ish sampling keeps the random model's strings short enough to finish.
            sampling: SamplingParams {
                temperature: 0.5,
                seed,
                ..Default::default()
            },
            grammar: Some(grammar.clone()),
            ..Default::default()
        };
        let mut session = model.session().unwrap();
        let g = session
            .generate(&prompt, options, |_| std::ops::ControlFlow::Continue(()))
            .unwrap();
        assert!(g.text.starts_with('{'), "{:?}", g.text);
        if g.tokens.len() < 300 {
            let value: Value = serde_json::from_str(&g.text).unwrap();
            assert!(value.is_object());
            finished += 1;
        }
    }
    assert!(finished > 0);
}

/// The mask's cost per token on SmolLM2's real vocabulary (run with `--nocapture` to see it):
/// documents forced token by token, timing every mask and advance. Free text inside a string is
/// the expensive case (nearly every token is allowed, so the whole trie is walked).
#[test]
fn mask_cost_per_token_on_smollm2_vocabulary_is_small() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tokenizer/byte_level/smollm2-tokenizer.json.gz"
    );
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut json)
        .unwrap();
    let tokenizer = Tokenizer::from_tokenizer_json_str(&json).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49152);
    let started = Instant::now();
    let vocab = ConstraintVocab::new(&tokenizer).unwrap();
    let vocab_ms = started.elapsed().as_secs_f64() * 1e3;
    let eos = tokenizer.piece_to_id("<|im_end|>").unwrap();
    let free_text = json!({"type": "object", "properties": {"title": {"type": "string"}, "body": {"type": "string"}}, "required": ["title", "body"]});
    let cases = [
        (
            schemas()[9].clone(),
            r#"{"items": [{"sku": "abc123", "qty": 12}, {"sku": "xyz789", "qty": 3}]}"#,
        ),
        (
            free_text,
            r#"{"title": "On the shore", "body": "The tide came in slowly, and the gulls wheeled over the harbour while the fishing boats, one after another, turned for home in the failing light."}"#,
        ),
    ];
    let mut worst_mean: f64 = 0.0;
    for (schema, doc) in cases {
        let started = Instant::now();
        let grammar = Grammar::json_schema(&vocab, &schema).unwrap();
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let ids = tokenizer.encode(doc, Default::default());
        let mut constraint = grammar.constraint();
        let mut logits = vec![0.0f32; 49152];
        let (mut total, mut max) = (0.0f64, 0.0f64);
        for &id in &ids {
            logits.fill(0.0);
            let t = Instant::now();
            constraint.mask_logits(&mut logits, &[eos]).unwrap();
            constraint.accept(id).unwrap();
            let dt = t.elapsed().as_secs_f64() * 1e3;
            assert!(logits[id as usize].is_finite(), "token {id} masked");
            total += dt;
            max = max.max(dt);
        }
        assert!(constraint.is_accepting());
        let mean = total / ids.len() as f64;
        worst_mean = worst_mean.max(mean);
        eprintln!(
            "SmolLM2 vocabulary (built in {vocab_ms:.0} ms): schema compiled in {compile_ms:.1} ms, \
             mask + advance {mean:.3} ms/token on average, {max:.3} ms at most, over {} tokens",
            ids.len()
        );
    }
    // Generous for a test build on a shared machine; measured far below.
    assert!(worst_mean < 50.0, "{worst_mean} ms per token");
}
