"""The training loop that makes the default model.

Two phases on the synthetic shapes data set (:mod:`webui.training.shapes`):

1. **VAE**: reconstruct 32x32 crops of the images (L1 + L2) through the 8x
   autoencoder, as a plain autoencoder with a little latent noise (it has no
   attention, so crops teach it most of what whole images need at a quarter
   of the cost).  Afterwards the latent statistics are folded into the VAE's
   ``quant_conv`` / ``post_quant_conv`` so that ``latent * 0.18215`` has zero
   mean and unit variance per channel, as SD 1.x pipelines assume.
2. **Decoder**: fine-tune the decoder on whole 64x64 images with the encoder
   frozen (so the latents stay what they are), as SD's own "ft-MSE" VAE did.
3. **Diffusion**, the loop of the original paper: take a sample, draw a
   timestep, draw noise, noise the latent, let the U-Net predict the noise
   from the caption's text-encoder states, L2 loss (min-SNR weighted), update.
   The text encoder is trained with the U-Net; 10 % of captions are dropped
   to the empty prompt so classifier-free guidance works.  An exponential
   moving average of the weights is what gets exported.
   From ``layout_from`` on (the *layout stage*) most of each batch comes
   from the high-noise band with an image-space loss: only there is the
   layout still open, so only there can the prompt's "on the left" be learned.

Everything random is drawn from generators seeded with ``(seed, phase,
step)`` and sample ``i`` of the data set depends only on ``(seed, i)``, so a
run is deterministic for a seed and a resumed run equals an uninterrupted one.
The whole state (weights, EMA, optimiser, phase, step) is one
``.safetensors`` file written atomically every ``save_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from webui.models.components import METADATA_KEY, TRAIN_STEPS, SDComponents
from webui.models.original_layout import save_single_file
from webui.training import shapes
from webui.training.architecture import build_components

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
LATENT_CACHE = "latents.safetensors"
LATENT_NOISE = 0.1  # decoder robustness: noise relative to the latent spread while training the VAE
LOGVAR_FLOOR = -30.0  # diffusers clamps the log-variance to [-30, 20]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults made the shipped default model."""

    seed: int = 0
    #: side of the training pictures in pixels (the latents are 1/8 of it)
    image_size: int = shapes.IMAGE_SIZE
    #: start from this single-file checkpoint (VAE, text encoder, U-Net) instead of random weights; the VAE
    #: phase is skipped. SD itself was trained this way: at 256x256 first, then fine-tuned at 512x512.
    init_from: str = ""
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    decoder_steps: int = 1000
    decoder_batch: int = 16
    decoder_lr: float = 5e-4
    latent_samples: int = 24576
    unet_steps: int = 5000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    multires_noise_discount: float = 0.5
    multires_noise_levels: int = 3
    layout_from: int = 2000
    layout_fraction: float = 0.75
    layout_t_min: int = 800
    layout_weight: float = 10.0
    layout_weight_cap: float = 200.0
    #: share of each diffusion batch drawn from the pictures whose caption names one of ``class_words`` (the
    #: shapes the model confuses), the rest as usual; 0 keeps the plain order
    class_fraction: float = 0.0
    #: an entry of several words ("small square") picks captions that hold all of them
    class_words: tuple[str, ...] = ("circle", "square")
    #: timesteps of those pictures are drawn from ``[class_t_min, class_t_max)``; the whole range keeps the plain
    #: draw (and the random stream of older runs)
    class_t_min: int = 0
    class_t_max: int = TRAIN_STEPS
    save_every: int = 250

    def __post_init__(self) -> None:
        if not 0 <= self.class_t_min < self.class_t_max <= TRAIN_STEPS:
            raise ValueError(f"class_t_min/class_t_max must satisfy 0 <= min < max <= {TRAIN_STEPS}, "
                             f"got {self.class_t_min}, {self.class_t_max}")


@dataclass
class Progress:
    """What a progress callback sees after every step."""

    phase: str
    step: int
    total: int
    loss: float


def _generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from a stable hash of ``key``."""
    digest = int.from_bytes(__import__("hashlib").sha256(repr(key).encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(digest & ((1 << 63) - 1))


def multires_noise(shape: torch.Size, gen: torch.Generator, discount: float, levels: int) -> torch.Tensor:
    """Gaussian noise plus upsampled coarser noise (``discount**i`` at 1/2**i size), unit variance per sample.

    The SD schedule leaves 7 % of the signal at its last step; on 8x8 latents that leak tells where the
    shape is, so a model trained on white noise learns layout from it instead of from the prompt and
    draws everything in the middle when sampling starts from pure noise. Coarse noise hides the leak.
    """
    noise = torch.randn(shape, generator=gen)
    for level in range(1, levels + 1):
        h, w = shape[-2] >> level, shape[-1] >> level
        if min(h, w) < 1:
            break
        coarse = torch.randn(*shape[:-2], h, w, generator=gen)
        noise = noise + discount**level * F.interpolate(coarse, size=shape[-2:], mode="bilinear", align_corners=False)
    return noise / noise.std(dim=tuple(range(1, len(shape))), keepdim=True)


def layout_weights(snr: torch.Tensor, t_min: int, cap: float) -> torch.Tensor:
    """Per-timestep weights on the noise-prediction loss that make it an image-space (x0) loss.

    ``|eps error|^2 = snr * |x0 error|^2``, so weighting by ``1/snr`` (capped) scores the image the
    prediction implies.  Normalised to mean 1 over ``t >= t_min``.  Only at high noise is the layout
    still undecided by the noisy latent; there, plain (min-SNR weighted) noise-prediction loss gives the
    prompt's "on the left" almost no say, and the model never learns it (see docs/training.md).
    """
    w = torch.clamp(1 / snr, max=cap)
    return w / w[t_min:].mean()


def _stack(images) -> torch.Tensor:
    """PIL images -> ``[N, 3, H, W]`` float32 in [-1, 1]."""
    return torch.from_numpy(np.stack([shapes.to_tensor_array(image) for image in images]))


def _images(seed: int, indices, size: int = shapes.IMAGE_SIZE) -> torch.Tensor:
    """Training images ``indices`` of data set ``seed`` (``size`` pixels square) as one VAE input batch."""
    return _stack(shapes.sample(seed, i, size=size)[2] for i in indices)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Owns the components, optimiser, EMA and state file of one training run."""

    def __init__(self, config: TrainConfig, out_dir: Path):
        self.config = config
        self.out_dir = Path(out_dir)
        self.components: SDComponents = build_components(config.seed)
        self.phase = "vae"
        if config.init_from:
            self._load_initial_weights(Path(config.init_from))
            self.phase = "decoder"
        self.step = 0
        self.ema: dict[str, torch.Tensor] = {}
        self.optimizer = self._make_optimizer()
        self.until: int | None = None

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def _trained(self) -> dict[str, torch.nn.Module]:
        c = self.components
        if self.phase == "vae":
            return {"vae": c.vae}
        if self.phase == "decoder":
            return {"vae.decoder": c.vae.decoder, "vae.post_quant_conv": c.vae.post_quant_conv}
        return {"unet": c.unet, "text": c.text_encoders[0]}

    def _load_initial_weights(self, path: Path) -> None:
        """Copy VAE, text encoder and U-Net from a checkpoint of the same architecture (float32)."""
        from webui.models.loader import load_components

        source = load_components(path)
        for name, module in self._modules().items():
            other = {"vae": source.vae, "unet": source.unet, "text": source.text_encoders[0]}[name]
            module.load_state_dict(other.state_dict())
        log.info("Started from the weights of %s", path)

    def _modules(self) -> dict[str, torch.nn.Module]:
        c = self.components
        return {"vae": c.vae, "unet": c.unet, "text": c.text_encoders[0]}

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for m in self._trained.values() for p in m.parameters()]
        lr = {"vae": self.config.vae_lr, "decoder": self.config.decoder_lr}.get(self.phase, self.config.lr)
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01 if self.phase == "unet" else 0.0)

    def save(self) -> Path:
        """Write the whole training state atomically."""
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self._modules().items():
            for key, value in module.state_dict().items():
                tensors[f"{name}.{key}"] = value.detach().contiguous().clone()
        for key, value in self.ema.items():
            tensors[f"ema.{key}"] = value.contiguous()
        opt = self.optimizer.state_dict()
        for index, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).contiguous().clone()
        metadata = {"phase": self.phase, "step": str(self.step),
                    "config": json.dumps(dataclasses.asdict(self.config)),
                    "param_groups": json.dumps(opt["param_groups"])}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        return path

    def load(self) -> bool:
        """Restore the state file if there is one; True when something was resumed."""
        path = self.out_dir / STATE_FILE
        if not path.exists():
            return False
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        def as_json(config: TrainConfig) -> dict:  # tuples read back as lists
            return json.loads(json.dumps(dataclasses.asdict(config)))

        defaults = as_json(TrainConfig())
        saved = {**{k: v for k, v in defaults.items() if k not in json.loads(metadata["config"])},
                 **json.loads(metadata["config"])}  # fields added later keep their defaults
        if saved != as_json(self.config):
            raise ValueError(f"{path} was written with other settings ({saved}); use another --out folder "
                             "or the same settings to resume")
        tensors = load_file(str(path))
        for name, module in self._modules().items():
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.phase, self.step = metadata["phase"], int(metadata["step"])
        self.ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.optimizer = self._make_optimizer()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        if state:
            self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        log.info("Resumed %s at %s step %d", path, self.phase, self.step)
        return True

    # -- phases --------------------------------------------------------------------------------------------
    def run(self, progress: Callable[[Progress], None] | None = None, *, stop_after: int | None = None,
            until: int | None = None) -> None:
        """Train until done (or for ``stop_after`` more steps, or up to diffusion step ``until``), saving as it goes."""
        self.until = until
        budget = stop_after if stop_after is not None else -1
        if self.phase == "vae":
            budget = self._vae_phase(progress, budget)
            if self.phase == "vae":
                return
        if self.phase == "decoder" and budget != 0:
            budget = self._decoder_phase(progress, budget)
            if self.phase == "decoder":
                return
        if self.phase == "unet" and budget != 0:
            self._unet_phase(progress, budget)

    def _vae_phase(self, progress: Callable[[Progress], None] | None, budget: int) -> int:
        cfg, vae = self.config, self.components.vae
        vae.train()
        while self.step < cfg.vae_steps and budget != 0:
            gen = _generator(cfg.seed, "vae", self.step)
            x = self._vae_batch(gen)
            z = vae.encode(x).latent_dist.mean
            z = z + LATENT_NOISE * z.detach().std() * torch.randn(z.shape, generator=gen)
            recon = vae.decode(z).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
            self._update(loss, _lr_factor(self.step, cfg.vae_steps, cfg.warmup) * cfg.vae_lr)
            budget -= 1
            self._after_step(progress, "vae", cfg.vae_steps, loss.item())
        if self.step >= cfg.vae_steps:
            vae.eval()
            self._normalise_latents()
            self.phase, self.step = "decoder", 0
            self.optimizer = self._make_optimizer()
            self.save()
        return budget

    def _decoder_phase(self, progress: Callable[[Progress], None] | None, budget: int) -> int:
        """Fine-tune the decoder on whole images with the encoder frozen (the latents do not change)."""
        cfg, vae = self.config, self.components.vae
        vae.decoder.train()
        while self.step < cfg.decoder_steps and budget != 0:
            gen = _generator(cfg.seed, "decoder", self.step)
            first = self.step * cfg.decoder_batch
            x = _images(cfg.seed, range(first, first + cfg.decoder_batch), cfg.image_size)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mean
            z = z + LATENT_NOISE * z.std() * torch.randn(z.shape, generator=gen)
            recon = vae.decode(z).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
            self._update(loss, _lr_factor(self.step, cfg.decoder_steps, cfg.warmup) * cfg.decoder_lr)
            budget -= 1
            self._after_step(progress, "decoder", cfg.decoder_steps, loss.item())
        if self.step >= cfg.decoder_steps:
            vae.eval()
            self.phase, self.step = "unet", 0
            self.optimizer = self._make_optimizer()
            self.ema = {}
            self.save()
        return budget

    def _vae_batch(self, gen: torch.Generator) -> torch.Tensor:
        """``vae_batch`` random crops (aligned to the 8-pixel latent grid) of training images."""
        cfg = self.config
        first, crop = self.step * cfg.vae_batch, cfg.vae_crop
        corners = torch.randint(0, (cfg.image_size - crop) // 8 + 1, (cfg.vae_batch, 2), generator=gen) * 8
        images = _images(cfg.seed, range(first, first + cfg.vae_batch), cfg.image_size)
        return torch.stack([image[:, top:top + crop, left:left + crop]
                            for image, (top, left) in zip(images, corners.tolist())])

    def _normalise_latents(self) -> None:
        """Fold per-channel mean/std of the latents into quant_conv and post_quant_conv (exact)."""
        cfg, vae = self.config, self.components.vae
        scale = self.components.vae_scaling_factor
        with torch.no_grad():
            x = _images(cfg.seed + 1, range(512), cfg.image_size)
            z = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
            mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
            c = std * scale  # new latent z' = (z - mean) / c, so z' * scale = (z - mean) / std
            channels = mean.numel()
            q = vae.quant_conv
            q.weight[:channels] /= c[:, None, None, None]
            q.bias[:channels] = (q.bias[:channels] - mean) / c
            q.weight[channels:] = 0  # trained as a plain autoencoder: sampling the posterior gives its mean
            q.bias[channels:] = LOGVAR_FLOOR
            p = vae.post_quant_conv  # p(z) = P (c z' + mean) + b
            p.bias += (p.weight[:, :, 0, 0] @ mean)
            p.weight *= c[None, :, None, None]
        log.info("Latent mean %s, std %s folded into the VAE", mean.tolist(), std.tolist())

    def _latent_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents and token ids of the first ``latent_samples`` training samples (cached on disk)."""
        cfg = self.config
        path = self.out_dir / LATENT_CACHE
        if path.exists():
            cached = load_file(str(path))
            if cached["latents"].shape[0] == cfg.latent_samples and cached["latents"].shape[-1] * 8 == cfg.image_size:
                return cached["latents"], cached["ids"]
        tokenizer = self.components.tokenizers[0]
        vae, scale = self.components.vae, self.components.vae_scaling_factor
        latents, ids = [], []
        chunk = 256
        for start in range(0, cfg.latent_samples, chunk):
            items = [shapes.sample(cfg.seed, i, size=cfg.image_size)
                     for i in range(start, min(start + chunk, cfg.latent_samples))]
            x = _stack(image for _, _, image in items)
            with torch.no_grad():
                latents.append(vae.encode(x).latent_dist.mean * scale)
            ids.append(tokenizer([text for _, text, _ in items], padding="max_length", max_length=77,
                                 truncation=True, return_tensors="pt").input_ids.to(torch.int32))
            log.info("Encoded %d / %d training images", start + len(items), cfg.latent_samples)
        result = torch.cat(latents).contiguous(), torch.cat(ids).contiguous()
        tmp = path.with_name(path.name + ".tmp")
        save_file({"latents": result[0], "ids": result[1]}, str(tmp))
        os.replace(tmp, path)
        return result

    def _unet_phase(self, progress: Callable[[Progress], None] | None, budget: int) -> None:
        cfg, c = self.config, self.components
        latents, ids = self._latent_cache()
        empty = c.tokenizers[0]("", padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
        alphas = c.alphas_cumprod
        snr = alphas / (1 - alphas)
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
        layout_weight = cfg.layout_weight * layout_weights(snr, cfg.layout_t_min, cfg.layout_weight_cap)
        n_layout = round(cfg.batch * cfg.layout_fraction)
        n_class = round(cfg.batch * cfg.class_fraction)
        class_pool = self._caption_pool(ids, cfg.class_words) if n_class else None
        band = (cfg.class_t_min, cfg.class_t_max)
        class_band = None if band == (0, TRAIN_STEPS) else band
        c.unet.train()
        c.text_encoders[0].train()
        n = latents.shape[0]
        last = cfg.unet_steps if self.until is None else min(cfg.unet_steps, self.until)
        while self.step < last and budget != 0:
            gen = _generator(cfg.seed, "unet", self.step)
            epoch, offset = divmod(self.step * cfg.batch, n)
            order = torch.randperm(n, generator=_generator(cfg.seed, "epoch", epoch))
            index = order[(offset + torch.arange(cfg.batch)) % n]
            if class_pool is not None:  # the last n_class places: pictures of the confused classes
                index[cfg.batch - n_class:] = class_pool[torch.randint(len(class_pool), (n_class,), generator=gen)]
            x0, tokens = latents[index], ids[index].long()
            tokens[torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout] = empty
            t = torch.randint(0, len(alphas), (cfg.batch,), generator=gen)
            per_sample = weight[t]
            if self.step >= cfg.layout_from and n_layout:
                # the layout stage: part of every batch comes from the high-noise band, with an image-space loss
                t[:n_layout] = torch.randint(cfg.layout_t_min, len(alphas), (n_layout,), generator=gen)
                per_sample[:n_layout] = layout_weight[t[:n_layout]]
            if class_band and n_class:  # the confused classes where their shape is drawn (min-SNR weights as usual)
                t[cfg.batch - n_class:] = torch.randint(*class_band, (n_class,), generator=gen)
                per_sample[cfg.batch - n_class:] = weight[t[cfg.batch - n_class:]]
            noise = multires_noise(x0.shape, gen, cfg.multires_noise_discount, cfg.multires_noise_levels)
            a = alphas[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            context = c.text_encoders[0](tokens)[0]
            predicted = c.unet(noisy, t, context).sample
            loss = (per_sample * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()
            self._update(loss, _lr_factor(self.step, cfg.unet_steps, cfg.warmup) * cfg.lr)
            self._update_ema()
            budget -= 1
            self._after_step(progress, "unet", cfg.unet_steps, loss.item())
        if self.step == last and last < cfg.unet_steps and self.step % cfg.save_every:
            self.save()  # stopped early on purpose: keep exactly this state
        if self.step >= cfg.unet_steps:
            self.phase = "done"
            self.save()

    # -- helpers -------------------------------------------------------------------------------------------
    def _caption_pool(self, ids: torch.Tensor, words: tuple[str, ...]) -> torch.Tensor:
        """Indices of the cached samples whose caption holds one of ``words`` (whole-word tokens).

        An entry of several words ("small square") matches a caption that holds every one of them.
        """
        tokenizer = self.components.tokenizers[0]
        ids = ids.long()
        matched = torch.zeros(len(ids), dtype=torch.bool)
        for entry in words:
            wanted = tokenizer.convert_tokens_to_ids([w + "</w>" for w in entry.split()])
            hits = torch.ones(len(ids), dtype=torch.bool)
            for token in wanted:
                hits &= (ids == token).any(dim=1)
            matched |= hits
        pool = torch.nonzero(matched).flatten()
        if len(pool) == 0:
            raise ValueError(f"no cached training caption names any of {list(words)}")
        return pool

    def _update(self, loss: torch.Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()

    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for name, module in self._trained.items():
                for key, value in module.state_dict().items():
                    full = f"{name}.{key}"
                    if full not in self.ema:
                        self.ema[full] = value.detach().clone()
                    else:
                        self.ema[full].lerp_(value.detach(), 1 - decay)

    def _after_step(self, progress: Callable[[Progress], None] | None, phase: str, total: int, loss: float) -> None:
        self.step += 1
        if progress is not None:
            progress(Progress(phase, self.step, total, loss))
        if self.step % self.config.save_every == 0 and self.step < total:
            self.save()

    def _fit_latent_rgb(self, c: SDComponents) -> dict[str, list]:
        """Least-squares linear map from scaled latents to 8x8-pooled RGB in [-1, 1] (the cheap live preview)."""
        cfg = self.config
        x = _images(cfg.seed + 2, range(256), cfg.image_size)
        with torch.no_grad():
            z = c.vae.encode(x).latent_dist.mean * c.vae_scaling_factor
        rgb = F.avg_pool2d(x, 8)
        inputs = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, 4), torch.ones(z.numel() // 4, 1)], dim=1)
        solution = torch.linalg.lstsq(inputs.double(), rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()).solution
        return {"factors": solution[:4].tolist(), "bias": solution[4].tolist()}

    # -- export --------------------------------------------------------------------------------------------
    def export(self, path: Path, *, dtype: torch.dtype = torch.float16, partial: bool = False) -> Path:
        """Save the (EMA) model as a single-file SD 1.x checkpoint in the original layout.

        ``partial=True`` exports an unfinished diffusion phase (to evaluate a run while it trains).
        """
        if self.phase != "done" and not (partial and self.phase == "unet" and self.ema):
            raise RuntimeError(f"training is not finished (phase {self.phase}, step {self.step})")
        c = build_components(self.config.seed)
        for name, module in self._modules().items():
            module_state = dict(module.state_dict())
            prefix = name + "."
            module_state.update({k[len(prefix):]: v for k, v in self.ema.items() if k.startswith(prefix)})
            {"vae": c.vae, "unet": c.unet, "text": c.text_encoders[0]}[name].load_state_dict(module_state)
        latent_rgb = self._fit_latent_rgb(c)
        c.to(dtype=dtype)
        size = self.config.image_size
        metadata = {"webui.builtin": f"shapes-{size}", "webui.native_size": str(size),
                    "webui.training_step": f"{self.phase} {self.step}",
                    METADATA_KEY: json.dumps(latent_rgb),
                    "webui.training": json.dumps(dataclasses.asdict(self.config)),
                    "modelspec.title": f"webui shapes demo ({size}x{size})"}
        path = Path(path)
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        save_single_file(c, tmp, metadata=metadata)
        os.replace(tmp, path)
        return path
