import json

import pytest

from webui.settings import OptionError, OptionsStore, core_option_defs, parse_args


def test_parse_args_a1111_flags(tmp_path):
    s = parse_args(["--listen", "--port", "7861", "--data-dir", str(tmp_path), "--use-cpu", "--no-half",
                    "--api", "--nowebui", "--device-id", "1", "--ckpt-dir", str(tmp_path / "c")], env={})
    assert s.listen and s.host == "0.0.0.0" and s.port == 7861
    assert s.use_cpu and s.no_half and s.api and s.nowebui and s.device_id == 1
    assert s.data_dir == tmp_path.resolve()
    assert s.model_dir("Stable-diffusion") == tmp_path.resolve() / "models" / "Stable-diffusion"
    assert tmp_path / "c" in s.checkpoint_dirs()


def test_defaults_bind_loopback():
    s = parse_args([], env={})
    assert s.host == "127.0.0.1" and s.port == 7860


def test_settings_are_frozen():
    s = parse_args([], env={})
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_extensions_env_variable():
    assert parse_args([], env={"WEBUI_EXTENSIONS": "a, b"}).extensions == ("a", "b")
    assert parse_args([], env={}).extensions is None


def test_options_persist_and_validate(tmp_path):
    path = tmp_path / "config.json"
    store = OptionsStore.open(path, core_option_defs())
    assert store.current["CLIP_stop_at_last_layers"] == 1
    store.update({"CLIP_stop_at_last_layers": 2})
    assert json.loads(path.read_text())["CLIP_stop_at_last_layers"] == 2
    again = OptionsStore.open(path, core_option_defs())
    assert again.current["CLIP_stop_at_last_layers"] == 2
    with pytest.raises(OptionError) as e:
        store.update({"no_such_option": 1})
    assert "no_such_option" in e.value.errors and "CLIP_stop_at_last_layers" in e.value.errors["no_such_option"]
    with pytest.raises(OptionError):
        store.update({"CLIP_stop_at_last_layers": 99})
    assert store.current["CLIP_stop_at_last_layers"] == 2


def test_corrupt_options_file_is_backed_up(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    store = OptionsStore.open(path, core_option_defs())
    assert store.current["samples_save"] is True
    assert (tmp_path / "config.json.corrupt-0").read_text() == "{not json"
    assert "unreadable" in caplog.text
