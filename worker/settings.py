"""Settings of every process, from environment variables prefixed ROLLOUT_ANALYZER_."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from analysis.policy import PolicySet
from analysis.sources import MetricsSource
from analysis.sources.prometheus import PrometheusConfig, PrometheusSource
from analysis.sources.recording import RecordingSource
from worker.store import Retention

ENV_PREFIX = "ROLLOUT_ANALYZER_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # Redis carries the Celery queue and our own state (dedup claims, leases, results).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # redis_url names a Redis Cluster node: our state is sharded over the cluster. Celery's
    # Redis transport is not cluster-aware, so the queue then needs broker_url (a separate
    # Redis, or sentinel:// for one with fail-over).
    redis_cluster: bool = False
    broker_url: str | None = None
    result_backend: str | None = None
    queue: str = "rollout-analyzer"
    # Traffic actions, chat and Argo events wait here, never in front of an analysis.
    # Default: "<queue>-followups".
    followup_queue: str | None = None
    key_prefix: str = "ra:"
    # Demo mode: no Redis, no worker processes; fakeredis and a thread pool in the server.
    in_process: bool = False

    prometheus_url: str | None = None
    prometheus_token: SecretStr | None = None
    prometheus_username: str | None = None
    prometheus_password: SecretStr | None = None
    prometheus_ca_file: str | None = None
    prometheus_insecure: bool = False
    # Client certificate (mutual TLS): a PEM file, and its key when not in the same file.
    prometheus_cert_file: str | None = None
    prometheus_key_file: str | None = None
    prometheus_query_timeout_seconds: float = Field(5.0, gt=0, le=120)
    prometheus_max_concurrent_queries: int | None = None  # shared by all workers; 0/None: no cap
    # A recording file instead of Prometheus (demo, offline replays).
    recording: str | None = None
    policies_file: str | None = None

    api_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Argo's web provider gives up after 10 s by default; answer (or 503) before that.
    wait_seconds: float = Field(8.0, gt=0, le=120)
    reuse_seconds: float = Field(15.0, ge=0, le=3600)
    result_ttl_seconds: int = Field(86400, ge=60)
    # A live canary's evidence outlives pauses between Argo's steps; unpolled this long, it ends.
    sequence_ttl_seconds: float = Field(21600, ge=60, le=30 * 86400)
    # An analysis replaced by a newer one of the same request (Argo's next poll), and behind no
    # verdict change or action, is kept only this long: Redis memory follows canaries, not polls.
    replaced_ttl_seconds: int = Field(60, ge=1)
    # A running analysis whose worker stops renewing this lease is taken over by the next call.
    lease_seconds: float = Field(6.0, ge=1, le=300)
    # How long a queued analysis may wait for a worker before a new call starts afresh.
    pending_seconds: float = Field(120.0, ge=5)
    task_soft_time_limit: float = Field(30.0, gt=1)
    task_time_limit: float = Field(45.0, gt=1)
    max_body_bytes: int = Field(65536, ge=1024)
    # A body that has not fully arrived by then is refused (slow-loris).
    body_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Workers beat this often; /readyz wants a beat within three periods.
    heartbeat_seconds: float = Field(5.0, gt=0, le=60)
    notify_timeout_seconds: float = Field(10.0, gt=0, le=60)
    # A chat delivery is tried this often; between tries it waits in the queue (Celery's retry
    # countdown: the service's Retry-After, else exponential backoff), capped at max_wait.
    notify_max_attempts: int = Field(4, ge=1, le=20)
    notify_max_wait_seconds: float = Field(60.0, gt=0, le=240)
    log_level: str = "INFO"

    # Acting on verdicts: Kubernetes access for Istio traffic, and chat targets.
    kube_in_cluster: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    kube_timeout_seconds: float = Field(10.0, gt=0, le=120)  # per Kubernetes API request
    chat_targets_file: str | None = None
    prometheus_graph_url: str | None = None  # public Prometheus URL for links in messages

    # Report pages (/ui): the URL people reach this service at, for links in chat messages and
    # `report_url` (default: the URL the request came in on); who may read the pages.
    public_url: str | None = None
    ui_token: SecretStr | None = None  # read-only: opens /ui, never /v1
    ui_auth_header: str | None = None  # e.g. X-Auth-Request-User, set by an auth proxy

    @model_validator(mode="after")
    def _broker_apart_from_a_cluster(self) -> Settings:
        if self.redis_cluster and not self.in_process and not self.broker_url:
            raise ValueError(
                f"{ENV_PREFIX}BROKER_URL is required with {ENV_PREFIX}REDIS_CLUSTER: Celery's "
                "Redis transport cannot use a Redis Cluster; name a separate Redis (or "
                "sentinel://) for the task queue"
            )
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def followups(self) -> str:
        """The queue of the follow-up tasks (act, notify, Argo events, dead-letter retries)."""
        return self.followup_queue or f"{self.queue}-followups"

    @property
    def backend(self) -> str:
        # Results are ignored (our store keeps them); never point Celery at a cluster.
        return self.result_backend or (self.broker if self.redis_cluster else self.redis_url)

    def retention(self) -> Retention:
        return Retention(self.result_ttl_seconds, self.replaced_ttl_seconds)

    def policies(self) -> PolicySet:
        return PolicySet.load(self.policies_file)

    def source(self) -> MetricsSource:
        if self.recording:
            return RecordingSource.from_file(self.recording)
        if not self.prometheus_url:
            raise RuntimeError(
                f"set {ENV_PREFIX}PROMETHEUS_URL (or {ENV_PREFIX}RECORDING for a recording file)"
            )
        return PrometheusSource(self.prometheus_config(self.prometheus_url))

    def prometheus_config(self, url: str) -> PrometheusConfig:
        """How to reach Prometheus at `url`: worker, CLI and doctor all ask here."""
        return PrometheusConfig(
            url=url,
            token=self.prometheus_token.get_secret_value() if self.prometheus_token else None,
            username=self.prometheus_username,
            password=(
                self.prometheus_password.get_secret_value() if self.prometheus_password else None
            ),
            ca_file=self.prometheus_ca_file,
            insecure=self.prometheus_insecure,
            cert_file=self.prometheus_cert_file,
            key_file=self.prometheus_key_file,
            query_timeout_seconds=self.prometheus_query_timeout_seconds,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
