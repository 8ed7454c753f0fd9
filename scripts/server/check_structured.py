#!/usr/bin/env python3
"""Structured output against a running `torchless serve`, with the official `openai` client and
`jsonschema`: N requests at temperature 1 over 12 schemas (nested objects, arrays, enums,
required fields, numbers, strings with patterns), on both endpoints, streamed and not; every
answer must parse and validate. Reports validity and tokens/s with and without the constraint
(the same prompts without `response_format` and as many tokens as the constrained answer,
interleaved so both see the same machine load).

    python3 scripts/server/check_structured.py http://127.0.0.1:PORT [--requests 200] [--key KEY]
        [--max-tokens 512] [--baseline-every 4] [--bounded-only]

Numbers with decimals have a `multipleOf` (0.5 or 0.25: binary fractions, since `jsonschema`
checks it in floating point and would reject 8.2 as a multiple of 0.01): JSON numbers have no length limit, and at temperature
1 even SmolLM2 sometimes writes decimals until `max_tokens` (llguidance, unlike llama.cpp's own
grammar, does not cap them at 16 digits). `--bounded-only` also leaves out the schemas with
decimals, for a random fixture model (CI). Exits non-zero unless every answer is valid.
"""
import argparse
import json
import sys
import time

import jsonschema
import openai

WORD = {"type": "string", "maxLength": 40}
SCHEMAS = [
    ("person", True, "Describe a person (name and age) in JSON.",
     {"type": "object", "properties": {"name": WORD, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
      "required": ["name", "age"], "additionalProperties": False}),
    ("color", True, "Pick a color. Answer in JSON.",
     {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
      "additionalProperties": False}),
    ("tags", True, "Give tags for a blog post as JSON.",
     {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["tech", "food", "travel", "music"]},
                                                "minItems": 1, "maxItems": 4}},
      "required": ["tags"], "additionalProperties": False}),
    ("point", False, "Give a 2D point as JSON.",
     {"type": "object", "properties": {"point": {"type": "object", "properties": {
         "x": {"type": "number", "minimum": -100, "maximum": 100, "multipleOf": 0.5},
         "y": {"type": "number", "minimum": -100, "maximum": 100, "multipleOf": 0.5}}, "required": ["x", "y"],
         "additionalProperties": False}}, "required": ["point"], "additionalProperties": False}),
    ("address", True, "Give a US zip code and a product code as JSON.",
     {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                       "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"}},
      "required": ["zip", "code"], "additionalProperties": False}),
    ("flag", True, "Is the sky blue? Answer in JSON with a short note.",
     {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": ["string", "null"], "maxLength": 40}},
      "required": ["ok", "note"], "additionalProperties": False}),
    ("digits", True, "List a few small numbers as a JSON array.",
     {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 5}),
    ("user", True, "Describe a user account in JSON.",
     {"type": "object", "properties": {
         "user": {"type": "object", "properties": {
             "id": {"type": "integer", "minimum": 1, "maximum": 100000},
             "name": WORD,
             "roles": {"type": "array", "items": {"enum": ["admin", "dev", "ops"]}, "maxItems": 3}},
             "required": ["id", "name", "roles"], "additionalProperties": False},
         "active": {"type": "boolean"}},
      "required": ["user", "active"], "additionalProperties": False}),
    ("rating", False, "Rate a movie in JSON.",
     {"type": "object", "properties": {"title": WORD, "stars": {"enum": [1, 2, 3, 4, 5]},
                                       "score": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.25}},
      "required": ["title", "stars", "score"], "additionalProperties": False}),
    ("order", True, "Write a shopping order as JSON.",
     {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
         "sku": {"type": "string", "pattern": "^[a-z]{3}[0-9]{3}$"},
         "qty": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["sku", "qty"],
         "additionalProperties": False}, "minItems": 1, "maxItems": 3}},
      "required": ["items"], "additionalProperties": False}),
    ("contact", True, "Give a contact email as JSON.",
     {"type": "object", "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.(com|org)$"},
                                       "priority": {"type": "integer", "minimum": 0, "maximum": 5}},
      "required": ["email"], "additionalProperties": False}),
    ("weather", False, "Report the weather in a city as JSON.",
     {"type": "object", "properties": {"city": WORD, "temperature_c": {"type": "number", "minimum": -50, "maximum": 60, "multipleOf": 0.5},
                                       "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]},
                                       "forecast": {"type": "array", "items": {"type": "object", "properties": {
                                           "day": {"enum": ["mon", "tue", "wed"]},
                                           "high": {"type": "integer", "minimum": -50, "maximum": 60}},
                                           "required": ["day", "high"], "additionalProperties": False},
                                           "maxItems": 3}},
      "required": ["city", "temperature_c", "conditions", "forecast"], "additionalProperties": False}),
]


def run(client, model, prompt, schema, endpoint, stream, max_tokens, seed):
    """One request; (text, finish_reason, completion_tokens, seconds, decode_seconds): the last
    is the time from the first streamed text to the end (None unless streamed), which leaves
    the prompt out."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    if endpoint == "chat":
        extra = {} if schema is None else {"response_format": fmt}
    elif schema is None:
        # The baseline runs as many tokens as the constrained answer had (llama-server's field).
        extra = {"extra_body": {"ignore_eos": True}}
    else:
        # The client's completions call has no `response_format` argument: sent as an extra field.
        extra = {"extra_body": {"response_format": fmt}}
    common = dict(model=model, max_tokens=max_tokens, temperature=1.0, seed=seed, **extra)
    started = time.perf_counter()
    text, finish, tokens, first = "", None, 0, None
    if endpoint == "chat":
        messages = [{"role": "user", "content": prompt}]
        if stream:
            for chunk in client.chat.completions.create(messages=messages, stream=True,
                                                        stream_options={"include_usage": True}, **common):
                for choice in chunk.choices:
                    if choice.delta.content and first is None:
                        first = time.perf_counter()
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
        else:
            r = client.chat.completions.create(messages=messages, **common)
            text, finish, tokens = r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens
    else:
        prompt = f"{prompt}\nAnswer:"
        if stream:
            for chunk in client.completions.create(prompt=prompt, stream=True,
                                                   stream_options={"include_usage": True}, **common):
                for choice in chunk.choices:
                    if choice.text and first is None:
                        first = time.perf_counter()
                    text += choice.text or ""
                    finish = choice.finish_reason or finish
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
        else:
            r = client.completions.create(prompt=prompt, **common)
            text, finish, tokens = r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens
    end = time.perf_counter()
    return text, finish, tokens, end - started, None if first is None else end - first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--key", default="none")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--baseline-every", type=int, default=4,
                    help="one unconstrained request after every N constrained ones (0: none)")
    ap.add_argument("--bounded-only", action="store_true")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base + "/v1", api_key=args.key, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    schemas = [s for s in SCHEMAS if s[1] or not args.bounded_only]
    for _, _, _, schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)

    valid = 0
    failures = []
    lengths = 0
    timing = {True: [0, 0.0], False: [0, 0.0]}  # constrained -> [tokens, seconds]
    paired = {True: [0, 0.0], False: [0, 0.0]}  # requests with a baseline twin only
    decode = {True: [0, 0.0], False: [0, 0.0]}  # streamed pairs: tokens after the first, seconds
    for i in range(args.requests):
        name, _, prompt, schema = schemas[i % len(schemas)]
        endpoint = "chat" if (i // len(schemas)) % 2 == 0 else "completions"
        stream = (i // 2) % 2 == 1
        text, finish, tokens, seconds, decoding = run(client, model, prompt, schema, endpoint, stream,
                                                      args.max_tokens, i)
        timing[True][0] += tokens
        timing[True][1] += seconds
        try:
            jsonschema.validate(json.loads(text), schema)
            valid += 1
        except (json.JSONDecodeError, jsonschema.ValidationError) as e:
            lengths += finish == "length"
            failures.append(f"#{i} {name} {endpoint} stream={stream} finish={finish}: {str(e).splitlines()[0]}: {text!r}")
        if args.baseline_every and i % args.baseline_every == args.baseline_every - 1 and tokens:
            # Same prompt, same number of tokens at most, no response_format.
            _, _, base_tokens, base_seconds, base_decoding = run(client, model, prompt, None, endpoint, stream,
                                                                 tokens, i)
            timing[False][0] += base_tokens
            timing[False][1] += base_seconds
            paired[True][0] += tokens
            paired[True][1] += seconds
            paired[False][0] += base_tokens
            paired[False][1] += base_seconds
            if decoding and base_decoding and tokens > 1 and base_tokens > 1:
                decode[True][0] += tokens - 1
                decode[True][1] += decoding
                decode[False][0] += base_tokens - 1
                decode[False][1] += base_decoding

    print(f"structured output: {valid}/{args.requests} valid over {len(schemas)} schemas "
          f"(chat and completions, streamed and not, temperature 1, max_tokens {args.max_tokens})")
    for f in failures[:10]:
        print("  invalid", f)
    if failures:
        print(f"  ({lengths} of the {len(failures)} invalid ones hit max_tokens)")
    rate = lambda t: f"{t[0] / t[1]:.1f} tokens/s ({t[0]} tokens in {t[1]:.1f} s)" if t[1] else "-"
    print(f"all requests, time including the prompt: with the constraint {rate(timing[True])}, "
          f"without {rate(timing[False])}")
    print(f"paired requests (same prompt and length): with {rate(paired[True])}, without {rate(paired[False])}")
    print(f"streamed pairs, decode only (first text to end): with {rate(decode[True])}, "
          f"without {rate(decode[False])}")
    sys.exit(0 if valid == args.requests else 1)


if __name__ == "__main__":
    main()
