"""Spans of several processes, read back and put together into traces.

Every process traced for a test writes its spans with the jsonl exporter
(`tracing_env(path)` in its environment); the test process's own spans come from an
`InMemorySpanExporter`. Both become the same records (`ironcart.platform.tracing.span_record`):

    spans = spans_of(exporter) + load_spans(psp_spans, catalog_spans)
    [root] = [span for span in spans if span["name"] == "POST /api/v1/orders"]
    trace = by_trace(spans)[root["trace_id"]]
    assert all(descends_from(span, root, trace) for span in trace)

`running_traced_psp()` is `running_psp()` with tracing on and its logs at info, so that its
log lines (JSON, on stderr) carry the request ids and trace ids of the calls it served.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ironcart.platform.tracing import span_record
from tests.support.psp import PspProcess, running_psp

Span = dict[str, Any]


def tracing_env(spans_path: Path) -> dict[str, str]:
    """Environment that makes an IronCart process (or a sandbox) append its spans to a file."""
    return {
        "IRONCART_TRACING__ENABLED": "true",
        "IRONCART_TRACING__EXPORTER": "jsonl",
        "IRONCART_TRACING__JSONL_PATH": str(spans_path),
        "IRONCART_TRACING__EXPORT_INTERVAL_SECONDS": "0.1",
    }


def spans_of(exporter: InMemorySpanExporter) -> list[Span]:
    """The finished spans of this process, as the jsonl exporter writes them."""
    return [span_record(span) for span in exporter.get_finished_spans()]


def load_spans(*paths: Path) -> list[Span]:
    """The spans in jsonl files (a missing file holds none)."""
    spans: list[Span] = []
    for path in paths:
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            spans += [json.loads(line) for line in lines if line.strip()]
    return spans


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans grouped by trace id."""
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    return dict(traces)


def descends_from(span: Span, ancestor: Span, spans: Iterable[Span]) -> bool:
    """Whether following parents from `span` through `spans` reaches `ancestor`."""
    by_id = {candidate["span_id"]: candidate for candidate in spans}
    parent_id = span["parent_id"]
    while parent_id is not None:
        if parent_id == ancestor["span_id"]:
            return True
        parent = by_id.get(parent_id)
        parent_id = parent["parent_id"] if parent is not None else None
    return False


@asynccontextmanager
async def running_traced_psp(tmp_path: Path, spans_path: Path) -> AsyncIterator[PspProcess]:
    """`ironcart sandbox-psp` with tracing to `spans_path`; always stopped at the end, which
    exports its last spans."""
    async with running_psp(tmp_path, env=tracing_env(spans_path), log_level="info") as psp:
        yield psp
