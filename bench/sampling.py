"""What F2D adds to a generation, in ComfyUI, measured in one run.

1. Sampling graphs, a new seed every run (as users re-queue): the host caches CLIPTextEncode's and
   F2D Text Encode's outputs, so those graphs pay only KSampler; F2D Sampler encodes inside and
   must cost no more (its conditioning cache). Rows: CLIPTextEncode + KSampler, F2D Text Encode +
   KSampler, F2D Sampler; medians of interleaved runs.
2. The text encode alone: the host's CLIPTextEncode against F2D Text Encode (same prompt length),
   and F2D's own work per prompt (identifier search, token placement).
3. The memory of the F2D models.

    .venv/bin/python bench/sampling.py [--checkpoint PATH] [--size 64] [--steps 20] [--repeats 9] [--threads 1]

Without --checkpoint it builds the tests' tiny SD1.x checkpoint (small UNet, full CLIP-L), where
text encoding weighs far more against sampling than with a real SD1.5 UNet: the overhead ratio
printed is an upper bound of what a real model shows. With --threads 1 times are this thread's
CPU time (robust on a busy machine).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from f2d_testkit import (  # noqa: E402
    build_tiny_sd15_checkpoint,
    import_host,
    write_formula_weights,
)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


CLOCK = time.perf_counter


def timed_round_robin(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per function, the functions taking turns so that drift hits all alike;
    each is called with the run's number (a new seed per run)."""
    for fn in fns.values():
        fn(0)  # warm-up: model loads, caches
    times = {name: [] for name in fns}
    for i in range(1, repeats + 1):
        for name, fn in fns.items():
            t = CLOCK()
            fn(i)
            times[name].append(CLOCK() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="an SD1.x checkpoint (default: the tests' tiny one)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 1: time this thread's CPU time")
    args = ap.parse_args()
    global CLOCK
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        if args.threads == 1:
            CLOCK = time.thread_time

    tmp = Path(tempfile.mkdtemp(prefix="f2d-bench-"))
    nodes = import_host(tmp)
    import comfy.sample
    import comfy.sd
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    import numpy as np
    import torch
    from PIL import Image

    folder = tmp / "models" / "face2diffusion"
    write_formula_weights(folder, "msid", "pt")
    write_formula_weights(folder, "mapping", "pt")
    ckpt = args.checkpoint or build_tiny_sd15_checkpoint(tmp / "models" / "checkpoints" / "tiny.safetensors")
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(ckpt))[:3]

    gc.collect()
    before = rss_mb()
    f2d = nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    gc.collect()
    after_load = rss_mb() - before
    photo = ROOT / "workflows" / "astronaut.png"
    image = torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).float()[None] / 255
    t = time.perf_counter()
    identity = nodes.F2DEncodeIdentity.execute(f2d, image, "auto", "largest", False).args[0]
    tokens = nodes.F2DExpressionGuidance.execute(f2d, identity, 1.0).args[0]
    encode_once = time.perf_counter() - t
    gc.collect()
    grown = rss_mb() - before
    params = sum(p.numel() for p in f2d.encoder.parameters()) + sum(b.numel() for b in f2d.encoder.buffers())

    text, person = "a photo of f l eating ice cream", "a photo of a person eating ice cream"
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    common = dict(steps=args.steps, cfg=7.0, sampler_name="euler_ancestral", scheduler="normal")

    def sample(positive, negative, seed):
        noise = comfy.sample.prepare_noise(latent["samples"], seed)
        return comfy.sample.sample(model, noise, common["steps"], common["cfg"], common["sampler_name"],
                                   common["scheduler"], positive, negative, latent["samples"], seed=seed,
                                   disable_pbar=True)

    def encode(t):
        return clip.encode_from_tokens_scheduled(clip.tokenize(t))

    # What the host's cache hands KSampler on a re-queue with a new seed.
    plain_pos, plain_neg = encode(person), encode("")
    f2d_pos = nodes.F2DTextEncode.execute(clip, tokens, text, "f l", 0.0, 1.0).args[0]

    medians = timed_round_robin({
        "CLIPTextEncode + KSampler": lambda i: sample(plain_pos, plain_neg, 42 + i),
        "F2D Text Encode + KSampler": lambda i: sample(f2d_pos, plain_neg, 42 + i),
        "F2D Sampler": lambda i: nodes.F2DSampler.execute(
            model, clip, tokens, text, "", latent, 42 + i, common["steps"], common["cfg"], common["sampler_name"],
            common["scheduler"], 1.0, "f l", 0.0, 1.0).args[0],
    }, args.repeats)
    rows = list(medians.items())
    base = rows[0][1]
    import nodes as host_nodes

    encodes = timed_round_robin({
        "CLIPTextEncode": lambda i: host_nodes.CLIPTextEncode().encode(clip, person),
        "F2D Text Encode": lambda i: nodes.F2DTextEncode.execute(clip, tokens, text, "f l", 0.0, 1.0),
    }, max(15, args.repeats))
    # F2D's own work per prompt: finding the identifier and placing the identity tokens.
    own = timed_round_robin({"own": lambda i: nodes.conditioning.identity_tokens_for(clip, text, tokens, "f l")},
                            50)["own"]
    print(f"checkpoint: {ckpt.name}, {args.size}x{args.size}, {args.steps} steps, median of {args.repeats}, "
          f"{'thread CPU time' if CLOCK is time.thread_time else 'wall time'}")
    print(f"{'graph (new seed every run)':30s} {'s/run':>8s} {'vs plain':>9s}")
    for name, s in rows:
        print(f"{name:30s} {s:8.3f} {100 * (s / base - 1):+8.2f}%")
    c, f = encodes["CLIPTextEncode"], encodes["F2D Text Encode"]
    print(f"text encode alone: CLIPTextEncode {c * 1000:.1f} ms, F2D Text Encode {f * 1000:.1f} ms = {f / c:.2f}x")
    print(f"F2D's own work per prompt (identifier search, token placement): {own * 1000:.2f} ms = "
          f"{100 * own / c:.1f} % of a CLIPTextEncode")
    print(f"one-off identity encoding (detect + align + MSID + mapping): {encode_once:.3f} s")
    print(f"F2D models: {params / 1e6:.1f} M numbers = {params * 2 / 2**20:.1f} MiB in fp16, "
          f"{params * 4 / 2**20:.1f} MiB in fp32 (loaded here as {f2d.encoder.weight_dtype}); "
          f"resident memory grew {after_load:.0f} MiB loading them, {grown:.0f} MiB after detecting and encoding "
          f"(the face detector's graphs included)")


if __name__ == "__main__":
    main()
