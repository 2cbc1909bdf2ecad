"""LoRA training on FLUX.1 and SD 3.x (issue 22 on issue 21's families): kohya's file layout for these models
(``networks.lora_flux`` / ``lora_sd3``: the original layout's fused layers, ``lora_te1_`` CLIP-L), and the saved
file drawing what the run drew.

The expected keys are written out by hand from kohya's sd-scripts naming for the tiny models (one double block
and two single blocks; two joint blocks), not produced by our code. The last preview of a run is drawn with the
LoRA layers hooked into the model; the same request with ``<lora:name:1>`` merges the saved file through the
loader — the two images agree, which checks the fused layout end to end.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from conftest import api_only, make_settings, square_pictures, wait_for_run
from fastapi.testclient import TestClient
from flow_models import lay_out_flux, save_flux_files, save_sd3_file, tiny_flux, tiny_sd3
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

TE = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2"]


def _flux_keys() -> dict[str, tuple[int, int]]:
    """kohya key -> (out, in) of the fused original layer (width 64, MLP 256, CLIP-L 32 wide, 2 layers)."""
    keys = {}
    for stream in ("img", "txt"):
        b = f"lora_unet_double_blocks_0_{stream}_"
        keys.update({b + "attn_qkv": (192, 64), b + "attn_proj": (64, 64), b + "mlp_0": (256, 64),
                     b + "mlp_2": (64, 256), b + "mod_lin": (384, 64)})
    for i in range(2):
        b = f"lora_unet_single_blocks_{i}_"
        keys.update({b + "linear1": (64 * 3 + 256, 64), b + "linear2": (64, 64 + 256), b + "modulation_lin": (192, 64)})
    for i in range(2):
        for leaf in TE:
            out, inp = (64, 32) if leaf == "mlp_fc1" else (32, 64) if leaf == "mlp_fc2" else (32, 32)
            keys[f"lora_te1_text_model_encoder_layers_{i}_{leaf}"] = (out, inp)
    return keys


@pytest.fixture(scope="module")
def flux_env(tmp_path_factory):
    from webui.context import build_context
    from webui.server import create_app

    models = tmp_path_factory.mktemp("models")
    lay_out_flux(save_flux_files(tiny_flux(seed=4), tmp_path_factory.mktemp("downloads")), models)
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    data = tmp_path_factory.mktemp("pictures")
    square_pictures(data, [(8, 8), (24, 8), (8, 24), (24, 24)], (0, 128, 128), "a teal square", background=240)
    return ctx, TestClient(create_app(api_only(ctx))), data


def _wait(ctx, client, run_id: str, timeout: float = 180) -> dict:
    return wait_for_run(ctx, client, run_id, timeout)


def _png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.float32) / 255


def test_flux_lora_run_gives_kohyas_flux_file_that_draws_what_the_run_drew(flux_env):
    ctx, client, data = flux_env
    body = {"output_name": "teal_flux", "train_data_dir": str(data), "network_dim": 4, "network_alpha": 4,
            "learning_rate": 3e-3, "text_encoder_lr": 1e-3, "max_train_steps": 4, "train_batch_size": 2,
            "resolution": 64, "seed": 2, "sample_every_n_steps": 4, "sample_prompt": "a teal square",
            "sample_seed": 9}
    state = _wait(ctx, client, client.post("/webui/v1/train/lora", json=body).json()["id"])
    assert state["status"] == "done", state["error"]
    assert len(state["losses"]) == 4 and all(np.isfinite(state["losses"]))
    tensors = load_file(state["path"])
    expected = _flux_keys()
    assert {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors} == set(expected)
    for key, (out_dim, in_dim) in expected.items():
        assert tensors[f"{key}.lora_down.weight"].shape == (4, in_dim), key
        assert tensors[f"{key}.lora_up.weight"].shape == (out_dim, 4), key
    with safe_open(state["path"], "pt") as handle:
        meta = handle.metadata()
    assert (meta["ss_network_module"], meta["ss_base_model_version"]) == ("networks.lora_flux", "flux1")

    request = {"prompt": "a teal square <lora:teal_flux:1>", "steps": 20, "sampler_name": "Euler a", "cfg_scale": 7,
               "seed": 9, "width": 64, "height": 64, "save_images": False}
    with_file = client.post("/sdapi/v1/txt2img", json=request)
    assert with_file.status_code == 200, with_file.text
    merged = _png(with_file.json()["images"][0])
    hooked = _png(state["current_preview"])  # the run's last preview: the layers hooked, not merged
    plain = _png(client.post("/sdapi/v1/txt2img", json={**request, "prompt": "a teal square"}).json()["images"][0])
    assert np.abs(merged - hooked).max() <= 2 / 255
    assert np.abs(merged - plain).mean() > 1 / 255


def test_sd3_lora_keys_and_refusals(tmp_path):
    """SD 3's joint blocks under Stability's names (``lora_unet_joint_blocks_N_x_block_attn_qkv`` ...), CLIP-L and
    CLIP-G as ``lora_te1_`` / ``lora_te2_``; LoCon on a transformer is a 422 on ``conv_dim``, min-SNR weighting
    one on ``min_snr_gamma``."""
    from webui.context import build_context
    from webui.errors import RequestError
    from webui.finetune.lora_layers import flow_lora_targets
    from webui.finetune.lora_train import LoraTrainParams, train_lora
    from webui.jobs import Job

    c = tiny_sd3()
    keys = set(flow_lora_targets(c, train_text_encoder=True))
    blocks = {f"lora_unet_joint_blocks_{i}_{part}_{leaf}" for i in range(2) for part in ("x_block", "context_block")
              for leaf in ("attn_qkv", "attn_proj", "mlp_fc1", "mlp_fc2", "adaLN_modulation_1")}
    blocks -= {f"lora_unet_joint_blocks_1_context_block_{leaf}" for leaf in ("attn_proj", "mlp_fc1", "mlp_fc2",
                                                                              "adaLN_modulation_1")}
    te = {f"lora_te{n}_text_model_encoder_layers_{i}_{leaf}" for n in (1, 2) for i in range(2) for leaf in TE}
    assert keys == blocks | te
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    save_sd3_file(c, models / "Stable-diffusion" / "sd3.safetensors")
    ctx = build_context(make_settings(tmp_path / "data", models), load_model=True)
    for field, value in (("conv_dim", 4), ("min_snr_gamma", 5.0)):
        with pytest.raises(RequestError) as err:
            train_lora(ctx.models.current, tmp_path / "Lora", LoraTrainParams("x", str(tmp_path), **{field: value}),
                       Job(kind="t"), log_root=tmp_path / "runs")
        assert err.value.field == field


def test_fused_lora_layers_equal_the_saved_file_merged_by_the_loader(tmp_path):
    """Random trained-looking pairs on every FLUX.1 target: the transformer with the layers hooked equals the
    transformer after the saved file went through the LoRA loader (its fused-name -> q/k/v/MLP row split)."""
    import torch
    from safetensors.torch import save_file

    from webui.finetune.lora_layers import FusedLoraLayer, flow_lora_targets, kohya_tensors
    from webui.networks.lora import apply_loras, read_lora

    c = tiny_flux(seed=6)
    gen = torch.Generator().manual_seed(0)
    layers = {k: FusedLoraLayer(parts, 4, 2.0, gen) for k, parts in flow_lora_targets(c, False).items()}
    with torch.no_grad():
        for layer in layers.values():
            layer.up.normal_(0, 0.2, generator=gen)
    tokens = torch.randn(1, 16, 64, generator=gen)
    call = dict(hidden_states=tokens, timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                pooled_projections=torch.randn(1, 32, generator=gen), encoder_hidden_states=torch.randn(1, 5, 64,
                                                                                                       generator=gen),
                txt_ids=torch.zeros(5, 3), img_ids=torch.randn(16, 3, generator=gen), return_dict=False)
    with torch.no_grad():
        hooked = c.unet(**call)[0]  # the layers hook themselves in when made
    for layer in layers.values():
        layer.remove()
    with torch.no_grad():
        plain = c.unet(**call)[0]
    path = tmp_path / "fused.safetensors"
    save_file({k: v.contiguous() for k, v in kohya_tensors(layers).items()}, str(path))
    applied = apply_loras(c, [(read_lora(path), 1.0, 1.0)])
    assert not applied.unmatched
    with torch.no_grad():
        merged = c.unet(**call)[0]
    applied.restore()
    assert not torch.allclose(hooked, plain, atol=1e-3)
    assert torch.allclose(hooked, merged, atol=1e-4)


def test_flow_loss_is_the_rectified_flow_objective():
    """Our loss equals MSE(velocity, noise - x0) at x_t = (1 - s) x0 + s noise, s = sigmoid(N(0, 1)), with the
    transformer called as diffusers' ``FluxPipeline`` calls it on its own prompt encoding (restated here)."""
    import torch

    from webui.finetune.loss import flow_loss
    from webui.models.manager import CheckpointInfo, LoadedModel
    from webui.pipeline.flow_model import flux_image_ids, pack_flux, unpack_flux

    c = tiny_flux(seed=8)
    model = LoadedModel(CheckpointInfo(__import__("pathlib").Path("m.safetensors"), "m.safetensors"), "0" * 64, c,
                        torch.device("cpu"), torch.float32, 0.0)
    x0 = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    prompts = ["a teal square", "a red circle"]
    ours = flow_loss(model, x0, prompts, torch.Generator().manual_seed(5), guidance=1.0)
    gen = torch.Generator().manual_seed(5)
    sigma = torch.sigmoid(torch.randn(2, generator=gen))
    noise = torch.randn(x0.shape, generator=gen)
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    pipe = c.diffusers_pipeline()
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, prompts,
                                                      max_sequence_length=c.t5_tokenizer.model_max_length)
        pred = c.unet(hidden_states=pack_flux(x_t), timestep=sigma, guidance=torch.ones(2), pooled_projections=pooled,
                      encoder_hidden_states=embeds, txt_ids=text_ids,
                      img_ids=flux_image_ids(8, 8, "cpu", torch.float32), return_dict=False)[0]
    expected = torch.nn.functional.mse_loss(unpack_flux(pred, 8, 8), noise - x0)
    assert torch.allclose(ours.detach(), expected, rtol=1e-4)


def test_textual_inversion_on_sd3_and_a_clear_refusal_on_flux(flux_env, tmp_path):
    """SD 3.x: A1111's create / train embedding routes give SDXL-style ``clip_l`` / ``clip_g`` vectors of its CLIP
    widths, trained with the rectified-flow loss and used by name in prompts. FLUX.1 reads no CLIP token
    embeddings: both routes are a 422 naming the field."""
    from safetensors.torch import load_file as load

    from webui.context import build_context
    from webui.server import create_app

    _, flux_client, data = flux_env
    refused = flux_client.post("/sdapi/v1/create/embedding", json={"name": "nope"})
    assert refused.status_code == 422 and "name" in refused.text and "FLUX.1" in refused.text

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    save_sd3_file(tiny_sd3(seed=12), models / "Stable-diffusion" / "sd3.safetensors")
    ctx = build_context(make_settings(tmp_path / "data", models), load_model=True)
    client = TestClient(create_app(api_only(ctx)))
    assert client.post("/sdapi/v1/create/embedding", json={"name": "tealish", "init_text": "blue"}).status_code == 200
    path = ctx.settings.model_dir("embeddings") / "tealish.safetensors"
    before = load(str(path))
    assert {k: tuple(v.shape) for k, v in before.items()} == {"clip_l": (1, 32), "clip_g": (1, 48)}
    request = {"prompt": "a tealish square", "steps": 3, "width": 64, "height": 64, "seed": 1, "cfg_scale": 1,
               "sampler_name": "Euler", "save_images": False}
    untrained = client.post("/sdapi/v1/txt2img", json=request).json()
    body = {"embedding_name": "tealish", "learn_rate": "0.05", "batch_size": 2, "data_root": str(data),
            "training_width": 64, "training_height": 64, "steps": 4, "template_filename": "subject_filewords",
            "create_image_every": 0, "save_embedding_every": 0, "latent_sampling_method": "deterministic"}
    refused = client.post("/sdapi/v1/train/embedding", json={**body, "min_snr_gamma": 5})
    assert refused.status_code == 422 and "min_snr_gamma" in refused.text
    trained = client.post("/sdapi/v1/train/embedding", json=body)
    assert trained.status_code == 200, trained.text
    after = load(str(path))
    assert all(not torch.equal(after[k], before[k]) and torch.isfinite(after[k]).all() for k in before)
    again = client.post("/sdapi/v1/txt2img", json=request).json()
    infotext = __import__("json").loads(again["info"])["infotexts"][0]
    assert 'TI hashes: "tealish: ' in infotext
    assert _png(again["images"][0]).tolist() != _png(untrained["images"][0]).tolist()
