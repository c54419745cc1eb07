"""`bots bench knowledge`: indexing, restart, one-edit refresh and query times on a folder."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bots.knowledge.index import KnowledgeIndex
from bots.knowledge.readers._common import HEADING_SEPARATOR

BENCH_QUERIES = 50
QUERY_WORDS = 6
_EDIT_MARKER = "zyzzyvabenchmark"
_EDITABLE = (".html", ".htm", ".md", ".txt", ".rst")


class BenchError(RuntimeError):
    """The folder cannot be benchmarked (missing, or without a single document)."""


def run_knowledge_bench(docs_dir: Path, cache_dir: Path) -> dict[str, float]:
    """Index a copy of `docs_dir` under `cache_dir` and time what users wait for.

    Returns: documents, chunks, megabytes (indexed), cold_index_s (nothing cached),
    warm_restart_s (a new index on the same cache: nothing re-read), warm_restart_read (documents
    it read: 0 when the cache works), incremental_refresh_ms (one document edited),
    incremental_read (1 when only that document is read), query_p50_ms and query_p95_ms over
    BENCH_QUERIES queries made from the headings of the indexed chunks.
    The copy keeps `docs_dir` untouched by the edit; it is removed afterwards.
    """
    if not docs_dir.is_dir():
        raise BenchError(f"{docs_dir}: not a folder")
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="knowledge-bench-", dir=cache_dir))
    try:
        docs = work / "docs"
        shutil.copytree(docs_dir, docs, symlinks=True)
        index_cache = work / "cache"

        started = time.perf_counter()
        cold = KnowledgeIndex(docs, index_cache)
        cold.refresh()
        cold_s = time.perf_counter() - started
        stats = cold.stats
        if not cold.chunks:
            raise BenchError(f"{docs_dir}: no documents to index")
        latencies = _query_latencies(cold)

        started = time.perf_counter()
        warm = KnowledgeIndex(docs, index_cache)
        warm_result = warm.refresh()
        warm_s = time.perf_counter() - started

        edited = docs / _document_to_edit(cold)
        _append_paragraph(edited, f"{_EDIT_MARKER} was added by the benchmark.")
        incremental = warm.refresh()
        if not any(_EDIT_MARKER in hit.text for hit in warm.search(_EDIT_MARKER, k=1)):
            raise BenchError(f"{edited}: the edit is not found after the refresh")

        return {
            "documents": float(stats.documents),
            "chunks": float(stats.chunks),
            "megabytes": stats.bytes / 1e6,
            "cold_index_s": cold_s,
            "warm_restart_s": warm_s,
            "warm_restart_read": float(warm_result.read),
            "incremental_refresh_ms": incremental.duration_ms,
            "incremental_read": float(incremental.read),
            "query_p50_ms": statistics.median(latencies),
            "query_p95_ms": statistics.quantiles(latencies, n=20, method="inclusive")[-1],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _query_latencies(index: KnowledgeIndex) -> list[float]:
    """Milliseconds per search for BENCH_QUERIES queries spread over the whole index."""
    chunks = index.chunks
    queries = []
    for i in range(BENCH_QUERIES):
        chunk = chunks[i * len(chunks) // BENCH_QUERIES]
        label = chunk.heading.split(HEADING_SEPARATOR)[-1] if chunk.heading else chunk.title
        queries.append(" ".join([*label.split(), *chunk.text.split()][:QUERY_WORDS]))
    index.search(queries[0])  # the first search pays for lazy imports and caches
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search(query)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _document_to_edit(index: KnowledgeIndex) -> str:
    """A text or HTML document from the middle of the index (a paragraph can be added to it)."""
    paths = sorted({chunk.path for chunk in index.chunks if chunk.path.endswith(_EDITABLE)})
    if not paths:
        raise BenchError(f"{index.root}: no text or HTML document to edit")
    return paths[len(paths) // 2]


def _append_paragraph(path: Path, text: str) -> None:
    """Edit a document the way an editor save would, moving its mtime forward."""
    before = path.stat().st_mtime_ns
    data = path.read_bytes()
    if path.suffix.lower() in (".html", ".htm"):
        # After the first heading: inside the page's main text, wherever the page keeps it.
        for anchor in (b"</h1>", b"</body>"):
            if anchor in data:
                at = data.index(anchor) + (len(anchor) if anchor == b"</h1>" else 0)
                data = data[:at] + f"<p>{text}</p>".encode() + data[at:]
                break
        path.write_bytes(data)
    else:
        path.write_bytes(data + f"\n\n{text}\n".encode())
    # Coarse file system clocks could leave the mtime unchanged; the size changes anyway.
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
