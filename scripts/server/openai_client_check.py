#!/usr/bin/env python3
"""Checks a running `torchless serve` with the official `openai` Python client.

    python3 scripts/server/openai_client_check.py http://127.0.0.1:PORT API_KEY

Every check compares the client's view with the raw HTTP answer of the same request (urllib), so
the client library's parsing is what is being tested; exits non-zero on the first mismatch.
"""
import json
import sys
import urllib.request

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def raw(path, body):
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


models = client.models.list()
check(len(models.data) == 1 and models.data[0].object == "model", f"models.list -> {models.data[0].id}")
name = models.data[0].id

# Completions, plain and streamed, greedy.
body = {"model": name, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}
c = client.completions.create(**body)
want = raw("/v1/completions", body)
check(c.choices[0].text == want["choices"][0]["text"], "completions.create text equals the raw answer")
check(c.usage.completion_tokens == want["usage"]["completion_tokens"] and c.usage.prompt_tokens > 0,
      f"completions usage {c.usage.prompt_tokens}+{c.usage.completion_tokens}")
check(c.choices[0].finish_reason in ("stop", "length"), f"finish_reason {c.choices[0].finish_reason}")
pieces, finish = [], None
for chunk in client.completions.create(**body, stream=True):
    for choice in chunk.choices:
        pieces.append(choice.text)
        finish = choice.finish_reason or finish
check("".join(pieces) == c.choices[0].text and finish == c.choices[0].finish_reason,
      "streamed completion equals the plain one")

# Chat, plain and streamed (with a final usage chunk).
messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
chat = client.chat.completions.create(model=name, messages=messages, max_tokens=20, temperature=0, seed=1)
want = raw("/v1/chat/completions", {"messages": messages, "max_tokens": 20, "temperature": 0, "seed": 1})
check(chat.choices[0].message.role == "assistant", "chat role")
check(chat.choices[0].message.content == want["choices"][0]["message"]["content"], "chat content equals the raw answer")
text, usage = [], None
for chunk in client.chat.completions.create(model=name, messages=messages, max_tokens=20, temperature=0,
                                             seed=1, stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            text.append(choice.delta.content)
check("".join(text) == chat.choices[0].message.content, "streamed chat equals the plain one")
check(usage is not None and usage.total_tokens == chat.usage.total_tokens, "stream usage chunk")

# Log-probabilities in chat format.
lp = client.chat.completions.create(model=name, messages=messages, max_tokens=5, temperature=0,
                                    logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
check(len(content) == lp.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in content),
      "chat logprobs: one entry per token, 3 alternatives each")
check(all(t.logprob >= max(a.logprob for a in t.top_logprobs) - 1e-6 for t in content), "greedy picks the top token")

# The prompt cache across the turns of a conversation: the second turn reports cached tokens
# (a long system prompt, so the first turn fills at least one 64-token prompt chunk: this
# fixture has a sliding window, whose cache is reused by whole `-b 64` chunks only) and
# answers exactly as with `cache_prompt: false`.
system = ("You are a patient assistant who answers questions about animals, plants and the weather "
          "in one or two short sentences, with plain words, and never uses lists or headings; "
          "when you do not know, you say so.")
turn = [{"role": "system", "content": system}, {"role": "user", "content": "What do foxes eat?"}]
first = client.chat.completions.create(model=name, messages=turn, max_tokens=8, temperature=0)
turn += [{"role": "assistant", "content": first.choices[0].message.content},
         {"role": "user", "content": "And owls?"}]
second = client.chat.completions.create(model=name, messages=turn, max_tokens=8, temperature=0,
                                        logprobs=True)
fresh = client.chat.completions.create(model=name, messages=turn, max_tokens=8, temperature=0,
                                       logprobs=True, extra_body={"cache_prompt": False})
cached = second.usage.prompt_tokens_details.cached_tokens
check(first.usage.prompt_tokens >= 64 and first.usage.prompt_tokens_details.cached_tokens == 0,
      f"first turn: {first.usage.prompt_tokens} prompt tokens, none cached")
check(0 < cached < second.usage.prompt_tokens, f"second turn: {cached} of {second.usage.prompt_tokens} cached")
check(fresh.usage.prompt_tokens_details.cached_tokens == 0, "cache_prompt: false caches nothing")
check(second.choices[0].message.content == fresh.choices[0].message.content
      and [t.logprob for t in second.choices[0].logprobs.content]
      == [t.logprob for t in fresh.choices[0].logprobs.content],
      "the cached turn answers as without the cache")

# Errors surface as the client's exception types.
try:
    client.completions.create(model=name, prompt="Hi", max_tokens="ten")
    check(False, "a bad max_tokens is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "max_tokens" in str(e), "BadRequestError for max_tokens='ten'")
bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0)
try:
    bad.models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "AuthenticationError for a wrong key")
print("all openai client checks passed")
