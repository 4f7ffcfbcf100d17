"""The send worker's Prometheus metrics: what it sent, what it could not, and what it is unsure of.

`numail_send_unknown_jobs` is the number to watch: jobs whose last attempt has an unknown outcome
and that could not be settled yet, typically because the provider can't be asked.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class SendMetrics:
    def __init__(self, workspace: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.workspace = workspace
        self.sent = Counter(
            "numail_send_sent", "Messages a provider accepted from this worker", registry=registry
        )
        self.failed = Counter(
            "numail_send_failed",
            "Jobs that failed permanently (a 5xx, or out of retries)",
            registry=registry,
        )
        self.unknown = Counter(
            "numail_send_unknown",
            "Attempts whose outcome is unknown (handed over, no answer); each gets settled",
            registry=registry,
        )
        self.settled = Counter(
            "numail_send_settled",
            "Unknown outcomes the provider was asked about: found, not_found or unreachable",
            ["outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "numail_send_retries", "Transient failures scheduled for a retry", registry=registry
        )
        self.suppressed = Counter(
            "numail_send_suppressed",
            "Jobs not sent because the recipient is suppressed",
            registry=registry,
        )
        self.claim_seconds = Histogram(
            "numail_send_claim_seconds",
            "Time to claim a batch of jobs",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.queue_depth = Gauge(
            "numail_send_queue_depth",
            "Jobs scheduled or claimed, not yet sent",
            ["workspace"],
            registry=registry,
        )
        self.unknown_jobs = Gauge(
            "numail_send_unknown_jobs",
            "Jobs in state unknown, waiting to be settled",
            ["workspace"],
            registry=registry,
        )
        for outcome in ("found", "not_found", "unreachable"):
            self.settled.labels(outcome)
        self.queue_depth.labels(workspace)
        self.unknown_jobs.labels(workspace)

    def set_depth(self, depth: dict[str, int]) -> None:
        self.queue_depth.labels(self.workspace).set(depth["scheduled"] + depth["claimed"])
        self.unknown_jobs.labels(self.workspace).set(depth["unknown"])


class ReplyMetrics:
    """The reply detector's metrics. `numail_reply_poll_errors_total` is the one to watch: a
    mailbox whose provider can't be read keeps its cursor, so nothing is lost, but its replies
    do not stop sequences until it can be read again."""

    KINDS = (
        "reply",
        "auto_reply",
        "hard_bounce",
        "soft_bounce",
        "unmatched",
        "duplicate",
        "ignored",
        "unreadable",
    )
    PROVIDERS = ("imap", "gmail", "graph")

    def __init__(self, workspace: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.workspace = workspace
        self.inbound = Counter(
            "numail_reply_inbound",
            "Inbound messages read, by what they were: reply, auto_reply, hard_bounce, "
            "soft_bounce; unmatched (answers no sent message), duplicate (already recorded), "
            "ignored (concerns no sent message), unreadable (could not be classified, or the "
            "database refused its values; skipped)",
            ["kind"],
            registry=registry,
        )
        self.cancelled_jobs = Counter(
            "numail_reply_cancelled_jobs",
            "Pending send jobs cancelled because their lead replied or hard-bounced",
            registry=registry,
        )
        self.polls = Counter(
            "numail_reply_polls", "Mailbox polls, by provider", ["provider"], registry=registry
        )
        self.poll_errors = Counter(
            "numail_reply_poll_errors",
            "Mailbox polls that failed (provider unreachable, login refused, credentials "
            "unavailable); the cursor is kept",
            ["provider"],
            registry=registry,
        )
        self.poll_seconds = Histogram(
            "numail_reply_poll_seconds",
            "Time to poll one mailbox, reading and recording included",
            ["provider"],
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
        )
        for kind in self.KINDS:
            self.inbound.labels(kind)
        for provider in self.PROVIDERS:
            self.polls.labels(provider)
            self.poll_errors.labels(provider)
