//! The scheduler (continuous batching in the library): requests served together, joining at
//! different turns, one cancelled, generate `transformers`' greedy continuations and exactly
//! what `Session::generate` gives each alone (ids, text, log-probabilities); stop texts, limits,
//! a full queue, shutdown and the threaded handle.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use common::{fixtures, read_goldens};
use torchless_model::scheduler::{Event, Failure, Finish, FinishReason, Request, SubmitError};
use torchless_model::{
    GenerateOptions, GeneratedToken, Generation, Mistral, Model, Residency, SamplingParams,
    Scheduler, SchedulerHandle, SchedulerOptions, SessionOptions,
};

/// Small prompt chunks, so prompts take several turns to prefill.
fn session_options() -> SessionOptions {
    SessionOptions {
        batch_size: 8,
        ..Default::default()
    }
}

fn scheduler_options(slots: usize, queue_limit: usize) -> SchedulerOptions {
    SchedulerOptions {
        slots,
        queue_limit,
        session: session_options(),
    }
}

/// A fixture model: `name.bin`, or `name` itself when it has an extension (a GGUF file).
fn load(name: &str) -> Mistral {
    let file = match name.contains('.') {
        true => name.to_string(),
        false => format!("{name}.bin"),
    };
    Mistral::load(fixtures().join(file)).unwrap()
}

/// What one request received.
#[derive(Debug, Default)]
struct Received {
    tokens: Vec<GeneratedToken>,
    end: Option<Result<Finish, Failure>>,
}

impl Received {
    fn push(&mut self, event: Event) {
        assert!(self.end.is_none(), "an event after the end: {event:?}");
        match event {
            Event::Token(token) => self.tokens.push(token),
            Event::Done(finish) => self.end = Some(Ok(finish)),
            Event::Failed(failure) => self.end = Some(Err(failure)),
        }
    }

    fn drain(&mut self, receiver: &Receiver<Event>) {
        for event in receiver.try_iter() {
            self.push(event);
        }
    }

    fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    fn text(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }

    fn finish(&self) -> Finish {
        match &self.end {
            Some(Ok(finish)) => *finish,
            other => panic!("not done: {other:?}"),
        }
    }
}

/// The reference: the same request generated alone by a session.
fn alone<R: Residency>(model: &Model<R>, prompt: &[u32], options: &GenerateOptions) -> Generation {
    let mut session = model.session_with(session_options()).unwrap();
    session
        .generate(prompt, options.clone(), |_| ControlFlow::Continue(()))
        .unwrap()
}

/// Ids, per-token log-probabilities and the whole text equal the generation alone.
fn assert_same(label: &str, got: &Received, reference: &Generation) {
    assert_eq!(got.ids(), reference.ids, "{label}: ids");
    assert_eq!(got.text(), reference.text, "{label}: text");
    for (t, (a, b)) in got.tokens.iter().zip(&reference.tokens).enumerate() {
        assert_eq!(
            a.logprob.to_bits(),
            b.logprob.to_bits(),
            "{label} token {t}: logprob"
        );
        assert_eq!(a.top_logprobs, b.top_logprobs, "{label} token {t}: top");
    }
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        stop_at_eos: false,
        logprobs: 3,
        ..Default::default()
    }
}

/// Golden prompts submitted at different turns to 3 slots (so later ones wait in the queue),
/// with one more request whose reader goes away after two tokens.
fn check_goldens(model_name: &str, goldens_name: &str) {
    let model = load(model_name);
    let goldens = read_goldens(&fixtures().join(goldens_name));
    let steps = goldens.shortest_greedy();
    let options = greedy(steps);
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(3, 8)).unwrap();
    // Turn at which each golden prompt is submitted.
    let joins = [0, 0, 2, 5, 9];
    let mut receivers: Vec<Option<Receiver<Event>>> = (0..joins.len()).map(|_| None).collect();
    let mut received: Vec<Received> = (0..joins.len()).map(|_| Received::default()).collect();

    let (doomed_events, doomed) = mpsc::channel();
    let mut doomed = Some(doomed);
    let mut doomed_tokens = Vec::new();
    scheduler
        .submit(Request::new(
            goldens.prompts[0].ids.clone(),
            greedy(1000),
            doomed_events,
        ))
        .unwrap();

    let mut turn = 0;
    while turn <= joins[joins.len() - 1] || !scheduler.is_idle() {
        for (i, &join) in joins.iter().enumerate() {
            if join == turn {
                let (events, receiver) = mpsc::channel();
                let prompt = goldens.prompts[i].ids.clone();
                scheduler
                    .submit(Request::new(prompt, options.clone(), events))
                    .unwrap();
                receivers[i] = Some(receiver);
            }
        }
        scheduler.turn();
        turn += 1;
        for (r, receiver) in received.iter_mut().zip(&receivers) {
            if let Some(receiver) = receiver {
                r.drain(receiver);
            }
        }
        if let Some(receiver) = &doomed {
            doomed_tokens.extend(receiver.try_iter());
            if doomed_tokens.len() >= 2 {
                doomed = None;
            }
        }
        assert!(turn < 1000, "{model_name}: the scheduler does not finish");
    }

    for (i, (prompt, got)) in goldens.prompts.iter().zip(&received).enumerate() {
        let label = format!("{model_name} prompt {i}");
        // The independent reference: transformers' greedy continuation of this prompt alone.
        assert_eq!(got.ids(), prompt.greedy.ids[..steps], "{label}: goldens");
        assert_same(&label, got, &alone(&model, &prompt.ids, &options));
        let finish = got.finish();
        assert_eq!(finish.reason, FinishReason::MaxTokens, "{label}");
        assert_eq!(
            (finish.prompt_tokens, finish.completion_tokens),
            (prompt.ids.len(), steps),
            "{label}"
        );
    }
    // The cancelled request got a few of the tokens it asked for, the first ones of its prompt.
    assert!(doomed_tokens.len() < 10, "{}", doomed_tokens.len());
    for (event, id) in doomed_tokens.iter().zip(&goldens.prompts[0].greedy.ids) {
        assert!(matches!(event, Event::Token(t) if t.id == *id), "{event:?}");
    }
    let stats = scheduler.stats();
    assert_eq!((stats.completed, stats.cancelled, stats.failed), (5, 1, 0));
    assert_eq!((scheduler.busy(), scheduler.waiting()), (0, 0));
    let prompt_tokens: usize = goldens.prompts.iter().map(|p| p.ids.len()).sum();
    // Prefilled or reused from the cache (the cancelled request's prompt runs twice).
    assert_eq!(
        (stats.prompt_tokens + stats.cached_prompt_tokens) as usize,
        prompt_tokens + goldens.prompts[0].ids.len()
    );
}

#[test]
fn requests_served_together_generate_the_goldens_and_what_each_generates_alone() {
    for (model, goldens) in [
        ("small-gqa-int8", "small-gqa-goldens-int8.json"),
        ("small-mqa-f32", "small-mqa-goldens-f32.json"),
        ("llama-tied-int8", "llama-tied-goldens-int8.json"),
    ] {
        check_goldens(model, goldens);
    }
}

#[test]
fn seeded_sampling_stop_texts_and_limits_match_generate_alone() {
    let model = load("small-gqa-int8");
    let tokenizer = model.tokenizer();
    let prompt = tokenizer.encode("The capital of France is", tokenizer.prompt_options());
    let sampled = GenerateOptions {
        max_tokens: 40,
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            seed: 7,
            ..Default::default()
        },
        stop_at_eos: false,
        logprobs: 2,
        ..Default::default()
    };
    let reference = alone(&model, &prompt, &sampled);
    assert_eq!(reference.ids.len(), 40);

    // A stop text that starts inside the reference's text, and the token that completes it.
    let start = reference.text.char_indices().nth(12).unwrap().0;
    let stop: String = reference.text[start..].chars().take(3).collect();
    let cut = reference.text.find(&stop).unwrap();
    let mut text = String::new();
    let ending_token = reference
        .tokens
        .iter()
        .position(|t| {
            text.push_str(&t.text);
            text.contains(&stop)
        })
        .unwrap();

    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(2, 4)).unwrap();
    let (events, plain) = mpsc::channel();
    scheduler
        .submit(Request::new(prompt.clone(), sampled.clone(), events))
        .unwrap();
    let (events, stopped) = mpsc::channel();
    let mut with_stop = Request::new(prompt.clone(), sampled.clone(), events);
    with_stop.stop_texts = vec!["never appears \u{1}".into(), stop.clone()];
    scheduler.submit(with_stop).unwrap();
    scheduler.run_until_idle();

    let mut got = Received::default();
    got.drain(&plain);
    assert_same("seeded", &got, &reference);
    assert_eq!(got.finish().reason, FinishReason::MaxTokens);

    let mut got = Received::default();
    got.drain(&stopped);
    assert_eq!(got.text(), reference.text[..cut], "cut at the stop text");
    assert_eq!(got.ids(), reference.ids[..=ending_token]);
    let finish = got.finish();
    assert_eq!(finish.reason, FinishReason::StopText);
    assert_eq!(finish.completion_tokens, ending_token + 1);

    // A full context ends a request as it ends a generation alone.
    let small = SchedulerOptions {
        session: SessionOptions {
            context_len: Some(20),
            ..session_options()
        },
        ..scheduler_options(1, 1)
    };
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, small).unwrap();
    let (events, receiver) = mpsc::channel();
    let long = greedy(100);
    scheduler
        .submit(Request::new(vec![1, 2, 3, 4, 5], long.clone(), events))
        .unwrap();
    scheduler.run_until_idle();
    let mut got = Received::default();
    got.drain(&receiver);
    let mut session = model
        .session_with(SessionOptions {
            context_len: Some(20),
            ..session_options()
        })
        .unwrap();
    let reference = session
        .generate(&[1, 2, 3, 4, 5], long, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_same("context", &got, &reference);
    assert_eq!(got.ids().len(), 16);
    assert_eq!(got.finish().reason, FinishReason::ContextFull);
}

#[test]
fn the_queue_is_bounded_bad_requests_fail_and_shutdown_ends_the_rest() {
    let model = load("small-gqa-f32");
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(1, 1)).unwrap();
    let request = |prompt: Vec<u32>, max_tokens: usize| {
        let (events, receiver) = mpsc::channel();
        (Request::new(prompt, greedy(max_tokens), events), receiver)
    };
    let (a, a_events) = request(vec![1, 5, 9], 50);
    let (b, b_events) = request(vec![1, 7], 50);
    let (c, _) = request(vec![1, 7], 50);
    scheduler.submit(a).unwrap();
    scheduler.submit(b).unwrap();
    assert_eq!(scheduler.submit(c).unwrap_err(), SubmitError::QueueFull);
    scheduler.turn();
    assert_eq!((scheduler.busy(), scheduler.waiting()), (1, 1));
    let (d, _) = request(vec![1, 7], 50);
    assert_eq!(scheduler.submit(d).unwrap_err(), SubmitError::QueueFull);
    scheduler.shutdown();
    assert!(scheduler.is_idle());
    for (name, receiver) in [("running", &a_events), ("waiting", &b_events)] {
        let mut got = Received::default();
        got.drain(receiver);
        assert_eq!(got.end, Some(Err(Failure::ShuttingDown)), "{name}");
    }
    assert_eq!(a_events.try_iter().count(), 0);

    // An empty prompt, a too long one and a bad sampling option fail alone; no token asked
    // for ends at once.
    let max = model.config().max_position_embeddings;
    let (empty, empty_events) = request(Vec::new(), 5);
    let (long, long_events) = request(vec![5; max + 1], 5);
    let (mut bad, bad_events) = request(vec![1, 5], 5);
    bad.options.sampling.top_p = 0.0;
    let (zero, zero_events) = request(vec![1, 5], 0);
    let (good, good_events) = request(vec![1, 5, 9], 4);
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(2, 8)).unwrap();
    for r in [empty, long, bad, zero, good] {
        scheduler.submit(r).unwrap();
    }
    let stats = scheduler.run_until_idle();
    for (name, receiver, needle) in [
        ("empty", &empty_events, "no tokens"),
        ("long", &long_events, "context"),
        ("bad", &bad_events, "top_p"),
    ] {
        let mut got = Received::default();
        got.drain(receiver);
        assert!(
            matches!(&got.end, Some(Err(Failure::Error(m))) if m.contains(needle)),
            "{name}: {got:?}"
        );
    }
    let mut got = Received::default();
    got.drain(&zero_events);
    assert!(got.tokens.is_empty());
    assert_eq!(got.finish().reason, FinishReason::MaxTokens);
    let mut got = Received::default();
    got.drain(&good_events);
    assert_same("good", &got, &alone(&model, &[1, 5, 9], &greedy(4)));
    assert_eq!((stats.completed, stats.failed), (2, 3));

    assert!(Scheduler::<'_, _>::new(&model, scheduler_options(0, 1)).is_err());
}

#[test]
fn a_scheduler_thread_serves_requests_from_other_threads() {
    let model = Arc::new(load("small-mqa-int8"));
    let (handle, thread) = SchedulerHandle::spawn(model.clone(), scheduler_options(2, 8)).unwrap();
    let handle = Arc::new(handle);
    let prompts: Vec<Vec<u32>> = vec![vec![1, 300, 400], vec![1, 42], vec![1, 9, 8, 7, 6]];
    let clients: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let handle = handle.clone();
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let (events, receiver) = mpsc::channel();
                handle
                    .submit(Request::new(prompt, greedy(12), events))
                    .unwrap();
                let mut got = Received::default();
                while got.end.is_none() {
                    got.push(receiver.recv().unwrap());
                }
                got
            })
        })
        .collect();
    let results: Vec<Received> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for (prompt, got) in prompts.iter().zip(&results) {
        assert_same("threaded", got, &alone(&model, prompt, &greedy(12)));
    }
    assert_eq!(handle.tokens_generated(), 36);
    handle.shutdown();
    let (events, _receiver) = mpsc::channel();
    assert_eq!(
        handle
            .submit(Request::new(vec![1], greedy(1), events))
            .unwrap_err(),
        SubmitError::ShuttingDown
    );
    let stats = thread.join().unwrap();
    assert_eq!((stats.completed, stats.tokens_generated), (3, 36));

    // Options the model refuses fail the start.
    let huge = SchedulerOptions {
        session: SessionOptions {
            context_len: Some(1 << 30),
            ..Default::default()
        },
        ..scheduler_options(1, 1)
    };
    let err = SchedulerHandle::<mpsc::Sender<Event>>::spawn(model, huge).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}

/// Submits each golden prompt with `options`; returns their event receivers.
fn submit_each<R: Residency>(
    scheduler: &mut Scheduler<'_, R>,
    prompts: &[common::Prompt],
    options: &GenerateOptions,
) -> Vec<Receiver<Event>> {
    prompts
        .iter()
        .map(|prompt| {
            let (events, receiver) = mpsc::channel();
            scheduler
                .submit(Request::new(prompt.ids.clone(), options.clone(), events))
                .unwrap();
            receiver
        })
        .collect()
}

#[test]
fn more_slots_than_one_pass_takes_step_in_several_passes() {
    // Three slots decoding at once with passes of at most two sequences: every request still
    // generates the goldens and what it generates alone.
    let model = load("small-gqa-int8");
    let goldens = read_goldens(&fixtures().join("small-gqa-goldens-int8.json"));
    let steps = goldens.shortest_greedy();
    let options = greedy(steps);
    let two = SessionOptions {
        batch_size: 2,
        ..Default::default()
    };
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(
        &model,
        SchedulerOptions {
            slots: 3,
            queue_limit: 3,
            session: two.clone(),
        },
    )
    .unwrap();
    let receivers = submit_each(&mut scheduler, &goldens.prompts[..3], &options);
    let stats = scheduler.run_until_idle();
    for (i, (prompt, receiver)) in goldens.prompts.iter().zip(&receivers).enumerate() {
        let mut got = Received::default();
        got.drain(receiver);
        let label = format!("prompt {i}");
        assert_eq!(got.ids(), prompt.greedy.ids[..steps], "{label}: goldens");
        let mut session = model.session_with(two.clone()).unwrap();
        let reference = session
            .generate(&prompt.ids, options.clone(), |_| ControlFlow::Continue(()))
            .unwrap();
        assert_same(&label, &got, &reference);
        assert_eq!(got.finish().reason, FinishReason::MaxTokens, "{label}");
    }
    assert_eq!((stats.completed, stats.failed), (3, 0));
}

// ---------------------------------------------------------------------------------------------
// The prompt cache. The reference for every cached request is the same request with
// `cache_prompt: false` on a fresh scheduler (and `Session::generate` alone): equal bit for bit.

/// Submits `prompt` alone and runs the scheduler until it is done.
fn run_one<R: Residency>(
    scheduler: &mut Scheduler<'_, R>,
    prompt: &[u32],
    options: &GenerateOptions,
    cache_prompt: bool,
) -> Received {
    let (events, receiver) = mpsc::channel();
    let mut request = Request::new(prompt.to_vec(), options.clone(), events);
    request.cache_prompt = cache_prompt;
    scheduler.submit(request).unwrap();
    scheduler.run_until_idle();
    let mut got = Received::default();
    got.drain(&receiver);
    got
}

/// The reference: `prompt` without the cache on a fresh scheduler, which must also be what a
/// session generates alone.
fn fresh<R: Residency>(model: &Model<R>, prompt: &[u32], options: &GenerateOptions) -> Received {
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(model, scheduler_options(1, 1)).unwrap();
    let got = run_one(&mut scheduler, prompt, options, false);
    assert_eq!(got.finish().cached_tokens, 0);
    assert_same("fresh", &got, &alone(model, prompt, options));
    got
}

/// Same tokens, text and log-probabilities as the reference, bit for bit.
fn assert_equal(label: &str, got: &Received, reference: &Received) {
    assert_eq!(got.ids(), reference.ids(), "{label}: ids");
    assert_eq!(got.text(), reference.text(), "{label}: text");
    for (t, (a, b)) in got.tokens.iter().zip(&reference.tokens).enumerate() {
        assert_eq!(a.logprob.to_bits(), b.logprob.to_bits(), "{label} {t}");
        assert_eq!(a.top_logprobs, b.top_logprobs, "{label} {t}: top");
    }
    let (a, b) = (got.finish(), reference.finish());
    assert_eq!(
        (a.reason, a.prompt_tokens, a.completion_tokens),
        (b.reason, b.prompt_tokens, b.completion_tokens),
        "{label}"
    );
}

/// The prompt cache's rule, stated independently of the scheduler: of a slot that last ran
/// `previous`, a request reuses the common prefix and runs at least its last token. With kernels
/// whose rows do not depend on the chunk from `min` tokens on ([`invariant_from`]), any of
/// `previous`, leaving `min` tokens to run; otherwise only whole prefill chunks of `previous`.
fn expected_cached(previous: &[u32], prompt: &[u32], chunk: usize, min: Option<usize>) -> usize {
    let common = previous
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    match min {
        Some(min) if previous.len() >= min => common.min(prompt.len().saturating_sub(min)),
        Some(_) => 0,
        None => {
            let whole_chunks = previous.len() / chunk * chunk;
            common.min(whole_chunks).min(prompt.len() - 1) / chunk * chunk
        }
    }
}

/// The chunk length from which `model`'s prefill rows do not depend on the chunk, as the test
/// sessions see it, checked against what the kernels are documented to promise for the
/// fixture's storage (the tests that use it also check the results bit for bit).
fn invariant_from<R: Residency>(name: &str, model: &Model<R>) -> Option<usize> {
    let min = model
        .session_with(session_options())
        .unwrap()
        .chunk_invariant_from();
    let expected = match name {
        // Row-aligned int8 groups take 17 rows: more than the 8-token batch allows.
        "llama-tied-int8" => None,
        // A sliding window (the cache rolls).
        "small-gqa-int8" => None,
        _ => Some(2),
    };
    assert_eq!(min, expected, "{name}");
    min
}

fn encode<R: Residency>(model: &Model<R>, text: &str) -> Vec<u32> {
    let tokenizer = model.tokenizer();
    tokenizer.encode(text, tokenizer.prompt_options())
}

/// Text to append to a conversation (no BOS).
fn more<R: Residency>(model: &Model<R>, text: &str) -> Vec<u32> {
    let tokenizer = model.tokenizer();
    let mut options = tokenizer.prompt_options();
    options.add_bos = false;
    tokenizer.encode(text, options)
}

#[test]
fn a_conversation_reuses_its_prefix_and_generates_what_it_generates_without() {
    let chunk = session_options().batch_size;
    let seeded = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 40,
            repeat_penalty: 1.1,
            seed: 11,
            ..Default::default()
        },
        stop_at_eos: false,
        logprobs: 2,
        ..Default::default()
    };
    for name in [
        "small-mqa-int8",
        "llama-tied-int8",
        "llama-untied-f32",
        "llama-tied-q8_0.gguf",
        "llama-tied-q4_0.gguf",
    ] {
        let model = load(name);
        let min = invariant_from(name, &model);
        let turn1 = encode(
            &model,
            "The quick brown fox jumps over the lazy dog. Then it",
        );
        let reference1 = fresh(&model, &turn1, &greedy(10));
        for (label, options) in [("greedy", greedy(10)), ("seeded", seeded.clone())] {
            let label = format!("{name} {label}");
            let mut scheduler: Scheduler<'_, _> =
                Scheduler::new(&model, scheduler_options(2, 4)).unwrap();
            let first = run_one(&mut scheduler, &turn1, &greedy(10), true);
            assert_eq!(first.finish().cached_tokens, 0);
            assert_equal(&format!("{label} turn 1"), &first, &reference1);

            // Turn 2: turn 1's prompt, its answer, a new message.
            let mut turn2 = turn1.clone();
            turn2.extend(first.ids());
            turn2.extend(more(&model, " And what did the dog say to that?"));
            let got = run_one(&mut scheduler, &turn2, &options, true);
            let cached = got.finish().cached_tokens;
            assert!(cached > 0, "{label}: nothing cached");
            assert_eq!(
                cached,
                expected_cached(&turn1, &turn2, chunk, min),
                "{label}"
            );
            let reference2 = fresh(&model, &turn2, &options);
            assert_equal(&format!("{label} turn 2"), &got, &reference2);

            // Turn 2's slot now holds turn 2's prompt: asked again, all of it but the last
            // chunk or the last `min` tokens comes from the cache.
            let again = run_one(&mut scheduler, &turn2, &options, true);
            let cached_again = again.finish().cached_tokens;
            assert_eq!(
                cached_again,
                expected_cached(&turn2, &turn2, chunk, min),
                "{label}"
            );
            assert_equal(&format!("{label} again"), &again, &reference2);
            // `cache_prompt: false` prefills everything, with the same result.
            let uncached = run_one(&mut scheduler, &turn2, &options, false);
            assert_eq!(uncached.finish().cached_tokens, 0);
            assert_equal(&format!("{label} uncached"), &uncached, &reference2);

            let stats = scheduler.stats();
            assert_eq!(
                (stats.prompt_cache_hits, stats.cached_prompt_tokens),
                (2, (cached + cached_again) as u64),
                "{label}"
            );
            assert_eq!(
                stats.prompt_tokens + stats.cached_prompt_tokens,
                (turn1.len() + 3 * turn2.len()) as u64,
                "{label}: every prompt token prefilled or cached"
            );
        }
    }
}

#[test]
fn a_whole_prompt_in_the_cache_still_runs_its_last_token() {
    // A prompt of exactly two chunks asked twice: the second time all of it but the last
    // `min` tokens (2 here) is reused and those run, so the first token's logits are computed
    // by a prefill as in a fresh run.
    let model = load("small-mqa-f32");
    let min = invariant_from("small-mqa-f32", &model);
    let chunk = session_options().batch_size;
    let prompt: Vec<u32> = (0..2 * chunk as u32).map(|i| 1 + i * 37 % 1000).collect();
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(1, 1)).unwrap();
    run_one(&mut scheduler, &prompt, &greedy(6), true);
    let got = run_one(&mut scheduler, &prompt, &greedy(6), true);
    assert_eq!(got.finish().cached_tokens, 2 * chunk - 2);
    assert_eq!(
        got.finish().cached_tokens,
        expected_cached(&prompt, &prompt, chunk, min)
    );
    assert_equal("whole", &got, &fresh(&model, &prompt, &greedy(6)));
}

#[test]
fn more_conversations_than_slots_evict_the_least_recently_used() {
    let model = load("llama-tied-int8");
    let min = invariant_from("llama-tied-int8", &model);
    let chunk = session_options().batch_size;
    let users = [
        "Foxes live in forests and fields; tell me what they hunt at night.",
        "Owls sleep during the day, so when do they eat and what?",
        "Why do cats purr when they are happy, and also when hurt?",
    ];
    let opening: Vec<Vec<u32>> = users.iter().map(|u| encode(&model, u)).collect();
    for (i, a) in opening.iter().enumerate() {
        for b in &opening[i + 1..] {
            assert_eq!(
                expected_cached(a, b, chunk, min),
                0,
                "the openings share a chunk"
            );
        }
    }
    // Two slots, three conversations, one turn each in order: the third takes the slot of the
    // first (least recently used).
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(2, 4)).unwrap();
    for (i, prompt) in opening.iter().enumerate() {
        let got = run_one(&mut scheduler, prompt, &greedy(8), true);
        assert_eq!(got.finish().cached_tokens, 0, "opening {i}");
    }
    let second: Vec<Vec<u32>> = opening
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.extend(fresh(&model, &p, &greedy(8)).ids());
            p.extend(more(&model, " Tell me more, please."));
            p
        })
        .collect();
    // Conversation 0's second turn finds nothing of its own and evicts the least recently used
    // slot, conversation 1's; conversation 2 finds its whole first prompt, conversation 1
    // nothing.
    let evicted = run_one(&mut scheduler, &second[0], &greedy(8), true);
    let kept = run_one(&mut scheduler, &second[2], &greedy(8), true);
    let evicted_too = run_one(&mut scheduler, &second[1], &greedy(8), true);
    let expected_kept = expected_cached(&opening[2], &second[2], chunk, min);
    assert!(expected_kept > 0);
    for (got, expected, i) in [
        (&evicted, 0, 0),
        (&kept, expected_kept, 2),
        (&evicted_too, 0, 1),
    ] {
        let label = format!("conversation {i}, turn 2");
        assert_eq!(got.finish().cached_tokens, expected, "{label}");
        assert_equal(&label, got, &fresh(&model, &second[i], &greedy(8)));
    }
    let stats = scheduler.stats();
    assert_eq!(stats.prompt_cache_hits, 1);
}

#[test]
fn a_request_goes_to_the_slot_with_the_longer_prefix() {
    let model = load("small-mqa-int8");
    let min = invariant_from("small-mqa-int8", &model);
    let chunk = session_options().batch_size;
    let base: Vec<u32> = (0..40).map(|i| 1 + (i * 53 + 9) % 1000).collect();
    let diverge = |at: usize| {
        let mut p = base.clone();
        p[at] = 1023 - p[at] % 7;
        p
    };
    // `long` shares 3 chunks and 2 tokens with the query, `short` one chunk and 3 tokens.
    // Without the cache (which would put both in one slot, as they share a prefix), `short`
    // runs first and `long` then takes the other slot, so `short`'s is the least recently used:
    // the query must pick `long`'s anyway.
    let (long, short) = (diverge(3 * chunk + 2), diverge(chunk + 3));
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(2, 4)).unwrap();
    run_one(&mut scheduler, &short, &greedy(4), false);
    run_one(&mut scheduler, &long, &greedy(4), false);
    let got = run_one(&mut scheduler, &base, &greedy(6), true);
    let from_long = expected_cached(&long, &base, chunk, min);
    assert_eq!(from_long, 3 * chunk + 2);
    assert_eq!(got.finish().cached_tokens, from_long);
    assert_equal("longer", &got, &fresh(&model, &base, &greedy(6)));
    // `short`'s slot was left alone: a request closer to it than to `base` reuses its prefix.
    let mut near_short = short.clone();
    near_short[chunk + 5] = 1023 - near_short[chunk + 5] % 5;
    let got = run_one(&mut scheduler, &near_short, &greedy(6), true);
    let from_short = expected_cached(&short, &near_short, chunk, min);
    assert_eq!(from_short, chunk + 5);
    assert_eq!(got.finish().cached_tokens, from_short);
    assert_equal("shorter", &got, &fresh(&model, &near_short, &greedy(6)));
    let stats = scheduler.stats();
    assert_eq!(
        (stats.prompt_cache_hits, stats.cached_prompt_tokens),
        (2, (from_long + from_short) as u64)
    );
}

#[test]
fn a_sliding_window_model_reuses_only_what_its_rolling_cache_still_holds() {
    // Window 12 and chunks of 8: the cache holds 20 positions. After 17 prompt tokens and a
    // 10-token answer (26 positions run), position 5, which position 16 attends to, is
    // overwritten: the next turn starts afresh. After a 1-token answer it is still there.
    let model = load("small-gqa-int8");
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(1, 2)).unwrap();
    let turn1: Vec<u32> = (0..17).map(|i| 1 + (i * 71 + 5) % 1000).collect();
    let first = run_one(&mut scheduler, &turn1, &greedy(10), true);
    let mut turn2 = turn1.clone();
    turn2.extend(first.ids());
    turn2.extend([40, 41, 42]);
    let got = run_one(&mut scheduler, &turn2, &greedy(10), true);
    assert_eq!(got.finish().cached_tokens, 0);
    assert_equal("window turn 2", &got, &fresh(&model, &turn2, &greedy(10)));

    run_one(&mut scheduler, &turn1, &greedy(1), true);
    let again = run_one(&mut scheduler, &turn1, &greedy(5), true);
    assert_eq!(again.finish().cached_tokens, 16);
    assert_equal("window again", &again, &fresh(&model, &turn1, &greedy(5)));
}

/// `slot_states` says which slot holds what: after a request, its slot is free and its cache
/// holds the prompt and every answer token but the last (sampled, never run); the reusable part
/// is the prompt (what prefill computed, not the answer's decode steps). The threaded handle reports the same after its turns.
#[test]
fn slot_states_report_each_slots_cache() {
    let model = load("small-mqa-int8");
    assert_eq!(invariant_from("small-mqa-int8", &model), Some(2));
    let prompt: Vec<u32> = (1..=21).collect();
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(2, 1)).unwrap();
    let before = scheduler.slot_states();
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|s| !s.busy && s.cached_tokens == 0));
    let got = run_one(&mut scheduler, &prompt, &greedy(5), true);
    let finish = got.finish();
    let states = scheduler.slot_states();
    let used: Vec<_> = states.iter().filter(|s| s.cached_tokens > 0).collect();
    assert_eq!(used.len(), 1, "{states:?}");
    assert!(!used[0].busy);
    assert_eq!(
        used[0].cached_tokens,
        finish.prompt_tokens + finish.completion_tokens - 1
    );
    assert_eq!(used[0].reusable_tokens, prompt.len());
    assert_eq!(states[1].id, 1);
    assert!(states
        .iter()
        .all(|s| s.context_len == states[0].context_len && s.context_len > 0));

    let model = Arc::new(model);
    let (handle, thread) = SchedulerHandle::spawn(model, scheduler_options(2, 1)).unwrap();
    let (events, receiver) = mpsc::channel();
    handle
        .submit(Request::new(prompt.clone(), greedy(5), events))
        .unwrap();
    let mut received = Received::default();
    while received.end.is_none() {
        received.push(receiver.recv().unwrap());
    }
    handle.shutdown();
    let stats = thread.join().unwrap();
    // The last snapshot is published when the thread ends.
    assert_eq!(handle.stats(), stats);
    let cached: Vec<usize> = handle
        .slot_states()
        .iter()
        .map(|s| s.cached_tokens)
        .collect();
    assert!(cached.contains(&(prompt.len() + 4)), "{cached:?}");
}

#[test]
fn slots_with_f16_and_q8_0_caches_serve_and_reuse_the_prompt_cache() {
    use torchless_model::KvType;
    let typed = |k: KvType, v: KvType| SessionOptions {
        cache_type_k: k,
        cache_type_v: v,
        ..session_options()
    };
    // Served together: Q8_0 keys and f16 values (small-mha: head_dim 32, a sliding window),
    // each request exactly what a session with the same cache generates alone.
    let model = load("small-mha-int8");
    let goldens = read_goldens(&fixtures().join("small-mha-goldens-int8.json"));
    let session = typed(KvType::Q8_0, KvType::F16);
    let options = greedy(10);
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(
        &model,
        SchedulerOptions {
            slots: 3,
            queue_limit: 3,
            session: session.clone(),
        },
    )
    .unwrap();
    let receivers = submit_each(&mut scheduler, &goldens.prompts[..3], &options);
    scheduler.run_until_idle();
    for (i, (prompt, receiver)) in goldens.prompts.iter().zip(&receivers).enumerate() {
        let mut got = Received::default();
        got.drain(receiver);
        let reference = model
            .session_with(session.clone())
            .unwrap()
            .generate(&prompt.ids, options.clone(), |_| ControlFlow::Continue(()))
            .unwrap();
        assert_same(&format!("q8_0/f16 prompt {i}"), &got, &reference);
    }

    // The prompt cache with f16 keys and values: a second turn reuses the first's prompt and
    // generates what it generates without the cache.
    let model = load("llama-tied-q8_0.gguf");
    let session = typed(KvType::F16, KvType::F16);
    let scheduler_with = |slots| SchedulerOptions {
        slots,
        queue_limit: 2,
        session: session.clone(),
    };
    let turn1 = encode(
        &model,
        "The quick brown fox jumps over the lazy dog. Then it",
    );
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_with(1)).unwrap();
    let first = run_one(&mut scheduler, &turn1, &greedy(10), true);
    let mut turn2 = turn1.clone();
    turn2.extend(first.ids());
    turn2.extend(more(&model, " And what did the dog say to that?"));
    let got = run_one(&mut scheduler, &turn2, &greedy(10), true);
    let chunk = session.batch_size;
    let min = model
        .session_with(session.clone())
        .unwrap()
        .chunk_invariant_from();
    assert_eq!(min, Some(2));
    assert_eq!(
        got.finish().cached_tokens,
        expected_cached(&turn1, &turn2, chunk, min)
    );
    assert!(got.finish().cached_tokens > 0);
    let mut fresh: Scheduler<'_, _> = Scheduler::new(&model, scheduler_with(1)).unwrap();
    let reference = run_one(&mut fresh, &turn2, &greedy(10), false);
    assert_equal("f16 turn 2", &got, &reference);
}

#[test]
fn a_shared_first_token_does_not_steer_a_request_to_a_busy_slot() {
    // Two slots. Conversation A runs, then an unrelated prompt B that shares only A's first
    // token (as prompts share a BOS): B must take the empty slot rather than evict A, whose
    // next turn then finds its whole first prompt.
    let model = load("small-mqa-int8");
    let min = invariant_from("small-mqa-int8", &model);
    let chunk = session_options().batch_size;
    let a: Vec<u32> = (0..30).map(|i| 1 + (i * 41 + 3) % 1000).collect();
    let mut b: Vec<u32> = (0..30).map(|i| 1 + (i * 97 + 11) % 1000).collect();
    b[0] = a[0];
    assert_ne!(a[1], b[1]);
    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, scheduler_options(2, 4)).unwrap();
    let first = run_one(&mut scheduler, &a, &greedy(4), true);
    let other = run_one(&mut scheduler, &b, &greedy(4), true);
    assert_eq!(other.finish().cached_tokens, 0, "B took the empty slot");
    let mut a2 = a.clone();
    a2.extend(first.ids());
    a2.extend([5, 6, 7]);
    let got = run_one(&mut scheduler, &a2, &greedy(4), true);
    assert_eq!(
        got.finish().cached_tokens,
        expected_cached(&a, &a2, chunk, min)
    );
    assert_eq!(got.finish().cached_tokens, a.len());
    assert_equal("A turn 2", &got, &fresh(&model, &a2, &greedy(4)));
}

#[test]
fn a_prompt_arriving_while_others_generate_runs_in_shared_chunks_with_the_same_result() {
    use torchless_model::scheduler::SHARED_PREFILL_CHUNK;
    // Batches of 160: a 150-token prompt alone runs as one chunk; while another slot is
    // generating it runs in chunks of at most SHARED_PREFILL_CHUNK, and still generates
    // exactly what it generates alone.
    let model = load("small-mqa-f32");
    let session = SessionOptions {
        batch_size: 160,
        ..Default::default()
    };
    let options = SchedulerOptions {
        slots: 2,
        queue_limit: 2,
        session: session.clone(),
    };
    let long: Vec<u32> = (0..150).map(|i| 1 + (i * 29 + 4) % 1000).collect();
    let short: Vec<u32> = (0..5).map(|i| 1 + (i * 31 + 8) % 1000).collect();
    let alone_with = |prompt: &[u32], options: &GenerateOptions| {
        let mut session = model.session_with(session.clone()).unwrap();
        session
            .generate(prompt, options.clone(), |_| ControlFlow::Continue(()))
            .unwrap()
    };

    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, options.clone()).unwrap();
    let (events, receiver) = mpsc::channel();
    scheduler
        .submit(Request::new(long.clone(), greedy(4), events))
        .unwrap();
    assert_eq!(scheduler.turn().prompt_tokens, 150, "alone: one chunk");
    scheduler.run_until_idle();
    let mut got = Received::default();
    got.drain(&receiver);
    assert_same("alone", &got, &alone_with(&long, &greedy(4)));

    let mut scheduler: Scheduler<'_, _> = Scheduler::new(&model, options).unwrap();
    let (events_a, receiver_a) = mpsc::channel();
    scheduler
        .submit(Request::new(short.clone(), greedy(40), events_a))
        .unwrap();
    scheduler.turn(); // the short prompt, and its first token
    let (events_b, receiver_b) = mpsc::channel();
    let mut b = Request::new(long.clone(), greedy(4), events_b);
    b.cache_prompt = false;
    scheduler.submit(b).unwrap();
    let mut chunks = Vec::new();
    while chunks.iter().sum::<usize>() < long.len() {
        let turn = scheduler.turn();
        assert!(turn.decoded >= 1, "the first request keeps generating");
        chunks.push(turn.prompt_tokens);
    }
    assert!(
        chunks.iter().all(|&c| c <= SHARED_PREFILL_CHUNK) && chunks.len() == 3,
        "{chunks:?}"
    );
    scheduler.run_until_idle();
    let (mut got_a, mut got_b) = (Received::default(), Received::default());
    got_a.drain(&receiver_a);
    got_b.drain(&receiver_b);
    assert_same("generating", &got_a, &alone_with(&short, &greedy(40)));
    assert_same("shared chunks", &got_b, &alone_with(&long, &greedy(4)));
}
