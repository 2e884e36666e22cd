"""Training progress in the job's status, read from the trainer's Prometheus metrics."""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kubedistill.api import telemetry
from kubedistill.api.status import ConditionType, Reason
from kubedistill.operator.conditions import DesiredCondition, Status, with_conditions, with_fields

# Which gauge feeds which DistillationJobStatus field, and whether the field is a count.
STATUS_FIELDS: dict[str, tuple[str, bool]] = {
    telemetry.STEP.name: ("step", True),
    telemetry.TOTAL_STEPS.name: ("total_steps", True),
    telemetry.EPOCH.name: ("epoch", True),
    telemetry.LOSS.name: ("loss", False),
    telemetry.KD_LOSS.name: ("kd_loss", False),
    telemetry.LAST_STEP_SECONDS.name: ("step_time_seconds", False),
    telemetry.TOKENS_PER_SECOND.name: ("tokens_per_second", False),
    telemetry.LAST_CHECKPOINT_STEP.name: ("last_checkpoint_step", True),
    # While spec.generation runs, before the first step: the job is making its data, not stuck.
    telemetry.GENERATION_PAIRS.name: ("generation_pairs", True),
    telemetry.GENERATION_KEPT_PAIRS.name: ("generated_pairs", True),
    telemetry.GENERATION_SKIPPED_PAIRS.name: ("generation_skipped_pairs", True),
    telemetry.GENERATION_PROMPT_TOKENS.name: ("generation_prompt_tokens", True),
    telemetry.GENERATION_COMPLETION_TOKENS.name: ("generation_completion_tokens", True),
    # While the records are tokenised, before the first step: the job is preparing its data, not stuck.
    telemetry.PREPARE_RECORDS.name: ("prepared_records", True),
    telemetry.PREPARE_RECORDS_PER_SECOND.name: ("preparation_records_per_second", False),
    telemetry.PREPARE_ETA_SECONDS.name: ("preparation_eta_seconds", False),
}


def scrape_session(resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The HTTP client of every trainer scrape; `resolver` maps the head Services' names (tests: loopback).

    No cap on connections: aiohttp's default of 100 made the scrapes of more running jobs than that queue
    for a connection within their timeout and report ProgressUnknown. Each job is one host, one connection.
    No DNS cache: aiohttp resolves cached hosts in a task of its own, which outlives a cancelled scrape, and
    kopf re-raises the errors of such leftover tasks when it stops.
    """
    connector = aiohttp.TCPConnector(limit=0, use_dns_cache=False, resolver=resolver)
    return aiohttp.ClientSession(connector=connector)


def parse_progress(
    text: str, *, namespace: str, job: str
) -> dict[str, int | float | dict[str, str] | dict[str, float]]:
    """The status fields (by their Python names) found in a `/metrics` page; samples labelled for another
    job are skipped.

    Raises ValueError for text that is not the Prometheus exposition format. Non-finite values (a NaN
    loss) are left out: JSON cannot carry them and the previous value is more useful.
    """
    wanted = {telemetry.NAMESPACE_LABEL: namespace, telemetry.JOB_LABEL: job}
    fields: dict[str, int | float | dict[str, str] | dict[str, float]] = {}
    urls: dict[str, str] = {}
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == telemetry.TRACKER_RUN.name:
            urls |= _tracker_urls(family.samples, wanted)
            continue
        if family.name == telemetry.STEP_FIGURE.name:
            figures |= _figures(family.samples, wanted)
            continue
        if family.name not in STATUS_FIELDS:
            continue
        field, is_count = STATUS_FIELDS[family.name]
        for sample in family.samples:
            if sample.name != family.name or not math.isfinite(sample.value):
                continue
            if any(sample.labels.get(key, value) != value for key, value in wanted.items()):
                continue
            fields[field] = int(sample.value) if is_count else float(sample.value)
    if urls:
        fields["tracker_urls"] = urls
    if figures:
        fields["figures"] = figures
    return fields


def _figures(samples: Iterable[Sample], wanted: Mapping[str, str]) -> dict[str, float]:
    """The algorithm's figures of the last step (`kubedistill_step_figure{figure}`) of this job, by name."""
    figures: dict[str, float] = {}
    for sample in samples:
        labels = sample.labels
        if any(labels.get(key) != value for key, value in wanted.items()) or not math.isfinite(sample.value):
            continue
        name = labels.get(telemetry.FIGURE_LABEL)
        if name:
            figures[name] = float(sample.value)
    return figures


def _tracker_urls(samples: Iterable[Sample], wanted: Mapping[str, str]) -> dict[str, str]:
    """The page of each tracker's run (`kubedistill_tracker_run_info{tracker, url}`) of this job."""
    urls: dict[str, str] = {}
    for sample in samples:
        labels = sample.labels
        if any(labels.get(key) != value for key, value in wanted.items()) or sample.value != 1:
            continue
        tracker, url = labels.get(telemetry.TRACKER_LABEL), labels.get(telemetry.URL_LABEL)
        if tracker and url:
            urls[tracker] = url
    return urls


def with_progress(
    status: Mapping[str, Any],
    fields: Mapping[str, int | float | dict[str, str] | dict[str, float]],
    *,
    url: str,
    generation: int | None,
    now: str,
) -> Status:
    known = DesiredCondition(ConditionType.PROGRESS_UNKNOWN, "False", Reason.METRICS_READ, f"read from {url}")
    return with_fields(with_conditions(status, [known], generation=generation, now=now), **fields)


def with_metrics_unreachable(
    status: Mapping[str, Any], error: str, *, url: str, generation: int | None, now: str
) -> Status:
    message = f"cannot read the trainer's metrics at {url}: {error}"
    unknown = DesiredCondition(ConditionType.PROGRESS_UNKNOWN, "True", Reason.METRICS_UNREACHABLE, message)
    return with_conditions(status, [unknown], generation=generation, now=now)
