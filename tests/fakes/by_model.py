"""A loopback OpenAI-compatible endpoint (`POST /v1/chat/completions`, streamed as server-sent
events, word by word) whose answer is chosen by the request's `model`: how tests tell which model
(or vLLM-style adapter name) a comparison asked."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def answering_by_model(answers: Mapping[str, str]) -> Iterator[str]:
    """Serve `answers[model]` ("which model?" for any other) on 127.0.0.1; yields the /v1 URL."""

    class Completions(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            words = answers.get(body.get("model", ""), "which model?").split(" ")
            deltas = [words[0], *(f" {w}" for w in words[1:])]
            events = [
                {"choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]}
                for d in deltas
            ]
            events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            data = payload.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Completions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
