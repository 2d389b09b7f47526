"""step-realtime: serve | chat | tts | models | check-config | bench | eval | model-tier.

Config problems print one line (file, option, why) and exit 2, without a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import yaml

from realtime.config import Config, ConfigError, load_config
from core.stages import REGISTRY

DEFAULT_CONFIG = "configs/default.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="step-realtime", description="Real-time full-duplex voice agent server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (web client, Realtime WebSocket and WebRTC on one port)")
    serve.add_argument("--config", default=DEFAULT_CONFIG)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port (0: any free port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    cluster = serve.add_argument_group("many workers on this box (realtime/cluster/, docs/deploy.md)")
    cluster.add_argument("--workers", type=int, default=0, metavar="N",
                         help="run N worker processes, each a whole server on port worker-port + i")
    cluster.add_argument("--haproxy", action="store_true",
                         help="with --workers: HAProxy on --port/server.port as their entry (agent-check load)")
    cluster.add_argument("--worker-port", type=int, help="first worker's port (default: server.port + 1)")
    cluster.add_argument("--agent-port", type=int, help="first worker's agent-check port (default: worker-port + 1000)")
    cluster.add_argument("--print-haproxy-config", action="store_true",
                         help="with --workers: print the entry's HAProxy config and exit")
    models = sub.add_parser("models", help="assemble the embedded models into the cache directory")
    models.add_argument("--config", default=DEFAULT_CONFIG)
    sub.add_parser("bench", help="measure voice-to-voice latency at the caller (see: step-realtime bench --help)")
    sub.add_parser("eval", help="typed turns checked for tool calls and answers (see: step-realtime eval --help)")
    sub.add_parser("model-tier", help="deploy the remote ASR/TTS on Ray Serve (see: step-realtime model-tier --help)")
    check = sub.add_parser("check-config", help="validate a config file (and, with --build, build its stages)")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    check.add_argument("--build", action="store_true", help="also build every stage (loads the models)")
    chat = sub.add_parser("chat", help="recorded questions in, spoken answers out: one conversation, a turn per file",
                          description="Each --in file is one user turn of one conversation (history kept), through "
                                      "the same pipeline as a call. Writes DIR/reply_NN.wav and a JSON line per turn "
                                      "(stdout and DIR/turns.jsonl).")
    chat.add_argument("--in", dest="inputs", action="append", required=True, metavar="AUDIO",
                      help="a recorded question (WAV, or any format ffmpeg reads; any rate, mono or stereo); repeat "
                           "for the next turns")
    chat.add_argument("--out-dir", required=True, metavar="DIR")
    chat.add_argument("--timeout", type=float, default=600.0, help="seconds one turn may take (default 600)")
    tts = sub.add_parser("tts", help="speak a text with the configured decoder (Step-Audio: tags, voices, cloning)")
    tts.add_argument("--text", required=True, help="e.g. \"(高兴1)今天天气真好\"; leading (tags) as Step-Audio-TTS-3B reads them")
    who = tts.add_mutually_exclusive_group()
    who.add_argument("--voice", help="step-audio: a speaker of decoder.speaker_dir; piper: a voice name or .onnx path")
    who.add_argument("--prompt-wav", help="clone the voice of this recording (Step-Audio decoder; with --prompt-text)")
    tts.add_argument("--prompt-text", help="what the prompt recording says")
    tts.add_argument("--out", required=True, metavar="WAV")
    for offline in (chat, tts):
        offline.add_argument("--config", default=DEFAULT_CONFIG)
        offline.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    for command in (serve, check, chat, tts):
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config value, e.g. --set decoder.device=cpu (a YAML value)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    overrides = {}
    if getattr(args, "host", None):
        overrides["server.host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["server.port"] = args.port
    for item in getattr(args, "overrides", []):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. decoder.device=cpu")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key.strip()] = value
    cfg = load_config(args.config, overrides)
    for kind in REGISTRY:
        impl = getattr(cfg, kind).impl
        if impl not in REGISTRY[kind]:
            known = ", ".join(sorted(REGISTRY[kind]))
            raise ConfigError(f"{args.config}: {kind}.impl: unknown implementation {impl!r} (known: {known})")
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the load tool has its own options (bench/run.py)
        from bench.run import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["eval"]:  # typed turns checked for tool calls and answers (realtime/eval.py)
        from realtime.eval import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["model-tier"]:  # the remote stages on Ray Serve (model_tier/cli.py; needs the ray extra)
        from model_tier.cli import main as tier_main

        return tier_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        cfg = _load(args)
        if args.command == "check-config":
            return _check(cfg, args)
        if args.command == "models":
            return _models(cfg)
        if args.command in ("chat", "tts"):
            return _offline(cfg, args)
        if args.workers or args.haproxy or args.print_haproxy_config:
            return _cluster(cfg, args)
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _run(_serve(cfg))
        return 0
    except ConfigError as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"step-realtime: config error: {message}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"step-realtime: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


class StartupError(Exception):
    """The server could not start (a model missing, the port taken, ...): one line, exit 1."""


def _check(cfg: Config, args: argparse.Namespace) -> int:
    if args.build:
        from core.stages import BuildEnv, build_all

        stages = build_all(cfg, BuildEnv(cache_dir=cfg.cache_path))
        print("stages: " + ", ".join(f"{k}={type(v).__name__}" for k, v in stages.items()))
    impls = ", ".join(f"{kind}={getattr(cfg, kind).impl}" for kind in REGISTRY)
    print(f"{args.config}: ok ({impls}; {cfg.server.host}:{cfg.server.port})")
    if cfg.server.auth.enabled:  # keys may come from the environment at serve time
        from realtime.auth import Authenticator
        try:
            Authenticator(cfg)
        except ConfigError as exc:
            print(f"note: {exc}")
    return 0


def _cluster(cfg: Config, args: argparse.Namespace) -> int:
    """serve --workers N [--haproxy]: realtime/cluster/ (the parent supervises; workers serve)."""
    if args.workers < 1:
        raise ConfigError("--haproxy and --print-haproxy-config need --workers N (N >= 1)")
    from pathlib import Path

    from realtime import cluster

    if args.print_haproxy_config:
        entry, ports, agents = cluster.plan_ports(cfg, args.workers, args.worker_port, args.agent_port)
        specs = [cluster.WorkerSpec(f"w{i}", cfg.server.host, ports[i], agents[i], args.config)
                 for i in range(args.workers)]
        print(cluster.haproxy_config(cfg, entry, specs, Path("/run/haproxy/step-realtime.sock")), end="")
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run(cluster.run_cluster(cfg, args.config, args.overrides, args.workers, with_haproxy=args.haproxy,
                                 worker_port=args.worker_port, agent_port=args.agent_port,
                                 log_level=args.log_level))
    except (RuntimeError, OSError) as exc:  # a worker or HAProxy would not start (HAProxyError too)
        raise StartupError(str(exc)) from None
    return 0


def _models(cfg: Config) -> int:
    from core import assets  # another module's heavy lifting; only this command needs it

    try:
        paths = assets.ensure_all(cfg.cache_path)
    except assets.AssetError as exc:
        print(f"step-realtime: models: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _offline(cfg: Config, args: argparse.Namespace) -> int:
    """The offline commands (realtime/offline.py, realtime/offline_tts.py): one line and exit 2 for
    bad input (a missing or unreadable file, an unknown voice), exit 1 when the run fails."""
    from realtime.offline import OfflineError

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "chat":
            from realtime.offline import run_chat

            records = _run(run_chat(cfg, args.inputs, args.out_dir, timeout_s=args.timeout))
            return 0 if all(r["status"] == "completed" for r in records) else 1
        from realtime.offline_tts import run_tts

        _run(run_tts(cfg, args.text, args.out, args.voice, args.prompt_wav, args.prompt_text))
        return 0
    except OfflineError as exc:
        print(f"step-realtime: {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _serve(cfg: Config) -> None:
    from aiohttp import web

    from core.memory import bound_malloc_arenas
    bound_malloc_arenas()  # before the model threads start (core/memory.py)

    from realtime.app import create_app

    runner = web.AppRunner(create_app(cfg), handle_signals=False)
    try:
        await runner.setup()  # builds and starts the stages
        site = web.TCPSite(runner, cfg.server.host, cfg.server.port)
        await site.start()
    except ConfigError:
        await runner.cleanup()
        raise
    except Exception as exc:
        logging.getLogger(__name__).debug("startup failed", exc_info=True)
        await runner.cleanup()
        raise StartupError(f"{type(exc).__name__}: {exc}") from None
    try:
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"step-realtime listening on http://{shown}:{port}/ (Realtime WebSocket: "
              f"ws://{shown}:{port}/v1/realtime)", flush=True)
        await _until_stopped(runner.app, cfg.server.drain_grace_s)
    finally:
        await runner.cleanup()


async def _until_stopped(app, grace_s: float) -> None:
    """SIGINT stops at once; SIGTERM drains first (realtime/drain.py): no new sessions, those in
    progress get up to `grace_s` to finish. A second signal cuts the grace short."""
    from realtime.drain import drain
    from realtime.ws import SERVER_KEY

    interrupted, terminated, hurry = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(first: asyncio.Event) -> None:
        (hurry if interrupted.is_set() or terminated.is_set() else first).set()

    loop.add_signal_handler(signal.SIGINT, on_signal, interrupted)
    loop.add_signal_handler(signal.SIGTERM, on_signal, terminated)
    waits = [asyncio.create_task(e.wait()) for e in (interrupted, terminated)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    if terminated.is_set():
        logging.getLogger(__name__).info("SIGTERM: draining (grace %.0f s)", grace_s)
        await drain(app[SERVER_KEY], grace_s, hurry)


if __name__ == "__main__":
    sys.exit(main())
