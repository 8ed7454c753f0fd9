#!/usr/bin/env python3
"""Write a GGUF model (llama architecture) with the shapes `torchless synth` makes and random weights.

    python3 bench/make_gguf.py --shape mistral-7b --type q8_0 --seed 1 OUT.gguf

The file is meant for `llama-bench` only: the weights are random (approximately normal, std 0.02;
norm weights 1 + 0.02*z, as in `torchless synth`) and the tokenizer is a minimal valid
SentencePiece-style ("llama") vocabulary of the right size (specials, 256 byte pieces, then
filler pieces) so that llama.cpp loads the model.

Types:
  f32   every tensor float32 (llama.cpp "all F32").
  q8_0  every 2-D weight Q8_0 (token_embd and output included, as llama-quantize Q8_0 does);
        norms float32.
  q4_0  2-D weights Q4_0, except output.weight which is Q8_0 (llama-quantize would use Q6_K,
        which the gguf package cannot quantize); norms float32.

Memory stays small: the tensor directory is written first, then each tensor is generated,
quantized and appended in chunks of rows, so a 7 GB file needs a few hundred MB of RAM.
Generation uses numpy on a small thread pool; each chunk has its own random stream, so the file
depends only on the seed (not on --threads).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import os
import shutil
import sys
import time

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
except ImportError:  # pragma: no cover
    sys.exit("make_gguf.py needs the `gguf` Python package (pip install gguf)")

# name: (hidden, intermediate, layers, heads, kv_heads, vocab, context)
SHAPES = {
    "mistral-7b": (4096, 14336, 32, 32, 8, 32000, 32768),
    "mistral-1b": (2048, 5632, 16, 16, 4, 32000, 32768),
    "tiny": (64, 176, 2, 4, 2, 1024, 256),
}
ROPE_THETA = 10000.0
NORM_EPS = 1e-5
STD = 0.02
# Values generated per work item (rows are grouped to about this many values).
CHUNK_VALUES = 1 << 22

FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


def tensor_plan(shape: str, wtype: str):
    """(name, (rows, cols), ggml type, mean) in file order; a 1-D tensor has rows == 1."""
    hidden, inter, layers, heads, kv_heads, vocab, _ = SHAPES[shape]
    head_dim = hidden // heads
    kv_dim = kv_heads * head_dim
    weight = {"f32": QT.F32, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}[wtype]
    output = QT.Q8_0 if wtype == "q4_0" else weight
    plan = [("token_embd.weight", (vocab, hidden), weight, 0.0)]
    for i in range(layers):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (1, hidden), QT.F32, 1.0),
            (p + "attn_q.weight", (hidden, hidden), weight, 0.0),
            (p + "attn_k.weight", (kv_dim, hidden), weight, 0.0),
            (p + "attn_v.weight", (kv_dim, hidden), weight, 0.0),
            (p + "attn_output.weight", (hidden, hidden), weight, 0.0),
            (p + "ffn_norm.weight", (1, hidden), QT.F32, 1.0),
            (p + "ffn_gate.weight", (inter, hidden), weight, 0.0),
            (p + "ffn_up.weight", (inter, hidden), weight, 0.0),
            (p + "ffn_down.weight", (hidden, inter), weight, 0.0),
        ]
    plan += [
        ("output_norm.weight", (1, hidden), QT.F32, 1.0),
        ("output.weight", (vocab, hidden), output, 0.0),
    ]
    return plan


def row_bytes(cols: int, qtype) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block == 0, (cols, qtype)
    return cols // block * size


# ---------------------------------------------------------------------------------------------
# Quantization (the ggml reference formats; large vectorized passes instead of gguf.quants'
# 16-row groups, which are an order of magnitude slower on a 7B model).


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0: blocks of 32 values, f16 scale d = absmax/127, int8 q = round(x/d)."""
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    # np.rint rounds half to even where ggml's roundf rounds half away from zero: only exact
    # ties differ, which does not matter for a speed benchmark.
    q = np.rint(blocks * inv).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(x.shape[0], -1)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """Q4_0 as ggml's reference: d = max/-8 (max = the value of largest magnitude), q in 0..15."""
    return gguf.quants.quantize(x, QT.Q4_0)


def encode(x: np.ndarray, qtype) -> np.ndarray:
    if qtype == QT.F32:
        return x.view(np.uint8).reshape(x.shape[0], -1)
    if qtype == QT.Q8_0:
        return quantize_q8_0(x)
    if qtype == QT.Q4_0:
        return quantize_q4_0(x)
    raise ValueError(qtype)


def make_chunk(seed: int, tensor: int, chunk: int, rows: int, cols: int, mean: float, qtype):
    rng = np.random.Generator(np.random.SFC64([seed, tensor, chunk]))
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    x *= np.float32(STD)
    if mean:
        x += np.float32(mean)
    return np.ascontiguousarray(encode(x, qtype))


# ---------------------------------------------------------------------------------------------


def add_vocab(w: "gguf.GGUFWriter", vocab: int) -> None:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    if vocab < len(tokens) + 1:
        raise SystemExit(f"vocab {vocab} too small")
    filler = vocab - len(tokens)
    tokens += ["\u2581"] + [f"\u2581t{i}" for i in range(1, filler)]
    types += [gguf.TokenType.NORMAL] * filler
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(filler)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def expected_size(shape: str, wtype: str) -> int:
    total = 0
    for _, (rows, cols), qtype, _ in tensor_plan(shape, wtype):
        total += (rows * row_bytes(cols, qtype) + 31) // 32 * 32
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--type", dest="wtype", choices=sorted(FILE_TYPES), required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--print-size", action="store_true", help="print the tensor-data size in bytes and exit")
    args = ap.parse_args()

    if args.print_size:
        if args.wtype != "f32" and (SHAPES[args.shape][0] % 32 or SHAPES[args.shape][1] % 32):
            raise SystemExit(f"shape {args.shape} has rows that are not a multiple of 32: use --type f32")
        print(expected_size(args.shape, args.wtype))
        return

    hidden, inter, layers, heads, kv_heads, vocab, ctx = SHAPES[args.shape]
    if args.wtype != "f32" and (hidden % 32 or inter % 32):
        raise SystemExit(f"shape {args.shape} has rows that are not a multiple of 32: use --type f32")
    plan = tensor_plan(args.shape, args.wtype)
    need = expected_size(args.shape, args.wtype) + (16 << 20)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise SystemExit(f"not enough disk space in {out_dir}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")

    started = time.time()
    tmp = args.output + ".partial"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(f"synthetic {args.shape} {args.wtype} seed {args.seed}")
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(NORM_EPS)
    w.add_vocab_size(vocab)
    w.add_file_type(FILE_TYPES[args.wtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(w, vocab)

    for name, (rows, cols), qtype, _ in plan:
        shape = (cols,) if rows == 1 else (rows, cols)
        nbytes = rows * row_bytes(cols, qtype)
        byte_shape = (*shape[:-1], row_bytes(cols, qtype))
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())

    total = sum(rows * row_bytes(cols, q) for _, (rows, cols), q, _ in plan)
    written = 0
    last_report = started
    with futures.ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
        for index, (name, (rows, cols), qtype, mean) in enumerate(plan):
            rows_per_chunk = max(1, CHUNK_VALUES // cols)
            starts = list(range(0, rows, rows_per_chunk))
            jobs = [
                pool.submit(make_chunk, args.seed, index, c, min(rows_per_chunk, rows - s), cols, mean, qtype)
                for c, s in enumerate(starts)
            ]
            # At most one tensor's chunks are in flight; the largest (token_embd, output) is
            # about 0.5 GB as f32 in total, much less once quantized.
            for job in jobs:
                data = job.result()
                data.tofile(fout)
                written += data.nbytes
            w.write_padding(fout, rows * row_bytes(cols, qtype))
            now = time.time()
            if now - last_report > 10 or index == len(plan) - 1:
                last_report = now
                rate = written / max(now - started, 1e-9) / 1e6
                print(f"  {written / 1e9:6.2f} / {total / 1e9:.2f} GB  ({rate:.0f} MB/s)", file=sys.stderr, flush=True)
    w.close()
    os.replace(tmp, args.output)
    size = os.path.getsize(args.output)
    print(
        f"wrote {args.output}: {args.shape} {args.wtype}, {size / 1e9:.2f} GB in {time.time() - started:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
