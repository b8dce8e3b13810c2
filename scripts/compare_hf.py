"""HF transformers' side of scripts/compare-engines.sh: make (once) a mamba2-130m-shaped checkpoint
with seeded random weights in the HF dialect, and time its PyTorch path on the CPU.

    python scripts/compare_hf.py make DIR
    python scripts/compare_hf.py bench DIR PREFILL DECODE THREADS

Prints `prefill: N tokens X tok/s` and `decode: batch 1 x M tokens Y tok/s`, the lines the
Rust `throughput` binary prints. Needs torch and transformers (checkpoints/training/requirements-train.txt).
"""
import sys
import inspect
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM


def make(out):
    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=768, num_hidden_layers=24, state_size=128, head_dim=64, num_heads=24, n_groups=1,
        expand=2, conv_kernel=4, chunk_size=256, vocab_size=50288, tie_word_embeddings=True,
        use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
    )
    model = Mamba2ForCausalLM(config).float().eval()
    model.save_pretrained(out, safe_serialization=True)


def bench(path, prefill, decode, threads):
    torch.set_num_threads(threads)
    model = Mamba2ForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = (torch.arange(prefill) * 7919 % 50277).unsqueeze(0)
    # transformers >= 5 names the cache `cache` (`cache_params` before); only the last
    # position's logits are computed, as Coil's prefill does.
    new_api = "cache" in inspect.signature(model.forward).parameters

    def run(input_ids, cache):
        kwargs = {"cache": cache} if new_api else {"cache_params": cache}
        if cache is not None and not new_api:
            kwargs["cache_position"] = torch.tensor([prefill])
        out = model(input_ids, use_cache=True, logits_to_keep=1, **kwargs)
        return out, (out.cache if new_api else out.cache_params)

    with torch.no_grad():
        run(ids[:, :64], None)  # warm-up
        start = time.perf_counter()
        out, cache = run(ids, None)
        prefill_s = time.perf_counter() - start
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for i in range(decode):
            out, cache = run(token, cache)
            token = out.logits[:, -1:].argmax(-1)
        decode_s = time.perf_counter() - start
    print(f"prefill: {prefill} tokens {prefill / prefill_s:.1f} tok/s")
    print(f"decode: batch 1 x {decode} tokens {decode / decode_s:.2f} tok/s")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        bench(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
