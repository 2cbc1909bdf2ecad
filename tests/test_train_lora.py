"""LoRA training for users (issue 22): kohya's file layout, the run API, the file working in our prompts.

The expected key names are written out by hand from kohya's sd-scripts naming (``lora_unet_`` + diffusers module
path for SD 1.x, + the original LDM path for SDXL; ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` +
``text_model_encoder_layers_N_{self_attn_{q,k,v,out}_proj,mlp_fc{1,2}}``), not produced by our code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import api_only, make_settings, square_pictures, wait_for_run
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.step_gate import StepGate
from webui.finetune.lora_layers import lora_targets
from webui.models.tiny import build_tiny_components

BLOCK = [f"attn{a}_to_{p}" for a in (1, 2) for p in ("q", "k", "v", "out_0")] + ["ff_net_0_proj", "ff_net_2"]
TE = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2"]


def _expected_sd1() -> set[str]:
    attentions = ["down_blocks_0_attentions_0", "mid_block_attentions_0", "up_blocks_1_attentions_0",
                  "up_blocks_1_attentions_1"]
    keys = set()
    for a in attentions:
        keys |= {f"lora_unet_{a}_proj_in", f"lora_unet_{a}_proj_out"}
        keys |= {f"lora_unet_{a}_transformer_blocks_0_{leaf}" for leaf in BLOCK}
    keys |= {f"lora_te_text_model_encoder_layers_{i}_{leaf}" for i in range(3) for leaf in TE}
    return keys


def _expected_sdxl() -> set[str]:
    keys = set()
    for a in ("input_blocks_3_1", "middle_block_1", "output_blocks_0_1", "output_blocks_1_1"):
        keys |= {f"lora_unet_{a}_proj_in", f"lora_unet_{a}_proj_out"}
        keys |= {f"lora_unet_{a}_transformer_blocks_{b}_{leaf}" for b in range(2) for leaf in BLOCK}
    for te in ("te1", "te2"):
        keys |= {f"lora_{te}_text_model_encoder_layers_{i}_{leaf}" for i in range(3) for leaf in TE}
    return keys


@pytest.mark.parametrize("family, expected", [("sd1", _expected_sd1), ("sdxl", _expected_sdxl)])
def test_trained_layers_carry_kohyas_key_names(family, expected):
    c = build_tiny_components(family)
    targets = lora_targets(c, train_text_encoder=True)
    assert set(targets) == expected()
    assert set(lora_targets(c, train_text_encoder=False)) == {k for k in expected() if k.startswith("lora_unet_")}


def test_locon_adds_the_resnet_layers_with_kohyas_names():
    """kohya's ``conv_dim`` (LoCon): the ResnetBlock2D / Downsample2D / Upsample2D layers join — their 3x3
    convolutions, ``time_emb_proj`` and ``conv_shortcut`` (names written out from the tiny SD 1 U-Net)."""
    c = build_tiny_components("sd1")
    resnets = ["down_blocks_0_resnets_0", "down_blocks_1_resnets_0", "mid_block_resnets_0", "mid_block_resnets_1",
               "up_blocks_0_resnets_0", "up_blocks_0_resnets_1", "up_blocks_1_resnets_0", "up_blocks_1_resnets_1"]
    shortcut = {"down_blocks_1_resnets_0", "up_blocks_0_resnets_0", "up_blocks_0_resnets_1", "up_blocks_1_resnets_0",
                "up_blocks_1_resnets_1"}
    conv = {f"lora_unet_{r}_{leaf}" for r in resnets for leaf in ("conv1", "conv2", "time_emb_proj")}
    conv |= {f"lora_unet_{r}_conv_shortcut" for r in shortcut}
    conv |= {"lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_up_blocks_0_upsamplers_0_conv"}
    unet_keys = {k for k in _expected_sd1() if k.startswith("lora_unet_")}
    assert set(lora_targets(c, train_text_encoder=False, conv=True)) == unet_keys | conv


def test_a_lora_layer_trains_only_its_pair():
    """The optimizer and requires_grad see the LoRA pair only, never the frozen layer it wraps."""
    from webui.finetune.lora_layers import LoraLayer

    base = torch.nn.Linear(6, 10).requires_grad_(False)
    layer = LoraLayer(base, 4, 2.0, torch.Generator().manual_seed(1))
    assert [name for name, _ in layer.named_parameters()] == ["down", "up"]
    layer.requires_grad_(True)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    layer.remove()


@pytest.mark.parametrize("stride", [1, 2])
def test_a_locon_layer_equals_its_merged_weight(stride):
    """What training runs (the hook: a rank-r 3x3 convolution, then 1x1 up) equals the base convolution with
    the weight change A1111's loader merges (its ``lora`` network: ``up @ down`` over the flattened kernels,
    reshaped, times alpha / rank; restated here)."""
    from webui.finetune.lora_layers import LoraLayer

    torch.manual_seed(0)
    base = torch.nn.Conv2d(6, 10, 3, stride=stride, padding=1)
    layer = LoraLayer(base, 4, 2.0, torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.up.normal_()
    x = torch.randn(2, 6, 9, 9)
    hooked = base(x)
    layer.remove()
    delta = (layer.up.detach() @ layer.down.detach().reshape(4, -1)).reshape(base.weight.shape) * (2.0 / 4)
    merged = torch.nn.functional.conv2d(x, base.weight + delta, base.bias, stride=stride, padding=1)
    assert torch.allclose(hooked, merged, atol=1e-5)
    assert not torch.allclose(hooked, base(x), atol=1e-3)


@pytest.fixture(scope="module")
def lora_env(tmp_path_factory):
    from webui.context import build_context
    from webui.server import create_app

    models = tmp_path_factory.mktemp("models")
    (models / "Stable-diffusion").mkdir()
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    data = tmp_path_factory.mktemp("pictures")
    square_pictures(data, [(8, 8), (24, 8), (8, 24), (24, 24)], (255, 140, 0), "a square, white background")
    return ctx, TestClient(create_app(api_only(ctx))), data


def _wait(ctx, client, run_id: str, timeout: float = 180) -> dict:
    return wait_for_run(ctx, client, run_id, timeout)


def _held_training(monkeypatch, step: int) -> StepGate:
    """A gate that holds each API training run after its step ``step`` (``TrainingRun.follow``) until the test
    lets it go or interrupts it; ``gate.open()`` when done."""
    from webui.train_runs import TrainingRun

    gate, follow = StepGate(step, holds=99), TrainingRun.follow

    def held(self, done: int, loss: float, image=None) -> None:
        follow(self, done, loss, image)
        if done == step:
            gate.hold(self.job)

    monkeypatch.setattr(TrainingRun, "follow", held)
    return gate


def test_lora_run_through_the_api_gives_a_kohya_file_that_works_in_prompts(lora_env):
    ctx, client, data = lora_env
    body = {"output_name": "orange_sq", "train_data_dir": str(data), "network_dim": 4, "network_alpha": 2,
            "learning_rate": 1e-3, "text_encoder_lr": 5e-4, "max_train_steps": 6, "train_batch_size": 2,
            "resolution": 64, "lr_scheduler": "cosine", "lr_warmup_steps": 2, "seed": 3, "conv_dim": 4, "conv_alpha": 2}
    started = client.post("/webui/v1/train/lora", json=body)
    assert started.status_code == 200, started.text
    state = _wait(ctx, client, started.json()["id"])
    assert state["status"] == "done", state
    assert len(state["losses"]) == 6 and all(np.isfinite(state["losses"]))
    path = ctx.settings.model_dir("Lora") / "orange_sq.safetensors"
    assert state["path"] == str(path)
    tensors = load_file(str(path))
    targets = lora_targets(ctx.models.current.components, train_text_encoder=True, conv=True)
    assert {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors} == set(targets)
    for key, module in targets.items():
        out_dim, in_dim = module.weight.shape[:2]
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        assert down.shape[:2] == (4, in_dim) and up.shape[:2] == (out_dim, 4)
        if module.weight.ndim == 4:  # kohya's conv layout: down (r, in, kh, kw), up (out, r, 1, 1)
            assert down.shape[2:] == module.weight.shape[2:] and up.shape[2:] == (1, 1)
        assert float(tensors[f"{key}.alpha"]) == 2.0
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if k.endswith("lora_up.weight"))
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_steps"],
            meta["ss_base_model_version"]) == ("networks.lora", "4", "2.0", "6", "sd_v1")
    assert __import__("json").loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}

    base = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 4, "save_images": False}
    plain = client.post("/sdapi/v1/txt2img", json=base).json()
    styled = client.post("/sdapi/v1/txt2img", json={**base, "prompt": "a red circle <lora:orange_sq:1>"}).json()
    assert plain["images"][0] != styled["images"][0] and "Lora hashes" in styled["info"]
    assert "Networks not found" not in styled["info"]

    # bad input: 4xx naming the field; the existing file is kept
    again = client.post("/webui/v1/train/lora", json=body)
    assert again.status_code == 422 and "output_name" in again.text
    missing = client.post("/webui/v1/train/lora", json={**body, "output_name": "x", "train_data_dir": "/nope"})
    assert missing.status_code == 422 and "train_data_dir" in missing.text
    assert client.post("/webui/v1/train/lora", json={**body, "output_name": "y", "network_dim": 0}).status_code == 422
    negative = client.post("/webui/v1/train/lora", json={**body, "output_name": "y", "min_snr_gamma": -1})
    assert negative.status_code == 422 and "min_snr_gamma" in negative.text
    assert client.get("/webui/v1/train/unknown").status_code == 404


def test_interrupting_a_lora_run_saves_a_loadable_file(lora_env, monkeypatch):
    from webui.networks.lora import apply_loras, read_lora

    ctx, client, data = lora_env
    gate = _held_training(monkeypatch, 2)
    try:
        started = client.post("/webui/v1/train/lora", json={"output_name": "stopped", "train_data_dir": str(data),
                                                             "network_dim": 2, "max_train_steps": 50,
                                                             "resolution": 64})
        run_id = started.json()["id"]
        job = gate.wait()  # held after its second step
        assert client.get(f"/webui/v1/train/{run_id}").json()["step"] == 2
        client.post(f"/webui/v1/train/{run_id}/interrupt")  # lets the gate go too
        state = _wait(ctx, client, run_id)
    finally:
        gate.open()
    assert state["status"] == "interrupted" and len(state["losses"]) == 2 and job.interrupted
    assert not gate.timed_out
    lora = read_lora(ctx.settings.model_dir("Lora") / "stopped.safetensors")
    applied = apply_loras(ctx.models.current.components, [(lora, 1.0, 1.0)])
    assert not applied.unmatched
    applied.restore()
    assert torch.isfinite(next(iter(lora.modules.values())).down).all()


def test_train_tab_through_gradio_client(lora_env):
    """The Train tab's endpoints as a Gradio client calls them: create an embedding, train it and a LoRA
    (the last yield carries the saved file and the loss plot), preview the dataset with captions."""
    from gradio_client import Client

    from tests.live_server import LiveServer
    from webui.server import create_app

    ctx, api, data = lora_env
    with LiveServer(create_app(ctx)) as srv:
        client = Client(srv.url, verbose=False)
        created, _ = client.predict(name="via_ui", init_text="square", num_vectors_per_token=2,
                                    overwrite_old=False, api_name="/create_embedding")
        path = ctx.settings.model_dir("embeddings") / "via_ui.safetensors"
        assert created == f"Created {path}" and path.is_file()
        status, plot, _ = client.predict(embedding_name="via_ui", data_root=str(data), learn_rate="0.01",
                                         batch_size=2, training_width=64, training_height=64, steps=3,
                                         template_filename="subject", save_embedding_every=0,
                                         create_image_every=0, min_snr_gamma=5, api_name="/train_embedding")
        assert status.startswith(f"Embedding saved: {path} (step 3")
        logged, = (ctx.settings.data_dir / "textual_inversion").rglob("via_ui/train.json")
        assert json.loads(logged.read_text())["min_snr_gamma"] == 5
        assert plot["columns"] == ["step", "loss"] and [row[0] for row in plot["data"]] == [1, 2, 3]
        status, plot, _ = client.predict(output_name="ui_lora", train_data_dir=str(data), network_dim=2,
                                         resolution=64, max_train_steps=3, api_name="/train_lora")
        assert "LoRA saved" in status and (ctx.settings.model_dir("Lora") / "ui_lora.safetensors").is_file()
        # the UI's runs are in the run API too (newest first)
        listed = api.get("/webui/v1/train").json()
        ui_runs = [r for r in listed if r["source"] == "ui"]
        assert [r["kind"] for r in ui_runs[:2]] == ["lora", "embedding"]
        assert ui_runs[0]["status"] == "done" and len(ui_runs[0]["losses"]) == 3
        assert ui_runs[0]["id"] in status
        assert api.get(f"/webui/v1/train/{ui_runs[0]['id']}").json()["path"].endswith("ui_lora.safetensors")
        info, images = client.predict(folder=str(data), api_name="/train_dataset_preview")
        assert info.startswith("4 images") and len(images) == 4
        assert all("a square, white background" in item["caption"] for item in images)


def test_generations_are_refused_during_a_run_when_the_option_says_so(lora_env, monkeypatch):
    ctx, client, data = lora_env
    ctx.options.update({"training_queue_policy": "Refuse"})
    gate = _held_training(monkeypatch, 1)
    try:
        run_id = client.post("/webui/v1/train/lora", json={"output_name": "busy", "train_data_dir": str(data),
                                                            "network_dim": 2, "max_train_steps": 50,
                                                            "resolution": 64}).json()["id"]
        gate.wait()  # the run is under way, held after its first step
        refused = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert refused.status_code == 503 and "training run" in refused.text
        client.post(f"/webui/v1/train/{run_id}/interrupt")
        assert _wait(ctx, client, run_id)["status"] == "interrupted"
        ok = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                    "save_images": False})
        assert ok.status_code == 200
    finally:
        gate.open()
        ctx.options.update({"training_queue_policy": "Wait"})
    assert not gate.timed_out


def _run(ctx, data, tmp_path, name: str, stop_at: int | None = None, **kw):
    """A LoRA run straight through ``train_lora`` (the test holds no queue slot: nothing else runs here)."""
    from webui.finetune.lora_train import LoraTrainParams, train_lora
    from webui.jobs import Job

    job = Job(kind="train_lora")

    def on_step(step, loss, image=None):
        if stop_at is not None and step >= stop_at:
            job.interrupt()

    params = LoraTrainParams(**{"output_name": name, "train_data_dir": str(data), "network_dim": 2,
                                "network_alpha": 1, "learning_rate": 2e-3, "text_encoder_lr": 1e-3,
                                "max_train_steps": 6, "train_batch_size": 2, "resolution": 64, "seed": 7,
                                "lr_scheduler": "cosine", "lr_warmup_steps": 1, **kw})
    return train_lora(ctx.models.current, tmp_path / "Lora", params, job, log_root=tmp_path / "runs", on_step=on_step)


@pytest.mark.parametrize("optimizer", ["AdamW", "Prodigy"])
def test_resume_after_an_interrupt_is_bit_exact(lora_env, tmp_path, optimizer):
    """Six steps straight, or three, interrupted, then resumed from the run folder: the same file to the bit
    (LoRA pairs from the saved state, optimizer state, per-step seeded batches and noise)."""
    ctx, _, data = lora_env
    lr = {"learning_rate": 1.0, "text_encoder_lr": 1.0} if optimizer == "Prodigy" else {
        "bundle_embedding": "sqword", "caption_template": "sqword [filewords]"}  # the bundled word resumes too
    straight = _run(ctx, data, tmp_path / "a", "sq", optimizer_type=optimizer, **lr)
    first = _run(ctx, data, tmp_path / "b", "sq", stop_at=3, optimizer_type=optimizer, **lr)
    assert first["interrupted"] and first["steps"] == 3
    half = load_file(str(first["path"]))  # interrupt keeps a loadable file of the steps done
    assert all(torch.isfinite(t).all() for t in half.values())
    with pytest.raises(Exception, match="overwrite"):
        _run(ctx, data, tmp_path / "b", "sq", optimizer_type=optimizer, **lr)
    resumed = _run(ctx, data, tmp_path / "b", "sq", resume=True, optimizer_type=optimizer, **lr)
    assert resumed["steps"] == 6 and resumed["losses"] == straight["losses"]
    a, b = load_file(str(straight["path"])), load_file(str(resumed["path"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ("bundle_emb.sqword.string_to_param.*" in a) == (optimizer == "AdamW")
    assert not torch.equal(a[next(k for k in a if k.endswith("lora_up.weight"))], half[next(
        k for k in a if k.endswith("lora_up.weight"))])
    saved = __import__("json").loads((tmp_path / "b" / "runs" / "sq" / "train.json").read_text())
    assert saved["steps_done"] == 6 and len(saved["losses"]) == 6 and saved["optimizer_type"] == optimizer
    with safe_open(str(resumed["path"]), "pt") as handle:
        assert optimizer in handle.metadata()["ss_optimizer"]
    with pytest.raises(Exception, match="network_dim"):  # a resume with other settings is refused
        _run(ctx, data, tmp_path / "b", "sq", resume=True, network_dim=4, optimizer_type=optimizer, **lr)


def test_optimizer_precision_and_resume_errors_name_the_field(lora_env, tmp_path):
    from webui.errors import RequestError

    ctx, _, data = lora_env
    for kw, field in (({"optimizer_type": "AdamW8bit"}, "optimizer_type"), ({"optimizer_type": "Lion"},
                                                                             "optimizer_type"),
                      ({"mixed_precision": "fp16"}, "mixed_precision"), ({"resume": True}, "resume"),
                      ({"max_train_epochs": -1}, "max_train_epochs")):
        with pytest.raises(RequestError) as err:
            _run(ctx, data, tmp_path, "bad", **kw)
        assert err.value.field == field


def test_gradient_checkpointing_epochs_and_the_latent_cache(lora_env, tmp_path, monkeypatch):
    """Checkpointing (torch's activation checkpointing runs in the U-Net) changes memory, not results; epochs
    give ceil(images / batch) steps each; the run folder caches each picture's latents under the VAE's
    fingerprint."""
    import torch.utils.checkpoint

    from webui.finetune.loss import vae_fingerprint

    ctx, _, data = lora_env
    plain = _run(ctx, data, tmp_path / "p", "g", max_train_steps=2)
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    checkpointed = _run(ctx, data, tmp_path / "c", "g", max_train_steps=2, gradient_checkpointing=True)
    assert calls  # the U-Net's blocks were checkpointed
    a, b = load_file(str(plain["path"])), load_file(str(checkpointed["path"]))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not ctx.models.current.components.unet.is_gradient_checkpointing  # switched off after the run
    epochs = _run(ctx, data, tmp_path / "e", "ep", max_train_epochs=2)  # 4 pictures, batch 2
    assert epochs["steps"] == 4
    cache = epochs["run_folder"] / "latents" / vae_fingerprint(ctx.models.current.components.vae)
    assert len(list(cache.glob("*.safetensors"))) == 4
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    _run(ctx, data, tmp_path / "e", "ep", max_train_steps=1, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")} == stamps  # read, not re-encoded


def test_bf16_mixed_precision_computes_in_bfloat16_near_the_float32_run(lora_env, tmp_path):
    """kohya's ``mixed_precision bf16`` (autocast; the CPU has no fp16 training): the U-Net's layers compute in
    bfloat16, the first step's loss (same batch and noise) stays within bfloat16's precision of the float32 run's,
    and the file says how it was trained."""
    ctx, _, data = lora_env
    unet = ctx.models.current.components.unet
    layer = next(m for name, m in unet.named_modules() if name.endswith("attn1.to_q"))
    seen: list[torch.dtype] = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        plain = _run(ctx, data, tmp_path / "p", "fp32", max_train_steps=2)
        plain_dtypes, seen[:] = set(seen), []
        mixed = _run(ctx, data, tmp_path / "m", "bf16", max_train_steps=2, mixed_precision="bf16")
    finally:
        handle.remove()
    assert plain_dtypes == {torch.float32} and set(seen) == {torch.bfloat16}
    assert mixed["losses"][0] == pytest.approx(plain["losses"][0], rel=0.05)
    assert all(torch.isfinite(t).all() for t in load_file(str(mixed["path"])).values())
    with safe_open(str(mixed["path"]), "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "bf16"


def test_previews_every_n_steps_through_the_run_api(lora_env):
    import base64
    import io

    ctx, client, data = lora_env
    started = client.post("/webui/v1/train/lora", json={
        "output_name": "with_samples", "train_data_dir": str(data), "network_dim": 2, "max_train_steps": 4,
        "resolution": 64, "sample_every_n_steps": 2, "sample_prompt": "a square", "sample_seed": 5})
    state = _wait(ctx, client, started.json()["id"])
    assert state["status"] == "done", state
    assert [p["step"] for p in state["previews"]] == [2, 4]
    assert all(Path(p["path"]).is_file() for p in state["previews"])
    image = Image.open(io.BytesIO(base64.b64decode(state["current_preview"])))
    assert image.size == (64, 64)
    assert client.get(f"/webui/v1/train/{state['id']}", params={"skip_current_preview": True}).json()[
        "current_preview"] is None


def _txt2img(ctx, prompt: str) -> tuple[np.ndarray, str]:
    from webui.pipeline.request import GenerationRequest

    result = ctx.generate(GenerationRequest(prompt=prompt, steps=4, width=64, height=64, seed=5, save_images=False))
    return np.asarray(result.images[0]), result.infotexts[0]


def test_an_embedding_bundled_in_a_lora_file_works_while_the_lora_is_in_the_prompt(lora_env):
    """A1111 1.7+'s ``bundle_emb.<word>.string_to_param.*`` keys (as OneTrainer writes them): with ``<lora:..>`` in
    the prompt the word draws exactly as the same vectors in an embeddings-folder file do (the reference: that
    file), without the tag it is a plain word, and a folder file of the same name wins (A1111's rule). The
    LoRA's own layer change is zero here, so only the word matters."""
    from safetensors.torch import save_file

    ctx, _, _ = lora_env
    g = torch.Generator().manual_seed(0)
    vectors, other = torch.randn(2, 64, generator=g) * 0.5, torch.randn(2, 64, generator=g) * 0.5
    lora_dir, emb_dir = ctx.settings.model_dir("Lora"), ctx.settings.model_dir("embeddings")
    lora_dir.mkdir(parents=True, exist_ok=True)
    emb_dir.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 64, generator=g),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0),
               "bundle_emb.zqword.string_to_param.*": vectors}, str(lora_dir / "bundled.safetensors"))
    ctx.loras.refresh()
    try:
        with_lora, info = _txt2img(ctx, "a zqword circle on the left <lora:bundled:1>")
        assert 'TI hashes: "zqword: bundled"' in info  # A1111 names the LoRA for a bundled embedding
        plain, info_plain = _txt2img(ctx, "a zqword circle on the left")
        assert "TI hashes" not in info_plain and np.abs(plain.astype(int) - with_lora).max() > 8
        save_file({"string_to_param.*": vectors}, str(emb_dir / "zqword.safetensors"))
        ctx.embeddings.refresh()
        as_file, _ = _txt2img(ctx, "a zqword circle on the left")
        assert np.array_equal(as_file, with_lora)
        save_file({"string_to_param.*": other}, str(emb_dir / "zqword.safetensors"))
        ctx.embeddings.refresh()
        folder_only, _ = _txt2img(ctx, "a zqword circle on the left")
        folder_wins, info = _txt2img(ctx, "a zqword circle on the left <lora:bundled:1>")
        assert np.array_equal(folder_wins, folder_only) and not np.array_equal(folder_wins, with_lora)
        assert 'TI hashes: "zqword: ' in info and "zqword: bundled" not in info
    finally:
        (emb_dir / "zqword.safetensors").unlink(missing_ok=True)
        (lora_dir / "bundled.safetensors").unlink(missing_ok=True)
        ctx.embeddings.refresh()
        ctx.loras.refresh()


def test_pivotal_tuning_trains_the_word_and_bundles_it_in_a1111s_layout(lora_env, tmp_path):
    """``bundle_embedding``: the word starts at its init text's token vectors (A1111's rule), is trained with
    the LoRA, and is saved under ``bundle_emb.<word>.string_to_param.*`` beside kohya's LoRA keys; SDXL's word
    is a ``clip_l`` / ``clip_g`` pair (A1111's SDXL embedding keys)."""
    from webui.errors import RequestError
    from webui.finetune.lora_train import (
        LoraTrainParams,
        _bundle_embedding,
        _bundle_tensors,
    )
    from webui.networks.lora import read_lora

    ctx, _, data = lora_env
    c = ctx.models.current.components
    result = _run(ctx, data, tmp_path, "piv", max_train_steps=4, bundle_embedding="sqword",
                  bundle_embedding_init="square", bundle_embedding_vectors=2, embedding_lr=0.05,
                  caption_template="sqword [filewords]")
    tensors = load_file(str(result["path"]))
    bundled = {k for k in tensors if k.startswith("bundle_emb.")}
    assert bundled == {"bundle_emb.sqword.string_to_param.*"}
    assert {k.split(".")[0] for k in tensors if k not in bundled} == set(lora_targets(c, train_text_encoder=True))
    word = tensors["bundle_emb.sqword.string_to_param.*"]
    square = c.text_encoders[0].get_input_embeddings().weight[c.tokenizers[0]("square")["input_ids"][1]].float()
    assert word.shape == (2, 64)
    assert not torch.allclose(word[0], square, atol=1e-3)  # trained away from the start ...
    assert torch.allclose(word[0], square, atol=0.05 * 4 * 1.5)  # ... by at most ~lr per step (Adam)
    assert read_lora(result["path"]).embeddings["sqword"].vectors["default"].shape == (2, 64)
    # embedding_only_steps: the word trains alone first (the LoRA pairs stay as initialised: up = 0)
    early = load_file(str(_run(ctx, data, tmp_path / "early", "piv", max_train_steps=3, embedding_only_steps=3,
                               bundle_embedding="sqword", bundle_embedding_init="square", embedding_lr=0.05,
                               caption_template="sqword [filewords]")["path"]))
    assert all(not v.any() for k, v in early.items() if k.endswith("lora_up.weight"))
    assert not torch.allclose(early["bundle_emb.sqword.string_to_param.*"][0], square, atol=1e-3)
    for word in ("a<b", "neverinacaption"):
        with pytest.raises(RequestError) as err:
            _run(ctx, data, tmp_path, "piv2", bundle_embedding=word)
        assert err.value.field == "bundle_embedding"

    xl = build_tiny_components("sdxl")
    emb = _bundle_embedding(xl, LoraTrainParams("x", "y", bundle_embedding="w", bundle_embedding_vectors=3),
                            tmp_path / "x.safetensors", torch.device("cpu"))
    out = _bundle_tensors(emb)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "bundle_emb.w.clip_l": (3, xl.text_encoders[0].config.hidden_size),
        "bundle_emb.w.clip_g": (3, xl.text_encoders[1].config.hidden_size)}


def test_regularization_pictures_are_paired_as_kohya_does_and_weighted(lora_env, tmp_path):
    """kohya's ``reg_data_dir`` (``train_util.DreamBoothDataset``): regularization pictures are used in order,
    cycling, until there are as many as training pictures (extra ones unused), each with ``prior_loss_weight``;
    the loss is the batch mean of each sample's error times its weight (``train_network.py``: ``loss *
    loss_weights`` then ``mean()``), not a mean normalised by the weights."""
    from webui.errors import RequestError
    from webui.finetune.dataset import load_folder
    from webui.finetune.lora_train import LoraTrainParams, with_regularization
    from webui.finetune.loss import denoising_loss, seeded_generator

    ctx, _, data = lora_env
    few, many = tmp_path / "few", tmp_path / "many"
    few.mkdir()
    many.mkdir()
    square_pictures(few, [(0, 0), (36, 0), (0, 36)], (0, 0, 255), "a square, white background")
    square_pictures(many, [(4 * i, 4 * i) for i in range(6)], (0, 255, 0), "a square, white background")
    train = load_folder(data, 64, 64)  # 4 pictures
    for reg, expected in ((few, ["00", "01", "02", "00"]), (many, ["00", "01", "02", "03"])):
        params = LoraTrainParams("r", str(data), reg_data_dir=str(reg), prior_loss_weight=0.25, resolution=64)
        both = with_regularization(train, params)
        regs = both.items[4:]
        assert [i.path.stem for i in regs] == expected and all(i.path.parent == reg for i in regs)
        assert [i.weight for i in both.items] == [1.0] * 4 + [0.25] * 4
        assert not any(i.regularization for i in both.items[:4])

    model = ctx.models.current
    x0 = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))

    def loss(weights):
        w = None if weights is None else torch.tensor(weights)
        with torch.no_grad():
            return float(denoising_loss(model, x0, ["a square", "a circle"], seeded_generator(5, 0, 1),
                                        sample_weights=w))

    first, second, plain = loss([1.0, 0.0]), loss([0.0, 1.0]), loss(None)
    assert first > 0 and second > 0
    assert loss([1.0, 1.0]) == pytest.approx(plain, rel=1e-5)
    assert first + second == pytest.approx(plain, rel=1e-5)  # a batch mean, not normalised by the weights
    assert loss([0.5, 2.0]) == pytest.approx(0.5 * first + 2.0 * second, rel=1e-5)

    run = _run(ctx, data, tmp_path / "run", "withreg", max_train_steps=2, reg_data_dir=str(few),
               prior_loss_weight=0.5)
    with safe_open(str(run["path"]), "pt") as handle:
        meta = handle.metadata()
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"], meta["ss_prior_loss_weight"]) == ("4", "4", "0.5")
    for kw, field in (({"reg_data_dir": str(tmp_path / "nowhere")}, "reg_data_dir"),
                      ({"reg_data_dir": str(few), "prior_loss_weight": -1}, "prior_loss_weight"),
                      ({"min_snr_gamma": -5}, "min_snr_gamma")):
        with pytest.raises(RequestError) as err:
            _run(ctx, data, tmp_path / "bad", "bad", **kw)
        assert err.value.field == field
