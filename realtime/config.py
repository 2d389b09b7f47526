"""The server's YAML config, validated on load (the shared helpers live in core/config.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controller.config import ControllerConfig
from core.load import AdmissionConfig
from core.config import ConfigError, StageConfig, explain, yaml_problem
from tools.config import ToolConfig


class IceServer(BaseModel):
    """A STUN/TURN server with credentials (TURN needs them), as in RTCIceServer."""
    model_config = ConfigDict(extra="forbid")
    urls: str | list[str] = Field(description="e.g. turn:turn.example.org:3478?transport=udp")
    username: str | None = None
    credential: str | None = None


class EchoCancellationConfig(BaseModel):
    """Server-side echo cancellation (realtime/echo.py) by transport; session.update can change it
    per session (audio.input.echo_cancellation)."""
    model_config = ConfigDict(extra="forbid")
    telephony: bool = Field(True, description="phone lines: handsets and speakerphones cancel little echo")
    websocket: bool = Field(False, description="Realtime WebSocket clients (many capture with their own AEC)")
    webrtc: bool = Field(False, description="browsers cancel echo themselves")


class AudioSocketConfig(BaseModel):
    """Asterisk AudioSocket calls (realtime/telephony/audiosocket.py): a TCP port of their own."""
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=0, le=65535, description="0: any free port (tests)")


class RecordingsConfig(BaseModel):
    """Phone calls recorded (stereo WAV, caller left, agent right) with a JSON transcript, per call."""
    model_config = ConfigDict(extra="forbid")
    dir: str = Field(description="where <time>-<session id>.wav/.json are written at each call's end")
    max_mb: float = Field(50.0, gt=0, description="a recording stops growing at this size (~55 min at 8 kHz)")


class TwilioApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_sid: str
    auth_token: str
    api_base: str = "https://api.twilio.com"


class TelnyxApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str
    api_base: str = "https://api.telnyx.com"


class VonageApiConfig(BaseModel):
    """A Vonage application: its id and private key sign the JWT each Voice API request carries."""
    model_config = ConfigDict(extra="forbid")
    application_id: str
    private_key_file: Path = Field(description="the application's PEM private key (RS256)")
    api_base: str = "https://api.nexmo.com"

    @field_validator("private_key_file")
    @classmethod
    def _readable(cls, path: Path) -> Path:
        path = path.expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: no such file (the Vonage application's private key)")
        return path


class CarriersConfig(BaseModel):
    """The carriers' REST APIs, for call control (hang up, transfer: realtime/telephony/control.py)."""
    model_config = ConfigDict(extra="forbid")
    twilio: TwilioApiConfig | None = None
    telnyx: TelnyxApiConfig | None = None
    vonage: VonageApiConfig | None = None
    public_url: str | None = Field(None, description="https://this-server, for Twilio and Vonage to fetch a warm "
                                                             "transfer's whisper")
    model_tools: bool = Field(False, description="offer the model end_call and transfer_call on phone calls "
                                                 "(realtime/telephony/call_tools.py)")


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_sessions: int = Field(64, ge=1, description="hard ceiling (the media plane's); admission by measured "
                                                    "capacity refuses earlier (server.admission)")
    admission: AdmissionConfig = AdmissionConfig()
    max_event_bytes: int = Field(2_000_000, ge=1024, description="largest client JSON event")
    max_sdp_bytes: int = Field(65_536, ge=1024)
    drain_grace_s: float = Field(30.0, ge=0, description="on SIGTERM: how long calls in progress may go on "
                                                         "(no new ones admitted) before they are ended")
    cache_dir: str = Field("~/.cache/step-realtime", description="assembled embedded models")
    echo_cancellation: EchoCancellationConfig = EchoCancellationConfig()
    audiosocket: AudioSocketConfig | None = Field(None, description="Asterisk AudioSocket listener; off by default")
    agent_port: int | None = Field(None, ge=0, le=65535, description="HAProxy agent-check (realtime/agent_check.py): "
                                                                     "this server's load on a TCP port; off by default")
    recordings: RecordingsConfig | None = Field(None, description="phone call recordings; off by default")
    carriers: CarriersConfig | None = None
    ice_servers: list[str | IceServer] = Field(
        default_factory=list, description="STUN/TURN servers for WebRTC: URLs, or {urls, username, credential} "
                                          "for TURN (none: host candidates only)")


class ContextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system_prompt: str = "You are a helpful voice assistant. Answer briefly, in one or two short sentences."
    max_prompt_tokens: int = Field(1536, ge=64)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: ServerConfig = ServerConfig()
    vad: StageConfig
    tokenizer: StageConfig
    llm: StageConfig
    decoder: StageConfig
    turn: StageConfig = StageConfig(impl="none")  # the end-of-turn model; none: the fixed wait
    context: ContextConfig = ContextConfig()
    controller: ControllerConfig = ControllerConfig()
    tools: list[ToolConfig] = Field(default_factory=list, description="server-side tools (docs/tools.md)")

    @property
    def cache_path(self) -> Path:
        return Path(self.server.cache_dir).expanduser()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {explain(exc)}") from None
