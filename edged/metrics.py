"""Optional Prometheus endpoint (`metrics.listen`): the figures of `edged status`, read at scrape time."""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from edged.config import parse_listen
from edged.logs import get_logger
from edged.store.queries import queue_summary
from edged.throughput import Meter

log = get_logger("edged.metrics")


class EdgedCollector(Collector):
    def __init__(self, queue_engine, meter: Meter, state: Callable[[], dict]) -> None:
        self.queue_engine = queue_engine
        self.meter = meter
        self.state = state

    def collect(self) -> Iterator:
        summary = queue_summary(self.queue_engine)
        jobs = GaugeMetricFamily("edged_jobs", "Jobs by task and state", labels=["task", "state"])
        for task, counts in summary["by_task"].items():
            for state, n in counts.items():
                jobs.add_metric([task, state], n)
        yield jobs
        age = summary["oldest_queued_age_s"]
        yield GaugeMetricFamily("edged_oldest_queued_seconds", "Age of the oldest queued job",
                                value=age if age is not None else 0.0)
        totals = dict(self.meter.totals)
        for key, help_text in (("jobs_done", "Jobs finished since start"), ("jobs_failed", "Jobs failed since start"),
                               ("jobs_retried", "Attempts that will be retried, since start"),
                               ("batches", "Engine batches since start"),
                               ("prompt_tokens", "Prompt tokens since start"),
                               ("output_tokens", "Generated tokens since start")):
            yield CounterMetricFamily(f"edged_{key}", help_text, value=totals[key])
        yield CounterMetricFamily("edged_engine_seconds", "Time spent in the engine since start",
                                  value=totals["engine_ms"] / 1000)
        state = self.state()
        yield GaugeMetricFamily("edged_intake_paused", "1 while intake is paused for low disk space",
                                value=1.0 if state.get("intake_paused") else 0.0)
        yield GaugeMetricFamily("edged_processing_open", "1 while the processing window lets the model run",
                                value=1.0 if state.get("processing_open", True) else 0.0)
        if state.get("spool_free_mb") is not None:
            yield GaugeMetricFamily("edged_spool_free_bytes", "Free space on the spool's filesystem",
                                    value=state["spool_free_mb"] * 1024 * 1024)
        info = InfoMetricFamily("edged_model", "The model and where it runs")
        info.add_metric([], {"model": str(state.get("model", "")), "provider": str(state.get("provider", ""))})
        yield info


def serve(listen: str, collector: EdgedCollector) -> None:
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics_listening", address=host, port=port, path="/metrics")
