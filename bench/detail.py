"""What F2D Face Detail costs, in ComfyUI, measured in one run.

Times, as ratios of one run on this machine: a generation (F2D Sampler + VAE Decode at --size,
--steps) against F2D Face Detail on a picture of the same size holding --faces real faces (the
astronaut and Grace Hopper photos side by side; the tiny test UNet draws no face of its own). The
pass is split into finding + encoding the faces and the per-face resampling, and given per face.

    .venv/bin/python bench/detail.py [--checkpoint PATH] [--size 512] [--steps 20] [--faces 2] [--repeats 3]

Without --checkpoint it uses the tests' tiny SD1.x checkpoint (small UNet, full CLIP-L) on the CPU;
on a GPU machine the same script measures the real ratios with a real checkpoint.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from f2d_testkit import build_tiny_sd15_checkpoint, import_host, write_formula_weights  # noqa: E402


def picture(size: int, faces: int):
    import numpy as np
    import torch
    from PIL import Image

    names = ["astronaut.png", "grace_hopper.png"]
    side = size // faces
    tiles = [np.array(Image.open(ROOT / "workflows" / names[i % 2]).convert("RGB").resize((side, side)))
             for i in range(faces)]
    row = np.concatenate(tiles, 1)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[(size - side) // 2:(size - side) // 2 + side, :row.shape[1]] = row
    return torch.from_numpy(canvas).float()[None] / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="an SD1.x checkpoint (default: the tests' tiny one)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--faces", type=int, default=2, choices=[1, 2, 3, 4])
    ap.add_argument("--guide-size", type=int, default=512)
    ap.add_argument("--denoise", type=float, default=0.45)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_formula_weights(base / "models" / "face2diffusion", "msid", "pt")
        write_formula_weights(base / "models" / "face2diffusion", "mapping", "pt")
        nodes = import_host(base)
        import comfy.sd
        import comfy.utils
        import torch

        ckpt = args.checkpoint or build_tiny_sd15_checkpoint(base / "tiny_sd15.safetensors")
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True,
                                                                 output_clipvision=False)[:3]
        f2d = nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
        image = picture(args.size, args.faces)
        identity = nodes.F2DEncodeIdentity.execute(f2d, image, "auto", "largest", False).args[0]
        tokens = nodes.F2DExpressionGuidance.execute(f2d, identity, 1.0).args[0]
        latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
        prompt = "a photo of f l"

        def generate():
            out = nodes.F2DSampler.execute(model, clip, tokens, prompt, "blurry", latent, 1, args.steps, 7.0,
                                           "euler_ancestral", "normal", 1.0, "f l", 0.0, 1.0).args[0]
            vae.decode(out["samples"])

        marks = {}

        def hook(value, total, preview, node_id=None):
            # The first sampling step of the pass: finding and encoding the faces is done.
            if total == args.faces * args.steps and "sampling" not in marks:
                marks["sampling"] = time.perf_counter()

        def detail(faces="all"):
            nodes.F2DFaceDetail.execute(image, model, clip, vae, f2d, tokens, "a close-up photo of f l", "blurry",
                                        1, args.steps, 7.0, "euler_ancestral", "normal", args.denoise,
                                        args.guide_size, 2.0, 0.3, 4, 16, faces, "keep", "auto", "f l")

        comfy.utils.set_progress_bar_global_hook(hook)
        generate(), detail()  # warm-up: model loads, caches
        gen, det, find = [], [], []
        for _ in range(args.repeats):  # taking turns, so that drift hits both alike
            t = time.perf_counter()
            generate()
            gen.append(time.perf_counter() - t)
            marks.clear()
            t = time.perf_counter()
            detail()
            det.append(time.perf_counter() - t)
            find.append(marks.get("sampling", time.perf_counter()) - t)
        g, d, f = statistics.median(gen), statistics.median(det), statistics.median(find)
        per_face = (d - f) / args.faces
        print(f"checkpoint: {'tiny test UNet (CPU)' if args.checkpoint is None else args.checkpoint}; "
              f"{args.size}x{args.size}, {args.steps} steps, {args.faces} face(s), guide {args.guide_size}, "
              f"denoise {args.denoise}")
        print(f"generation (F2D Sampler + decode): 1.00  ({g:.2f} s)")
        print(f"face detail, whole pass:           {d / g:.2f}  ({d:.2f} s)")
        print(f"  finding + encoding the faces:    {f / g:.2f}")
        print(f"  per face (crop, sample, paste):  {per_face / g:.2f}")
        print(f"share of generation + pass taken by the pass: {d / (g + d):.0%}")


if __name__ == "__main__":
    main()
