"""The training loop: CGDR with Expression Guidance, on accelerate (devices, mixed precision,
gradient accumulation, several GPUs with ``accelerate launch -m f2d train --config ...``).

Exact resume: every random draw of step ``s`` (which samples, noise, timesteps, which samples
use ``null_exp``) comes from a generator seeded with (seed, s, micro-batch, process), so a run
resumed from a checkpoint draws what the uninterrupted run drew; the checkpoint holds the mapping
weights and the optimizer state, nothing pickled beyond tensors and numbers.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..files import save_safetensors_atomic
from ..generate import encode_prompts
from ..mapping import MappingNetwork
from ..tokens import DEFAULT_IDENTIFIER
from ..weights import load_mapping, load_tensors
from ..detect import AlignedFaces
from ..identity import IdentityEncoder, IdentityTokens, encode_faces
from .data import FaceDataset
from .loss import cgdr_loss, mask_to_latent

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    base: str  # SD1.x diffusers folder or single-file checkpoint
    msid: str  # MSID weights (frozen)
    data: str  # manifest.jsonl (see f2d/train/data.py)
    output: str  # folder for checkpoints, samples, log and mapping.safetensors
    mapping_init: str | None = None  # start from these mapping weights (e.g. the official mapping.pt)
    resolution: int = 512
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 10000
    lr: float = 1e-5
    weight_decay: float = 0.0
    null_exp_prob: float = 0.1  # Expression Guidance: how often null_exp replaces the expression
    class_prompt: str = "a photo of a person"
    identifier: str = DEFAULT_IDENTIFIER
    insightface_roots: list[str] = field(default_factory=list)  # for sample_photo's face detection
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (GPU)
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    sample_every: int = 0  # 0: no sample images
    sample_photo: str | None = None
    sample_prompts: list[str] = field(default_factory=lambda: [f"a photo of {DEFAULT_IDENTIFIER} smiling"])
    sample_steps: int = 30

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path}: unknown settings {', '.join(unknown)}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**raw)


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator=None, pipeline=None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(cfg.output)
        self.acc = accelerator or Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                                              mixed_precision=cfg.mixed_precision)
        device = self.acc.device
        frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        if pipeline is None:
            from ..generate import load_pipeline

            pipeline = load_pipeline(cfg.base, device, frozen_dtype)
        self.pipeline = pipeline
        self.unet, self.vae, self.text_encoder = pipeline.unet, pipeline.vae, pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False).eval().to(device)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        # The frozen MSID, loaded as every front door loads it (the precision policy for this
        # device is applied there); the mapping network is the one trained here.
        self.encoder = IdentityEncoder.for_device(cfg.msid, None, device).requires_grad_(False)
        self.msid = self.encoder.msid  # frozen
        self.data = FaceDataset(cfg.data, cfg.resolution)
        # The MSID is frozen and its input fixed per sample: encode each face once, by the route.
        faces = np.stack([self.data.face(i) for i in range(len(self.data))])
        self.features = encode_faces(self.encoder, AlignedFaces(faces, [], []), chunk=16).to(device)
        if cfg.mapping_init:
            mapping = load_mapping(cfg.mapping_init)
        else:
            torch.manual_seed(cfg.seed)
            mapping = MappingNetwork()
        mapping.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(mapping.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.mapping, self.optimizer = self.acc.prepare(mapping, optimizer)
        self.step = 0
        with torch.no_grad():
            self.class_cond = encode_prompts(self.tokenizer, self.text_encoder, [cfg.class_prompt])

    # --- one step -------------------------------------------------------------------------------
    def _generator(self, step: int, micro: int) -> torch.Generator:
        seed = hash((self.cfg.seed, step, micro, self.acc.process_index)) % (2**63)
        return torch.Generator().manual_seed(seed)

    def batch(self, step: int, micro: int):
        g = self._generator(step, micro)
        idx = torch.randint(len(self.data), (self.cfg.batch_size,), generator=g).tolist()
        samples = [self.data[i] for i in idx]
        use_null = torch.rand(len(idx), generator=g) < self.cfg.null_exp_prob
        use_null |= torch.tensor([not s.has_expression for s in samples])
        return idx, samples, use_null, g

    def loss(self, idx, samples, use_null, g):
        device = self.acc.device
        images = torch.stack([s.image for s in samples]).to(device, self.vae.dtype)
        with torch.no_grad():
            dist = self.vae.encode(images).latent_dist
            latents = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device, dist.mean.dtype))
            latents = latents * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(device, latents.dtype)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        exp = torch.stack([s.expression for s in samples]).to(device)
        first, last = self.mapping(self.features[idx], exp, use_null.to(device))
        cond = encode_prompts(self.tokenizer, self.text_encoder, [s.prompt for s in samples], first, last,
                              self.cfg.identifier)
        eps = self.unet(noisy, t, cond.to(self.unet.dtype)).sample
        with torch.no_grad():
            eps_class = self.unet(noisy, t, self.class_cond.expand(len(idx), -1, -1).to(self.unet.dtype)).sample
        mask = mask_to_latent(torch.stack([s.mask for s in samples]), latents.shape[-2:]).to(device)
        return cgdr_loss(noise.float(), eps.float(), eps_class.float(), mask)

    def train_step(self) -> dict:
        totals = {"loss": 0.0, "face": 0.0, "background": 0.0}
        for micro in range(self.cfg.grad_accum):
            with self.acc.accumulate(self.mapping):
                result = self.loss(*self.batch(self.step, micro))
                self.acc.backward(result.total)
                self.optimizer.step()
                self.optimizer.zero_grad()
            for k, v in (("loss", result.total), ("face", result.face), ("background", result.background)):
                totals[k] += v.item() / self.cfg.grad_accum
        self.step += 1
        return totals

    # --- checkpoints, outputs -------------------------------------------------------------------
    def mapping_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.acc.unwrap_model(self.mapping).state_dict().items()}

    def save_mapping(self, path: Path) -> Path:
        """The mapping in the official key layout, loadable by F2D Load MSID."""
        return save_safetensors_atomic(path, self.mapping_state())

    def save_checkpoint(self) -> Path:
        folder = self.out / "checkpoints" / f"step-{self.step:07d}"
        if self.acc.is_main_process:
            self.save_mapping(folder / "mapping.safetensors")
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            (folder / "state.json").write_text(json.dumps({"step": self.step, "config": asdict(self.cfg)}, indent=1))
        self.acc.wait_for_everyone()
        return folder

    def resume(self, folder: str | Path) -> None:
        folder = Path(folder)
        state = json.loads((folder / "state.json").read_text())
        weights, _ = load_tensors(folder / "mapping.safetensors")
        self.acc.unwrap_model(self.mapping).load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        self.step = int(state["step"])

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.out / "checkpoints").glob("step-*/state.json"))
        return found[-1].parent if found else None

    def sample_images(self) -> list[Path]:
        from ..detect import get_detector
        from ..generate import GenerationSettings, generate
        from ..identity import encode_photos, load_photos

        cfg = self.cfg
        detector = get_detector("auto", insightface_roots=cfg.insightface_roots)
        try:
            identity = encode_photos(self.encoder, detector, load_photos([cfg.sample_photo]))
        finally:
            if hasattr(detector, "close"):
                detector.close()
        mapping = self.acc.unwrap_model(self.mapping)
        mapping.eval()
        with torch.no_grad():
            first, last = mapping(identity.mean.to(self.acc.device))
        mapping.train()
        paths = []
        for k, prompt in enumerate(cfg.sample_prompts):
            settings = GenerationSettings(prompt=prompt, steps=cfg.sample_steps, seed=cfg.seed,
                                          height=cfg.resolution, width=cfg.resolution, identifier=cfg.identifier)
            image = generate(self.pipeline, IdentityTokens(first, last), settings, progress=False)[0]
            path = self.out / "samples" / f"step-{self.step:07d}-{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(path)
        return paths

    def fit(self, resume: str | Path | None = None) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume == "latest":
            resume = self.latest_checkpoint()
        if resume:
            self.resume(resume)
            log.info("resumed from %s at step %d", resume, self.step)
        log_path = self.out / "log.jsonl"
        started = time.perf_counter()
        while self.step < cfg.max_steps:
            stats = self.train_step()
            if self.acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                stats = {"step": self.step, **stats, "lr": cfg.lr, "seconds": round(time.perf_counter() - started, 2)}
                with log_path.open("a") as f:
                    f.write(json.dumps(stats) + "\n")
                print(f"step {self.step}/{cfg.max_steps}  loss {stats['loss']:.5f}  (face {stats['face']:.5f}, "
                      f"background {stats['background']:.5f})", flush=True)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.sample_every and cfg.sample_photo and self.step % cfg.sample_every == 0 and self.acc.is_main_process:
                self.sample_images()
        final = self.out / "mapping.safetensors"
        if self.acc.is_main_process:
            self.save_mapping(final)
        return final


def evaluation_loss(trainer: Trainer, steps: int = 8, seed: int = 12345) -> float:
    """The loss on fixed draws (independent of training's draws), without updating anything."""
    total = 0.0
    with torch.no_grad():
        for s in range(steps):
            idx, samples, use_null, g = trainer.batch(seed + s, 0)
            total += trainer.loss(idx, samples, use_null, g).total.item()
    return total / steps


__all__ = ["TrainConfig", "Trainer", "evaluation_loss"]
