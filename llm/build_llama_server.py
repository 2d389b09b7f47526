"""Build llama.cpp's `llama-server` from the pinned llama-cpp-python sdist, once per machine.

    python -m llm.build_llama_server [--cache-dir ~/.cache/step-realtime] [--jobs 2] [--force]

The sdist (requirements/llama-server.txt: one version, one sha256) vendors the llama.cpp tree it
was released with (`vendor/llama.cpp`). This script fetches it with pip (hash-checked, the pip
registry being the only source of code here), extracts that tree, configures a CPU-only Release
build (static libraries, no curl/OpenSSL, no tests/examples, no web UI — so nothing is fetched
during the build) and builds only the `llama-server` target. The binary is installed as
`<cache-dir>/bin/llama-server-<first 12 hex digits of the sdist's sha256>-<CPU flags and build options hash>`, so a
finished build is found at once (a no-op run takes well under a second) and a different pin, or a
CPU with other instructions, builds anew.
llm/llama_server.py looks for the binary under the same name.

The build is for this machine's CPU (GGML_NATIVE, llama.cpp's default), hence the CPU in the name.
Cold build on the 2-core dev machine: see docs/llm.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements" / "llama-server.txt"
DEFAULT_CACHE_DIR = Path("~/.cache/step-realtime")
TARGET = "llama-server"

# Everything but the server off; no network during the build (the web UI would otherwise be
# downloaded from Hugging Face, and OpenSSL/curl only serve model downloads we never do).
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_LLGUIDANCE=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_RPC=OFF",
]
# ggml's AMX matrix kernels (built whenever -march=native finds AMX, as on Sapphire Rapids Xeons)
# crash the server at its first matrix product on our quantized models on such VMs (SIGSEGV in
# ggml_backend_amx_mul_mat, 2026-12-03). AVX-512 is kept; these models are too small for AMX to
# matter. GCC and clang let an explicit -mno-* win over -march=native whatever the order.
if platform.machine().lower() in ("x86_64", "amd64"):
    _NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_FLAGS += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]


class BuildError(RuntimeError):
    pass


def pinned_sdist(requirements: Path = REQUIREMENTS) -> tuple[str, str]:
    """(requirement `name==version`, sha256) of the one pinned sdist."""
    text = requirements.read_text()
    reqs = re.findall(r"^([A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+)", text, re.M)
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", text)
    if len(reqs) != 1 or len(hashes) != 1:
        raise BuildError(f"{requirements}: expected one pinned requirement with one sha256")
    return reqs[0], hashes[0]


def binary_name(requirements: Path = REQUIREMENTS) -> str:
    """`llama-server-<sdist hash>-<cpu>`: the build is for this CPU's instruction set (GGML_NATIVE),
    so a cache carried to a machine with other CPU flags builds anew instead of crashing."""
    return f"{TARGET}-{pinned_sdist(requirements)[1][:12]}-{cpu_tag()}"


def cpu_tag() -> str:
    """A short hash of the CPU's feature flags (/proc/cpuinfo) and of the build options (a binary
    built with other options, e.g. before AMX was turned off, is not reused), or "generic" where
    the CPU has no flags line."""
    import hashlib

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "generic"
    target = " ".join(sorted(flags.split(":", 1)[1].split())) + "\n" + " ".join(CMAKE_FLAGS)
    return hashlib.sha256(target.encode()).hexdigest()[:8]


def binary_path(cache_dir: Path = DEFAULT_CACHE_DIR, requirements: Path = REQUIREMENTS) -> Path:
    return Path(cache_dir).expanduser() / "bin" / binary_name(requirements)


def _run(cmd: list[str], log) -> None:
    log.write(f"+ {' '.join(cmd)}\n".encode())
    log.flush()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Extract only <top>/vendor/llama.cpp/ from the sdist; returns that directory."""
    with tarfile.open(sdist) as tar:
        members = []
        top = None
        for m in tar.getmembers():
            parts = m.name.split("/")
            # (not its .git: a submodule link into a repository the sdist does not have)
            if len(parts) >= 3 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3:4] != [".git"]:
                top = parts[0]
                members.append(m)
        if not members:
            raise BuildError(f"{sdist} has no vendor/llama.cpp")
        tar.extractall(dest, members=members, filter="data")
    return dest / top / "vendor" / "llama.cpp"


def build(cache_dir: Path = DEFAULT_CACHE_DIR, jobs: int | None = None, force: bool = False,
          requirements: Path = REQUIREMENTS) -> Path:
    """The installed binary's path, building it first unless it is there already."""
    target = binary_path(cache_dir, requirements)
    if target.is_file() and os.access(target, os.X_OK) and not force:
        return target
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildError(f"building {TARGET} needs {tool} (Debian: apt-get install cmake g++ ninja-build)")
    requirement, sha256 = pinned_sdist(requirements)
    jobs = jobs or int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or 0) or os.cpu_count() or 1
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent.parent / "logs" / f"{target.name}-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"== building {TARGET} from {requirement} (sha256 {sha256[:12]}…) with {jobs} jobs: "
          f"~11 min on 2 cores, once per machine; log {log_path}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-", dir=target.parent.parent) as tmp, \
            open(log_path, "wb") as log:
        try:
            _build(work=Path(tmp), requirements=requirements, target=target, jobs=jobs, log=log)
        except subprocess.CalledProcessError as exc:
            raise BuildError(f"{exc}; the end of {log_path}:\n{_tail(log_path)}") from exc
    print(f"== {TARGET} built in {time.monotonic() - t0:.0f} s: {target}", file=sys.stderr)
    return target


def _build(work: Path, requirements: Path, target: Path, jobs: int, log) -> None:
    """Download the sdist, extract vendor/llama.cpp, configure, build, install the binary."""
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
          "--require-hashes", "-r", str(requirements), "-d", str(work / "sdist")], log)
    sdists = list((work / "sdist").glob("*.tar.gz"))
    if len(sdists) != 1:
        raise BuildError(f"pip download gave {sdists}, expected one .tar.gz")
    src = _extract_llama_cpp(sdists[0], work / "src")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(src), "-B", str(work / "build"), *generator, *CMAKE_FLAGS], log)
    _run(["cmake", "--build", str(work / "build"), "--target", TARGET, "--parallel", str(jobs)], log)
    built = work / "build" / "bin" / TARGET
    if not built.is_file():
        raise BuildError(f"the build produced no {built}")
    staged = target.with_name(target.name + ".part")
    shutil.copy2(built, staged)
    staged.chmod(0o755)
    os.replace(staged, target)  # atomic: a half-copied binary is never found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: "
                    "$CMAKE_BUILD_PARALLEL_LEVEL, else the number of cores)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the binary is there")
    args = ap.parse_args(argv)
    try:
        path = build(args.cache_dir, args.jobs, args.force)
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"!! {TARGET} build failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
