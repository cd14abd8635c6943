"""The application's configuration: validated once, at the edge, then passed to every deployment.

This is the ``args`` block of an application in a Ray Serve config file (see
``deploy/videoserve.yaml``); per-deployment replica/resource options live beside it, in
that file's ``deployments`` list, in Ray Serve's own format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.step_cache.options import DEFAULT_POLICY, MAX_THRESHOLD, POLICIES, StepCacheOptions, parse_step_cache


# Secrets never sit in this config (it is rendered into serveConfigV2, which anyone who can
# read the RayService can read): a *_env field names the environment variable that holds one.
_ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    state_dir: str = Field("~/.local/state/videoserve", description="Jobs database and artifacts live here.")
    job_store_url: str | None = Field(None, description="sqlite:///path or redis://host:port/db; default a SQLite file in state_dir.")
    artifact_dir: str | None = Field(None, description="Default: state_dir/artifacts (a shared volume on multi-node).")
    job_store_password_env: str | None = Field(
        None, pattern=_ENV_VAR_NAME,
        description="Name of the environment variable that holds the Redis job store's password (the chart uses "
                    "VIDEOSERVE_REDIS_PASSWORD); unset: connect without a password.",
    )
    retention_seconds: float = Field(
        7 * 24 * 3600.0, gt=0,
        description="How long an ended job (its record and files) is kept after it ends; the video object's "
                    "expires_at says when, and a sweeper on every ingress replica deletes it then.",
    )
    sweep_interval_seconds: float = Field(60.0, gt=0, description="How often expired jobs are looked for.")
    keep_frames: bool = Field(
        True,
        description="Also keep every job's lossless uint8 frames (the 'frames' content variant, the correctness "
                    "oracle). They are large (1280x720x81 is 224 MB a job): turn off on GPU deployments.",
    )

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir).expanduser()

    def resolved_job_store_url(self) -> str:
        return self.job_store_url or f"sqlite:///{self.resolved_state_dir() / 'jobs.db'}"

    def resolved_artifact_dir(self) -> Path:
        return Path(self.artifact_dir).expanduser() if self.artifact_dir else self.resolved_state_dir() / "artifacts"


class JobsConfig(_Strict):
    max_queued: int = Field(256, ge=1, description="Past this many queued jobs, POST answers 429.")
    max_concurrent_per_ingress: int = Field(16, ge=1, description="Jobs one ingress replica runs at once.")
    lease_seconds: float = Field(30.0, gt=0, description="A job whose worker stops renewing for this long is resumed elsewhere.")
    max_attempts: int = Field(3, ge=1, description="Runs of one job before it ends failed.")
    poll_interval_seconds: float = Field(0.2, gt=0)
    progress_write_interval_seconds: float = Field(
        1.0, ge=0,
        description="Denoising steps reach event streams and metrics as they run; the stored record is written at "
                    "stage changes and at most this often in between (0: every step).",
    )
    stage_timeout_seconds: float = Field(
        900.0, gt=0,
        description="A stage call (text encoding, denoising, decoding, post-processing) that takes longer fails "
                    "the attempt with code stage_timeout; the job is retried up to max_attempts.",
    )
    job_timeout_seconds: float = Field(
        3600.0, gt=0, description="An attempt that runs longer ends the job failed, code job_timeout (no retry).",
    )


class ApiConfig(_Strict):
    max_request_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    poll_after_ms: int = Field(1000, ge=100, description="The openai-poll-after-ms hint sent to clients.")
    max_input_image_pixels: int = Field(
        4096 * 4096, ge=1,
        description="An input_reference image whose header claims more pixels (width x height) is refused with "
                    "400 before it is decoded.",
    )
    max_output_pixel_frames: int = Field(
        1_000_000_000, ge=1,
        description="A request whose delivered video (width x height x frames, after interpolate_fps and upscale) "
                    "would exceed this is refused with 400 output_too_large: post-processing holds it in memory as "
                    "RGB (3 bytes each). The default passes every preset's default request with interpolation x2 "
                    "and upscale x2; the largest, wan2.2-ti2v-5b's 1280x704 x 121 frames at 24 fps, delivers "
                    "2560x1408 x 242 frames = 872,284,160.",
    )
    api_keys_env: str | None = Field(
        None, pattern=_ENV_VAR_NAME,
        description="Name of the environment variable that holds the accepted API keys, comma-separated (the chart "
                    "uses VIDEOSERVE_API_KEYS); when set, every /v1/* request needs 'Authorization: Bearer <key>'. "
                    "Unset: no authentication.",
    )
    admin_api_keys_env: str | None = Field(
        None, pattern=_ENV_VAR_NAME,
        description="Name of the environment variable that holds admin API keys (comma-separated): an admin sees, "
                    "lists and deletes every tenant's videos. Needs api_keys_env; unset: no admin.",
    )
    max_queued_per_key: int | None = Field(
        64, ge=1, description="Queued jobs one API key may have at once; past it POST answers 429 (null: no bound). "
                               "Applies with api_keys_env set; admins have no per-key bound.",
    )
    requests_per_minute_per_key: int | None = Field(
        600, ge=1,
        description="Requests to /v1/* one API key may send per minute (a moving window; 429 with Retry-After past "
                    "it). Counted in Redis when the job store is Redis (one count for all ingress replicas), else "
                    "per replica. Applies with api_keys_env set. null: no rate limit.",
    )


    @model_validator(mode="after")
    def _admins_need_keys(self) -> ApiConfig:
        if self.admin_api_keys_env is not None and self.api_keys_env is None:
            raise ValueError("admin_api_keys_env: needs api_keys_env (admins are API keys of an app with auth on)")
        return self


class WebhookConfig(_Strict):
    secret: str | None = Field(None, description="whsec_... ; default: generated once into state_dir/webhook_secret.")
    secret_env: str | None = Field(
        None, pattern=_ENV_VAR_NAME,
        description="Name of the environment variable that holds the whsec_... signing secret (the chart uses "
                    "VIDEOSERVE_WEBHOOK_SECRET); takes the place of secret, which must then be unset.",
    )
    max_attempts: int = Field(6, ge=1)
    initial_backoff_seconds: float = Field(0.5, gt=0)
    allow_private_targets: bool | list[str] = Field(
        False,
        description="Which non-public addresses a webhook_url may reach. false: public (globally routable) "
                    "addresses only, so a job cannot make the server call loopback, the cluster network or the "
                    "cloud metadata endpoint; true: any address; a list of CIDRs (e.g. [\"10.20.0.0/16\"]): public "
                    "addresses and those networks.",
    )

    @field_validator("allow_private_targets")
    @classmethod
    def _cidrs(cls, value: bool | list[str]) -> bool | list[str]:
        if isinstance(value, list):
            import ipaddress

            for cidr in value:
                try:
                    ipaddress.ip_network(cidr)
                except ValueError as error:
                    raise ValueError(f"allow_private_targets: {cidr!r} is not a network in CIDR form ({error})") \
                        from None
        return value


class PromptExpanderConfig(_Strict):
    model: str | None = Field(None, description="Instruction LLM (tiny-llm, a directory or a hub id); off when unset.")
    max_new_tokens: int = Field(64, ge=1, le=1024)


class PostProcessingConfig(_Strict):
    upscaler_model_dir: str | None = Field(None, description="Swin2SR directory; lanczos when unset.")
    interpolation_model: str | None = Field(
        None, description="TorchScript frame-interpolation model (RIFE/FILM export); ffmpeg minterpolate when unset."
    )

    def learned_upscale_factor(self) -> int | None:
        """The learned upscaler's fixed factor, read from its config without loading it."""
        if self.upscaler_model_dir is None:
            return None
        config = Path(self.upscaler_model_dir).expanduser() / "config.json"
        return int(json.loads(config.read_text())["upscale"])


class CacheConfig(_Strict):
    enabled: bool = Field(True, description="Share text embeddings and first-frame conditioning across requests.")
    text_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="Byte bound of the text-embedding LRU.")
    first_frame_max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="Byte bound of the first-frame LRU.")


class StepCacheSetting(_Strict):
    policy: Literal[tuple(POLICIES)] = Field(DEFAULT_POLICY, description="; ".join(
        f"{name}: {info.description}" for name, info in POLICIES.items()))
    threshold: float | None = Field(None, gt=0, le=MAX_THRESHOLD,
                                    description="Under it a step is skipped: the relative change of the first "
                                                "block's residual (first_block, taylorseer) or the predicted error "
                                                "(magcache); default: the policy's (README, 'Step caching').")


class DenoiserConfig(_Strict):
    max_batch_size: int = Field(8, ge=1, description="Requests that share one denoising step.")
    max_tokens_per_step: int | None = Field(None, ge=1, description="Cap on transformer tokens per step (CFG counts twice).")
    request_timeout_seconds: float | None = Field(None, gt=0, description="A request still denoising after this is dropped.")
    compile: bool = Field(
        False,
        description="torch.compile the DiT forward when the replica starts, for the model's default request size "
                    "(tens of seconds per replica start; steps of other sizes run eagerly). Single-rank replicas only.",
    )
    step_cache: bool | StepCacheSetting = Field(
        False,
        description="Step caching for requests that do not set step_cache themselves: false (off, lossless), true "
                    "(the default policy and threshold) or {policy, threshold}. Lossy: see benchmarks/RESULTS.md.",
    )

    def default_step_cache(self) -> StepCacheOptions | None:
        value = self.step_cache
        if isinstance(value, StepCacheSetting):
            value = value.model_dump(exclude_none=True)
        return parse_step_cache(value)


class VaeDecoderConfig(_Strict):
    compile: bool = Field(
        False,
        description="torch.compile the VAE decoder when the replica starts, for the model's default request size "
                    "(tens of seconds per replica start; videos of other sizes decode eagerly).",
    )
    colocated_thread: Literal["auto", "engine", "own"] = Field(
        "auto",
        description="Colocated layout: where a replica's VAE decodes run. engine: on the engine's thread, taking "
                    "turns with the DiT's steps; own: on a thread of their own, alongside the steps; auto: own on "
                    "a CPU (small ops leave cores idle that a concurrent decode fills), engine on a GPU.",
    )
    max_batch_size: int | None = Field(
        None, ge=1,
        description="Decodes of one latent shape that wait while the decoder is busy go through the VAE together, "
                    "up to this many (none wait on purpose). Unset: 4 on a CPU, where a small video's decode is "
                    "mostly per-call cost; 1 on a GPU, where a large video's decode already fills the device and "
                    "its activations the memory.",
    )

    def resolved_max_batch_size(self, device: str) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 4 if device == "cpu" else 1


class ParallelConfig(_Strict):
    """How many ranks (GPUs) one Denoiser replica spans (cfg x tensor x sequence), and how the DiT is split across them."""

    # Tensor and sequence are not both above 1, and cfg 2 combines with sequence only; rank =
    # cfg_index * sequence + sequence_index (engine/parallel/parallel_layout.py).

    tensor: int = Field(1, ge=1, description="Tensor parallel: ranks that shard the DiT's attention heads and FFN.")
    sequence: int = Field(1, ge=1, description="Ulysses sequence parallel: ranks that split the latent token sequence.")
    cfg: int = Field(1, ge=1, le=2,
                     description="Classifier-free-guidance parallel: 2 runs each step's conditional rows on one half "
                                 "of the ranks and its unconditional rows on the other; combines with sequence.")

    @model_validator(mode="after")
    def _runnable_layout(self) -> ParallelConfig:
        _ = self.rank_layout  # refuses what no gang can run (tensor with sequence, cfg with tensor), naming parallel
        return self

    @property
    def rank_layout(self):
        """Which rank does what (an engine.parallel.parallel_layout.ParallelLayout)."""
        from engine.parallel.parallel_layout import ParallelLayout

        return ParallelLayout(cfg=self.cfg, sequence=self.sequence, tensor=self.tensor)

    @property
    def degree(self) -> int:
        """Ranks per Denoiser replica: one placement-group bundle (one accelerator) each."""
        return self.rank_layout.degree

    @property
    def modes(self) -> dict[str, int]:
        """The modes above one rank and their degrees, outermost first: {"cfg": 2, "sequence": 2}."""
        return self.rank_layout.modes

    @property
    def mode(self) -> str | None:
        """The modes above one rank joined by "+" ("sequence", "cfg+sequence"); None on one rank."""
        return self.rank_layout.mode


# The kinds of Serve deployment the builder makes (serve/model_stages.py names each one).
StageKind = Literal["VideoAPI", "PromptExpander", "TextEncoder", "ImageConditioner", "Denoiser", "VaeDecoder", "Pipeline",
                    "PostProcessor"]
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ModelConfig(_Strict):
    """One model the app serves; a request picks it with its ``model`` field."""

    source: str = Field(description="A preset name (videoserve models lists them), a Hugging Face repo id of a "
                                    "named preset, or a diffusers-format directory.")
    name: str | None = Field(None, pattern=_MODEL_NAME,
                             description="The id clients send as `model`; default: the preset's name or the "
                                         "directory's name.")
    denoiser_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray Serve options for this model's Denoiser (autoscaling_config, ray_actor_options, ...), "
                    "merged over stage_options.Denoiser: each model's Denoiser scales on its own.",
    )

    def served_name(self) -> str:
        """The model's id: its name, else what the registry calls the source (computed without loading it)."""
        if self.name is not None:
            return self.name
        from engine.models.model_registry import preset_names

        if self.source in preset_names():
            return self.source
        return Path(self.source).expanduser().name


class AppConfig(_Strict):
    # A plain string is read as {source: ...} (the schema says so, for Helm's lint too).
    models: list[ModelConfig | str] = Field(
        default_factory=lambda: [ModelConfig(source="toy")],
        min_length=1,
        description="The models this app serves (the first is the default for requests that name none); a plain "
                    "string is a source. Stages whose weights are byte-identical across models are deployed once.",
    )
    layout: Literal["auto", "colocated", "disaggregated"] = Field(
        "auto",
        description="colocated: each model's stages (text encoder, image conditioner, DiT engine, VAE decoder) in one "
                    "replica on one device, taking turns on the engine's thread (nodes with one GPU, CPU boxes); "
                    "disaggregated: one deployment per stage, each scaled on its own (multi-GPU clusters); auto: "
                    "colocated where the app has one device per replica to give, else disaggregated.",
    )
    cache_dir: str = Field("~/.cache/videoserve", description="Where built-in presets are generated.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N for every model stage.")
    torch_threads: int | None = Field(
        None, ge=1, description="Intra-op CPU threads of every model stage; unset: one per CPU in its ray_actor_options."
    )
    storage: StorageConfig = StorageConfig()
    jobs: JobsConfig = JobsConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    vae_decoder: VaeDecoderConfig = VaeDecoderConfig()
    parallel: ParallelConfig = ParallelConfig()
    caches: CacheConfig = CacheConfig()
    api: ApiConfig = ApiConfig()
    webhooks: WebhookConfig = WebhookConfig()
    prompt_expander: PromptExpanderConfig = PromptExpanderConfig()
    post_processing: PostProcessingConfig = PostProcessingConfig()
    stage_options: dict[StageKind, dict[str, Any]] = Field(
        default_factory=dict,
        description="Ray Serve options per kind of stage, merged over the code's defaults for every deployment of "
                    "that kind (the Helm chart sets these for multi-model apps). Options given here are app args: "
                    "changing them redeploys the app; a per-name entry in the Serve config's deployments list is "
                    "the lightweight way to change one deployment.",
    )

    @field_validator("models")
    @classmethod
    def _sources_as_models(cls, value: list[ModelConfig | str]) -> list[ModelConfig]:
        return [ModelConfig(source=item) if isinstance(item, str) else item for item in value]

    @model_validator(mode="after")
    def _distinct_model_names(self) -> AppConfig:
        names = [model.served_name() for model in self.models]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"models: {', '.join(repeated)} named more than once; give each a distinct name")
        invalid = [name for name in names if not re.match(_MODEL_NAME, name)]
        if invalid:
            raise ValueError(f"models: {invalid} cannot be a model id (letters, digits, '.', '_', '-'); set name")
        return self

    def model_names(self) -> list[str]:
        return [model.served_name() for model in self.models]

    def model_entry(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.served_name() == name:
                return model
        raise KeyError(f"no model {name!r} in this app (models: {', '.join(self.model_names())})")

    @model_validator(mode="after")
    def _compile_on_one_rank(self) -> AppConfig:
        if self.denoiser.compile and self.parallel.degree > 1:
            raise ValueError("denoiser.compile: not supported on a Denoiser of several ranks "
                             f"(parallel.{self.parallel.mode} is {self.parallel.degree}); set one of them off")
        return self

    @model_validator(mode="after")
    def _colocated_on_one_device(self) -> AppConfig:
        if self.layout == "colocated" and self.parallel.degree > 1:
            raise ValueError(f"layout: colocated runs each model on one device, but parallel asks for "
                             f"{self.parallel.degree} ranks per Denoiser replica; use layout disaggregated (or auto)")
        return self

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser()

    def resolved_device(self) -> str:
        from engine.stage_placement import default_device

        return default_device() if self.device == "auto" else self.device
