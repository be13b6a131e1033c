"""A Hugging Face hub on loopback for the pull tests, and the release it serves.

http.server in threads: the tree API (paged through `Link: rel="next"`, LFS oids and git blob
ids as the hub gives them), `/{repo}/resolve/{rev}/{path}` answering LFS files with a redirect
to a CDN on another port (with X-Linked-Etag and X-Linked-Size, as the hub does), Range and
If-Range where the bytes are served, a gated repository that wants a bearer token, and plain
`/files/<name>` for URL pulls. It records every request it saw, and can hang up part-way
through a file once, or send other bytes than the tree describes.

The release is the onnx-community layout of the tiny vision model that the project's own export
builds (as tests/test_vision.py imports it), with the decoder's weights in an external-data file
as the published releases have them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
VISION_RECIPE = REPO / "models" / "tiny-gemma3-vision.json"
DATA = "onnx/decoder_model_merged_q4.onnx_data"
TOKEN = "hf_test_token"


def release_files(tiny_vision: Path) -> dict[str, bytes]:
    """The onnx-community layout of the tiny vision model: q4-named graphs, the decoder's
    weights as external data, config and tokenizer files."""
    import onnx

    recipe = json.loads(VISION_RECIPE.read_text())
    files = {
        "config.json": json.dumps({"text_config": recipe["text_config"], "vision_config": recipe["vision_config"],
                                   **recipe["multimodal"]}).encode(),
        "tokenizer.json": (tiny_vision / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": json.dumps({"chat_template": "<start_of_turn>user\n"}).encode(),
        "README.md": b"not fetched: a pull takes only what the import reads\n",
        "onnx/embed_tokens_q4.onnx": (tiny_vision / "embed_tokens.onnx").read_bytes(),
        "onnx/vision_encoder_q4.onnx": (tiny_vision / "vision_encoder.onnx").read_bytes(),
        "onnx/embed_tokens_fp16.onnx": b"another variant: not fetched for --dtype q4",
    }
    tmp = tiny_vision.parent / f".release-{os.getpid()}-{threading.get_ident()}"
    tmp.mkdir(exist_ok=True)
    try:
        graph = onnx.load(str(tiny_vision / "decoder_model_merged.onnx"))
        onnx.save_model(graph, str(tmp / "decoder_model_merged_q4.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="decoder_model_merged_q4.onnx_data", size_threshold=0)
        files["onnx/decoder_model_merged_q4.onnx"] = (tmp / "decoder_model_merged_q4.onnx").read_bytes()
        files[DATA] = (tmp / "decoder_model_merged_q4.onnx_data").read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def stored_in_lfs(path: str, data: bytes) -> bool:
    return ".onnx" in path or path.endswith(".gguf") or len(data) > 4096


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class LoopbackHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    plain: dict[str, bytes] = field(default_factory=dict)  # /files/<name>: a plain web server
    drop_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the first hang-up
    corrupt: dict[str, bytes] = field(default_factory=dict)  # path -> what the CDN sends instead
    ignore_range: bool = False
    page_size: int = 4
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    cdn: str = ""

    def requests(self, path_part: str) -> list[dict[str, Any]]:
        return [r for r in self.seen if path_part in r["path"]]


def _handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: Optional[dict[str, str]] = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            hub.seen.append({"path": path, "query": parts.query, "port": self.server.server_address[1],
                             "headers": {k.lower(): v for k, v in self.headers.items()}})
            m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path)
            if m:
                return self._tree(m.group(1), parse_qs(parts.query))
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                return self._resolve(m.group(1), m.group(3))
            m = re.match(r"^/cdn/([^/]+/[^/]+)/(.+)$", path)
            if m and m.group(1) in hub.repos and m.group(2) in hub.repos[m.group(1)]:
                return self._serve(m.group(2), hub.repos[m.group(1)][m.group(2)], hashlib.sha256(
                    hub.repos[m.group(1)][m.group(2)]).hexdigest())
            m = re.match(r"^/files/(.+)$", path)
            if m and m.group(1) in hub.plain:
                data = hub.plain[m.group(1)]
                return self._serve(m.group(1), data, hashlib.sha256(data).hexdigest())
            self._send(404, b"not found")

        def _allowed(self, repo: str) -> bool:
            if repo not in hub.repos:
                self._send(404, b'{"error": "Repository not found"}')
                return False
            if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, b'{"error": "Access to model is restricted"}')
                return False
            return True

        def _tree(self, repo: str, query: dict[str, list[str]]) -> None:
            if not self._allowed(repo):
                return
            entries: list[dict[str, Any]] = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": "onnx"}]
            for path, data in sorted(hub.repos[repo].items()):
                e: dict[str, Any] = {"type": "file", "oid": git_blob(data), "size": len(data), "path": path}
                if stored_in_lfs(path, data):
                    e["oid"] = git_blob(b"version https://git-lfs.github.com/spec/v1\n")  # the pointer's blob
                    e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(e)
            start = int(query.get("cursor", ["0"])[0])
            page = entries[start:start + hub.page_size]
            headers = {"Content-Type": "application/json"}
            if start + hub.page_size < len(entries):
                nxt = f"{hub.url}/api/models/{repo}/tree/main?recursive=true&cursor={start + hub.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._send(200, json.dumps(page).encode(), headers)

        def _resolve(self, repo: str, path: str) -> None:
            if not self._allowed(repo):
                return
            data = hub.repos[repo].get(path)
            if data is None:
                return self._send(404, b"Entry not found")
            if stored_in_lfs(path, data):
                sha = hashlib.sha256(data).hexdigest()
                return self._send(302, b"", {"Location": f"{hub.cdn}/cdn/{repo}/{path}", "X-Linked-Etag": f'"{sha}"',
                                             "X-Linked-Size": str(len(data))})
            self._serve(path, data, git_blob(data))

        def _serve(self, path: str, data: bytes, etag: str) -> None:
            body = hub.corrupt.get(path, data)
            start = 0
            rng = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            if rng and not hub.ignore_range and (if_range is None or if_range.strip('"') == etag):
                start = int(rng.group(1))
                if start >= len(body):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
            headers = {"ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            self.send_response(206 if start else 200)
            for k, v in headers.items():
                self.send_header(k, v)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = hub.drop_once.pop(path, None)
            if cut is not None:  # hang up part-way through, once
                self.wfile.write(body[start:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@contextmanager
def serving() -> Iterator[LoopbackHub]:
    """The hub and its CDN, each on its own port (so that a token sent to the CDN would show)."""
    state = LoopbackHub()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(state)) for _ in range(2)]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    state.url, state.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    try:
        yield state
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
