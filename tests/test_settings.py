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


def test_unknown_flag_is_refused_naming_it_and_the_closest_flag(capsys):
    # a typo of --api-auth must never start an open server
    with pytest.raises(SystemExit) as exc:
        parse_args(["--api-auht", "user:secret"], env={})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown flag --api-auht" in err and "did you mean --api-auth?" in err
    with pytest.raises(SystemExit):
        parse_args(["--api-a", "user:secret"], env={})  # no abbreviations either
    with pytest.raises(SystemExit):
        parse_args(["--listen", "stray"], env={})
    assert "unexpected value 'stray'" in capsys.readouterr().err


def test_a1111_flags_without_effect_are_accepted_and_noted():
    s = parse_args(["--xformers", "--opt-sdp-attention", "--skip-torch-cuda-test", "--share", "--theme", "dark",
                    "--enable-insecure-extension-access", "--use-cpu", "all", "--api-auth", "u:p"], env={})
    assert s.api_auth == "u:p" and s.use_cpu and s.enable_insecure_extension_access
    assert s.theme == "dark"  # A1111's --theme works here (option theme_mode)
    notes = "\n".join(s.flag_notes)
    for flag in ("--xformers", "--opt-sdp-attention", "--skip-torch-cuda-test", "--share"):
        assert f"{flag} has no effect here" in notes
    assert len(s.flag_notes) == 4  # real flags are not reported
    assert parse_args([], env={}).flag_notes == ()


def test_server_refuses_a_mistyped_flag_before_starting():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from webui.main import main; main(['--api-auht', 'u:p'])"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--api-auht" in out.stderr and "--api-auth" in out.stderr
    assert "Running on" not in out.stdout


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


def test_every_ignored_flag_is_documented():
    from pathlib import Path

    from webui.cli_flags import IGNORED_FLAGS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "install.md").read_text(encoding="utf-8")
    assert [f.name for f in IGNORED_FLAGS if f"| `{f.name}" not in doc] == []
