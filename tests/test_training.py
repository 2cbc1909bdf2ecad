"""The shapes data set, its scorer and the training loop (tiny runs on CPU)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from webui.training import scoring, shapes
from webui.training.loop import STATE_FILE, TrainConfig, Trainer

TINY = TrainConfig(seed=5, vae_steps=3, vae_batch=2, vae_crop=16, decoder_steps=2, decoder_batch=2, latent_samples=12,
                   unet_steps=4, batch=3, warmup=2, save_every=2, layout_from=2)  # steps 2-3: layout stage


def test_samples_are_deterministic_and_captioned():
    a, b = shapes.sample(7, 42), shapes.sample(7, 42)
    assert a[0] == b[0] and a[1] == b[1]
    assert np.array_equal(np.asarray(a[2]), np.asarray(b[2]))
    assert a[2].size == (64, 64) and a[2].mode == "RGB"
    scene, text, _ = a
    for word in (scene.colour, scene.shape, scene.background, shapes.POSITIONS[scene.position][0]):
        assert word in text
    assert shapes.sample(7, 43)[1] != text or shapes.sample(7, 43)[0] != scene


def test_canonical_caption():
    scene = shapes.Scene("circle", "red", "blue", "left", "small")
    assert shapes.caption(scene) == "a small red circle on the left, blue background"


def test_held_out_combinations_never_appear_in_training():
    held = {s.combination() for s in shapes.eval_scenes()}
    assert 50 <= len(held) <= 120  # about a tenth of 3 shapes x 8 colours x 7 backgrounds x 5 positions
    for i in range(400):
        assert shapes.sample(1, i)[0].combination() not in held
        assert shapes.sample(1, i, split="eval")[0].combination() in held
    with pytest.raises(ValueError, match="split"):
        shapes.sample(1, 0, split="test")


def test_scorer_reads_rendered_scenes_exactly():
    rng = random.Random(0)
    for _ in range(300):
        scene = shapes.random_scene(rng)
        reading = scoring.read_image(shapes.render(scene, rng))
        assert all(scoring.score(scene, reading).values()), (scene, reading)


def test_scorer_on_an_empty_picture():
    reading = scoring.read_image(Image.new("RGB", (64, 64), shapes.COLOURS["green"]))
    assert reading.background == "green" and reading.shape is None and reading.colour is None
    assert not scoring.score(shapes.Scene("circle", "red", "green", "left", "large"), reading)["colour"]


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in (("unet", trainer.components.unet), ("vae", trainer.components.vae),
                         ("text", trainer.components.text_encoders[0])):
        out.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.items()})
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-full")
    trainer = Trainer(TINY, folder)
    losses = []
    trainer.run(lambda p: losses.append((p.phase, p.step, p.loss)))
    return trainer, losses


def test_training_runs_both_phases_and_is_deterministic(finished, tmp_path):
    trainer, losses = finished
    assert trainer.phase == "done"
    assert [(p, s) for p, s, _ in losses] == [("vae", 1), ("vae", 2), ("vae", 3), ("decoder", 1), ("decoder", 2),
                                              ("unet", 1), ("unet", 2), ("unet", 3), ("unet", 4)]
    assert all(np.isfinite(loss) for *_, loss in losses)
    again = Trainer(TINY, tmp_path)
    again.run()
    first, second = _weights(trainer), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resumed_training_equals_uninterrupted(finished, tmp_path):
    partial = Trainer(TINY, tmp_path)
    partial.run(stop_after=7)  # 3 VAE steps, 2 decoder steps, then 2 U-Net steps (saved at step 2)
    assert (partial.phase, partial.step) == ("unet", 2)
    resumed = Trainer(TINY, tmp_path)
    assert resumed.load() and (resumed.phase, resumed.step) == ("unet", 2)
    resumed.run()
    expected, got = _weights(finished[0]), _weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_refuses_other_settings(finished, tmp_path):
    Trainer(TINY, tmp_path).save()
    other = TrainConfig(**{**TINY.__dict__, "lr": 0.5})
    with pytest.raises(ValueError, match="other settings"):
        Trainer(other, tmp_path).load()
    assert (tmp_path / STATE_FILE).exists()


def test_decoder_phase_leaves_the_encoder_alone(tmp_path):
    trainer = Trainer(TINY, tmp_path)
    trainer.run(stop_after=3)
    assert (trainer.phase, trainer.step) == ("decoder", 0)
    encoder = {k: v.clone() for k, v in trainer.components.vae.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in trainer.components.vae.decoder.state_dict().items()}
    trainer.run(stop_after=2)
    assert trainer.phase == "unet"
    assert all(torch.equal(v, trainer.components.vae.encoder.state_dict()[k]) for k, v in encoder.items())
    assert not all(torch.equal(v, trainer.components.vae.decoder.state_dict()[k]) for k, v in decoder.items())


def test_latent_statistics_are_folded_into_the_vae(finished):
    trainer, _ = finished
    vae, scale = trainer.components.vae, trainer.components.vae_scaling_factor
    x = torch.from_numpy(np.stack([shapes.to_tensor_array(shapes.sample(TINY.seed + 1, i)[2]) for i in range(64)]))
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * scale
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_exported_checkpoint_loads_and_generates(finished, tmp_path):
    from webui.models.loader import load_components

    trainer, _ = finished
    path = trainer.export(tmp_path / "shapes.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["webui.builtin"] == "shapes-64"
        assert "webui.latent_rgb" in f.metadata()
        assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in f.keys())
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    loaded = load_components(path)
    assert loaded.spec.family == "sd1"
    assert loaded.unet.config.block_out_channels == [64, 128]
    assert loaded.latent_rgb is not None and len(loaded.latent_rgb[0]) == 4  # its own cheap-preview map
    ema_out = trainer.ema["unet.conv_out.weight"]
    assert torch.allclose(loaded.unet.state_dict()["conv_out.weight"].float(), ema_out, atol=1e-3)


def test_a_run_can_start_from_a_checkpoint_at_another_size(finished, tmp_path):
    """``init_from`` copies the checkpoint's weights and skips the VAE phase; ``image_size`` sets the pictures."""
    from safetensors import safe_open

    from webui.models.loader import load_components

    source = finished[0].export(tmp_path / "source.safetensors")
    config = TrainConfig(**{**TINY.__dict__, "init_from": str(source), "image_size": 96, "decoder_steps": 1,
                            "latent_samples": 6, "unet_steps": 2})
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.phase == "decoder"
    expected = load_components(source)
    for mine, theirs in ((trainer.components.unet, expected.unet), (trainer.components.vae, expected.vae),
                         (trainer.components.text_encoders[0], expected.text_encoders[0])):
        theirs_state = theirs.state_dict()
        assert all(torch.equal(v, theirs_state[k]) for k, v in mine.state_dict().items())
    steps = []
    trainer.run(lambda p: steps.append((p.phase, p.step)))
    assert steps == [("decoder", 1), ("unet", 1), ("unet", 2)]
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "run" / "latents.safetensors"))["latents"].shape == (6, 4, 12, 12)
    with safe_open(str(trainer.export(tmp_path / "out.safetensors")), framework="pt") as f:
        assert f.metadata()["webui.native_size"] == "96"
        assert f.metadata()["webui.builtin"] == "shapes-96"
    assert shapes.sample(5, 3, size=96)[2].size == (96, 96)
    assert shapes.sample(5, 3, size=96)[:2] == shapes.sample(5, 3)[:2]  # the scene does not depend on the size


def test_export_refuses_an_unfinished_run(tmp_path):
    with pytest.raises(RuntimeError, match="not finished"):
        Trainer(TINY, tmp_path).export(tmp_path / "x.safetensors")


def test_until_stops_the_diffusion_phase_and_exports_it(tmp_path):
    from safetensors import safe_open

    trainer = Trainer(TINY, tmp_path)
    trainer.run(until=3)
    assert (trainer.phase, trainer.step) == ("unet", 3)
    resumed = Trainer(TINY, tmp_path)
    assert resumed.load() and resumed.step == 3  # the stop was saved although 3 is not a save step
    path = resumed.export(tmp_path / "partial.safetensors", partial=True)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["webui.training_step"] == "unet 3"


def test_multires_noise_is_unit_variance_with_coarse_structure():
    from webui.training.loop import multires_noise

    shape = torch.Size([256, 4, 8, 8])
    a = multires_noise(shape, torch.Generator().manual_seed(1), 0.5, 3)
    b = multires_noise(shape, torch.Generator().manual_seed(1), 0.5, 3)
    white = multires_noise(shape, torch.Generator().manual_seed(1), 0.5, 0)
    assert torch.equal(a, b)
    assert torch.allclose(a.std(dim=(1, 2, 3)), torch.ones(256), atol=1e-5)
    # the per-image mean (the coarsest component) varies much more than for white noise
    assert a.mean(dim=(2, 3)).std() > 1.5 * white.mean(dim=(2, 3)).std()  # 0.235 vs 0.125 (1/8)


def test_layout_weights_turn_the_noise_loss_into_an_image_loss():
    from webui.models.components import scaled_linear_alphas_cumprod
    from webui.training.loop import layout_weights

    alphas = scaled_linear_alphas_cumprod()
    snr = alphas / (1 - alphas)
    w = layout_weights(snr, 700, 200.0)
    assert w[700:].mean().item() == pytest.approx(1.0)
    # uncapped part: w * snr is constant, i.e. weighted eps error == const * x0 error
    product = (w * snr)[300:800]
    assert torch.allclose(product, product[0].expand_as(product), rtol=1e-4)
    assert torch.isclose(w[999] / w[700], 200.0 * snr[700], rtol=1e-4)  # the cap binds at the noisiest end


def test_layout_stage_draws_most_of_each_batch_from_high_noise(tmp_path, monkeypatch):
    config = TrainConfig(**{**TINY.__dict__, "batch": 4, "layout_t_min": 900})
    trainer = Trainer(config, tmp_path)
    seen: list[list[int]] = []
    unet = trainer.components.unet
    original = unet.forward

    def recording(sample, timestep, *args, **kwargs):
        seen.append(timestep.tolist())
        return original(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", recording)
    trainer.run()
    assert len(seen) == config.unet_steps
    before, after = seen[:config.layout_from], seen[config.layout_from:]
    n_layout = round(config.batch * config.layout_fraction)  # 3 of 4
    assert n_layout == 3 and all(all(t >= 900 for t in step[:n_layout]) for step in after)
    # before the layout stage timesteps are uniform: with 6 draws over 0..999, not all in the top tenth
    assert not all(t >= 900 for step in before for t in step[:n_layout])


def test_class_words_pick_the_batch_tails_and_train_them_in_their_band(tmp_path, monkeypatch):
    """``class_fraction`` 0.5 of a batch of 4 with ``class_words=("small square", "triangle")``: the last two pictures
    of every step are small squares (both words) or triangles, at timesteps in ``[100, 200)``."""
    config = TrainConfig(**{**TINY.__dict__, "batch": 4, "class_fraction": 0.5, "latent_samples": 48,
                            "class_words": ("small square", "triangle"), "class_t_min": 100, "class_t_max": 200,
                            "layout_fraction": 0.25})
    trainer = Trainer(config, tmp_path)
    tokenizer = trainer.components.tokenizers[0]
    small, square, triangle = tokenizer.convert_tokens_to_ids(["small</w>", "square</w>", "triangle</w>"])
    captions: list[list[set[int]]] = []
    timesteps: list[list[int]] = []
    text, unet = trainer.components.text_encoders[0], trainer.components.unet
    text_forward, unet_forward = text.forward, unet.forward

    def record_text(input_ids, *args, **kwargs):
        captions.append([set(row.tolist()) for row in input_ids])
        return text_forward(input_ids, *args, **kwargs)

    def record_unet(sample, timestep, *args, **kwargs):
        timesteps.append(timestep.tolist())
        return unet_forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(text, "forward", record_text)
    monkeypatch.setattr(unet, "forward", record_unet)
    trainer.run()
    steps = [row for row in captions if len(row) == 4]
    assert len(steps) == len(timesteps) == config.unet_steps
    tails = [tokens for row in steps for tokens in row[2:]]
    small_squares = sum({small, square} <= tokens for tokens in tails)
    triangles = sum(triangle in tokens for tokens in tails)
    # caption dropout may empty one; every other tail caption is a small square or a triangle, and both entries count
    assert small_squares + triangles >= len(tails) - 1 and small_squares and triangles, steps
    # the rest of the batch keeps the plain order (other pictures too)
    assert any(not {small, square} <= tokens and triangle not in tokens for row in steps for tokens in row[:2])
    assert all(100 <= t < 200 for step in timesteps for t in step[2:]), timesteps
    assert not all(100 <= t < 200 for step in timesteps for t in step[:2])
    with pytest.raises(ValueError, match="no cached training caption"):
        trainer._caption_pool(torch.zeros(3, 77, dtype=torch.int32), ("small square",))
    resumed = Trainer(config, tmp_path)  # the settings (with their tuple of words) read back equal
    assert resumed.load()


@pytest.mark.parametrize("band", [(500, 400), (-1, 10), (0, 1001), (7, 7)])
def test_class_band_must_lie_inside_the_schedule(band):
    with pytest.raises(ValueError, match="class_t_min"):  # at once, not after the VAE phase
        TrainConfig(**{**TINY.__dict__, "class_t_min": band[0], "class_t_max": band[1]})
    assert TrainConfig(class_t_min=999, class_t_max=1000).class_t_min == 999


def test_training_command_line_passes_class_words_and_band(tmp_path, monkeypatch):
    from webui.training import __main__ as cli

    seen: list[TrainConfig] = []

    class Recording:
        phase, step = "unet", 0

        def __init__(self, config, out):
            seen.append(config)

        def load(self):
            return False

        def run(self, progress=None, until=None):
            pass

    monkeypatch.setattr(cli, "Trainer", Recording)
    assert cli.main(["--out", str(tmp_path), "--class-fraction", "0.5", "--class-words", "small circle, small square",
                     "--class-t", "100:700"]) == 0
    assert seen[-1].class_words == ("small circle", "small square")
    assert (seen[-1].class_t_min, seen[-1].class_t_max, seen[-1].class_fraction) == (100, 700, 0.5)
    assert cli.main(["--out", str(tmp_path)]) == 0  # the defaults are TrainConfig's
    assert (seen[-1].class_words, seen[-1].class_t_min, seen[-1].class_t_max) == (("circle", "square"), 0, 1000)
    for bad in (["--class-t", "700"], ["--class-t", "a:b"], ["--class-t", "700:100"], ["--class-words", " , "]):
        with pytest.raises(SystemExit, match="--class"):
            cli.main(["--out", str(tmp_path), *bad])
