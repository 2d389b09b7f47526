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


class AuthConfig(BaseModel):
    """Who may use the server (realtime/auth.py, docs/operations.md#authentication). On unless a
    config says `enabled: false` (configs/fake.yaml and `make run`, both on loopback, do)."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="false: no keys asked for (local development only)")
    api_keys: list[str] = Field(default_factory=list, description="accepted API keys (Authorization: Bearer); "
                                                                  "more from the environment variable api_keys_env")
    api_keys_env: str = Field("STEP_REALTIME_API_KEYS", description="comma-separated API keys from the environment")
    allowed_origins: list[str] = Field(
        default_factory=list, description="browser Origins allowed on the Realtime endpoints, e.g. "
                                          "https://app.example.org; empty: this server's own origin only; '*': any")
    client_secret_ttl_s: int = Field(600, ge=10, le=7200, description="default lifetime of a client secret "
                                                                      "(POST /v1/realtime/client_secrets)")
    twilio_auth_token: str | None = Field(None, description="checks X-Twilio-Signature (default: "
                                                            "server.carriers.twilio.auth_token)")
    public_url: str | None = Field(None, description="https://this-server as the carriers see it, for Twilio's "
                                                     "signatures behind a proxy (default: server.carriers.public_url)")

    @field_validator("api_keys")
    @classmethod
    def _long_enough(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("an API key must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return keys


class LimitsConfig(BaseModel):
    """Per-client and per-session bounds (realtime/limits.py, docs/operations.md#limits). 0 turns a
    time limit off."""
    model_config = ConfigDict(extra="forbid")
    sessions_per_ip_per_minute: int = Field(30, ge=0, description="new WebSocket/WebRTC sessions (and client "
                                            "secrets) per client IP per minute; beyond: 429 + Retry-After; 0: off")
    trust_forwarded_for: bool = Field(False, description="take the client IP from X-Forwarded-For's last hop "
                                                         "(only behind a proxy that sets it)")
    idle_timeout_s: float = Field(600.0, ge=0, description="end a session with no speech, reply or client "
                                                           "event (audio appends aside) for this long")
    max_session_s: float = Field(3600.0, ge=0, description="end every session after this long (Realtime: 60 min)")
    expiry_warning_s: float = Field(60.0, ge=0, description="step.session_expiring is sent this long before "
                                                            "either end")
    max_outbound_events: int = Field(4096, ge=16, description="server events queued for a client that does not "
                                                              "read them; beyond: the session ends with an error")
    max_inbound_events: int = Field(256, ge=4, description="WebRTC data-channel events waiting to be handled; "
                                                           "beyond: dropped with an error event")
    max_input_buffer_s: float = Field(300.0, gt=0, description="uncommitted appended audio with turn detection "
                                                               "off; beyond: appends refused with an error event")
    max_conversation_items: int = Field(1000, ge=8, description="items a session keeps; client-created items "
                                        "beyond are refused, spoken turns beyond push the oldest out")
    webrtc_connect_timeout_s: float = Field(30.0, gt=0, description="a WebRTC call whose peer connection or "
                                            "data channel is not up this long after the answer is closed")


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
    model_stuck_after_s: float = Field(
        120.0, gt=0, description="a model call running this long in a worker thread (Whisper, piper, the "
                                 "turn model) is wedged: /healthz answers 503 so the process is restarted")
    echo_cancellation: EchoCancellationConfig = EchoCancellationConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
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
