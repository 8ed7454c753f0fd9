//! Continuous batching: many generation requests served by a few sessions (slots) over one
//! shared model.
//!
//! Each [`turn`](Scheduler::turn) frees the slots whose reader went away, gives free slots to
//! waiting requests, prefills at most one chunk (the session's `batch_size` tokens, or
//! [`SHARED_PREFILL_CHUNK`] while other slots are generating where
//! [`Session::chunk_invariant_from`] allows) of one prompt, then runs one
//! decode step for every slot that is generating, as a single forward pass
//! ([`Session::step_batch`]: the weights are read once per step for all slots). A long prompt
//! therefore delays running streams by one chunk at a time, and batching never changes a
//! result: each request gets exactly the tokens, text and log-probabilities that
//! [`Session::generate`] gives it alone with the same options.
//!
//! A slot keeps its KV cache when its request ends (the prompt cache): a new request goes to
//! the free slot whose cached prompt shares the longest prefix with its own and prefills only
//! the rest. Only positions computed as a fresh prefill would compute them are reused
//! ([`Session::chunk_invariant_from`]), so a cached prefix changes no result either (see
//! [`Request::cache_prompt`]).
//!
//! [`Scheduler`] is the loop's state, driven by its owner one turn at a time;
//! [`SchedulerHandle::spawn`] runs it on a thread of its own and lets any thread submit requests.
//! Results arrive as [`Event`]s through each request's [`EventSink`] (a
//! [`std::sync::mpsc::Sender`], or the caller's own type).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{ModelError, Result};
use crate::generate::GenerateOptions;
use crate::model::{Model, Residency, Resident};
use crate::session::{Session, SessionOptions};
pub use crate::token_step::FinishReason;
use crate::token_step::{GeneratedToken, TokenStep};

/// How many slots, how long a queue, and the sessions' options.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Requests generated at the same time, each in its own session (default 4).
    pub slots: usize,
    /// Requests that may wait for a slot; more are refused with [`SubmitError::QueueFull`]
    /// (default 64).
    pub queue_limit: usize,
    /// Options of every slot's session; `batch_size` is also the prompt chunk run per turn.
    pub session: SessionOptions,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            slots: 4,
            queue_limit: 64,
            session: SessionOptions::default(),
        }
    }
}

/// One generation request: a prompt, how to generate, and where the events go.
#[derive(Debug)]
pub struct Request<S = mpsc::Sender<Event>> {
    /// Prompt token ids (with BOS if the model wants one).
    pub prompt: Vec<u32>,
    /// Sampling, limits, stop tokens and log-probabilities, as for [`Session::generate`].
    pub options: GenerateOptions,
    /// Texts that end the generation; the text is cut where the first one starts, and text
    /// that could be the beginning of one is sent only once it cannot.
    pub stop_texts: Vec<String>,
    /// Reuse a free slot's cached prefix of this prompt (default `true`, as llama-server's
    /// `cache_prompt`); `false` prefills the whole prompt. Either way the result is the same:
    /// what is reused is the whole `batch_size` chunks of an earlier prompt that a fresh prefill
    /// of this one would compute from the same tokens, so the arithmetic is identical; the
    /// last prompt token is always run, for fresh logits.
    pub cache_prompt: bool,
    /// Where this request's events go.
    pub events: S,
}

impl<S> Request<S> {
    /// A request without stop texts, using the prompt cache.
    pub fn new(prompt: Vec<u32>, options: GenerateOptions, events: S) -> Self {
        Self {
            prompt,
            options,
            stop_texts: Vec::new(),
            cache_prompt: true,
            events,
        }
    }
}

/// What a request's sink receives: its tokens as they are generated, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text that became final with it (the last token's text includes
    /// everything left).
    Token(GeneratedToken),
    /// The generation ended; no more events follow.
    Done(Finish),
    /// The request could not run or was cut short; no more events follow.
    Failed(Failure),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the slot's cache instead of being prefilled (OpenAI's
    /// `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
    /// Tokens generated (a stop token included).
    pub completion_tokens: usize,
    /// From the request's submission to its first token.
    pub time_to_first_token: Duration,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// [`Scheduler::shutdown`] ended it.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    /// The model refused it or failed (an empty or too long prompt, a bad sampling option, …).
    #[error("{0}")]
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every slot is busy and `queue_limit` requests are already waiting.
    #[error("every slot is busy and the queue is full")]
    QueueFull,
    /// The scheduler is shutting down (or its thread has ended).
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

/// Where a request's events go.
pub trait EventSink {
    /// Delivers `event`; returns `false` when nobody will read it any more, which cancels the
    /// request (its slot is freed).
    fn send(&mut self, event: Event) -> bool;

    /// Whether the reader has gone. Checked every turn, so a request whose reader left frees
    /// its slot even while its prompt is being processed; without it (the default `false`) a
    /// request is cancelled at its next event.
    fn is_closed(&self) -> bool {
        false
    }
}

/// A std channel: a dropped receiver cancels the request at its next event.
impl EventSink for mpsc::Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

/// Counts since the scheduler was made (returned, never printed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Turns run.
    pub turns: u64,
    /// Prompt chunks prefilled.
    pub prefill_chunks: u64,
    /// Prompt tokens prefilled (cached ones not included).
    pub prompt_tokens: u64,
    /// Requests that reused a cached prompt prefix.
    pub prompt_cache_hits: u64,
    /// Prompt tokens reused from the cache instead of prefilled.
    pub cached_prompt_tokens: u64,
    /// Batched forward passes of decode steps run (several per turn when more slots decode
    /// than one pass takes).
    pub decode_steps: u64,
    /// Tokens generated, over all requests.
    pub tokens_generated: u64,
    /// Requests that ended with [`Event::Done`].
    pub completed: u64,
    /// Requests whose reader went away.
    pub cancelled: u64,
    /// Requests that ended with [`Event::Failed`].
    pub failed: u64,
}

/// What one turn did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// Prompt tokens prefilled (one chunk of one prompt at most).
    pub prompt_tokens: usize,
    /// Requests that got a token from this turn's decode step.
    pub decoded: usize,
}

/// Requests waiting and slots busy, shared with a [`SchedulerHandle`] on other threads.
#[derive(Debug, Default)]
struct Load {
    waiting: AtomicUsize,
    busy: AtomicUsize,
    generated: AtomicU64,
    /// The counts and slots as of the scheduler thread's last turn (for `/metrics`, `/slots`).
    snapshot: Mutex<(SchedulerStats, Vec<SlotState>)>,
}

/// Most prompt tokens prefilled in a turn while other slots are generating, when the sessions'
/// kernels make the chunk size irrelevant to results ([`Session::chunk_invariant_from`]): a
/// long prompt then stalls running streams a quarter as long as a default 256-token batch,
/// and a prompt with no stream running still takes whole batches.
pub const SHARED_PREFILL_CHUNK: usize = 64;

/// Fewest reusable prompt tokens that steer a request to a slot (see `Scheduler::best_slot`).
const MIN_STEERING_PREFIX: usize = 64;

/// One slot, as [`Scheduler::slot_states`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotState {
    /// The slot's index.
    pub id: usize,
    /// Whether it serves a request.
    pub busy: bool,
    /// Tokens its KV cache holds (the last request's prompt and answer when idle).
    pub cached_tokens: usize,
    /// How many of those a following request with the same beginning can reuse.
    pub reusable_tokens: usize,
    /// The slot's context length.
    pub context_len: usize,
}

impl Load {
    /// Counts one more waiting request, unless `queue_limit` are already waiting beyond the
    /// free slots: a request that will find a free slot at once does not count against the
    /// queue.
    fn reserve(&self, slots: usize, queue_limit: usize) -> std::result::Result<(), SubmitError> {
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let free = slots.saturating_sub(self.busy.load(Ordering::Acquire));
        if waiting >= queue_limit + free {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull);
        }
        Ok(())
    }
}

/// A request with the time it was submitted.
#[derive(Debug)]
struct Queued<S> {
    request: Request<S>,
    submitted: Instant,
}

/// A request being served by a slot.
struct Active<'m, S> {
    request: Request<S>,
    submitted: Instant,
    step: TokenStep<'m>,
    /// Prompt tokens run so far (the cached ones included).
    prefilled: usize,
    /// Prompt tokens reused from the slot's cache.
    cached: usize,
    /// The token picked last, to be run by the next decode step (`None` while prefilling).
    next_token: Option<u32>,
    time_to_first_token: Duration,
}

struct Slot<'m, R: Residency, S> {
    session: Session<'m, R>,
    active: Option<Active<'m, S>>,
    /// How many of the session's first tokens a following prompt can reuse: computed exactly
    /// as a fresh prefill of any prompt beginning with them computes them. With
    /// [`Session::chunk_invariant_from`], every position prefilled in a chunk of at least that
    /// many tokens; otherwise those prefilled by whole chunks starting at multiples of the batch
    /// size. Positions computed by decode steps (one-token matvecs and the decode attention
    /// loop, whose rounding differs) are never reused.
    reusable: usize,
    /// When the slot was last given a request or freed ([`Books::tick`]), for least recently
    /// used among equally good slots.
    last_used: u64,
}

/// The counters every slot operation updates.
#[derive(Debug)]
struct Books {
    load: Arc<Load>,
    stats: SchedulerStats,
    clock: u64,
}

impl Books {
    fn release_slot(&mut self) {
        self.load.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// A new time stamp for [`Slot::last_used`].
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// Continuous batching over one model: slots, a bounded queue, chunked prefill and one batched
/// decode step per [`turn`](Self::turn). See the [module documentation](self).
pub struct Scheduler<'m, R: Residency = Resident, S: EventSink = mpsc::Sender<Event>> {
    model: &'m Model<R>,
    slots: Vec<Slot<'m, R, S>>,
    queue: VecDeque<Queued<S>>,
    queue_limit: usize,
    next_prefill: usize,
    books: Books,
}

impl<R: Residency, S: EventSink> std::fmt::Debug for Scheduler<'_, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("slots", &self.slots.len())
            .field("busy", &self.busy())
            .field("waiting", &self.waiting())
            .field("stats", &self.books.stats)
            .finish()
    }
}

impl<'m, R: Residency, S: EventSink> Scheduler<'m, R, S> {
    /// Makes `options.slots` sessions on `model`; fails if the options are invalid (no slot, a
    /// context the model cannot hold, …).
    pub fn new(model: &'m Model<R>, options: SchedulerOptions) -> Result<Self> {
        if options.slots == 0 {
            return Err(ModelError::InvalidOption {
                option: "slots".into(),
                message: "a scheduler needs at least one slot".into(),
            });
        }
        let slots = (0..options.slots)
            .map(|_| {
                Ok(Slot {
                    session: model.session_with(options.session.clone())?,
                    active: None,
                    reusable: 0,
                    last_used: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            model,
            slots,
            queue: VecDeque::new(),
            queue_limit: options.queue_limit,
            next_prefill: 0,
            books: Books {
                load: Arc::default(),
                stats: SchedulerStats::default(),
                clock: 0,
            },
        })
    }

    /// Queues `request`, unless every slot is busy and `queue_limit` requests already wait. It
    /// starts at a following turn.
    pub fn submit(&mut self, request: Request<S>) -> std::result::Result<(), SubmitError> {
        self.books
            .load
            .reserve(self.slots.len(), self.queue_limit)?;
        self.queue.push_back(Queued {
            request,
            submitted: Instant::now(),
        });
        Ok(())
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Slots serving a request.
    pub fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.active.is_some()).count()
    }

    /// Whether there is nothing to do: no request waiting or running.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.active.is_none())
    }

    /// The counts so far.
    pub fn stats(&self) -> SchedulerStats {
        self.books.stats
    }

    /// Each slot's use and cache.
    pub fn slot_states(&self) -> Vec<SlotState> {
        self.slots
            .iter()
            .enumerate()
            .map(|(id, slot)| SlotState {
                id,
                busy: slot.active.is_some(),
                cached_tokens: slot.session.position(),
                reusable_tokens: slot.reusable.min(slot.session.position()),
                context_len: slot.session.context_len(),
            })
            .collect()
    }

    /// Shares the counts and slots with the handles.
    fn publish(&self) {
        let mut snapshot = self
            .books
            .load
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *snapshot = (self.stats(), self.slot_states());
    }

    /// One turn: free the slots whose reader went away, give free slots to waiting requests,
    /// prefill one chunk of one prompt (round robin), then one batched decode step for every
    /// generating slot, sending each its token. Errors go to the requests they concern.
    pub fn turn(&mut self) -> Turn {
        self.books.stats.turns += 1;
        self.drop_cancelled();
        self.admit();
        let prompt_tokens = self.prefill_one_chunk();
        let decoded = self.decode_step();
        Turn {
            prompt_tokens,
            decoded,
        }
    }

    /// Runs turns until every request has ended; returns the counts.
    pub fn run_until_idle(&mut self) -> SchedulerStats {
        while !self.is_idle() {
            self.turn();
        }
        self.stats()
    }

    /// Ends every waiting and running request with [`Failure::ShuttingDown`].
    pub fn shutdown(&mut self) {
        for queued in self.queue.drain(..) {
            let mut events = queued.request.events;
            events.send(Event::Failed(Failure::ShuttingDown));
            self.books.load.waiting.fetch_sub(1, Ordering::AcqRel);
            self.books.stats.failed += 1;
        }
        for slot in &mut self.slots {
            slot.fail(&mut self.books, Failure::ShuttingDown);
        }
    }

    fn drop_cancelled(&mut self) {
        for slot in &mut self.slots {
            if slot
                .active
                .as_ref()
                .is_some_and(|a| a.request.events.is_closed())
            {
                slot.release(&mut self.books);
                self.books.stats.cancelled += 1;
            }
        }
    }

    /// Gives free slots to waiting requests, in order of arrival, each to the free slot that
    /// holds the longest usable prefix of its prompt.
    fn admit(&mut self) {
        let tokenizer = self.model.tokenizer();
        while self.slots.iter().any(|s| s.active.is_none()) {
            let Some(Queued {
                mut request,
                submitted,
            }) = self.queue.pop_front()
            else {
                break;
            };
            let books = &mut self.books;
            books.load.waiting.fetch_sub(1, Ordering::AcqRel);
            if request.events.is_closed() {
                books.stats.cancelled += 1;
                continue;
            }
            let stop_texts = std::mem::take(&mut request.stop_texts);
            let rules = request.options.step_rules(tokenizer, stop_texts);
            let step = match TokenStep::new(tokenizer, request.options.sampling.clone(), rules) {
                Ok(step) => step,
                Err(e) => {
                    request
                        .events
                        .send(Event::Failed(Failure::Error(e.to_string())));
                    books.stats.failed += 1;
                    continue;
                }
            };
            if let Some(reason) = step.done_before_start() {
                request.events.send(Event::Done(Finish {
                    reason,
                    prompt_tokens: request.prompt.len(),
                    cached_tokens: 0,
                    completion_tokens: 0,
                    time_to_first_token: Duration::ZERO,
                }));
                books.stats.completed += 1;
                continue;
            }
            let Some(i) = self.best_slot(&request) else {
                break;
            };
            self.slots[i].start(&mut self.books, request, submitted, step);
        }
    }

    /// The free slot to serve `request`: the one with the most prompt tokens it can reuse, the
    /// least recently used among equals. A prefix shorter than [`MIN_STEERING_PREFIX`] tokens
    /// (or the batch size, if smaller), such as a shared BOS or a short system prompt, does not
    /// count: it would send every request to the same slot and evict the others.
    fn best_slot(&self, request: &Request<S>) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .max_by_key(|(_, s)| {
                let usable = match request.cache_prompt {
                    true => s.cached_prefix(&request.prompt),
                    false => 0,
                };
                let steering = MIN_STEERING_PREFIX.min(s.session.batch_size());
                let usable = if usable >= steering { usable } else { 0 };
                (usable, std::cmp::Reverse(s.last_used))
            })
            .map(|(i, _)| i)
    }

    /// Prefills one chunk of the next prompt in round-robin order; returns its length.
    fn prefill_one_chunk(&mut self) -> usize {
        let n = self.slots.len();
        let prefilling =
            |slot: &Slot<'m, R, S>| slot.active.as_ref().is_some_and(|a| a.next_token.is_none());
        let Some(i) = (0..n)
            .map(|k| (self.next_prefill + k) % n)
            .find(|&i| prefilling(&self.slots[i]))
        else {
            return 0;
        };
        self.next_prefill = (i + 1) % n;
        let decoding = self
            .slots
            .iter()
            .any(|s| s.active.as_ref().is_some_and(|a| a.next_token.is_some()));
        let limit = match decoding {
            true => SHARED_PREFILL_CHUNK,
            false => usize::MAX,
        };
        self.slots[i].prefill_chunk(&mut self.books, limit)
    }

    /// One decode step for every slot with a token to run; returns how many stepped. More slots
    /// than one forward pass takes (the sessions' `batch_size`) step in several passes.
    fn decode_step(&mut self) -> usize {
        let mut stepping: Vec<&mut Slot<'m, R, S>> = self
            .slots
            .iter_mut()
            .filter(|s| s.active.as_ref().is_some_and(|a| a.next_token.is_some()))
            .collect();
        let Some(first) = stepping.first() else {
            return 0;
        };
        let per_pass = first.session.batch_size().max(1);
        for group in stepping.chunks_mut(per_pass) {
            let tokens: Vec<u32> = group
                .iter()
                .map(|s| s.active.as_ref().and_then(|a| a.next_token).unwrap_or(0))
                .collect();
            let result = {
                let mut sessions: Vec<&mut Session<'m, R>> =
                    group.iter_mut().map(|s| &mut s.session).collect();
                Session::step_batch(&mut sessions, &tokens)
            };
            if result.is_ok() {
                self.books.stats.decode_steps += 1;
            }
            for slot in group.iter_mut() {
                match &result {
                    Ok(()) => slot.after_logits(&mut self.books),
                    Err(e) => slot.fail(&mut self.books, Failure::Error(e.to_string())),
                }
            }
        }
        stepping.len()
    }
}

impl<'m, R: Residency, S: EventSink> Slot<'m, R, S> {
    /// How many of `prompt`'s first tokens this slot can reuse.
    ///
    /// At least one prompt token always runs, so the logits of the first generated token are
    /// computed as in a fresh prefill. With chunk-invariant kernels the rest of the prompt is
    /// left at least that chunk length long; otherwise the reused part is a whole number of
    /// prefill chunks.
    fn cached_prefix(&self, prompt: &[u32]) -> usize {
        let held = self.session.tokens();
        let common = held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let reusable = self.reusable.min(self.session.position()).min(held.len());
        let usable = common.min(reusable);
        match self.session.chunk_invariant_from() {
            Some(min) => usable.min(prompt.len().saturating_sub(min.max(1))),
            None => {
                let chunk = self.session.batch_size().max(1);
                usable.min(prompt.len().saturating_sub(1)) / chunk * chunk
            }
        }
    }

    /// Takes `request`, keeping the cached prefix it can reuse (none if it asks so).
    fn start(
        &mut self,
        books: &mut Books,
        request: Request<S>,
        submitted: Instant,
        step: TokenStep<'m>,
    ) {
        let mut cached = match request.cache_prompt {
            true => self.cached_prefix(&request.prompt),
            false => 0,
        };
        // The rolling cache of a sliding-window model may have overwritten what the positions
        // after the prefix attend to: then start afresh.
        if cached == 0 || self.session.rewind(cached).is_err() {
            self.session.reset();
            cached = 0;
        }
        self.reusable = cached;
        if cached > 0 {
            books.stats.prompt_cache_hits += 1;
            books.stats.cached_prompt_tokens += cached as u64;
        }
        self.active = Some(Active {
            request,
            submitted,
            step,
            prefilled: cached,
            cached,
            next_token: None,
            time_to_first_token: Duration::ZERO,
        });
        self.last_used = books.tick();
        books.load.busy.fetch_add(1, Ordering::AcqRel);
    }

    /// Frees the slot; its session keeps its tokens for the prompt cache.
    fn release(&mut self, books: &mut Books) {
        self.active = None;
        self.last_used = books.tick();
        books.release_slot();
    }

    /// Prefills the next chunk of the slot's prompt, of at most `limit` tokens where the
    /// session allows (see [`Session::next_chunk_len_at_most`]).
    fn prefill_chunk(&mut self, books: &mut Books, limit: usize) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let prompt = &active.request.prompt;
        let chunk = self
            .session
            .next_chunk_len_at_most(prompt.len() - active.prefilled, limit);
        let end = active.prefilled + chunk;
        let reusable_chunk = match self.session.chunk_invariant_from() {
            Some(min) => chunk >= min,
            None => chunk == self.session.batch_size(),
        };
        match self.session.prefill(&prompt[active.prefilled..end]) {
            Ok(_) => {
                if reusable_chunk && self.reusable == active.prefilled {
                    self.reusable = end;
                }
                active.prefilled = end;
                books.stats.prefill_chunks += 1;
                books.stats.prompt_tokens += chunk as u64;
                if end == prompt.len() {
                    self.after_logits(books);
                }
            }
            Err(e) => self.fail(books, Failure::Error(e.to_string())),
        }
        chunk
    }

    fn fail(&mut self, books: &mut Books, failure: Failure) {
        if let Some(active) = self.active.as_mut() {
            active.request.events.send(Event::Failed(failure));
            self.release(books);
            books.stats.failed += 1;
        }
    }

    /// The session holds fresh logits for its request: pick the token, send it, and decide
    /// whether the request goes on.
    fn after_logits(&mut self, books: &mut Books) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let picked = match active.step.next(&self.session) {
            Ok(picked) => picked,
            Err(e) => return self.fail(books, Failure::Error(e.to_string())),
        };
        if active.step.generated() == 1 {
            active.time_to_first_token = active.submitted.elapsed();
        }
        books.load.generated.fetch_add(1, Ordering::Relaxed);
        books.stats.tokens_generated += 1;
        let mut token = picked.token;
        let id = token.id;
        if picked.finish.is_some() {
            token.text.push_str(&active.step.finish_text());
        }
        let sent = active.request.events.send(Event::Token(token));
        match picked.finish {
            Some(reason) => {
                let done = Finish {
                    reason,
                    prompt_tokens: active.request.prompt.len(),
                    cached_tokens: active.cached,
                    completion_tokens: active.step.generated(),
                    time_to_first_token: active.time_to_first_token,
                };
                active.request.events.send(Event::Done(done));
                self.release(books);
                books.stats.completed += 1;
            }
            None if !sent => {
                self.release(books);
                books.stats.cancelled += 1;
            }
            None => active.next_token = Some(id),
        }
    }
}

enum Message<S> {
    Request(Box<Queued<S>>),
    Shutdown,
}

/// Why [`SchedulerHandle::spawn`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The scheduler could not be made (see [`Scheduler::new`]).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The operating system refused the thread.
    #[error("cannot start the scheduler thread: {0}")]
    Thread(std::io::Error),
}

/// A [`Scheduler`] running on its own thread, reachable from any thread (share it in an
/// `Arc`): submit requests, read the load, shut it down.
pub struct SchedulerHandle<S: EventSink = mpsc::Sender<Event>> {
    sender: Mutex<Option<mpsc::Sender<Message<S>>>>,
    load: Arc<Load>,
    slots: usize,
    queue_limit: usize,
    shutting_down: AtomicBool,
}

impl<S: EventSink> std::fmt::Debug for SchedulerHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle")
            .field("slots", &self.slots)
            .field("queue_limit", &self.queue_limit)
            .field("load", &self.load)
            .finish()
    }
}

impl<S: EventSink + Send + 'static> SchedulerHandle<S> {
    /// Makes a [`Scheduler`] on `model` and runs it on a new thread until
    /// [`shutdown`](Self::shutdown) (or until every handle is dropped); the thread returns the
    /// counts. The thread waits while there is nothing to do. Fails if the options are invalid.
    pub fn spawn<R: Residency>(
        model: Arc<Model<R>>,
        options: SchedulerOptions,
    ) -> std::result::Result<(Self, JoinHandle<SchedulerStats>), SpawnError> {
        let (sender, receiver) = mpsc::channel();
        let (ready, made) = mpsc::channel();
        let slots = options.slots;
        let queue_limit = options.queue_limit;
        let thread = std::thread::Builder::new()
            .name("torchless-scheduler".into())
            .spawn(move || match Scheduler::new(&model, options) {
                Ok(scheduler) => {
                    let _ = ready.send(Ok(scheduler.books.load.clone()));
                    scheduler.serve(&receiver)
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    SchedulerStats::default()
                }
            })
            .map_err(SpawnError::Thread)?;
        let load = match made.recv() {
            Ok(Ok(load)) => load,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.into());
            }
            // The thread ended without a word: it panicked while making the sessions.
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => return Err(SpawnError::Thread(std::io::ErrorKind::Other.into())),
            },
        };
        let handle = Self {
            sender: Mutex::new(Some(sender)),
            load,
            slots,
            queue_limit,
            shutting_down: AtomicBool::new(false),
        };
        Ok((handle, thread))
    }
}

impl<S: EventSink> SchedulerHandle<S> {
    /// Queues `request` unless every slot is busy and `queue_limit` requests already wait.
    pub fn submit(&self, request: Request<S>) -> std::result::Result<(), SubmitError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        self.load.reserve(self.slots, self.queue_limit)?;
        let queued = Box::new(Queued {
            request,
            submitted: Instant::now(),
        });
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        match sender.as_ref().map(|s| s.send(Message::Request(queued))) {
            Some(Ok(())) => Ok(()),
            _ => {
                self.load.waiting.fetch_sub(1, Ordering::AcqRel);
                Err(SubmitError::ShuttingDown)
            }
        }
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.load.waiting.load(Ordering::Acquire)
    }

    /// Slots serving a request.
    pub fn busy(&self) -> usize {
        self.load.busy.load(Ordering::Acquire)
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Tokens generated since the start, over all requests.
    pub fn tokens_generated(&self) -> u64 {
        self.load.generated.load(Ordering::Relaxed)
    }

    /// The scheduler's counts as of its last turn.
    pub fn stats(&self) -> SchedulerStats {
        self.snapshot().0
    }

    /// Each slot's use and cache as of the scheduler's last turn.
    pub fn slot_states(&self) -> Vec<SlotState> {
        self.snapshot().1
    }

    fn snapshot(&self) -> (SchedulerStats, Vec<SlotState>) {
        self.load
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends every request (with [`Failure::ShuttingDown`]) and stops the thread; later
    /// submissions are refused.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sender.take() {
            let _ = s.send(Message::Shutdown);
        }
    }
}

impl<R: Residency, S: EventSink> Scheduler<'_, R, S> {
    /// The thread's loop: take what arrived (waiting only when idle), then one turn.
    fn serve(mut self, receiver: &mpsc::Receiver<Message<S>>) -> SchedulerStats {
        self.publish();
        loop {
            let mut shutdown = false;
            if self.is_idle() {
                match receiver.recv() {
                    Ok(Message::Request(queued)) => self.queue.push_back(*queued),
                    Ok(Message::Shutdown) | Err(_) => shutdown = true,
                }
            }
            while let Ok(message) = receiver.try_recv() {
                match message {
                    Message::Request(queued) => self.queue.push_back(*queued),
                    Message::Shutdown => shutdown = true,
                }
            }
            if shutdown {
                self.shutdown();
                self.publish();
                return self.stats();
            }
            self.turn();
            self.publish();
        }
    }
}
