"""``python -m f2d``: command-line front door of the library.

    python -m f2d generate -i face.jpg -p "f l eating bread in front of the Eiffel Tower" \\
        --base sd15.safetensors --msid msid.pt --mapping mapping.pt -n 8 -o out.png
    python -m f2d encode -i face.jpg --msid msid.pt --mapping mapping.pt -o person.safetensors
    python -m f2d convert msid.pt msid.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from .detect import BACKENDS
from .precision import PRECISIONS
from .tokens import DEFAULT_IDENTIFIER
from .weights import WeightsError, convert


class CLIError(Exception):
    pass


def _cmd_convert(args: argparse.Namespace) -> int:
    kind = convert(args.input, args.output)
    print(f"{args.output}: wrote the {kind} weights as .safetensors")
    return 0


@contextmanager
def open_detector(backend: str, insightface_roots):
    """The chosen detector, closed afterwards (mediapipe holds native graphs, insightface sessions)."""
    from .detect import get_detector

    detector = get_detector(backend, insightface_roots=insightface_roots)
    try:
        yield detector
    finally:
        close = getattr(detector, "close", None)
        if close is not None:
            close()


def _identity_tokens(args: argparse.Namespace):
    """(tokens, identity vector or None, info) from --identity or from photos."""
    from .identity_file import load_identity

    if getattr(args, "identity", None):  # generate takes a saved identity; encode makes one
        return load_identity(args.identity)
    if not args.input:
        raise CLIError("give the person: -i PHOTO (one or more)"
                       + (" or --identity FILE" if hasattr(args, "identity") else ""))
    if not (args.msid and args.mapping):
        raise CLIError("encoding a photo needs the weights: --msid msid.pt --mapping mapping.pt")
    from .generate import pick_device
    from .identity import IdentityEncoder, encode_photos, load_photos, map_to_tokens

    photos = load_photos(args.input)
    device, _ = pick_device(args.device)
    encoder = IdentityEncoder.for_device(args.msid, args.mapping, device, args.precision)
    with open_detector(args.detector, args.insightface_root) as detector:
        identity = encode_photos(encoder, detector, photos, face=args.face, skip_faceless=args.skip_faceless,
                                 leave_out_unlike=args.leave_out_unlike)
    for line in identity.describe():  # each photo's face and report, notes, the detector
        print(_cli_words(line), file=sys.stderr)
    tokens = map_to_tokens(encoder, identity, info={"msid": Path(args.msid).name, "mapping": Path(args.mapping).name,
                                                    "precision": encoder.precision})
    return tokens, tokens.identity, tokens.info


def _cmd_encode(args: argparse.Namespace) -> int:
    from .identity_file import save_identity

    tokens, identity, info = _identity_tokens(args)
    path = save_identity(args.output, tokens, identity, {**info, "name": Path(args.output).stem})
    print(f"{path}: identity of {info.get('photos', '?')} photo(s)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from PIL.PngImagePlugin import PngInfo

    from .generate import GenerationSettings, generate, grid, load_pipeline, pick_device
    from .tokens import check_identifier, class_prompt

    prompts = [args.prompt] if args.prompt else []
    if args.prompts_file:
        prompts += [ln.strip() for ln in Path(args.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise CLIError(f"give a prompt: -p \"a photo of {DEFAULT_IDENTIFIER} ...\" or --prompts-file FILE")
    check_identifier(args.identifier)
    for p in prompts:
        class_prompt(p, args.identifier)  # every prompt names the person, before any model loads
    tokens, identity, info = _identity_tokens(args)
    device, dtype = pick_device(args.device)
    pipe = load_pipeline(args.base, device, dtype, args.scheduler, args.config)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for k, prompt in enumerate(prompts):
        s = GenerationSettings(prompt=prompt, negative=args.negative, n=args.n, steps=args.steps, cfg=args.cfg,
                               seed=args.seed + k, height=args.height, width=args.width,
                               identity_start=args.identity_start, identifier=args.identifier)
        images = generate(pipe, tokens, s, progress=not args.quiet)
        params = {**vars(s), "base": str(args.base), "scheduler": args.scheduler, "identity": info,
                  "generator": "Face2Diffusion (python -m f2d generate)"}
        if args.detail:
            images = _detail(args, pipe, images, tokens, identity, s)
            params["detail"] = {"denoise": args.detail_denoise, "steps": args.detail_steps,
                                "prompt": _detail_prompt(args)}
        meta = PngInfo()
        meta.add_text("parameters", json.dumps(params, sort_keys=True, default=str))
        stem = out.stem if len(prompts) == 1 else f"{out.stem}-{k:02d}"
        grid_path = out.with_name(stem + out.suffix)
        grid(images).save(grid_path, pnginfo=meta)
        for i, im in enumerate(images):
            im.save(out.with_name(f"{stem}-{i:02d}{out.suffix}"), pnginfo=meta)
        print(f"{grid_path}: {len(images)} image(s) for {prompt!r}")
    return 0


def _detail_prompt(args: argparse.Namespace) -> str:
    return args.detail_prompt or f"a close-up photo of {args.identifier}, detailed face"


def _detail(args: argparse.Namespace, pipe, images, tokens, identity, s):
    """The face-detail pass (f2d/detail.py) on the generated images; one line per face on stderr."""
    from .generate import detail_images, pick_device
    from .identity import IdentityEncoder

    encoder = None
    if args.msid and args.mapping:  # encodes the generated faces (the similarity in the notes)
        encoder = IdentityEncoder.for_device(args.msid, args.mapping, pick_device(args.device)[0], args.precision)
    with open_detector(args.detector, args.insightface_root) as detector:
        images, notes = detail_images(pipe, images, tokens, identity, detector, encoder, _detail_prompt(args),
                                      negative=s.negative, steps=args.detail_steps, denoise=args.detail_denoise,
                                      cfg=s.cfg, seed=s.seed, identifier=s.identifier, progress=not args.quiet)
    for line in notes:
        print(f"detail: {line}", file=sys.stderr)
    return images


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.trainer import TrainConfig, Trainer

    cfg = TrainConfig.load(args.config)
    final = Trainer(cfg).fit(resume=args.resume)
    print(f"{final}: trained mapping network (loads in F2D Load MSID)")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .train.data import prepare

    with open_detector(args.detector, args.insightface_root) as detector:
        manifest = prepare(Path(args.images), Path(args.out), args.prompt, detector)
    print(f"{manifest}: {len(manifest.read_text().splitlines())} sample(s)")
    return 0


def _person_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", action="append", default=[], metavar="PHOTO",
                   help="a photo of the person (repeat for several: their identities are averaged)")
    p.add_argument("--msid", help="MSID encoder weights (msid.pt or .safetensors)")
    p.add_argument("--mapping", help="mapping network weights (mapping.pt or .safetensors)")
    p.add_argument("--detector", default="auto", choices=BACKENDS)
    p.add_argument("--insightface-root", action="append", default=[], metavar="DIR",
                   help="folder holding models/<pack>/*.onnx (antelopev2 or buffalo_l)")
    p.add_argument("--face", default="largest", help="'largest' or the n-th face from the left (0 = leftmost)")
    p.add_argument("--skip-faceless", dest="skip_faceless", action="store_true",
                   help="leave photos without a face out (with a warning) instead of stopping")
    p.add_argument("--leave-out-unlike", dest="leave_out_unlike", action="store_true",
                   help="with 3 or more photos: leave out photos whose identity is unlike the others' "
                        "(another person or a bad crop; the report flags them either way)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (fp16 on GPUs)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="the MSID's attention/MLP precision; auto: fp32 on CPUs, on GPUs the mode measured "
                        "fastest within 1e-4 of fp32 (bf16 on a CPU with AVX512-BF16: ~1.8x faster, "
                        "tokens ~3e-4 off; norms and mapping always fp32)")


# The library's messages name the nodes' options; here they are the command's flags.
_CLI_WORDS = {
    "; to go on without an identity, turn on allow_no_face": "",  # no such flag: an identity is the point
    "turn on skip_faceless": "add --skip-faceless",
    "turn on leave_out_unlike": "add --leave-out-unlike",
}


def _cli_words(message: str) -> str:
    for node_words, flag in _CLI_WORDS.items():
        message = message.replace(node_words, flag)
    return message


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m f2d", description="Face2Diffusion tools.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="images of a person from a photo and a prompt (diffusers)",
                       description="Generate images of the person in PHOTO. Defaults follow the official release "
                                   "(Euler ancestral, 30 steps, guidance 7).")
    _person_args(g)
    g.add_argument("--identity", help="an identity file (from `encode` or F2D Save Identity) instead of -i")
    g.add_argument("-p", "--prompt", help=f"the prompt, with the identifier where the person goes: '{DEFAULT_IDENTIFIER} ...'")
    g.add_argument("--prompts-file", help="one prompt per line (each gets its own grid)")
    g.add_argument("--base", required=True, help="SD1.x checkpoint (.safetensors/.ckpt) or diffusers folder")
    g.add_argument("--config", help="for a single-file --base without a network: a diffusers SD1.5 folder or "
                                    "repo id in the local cache, for its configs")
    g.add_argument("-n", type=int, default=1, help="images per prompt")
    g.add_argument("-o", "--output", default="out.png", help="grid file; images go beside it as NAME-00.png, ...")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--cfg", type=float, default=7.0)
    g.add_argument("--scheduler", default="euler_a", choices=["euler_a", "euler", "ddim", "dpmpp_2m"])
    g.add_argument("--negative", default="")
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--identity-start", type=float, default=0.0,
                   help="fraction of steps that use 'a person' before the identity")
    g.add_argument("--identifier", default=DEFAULT_IDENTIFIER)
    g.add_argument("--detail", action="store_true",
                   help="then re-do every face at 512 px with the person's identity (the F2D Face Detail pass)")
    g.add_argument("--detail-denoise", type=float, default=0.45, help="how much of each face is redrawn (0-1)")
    g.add_argument("--detail-steps", type=int, default=20, help="sampling steps of the face pass's schedule")
    g.add_argument("--detail-prompt", help=f"prompt for the face crops (default 'a close-up photo of "
                                           f"{DEFAULT_IDENTIFIER}, detailed face')")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)

    e = sub.add_parser("encode", help="encode a person once into an identity file",
                       description="Detect, align and encode the face(s) into an identity file, the format of the "
                                   "ComfyUI nodes F2D Save Identity / F2D Load Identity.")
    _person_args(e)
    e.add_argument("-o", "--output", required=True, help="identity file (.safetensors)")
    e.set_defaults(func=_cmd_encode, identity=None)

    t = sub.add_parser("train", help="train the mapping network (CGDR + Expression Guidance)",
                       description="Train the mapping network on a manifest of faces (f2d/train/data.py) with the "
                                   "paper's objective. Several GPUs: accelerate launch -m f2d train --config ...")
    t.add_argument("--config", required=True, help="a .json or .yaml file of TrainConfig settings")
    t.add_argument("--resume", help="a checkpoint folder, or 'latest' in the output folder")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("prepare-data", help="a training manifest from a folder of photos",
                       description="Detect and align the face in each photo, draw a face mask from the detection, "
                                   "and write manifest.jsonl (expressions left empty: add them from a 3D face model).")
    d.add_argument("--images", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--prompt", default=f"a photo of {DEFAULT_IDENTIFIER}")
    d.add_argument("--detector", default="auto", choices=BACKENDS)
    d.add_argument("--insightface-root", action="append", default=[], metavar="DIR",
                   help="folder holding models/<pack>/*.onnx (antelopev2 or buffalo_l)")
    d.set_defaults(func=_cmd_prepare)

    c = sub.add_parser(
        "convert",
        help="convert an official msid.pt / mapping.pt to .safetensors",
        description="Read a .pt checkpoint without running code (weights only), check that it is "
        "an F2D MSID encoder or mapping network, and write it as .safetensors.",
    )
    c.add_argument("input", help="msid.pt or mapping.pt")
    c.add_argument("output", help="destination .safetensors file")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .align import AlignmentError
    from .detect import DetectorUnavailable
    from .tokens import IdentifierError

    try:
        return args.func(args)
    except (CLIError, WeightsError, IdentifierError, DetectorUnavailable, AlignmentError, OSError,
            ValueError) as e:  # ValueError: NoFaceError, identity files, settings
        print("error: " + _cli_words("; ".join(str(e).splitlines())), file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e}. `generate` needs diffusers: pip install diffusers transformers", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
