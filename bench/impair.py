"""Packet loss and jitter on an aiortc peer's UDP sockets, in user space: netem's job, for kernels
without it (this machine's: CONFIG_NET_SCH_NETEM is not set; bench/netem_webrtc.sh uses the real
thing where it exists).

Every datagram the peer sends or receives (media, DTLS, STUN alike) is dropped with probability
`loss`, else delivered after a uniform random delay in [0, jitter_ms] — so packets also arrive out
of order, as with netem's `delay 0ms <jitter>`. Both directions are impaired, at the caller's end,
or only what the caller sends (`direction=up`: what the server receives) or receives (`down`).

    STEP_BENCH_IMPAIR="loss=0.05,jitter_ms=50" .venv/bin/python -m bench --transport webrtc ...
    STEP_BENCH_IMPAIR="loss=0.01,jitter_ms=0,direction=up" ...
"""
from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field

ENV = "STEP_BENCH_IMPAIR"


@dataclass
class Impairment:
    loss: float = 0.05
    jitter_ms: float = 50.0
    seed: int | None = None
    direction: str = "both"  # "up": the caller's sends only; "down": what it receives only
    rng: random.Random = field(init=False)
    sent: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.loss < 1 or self.jitter_ms < 0:
            raise ValueError("loss must be in [0, 1) and jitter_ms ≥ 0")
        if self.direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be both, up or down, not {self.direction!r}")
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, spec: str) -> "Impairment":
        """"loss=0.05,jitter_ms=50[,seed=1][,direction=up]"."""
        values = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
        unknown = set(values) - {"loss", "jitter_ms", "seed", "direction"}
        if unknown:
            raise ValueError(f"{ENV}: unknown {sorted(unknown)} (loss, jitter_ms, seed, direction)")
        return cls(float(values.get("loss", 0.05)), float(values.get("jitter_ms", 50)),
                   int(values["seed"]) if "seed" in values else None, values.get("direction", "both"))

    def _deliver(self, deliver) -> None:
        self.sent += 1
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        asyncio.get_running_loop().call_later(self.rng.uniform(0, self.jitter_ms / 1000), deliver)

    def apply(self, pc) -> int:
        """Impair every ICE socket `pc` has gathered (call after setLocalDescription). Returns
        how many sockets were wrapped."""
        wrapped = 0
        for connection in _ice_connections(pc):
            for protocol in connection._protocols:  # aioice StunProtocol, one per local candidate
                if getattr(protocol, "_step_impaired", False):
                    continue
                protocol._step_impaired = True
                transport, received = protocol.transport, protocol.datagram_received
                send = transport.sendto

                def send_later(data, addr=None, _send=send, _transport=transport) -> None:
                    # (a delayed packet of a connection closed meanwhile is lost, as on a wire)
                    self._deliver(lambda: None if _transport.is_closing() else _send(data, addr))

                def receive_later(data, addr, _recv=received, _transport=transport) -> None:
                    self._deliver(lambda: None if _transport.is_closing() else _recv(data, addr))
                if self.direction != "down":
                    transport.sendto = send_later
                if self.direction != "up":
                    protocol.datagram_received = receive_later
                wrapped += 1
        return wrapped


def _ice_connections(pc) -> list:
    seen, out = set(), []
    transports = [t.sender.transport for t in pc.getTransceivers() if t.sender.transport is not None]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        connection = dtls.transport.iceGatherer._connection
        if id(connection) not in seen:
            seen.add(id(connection))
            out.append(connection)
    return out


def from_env() -> Impairment | None:
    spec = os.environ.get(ENV)
    return Impairment.parse(spec) if spec else None
