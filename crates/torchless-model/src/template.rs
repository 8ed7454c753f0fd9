//! Chat templates rendered as Hugging Face `transformers` renders them with Python `jinja2`
//! (`apply_chat_template(tokenize=False)`): `trim_blocks` and `lstrip_blocks`, Python's string
//! and dict methods (`strip`, `startswith`, `split`, `items`, ... from minijinja's `pycompat`),
//! `raise_exception(message)`, `strftime_now(format)`, and a `tojson` that writes what Python's
//! `json.dumps` does (transformers replaces Jinja's HTML-escaping `tojson` with it), with its
//! `indent`, `ensure_ascii`, `separators` and `sort_keys`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::error::{ModelError, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"` or `"tool"` (templates may know others).
    pub role: String,
    /// The message text.
    pub content: String,
    /// Further fields the template sees on the message, in order: an assistant's `tool_calls`,
    /// a tool result's `tool_call_id`, `name`, ... (passed through as the client sent them).
    /// `role` and `content` may be listed too, to keep a client's field order (templates that
    /// iterate a message see Python's dict order): a `role`, or a string `content`, stands for
    /// the field above; a `content` of another kind replaces the text in the template's view
    /// (e.g. `none` for a message that only calls tools, as transformers passes it).
    pub extra: Vec<(String, Value)>,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            extra: Vec::new(),
        }
    }

    /// A `"system"` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `"user"` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `"assistant"` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// The message with one more field for the template (e.g. `tool_calls`).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// The message as the template sees it, as transformers' `apply_chat_template` hands it
    /// over: a dict of `role`, `content` and the extra fields, without the fields that are
    /// none (a `content: null` beside `tool_calls` is absent, not none), and with the reasoning
    /// copied under the names templates read (`_alias_reasoning_fields`): the first of
    /// `reasoning_content`, `thinking`, `reasoning` that is set becomes `reasoning_content`
    /// (in place, or last) and `thinking` (in place, or first).
    pub(crate) fn to_value(&self) -> Value {
        let listed = |name: &str| self.extra.iter().any(|(n, _)| n == name);
        let mut fields = Vec::with_capacity(self.extra.len() + 4);
        if !listed("role") {
            fields.push(("role".to_string(), Value::from(self.role.as_str())));
        }
        if !listed("content") {
            fields.push(("content".to_string(), Value::from(self.content.as_str())));
        }
        for (name, value) in &self.extra {
            let value = match name.as_str() {
                "role" => Value::from(self.role.as_str()),
                "content" if value.kind() == ValueKind::String => {
                    Value::from(self.content.as_str())
                }
                _ => value.clone(),
            };
            if !value.is_none() {
                fields.push((name.clone(), value));
            }
        }
        let reasoning = ["reasoning_content", "thinking", "reasoning"]
            .iter()
            .find_map(|key| fields.iter().find(|(n, _)| n == key))
            .map(|(_, v)| v.clone());
        if let Some(reasoning) = reasoning {
            // A map built from pairs keeps a key's first place and its last value, as Python's
            // `{"thinking": r, **message, "reasoning_content": r}`.
            fields.insert(0, ("thinking".to_string(), reasoning.clone()));
            fields.push(("reasoning_content".to_string(), reasoning));
        }
        Value::from_iter(fields)
    }
}

/// What a template sees besides the messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatOptions {
    /// Open an assistant turn after the messages (what a reply is generated after).
    pub add_generation_prompt: bool,
    /// Tool definitions (OpenAI's `tools`: `[{"type": "function", "function": {...}}]`); the
    /// template sees `none` without them, as with transformers.
    pub tools: Option<Value>,
    /// Further variables (`documents`, `date_string`, `enable_thinking`, ...).
    pub extra: BTreeMap<String, Value>,
    /// The instant `strftime_now` formats (Unix seconds, UTC); the clock when absent.
    pub now: Option<i64>,
}

impl ChatOptions {
    /// Options with only `add_generation_prompt` set.
    pub fn generation_prompt(add_generation_prompt: bool) -> Self {
        Self {
            add_generation_prompt,
            ..Self::default()
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatRenderer {
    env: Environment<'static>,
}

const NAME: &str = "chat_template";

pub(crate) fn template_error(message: impl std::fmt::Display) -> ModelError {
    ModelError::InvalidOption {
        option: "chat_template".into(),
        message: message.to_string(),
    }
}

impl ChatRenderer {
    /// Compiles a template; a syntax error is reported with its line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers' environment: ImmutableSandboxedEnvironment(trim_blocks=True,
        // lstrip_blocks=True); jinja2's default drops one trailing newline, as minijinja does.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_method);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: String| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            strftime(&format, now)
        });
        env.add_filter("tojson", tojson);
        // Python prints values as `str()` does: `True`, `None`, `['a', 1]`, `{'k': 'v'}` where
        // minijinja would write `true`, `none`, `["a", 1]`; templates print tool results and
        // arguments that way (`{{ arguments }}`, `content|string`).
        env.set_formatter(|out, state, value| match value.kind() {
            ValueKind::String | ValueKind::Undefined | ValueKind::Bytes | ValueKind::Plain => {
                minijinja::escape_formatter(out, state, value)
            }
            _ => out
                .write_str(&python_str(value))
                .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write")),
        });
        env.add_filter("trim", |value: &Value, chars: Option<String>| -> String {
            // jinja2: str(value).strip(chars).
            let text = python_str(value);
            match chars {
                Some(chars) => text.trim_matches(|c| chars.contains(c)).to_string(),
                None => text.trim().to_string(),
            }
        });
        env.add_filter("string", |value: &Value| -> Value {
            if value.kind() == ValueKind::String {
                value.clone()
            } else {
                Value::from(python_str(value))
            }
        });
        // jinja2's `iterable` is `iter(value)` succeeding: strings, sequences, mappings and
        // undefined values, but not none (which minijinja iterates as empty).
        env.add_test("iterable", |value: &Value| {
            matches!(
                value.kind(),
                ValueKind::String
                    | ValueKind::Bytes
                    | ValueKind::Seq
                    | ValueKind::Map
                    | ValueKind::Iterable
                    | ValueKind::Undefined
            )
        });
        env.add_template_owned(NAME, generation_blocks_as_with(source))
            .map_err(|e| template_error(format!("does not parse: {e}")))?;
        Ok(Self { env })
    }

    /// The text of a conversation, as `apply_chat_template(tokenize=False)` renders it.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        options: &ChatOptions,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self.env.get_template(NAME).map_err(template_error)?;
        let messages: Vec<Value> = messages.iter().map(ChatMessage::to_value).collect();
        // The keyword arguments of transformers' `compiled_template.render(...)`, extra last so
        // that it may override (as `**kwargs` there).
        let mut context: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(messages)),
            (
                "tools".into(),
                options.tools.clone().unwrap_or(Value::from(())),
            ),
            ("documents".into(), Value::from(())),
            (
                "add_generation_prompt".into(),
                Value::from(options.add_generation_prompt),
            ),
            ("bos_token".into(), Value::from(bos_token)),
            ("eos_token".into(), Value::from(eos_token)),
        ];
        if let Some(now) = options.now {
            context.push((
                "strftime_now".into(),
                Value::from_function(move |format: String| strftime(&format, now)),
            ));
        }
        context.extend(options.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        template
            .render(Value::from_iter(context))
            .map_err(|e| template_error(format!("cannot be rendered: {}", describe(&e))))
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` (its `AssistantTracker` extension,
/// which marks the assistant's tokens and otherwise renders the body as it is) as minijinja's
/// `{% with %}...{% endwith %}`: the same output, and a scope of its own as jinja2's call block
/// has. The tags keep their whitespace control (`{%-`, `-%}`), so trimming is unchanged. Only
/// block tags are rewritten: text, expressions, comments and raw blocks are copied as they are.
fn generation_blocks_as_with(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut in_raw = false;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        let closing = match rest.as_bytes().get(1) {
            Some(b'%') => "%}",
            Some(b'{') if !in_raw => "}}",
            Some(b'#') if !in_raw => "#}",
            _ => {
                out.push('{');
                rest = &rest[1..];
                continue;
            }
        };
        let Some(len) = tag_len(rest, closing) else {
            // Unterminated: the parser reports it.
            break;
        };
        let tag = &rest[..len];
        if closing == "%}" {
            // `{%-`/`{%+` and `-%}`/`+%}` are whitespace control, kept on the rewritten tag.
            let body = &tag[2..len - 2];
            let left = body.len() - body.trim_start_matches(['-', '+']).len();
            let body = &body[left..];
            let right = body.len() - body.trim_end_matches(['-', '+']).len();
            let head = &tag[..2 + left];
            let tail = &tag[len - 2 - right..];
            match body[..body.len() - right].trim() {
                "raw" => in_raw = true,
                "endraw" => in_raw = false,
                "generation" if !in_raw => {
                    out.push_str(head);
                    out.push_str(" with ");
                    out.push_str(tail);
                    rest = &rest[len..];
                    continue;
                }
                "endgeneration" if !in_raw => {
                    out.push_str(head);
                    out.push_str(" endwith ");
                    out.push_str(tail);
                    rest = &rest[len..];
                    continue;
                }
                _ => {}
            }
        }
        out.push_str(tag);
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

/// The length of the tag at the start of `text` up to its `closing` delimiter, skipping string
/// literals (`'%}'` inside a tag does not close it); `None` if it is not closed.
fn tag_len(text: &str, closing: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 2;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            // Comments have no string literals.
            None if (b == b'"' || b == b'\'') && closing != "#}" => quote = Some(b),
            None if bytes[i..].starts_with(closing.as_bytes()) => return Some(i + closing.len()),
            None => {}
        }
        i += 1;
    }
    None
}

/// The error's message, with `raise_exception`'s own text first.
fn describe(e: &Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) if e.name() == Some(NAME) => {
            format!("{detail} (line {})", e.line().unwrap_or(0))
        }
        _ => e.to_string(),
    }
}

/// Python's string and dict methods: minijinja-contrib's `pycompat`, except where it departs
/// from Python: `find`/`rfind` count characters (not bytes), and `isalpha`-style tests are
/// false on an empty string.
fn python_method(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let (ValueKind::String, Some(text)) = (value.kind(), value.as_str()) {
        match method {
            "find" | "rfind" if args.len() == 1 => {
                let needle = args[0].as_str().unwrap_or("");
                let found = if method == "find" {
                    text.find(needle)
                } else {
                    text.rfind(needle)
                };
                return Ok(Value::from(
                    found.map_or(-1, |byte| text[..byte].chars().count() as i64),
                ));
            }
            "isalpha" | "isalnum" | "isnumeric" | "isspace" | "islower" | "isupper" | "isascii"
                if text.is_empty() =>
            {
                // Python: "".isascii() is True, the others False.
                return Ok(Value::from(method == "isascii"));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

// ---------------------------------------------------------------------------------------------
// tojson: Python's json.dumps.

/// `tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, the signature of
/// transformers' filter (positional arguments in that order).
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let arg = |i: usize, name: &str| -> std::result::Result<Option<Value>, Error> {
        match kwargs.get::<Option<Value>>(name)? {
            Some(v) => Ok(Some(v)),
            None => Ok(args.get(i).cloned()),
        }
    };
    let truthy = |v: Option<Value>| v.is_some_and(|v| v.is_true());
    let ensure_ascii = truthy(arg(0, "ensure_ascii")?);
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let (item_sep, key_sep) = match arg(2, "separators")? {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .filter(|p: &Vec<String>| p.len() == 2)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            (parts[0].clone(), parts[1].clone())
        }
        // json.dumps: ", " and ": ", but "," at line ends when indenting.
        _ if indent.is_some() => (",".into(), ": ".into()),
        _ => (", ".into(), ": ".into()),
    };
    let sort_keys = truthy(arg(3, "sort_keys")?);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    write_json(&mut out, value, &style, 0)?;
    Ok(out)
}

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonStyle {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }
}

fn not_serializable(value: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: a value of type {} is not JSON serializable",
            value.kind()
        ),
    )
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let f = f64::try_from(value.clone()).map_err(|_| not_serializable(value))?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_string(out, value.as_str().unwrap_or(""), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                style.newline(out, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            style.newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                // json.dumps turns None/bool/number keys into their JSON text.
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or("").to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        write_json(&mut s, &key, style, 0)?;
                        s
                    }
                    _ => return Err(not_serializable(&key)),
                };
                entries.push((key, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                style.newline(out, depth + 1);
                write_string(out, key, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, item, style, depth + 1)?;
            }
            style.newline(out, depth);
            out.push('}');
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// Python's `json` string escapes: the short forms, `\u00XX` for other control characters and,
/// with `ensure_ascii`, `\uXXXX` (UTF-16, surrogate pairs) for everything past ASCII.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(float)`: the shortest round-trip digits, in exponent form below 1e-4 and from 1e16.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let magnitude = f.abs();
    if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) {
        // Rust: "1.5e20", "1e-5"; Python: "1.5e+20", "1e-05".
        let text = format!("{f:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exponent),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let text = format!("{f}");
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

// ---------------------------------------------------------------------------------------------
// Python's str() and repr() of template values.

/// `str(value)`: a string as it is, anything else as `repr`.
fn python_str(value: &Value) -> String {
    match value.as_str() {
        Some(s) if value.kind() == ValueKind::String => s.to_string(),
        _ => {
            let mut out = String::new();
            python_repr(&mut out, value);
            out
        }
    }
}

fn python_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Undefined => {}
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if f.is_nan() => out.push_str("nan"),
            Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "inf" } else { "-inf" }),
            Ok(f) => out.push_str(&python_float(f)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::String => string_repr(out, value.as_str().unwrap_or("")),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(out, &key);
                    out.push_str(": ");
                    python_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// `repr(str)`: single quotes unless the text has one and no double quote; backslash escapes
/// for the quote, backslashes and control characters.
fn string_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

// ---------------------------------------------------------------------------------------------
// strftime_now: the C library's strftime, in UTC.

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats a Unix time (UTC) with the strftime directives templates use (`%d %b %Y`, ...);
/// a directive it does not know is written as it stands.
pub fn strftime(format: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let year_day = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let month_name = MONTHS[(month - 1) as usize];
        let _ = match d {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:>2}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", (hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'j' => write!(out, "{year_day:03}"),
            'b' | 'h' => write!(out, "{}", &month_name[..3]),
            'B' => write!(out, "{month_name}"),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// Howard Hinnant's days-to-civil-date algorithm (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
