#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/corpus/<target>/).

Small on purpose: tiny model files and checkpoints the fuzzer can mutate quickly, a real model
header cut short, a few texts, id sequences and tokenizer files. Deterministic: rerunning it
rewrites the same bytes.

    python3 fuzz/make_seeds.py
"""
import json
import math
import os
import random
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def out(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- model_file -----------------------------------------------------------------------------

def tiny_vocab():
    """<unk> <s> </s>, the 256 byte pieces, then a few pieces with merges producing them."""
    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    extra = ["\u2581", "H", "e", "l", "o", "He", "ll", "llo", "Hello", "\u2581Hello"]
    merges = ["H e", "l l", "ll o", "He llo", "\u2581 Hello"]
    vocab = {p: i for i, p in enumerate(pieces + extra)}
    return vocab, merges


def model_file(hidden, inter, n_heads, n_kv, quant, seed):
    rng = random.Random(seed)
    vocab, merges = tiny_vocab()
    n_vocab = len(vocab)
    head_dim = hidden // n_heads
    metadata = {
        "hidden_size": str(hidden), "intermediate_size": str(inter), "n_layers": "1",
        "n_heads": str(n_heads), "n_kv_heads": str(n_kv), "vocab_size": str(n_vocab),
        "max_position_embeddings": "16", "sliding_window": "4", "rope_theta": "10000.0",
        "norm_eps": "1e-05", "act_type": "silu", "quant": quant,
    }
    shapes = {
        "lm_head.weight": [n_vocab, hidden],
        "model.embed_tokens.weight": [n_vocab, hidden],
        "model.norm.weight": [hidden],
        "model.layers.0.input_layernorm.weight": [hidden],
        "model.layers.0.post_attention_layernorm.weight": [hidden],
        "model.layers.0.self_attn.q_proj.weight": [n_heads * head_dim, hidden],
        "model.layers.0.self_attn.k_proj.weight": [n_kv * head_dim, hidden],
        "model.layers.0.self_attn.v_proj.weight": [n_kv * head_dim, hidden],
        "model.layers.0.self_attn.o_proj.weight": [hidden, n_heads * head_dim],
        "model.layers.0.mlp.gate_proj.weight": [inter, hidden],
        "model.layers.0.mlp.up_proj.weight": [inter, hidden],
        "model.layers.0.mlp.down_proj.weight": [hidden, inter],
    }
    payload = bytearray()

    def align():
        payload.extend(b"\0" * (-len(payload) % 64))

    tensors = {}
    for name in sorted(shapes):
        shape = shapes[name]
        n = math.prod(shape)
        align()
        entry = {"shape": shape, "offset": len(payload)}
        if quant == "int8" and name.endswith("_proj.weight"):
            entry["dtype"] = "int8"
            payload.extend(bytes(rng.randrange(256) for _ in range(n)))
            align()
            groups = (n + 63) // 64
            entry["scale_offset"] = len(payload)
            entry["scale_size"] = groups
            for _ in range(groups):
                payload.extend(struct.pack("<f", rng.uniform(100.0, 2000.0)))
        else:
            entry["dtype"] = "f32"
            norm = name.endswith("norm.weight")
            for _ in range(n):
                payload.extend(struct.pack("<f", 1.0 if norm else rng.gauss(0.0, 0.1)))
        tensors[name] = entry
    header = json.dumps({"metadata": metadata, "tensors": tensors,
                         "tokenizer": {"vocab": vocab, "merges": merges}}).encode()
    header += b"\0" * (-(8 + len(header)) % 64)
    return struct.pack("<Q", len(header)) + header + bytes(payload)


out("model_file", "tiny-f32-h8.bin", model_file(8, 16, 2, 1, "f32", 1))
out("model_file", "tiny-int8-h8.bin", model_file(8, 16, 2, 1, "int8", 2))
out("model_file", "tiny-int8-h64.bin", model_file(64, 128, 4, 2, "int8", 3))
with open(os.path.join(FIXTURES, "models", "small-gqa-int8.bin"), "rb") as f:
    real = f.read()
header_len = struct.unpack("<Q", real[:8])[0]
# The real header with only 4 KiB of payload: every tensor but the first lies out of bounds.
out("model_file", "small-gqa-int8-header.bin", real[: 8 + header_len + 4096])
out("model_file", "length-prefix-only.bin", struct.pack("<Q", 0))
out("model_file", "empty-json.bin", struct.pack("<Q", 56) + b"{}" + b"\0" * 54)

# --- tokenizer_roundtrip ------------------------------------------------------------------------

texts = {
    "hello.txt": "Hello world",
    "whitespace.txt": "  two leading spaces,\ttabs\tand\r\nnewlines\n\n   ",
    "unicode.txt": "\u4e2d\u6587 caf\u00e9 e\u0301 \U0001F469\u200D\U0001F4BB \ue000 \U0010FFFF",
    "specials.txt": "<s>[INST] What is <unk>? [/INST]</s>",
    "metaspace.txt": "\u2581\u2581x \u2581 y\u2581",
    "code.txt": "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
}
for name, text in texts.items():
    out("tokenizer_roundtrip", name, text)

# --- tokenizer_decode_ids --------------------------------------------------------------------------

def ids_seed(flags, ids):
    return bytes([flags]) + b"".join(struct.pack("<I", i) for i in ids)

out("tokenizer_decode_ids", "hello.bin", ids_seed(0, [1, 22557, 1526]))
out("tokenizer_decode_ids", "bytes-utf8.bin", ids_seed(0, [1, 3 + 0xE4, 3 + 0xB8, 3 + 0xAD, 28705]))
out("tokenizer_decode_ids", "bytes-broken.bin", ids_seed(1, [3 + 0xF0, 3 + 0x9F, 2, 3 + 0x80, 0]))
out("tokenizer_decode_ids", "out-of-range.bin", ids_seed(0, [31999, 32000, 32999, 0xFFFFFFFF, 0x80000000]))
out("tokenizer_decode_ids", "specials-shown.bin", ids_seed(1, [1, 28705, 2, 0, 28705, 1]))

# --- tokenizer_json ----------------------------------------------------------------------------

with open(os.path.join(FIXTURES, "models", "small-tokenizer.json"), "rb") as f:
    out("tokenizer_json", "small-tokenizer.json", f.read())
vocab, merges = tiny_vocab()
tiny = {
    "added_tokens": [
        {"id": 0, "content": "<unk>", "special": True},
        {"id": 1, "content": "<s>", "special": True},
        {"id": 2, "content": "</s>", "special": True},
    ],
    "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
    "pre_tokenizer": None,
    "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True,
              "vocab": vocab, "merges": merges},
}
out("tokenizer_json", "tiny-joined-merges.json", json.dumps(tiny, ensure_ascii=False))
tiny_pairs = json.loads(json.dumps(tiny))
tiny_pairs["model"]["merges"] = [m.split(" ") for m in merges]
tiny_pairs["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                               "prepend_scheme": "first", "split": False}
tiny_pairs["normalizer"] = None
out("tokenizer_json", "tiny-pair-merges-metaspace.json", json.dumps(tiny_pairs))

# --- convert_config ------------------------------------------------------------------------------

with open(os.path.join(FIXTURES, "models", "small-gqa-hf", "config.json"), "rb") as f:
    out("convert_config", "small-gqa-transformers5.json", f.read())
mistral_v01 = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.34.0",
    "use_cache": True, "vocab_size": 32000,
}
out("convert_config", "mistral-7b-v0.1.json", json.dumps(mistral_v01, indent=2))
v03 = dict(mistral_v01, rope_theta=1000000.0, sliding_window=None, vocab_size=32768,
           head_dim=128)
out("convert_config", "mistral-7b-v0.3.json", json.dumps(v03, indent=2))

# --- convert_safetensors -------------------------------------------------------------------------

def checkpoint(dtype_of, seed):
    """A checkpoint for the tiny config of fuzz_targets/convert_safetensors.rs."""
    rng = random.Random(seed)
    h, inter, heads, kv, hd, vocab_n = 8, 16, 2, 1, 4, 32
    shapes = {
        "lm_head.weight": [vocab_n, h], "model.embed_tokens.weight": [vocab_n, h],
        "model.norm.weight": [h],
        "model.layers.0.input_layernorm.weight": [h],
        "model.layers.0.post_attention_layernorm.weight": [h],
        "model.layers.0.self_attn.q_proj.weight": [heads * hd, h],
        "model.layers.0.self_attn.k_proj.weight": [kv * hd, h],
        "model.layers.0.self_attn.v_proj.weight": [kv * hd, h],
        "model.layers.0.self_attn.o_proj.weight": [h, heads * hd],
        "model.layers.0.mlp.gate_proj.weight": [inter, h],
        "model.layers.0.mlp.up_proj.weight": [inter, h],
        "model.layers.0.mlp.down_proj.weight": [h, inter],
        "model.layers.0.self_attn.rotary_emb.inv_freq": [hd // 2],
    }
    header = {"__metadata__": {"format": "pt"}}
    data = bytearray()
    for i, name in enumerate(sorted(shapes)):
        dtype = "F32" if name.endswith("inv_freq") else dtype_of(i)
        n = math.prod(shapes[name])
        start = len(data)
        for _ in range(n):
            x = rng.gauss(0.0, 0.1)
            if dtype == "F32":
                data.extend(struct.pack("<f", x))
            elif dtype == "F16":
                data.extend(struct.pack("<e", x))
            else:  # BF16: the top half of the f32
                data.extend(struct.pack("<f", x)[2:])
        header[name] = {"dtype": dtype, "shape": shapes[name], "data_offsets": [start, len(data)]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


out("convert_safetensors", "tiny-f32.safetensors", checkpoint(lambda i: "F32", 1))
out("convert_safetensors", "tiny-bf16.safetensors", checkpoint(lambda i: "BF16", 2))
out("convert_safetensors", "tiny-mixed.safetensors",
    checkpoint(lambda i: ["F32", "F16", "BF16"][i % 3], 3))
out("convert_safetensors", "header-only.safetensors", struct.pack("<Q", 2) + b"{}")


# --- gguf_model ----------------------------------------------------------------------------------

def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_value(v):
    """(type id, payload) of a metadata value: str, bool, int (UINT32), float (FLOAT32), or a
    list of one of those."""
    if isinstance(v, bool):
        return 7, struct.pack("<B", v)
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, gguf_string(v)
    elem, _ = gguf_value(v[0])
    payload = struct.pack("<IQ", elem, len(v)) + b"".join(gguf_value(x)[1] for x in v)
    return 9, payload


def gguf_model(tokenizer, types, seed):
    """A one-block llama GGUF (hidden 32, 2 heads of 16, GQA 2:1, intermediate 64, 16-piece
    vocabulary): `types` gives the ggml type of the matrices (0 F32, 1 F16, 2 Q4_0, 8 Q8_0)."""
    rng = random.Random(seed)
    h, inter, heads, kv, hd = 32, 64, 2, 1, 16
    pieces = ["<unk>", "<s>", "</s>", "\u2581", "H", "e", "l", "o", "\u2581H", "ll", "lo",
              "llo", "ello", "Hello", "\u2581Hello", "<0x0A>"]
    if tokenizer == "gpt2":
        pieces = ["<|endoftext|>", "H", "e", "l", "o", "\u0120", "ll", "He", "llo", "Hello",
                  "\u0120Hello", "<|im_start|>", "<|im_end|>", "a", "b", "c"]
    n = len(pieces)
    meta = [
        ("general.architecture", "llama"),
        ("llama.block_count", 1), ("llama.context_length", 16), ("llama.embedding_length", h),
        ("llama.feed_forward_length", inter), ("llama.attention.head_count", heads),
        ("llama.attention.head_count_kv", kv), ("llama.rope.freq_base", 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5), ("llama.rope.dimension_count", hd),
        ("tokenizer.ggml.model", tokenizer), ("tokenizer.ggml.tokens", pieces),
        ("tokenizer.ggml.token_type", [3 if p.startswith("<") and len(p) > 3 else 1 for p in pieces]),
        ("tokenizer.ggml.bos_token_id", 1 if tokenizer == "llama" else 0),
        ("tokenizer.ggml.eos_token_id", 2 if tokenizer == "llama" else 0),
        ("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    ]
    if tokenizer == "llama":
        meta.append(("tokenizer.ggml.scores", [-float(i) for i in range(n)]))
    else:
        meta.append(("tokenizer.ggml.merges", ["l l", "H e", "ll o", "He llo", "\u0120 Hello"]))
        meta.append(("tokenizer.ggml.pre", "smollm"))
    tensors = [("token_embd.weight", [h, n], types), ("output_norm.weight", [h], 0),
               ("blk.0.attn_norm.weight", [h], 0), ("blk.0.ffn_norm.weight", [h], 0),
               ("blk.0.attn_q.weight", [h, heads * hd], types),
               ("blk.0.attn_k.weight", [h, kv * hd], types),
               ("blk.0.attn_v.weight", [h, kv * hd], types),
               ("blk.0.attn_output.weight", [heads * hd, h], types),
               ("blk.0.ffn_gate.weight", [h, inter], types),
               ("blk.0.ffn_up.weight", [h, inter], types),
               ("blk.0.ffn_down.weight", [inter, h], types)]

    def data(dims, ty):
        count = math.prod(dims)
        if ty == 0:
            return b"".join(struct.pack("<f", 1.0 + rng.gauss(0, 0.02) if len(dims) == 1
                                        else rng.gauss(0, 0.3)) for _ in range(count))
        if ty == 1:
            return b"".join(struct.pack("<e", rng.gauss(0, 0.3)) for _ in range(count))
        out = bytearray()
        for _ in range(count // 32):
            out += struct.pack("<e", rng.uniform(0.005, 0.05))
            size = 16 if ty == 2 else 32
            out += bytes(rng.randrange(256) for _ in range(size))
        return bytes(out)

    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta:
        ty, payload = gguf_value(value)
        head += gguf_string(key) + struct.pack("<I", ty) + payload
    blobs, offset = [], 0
    for name, dims, ty in tensors:
        blob = data(dims, ty)
        head += gguf_string(name) + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)
        blobs.append((offset, blob))
        offset += len(blob) + (-len(blob) % 32)
    body = bytearray(head + bytes(-len(head) % 32))
    start = len(body)
    for offset, blob in blobs:
        body += bytes(start + offset - len(body)) + blob
    return bytes(body)


out("gguf_model", "tiny-spm-q4_0.gguf", gguf_model("llama", 2, 1))
out("gguf_model", "tiny-bpe-q8_0.gguf", gguf_model("gpt2", 8, 2))
out("gguf_model", "tiny-spm-f16.gguf", gguf_model("llama", 1, 3))
out("gguf_model", "tiny-bpe-f32.gguf", gguf_model("gpt2", 0, 4))
