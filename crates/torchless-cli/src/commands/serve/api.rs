//! The OpenAI-style request fields, checked one by one so a bad request gets a 400 that names
//! the field, and the error body in OpenAI's shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use torchless_model::{ChatMessage, ChatOptions, SamplingParams, TemplateValue};

/// An error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for a `Retry-After` header (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 about one field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message.into(),
            )
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, json_body(&self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON response body with its content type.
pub fn json_body(value: &Value) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
}

/// The request body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body must be a JSON object, not {}", kind_of(&other)),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed, checked access to the fields of a request object (absent and `null` mean "default").
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a boolean, not {}", kind_of(v)),
            )),
        }
    }

    pub fn number(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if x.is_finite() && (min..=max).contains(&x) {
                    Ok(Some(x))
                } else {
                    Err(ApiError::invalid(
                        name,
                        format!("`{name}` is {x}, outside [{min}, {max}]"),
                    ))
                }
            }
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a number, not {}", kind_of(v)),
            )),
        }
    }

    pub fn integer(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::invalid(
                    name,
                    format!("`{name}` is {n}, not an integer in [{min}, {max}]"),
                )),
            },
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be an integer, not {}", kind_of(v)),
            )),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a string, not {}", kind_of(v)),
            )),
        }
    }

    /// `stop`: a string or an array of up to 16 strings.
    pub fn stop(&self) -> Result<Vec<String>, ApiError> {
        let bad = || ApiError::invalid("stop", "`stop` must be a string or an array of strings");
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) if items.len() <= 16 => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(Value::Array(_)) => Err(ApiError::invalid("stop", "at most 16 stop texts")),
            Some(_) => Err(bad()),
        }
    }

    /// `prompt`: text, or token ids (also either one in a one-element array).
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let bad = || {
            ApiError::invalid(
                "prompt",
                "`prompt` must be a string or an array of token ids (one prompt per request)",
            )
        };
        let ids = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
            items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(bad)
                })
                .collect()
        };
        match self.get("prompt") {
            None => Err(ApiError::invalid("prompt", "`prompt` is required")),
            Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
            Some(Value::Array(items)) => match items.as_slice() {
                [Value::String(s)] => Ok(Prompt::Text(s.clone())),
                [Value::Array(inner)] => Ok(Prompt::Ids(ids(inner)?)),
                items if items.iter().all(Value::is_number) => Ok(Prompt::Ids(ids(items)?)),
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }

    /// `messages`: `[{"role": "system"|"user"|"assistant"|"tool", "content": text, text parts
    /// or null}]`; the other fields of a message (`tool_calls`, `tool_call_id`, `name`, ...)
    /// reach the template as they are.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        let Some(Value::Array(items)) = self.get("messages") else {
            return Err(ApiError::invalid(
                "messages",
                "`messages` is required: an array of {\"role\", \"content\"} objects",
            ));
        };
        if items.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` is empty"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let param = format!("messages[{i}]");
                let bad = |what: &str| ApiError::invalid(&param, format!("{param}: {what}"));
                let Value::Object(m) = item else {
                    return Err(bad("must be an object"));
                };
                let role = match m.get("role") {
                    Some(Value::String(r))
                        if matches!(r.as_str(), "system" | "user" | "assistant" | "tool") =>
                    {
                        r
                    }
                    Some(Value::String(r)) => {
                        return Err(bad(&format!(
                            "role `{r}` is not supported (system, user, assistant or tool)"
                        )))
                    }
                    _ => return Err(bad("`role` must be a string")),
                };
                let content = match m.get("content") {
                    Some(Value::String(c)) => c.clone(),
                    Some(Value::Array(parts)) => {
                        let mut text = String::new();
                        for part in parts {
                            match (part.get("type"), part.get("text")) {
                                (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => {
                                    text.push_str(s)
                                }
                                _ => return Err(bad("only text content parts are supported")),
                            }
                        }
                        text
                    }
                    // An assistant message that only calls tools has no content.
                    Some(Value::Null) | None if role == "assistant" || role == "tool" => {
                        String::new()
                    }
                    _ => return Err(bad("`content` must be a string or an array of text parts")),
                };
                let mut message = ChatMessage::new(role.clone(), content);
                // Every field in the client's order (templates see Python's dict order); text
                // parts reach the template joined, as the text above.
                for (key, value) in m {
                    let value = match (key.as_str(), value) {
                        ("content", Value::Array(_)) => {
                            TemplateValue::from(message.content.as_str())
                        }
                        _ => TemplateValue::from_serialize(value),
                    };
                    message = message.with(key.as_str(), value);
                }
                Ok(message)
            })
            .collect()
    }

    /// What the chat template sees besides the messages: `add_generation_prompt` (default
    /// true), `tools`, and llama-server's `chat_template_kwargs` (extra template variables).
    pub fn chat_options(&self) -> Result<ChatOptions, ApiError> {
        let add_generation_prompt = self.bool("add_generation_prompt")?.unwrap_or(true);
        let tools = match self.get("tools") {
            None | Some(Value::Null) => None,
            Some(tools @ Value::Array(_)) => Some(TemplateValue::from_serialize(tools)),
            Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
        };
        let extra = match self.get("chat_template_kwargs") {
            None | Some(Value::Null) => Default::default(),
            Some(Value::Object(kwargs)) => kwargs
                .iter()
                .map(|(k, v)| (k.clone(), TemplateValue::from_serialize(v)))
                .collect(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "chat_template_kwargs",
                    "`chat_template_kwargs` must be an object",
                ))
            }
        };
        Ok(ChatOptions {
            add_generation_prompt,
            tools,
            extra,
            now: None,
        })
    }

    /// `response_format`: OpenAI's `{"type": "text"}`, `{"type": "json_object"}` (any object;
    /// llama-server's `schema` field beside it is honoured) or `{"type": "json_schema",
    /// "json_schema": {"name", "schema", "strict"}}`. The schema is compiled by the caller.
    pub fn response_format(&self) -> Result<ResponseFormat, ApiError> {
        let param = "response_format";
        let Some(value) = self.get(param) else {
            return Ok(ResponseFormat::Text);
        };
        let Value::Object(format) = value else {
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must be an object, not {}", kind_of(value)),
            ));
        };
        let any_object = || json!({"type": "object"});
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(ResponseFormat::Text),
            Some("json_object") => Ok(ResponseFormat::Schema(
                format.get("schema").cloned().unwrap_or_else(any_object),
            )),
            Some("json_schema") => match format.get("json_schema") {
                Some(Value::Object(spec)) => match spec.get("schema") {
                    None | Some(Value::Null) => Ok(ResponseFormat::Schema(any_object())),
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                        Ok(ResponseFormat::Schema(schema.clone()))
                    }
                    Some(other) => Err(ApiError::invalid(
                        param,
                        format!(
                            "`response_format.json_schema.schema` must be an object, not {}",
                            kind_of(other)
                        ),
                    )),
                },
                _ => Err(ApiError::invalid(
                    param,
                    "`response_format.json_schema` is required with type `json_schema`: {\"name\", \"schema\"}",
                )),
            },
            Some(other) => Err(ApiError::invalid(
                param,
                format!(
                    "`response_format.type` `{other}` is not supported (text, json_object or json_schema)"
                ),
            )),
            None => Err(ApiError::invalid(
                param,
                "`response_format.type` is required (text, json_object or json_schema)",
            )),
        }
    }

    /// The sampling fields, on top of llama.cpp's defaults (those of `torchless generate`).
    pub fn sampling(&self, random_seed: u64) -> Result<SamplingParams, ApiError> {
        let mut p = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: random_seed,
        };
        if let Some(t) = self.number("temperature", 0.0, 100.0)? {
            p.temperature = t as f32;
        }
        if let Some(k) = self.integer("top_k", 0, u32::MAX as u64)? {
            p.top_k = k as usize;
        }
        if let Some(x) = self.number("top_p", 0.0, 1.0)? {
            if x == 0.0 {
                return Err(ApiError::invalid("top_p", "`top_p` must be above 0"));
            }
            p.top_p = x as f32;
        }
        if let Some(x) = self.number("min_p", 0.0, 1.0)? {
            p.min_p = x as f32;
        }
        if let Some(x) = self.number("repeat_penalty", 0.0, 100.0)? {
            if x == 0.0 {
                return Err(ApiError::invalid(
                    "repeat_penalty",
                    "`repeat_penalty` must be above 0",
                ));
            }
            p.repeat_penalty = x as f32;
        }
        if let Some(n) = self.integer("repeat_last_n", 0, 1 << 20)? {
            p.repeat_last_n = n as usize;
        }
        // -1 asks for a random seed (llama-server's convention).
        match self.get("seed") {
            Some(Value::Number(n)) if n.as_i64() == Some(-1) => {}
            Some(_) => p.seed = self.integer("seed", 0, u64::MAX)?.unwrap_or(random_seed),
            None => {}
        }
        for name in ["frequency_penalty", "presence_penalty"] {
            if let Some(x) = self.number(name, -2.0, 2.0)? {
                if x != 0.0 {
                    return Err(ApiError::invalid(
                        name,
                        format!("`{name}` is not supported (use `repeat_penalty`)"),
                    ));
                }
            }
        }
        if let Some(n) = self.integer("n", 0, u64::MAX)? {
            if n != 1 {
                return Err(ApiError::invalid("n", "only `n: 1` is supported"));
            }
        }
        Ok(p)
    }
}

/// What `response_format` asks for.
#[derive(Debug)]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// A JSON document matching this schema.
    Schema(Value),
}

/// A completion prompt.
#[derive(Debug)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}
