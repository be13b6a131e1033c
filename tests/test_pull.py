"""`edged model pull` and `edged model list` against a hub on loopback.

The hub is http.server in a thread: the tree API (paged, with LFS oids and git blob ids),
`/{repo}/resolve/{rev}/{path}` answering LFS files with a redirect to a CDN on another port (as
the hub does, with X-Linked-Etag), Range and If-Range on the CDN, a gated repository that wants a
bearer token. What it serves is a release in the onnx-community layout made from the tiny vision
model that the project's own export builds (the same release that tests/test_vision.py imports),
with the decoder's weights in an external-data file as the published releases have them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from conftest import REPO, base_config
from edged.cli import main
from edged.exitcodes import ExitCode
from edged.models.fetch.plan import SourceError, parse_source
from edged.models.manifest import Manifest, sha256_file
from model_cache import built_model

VISION_RECIPE = REPO / "models" / "tiny-gemma3-vision.json"
TEXT_RECIPE = REPO / "models" / "tiny-gemma3-text.json"
REPO_ID = "community/tiny-vision-it-ONNX"
DATA = "onnx/decoder_model_merged_q4.onnx_data"
TOKEN = "hf_test_token"


# -- a release made by the project's own export --------------------------------------------

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


@pytest.fixture(scope="module")
def release() -> dict[str, bytes]:
    return release_files(built_model(f"random:{VISION_RECIPE}", weights="fp32"))


# -- the hub on loopback ---------------------------------------------------------------------

def _lfs(path: str, data: bytes) -> bool:
    return ".onnx" in path or path.endswith(".gguf") or len(data) > 4096


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Hub:
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


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
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
                e: dict[str, Any] = {"type": "file", "oid": _git_blob(data), "size": len(data), "path": path}
                if _lfs(path, data):
                    e["oid"] = _git_blob(b"version https://git-lfs.github.com/spec/v1\n")  # the pointer's blob
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
            if _lfs(path, data):
                sha = hashlib.sha256(data).hexdigest()
                return self._send(302, b"", {"Location": f"{hub.cdn}/cdn/{repo}/{path}", "X-Linked-Etag": f'"{sha}"',
                                             "X-Linked-Size": str(len(data))})
            self._serve(path, data, _git_blob(data))

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


@pytest.fixture
def hub() -> Iterator[Hub]:
    state = Hub()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(state)) for _ in range(2)]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    state.url, state.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    yield state
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    cfg = base_config(tmp_path, model={"engine": "onnx", "path": str(tmp_path / "state" / "models" / "tiny-vision-it")})
    cfg["model"].pop("options", None)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _pull(config: Path, *args: str) -> int:
    return main(["model", "pull", "-c", str(config), *args])


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


# -- tests -------------------------------------------------------------------------------------

def test_pull_of_a_gated_release_then_list_and_verify(hub: Hub, release: dict[str, bytes], config: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hub.repos[REPO_ID] = release
    hub.gated.add(REPO_ID)
    models = config.parent / "state" / "models"

    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.DOWNLOAD_FAILED
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "accept the Gemma licence" in err and "HF_TOKEN" in err
    assert not (models / "tiny-vision-it").exists()

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the hub from the environment, as huggingface_hub takes it
    assert _pull(config, REPO_ID) == ExitCode.OK
    out, err = capsys.readouterr()
    folder = models / "tiny-vision-it"
    assert f"path: {folder}" in out and "caption, ocr, translate" in out
    assert f"{DATA}: " in err and " in " in err  # the plain progress lines of a non-terminal
    assert _leftovers(models) == ["tiny-vision-it"]  # no download or install folder left behind

    m = Manifest.load(folder)
    assert m.vision is not None and m.graphs["decoder"] == "decoder_model_merged_q4.onnx"
    assert m.source["pulled"]["from"] == f"{REPO_ID}@main"
    assert m.source["pulled"]["sha256"][DATA] == hashlib.sha256(release[DATA]).hexdigest()
    assert (folder / "decoder_model_merged_q4.onnx_data").read_bytes() == release[DATA]
    assert not hub.requests("README.md") and not hub.requests("embed_tokens_fp16")
    assert len(hub.requests("/api/models/")) > 1  # the tree came in pages
    cdn = [r for r in hub.seen if r["path"].startswith("/cdn/")]
    assert cdn and all("authorization" not in r["headers"] for r in cdn)  # the token stays with the hub

    assert main(["model", "list", "-c", str(config), "--json"]) == ExitCode.OK
    listed = json.loads(capsys.readouterr().out)["models"]
    assert [(r["name"], r["in_use"], r["tasks"]) for r in listed] == [
        ("tiny-vision-it", True, ["caption", "ocr", "translate"])]
    assert listed[0]["bytes"] == sum(p.stat().st_size for p in folder.iterdir())

    assert main(["model", "verify", str(folder), "--tokens", "3"]) == ExitCode.OK
    assert _pull(config, REPO_ID) == ExitCode.INPUT  # the folder is taken: nothing is overwritten
    assert "already holds model tiny-vision-it" in capsys.readouterr().err


@pytest.mark.parametrize("server_resumes", [True, False], ids=["206", "200-restarts"])
def test_an_interrupted_download_is_resumed_by_the_next_pull(hub: Hub, release: dict[str, bytes], config: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            server_resumes: bool) -> None:
    hub.repos[REPO_ID] = release
    cut = len(release[DATA]) * 2 // 5
    hub.drop_once[DATA] = cut
    models = config.parent / "state" / "models"
    part = models / ".tiny-vision-it.download" / (DATA + ".part")

    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.DOWNLOAD_FAILED
    err = capsys.readouterr().err
    assert DATA in err and "run the same command again to resume" in err
    assert part.stat().st_size == cut
    assert not (models / "tiny-vision-it").exists() and not (models / ".tiny-vision-it.install").exists()

    hub.ignore_range = not server_resumes
    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.OK
    second = [r for r in hub.requests(DATA) if r["path"].startswith("/cdn/")][-1]
    assert second["headers"].get("range") == f"bytes={cut}-"
    assert "if-range" in second["headers"]
    if server_resumes:
        assert "resuming at" in capsys.readouterr().err
    got = models / "tiny-vision-it" / "decoder_model_merged_q4.onnx_data"
    assert sha256_file(got) == hashlib.sha256(release[DATA]).hexdigest()
    assert Manifest.load(models / "tiny-vision-it").check_files(models / "tiny-vision-it") == []
    assert not part.exists()


def test_a_checksum_mismatch_installs_nothing_and_drops_the_download(hub: Hub, release: dict[str, bytes],
                                                                    config: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    hub.repos[REPO_ID] = release
    bad = bytearray(release[DATA])
    bad[len(bad) // 2] ^= 0xFF
    hub.corrupt[DATA] = bytes(bad)
    models = config.parent / "state" / "models"

    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.DOWNLOAD_FAILED
    err = capsys.readouterr().err
    want, got = hashlib.sha256(release[DATA]).hexdigest(), hashlib.sha256(bad).hexdigest()
    assert f"{DATA}: sha256 {got}, expected {want}" in err
    assert not (models / "tiny-vision-it").exists() and not (models / ".tiny-vision-it.install").exists()
    download = models / ".tiny-vision-it.download"
    assert not (download / (DATA + ".part")).exists() and not (download / DATA).exists()
    assert (download / "config.json").is_file()  # files that checked stay for the next run


def test_a_small_file_is_checked_by_its_git_blob_id(hub: Hub, release: dict[str, bytes], config: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    hub.repos[REPO_ID] = release
    hub.corrupt["config.json"] = release["config.json"].replace(b"64", b"65", 1)
    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.DOWNLOAD_FAILED
    err = capsys.readouterr().err
    assert "config.json: git blob sha1" in err and _git_blob(release["config.json"]) in err


def test_a_gguf_url_is_fetched_checked_and_handed_to_the_export(hub: Hub, config: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The GGUF branch as far as a fast test can take it: no GGUF small enough for a test holds a
    model (a vocabulary-only one, as test_gguf_tokenizer.py writes, makes transformers build a
    default-sized random Gemma 3: 8 GB of RAM), so the file served is a GGUF written by gguf-py
    and cut short. It is fetched, checked (against --sha256, then the server's ETag), handed to
    the export, whose refusal installs nothing. The whole road, with the real 270M: the slow
    test below."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "tiny-it-Q4_K_M.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>"])
    writer.add_tensor("w", np.arange(16, dtype=np.float32).reshape(4, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hub.plain[path.name] = data = path.read_bytes()[:200]
    url = f"{hub.url}/files/{path.name}"
    models = config.parent / "state" / "models"
    work = models / ".tiny-it-Q4_K_M.download"

    assert _pull(config, url, "--sha256", "0" * 64) == ExitCode.DOWNLOAD_FAILED
    assert f"expected {'0' * 64}" in capsys.readouterr().err and not (work / path.name).exists()

    assert _pull(config, url) == ExitCode.INPUT
    err = capsys.readouterr().err
    assert f"{path.name} downloaded and checked, but the export cannot make a model of it" in err
    assert sha256_file(work / path.name) == hashlib.sha256(data).hexdigest()  # kept for a rerun
    assert "warning: no checksum" not in err  # the ETag carried it
    assert _leftovers(models) == [work.name]


@pytest.mark.slow
def test_a_gguf_pull_of_the_real_270m_exports_it(hub: Hub, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The built-in model's GGUF (253 MB, from the default-model extra) served as a plain URL:
    pulled, exported with its own blocks, listed, verified."""
    from model_cache import default_gguf

    gguf = default_gguf()
    hub.plain[gguf.name] = gguf.read_bytes()
    out = config.parent / "state" / "models" / "gemma-3-270m-pulled"
    assert _pull(config, f"{hub.url}/files/{gguf.name}", "--out", str(out)) == ExitCode.OK
    assert f"path: {out}" in capsys.readouterr().out
    m = Manifest.load(out)
    assert m.weights == "gguf" and m.text.num_layers == 18 and m.vision is None
    assert m.source["pulled"]["sha256"][gguf.name] == sha256_file(gguf)
    assert main(["model", "verify", str(out), "--tokens", "4"]) == ExitCode.OK


def test_a_gguf_pull_without_torch_says_which_extra_and_fetches_nothing(hub: Hub, config: Path) -> None:
    hub.plain["m.gguf"] = b"GGUF"
    code = ("import sys; sys.modules['torch'] = None\n"  # what an edge box without the export extra has
            "from edged.cli import main\n"
            f"sys.exit(main(['model', 'pull', '-c', {str(config)!r}, '{hub.url}/files/m.gguf']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == ExitCode.MODEL_UNAVAILABLE, res.stderr
    assert "pip install 'edged[export]'" in res.stderr and "onnx-community/gemma-3-4b-it-ONNX" in res.stderr
    assert not hub.requests("/files/")


def test_model_list_says_what_each_model_serves(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = config.parent / "state" / "models"
    models.mkdir(parents=True)
    shutil.copytree(built_model(f"random:{TEXT_RECIPE}", weights="fp32"), models / "text")
    shutil.copytree(built_model(f"random:{VISION_RECIPE}", weights="fp32"), models / "vision")
    (models / "junk").mkdir()
    (models / ".text.download").mkdir()  # a pull in progress is not a model
    assert main(["model", "list", "-c", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    lines = {line.split()[0] if not line.startswith("*") else line.split()[1]: line for line in out.splitlines()
             if line.strip()}
    assert "translate" in lines["tiny-gemma3-text"] and "caption" not in lines["tiny-gemma3-text"]
    assert "caption, ocr, translate" in lines["tiny-gemma3-vision"]
    assert "unusable" in lines["junk"] and ".text.download" not in out
    # The config names a model that is not there: listed, marked, and said so.
    assert lines["tiny-vision-it"].startswith("*") and "not installed" in lines["tiny-vision-it"]
    assert "edged model pull NAME" in out


def test_what_a_name_means() -> None:
    hub = "https://hub.example"
    s = parse_source("onnx-community/gemma-3-4b-it-ONNX", hub, "main")
    assert (s.kind, s.repo, s.endpoint, s.default_name) == ("hub", "onnx-community/gemma-3-4b-it-ONNX", hub,
                                                           "gemma-3-4b-it")
    s = parse_source("https://mirror.example/google/gemma-3-4b-it-qat-q4_0-gguf/tree/v1", hub, "main")
    assert (s.kind, s.endpoint, s.revision, s.default_name) == ("hub", "https://mirror.example", "v1",
                                                               "gemma-3-4b-it-qat-q4_0")
    s = parse_source("https://x.example/a/b/resolve/main/model-Q4_K_M.gguf?download=1", hub, "main")
    assert (s.kind, s.default_name) == ("url", "model-Q4_K_M")
    for bad in ("gemma", "https://x.example/a.bin", "../etc/passwd"):
        with pytest.raises(SourceError):
            parse_source(bad, hub, "main")
