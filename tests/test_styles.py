import pytest

from webui.styles import Style, StyleStore, merge_style_text


def test_merge_rules():
    assert merge_style_text("{prompt}, masterpiece", "a cat") == "a cat, masterpiece"
    assert merge_style_text("oil painting", "a cat") == "a cat, oil painting"
    assert merge_style_text("oil painting", "") == "oil painting"
    assert merge_style_text("", "a cat") == "a cat"


def test_store_round_trip_and_apply(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text('name,prompt,negative_prompt\n"Cinematic","{prompt}, film grain, 35mm","cartoon, drawing"\n')
    store = StyleStore(path)
    assert store.names() == ["Cinematic"]
    assert store.apply("a cat", "blurry", ["Cinematic"]) == ("a cat, film grain, 35mm", "blurry, cartoon, drawing")
    store.save(Style("Sketch", "pencil sketch of {prompt}", ""))
    again = StyleStore(path)
    assert again.names() == ["Cinematic", "Sketch"]
    assert again.apply("a dog", "", ["Sketch", "Cinematic"]) == ("pencil sketch of a dog, film grain, 35mm",
                                                               "cartoon, drawing")
    with pytest.raises(KeyError) as e:
        again.apply("x", "", ["Nope"])
    assert "Cinematic" in str(e.value)
    again.delete("Sketch")
    assert StyleStore(path).names() == ["Cinematic"]


def test_missing_or_broken_file_gives_no_styles(tmp_path):
    assert StyleStore(tmp_path / "none.csv").names() == []
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert StyleStore(bad).names() == []
