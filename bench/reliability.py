"""How fast Cancel takes effect, and how much memory a big photo batch takes, in a real ComfyUI.

Starts ComfyUI with the tests' tiny SD1.x checkpoint and the formula F2D weights, then:
- /interrupt during sampling (a 5000-step F2D Sampler run): seconds from the request until
  ComfyUI reports the prompt interrupted (its own timestamp);
- /interrupt during F2D Encode Identity on a batch of photos (the astronaut repeated, 240 by
  default) at several moments, covering face detection and the chunked MSID encoding;
- the server's peak resident memory while F2D Encode Identity runs on 400 photos, next to its
  resident memory before (the input batch itself, 400 x 512 x 512 x 3 floats, is 1.2 GB of it).

- in a fresh process each, the peak memory that encode_photos adds on top of the photo batch,
  encoding in chunks (f2d.identity.ENCODE_CHUNK) and, for comparison, in one pass as before.

- files and text made to hurt the server (issue 21), each refused: a deflated .pt of 4 GB of zeros
  chosen in F2D Load MSID, a .safetensors listing 1.3 million empty tensors, a 40 MB expression
  (10 million numbers) in F2D Expression Vector: seconds from POST /prompt to the refusal, the
  server's peak resident memory over its memory before, and the slowest answer to GET /queue
  from another client while each is refused (next to the same figure for an idle server).

    .venv/bin/python bench/reliability.py [--interrupt-photos 240] [--memory-photos 400] [--skip-server]
                                          [--only-hardening]

Figures depend on the machine; compare them within one run (the encode chunk is in
f2d.identity.ENCODE_CHUNK).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from f2d_testkit import (  # noqa: E402
    ComfyServer,
    build_tiny_sd15_checkpoint,
    copy_into,
    import_host,
    require_fixtures,
    write_formula_weights,
)

CKPT = "tiny_sd15.safetensors"


def sampling_graph(steps: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "F2DLoadIdentity", "inputs": {"identity_file": "bench.safetensors"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "F2DSampler", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "id_tokens": ["2", 0], "text": "a photo of f l", "negative": "",
            "latent_image": ["3", 0], "seed": int(time.time()), "steps": steps, "cfg": 7.0,
            "sampler_name": "euler_ancestral", "scheduler": "normal", "denoise": 1.0, "identifier": "f l",
            "identity_start": 0.0, "identity_end": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def encode_graph(photos: int, tag: int) -> dict:
    return {
        "1": {"class_type": "F2DLoadMSID", "inputs": {"msid": "msid.pt", "mapping": "mapping.pt"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        # amount differs per run (tag) so ComfyUI never serves a cached batch
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": photos + tag}},
        "4": {"class_type": "F2DEncodeIdentity", "inputs": {"f2d_model": ["1", 0], "image": ["3", 0],
                                                            "detector": "mediapipe", "face": "largest",
                                                            "skip_faceless": False}},
        "5": {"class_type": "F2DExpressionGuidance", "inputs": {"f2d_model": ["1", 0], "identity": ["4", 0],
                                                                "strength": 1.0}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }


def queue(server, api) -> str:
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    while prompt_id not in [q[1] for q in server.get("/queue")["queue_running"]]:
        time.sleep(0.02)
    return prompt_id


def interrupt_latency(server, api, after: float) -> tuple[float, str]:
    """Seconds from POST /interrupt to ComfyUI's 'execution_interrupted', and how it ended."""
    prompt_id = queue(server, api)
    time.sleep(after)
    sent = time.time()
    server.post("/interrupt", {})
    h = server.wait_history(prompt_id, timeout=900)
    messages = dict((m[0], m[1]) for m in h["status"]["messages"])
    if "execution_interrupted" not in messages:
        return float("nan"), h["status"]["status_str"]
    return messages["execution_interrupted"]["timestamp"] / 1000 - sent, "interrupted"


def peak_rss_while(server, api) -> tuple[float, float, float, str]:
    """(resident MB before, peak MB during, seconds, status) of the server process for one prompt."""
    import psutil

    proc = psutil.Process(server.proc.pid)
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 200, body
    h = server.wait_history(body["prompt_id"], timeout=3600)
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    return before / 2**20, peak[0] / 2**20, seconds, h["status"]["status_str"]


def refusal(server, api) -> dict:
    """POST ``api`` and wait for its refusal (HTTP 400, or the run's error), sampling the server's
    resident memory and timing GET /queue from another client all the while."""
    import psutil

    proc = psutil.Process(server.proc.pid)
    before = proc.memory_info().rss
    peak, probes, done = [before], [], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    def probe():
        while not done.is_set():
            t = time.perf_counter()
            server.get("/queue", timeout=120)
            probes.append(time.perf_counter() - t)
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, probe)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    sent = time.time()
    status, body = server.post("/prompt", {"prompt": api}, timeout=300)
    if status == 400:
        seconds, how = time.time() - sent, "refused by /prompt: " + json.dumps(body)[:150]
    else:
        h = server.wait_history(body["prompt_id"], timeout=600)
        messages = dict((m[0], m[1]) for m in h["status"]["messages"])
        err = messages.get("execution_error")
        seconds = (err["timestamp"] / 1000 - sent) if err else float("nan")
        how = f"run error: {err['exception_message'][:150]}" if err else h["status"]["status_str"]
    time.sleep(0.3)
    done.set()
    for t in threads:
        t.join()
    return {"seconds": seconds, "before": before / 2**20, "peak": peak[0] / 2**20,
            "slowest_other": max(probes, default=float("nan")), "how": how}


def hardening(server, f2d: Path) -> None:
    from crafted_files import deflated_zeros_pt, many_empty_tensors_safetensors

    bomb = deflated_zeros_pt(f2d / "zeros_4g.pt", 4 * 2**30)
    many_empty_tensors_safetensors(f2d / "empties.safetensors", 1_300_000)
    server.wait_history(server.post("/prompt", {"prompt": {"1": {"class_type": "PreviewAny", "inputs": {
        "source": "warm-up"}}}})[1]["prompt_id"])  # the first prompt's one-off costs are not a refusal's
    idle = []
    for _ in range(40):
        t = time.perf_counter()
        server.get("/queue")
        idle.append(time.perf_counter() - t)
        time.sleep(0.05)
    print(f"files and text made to hurt the server (GET /queue from another client, idle server: median "
          f"{sorted(idle)[20] * 1000:.0f} ms, slowest {max(idle) * 1000:.0f} ms)")

    def load_msid(name):
        return {"1": {"class_type": "F2DLoadMSID", "inputs": {"msid": name, "mapping": "mapping.pt"}},
                "2": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
                "3": {"class_type": "F2DEncodeIdentity", "inputs": {"f2d_model": ["1", 0], "image": ["2", 0],
                                                                    "detector": "auto", "face": "largest",
                                                                    "skip_faceless": False}},
                "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}

    expression = {"1": {"class_type": "F2DExpressionVector", "inputs": {"values": "0.1 " * 10_000_000}},
                  "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    for label, api in ((f"deflated .pt, 4 GB of zeros in {bomb.stat().st_size / 2**20:.0f} MB, as msid", load_msid("zeros_4g.pt")),
                       (".safetensors listing 1.3 million empty tensors, as msid", load_msid("empties.safetensors")),
                       ("expression of 10 million numbers (40 MB)", expression)):
        r = refusal(server, api)
        print(f"  {label}:\n    refused after {r['seconds']:.2f} s; server memory {r['before']:.0f} MB before, "
              f"peak {r['peak']:.0f} MB (+{r['peak'] - r['before']:.0f} MB); another client's GET /queue: "
              f"slowest {r['slowest_other'] * 1000:.0f} ms\n    {r['how']}")


def child_peak(photos: int, chunk: int) -> None:
    """Run in a fresh process: the resident-memory peak that encode_photos adds, in MB."""
    import resource

    import numpy as np
    import torch
    from PIL import Image

    from f2d.detect import LandmarksDetector, MediaPipeDetector
    from f2d.identity import IdentityEncoder, encode_photos

    fixtures = require_fixtures()
    with tempfile.TemporaryDirectory() as tmp:
        enc = IdentityEncoder.from_files(write_formula_weights(Path(tmp), "msid", "pt"),
                                         write_formula_weights(Path(tmp), "mapping", "pt"))
    photo = np.asarray(Image.open(fixtures / "astronaut.png").convert("RGB"))
    det = MediaPipeDetector()
    points = det.detect(photo)[0].points
    det.close()
    batch = torch.from_numpy(photo).float().div(255).expand(photos, -1, -1, -1).contiguous()  # as ComfyUI's IMAGE
    enc.features(np.zeros((1, 112, 112, 3), np.uint8))  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    encode_photos(enc, LandmarksDetector(np.stack([points] * photos)), list(batch.numpy()), chunk=chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak - before:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interrupt-photos", type=int, default=240)
    ap.add_argument("--memory-photos", type=int, default=400)
    ap.add_argument("--after", type=float, nargs="+", default=[2.0, 8.0, 20.0],
                    help="seconds into the encode at which to interrupt")
    ap.add_argument("--skip-server", action="store_true", help="only the in-process memory comparison")
    ap.add_argument("--only-hardening", action="store_true", help="only the crafted files and text (issue 21)")
    ap.add_argument("--child", type=int, nargs=2, metavar=("PHOTOS", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_peak(*args.child)

    import subprocess

    from f2d.identity import ENCODE_CHUNK

    if args.only_hardening:
        return with_server(args)
    print(f"memory that encode_photos adds for {args.memory_photos} photos of 512x512 "
          "(landmarks given; a fresh process each)")
    for label, chunk in ((f"in chunks of {ENCODE_CHUNK}", ENCODE_CHUNK), ("in one pass (before)", args.memory_photos)):
        out = subprocess.run([sys.executable, __file__, "--child", str(args.memory_photos), str(chunk)],
                             capture_output=True, text=True, check=True).stdout.split()[-1]
        print(f"  {label:24s} +{out} MB")
    if args.skip_server:
        return
    with_server(args)


def with_server(args) -> None:
    fixtures = require_fixtures()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import_host(tmp / "inprocess")  # the tiny checkpoint is built with ComfyUI's own classes
        base = tmp / "comfy"
        build_tiny_sd15_checkpoint(base / "models" / "checkpoints" / CKPT)
        f2d = base / "models" / "face2diffusion"
        write_formula_weights(f2d, "msid", "pt")
        write_formula_weights(f2d, "mapping", "pt")
        copy_into(fixtures / "astronaut.png", base / "input")
        from safetensors.torch import load_file

        from f2d.identity import IdentityTokens
        from f2d.identity_file import save_identity

        ref = load_file(str(fixtures / "reference.safetensors"))
        save_identity(f2d / "identities" / "bench.safetensors",
                      IdentityTokens(ref["mapping.first.null_exp"], ref["mapping.last.null_exp"]))

        with ComfyServer(base) as server:
            hardening(server, f2d)
            if args.only_hardening:
                return
            print("interrupt latency (s from POST /interrupt to ComfyUI's execution_interrupted)")
            queue(server, sampling_graph(1))  # warm-up: checkpoint load
            time.sleep(3)
            latency, how = interrupt_latency(server, sampling_graph(5000), after=2.0)
            print(f"  sampling, 5000 steps at 64x64, after 2 s:      {latency:6.2f}  ({how})")
            # Warm-up: F2D Load MSID and the detector once, so the figures below are the encode node's.
            server.wait_history(queue(server, encode_graph(1, 500)), timeout=600)
            for i, after in enumerate(args.after):
                latency, how = interrupt_latency(server, encode_graph(args.interrupt_photos, i), after=after)
                print(f"  F2D Encode Identity, {args.interrupt_photos} photos, after {after:4.1f} s: "
                      f"{latency:6.2f}  ({how})")
            before, peak, seconds, how = peak_rss_while(server, encode_graph(args.memory_photos, 999))
            print(f"F2D Encode Identity on {args.memory_photos} photos (512x512): {how} in {seconds:.0f} s; "
                  f"server resident memory {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB; "
                  f"the input batch alone is {args.memory_photos * 512 * 512 * 3 * 4 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
