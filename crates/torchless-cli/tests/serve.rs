//! `torchless serve` end to end: the binary is started on 127.0.0.1 (port 0) by each test and
//! stopped by it; every request loop is bounded. Answers are checked against independent
//! references: the transformers goldens (ids, greedy continuations) and the CLI's output.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{fixtures, goldens, ids_arg, model, run, torchless};
use serde_json::{json, Value};

/// A server process; killed on drop if a test did not stop it.
struct Server {
    child: Child,
    base: String,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(model_file: &str, args: &[&str]) -> Server {
        Self::start_path(&model(model_file), args)
    }

    /// Starts a server and waits (bounded) until its model is loaded: /health answers 200.
    fn start_path(model_path: &std::path::Path, args: &[&str]) -> Server {
        let server = Self::start_loading(model_path, args, &[]);
        let health = server.url("/health");
        assert!(
            wait_until(Duration::from_secs(60), || get(&health).0 == 200),
            "the server did not finish loading: {:?}",
            server.log_lines()
        );
        server
    }

    /// Starts a server and returns once it listens (its model may still be loading).
    fn start_loading(model_path: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_torchless"))
            .arg("serve")
            .arg(model_path)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr: ChildStderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server {
            child,
            base,
            port,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (within `limit`).
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POST a JSON body; the status, the Retry-After header and the body parsed as JSON.
fn post(url: &str, body: &str, key: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = agent().post(url).header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Authorization", &format!("Bearer {key}"));
    }
    let mut response = request.send(body).expect("request");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.body_mut().read_to_string().unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}"));
    (status, retry, value)
}

fn post_ok(url: &str, body: Value) -> Value {
    let (status, _, value) = post(url, &body.to_string(), None);
    assert_eq!(status, 200, "{value}");
    value
}

fn get(url: &str) -> (u16, Value) {
    let mut response = agent().get(url).call().expect("request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// A streamed request: every `data:` payload in order (the last is `[DONE]`).
fn post_stream(url: &str, body: Value) -> Vec<String> {
    let response = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let reader = BufReader::new(response.into_body().into_reader());
    reader
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// The text of a streamed completion or chat, its finish reason and usage; checks the framing.
fn stream_text(events: &[String]) -> (String, String, Value) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = Value::Null;
    for c in &chunks {
        assert!(c.get("error").is_none(), "{c}");
        for choice in c["choices"].as_array().unwrap() {
            assert!(finish.is_none(), "a chunk after the finish reason: {c}");
            if let Some(t) = choice["text"].as_str() {
                text.push_str(t);
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
                usage = c["usage"].clone();
            }
        }
    }
    (text, finish.expect("a finish reason"), usage)
}

fn small_goldens() -> Value {
    goldens(&fixtures().join("models/small-gqa-goldens-int8.json"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// What `torchless generate` prints for these arguments.
fn cli_text(args: &[&str]) -> String {
    let out = run(torchless().arg(model("small-gqa-int8.bin")).args(args));
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

/// `torchless generate` with the server's prompt chunk size (16).
fn cli_text_b16(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["-b", "16"]);
    cli_text(&all)
}

#[test]
fn endpoints_answer_like_the_references() {
    // Prompt chunks of 16: the 31- to 56-token golden prompts are prefilled in 2 to 4 turns.
    let server = Server::start(
        "small-gqa-int8.bin",
        &["--parallel", "2", "--batch-size", "16"],
    );
    let g = small_goldens();

    let (status, health) = get(&server.url("/health"));
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    assert_eq!(health["slots_idle"], 2);
    // The KV cache: f32 keys and values of every layer, per token (from the reference config).
    let c = &g["config"];
    let kv_dim = c["num_key_value_heads"].as_u64().unwrap() * c["head_dim"].as_u64().unwrap();
    let layers = c["num_hidden_layers"].as_u64().unwrap();
    assert_eq!(health["kv_cache"]["type_k"], "f32");
    assert_eq!(health["kv_cache"]["type_v"], "f32");
    assert_eq!(
        health["kv_cache"]["bytes_per_token"],
        layers * kv_dim * 2 * 4
    );
    let (status, models) = get(&server.url("/v1/models"));
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "small-gqa-int8.bin");

    for prompt in g["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let golden_ids = ids(&prompt["ids"]);
        // /tokenize with BOS gives the ids of the Hugging Face tokenizer.
        let t = post_ok(
            &server.url("/tokenize"),
            json!({"content": text, "add_special": true}),
        );
        assert_eq!(ids(&t["tokens"]), golden_ids, "{text:?}");
        let d = post_ok(
            &server.url("/detokenize"),
            json!({"tokens": golden_ids[1..]}),
        );
        assert_eq!(d["content"], text);

        // Greedy from the golden ids: transformers' continuation, and the CLI's text.
        let greedy = ids(&prompt["greedy"]["ids"]);
        let n = greedy.len();
        let c = post_ok(
            &server.url("/v1/completions"),
            json!({"prompt": golden_ids, "max_tokens": n, "temperature": 0, "ignore_eos": true, "logprobs": 2}),
        );
        let choice = &c["choices"][0];
        let want = post_ok(&server.url("/detokenize"), json!({"tokens": greedy}));
        assert_eq!(choice["text"], want["content"], "{text:?}");
        let cli = cli_text_b16(&[
            "--prompt-ids",
            &ids_arg(prompt["ids"].as_array().unwrap()),
            "-n",
            &n.to_string(),
            "--temp",
            "0",
            "--ignore-eos",
        ]);
        assert_eq!(
            choice["text"].as_str().unwrap(),
            cli,
            "{text:?}: server vs CLI"
        );
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["usage"]["prompt_tokens"], golden_ids.len());
        assert_eq!(c["usage"]["completion_tokens"], n);
        assert_eq!(c["usage"]["total_tokens"], golden_ids.len() + n);
        // Log-probabilities: one per token; greedy picks the most likely one.
        let lp = &choice["logprobs"];
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        for (chosen, top) in lp["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(lp["top_logprobs"].as_array().unwrap())
        {
            let best = top
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            // Greedy: the chosen token is the most likely one (two byte tokens that both print
            // as U+FFFD share one key of the text-keyed map, so only `>=` can be checked).
            let top = top.as_object().unwrap();
            assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
            assert!(
                chosen.as_f64().unwrap() >= best - 1e-5 && best <= 0.0,
                "{chosen} vs {top:?}"
            );
        }

        // The same request streamed gives the same text, then [DONE].
        let events = post_stream(
            &server.url("/v1/completions"),
            json!({"prompt": golden_ids, "max_tokens": n, "temperature": 0, "ignore_eos": true, "stream": true}),
        );
        let (streamed, finish, usage) = stream_text(&events);
        assert_eq!(streamed, choice["text"].as_str().unwrap());
        assert_eq!(finish, "length");
        assert_eq!(usage["completion_tokens"], n);
    }

    // Text prompt with a seed and the default sampling: the CLI's text for the same seed.
    for seed in [3u64, 11] {
        let c = post_ok(
            &server.url("/v1/completions"),
            json!({"prompt": "Once upon a time", "max_tokens": 20, "seed": seed}),
        );
        let cli = cli_text_b16(&["Once upon a time", "-n", "20", "--seed", &seed.to_string()]);
        assert_eq!(
            c["choices"][0]["text"].as_str().unwrap(),
            cli,
            "seed {seed}"
        );
    }

    // Chat, plain and streamed (the role comes first, then the content).
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]);
    let c = post_ok(
        &server.url("/v1/chat/completions"),
        json!({"messages": messages, "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(c["object"], "chat.completion");
    let message = &c["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    let events = post_stream(
        &server.url("/v1/chat/completions"),
        json!({"messages": messages, "max_tokens": 12, "temperature": 0, "stream": true,
               "stream_options": {"include_usage": true}}),
    );
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["object"], "chat.completion.chunk");
    let (streamed, finish, usage) = stream_text(&events);
    assert_eq!(streamed, message["content"].as_str().unwrap());
    assert_eq!(finish, c["choices"][0]["finish_reason"].as_str().unwrap());
    // The same counts, but the streamed request found its prompt in the slot the first one
    // left: one whole chunk of 16 of its 22 tokens (the prompt cache).
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let mut expected_usage = c["usage"].clone();
    expected_usage["prompt_tokens_details"]["cached_tokens"] = json!(16);
    assert_eq!(usage, expected_usage);
    // include_usage: a last chunk with no choices and the usage.
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], expected_usage);

    // Stop texts: the text ends before the first occurrence, in both forms.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    let full = post_ok(&server.url("/v1/completions"), body.clone())["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let cut = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[cut..].chars().take(3).collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut with_stop = body.clone();
    with_stop["stop"] = json!([stop, "never-produced-text"]);
    let c = post_ok(&server.url("/v1/completions"), with_stop.clone());
    assert_eq!(
        c["choices"][0]["text"], expected,
        "stop {stop:?} in {full:?}"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    with_stop["stream"] = json!(true);
    let (streamed, finish, _) =
        stream_text(&post_stream(&server.url("/v1/completions"), with_stop));
    assert_eq!((streamed.as_str(), finish.as_str()), (expected, "stop"));

    // A prompt longer than the context (192 positions).
    let (status, _, v) = post(
        &server.url("/v1/completions"),
        &json!({"prompt": "word ".repeat(400)}).to_string(),
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");

    // One log line per request with status and token counts.
    let log = server.log_lines().join("\n");
    assert!(log.contains("POST /v1/completions 200"), "{log}");
    assert!(log.contains("completion=20"), "{log}");
}

#[test]
fn tokenize_on_a_byte_level_model_gives_the_reference_ids() {
    // The Llama fixture's byte-level vocabulary, through the same bridge as every command: the
    // ids Hugging Face `tokenizers` gave for each golden prompt (ChatML markers parsed).
    let server = Server::start("llama-untied-f32.bin", &[]);
    let g = goldens(&fixtures().join("models/llama-untied-goldens-f32.json"));
    for prompt in g["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let t = post_ok(
            &server.url("/tokenize"),
            json!({"content": text, "add_special": true, "parse_special": text.contains("<|")}),
        );
        assert_eq!(ids(&t["tokens"]), ids(&prompt["ids"]), "{text:?}");
    }
}

#[test]
fn load_of_64_requests_from_8_clients_gets_every_answer_complete_and_unmixed() {
    let server = Server::start("small-gqa-int8.bin", &["--parallel", "4", "--queue", "64"]);
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("Request number {i} asks about topic {}", i * 7))
        .collect();
    let body = |p: &str, stream: bool, n: usize| json!({"prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": true, "stream": stream});
    let lengths = |i: usize| 8 + (i * 5) % 17;
    // The references: each prompt alone through the CLI.
    let expected: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            cli_text(&[
                p,
                "-n",
                &lengths(i).to_string(),
                "--temp",
                "0",
                "--ignore-eos",
            ])
        })
        .collect();
    let expected = Arc::new(expected);
    let prompts = Arc::new(prompts);
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (expected, prompts, url) = (
                expected.clone(),
                prompts.clone(),
                server.url("/v1/completions"),
            );
            thread::spawn(move || {
                let mut ttft = Vec::new();
                for r in 0..8 {
                    let i = (c * 3 + r) % 8;
                    let stream = (c + r) % 2 == 0;
                    let t0 = Instant::now();
                    let text = if stream {
                        let (text, finish, usage) =
                            stream_text(&post_stream(&url, body(&prompts[i], true, lengths(i))));
                        assert_eq!(finish, "length");
                        assert_eq!(usage["completion_tokens"], lengths(i));
                        text
                    } else {
                        let v = post_ok(&url, body(&prompts[i], false, lengths(i)));
                        assert_eq!(v["usage"]["completion_tokens"], lengths(i));
                        v["choices"][0]["text"].as_str().unwrap().to_string()
                    };
                    ttft.push(t0.elapsed());
                    assert_eq!(
                        text, expected[i],
                        "client {c} request {r} (prompt {i}, stream {stream})"
                    );
                }
                ttft
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    latencies.sort();
    assert_eq!(latencies.len(), 64);
    eprintln!(
        "64 requests, 8 clients, 4 slots: {:.2} s; request latency p50 {:?}, p99 {:?}",
        started.elapsed().as_secs_f64(),
        latencies[32],
        latencies[63]
    );
    // A request's log line is written when its response has gone out, so the last ones may
    // land just after their clients returned.
    let logged = || {
        server
            .log_lines()
            .iter()
            .filter(|l| l.contains("POST /v1/completions 200"))
            .count()
    };
    wait_until(Duration::from_secs(5), || logged() >= 64);
    assert_eq!(logged(), 64);
}

/// Sends a raw HTTP request and returns the connection.
fn raw_request(port: u16, path: &str, body: &str, extra_headers: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

/// Reads the start of a response and checks it is a 200 (the stream has begun).
fn read_ok_head(conn: &mut TcpStream) {
    let mut head = [0u8; 256];
    let n = conn.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

fn good_owned() -> String {
    json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).to_string()
}

#[test]
fn faults_get_clear_errors_and_the_server_keeps_serving() {
    // A tiny random model that can generate for long (8192 positions, window 16).
    let dir = tempfile::tempdir().unwrap();
    let long_model = dir.path().join("tiny-long.bin");
    let out = run(torchless().arg("synth").arg(&long_model).args([
        "--shape",
        "tiny",
        "--quant",
        "int8",
        "--max-positions",
        "8192",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut server = Server::start_path(
        &long_model,
        &[
            "--parallel",
            "1",
            "--queue",
            "1",
            "--max-body",
            "4096",
            "--json",
            "--ctx-size",
            "8192",
        ],
    );
    let url = server.url("/v1/completions");
    let good = json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).to_string();
    let check_error = |status: u16, body: &str, want: u16, param: Option<&str>| {
        let (got, _, v) = post(&url, body, None);
        assert_eq!(got, want, "{body}: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{v}");
        }
        let _ = status;
    };
    // Malformed JSON, wrong types, values out of range.
    check_error(400, "{\"prompt\": \"Hello\", ", 400, None);
    check_error(400, "[1, 2]", 400, None);
    check_error(
        400,
        r#"{"prompt": "Hi", "max_tokens": "ten"}"#,
        400,
        Some("max_tokens"),
    );
    check_error(
        400,
        r#"{"prompt": "Hi", "temperature": -1}"#,
        400,
        Some("temperature"),
    );
    check_error(
        400,
        r#"{"prompt": "Hi", "stream": "yes"}"#,
        400,
        Some("stream"),
    );
    check_error(400, r#"{"prompt": {"a": 1}}"#, 400, Some("prompt"));
    check_error(400, r#"{"prompt": [1, 99999]}"#, 400, Some("prompt"));
    check_error(400, r#"{"max_tokens": 3}"#, 400, Some("prompt"));
    check_error(400, r#"{"prompt": "Hi", "stop": [1]}"#, 400, Some("stop"));
    check_error(400, r#"{"prompt": "Hi", "n": 2}"#, 400, Some("n"));
    // An oversized body.
    let big = json!({"prompt": "x".repeat(5000)}).to_string();
    check_error(413, &big, 413, None);
    // Chat: wrong message shapes.
    let chat = server.url("/v1/chat/completions");
    for body in [
        r#"{"messages": "hi"}"#,
        r#"{"messages": []}"#,
        r#"{"messages": [{"role": "user"}]}"#,
        r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
    ] {
        let (status, _, v) = post(&chat, body, None);
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"]["param"]
                .as_str()
                .unwrap()
                .starts_with("messages"),
            "{v}"
        );
    }
    // Unknown endpoint and wrong method: JSON errors too.
    let (status, _, v) = post(&server.url("/v1/nothing"), "{}", None);
    assert_eq!((status, v["error"]["type"].is_string()), (404, true));
    let (status, v) = get(&url);
    assert_eq!((status, v["error"]["type"].is_string()), (405, true));
    assert_eq!(post(&url, &good, None).0, 200);

    // A client that disconnects mid-stream frees the only slot at once: of the 6000 tokens it
    // asked for (about a second of generation), few are made after it left.
    let long_stream = json!({"prompt": "Hi", "max_tokens": 6000, "ignore_eos": true, "stream": true, "temperature": 0}).to_string();
    let health = server.url("/health");
    let generated = || get(&health).1["tokens_generated"].as_u64().unwrap();
    // `started` waits until the request is generating; then the client goes away.
    let disconnect_frees_the_slot = |body: &str, started: &dyn Fn(&mut TcpStream)| {
        let before = generated();
        let mut conn = raw_request(server.port, "/v1/completions", body, "");
        started(&mut conn);
        drop(conn);
        assert!(
            wait_until(Duration::from_secs(5), || get(&health).1
                ["slots_processing"]
                == 0),
            "the slot was not freed after the disconnect"
        );
        let made = generated() - before;
        assert!(
            made < 3000,
            "{made} of 6000 tokens generated after the client left"
        );
    };
    disconnect_frees_the_slot(&long_stream, &read_ok_head);
    assert_eq!(post(&url, &good, None).0, 200);
    // The same for a non-streamed request: the handler is dropped with the connection.
    let plain = long_stream.replace("\"stream\":true", "\"stream\":false");
    disconnect_frees_the_slot(&plain, &|_| {
        assert!(wait_until(Duration::from_secs(5), || get(&health).1
            ["slots_processing"]
            == 1));
    });

    // A slow reader: its stream waits in buffers and completes; others are served meanwhile.
    let mut slow = raw_request(server.port, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 300, "stream": true, "temperature": 0, "ignore_eos": true}).to_string(), "");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(post(&url, &good, None).0, 200);
    let mut all = String::new();
    slow.read_to_string(&mut all).unwrap();
    assert!(
        all.contains("data: [DONE]") && all.contains("\"completion_tokens\":300"),
        "{all}"
    );

    // Past the queue: one generating, one waiting, the rest 503 with Retry-After. The slow
    // reader's slot is freed a step after its last event, so wait for an idle server first.
    assert!(wait_until(Duration::from_secs(5), || {
        let h = get(&health).1;
        h["slots_processing"] == 0 && h["requests_waiting"] == 0
    }));
    let mut running = raw_request(server.port, "/v1/completions", &long_stream, "");
    read_ok_head(&mut running);
    let queued_url = url.clone();
    let queued = thread::spawn(move || post(&queued_url, &good_owned(), None).0);
    assert!(wait_until(Duration::from_secs(5), || get(&health).1
        ["requests_waiting"]
        == 1));
    for _ in 0..3 {
        let (status, retry, v) = post(&url, &good, None);
        assert_eq!(status, 503, "{v}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(v["error"]["code"], "server_busy");
    }
    drop(running);
    assert_eq!(queued.join().unwrap(), 200);
    assert_eq!(post(&url, &good, None).0, 200);

    // JSON log lines, one per request.
    let lines = server.log_lines();
    let logged: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(logged.iter().any(|l| l["status"] == 503));
    assert!(logged.iter().any(|l| l["status"] == 413));
    assert!(logged.iter().any(|l| l["finish_reason"] == "disconnected"));

    // SIGTERM during a stream: the stream ends and the process exits cleanly.
    let mut in_flight = raw_request(server.port, "/v1/completions", &long_stream, "");
    read_ok_head(&mut in_flight);
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    let _ = in_flight.read_to_string(&mut rest);
}

#[test]
fn api_key_is_required_when_set() {
    let server = Server::start("small-gqa-f32.bin", &["--api-key", "s3cret-key"]);
    let url = server.url("/v1/completions");
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    for key in [None, Some("wrong"), Some("s3cret-ke"), Some("s3cret-key-")] {
        let (status, _, v) = post(&url, &body, key);
        assert_eq!(status, 401, "{key:?}: {v}");
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    let (status, _, v) = post(&url, &body, Some("s3cret-key"));
    assert_eq!(status, 200, "{v}");
    let mut models = agent().get(&server.url("/v1/models")).call().unwrap();
    assert_eq!(models.status().as_u16(), 401);
    let _ = models.body_mut().read_to_string();
    // Health checks need no key.
    assert_eq!(get(&server.url("/health")).0, 200);
}

#[test]
fn bad_server_options_fail_with_one_line() {
    let out = run(torchless().args(["serve", "/no/such/model.bin", "--port", "0"]));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("/no/such/model.bin"), "{}", out.stderr);
    let out = run(torchless()
        .arg("serve")
        .arg(model("small-gqa-int8.bin"))
        .args(["--port", "0", "--parallel", "0"]));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--parallel"), "{}", out.stderr);
    let out = run(torchless()
        .arg("serve")
        .arg(model("small-gqa-int8.bin"))
        .args(["--port", "0", "--ctx-size", "100000"]));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("context"), "{}", out.stderr);
}

/// A GGUF file served as it is: /v1/models reports its ggml types, /tokenize gives the ids of
/// its own vocabulary, and greedy completions on the exact path are `transformers`'
/// continuations on gguf-py's dequantization of the same file; the default path (activations
/// quantized per block) gives what the CLI gives on it.
#[test]
fn a_gguf_file_is_served_as_it_is() {
    let path = model("llama-tied-q4_0.gguf");
    let g = goldens(&model("llama-tied-q4_0-goldens-f32.json"));
    for exact in [true, false] {
        let flags: &[&str] = if exact { &["--exact"] } else { &[] };
        let mut args = vec!["--parallel", "2"];
        args.extend(flags);
        let server = Server::start_path(&path, &args);
        let (status, models) = get(&server.url("/v1/models"));
        assert_eq!(status, 200);
        assert_eq!(models["data"][0]["id"], "llama-tied-q4_0.gguf");
        assert!(models["data"][0]["meta"]["quant"]
            .as_str()
            .unwrap()
            .contains("Q4_0"));
        for prompt in g["prompts"].as_array().unwrap().iter().take(3) {
            let text = prompt["text"].as_str().unwrap();
            let golden_ids = ids(&prompt["ids"]);
            let t = post_ok(
                &server.url("/tokenize"),
                json!({"content": text, "add_special": true}),
            );
            assert_eq!(ids(&t["tokens"]), golden_ids, "{text:?}");
            let greedy = ids(&prompt["greedy"]["ids"]);
            let n = greedy.len();
            let c = post_ok(
                &server.url("/v1/completions"),
                json!({"prompt": golden_ids, "max_tokens": n, "temperature": 0, "ignore_eos": true}),
            );
            let text_out = c["choices"][0]["text"].as_str().unwrap().to_string();
            if exact {
                let want = post_ok(&server.url("/detokenize"), json!({"tokens": greedy}));
                assert_eq!(text_out, want["content"], "{text:?}");
            }
            let mut cli = torchless();
            cli.arg(&path)
                .args(["--prompt-ids", &ids_arg(prompt["ids"].as_array().unwrap())])
                .args([
                    "-n",
                    &n.to_string(),
                    "--temp",
                    "0",
                    "--ignore-eos",
                    "-b",
                    "64",
                ])
                .args(flags);
            let out = run(&mut cli);
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert_eq!(
                text_out, out.stdout,
                "{text:?}: server vs CLI (exact {exact})"
            );
        }
    }
}

#[test]
fn a_second_chat_turn_reuses_the_first_and_answers_as_without_the_cache() {
    // No sliding window on this model, so the whole first turn stays in its slot's cache.
    let server = Server::start(
        "small-mqa-int8.bin",
        &["--parallel", "2", "--batch-size", "8"],
    );
    let chat = server.url("/v1/chat/completions");
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    let mut messages = vec![
        json!({"role": "system", "content": "You answer questions about animals briefly."}),
        json!({"role": "user", "content": "What do foxes eat in winter?"}),
    ];
    let ask = |messages: &[Value], extra: Value| {
        let mut body = json!({"messages": messages, "max_tokens": 12, "temperature": 0,
                              "logprobs": true, "top_logprobs": 2});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let first = post_ok(&chat, ask(&messages, json!({})));
    assert_eq!(cached(&first), Some(0), "{first}");
    let answer = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!answer.is_empty());
    messages.push(json!({"role": "assistant", "content": answer}));
    messages.push(json!({"role": "user", "content": "And in summer, when food is easy?"}));

    let with_cache = post_ok(&chat, ask(&messages, json!({})));
    let without = post_ok(&chat, ask(&messages, json!({"cache_prompt": false})));
    let hit = cached(&with_cache).unwrap();
    assert!(hit > 0, "{with_cache}");
    assert!(hit < with_cache["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(cached(&without), Some(0), "{without}");
    // The same answer, token for token and log-probability for log-probability.
    assert_eq!(with_cache["choices"], without["choices"]);
    assert_eq!(
        with_cache["usage"]["prompt_tokens"],
        without["usage"]["prompt_tokens"]
    );

    // Streamed, the final usage chunk says it too (the slot now holds all of turn 2's prompt).
    let events = post_stream(
        &chat,
        ask(
            &messages,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    let (streamed, _, _) = stream_text(&events);
    assert_eq!(
        streamed,
        without["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(cached(&last).unwrap() > hit, "{last}");

    // /v1/completions reports it as well.
    let completions = server.url("/v1/completions");
    let body = json!({"prompt": "Once upon a time there was a fox who lived in a den near the river",
                      "max_tokens": 8, "temperature": 0});
    let cold = post_ok(&completions, body.clone());
    let warm = post_ok(&completions, body.clone());
    // At most the BOS the chat's prompts began with.
    assert!(cached(&cold).unwrap() <= 1, "{cold}");
    assert!(cached(&warm).unwrap() > 1, "{warm}");
    assert_eq!(warm["choices"], cold["choices"]);
    // The request log says how much came from the cache.
    let log = server.log_lines().join("\n");
    assert!(log.contains(&format!("cached={hit} ")), "{log}");

    let (status, _, v) = post(
        &chat,
        &ask(&messages, json!({"cache_prompt": "yes"})).to_string(),
        None,
    );
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("cache_prompt"))
    );
}

// ---------------------------------------------------------------------------------------------
// Chat templates (expected texts: Python jinja2 through transformers, in
// tests/fixtures/chat-templates, written by scripts/fixtures/make_chat_template_fixtures.py).

fn template_fixture(name: &str) -> Value {
    goldens(&fixtures().join(format!("chat-templates/{name}.json")))
}

/// The body of a fixture case as an OpenAI request.
fn template_request(case: &Value) -> Value {
    let mut body = json!({"messages": case["messages"],
                          "add_generation_prompt": case["add_generation_prompt"]});
    if let Some(tools) = case.get("tools") {
        body["tools"] = tools.clone();
    }
    if let Some(extra) = case.get("extra") {
        body["chat_template_kwargs"] = extra.clone();
    }
    body
}

#[test]
fn apply_template_renders_as_jinja2_and_is_the_chat_prompt() {
    // Qwen2.5's template (tools, tool calls, tool results) replaces the file's: it writes no
    // bos_token or eos_token, so jinja2's text is what this model must render too.
    let dir = tempfile::tempdir().unwrap();
    let qwen = template_fixture("qwen25");
    let template = dir.path().join("qwen25.jinja");
    std::fs::write(&template, qwen["template"].as_str().unwrap()).unwrap();
    let server = Server::start(
        "small-gqa-int8.bin",
        &[
            "--parallel",
            "1",
            "--chat-template-file",
            template.to_str().unwrap(),
        ],
    );
    let apply = server.url("/apply-template");
    let mut checked = 0;
    for case in qwen["cases"].as_array().unwrap() {
        // OpenAI's content is text (or null); a case with an object as content is the
        // library's to check (tests/chat_templates.rs).
        let openai_shaped = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"].is_string() || m["content"].is_null());
        if !openai_shaped {
            continue;
        }
        let v = post_ok(&apply, template_request(case));
        assert_eq!(v["prompt"], case["expected"], "{}", case["name"]);
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");

    // The chat endpoint's prompt is that text, tokenized.
    let case = &qwen["cases"][2];
    let prompt = post_ok(&apply, template_request(case))["prompt"].clone();
    let tokens = post_ok(
        &server.url("/tokenize"),
        json!({"content": prompt, "add_special": true}),
    );
    let mut body = template_request(case);
    body["max_tokens"] = json!(1);
    let chat = post_ok(&server.url("/v1/chat/completions"), body);
    assert_eq!(
        chat["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        tokens["tokens"].as_array().unwrap().len(),
        "{chat}"
    );

    // Bad requests: a 400 in OpenAI's shape.
    let (status, _, v) = post(&apply, "{\"messages\": [", None);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let (status, _, v) = post(
        &apply,
        &json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(),
        None,
    );
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("messages[0]")),
        "{v}"
    );
}

/// Real models' templates (llama.cpp's models/templates, in real-templates.json.gz) loaded with
/// `--chat-template-file`: `/apply-template` gives jinja2's text for every conversation of the
/// fixture, or a 400 where jinja2 raised (naming the template's message when it is its own).
/// These templates write neither bos_token nor eos_token nor the date, which the server takes
/// from the model and the clock.
#[test]
fn apply_template_with_real_model_templates_is_jinja2s_text() {
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(fixtures().join("chat-templates/real-templates.json.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut rendered, mut raised) = (0, 0);
    for file in [
        "Qwen-Qwen3-0.6B.jinja",
        "GLM-4.6.jinja",
        "Kimi-K2-Instruct.jinja",
        "HuggingFaceTB-SmolLM3-3B.jinja",
        "poolside-Laguna-XS.2.jinja",
    ] {
        let fixture = doc["templates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["file"] == file)
            .unwrap_or_else(|| panic!("{file} is not in the fixture"));
        let source = fixture["template"].as_str().unwrap();
        assert!(!source.contains("bos_token") && !source.contains("strftime_now"));
        let path = dir.path().join(file);
        std::fs::write(&path, source).unwrap();
        let server = Server::start(
            "small-gqa-int8.bin",
            &[
                "--parallel",
                "1",
                "--chat-template-file",
                path.to_str().unwrap(),
            ],
        );
        let apply = server.url("/apply-template");
        for case in fixture["cases"].as_array().unwrap() {
            let name = format!("{file} / {}", case["name"].as_str().unwrap());
            let (status, _, v) = post(&apply, &template_request(case).to_string(), None);
            match case.get("expected") {
                Some(expected) => {
                    assert_eq!((status, &v["prompt"]), (200, expected), "{name}: {v}");
                    rendered += 1;
                }
                None => {
                    assert_eq!(status, 400, "{name}: {v}");
                    if let Some(error) = case["error"].as_str() {
                        let message = v["error"]["message"].as_str().unwrap();
                        assert!(message.contains(error), "{name}: {message}");
                    }
                    raised += 1;
                }
            }
        }
        drop(server);
    }
    assert!(
        rendered >= 35 && raised >= 2,
        "{rendered} rendered, {raised} raised"
    );
}

#[test]
fn a_template_that_raises_gets_a_400_naming_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let gemma = template_fixture("gemma2");
    let template = dir.path().join("gemma2.jinja");
    std::fs::write(&template, gemma["template"].as_str().unwrap()).unwrap();
    let server = Server::start(
        "small-gqa-int8.bin",
        &[
            "--parallel",
            "1",
            "--chat-template-file",
            template.to_str().unwrap(),
        ],
    );
    let body = json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                      "max_tokens": 2});
    for path in ["/apply-template", "/v1/chat/completions"] {
        let (status, _, v) = post(&server.url(path), &body.to_string(), None);
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("System role not supported"), "{message}");
    }
}

#[test]
fn a_chat_template_file_that_does_not_parse_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("broken.jinja");
    std::fs::write(
        &template,
        "{% for message in messages %}{{ message.content }",
    )
    .unwrap();
    for command in ["serve", "chat"] {
        let mut cmd = torchless();
        cmd.arg(command).arg(model("small-gqa-int8.bin"));
        if command == "serve" {
            cmd.args(["--port", "0"]);
        }
        let out = run(cmd.arg("--chat-template-file").arg(&template));
        assert_ne!(out.code, 0);
        let stderr = out.stderr.trim();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("broken.jinja") && stderr.contains("does not parse"),
            "{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Operations: /metrics, /slots, /health while loading.

/// One sample of Prometheus' text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A small parser of Prometheus' text exposition format: `# TYPE` lines, `name{k="v",...} value`
/// lines; every sample must belong to a declared family (histograms: `_bucket`, `_sum`,
/// `_count`).
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().expect("a TYPE line names a metric");
                    let kind = words.next().expect("a TYPE line gives a type");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                    families.push((name.to_string(), kind.to_string()));
                }
                Some("HELP") => {}
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label in {line:?}"));
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line:?}"
        );
        let declared = families.iter().any(|(family, kind)| {
            name == *family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{family}{s}")))
        });
        assert!(declared, "{name} has no # TYPE line");
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map_or(0.0, |s| s.value)
}

fn get_text(url: &str) -> (u16, String) {
    let mut response = agent().get(url).call().expect("request");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

#[test]
fn metrics_count_requests_tokens_and_the_prompt_cache() {
    let server = Server::start(
        "small-mqa-int8.bin",
        &["--parallel", "2", "--batch-size", "8", "--metrics"],
    );
    let metrics = || {
        let (status, text) = get_text(&server.url("/metrics"));
        assert_eq!(status, 200);
        parse_prometheus(&text)
    };
    let before = metrics();
    assert_eq!(sample(&before, "torchless_slots_total", &[]), 2.0);
    assert_eq!(sample(&before, "torchless_requests_processing", &[]), 0.0);
    assert_eq!(
        sample(&before, "torchless_prompt_cache_hits_total", &[]),
        0.0
    );

    // The same prompt twice: the second reuses the first's cache.
    let body = json!({"prompt": "Once upon a time there was a fox who lived in a den near the river",
                      "max_tokens": 5, "temperature": 0});
    let first = post_ok(&server.url("/v1/completions"), body.clone());
    let second = post_ok(&server.url("/v1/completions"), body);
    let (status, _, _) = post(&server.url("/v1/completions"), "{bad json", None);
    assert_eq!(status, 400);
    let completions = |s: &[Sample], class: &str| {
        sample(
            s,
            "torchless_requests_total",
            &[("endpoint", "/v1/completions"), ("status", class)],
        )
    };
    // A response is counted when its body has ended, just after the client has it.
    let mut after = metrics();
    assert!(
        wait_until(Duration::from_secs(10), || {
            after = metrics();
            completions(&after, "2xx") == 2.0 && completions(&after, "4xx") == 1.0
        }),
        "{after:?}"
    );
    let usage = |v: &Value, field: &str| v["usage"][field].as_f64().unwrap();
    assert_eq!(
        sample(&after, "torchless_prompt_tokens_total", &[]),
        usage(&first, "prompt_tokens") + usage(&second, "prompt_tokens")
    );
    assert_eq!(
        sample(&after, "torchless_tokens_predicted_total", &[]),
        usage(&first, "completion_tokens") + usage(&second, "completion_tokens")
    );
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_f64()
        .unwrap();
    assert!(cached > 0.0, "{second}");
    assert_eq!(
        sample(&after, "torchless_prompt_cache_hits_total", &[]),
        1.0
    );
    assert_eq!(
        sample(&after, "torchless_cached_prompt_tokens_total", &[]),
        cached
    );
    // Time to first token: one observation per generation; latency: one per request counted.
    assert_eq!(
        sample(&after, "torchless_time_to_first_token_seconds_count", &[]),
        2.0
    );
    let counted: f64 = after
        .iter()
        .filter(|s| s.name == "torchless_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        sample(&after, "torchless_request_duration_seconds_count", &[]),
        counted
    );
    // Buckets are cumulative and end with +Inf = count.
    for family in [
        "torchless_request_duration_seconds",
        "torchless_time_to_first_token_seconds",
    ] {
        let buckets: Vec<f64> = after
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .map(|s| s.value)
            .collect();
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{family}: {buckets:?}"
        );
        assert_eq!(
            sample(&after, &format!("{family}_bucket"), &[("le", "+Inf")]),
            sample(&after, &format!("{family}_count"), &[])
        );
    }

    // /slots: the slot that served the prompt holds it. The scheduler publishes its slots after
    // each turn, so the response can reach us a moment before the slot shows free: poll.
    let prompt_tokens = usage(&second, "prompt_tokens");
    let mut slots = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (status, body) = get(&server.url("/slots"));
            assert_eq!(status, 200);
            slots = body.as_array().unwrap().clone();
            slots.iter().any(|s| {
                s["cached_tokens"].as_f64().unwrap() >= prompt_tokens && s["busy"] == json!(false)
            })
        }),
        "{slots:?}"
    );
    assert_eq!(slots.len(), 2);
    assert!(slots.iter().all(|s| s["n_ctx"].as_u64().unwrap() > 0));
    assert_eq!(slots[1]["id"], 1);
}

#[test]
fn metrics_are_absent_without_the_flag() {
    let server = Server::start("small-mqa-int8.bin", &["--parallel", "1"]);
    assert_eq!(get_text(&server.url("/metrics")).0, 404);
}

#[test]
fn health_says_loading_until_the_model_is_ready() {
    let server = Server::start_loading(
        &model("small-mqa-int8.bin"),
        &["--parallel", "1"],
        &[("TORCHLESS_SERVE_LOAD_DELAY_MS", "1500")],
    );
    let (status, body) = get(&server.url("/health"));
    assert_eq!((status, body), (503, json!({"status": "loading model"})));
    let (status, retry, body) = post(&server.url("/v1/completions"), &good_owned(), None);
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loading"),
        "{body}"
    );
    assert!(wait_until(Duration::from_secs(60), || get(
        &server.url("/health")
    )
    .0 == 200));
    let (_, body) = get(&server.url("/health"));
    assert_eq!(body["status"], "ok");
    post_ok(
        &server.url("/v1/completions"),
        json!({"prompt": "Hello", "max_tokens": 2}),
    );
}

#[test]
fn response_format_constrains_both_endpoints_and_a_bad_schema_is_a_400() {
    let server = Server::start_path(&model("llama-tied-f32.gguf"), &["--parallel", "2"]);
    let schema = json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green"]},
            "n": {"type": "integer", "minimum": 1, "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-c]{1,3}$"}, "maxItems": 3},
        },
        "required": ["color", "n", "tags"],
        "additionalProperties": false,
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": true}});
    let check = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(matches!(v["color"].as_str(), Some("red" | "green")), "{v}");
        assert!((1..=9).contains(&v["n"].as_u64().unwrap()), "{v}");
        assert!(v["tags"].as_array().unwrap().len() <= 3, "{v}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    };
    for seed in 0..3 {
        let c = post_ok(
            &server.url("/v1/completions"),
            json!({"prompt": "JSON:", "max_tokens": 200, "temperature": 1, "seed": seed, "response_format": format}),
        );
        check(c["choices"][0]["text"].as_str().unwrap());
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        let c = post_ok(
            &server.url("/v1/chat/completions"),
            json!({"messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 200, "temperature": 1, "seed": seed, "response_format": format}),
        );
        check(c["choices"][0]["message"]["content"].as_str().unwrap());
        for path in ["/v1/completions", "/v1/chat/completions"] {
            let body = json!({"prompt": "JSON:", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "temperature": 1, "seed": seed, "stream": true, "response_format": format});
            let (text, finish, _) = stream_text(&post_stream(&server.url(path), body));
            check(&text);
            assert_eq!(finish, "stop");
        }
    }
    // json_object: any object (a greedy-ish random model finishes one quickly enough).
    let c = post_ok(
        &server.url("/v1/completions"),
        json!({"prompt": "{", "max_tokens": 300, "temperature": 0, "response_format": {"type": "json_object"}}),
    );
    let text = c["choices"][0]["text"].as_str().unwrap();
    if c["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
    } else {
        assert!(text.starts_with('{'), "{text:?}");
    }

    // Schemas that cannot compile, and malformed formats: a 400 in OpenAI's shape naming the
    // problem, and the server keeps serving.
    let bad = [
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(unclosed"}}}),
            "invalid JSON schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
            "nonsense",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}),
            "must be an object",
        ),
        (json!({"type": "json_schema"}), "json_schema"),
        (json!({"type": "yaml"}), "yaml"),
        (json!("json"), "must be an object"),
    ];
    for (format, needle) in bad {
        for path in ["/v1/completions", "/v1/chat/completions"] {
            let body = json!({"prompt": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "response_format": format});
            let (status, _, value) = post(&server.url(path), &body.to_string(), None);
            assert_eq!(status, 400, "{format}: {value}");
            let e = &value["error"];
            assert_eq!(e["type"], "invalid_request_error", "{value}");
            assert_eq!(e["param"], "response_format", "{value}");
            assert!(e["message"].as_str().unwrap().contains(needle), "{value}");
        }
    }
    let c = post_ok(
        &server.url("/v1/completions"),
        json!({"prompt": "x", "max_tokens": 3, "temperature": 0, "response_format": {"type": "text"}}),
    );
    assert_eq!(c["usage"]["completion_tokens"], 3);
}
