"""Textual inversion: A1111 .pt, safetensors and SDXL clip_l/clip_g embeddings used by file name."""

from __future__ import annotations

import re

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings, own_models_root
from webui.context import build_context
from webui.models.tiny import build_tiny_components
from webui.networks.embeddings import EmbeddingDB, read_embedding
from webui.pipeline.conditioning import EncodeOptions, encode_prompt, tokenize_prompt
from webui.pipeline.request import GenerationRequest
from webui.server import create_app


def a1111_pt(path, vectors: torch.Tensor, step: int = 500):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem,
                "step": step, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5"}, path)


@pytest.fixture(scope="module")
def emb_ctx(tmp_path_factory, tiny_sd1_file):
    root = own_models_root(tmp_path_factory, tiny_sd1_file)
    emb = root / "embeddings"
    emb.mkdir()
    g = torch.Generator().manual_seed(0)
    a1111_pt(emb / "mystyle.pt", torch.randn(2, 32, generator=g))
    save_file({"emb_params": torch.randn(3, 32, generator=g)}, str(emb / "badhands.safetensors"))
    save_file({"emb_params": torch.randn(1, 768, generator=g)}, str(emb / "sd15real.safetensors"))  # wrong width
    (emb / "broken.pt").write_bytes(b"garbage")
    return build_context(make_settings(tmp_path_factory.mktemp("data"), root), load_model=True)


def test_formats_and_compatibility(emb_ctx):
    db = emb_ctx.embeddings
    assert set(db.loaded) == {"mystyle", "badhands", "sd15real"} and "broken" in db.errors
    usable, skipped = db.compatible(emb_ctx.models.current.components)
    assert set(usable) == {"mystyle", "badhands"} and set(skipped) == {"sd15real"}
    assert db.loaded["mystyle"].num_vectors == 2 and db.loaded["mystyle"].step == 500


def test_name_in_prompt_becomes_vectors(emb_ctx):
    comps = emb_ctx.models.current.components
    lookup = emb_ctx.embeddings.lookup(comps)
    chunks, count = tokenize_prompt(comps.tokenizers[0], "a cat, mystyle", EncodeOptions(), lookup)
    assert count == 5 and chunks[0].tokens[4:6] == [0, 0] and chunks[0].fixes[0][0] == 3
    with_emb = encode_prompt(comps, "a cat, mystyle", embeddings=lookup).context
    as_text = encode_prompt(comps, "a cat, mystyle").context
    assert not torch.allclose(with_emb, as_text)
    # the file's vectors reach the transformer at token positions 4-5 (after the start token and "a cat ,")
    captured = {}
    enc = comps.text_encoders[0]
    layer0 = enc.encoder.layers[0]

    def grab(_module, args):
        captured["x"] = args[0]

    h = layer0.register_forward_pre_hook(grab)
    try:
        encode_prompt(comps, "a cat, mystyle", embeddings=emb_ctx.embeddings.lookup(comps))
    finally:
        h.remove()
    pos = enc.embeddings.position_embedding.weight[4:6]
    vectors = emb_ctx.embeddings.loaded["mystyle"].vectors["default"]
    assert torch.allclose(captured["x"][0, 4:6] - pos, vectors, atol=1e-6)


def test_generation_uses_embedding_and_writes_ti_hashes(emb_ctx):
    base = dict(steps=3, width=64, height=64, seed=5, sampler_name="Euler", save_images=False)
    a = emb_ctx.generate(GenerationRequest(prompt="a cat, mystyle", **base))
    b = emb_ctx.generate(GenerationRequest(prompt="a cat, my style", **base))
    assert a.images[0].tobytes() != b.images[0].tobytes()
    assert re.search(r'TI hashes: "mystyle: [0-9a-f]{12}"', a.infotexts[0])
    assert "TI hashes" not in b.infotexts[0]


def test_sdxl_pair_embedding(tmp_path):
    comps = build_tiny_components("sdxl", seed=1)
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 64)}, str(tmp_path / "xlstyle.safetensors"))
    db = EmbeddingDB([tmp_path])
    usable, _ = db.compatible(comps)
    assert "xlstyle" in usable
    lookup = db.lookup(comps)
    cond = encode_prompt(comps, "xlstyle cat", embeddings=lookup)
    assert cond.context.shape == (1, 77, 96) and "xlstyle" in lookup.used
    assert not torch.allclose(cond.context, encode_prompt(comps, "xlstyle cat").context)


def test_read_errors_name_the_file(tmp_path):
    from webui.errors import ModelError

    save_file({"weird": torch.zeros(2, 2, 2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelError) as e:
        read_embedding(tmp_path / "odd.safetensors")
    assert "odd" in str(e.value)


def test_api_embeddings(emb_ctx):
    client = TestClient(create_app(api_only(emb_ctx)))
    body = client.get("/sdapi/v1/embeddings").json()
    assert body["loaded"]["mystyle"] == {"step": 500, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5",
                                         "shape": 32, "vectors": 2}
    assert "sd15real" in body["skipped"]
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
