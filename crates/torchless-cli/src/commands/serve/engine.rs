//! The inference engine behind the server: one thread owning `--parallel` sessions (slots) over
//! one shared model, with continuous batching. Each turn of its loop takes new requests into
//! free slots, prefills at most one chunk of one prompt, then runs one decode step for every
//! slot that is generating, as a single forward pass (`Session::step_batch`: the weights are
//! read once per step for all slots). A prompt therefore never stalls running streams for more
//! than one chunk, and a slot whose client went away is freed at the next turn.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use torchless_model::sampling::{logsumexp, top_logprobs};
use torchless_model::tokenizer::StreamDecoder;
use torchless_model::{Model, Residency, Sampler, SamplingParams, Session, SessionOptions};

/// One generation request, tokenized and validated.
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Texts that end the generation (not included in the output).
    pub stop: Vec<String>,
    /// Ids that end the generation (EOS, a chat template's end of turn); they add no text.
    pub stop_tokens: Vec<u32>,
    /// Top log-probabilities to report per token (`None`: no log-probabilities at all).
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// Text that became final (possibly empty), and the token that produced it if any.
    Text {
        text: String,
        token: Option<TokenInfo>,
    },
    /// The generation ended.
    Done(Finish),
    /// The generation could not run or was cut short (the message says why).
    Failed(String),
}

/// A generated token with its log-probabilities.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: u32,
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop text.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From the request reaching the engine to its first token.
    pub time_to_first_token: Duration,
}

/// What handlers use to reach the engine: a queue bounded by `queue_limit` waiting requests.
#[derive(Debug)]
pub struct EngineHandle {
    sender: std::sync::Mutex<Option<mpsc::Sender<Message>>>,
    waiting: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    queue_limit: usize,
    slots: usize,
    shutting_down: AtomicBool,
    generated: Arc<AtomicU64>,
}

enum Message {
    Job(Box<Job>),
    Shutdown,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

impl EngineHandle {
    /// Queues `job` unless `queue_limit` requests are already waiting for a slot.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        // A request that will find a free slot at once does not count against the queue.
        let free = self.slots.saturating_sub(self.busy.load(Ordering::Acquire));
        if waiting >= self.queue_limit + free {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull);
        }
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        match sender
            .as_ref()
            .map(|s| s.send(Message::Job(Box::new(job))).is_ok())
        {
            Some(true) => Ok(()),
            _ => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                Err(SubmitError::ShuttingDown)
            }
        }
    }

    /// Requests waiting for a slot, and slots generating.
    pub fn load(&self) -> (usize, usize) {
        (
            self.waiting.load(Ordering::Acquire),
            self.busy.load(Ordering::Acquire),
        )
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Tokens generated since the start, over all requests.
    pub fn tokens_generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// Ends every request (they get a `Failed` event) and stops the engine thread.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sender.take() {
            let _ = s.send(Message::Shutdown);
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub slots: usize,
    pub queue_limit: usize,
    pub session: SessionOptions,
}

/// Starts the engine thread on `model`; it runs until [`EngineHandle::shutdown`].
pub fn start<R: Residency>(
    model: Arc<Model<R>>,
    options: EngineOptions,
) -> anyhow::Result<(Arc<EngineHandle>, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = mpsc::channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let generated = Arc::new(AtomicU64::new(0));
    // Sessions are made here so a bad option fails the start, not the first request.
    model.session_with(options.session.clone())?;
    let handle = Arc::new(EngineHandle {
        sender: std::sync::Mutex::new(Some(sender)),
        waiting: waiting.clone(),
        busy: busy.clone(),
        queue_limit: options.queue_limit,
        slots: options.slots,
        shutting_down: AtomicBool::new(false),
        generated: generated.clone(),
    });
    let thread = std::thread::Builder::new()
        .name("torchless-engine".into())
        .spawn(move || {
            let engine = Engine {
                model: &model,
                receiver,
                waiting,
                busy,
                generated,
            };
            engine.run(&options);
        })?;
    Ok((handle, thread))
}

struct Engine<'m, R: Residency> {
    model: &'m Model<R>,
    receiver: mpsc::Receiver<Message>,
    waiting: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    generated: Arc<AtomicU64>,
}

/// A request being served by a slot.
struct Active<'m> {
    job: Job,
    sampler: Sampler,
    decoder: StreamDecoder<'m>,
    /// Prompt tokens run so far.
    prefilled: usize,
    /// The token sampled last, to be run by the next decode step.
    next_token: Option<u32>,
    generated: usize,
    /// Decoded text not yet sent: it might be the start of a stop text.
    held: String,
    time_to_first_token: Duration,
}

struct Slot<'m, R: Residency> {
    session: Session<'m, R>,
    active: Option<Active<'m>>,
}

impl<'m, R: Residency> Engine<'m, R> {
    fn run(self, options: &EngineOptions) {
        let mut slots: Vec<Slot<'m, R>> = Vec::with_capacity(options.slots);
        for _ in 0..options.slots {
            match self.model.session_with(options.session.clone()) {
                Ok(session) => slots.push(Slot {
                    session,
                    active: None,
                }),
                Err(e) => {
                    eprintln!("torchless serve: cannot create a session: {e}");
                    break;
                }
            }
        }
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut next_prefill = 0;
        loop {
            // 1. New requests (block only when there is nothing to do).
            let idle = queue.is_empty() && slots.iter().all(|s| s.active.is_none());
            let mut shutdown = false;
            if idle {
                match self.receiver.recv() {
                    Ok(Message::Job(job)) => queue.push_back(*job),
                    Ok(Message::Shutdown) | Err(_) => shutdown = true,
                }
            }
            while let Ok(message) = self.receiver.try_recv() {
                match message {
                    Message::Job(job) => queue.push_back(*job),
                    Message::Shutdown => shutdown = true,
                }
            }
            if shutdown {
                for job in queue.drain(..) {
                    let _ = job
                        .events
                        .send(Event::Failed("the server is shutting down".into()));
                }
                for slot in &mut slots {
                    if let Some(active) = slot.active.take() {
                        let _ = active
                            .job
                            .events
                            .send(Event::Failed("the server is shutting down".into()));
                    }
                }
                self.busy.store(0, Ordering::Release);
                return;
            }

            // 2. Free the slots whose clients went away; fill free slots from the queue.
            for slot in &mut slots {
                if slot
                    .active
                    .as_ref()
                    .is_some_and(|a| a.job.events.is_closed())
                {
                    slot.active = None;
                    self.busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
            for slot in slots.iter_mut().filter(|s| s.active.is_none()) {
                let Some(job) = queue.pop_front() else { break };
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                if job.events.is_closed() {
                    continue;
                }
                match Sampler::new(job.sampling.clone()) {
                    Ok(sampler) => {
                        slot.session.reset();
                        slot.active = Some(Active {
                            job,
                            sampler,
                            decoder: self.model.tokenizer().stream_decoder(),
                            prefilled: 0,
                            next_token: None,
                            generated: 0,
                            held: String::new(),
                            time_to_first_token: Duration::ZERO,
                        });
                        self.busy.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        let _ = job.events.send(Event::Failed(e.to_string()));
                    }
                }
            }

            // 3. One chunk of one prompt (round robin over the slots still prefilling).
            let n = slots.len();
            if let Some(i) = (0..n).map(|k| (next_prefill + k) % n).find(|&i| {
                slots[i]
                    .active
                    .as_ref()
                    .is_some_and(|a| a.next_token.is_none())
            }) {
                next_prefill = (i + 1) % n;
                self.prefill_chunk(&mut slots[i]);
            }

            // 4. One decode step for every slot with a token to run.
            let mut stepping: Vec<&mut Slot<'m, R>> = slots
                .iter_mut()
                .filter(|s| s.active.as_ref().is_some_and(|a| a.next_token.is_some()))
                .collect();
            if stepping.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = stepping
                .iter()
                .map(|s| s.active.as_ref().and_then(|a| a.next_token).unwrap_or(0))
                .collect();
            let result = {
                let mut sessions: Vec<&mut Session<'m, R>> =
                    stepping.iter_mut().map(|s| &mut s.session).collect();
                Session::step_batch(&mut sessions, &tokens)
            };
            for slot in stepping {
                match &result {
                    Ok(()) => self.after_logits(slot),
                    Err(e) => self.fail(slot, e.to_string()),
                }
            }
        }
    }

    fn prefill_chunk(&self, slot: &mut Slot<'m, R>) {
        let Some(active) = slot.active.as_mut() else {
            return;
        };
        let chunk = slot.session.batch_size();
        let end = (active.prefilled + chunk).min(active.job.prompt.len());
        let result = slot
            .session
            .prefill(&active.job.prompt[active.prefilled..end])
            .map(|_| ());
        match result {
            Ok(()) => {
                active.prefilled = end;
                if end == active.job.prompt.len() {
                    self.after_logits(slot);
                }
            }
            Err(e) => self.fail(slot, e.to_string()),
        }
    }

    fn fail(&self, slot: &mut Slot<'m, R>, message: String) {
        if let Some(active) = slot.active.take() {
            let _ = active.job.events.send(Event::Failed(message));
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The session holds fresh logits for its active request: sample, send text, and decide
    /// whether it goes on.
    fn after_logits(&self, slot: &mut Slot<'m, R>) {
        let Some(active) = slot.active.as_mut() else {
            return;
        };
        let session = &slot.session;
        let raw = session.logits();
        let top = match active.job.logprobs {
            Some(k) if k > 0 => top_logprobs(raw, k),
            _ => Vec::new(),
        };
        let want_logprob = active.job.logprobs.is_some();
        let lse = if want_logprob { logsumexp(raw) } else { 0.0 };
        let mut logits = raw.to_vec();
        let id = match active.sampler.sample(&mut logits, session.tokens()) {
            Ok(id) => id,
            Err(e) => return self.fail(slot, e.to_string()),
        };
        if active.generated == 0 {
            active.time_to_first_token = active.job.received.elapsed();
        }
        active.generated += 1;
        self.generated.fetch_add(1, Ordering::Relaxed);
        let token = want_logprob.then(|| TokenInfo {
            id,
            logprob: f64::from(raw[id as usize]) - lse,
            top,
        });
        let stop_token = active.job.stop_tokens.contains(&id);
        if !stop_token {
            active.decoder.push_to(id, &mut active.held);
        }
        let mut finish = None;
        if let Some(at) = find_stop(&active.held, &active.job.stop) {
            active.held.truncate(at);
            finish = Some(FinishReason::Stop);
        } else {
            if stop_token {
                finish = Some(FinishReason::Stop);
            } else if active.generated >= active.job.max_tokens
                || session.position() + 1 > session.context_len()
            {
                finish = Some(FinishReason::Length);
            }
            if finish.is_some() {
                // An incomplete UTF-8 sequence left at the very end, replaced as the CLI does.
                let fresh = self.model.tokenizer().stream_decoder();
                let decoder = std::mem::replace(&mut active.decoder, fresh);
                active.held.push_str(&decoder.finish());
            }
        }
        let text = match finish {
            Some(_) => std::mem::take(&mut active.held),
            None => {
                let keep = held_back(&active.held, &active.job.stop);
                let cut = active.held.len() - keep;
                let text = active.held[..cut].to_string();
                active.held.drain(..cut);
                text
            }
        };
        let sent = active.job.events.send(Event::Text { text, token }).is_ok();
        match finish {
            Some(reason) => {
                let done = Finish {
                    reason,
                    prompt_tokens: active.job.prompt.len(),
                    completion_tokens: active.generated,
                    time_to_first_token: active.time_to_first_token,
                };
                let _ = active.job.events.send(Event::Done(done));
                slot.active = None;
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
            None if !sent => {
                // The client went away: free the slot now.
                slot.active = None;
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
            None => active.next_token = Some(id),
        }
    }
}

/// Where the first complete stop text starts in `text`, if one occurs.
fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// How many bytes at the end of `text` must wait: the longest tail that is the beginning of a
/// stop text (it may complete with the next tokens). Always a character boundary.
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut keep = 0;
    for s in stop {
        for (i, _) in text.char_indices().rev().take(s.chars().count()) {
            let tail = &text[i..];
            if tail.len() > keep && s.starts_with(tail) && tail.len() < s.len() {
                keep = tail.len();
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_texts_are_found_and_their_beginnings_held_back() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n\ndef", &stop), Some(3));
        assert_eq!(find_stop("abcEN", &stop), None);
        assert_eq!(held_back("abcEN", &stop), 2);
        assert_eq!(held_back("abc\n", &stop), 1);
        assert_eq!(held_back("abc", &stop), 0);
        assert_eq!(held_back("aé", &["é!".to_string()]), "é".len());
        assert_eq!(find_stop("x", &[String::new()]), None);
    }
}
