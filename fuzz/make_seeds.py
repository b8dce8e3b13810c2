"""Writes the committed seed corpus in fuzz/seeds/<target>/ (tiny files; run by hand):

    /work/venv-ref/bin/python fuzz/make_seeds.py

Needs torch and safetensors (the fixtures' venv) for the real torch.save and safetensors seeds;
the hand-made pickles come from tests/fixtures/make_hostile_bin.py.
"""

import collections
import glob
import hashlib
import io
import json
import os
import shutil
import sys
import zipfile

import torch
from safetensors.torch import save

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
import make_hostile_bin as hostile  # noqa: E402

SEEDS = os.path.join(HERE, "seeds")


def put(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def tiny_state_dict(dtype):
    """The model of fuzz_targets/common.rs: d_model 4, 2 layers, 2 heads of 4, d_state 2, vocab 8."""
    g = torch.Generator().manual_seed(0)
    d, inner, heads, n, k, vocab = 4, 8, 2, 2, 4, 8
    conv = inner + 2 * n
    sd = collections.OrderedDict()
    sd["backbone.embedding.weight"] = torch.randn(vocab, d, generator=g)
    for i in range(2):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = torch.rand(d, generator=g) + 0.5
        sd[p + "mixer.in_proj.weight"] = torch.randn(2 * inner + 2 * n + heads, d, generator=g)
        sd[p + "mixer.conv1d.weight"] = torch.randn(conv, 1, k, generator=g)
        sd[p + "mixer.conv1d.bias"] = torch.randn(conv, generator=g)
        sd[p + "mixer.dt_bias"] = torch.randn(heads, generator=g)
        sd[p + "mixer.A_log"] = torch.rand(heads, generator=g)
        sd[p + "mixer.D"] = torch.randn(heads, generator=g)
        sd[p + "mixer.norm.weight"] = torch.rand(inner, generator=g) + 0.5
        sd[p + "mixer.out_proj.weight"] = torch.randn(d, inner, generator=g)
    sd["backbone.norm_f.weight"] = torch.rand(d, generator=g) + 0.5
    return collections.OrderedDict((k, v.to(dtype)) for k, v in sd.items())


def hf_names(sd):
    return {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)

    # config: every fixture's config.json (both dialects, every time_step_limit spelling).
    seen = set()
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*/config.json")) + [os.path.join(ROOT, "checkpoints/models/default/config.json")]):
        data = open(path, "rb").read()
        if hashlib.sha1(data).digest() not in seen:
            seen.add(hashlib.sha1(data).digest())
            put("config", os.path.basename(os.path.dirname(path)) + ".json", data)
    put("config", "bare_infinity.json", b'{"model_type": "mamba2", "hidden_size": 4, "num_hidden_layers": 1, "vocab_size": 8, '
        b'"state_size": 2, "num_heads": 2, "head_dim": 4, "n_groups": 1, "time_step_limit": [0.0, Infinity]}')

    # safetensors: the tiny model in each dtype.
    for dtype, name in [(torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float64, "f64")]:
        put("safetensors", f"tiny_{name}.safetensors", save(hf_names(tiny_state_dict(dtype)), metadata={"format": "pt"}))
    put("safetensors", "int_tensor.safetensors", save({"x": torch.arange(3, dtype=torch.int32)}))

    # torch_zip: torch.save of the tiny model (tied head as a second name) and every hostile file.
    for dtype, name in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        sd = tiny_state_dict(dtype)
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
        buf = io.BytesIO()
        torch.save(sd, buf)
        put("torch_zip", f"tiny_{name}.bin", buf.getvalue())
        if dtype == torch.float32:
            with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
                put("pickle", "torch_save_tiny.pkl", z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))
    for name, data in hostile.CASES.items():
        put("torch_zip", name, data)

    # pickle: state dicts over the pickle target's storages (0: 64 floats, 1: 8, 2: 2) and the
    # hostile pickles on their own.
    put("pickle", "three_views.pkl", hostile.state_dict([
        ("a", hostile.tensor("0", 64, 0, [8, 8], [8, 1])),
        ("b", hostile.tensor("1", 8, 0, [2, 4], [4, 1])),
        ("t", hostile.tensor("0", 64, 0, [8, 8], [1, 8])),
        ("h", hostile.tensor("2", 4, 1, [3], [1], "HalfStorage")),
    ]))
    # The tiny model of fuzz_targets/common.rs laid over those storages, so Weights::load runs.
    model = [("backbone.embeddings.weight", hostile.tensor("0", 64, 0, [8, 4], [4, 1])),
             ("backbone.norm_f.weight", hostile.tensor("1", 8, 0, [4], [1]))]
    for layer in range(2):
        p = f"backbone.layers.{layer}."
        model += [(p + "norm.weight", hostile.tensor("1", 8, 4, [4], [1])),
                  (p + "mixer.in_proj.weight", hostile.tensor("0", 64, 0, [22, 4], [4, 1])),
                  (p + "mixer.conv1d.weight", hostile.tensor("0", 64, 0, [12, 1, 4], [4, 4, 1])),
                  (p + "mixer.conv1d.bias", hostile.tensor("0", 64, 3, [12], [1])),
                  (p + "mixer.dt_bias", hostile.tensor("1", 8, 0, [2], [1])),
                  (p + "mixer.A_log", hostile.tensor("1", 8, 2, [2], [1])),
                  (p + "mixer.D", hostile.tensor("1", 8, 6, [2], [1])),
                  (p + "mixer.norm.weight", hostile.tensor("1", 8, 0, [8], [1])),
                  (p + "mixer.out_proj.weight", hostile.tensor("0", 64, 0, [4, 8], [8, 1]))]
    put("pickle", "tiny_model.pkl", hostile.state_dict(model))
    for name, data in hostile.CASES.items():
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                put("pickle", name.replace(".bin", ".pkl"), z.read("archive/data.pkl"))
        except (KeyError, zipfile.BadZipFile):
            pass  # the truncated and lying ZIPs

    # tokenizer: the embedded default's (byte-level BPE) and a minimal word-level one.
    put("tokenizer", "default.json", open(os.path.join(ROOT, "checkpoints/models/default/tokenizer.json"), "rb").read())
    put("tokenizer", "word_level.json", json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2, ",": 3}, "unk_token": "[UNK]"},
    }).encode())

    for target in sorted(os.listdir(SEEDS)):
        files = os.listdir(os.path.join(SEEDS, target))
        size = sum(os.path.getsize(os.path.join(SEEDS, target, f)) for f in files)
        print(f"{target:12s} {len(files):3d} files {size / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
