"""Textual inversion for users (issue 22): A1111's create/train embedding routes on the built-in model.

References: A1111's ``LearnRateScheduler`` rules and ``create_embedding`` initialisation (restated from
``modules/textual_inversion/learn_schedule.py`` and ``textual_inversion.py``), its API answers
(``create embedding filename: ...``, ``train embedding complete: filename: ... error: None``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import api_only, make_settings, square_pictures
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import load_file

from webui.finetune.lr_schedule import LearnRateSchedule
from webui.jobs import Job


def test_learn_rate_schedule_follows_a1111():
    s = LearnRateSchedule.parse("0.005:100, 1e-3:1000, 1e-5", 2000)
    assert [s.rate_at(k) for k in (0, 99, 100, 999, 1000, 1999)] == [0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]
    assert s.rate_at(2000) is None
    resumed = LearnRateSchedule.parse("0.005:100, 1e-3:1000, 1e-5", 2000, start_step=150)
    assert resumed.pairs == ((1e-3, 1000), (1e-5, 2000))
    assert LearnRateSchedule.parse("0.1:5000, 0.2", 100).pairs == ((0.1, 100),)  # cut at the last step, list ends
    assert LearnRateSchedule.parse("1e-3:-1, 0.5", 30).pairs == ((1e-3, 30),)
    assert LearnRateSchedule.parse(0.004, 10).pairs == ((0.004, 10),)
    for bad in ("abc", "0.1:x", "", "0.1:1:2", "-1"):
        with pytest.raises(ValueError, match="learning rate schedule"):
            LearnRateSchedule.parse(bad, 100)


@pytest.fixture(scope="module")
def train_ctx(tmp_path_factory):
    """A context on the built-in shapes model with its own models folder, and a small picture folder: an
    orange square (a colour the model does not know) with captions, plus one broken file."""
    from webui.context import build_context

    models = tmp_path_factory.mktemp("models")
    (models / "Stable-diffusion").mkdir()
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    data = tmp_path_factory.mktemp("pictures")
    square_pictures(data, [(8, 8), (24, 8), (8, 24), (24, 24), (16, 16), (12, 20)], (255, 140, 0),
                    "a square, white background")
    (data / "notes.png").write_bytes(b"not an image")
    return ctx, data


def _client(ctx):
    from webui.server import create_app

    return TestClient(create_app(api_only(ctx)))


def test_create_embedding_as_a1111_and_usable_at_once(train_ctx):
    ctx, _ = train_ctx
    client = _client(ctx)
    r = client.post("/sdapi/v1/create/embedding", json={"name": "tangerine", "num_vectors_per_token": 3,
                                                        "init_text": "red square", "overwrite_old": False})
    assert r.status_code == 200, r.text
    path = ctx.settings.model_dir("embeddings") / "tangerine.safetensors"
    assert r.json() == {"info": f"create embedding filename: {path}"}
    vectors = load_file(str(path))["emb_params"]
    c = ctx.models.current.components
    ids = c.tokenizers[0]("red square", add_special_tokens=False)["input_ids"]
    table = c.text_encoders[0].get_input_embeddings().weight.detach()
    # A1111: vector i is the init text's token i * n_tokens // n_vectors
    expected = torch.stack([table[ids[i * len(ids) // 3]] for i in range(3)])
    assert vectors.shape == (3, table.shape[1]) and torch.equal(vectors, expected.float())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["step"] == "0"
    again = client.post("/sdapi/v1/create/embedding", json={"name": "tangerine"})
    assert again.status_code == 422 and "name" in again.text and "already exists" in again.text
    replaced = client.post("/sdapi/v1/create/embedding", json={"name": "tangerine", "overwrite_old": True})
    assert replaced.status_code == 200
    assert client.post("/sdapi/v1/create/embedding", json={"name": "../x"}).status_code == 422
    assert "tangerine" in client.get("/sdapi/v1/embeddings").json()["loaded"]
    gen = client.post("/sdapi/v1/txt2img", json={"prompt": "a tangerine square", "steps": 2, "width": 64,
                                                 "height": 64, "save_images": False})
    assert gen.status_code == 200 and "TI hashes: " in gen.json()["info"]


def test_train_embedding_through_the_api(train_ctx):
    ctx, data = train_ctx
    client = _client(ctx)
    assert client.post("/sdapi/v1/create/embedding", json={"name": "orangeish", "init_text": "blue"}).status_code == 200
    path = ctx.settings.model_dir("embeddings") / "orangeish.safetensors"
    before = load_file(str(path))["emb_params"]
    body = {"id_task": "task(x)", "embedding_name": "orangeish", "learn_rate": "0.02", "batch_size": 2,
            "gradient_step": 1, "data_root": str(data), "log_directory": "textual_inversion", "training_width": 64,
            "training_height": 64, "steps": 6, "clip_grad_mode": "norm", "clip_grad_value": "1.0",
            "latent_sampling_method": "deterministic", "create_image_every": 3, "save_embedding_every": 3,
            "template_filename": "subject_filewords.txt", "preview_from_txt2img": False}
    r = client.post("/sdapi/v1/train/embedding", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"info": f"train embedding complete: filename: {path} error: None"}
    after = load_file(str(path))["emb_params"]
    assert after.shape == before.shape and not torch.equal(after, before) and torch.isfinite(after).all()
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["step"] == "6"
    logs = list((ctx.settings.data_dir / "textual_inversion").rglob("*"))
    names = {p.name for p in logs}
    assert {"orangeish-3.safetensors", "orangeish-6.safetensors", "orangeish-3.png", "train.json"} <= names
    # bad input: 422 naming the field, nothing trained
    for bad, field in (({"data_root": str(data / "nope")}, "data_root"), ({"template_filename": "x.txt"},
                       "template_filename"), ({"embedding_name": "missing"}, "embedding_name"),
                       ({"latent_sampling_method": "sometimes"}, "latent_sampling_method"),
                       ({"learn_rate": "fast"}, "learn_rate"), ({"batch_size": "two"}, "batch_size"),
                       ({"min_snr_gamma": -1}, "min_snr_gamma")):
        resp = client.post("/sdapi/v1/train/embedding", json={**body, **bad})
        assert resp.status_code == 422 and field in resp.text, (bad, resp.text)
    assert torch.equal(load_file(str(path))["emb_params"], after)


def test_resume_is_bit_exact_and_interrupt_leaves_a_loadable_file(train_ctx, tmp_path):
    from webui.finetune.textual_inversion import TrainEmbeddingParams, create_embedding, train_embedding

    ctx, data = train_ctx
    model = ctx.models.current
    params = dict(learn_rate="0.05:3, 0.01", batch_size=2, data_root=str(data), training_width=64,
                  training_height=64, template_filename="subject", save_embedding_every=0, create_image_every=0,
                  latent_sampling_method="random", shuffle_tags=True, seed=7)
    for name in ("straight", "resumed"):
        create_embedding(model.components, tmp_path, name, num_vectors_per_token=2, init_text="square")
    train_embedding(model, tmp_path, TrainEmbeddingParams("straight", steps=5, **params), Job(kind="t"),
                    log_root=tmp_path / "logs")
    first = train_embedding(model, tmp_path, TrainEmbeddingParams("resumed", steps=2, **params), Job(kind="t"),
                            log_root=tmp_path / "logs")
    assert first.step == 2
    train_embedding(model, tmp_path, TrainEmbeddingParams("resumed", steps=5, **params), Job(kind="t"),
                    log_root=tmp_path / "logs")
    straight = load_file(str(tmp_path / "straight.safetensors"))["emb_params"]
    resumed = load_file(str(tmp_path / "resumed.safetensors"))["emb_params"]
    assert torch.equal(straight, resumed)

    create_embedding(model.components, tmp_path, "stopped", init_text="square")

    class StopAfterTwo(Job):
        @property
        def interrupted(self) -> bool:
            return self.sampling_step >= 2

    result = train_embedding(model, tmp_path, TrainEmbeddingParams("stopped", steps=50, **params),
                             StopAfterTwo(kind="t"), log_root=tmp_path / "logs")
    assert result.interrupted and result.step == 2
    with safe_open(str(tmp_path / "stopped.safetensors"), "pt") as handle:
        assert handle.metadata()["step"] == "2"


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_min_snr_gamma_weighs_each_sample_as_hang_et_al(train_ctx, tmp_path, monkeypatch, gamma):
    """Min-SNR weighting (Hang et al. 2023, kohya's ``--min_snr_gamma``) in a textual-inversion step: each
    sample's noise-prediction error is weighted by ``min(SNR_t, gamma) / SNR_t`` with ``SNR_t = a_t / (1 - a_t)``
    (0: no weighting). The expected loss is rebuilt from what the U-Net was given and answered: the noise is
    recovered from ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
    from webui.finetune.dataset import load_folder
    from webui.finetune.loss import posterior_latents
    from webui.finetune.textual_inversion import TrainEmbeddingParams, create_embedding, train_embedding

    ctx, _ = train_ctx
    model = ctx.models.current
    c = model.components
    (tmp_path / "same").mkdir()
    data = square_pictures(tmp_path / "same", [(16, 16)] * 3, (255, 140, 0), "a square")  # any pick: the same x0
    x0 = posterior_latents(model, load_folder(str(data), 64, 64), "deterministic", 0)[0][0].float()
    calls = []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x_t, t, **kwargs):
            out = self.inner(x_t, t, **kwargs)
            calls.append((x_t.detach().float(), t.detach(), out[0].detach().float()))
            return out

    monkeypatch.setattr(c, "unet", Recording(c.unet))
    create_embedding(c, tmp_path, "snr", init_text="square")
    result = train_embedding(model, tmp_path, TrainEmbeddingParams(
        "snr", learn_rate="0.005", batch_size=4, data_root=str(data), training_width=64, training_height=64, steps=1,
        template_filename="subject", save_embedding_every=0, create_image_every=0,
        latent_sampling_method="deterministic", seed=3, min_snr_gamma=gamma), Job(kind="t"),
        log_root=tmp_path / "logs")
    (x_t, t, out), = calls
    a = c.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    errors = ((out - noise) ** 2).mean(dim=(1, 2, 3))
    snr = (a / (1 - a)).view(-1)
    weights = torch.minimum(snr, torch.tensor(gamma)) / snr if gamma else torch.ones_like(snr)
    assert len(set(t.tolist())) > 1  # several timesteps, so the weights differ
    assert result.losses[0] == pytest.approx(float((weights * errors).mean()), rel=1e-3)
