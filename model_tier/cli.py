"""step-realtime model-tier: deploy the config's remote stages (ray-whisper, ray-piper) on Ray Serve.

The cluster's address is the stages' `address` (they must agree; --address overrides it). When
nothing answers there and it is on this host, a local cluster is started there — `ray start
--head --block` as a child process: the real GCS, raylet and workers, with no dashboard — the
applications are deployed, and the command stays in the foreground: SIGINT/SIGTERM stops the
cluster it started. When a cluster answers (a `ray start --head` of your own, a KubeRay
RayCluster), the applications are deployed (or updated in place) there and the command returns;
they live in the cluster.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="step-realtime model-tier",
                                     description="Deploy the config's remote stages (ray-whisper, ray-piper) on Ray "
                                                 "Serve, starting a local Ray cluster if none answers")
    parser.add_argument("--config", default="configs/ray.yaml")
    parser.add_argument("--address", help="the Ray cluster (host:port); default: the stages' address")
    parser.add_argument("--num-cpus", type=float, help="CPUs a started local cluster offers (default: all)")
    parser.add_argument("--num-gpus", type=float, help="GPUs a started local cluster offers (default: detected)")
    parser.add_argument("--object-store-mb", type=int, default=200,
                        help="a started local cluster's shared-memory object store (default 200)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (a YAML value)")
    return parser


def main(argv: list[str]) -> int:
    import yaml

    from core.config import ConfigError
    from realtime.config import load_config

    args = _parser().parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    head: subprocess.Popen | None = None
    try:
        overrides = {}
        for item in args.overrides:
            key, _, value = item.partition("=")
            overrides[key.strip()] = yaml.safe_load(value)
        cfg = load_config(args.config, overrides)
        address = args.address or _address(cfg)
        from core.ray_serve import prepare_env

        prepare_env(address)  # before ray is imported (by the deployments): it reads the environment then
        from model_tier.deployments import applications

        apps = applications(cfg)
        if not _answers(address):
            if not _is_local(address):
                raise ConfigError(f"no Ray cluster answers at {address}")
            head = _start_head(address, args)
        _deploy(address, apps)
        names = ", ".join(f"{name} ({what})" for name, (what, _) in apps.items())
        print(f"model tier ready at {address}: {names}", flush=True)
        if head is None:
            return 0
        return _until_stopped(head)
    except ConfigError as exc:
        print(f"step-realtime model-tier: config error: {exc}", file=sys.stderr)
        return 2
    except TierError as exc:
        print(f"step-realtime model-tier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if head is not None:
            _stop_head(head)


class TierError(Exception):
    """The model tier could not be started (one line, exit 1)."""


def _address(cfg) -> str:
    from core.config import ConfigError

    addresses = {getattr(cfg, kind).options().get("address") for kind in ("tokenizer", "decoder")
                 if getattr(cfg, kind).impl.startswith("ray-")}
    if not addresses:
        raise ConfigError("the config has no remote stage (tokenizer: ray-whisper, decoder: ray-piper)")
    addresses = {a or _default_address() for a in addresses}
    if len(addresses) != 1:
        raise ConfigError(f"the remote stages name different Ray clusters ({', '.join(sorted(addresses))})")
    return addresses.pop()


def _default_address() -> str:
    from core.ray_serve import DEFAULT_ADDRESS

    return DEFAULT_ADDRESS


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_local(address: str) -> bool:
    return _split(address)[0] in ("127.0.0.1", "localhost", "::1")


def _answers(address: str) -> bool:
    if address == "auto":
        return True
    try:
        with socket.create_connection(_split(address), timeout=2):
            return True
    except OSError:
        return False


def _start_head(address: str, args: argparse.Namespace) -> subprocess.Popen:
    """`ray start --head --block` on loopback, in its own process group; returns once it answers."""
    host, port = _split(address)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
           f"--node-ip-address={host}", "--include-dashboard=false", "--disable-usage-stats",
           f"--object-store-memory={args.object_store_mb * 1024 * 1024}"]
    if args.num_cpus is not None:
        cmd.append(f"--num-cpus={args.num_cpus:g}")
    if args.num_gpus is not None:
        cmd.append(f"--num-gpus={args.num_gpus:g}")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # advertise loopback, not the LAN address
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    print(f"starting a local Ray cluster at {address}", flush=True)
    head = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    threading.Thread(target=_forward, args=(head.stderr,), daemon=True).start()
    deadline = time.monotonic() + 120
    while not _answers(address):
        if head.poll() is not None:
            raise TierError(f"ray start --head exited with {head.returncode} (its log is above)")
        if time.monotonic() > deadline:
            _stop_head(head)
            raise TierError(f"the local Ray cluster did not answer at {address} within 120 s")
        time.sleep(0.3)
    return head


def _forward(stream) -> None:
    """Ray's start-up log (its warnings and errors) on our stderr, without its banner's colours."""
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace").rstrip()
        if "WARNING" in text or "ERROR" in text or "Error" in text:
            print(text, file=sys.stderr, flush=True)


def _deploy(address: str, apps: dict) -> None:
    from ray import serve

    from core import ray_serve

    ray_serve.connect(address)
    try:
        serve.start(proxy_location="Disabled")  # the media workers use handles: no HTTP proxy
        for name, (_, app) in apps.items():
            try:
                serve.run(app, name=name, route_prefix=None)  # returns once the replicas are up
            except Exception as exc:
                raise TierError(f"deploying {name!r} failed: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        ray_serve.disconnect()


def _until_stopped(head: subprocess.Popen) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        if head.poll() is not None:
            print(f"step-realtime model-tier: the Ray cluster exited ({head.returncode})", file=sys.stderr)
            return 1
        stop.wait(0.5)
    return 0


def _stop_head(head: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` stops the cluster's processes; its process group goes if not."""
    if head.poll() is None:
        head.terminate()
        try:
            head.wait(timeout=45)  # ray drains the node for up to 30 s
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)  # the group we started (start_new_session): stragglers
    except (ProcessLookupError, PermissionError):
        pass
