"""One file's bytes -> the document the cache stores: read, chunked, tokenized for the index."""

from __future__ import annotations

import logging

import bots.knowledge.ranking as ranking
from bots.knowledge.cache import StoredDocument
from bots.knowledge.chunking import chunk_document
from bots.knowledge.readers import DocumentError, read_document
from bots.knowledge.scan import Candidate

log = logging.getLogger(__name__)


def extract(candidate: Candidate, data: bytes, digest: str) -> StoredDocument:
    """Read, chunk and tokenize one document; a failure is kept as the document's error."""
    try:
        document = read_document(candidate.rel, data)
    except Exception as error:
        # One damaged or hostile file must not stop the other documents from being indexed;
        # besides DocumentError, parsers raise whatever their internals hit.
        if not isinstance(error, DocumentError):
            log.warning("knowledge: reading %s failed", candidate.path, exc_info=True)
        return StoredDocument(
            rel=candidate.rel,
            size=candidate.size,
            mtime_ns=candidate.mtime_ns,
            sha256=digest,
            title="",
            error=f"cannot read: {error}",
            chunks=(),
            terms=(),
        )
    chunks = tuple(chunk_document(candidate.rel, document))
    terms = tuple(" ".join(ranking.chunk_terms(chunk)) for chunk in chunks)
    return StoredDocument(
        rel=candidate.rel,
        size=candidate.size,
        mtime_ns=candidate.mtime_ns,
        sha256=digest,
        title=document.title,
        error=None,
        chunks=chunks,
        terms=terms,
    )
