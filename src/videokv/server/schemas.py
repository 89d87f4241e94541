"""Request and response models of the HTTP API (pydantic); they make the published OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT = 20_000  # characters of one question / text event
MAX_ITEMS = 4096  # images, timestamps, text events or choices in one request


class Error(BaseModel):
    detail: str = Field(description="what went wrong and what to do about it")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    sessions: int


class PresetInfo(BaseModel):
    name: str
    description: str = Field(description="one plain sentence: what the preset keeps and how it answers")
    summary: str = Field(description="exactly what it does, in its papers' terms")
    source: str = Field(description="the paper or code it follows")


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: str | None = Field(
        None,
        max_length=64,
        description="memory preset (GET /v1/presets); default: the server's (videokv unless --memory)",
    )
    memory_set: list[str] = Field(
        default_factory=list, max_length=64, description="key=value overrides, e.g. retrieve.k=16"
    )
    fps: float = Field(1.0, gt=0, le=120, description="frames sampled per second of video")
    name: str | None = Field(None, max_length=200)


class SourceStatus(BaseModel):
    url: str
    fps: float
    state: Literal["running", "done", "stopped", "error"]
    error: str | None = None


class ReplicaInfo(BaseModel):
    id: str = Field(description="the Ray Serve replica's id")
    pid: int = Field(description="its process id")
    node: str = Field(description="the address of its node")


class KVMemory(BaseModel):
    """The stream's KV memory, one definition everywhere (videokv.api.kv_memory; README, "Memory")."""

    resident_bytes: int = Field(description="KV in accelerator or host memory: context + resident blocks")
    context_bytes: int = Field(
        description="the ingest context (sinks + recent window; full and window: the whole memory)"
    )
    blocks_bytes: dict[str, int] = Field(description="memory blocks resident by tier: device, host")
    offloaded_bytes: int = Field(description="memory blocks on disk, read when a question retrieves them")


class SessionStatus(BaseModel):
    id: str
    name: str | None
    memory: str
    fps: float
    state: Literal["idle", "ingesting", "live", "error"]
    clock: float = Field(description="stream seconds reached")
    frames: int
    blocks: int
    memory_tokens: int
    memory_bytes: int
    offloaded_bytes: int
    bytes_by_tier: dict[str, int]
    budget_bytes: int | None
    ingest_fps: float = Field(description="frames per wall-clock second of the last ingest")
    source: SourceStatus | None
    error: str | None
    created: float = Field(description="unix time")
    idle_expiry_s: float | None = Field(
        None, description="seconds without a request after which the server deletes it (null: never)"
    )
    expires_at: float | None = Field(
        None, description="unix time it is deleted at if no request touches it before (null: never)"
    )
    kv: KVMemory | None = Field(None, description="the KV memory: resident (by tier) and offloaded")
    replica: ReplicaInfo | None = Field(
        None, description="with `videokv serve --ray`: the replica that holds the session (else null)"
    )


class Added(BaseModel):
    added: int = Field(description="pieces (frames and text events) added to the stream")
    status: SessionStatus
    warnings: list[str] = Field(
        default_factory=list,
        description="what was not ingested as sent (e.g. subtitles past the video's end)",
    )


class StartSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        min_length=1,
        max_length=4096,
        description="a video file path on the server, an http(s):// or rtsp:// URL: anything PyAV opens",
    )
    fps: float | None = Field(None, gt=0, le=120, description="sampling rate (default: the session's)")
    realtime: bool = Field(True, description="follow the wall clock (false: as fast as the model goes)")
    subtitles: str | None = Field(None, max_length=4096, description="an SRT/WebVTT file path on the server")
    transcribe: bool | str = Field(
        False,
        description="also transcribe the audio (faster-whisper) into timed text: true, or a language code "
        "such as 'en'",
    )


class PushFrames(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(
        None, max_length=MAX_ITEMS, description="base64 JPEG/PNG images (one per frame)"
    )
    raw: str | None = Field(None, description="base64 of uint8 RGB pixels, T*H*W*3 bytes")
    shape: list[int] | None = Field(None, min_length=4, max_length=4, description="[T, H, W, 3] of raw")
    timestamps: list[float] | None = Field(
        None, max_length=MAX_ITEMS, description="seconds of each frame (default: the clock + 1/fps steps)"
    )


class TextItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT)
    start: float | None = Field(None, ge=0, description="seconds (default: the stream clock)")
    end: float | None = Field(None, ge=0, description="seconds (default: start)")


class PushText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[TextItem] = Field(min_length=1, max_length=MAX_ITEMS)


class Ask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=MAX_TEXT)
    choices: list[str] | None = Field(None, max_length=26)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    stream: bool = Field(False, description="answer as server-sent events: token..., then answer")
    logprobs: int = Field(
        0, ge=0, le=20, description="per answer token, its log-probability and the N most likely alternatives"
    )
    do_sample: bool = Field(False, description="sample instead of greedy decoding")
    temperature: float = Field(1.0, gt=0, le=100, description="with do_sample: at least 1e-5")
    top_k: int = Field(0, ge=0, le=100_000, description="with do_sample: keep the k most likely (0: off)")
    top_p: float = Field(1.0, gt=0, le=1, description="with do_sample: nucleus mass (1: off)")
    repetition_penalty: float = Field(
        1.0, gt=0, le=100, description="0.01 to 100; > 1 discourages repeats (1: off)"
    )
    seed: int | None = Field(None, ge=0, lt=2**64, description="the sampler's seed (default: a fresh one)")
    stop: list[str] | None = Field(
        None, max_length=8, description="end the answer before the first of these strings"
    )

    def generation(self) -> dict:
        """The decoding options of this request (GenerationOptions keywords)."""
        names = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
        return {**{n: getattr(self, n) for n in names}, "stop": tuple(self.stop or ())}


class EvidenceSpan(BaseModel):
    t0: float
    t1: float
    kind: str
    level: str


class Evidence(EvidenceSpan):
    text: str | None = Field(
        None, description="a text span's subtitle or transcript lines, as ingested (`[12.0s] ...`); else null"
    )


class AnswerOut(BaseModel):
    question: str
    answer: str
    evidence: list[Evidence]
    stats: dict
    choice: int | None = None
    choice_scores: list[float] | None = None
    logprobs: list[dict] | None = None


class Timeline(BaseModel):
    clock: float
    spans: list[EvidenceSpan]
    thumbnails: list[float]


class Saved(BaseModel):
    snapshot: str


class QuarantineInfo(BaseModel):
    session: str = Field(description="the quarantined session's id")
    reason: str = Field(description="why its stored journal cannot be served")
    since: float = Field(description="unix time it was quarantined (this server's start, or the adoption)")


class SnapshotInfo(BaseModel):
    snapshot: str
    session: str | None
    memory: str
    clock: float
    created: float
