"""What the remote stages (streaming_tokenizer/ray_whisper.py, decoder/ray_piper.py) share: the
connection to the model tier's Ray cluster, their deployment's settings and the calls themselves.

A media worker joins the model tier's Ray cluster as a driver (`ray.init(address=...)`: one per
process, shared by every remote stage) and calls Serve applications through DeploymentHandles, so
a call is one hop to a replica, with Serve's own routing, queueing and replica replacement. Ray is
imported only here and only when a remote stage is configured: the embedded default never needs it
(it is the optional `ray` extra, requirements/ray.txt).

Remote calls are asyncio and cancellable: a cancelled caller cancels its Serve request (queued: it
never runs; streaming: the replica's generator is closed). Errors become the calling stage's own
exception classes, so controller/failures.py names the stage in the client's `error` event:
`unreachable` (a replica died, no replica is up, the cluster is gone) or `failed` (the model code
raised in the replica).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:6390"  # where `step-realtime model-tier` starts its local cluster


class Autoscaling(BaseModel):
    """Serve's request-based autoscaling (replicas between min and max, by ongoing requests)."""
    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0, description="per replica, averaged")
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)


class DeploymentOptions(BaseModel):
    """How the model tier runs one remote stage: replicas (fixed or autoscaled), where they may be
    placed (each replica reserves num_cpus / num_gpus of a node: GPU replicas go to GPU nodes) and
    how requests are batched. Read by `step-realtime model-tier`; the media worker ignores it."""
    model_config = ConfigDict(extra="forbid")
    num_replicas: int = Field(1, ge=1)
    autoscaling: Autoscaling | None = Field(None, description="instead of num_replicas")
    num_cpus: float = Field(1.0, ge=0, description="reserved per replica (placement; Ray also sets its threads)")
    num_gpus: float = Field(0.0, ge=0, description="> 0: the replica goes to a node with a GPU")
    resources: dict[str, float] = Field(default_factory=dict, description="custom node resources, e.g. {asr_node: 1}")
    max_ongoing_requests: int = Field(16, ge=1, description="per replica; more wait in the callers' routers")
    max_batch_size: int = Field(8, ge=1, le=64, description="requests batched together (ASR: serve.batch)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1, description="how long a batch waits to fill")
    health_check_period_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _replicas(self) -> "DeploymentOptions":
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("give num_replicas or autoscaling, not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of `Deployment.options()`."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            actor["resources"] = dict(self.resources)
        options: dict[str, Any] = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests,
                                   "health_check_period_s": self.health_check_period_s}
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


class RemoteOptions(BaseModel):
    """Options every remote stage has (its own Options add the model's)."""
    model_config = ConfigDict(extra="forbid")
    address: str = Field(DEFAULT_ADDRESS, description="the Ray cluster's GCS address (host:port) or 'auto'")
    app: str = Field(description="the Serve application's name")
    timeout_s: float = Field(30.0, gt=0, description="longest wait for a remote result (or the next streamed piece)")
    max_in_flight: int = Field(16, ge=1, le=256, description="remote calls this worker has out at once; more wait "
                                                             "in the scheduler's lane, the most urgent first")
    deployment: DeploymentOptions = DeploymentOptions()


_lock = threading.Lock()
_users = 0


def connect(address: str) -> None:
    """Join the Ray cluster at `address` as a driver (once per process; later calls count users)."""
    global _users
    prepare_env(address)  # before ray is imported: it reads the environment at import
    import ray

    _check_reachable(address)
    with _lock:
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as exc:
                from core.config import ConfigError

                raise ConfigError(f"cannot reach the model tier's Ray cluster at {address} ({type(exc).__name__}); "
                                  "start it with `step-realtime model-tier --config ...`") from None
        _users += 1


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens there (ray.init would retry for minutes)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            return
    except (OSError, ValueError):
        from core.config import ConfigError

        raise ConfigError(f"nothing answers at {address}, the model tier's Ray cluster; start it with "
                          "`step-realtime model-tier --config ...`") from None


def disconnect() -> None:
    """The last user's disconnect leaves the cluster (the cluster and its apps go on)."""
    global _users
    import ray

    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and ray.is_initialized():
            ray.shutdown()


def prepare_env(address: str) -> None:
    """A cluster on loopback (the local model tier) advertises 127.0.0.1, and so must we, or Ray
    resolves 127.0.0.1 to this host's LAN address. A cluster with token authentication (Ray's
    default for clusters it starts) needs the client to send the token it wrote."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:  # ray was imported before (model_tier): it read the variable already
            constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def app_handle(app: str, address: str) -> Any:
    """The DeploymentHandle of a running Serve application (a ConfigError if it is not deployed)."""
    from ray import serve

    try:
        return serve.get_app_handle(app)
    except Exception as exc:
        from core.config import ConfigError

        raise ConfigError(f"the model tier at {address} has no application {app!r} ({type(exc).__name__}); "
                          "deploy it with `step-realtime model-tier --config ...`") from None


def connected_handle(app: str, address: str) -> Any:
    """Connect to the cluster and return the application's handle; disconnected again if it fails."""
    connect(address)
    try:
        return app_handle(app, address)
    except Exception:
        disconnect()
        raise


def translate(exc: BaseException, unreachable: type[Exception], failed: type[Exception]) -> Exception:
    """A Ray/Serve error as the stage's own: `failed` when the model code raised in the replica,
    else `unreachable` (the replica died, none is up, the cluster is gone)."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and not _died(exc):
        return failed("the model tier's replica raised an error")
    return unreachable(f"the model tier did not answer ({type(exc).__name__})")


def _died(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    cause = getattr(exc, "cause", None)
    return isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError)) or \
        isinstance(cause, (RayActorError, ActorDiedError, ActorUnavailableError))


async def call(response: Any, timeout_s: float, unreachable: type[Exception], failed: type[Exception]) -> Any:
    """Await a unary DeploymentResponse; cancelled or timed out, the request is cancelled."""
    try:
        return await asyncio.wait_for(_await(response), timeout_s)
    except (asyncio.CancelledError, TimeoutError):
        response.cancel()
        raise
    except Exception as exc:
        log.warning("remote call failed: %r", exc)
        raise translate(exc, unreachable, failed) from None


async def _await(response: Any) -> Any:
    return await response


async def stream(generator: Any, timeout_s: float, unreachable: type[Exception],
                 failed: type[Exception]) -> AsyncIterator[Any]:
    """The pieces of a streaming DeploymentResponseGenerator; closed early (cancel, aclose) or timed
    out, the request is cancelled and the replica's generator stops."""
    try:
        while True:
            try:
                piece = await asyncio.wait_for(generator.__anext__(), timeout_s)
            except StopAsyncIteration:
                return
            except (asyncio.CancelledError, TimeoutError):
                raise
            except Exception as exc:
                log.warning("remote stream failed: %r", exc)
                raise translate(exc, unreachable, failed) from None
            yield piece
    finally:
        generator.cancel()  # a no-op when it ran to its end
