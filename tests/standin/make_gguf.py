#!/usr/bin/python3
"""Make the test bed's GGUF models: llama architecture, random weights, nothing downloaded.

Run once per cached Debian unstable root (tests/testbed.py), where python3-gguf and the real
llama-server are packaged.  The stand-in Ollama serves every ``NAME.gguf`` in the directory as the
pulled model ``NAME:latest`` and runs it in llama-server, as Ollama >= 0.30 runs GGML models.

- ``tiny``: embedding 64, 2 blocks, 4 heads, feed-forward 128, 300 tokens; about 0.5 MB.  It loads
  in well under a second and generates thousands of tokens a second on one core: the wedge cases.
- ``big``: embedding 512, 8 blocks, 8 heads, feed-forward 1408; about 100 MB.  A prompt of
  thousands of tokens takes tens of seconds to evaluate on a CPU: the longest legitimate silence
  of ``/slots`` is measured on it (issue 13, part 4), and a harm case loads it under load.

The vocabulary is ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens and a few words (SentencePiece
"llama" tokenizer, so any text tokenizes through byte fallback).  The output row of ``</s>`` is
zero and the others are N(0, 1): after the final RMS norm every other logit is N(0, n_embd), so
end-of-generation has a probability of about e^-20 per token and a stream runs for as many tokens
as it asks for, as a real model asked for a long answer does.  Fixed seeds: the same bytes every
time.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or "
    "had by not word but what some we can out other were all there when up use your how said an each"
).split()

#: name -> (n_embd, n_blocks, n_heads, n_ff, context length it was "trained" for)
MODELS = {
    "tiny": (64, 2, 4, 128, 8192),
    "big": (512, 8, 8, 1408, 16384),
}


def vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{i:02X}>".encode() for i in range(256)]
    types += [TokenType.BYTE] * 256
    tokens += [("\u2581" + w).encode() for w in WORDS]
    types += [TokenType.NORMAL] * len(WORDS)
    scores = [0.0] * 259 + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, [int(t) for t in types]


def write(path: Path, n_embd: int, n_blocks: int, n_heads: int, n_ff: int, n_ctx: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * s).astype(np.float32)

    g = GGUFWriter(str(path), "llama")
    g.add_name(f"ollamactl test bed {path.stem}")
    g.add_context_length(n_ctx)
    g.add_embedding_length(n_embd)
    g.add_block_count(n_blocks)
    g.add_feed_forward_length(n_ff)
    g.add_head_count(n_heads)
    g.add_head_count_kv(n_heads)
    g.add_rope_dimension_count(n_embd // n_heads)
    g.add_rope_freq_base(10000.0)
    g.add_layer_norm_rms_eps(1e-5)
    g.add_file_type(0)  # all f32
    g.add_tokenizer_model("llama")
    g.add_token_list(tokens)
    g.add_token_scores(scores)
    g.add_token_types(types)
    g.add_unk_token_id(0)
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_add_bos_token(True)
    g.add_add_eos_token(False)

    # numpy shapes are ggml's reversed: token_embd is ggml [n_embd, n_vocab], so (n_vocab, n_embd)
    g.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=1.0))
    for i in range(n_blocks):
        b = f"blk.{i}"
        g.add_tensor(f"{b}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            g.add_tensor(f"{b}.{name}.weight", w(n_embd, n_embd))
        g.add_tensor(f"{b}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        g.add_tensor(f"{b}.ffn_gate.weight", w(n_ff, n_embd))
        g.add_tensor(f"{b}.ffn_up.weight", w(n_ff, n_embd))
        g.add_tensor(f"{b}.ffn_down.weight", w(n_embd, n_ff))
    g.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out = w(n_vocab, n_embd, scale=1.0)
    out[2, :] = 0.0  # </s>: see the module's docstring
    g.add_tensor("output.weight", out)

    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for seed, (name, dims) in enumerate(sorted(MODELS.items())):
        path = out / f"{name}.gguf"
        tmp = path.with_suffix(".tmp")
        write(tmp, *dims, seed=seed)
        tmp.chmod(0o644)
        tmp.rename(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.with_suffix(".sha256").write_text(digest + "\n")  # the blob digest the stand-in shows
        print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
