"""`edged model pull` and `edged model list` against a hub on loopback (tests/loopback_hub.py):
a release built by the project's own export, fetched, checked, resumed, refused, installed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import REPO, base_config
from edged.cli import main
from edged.exitcodes import ExitCode
from edged.models.fetch.plan import SourceError, parse_source
from edged.models.manifest import Manifest, sha256_file
from loopback_hub import DATA, TOKEN, VISION_RECIPE, LoopbackHub, git_blob, release_files, serving
from model_cache import built_model

TEXT_RECIPE = REPO / "models" / "tiny-gemma3-text.json"
REPO_ID = "community/tiny-vision-it-ONNX"


@pytest.fixture(scope="module")
def release() -> dict[str, bytes]:
    return release_files(built_model(f"random:{VISION_RECIPE}", weights="fp32"))


@pytest.fixture
def hub() -> Iterator[LoopbackHub]:
    with serving() as state:
        yield state


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

def test_pull_of_a_gated_release_then_list_and_verify(hub: LoopbackHub, release: dict[str, bytes], config: Path,
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

    other = config.parent / "elsewhere" / "m"  # --out: no config needed, and stdout keeps to the result
    assert main(["model", "pull", REPO_ID, "--out", str(other)]) == ExitCode.OK
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == f"    path: {other}" and "model_pulled" not in out and "model_pulled" in err
    assert Manifest.load(other).check_files(other) == []


@pytest.mark.parametrize("server_resumes", [True, False], ids=["206", "200-restarts"])
def test_an_interrupted_download_is_resumed_by_the_next_pull(hub: LoopbackHub, release: dict[str, bytes], config: Path,
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


def test_a_checksum_mismatch_installs_nothing_and_drops_the_download(hub: LoopbackHub, release: dict[str, bytes],
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


def test_a_small_file_is_checked_by_its_git_blob_id(hub: LoopbackHub, release: dict[str, bytes], config: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    hub.repos[REPO_ID] = release
    hub.corrupt["config.json"] = release["config.json"].replace(b"64", b"65", 1)
    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.DOWNLOAD_FAILED
    err = capsys.readouterr().err
    assert "config.json: git blob sha1" in err and git_blob(release["config.json"]) in err


def test_a_gguf_url_is_fetched_checked_and_handed_to_the_export(hub: LoopbackHub, config: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The GGUF branch as far as a fast test can take it: no GGUF small enough for a test holds a
    model (a vocabulary-only one, as test_gguf_tokenizer.py writes, makes transformers build a
    default-sized random Gemma 3: 8 GB of RAM), so the file served is a GGUF written by gguf-py
    and cut short. It is fetched, checked (against --sha256, then the server's ETag), handed to
    the export, whose refusal (gguf.check_tensors: not a whole model) installs nothing. The whole
    road, with the real 270M: the slow test below."""
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
    assert f"{path.name}: not a readable GGUF" in err  # refused before transformers fills in random weights
    assert sha256_file(work / path.name) == hashlib.sha256(data).hexdigest()  # kept for a rerun
    assert "warning: no checksum" not in err  # the ETag carried it
    assert _leftovers(models) == [work.name]


@pytest.mark.slow
def test_a_gguf_pull_of_the_real_270m_exports_it(hub: LoopbackHub, config: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
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


def test_a_gguf_pull_without_torch_says_which_extra_and_fetches_nothing(hub: LoopbackHub, config: Path) -> None:
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
    (models / ".text.download").mkdir()  # a pull in progress is not a model, but its bytes are said
    (models / ".text.download" / "weights.data.part").write_bytes(b"x" * 3000)
    assert main(["model", "list", "-c", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    lines = {line.split()[0] if not line.startswith("*") else line.split()[1]: line for line in out.splitlines()
             if line.strip()}
    assert "translate" in lines["tiny-gemma3-text"] and "caption" not in lines["tiny-gemma3-text"]
    assert "caption, ocr, translate" in lines["tiny-gemma3-vision"]
    assert "unusable" in lines["junk"] and not [k for k in lines if k.startswith(".")]
    assert "partial download of text:" in out and "remove the folder to give the space back" in out
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
    for bad in ("gemma", "https://x.example/a.bin", "../etc/passwd", "owner/..", "https://x.example/.gguf"):
        with pytest.raises(SourceError):
            parse_source(bad, hub, "main")


def test_a_part_the_server_cannot_continue_is_fetched_anew(hub: LoopbackHub, tmp_path: Path) -> None:
    """A plain URL without a size: a `.part` already as long as the file gets 416 for its Range
    request, and the file comes again from byte 0."""
    from edged.models.fetch.download import NoProgress, fetch_file
    from edged.models.fetch.hub import Hub
    from edged.models.fetch.plan import RemoteFile

    hub.plain["w.bin"] = data = os.urandom(5000)
    url = f"{hub.url}/files/w.bin"
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(b"x" * 5000)
    dest.with_name("w.bin.part.json").write_text(json.dumps({"url": url, "sha256": None, "size": None}))
    sha, checked = fetch_file(Hub(hub.url, None), RemoteFile("w.bin", url), dest, NoProgress())
    assert dest.read_bytes() == data and sha == hashlib.sha256(data).hexdigest() and checked  # by the ETag
    assert [r["headers"].get("range") for r in hub.requests("/files/w.bin")] == ["bytes=5000-", None]
    assert not dest.with_name("w.bin.part").exists() and not dest.with_name("w.bin.part.json").exists()


@pytest.mark.parametrize("hostile", ["onnx/decoder_model_merged_q4.onnx_data/../../../../escape",
                                     "/etc/escape.gguf", "..\\escape.gguf", "onnx//x.onnx_data"])
def test_a_file_list_that_points_outside_the_download_is_refused(hostile: str) -> None:
    from edged.models.fetch.hub import DownloadError
    from edged.models.fetch.plan import safe_path

    with pytest.raises(DownloadError, match="not a plain relative path"):
        safe_path(hostile)
    assert safe_path("onnx/decoder_model_merged_q4.onnx_data_1") == "onnx/decoder_model_merged_q4.onnx_data_1"


def test_a_hostile_hub_cannot_write_outside_the_download(hub: LoopbackHub, release: dict[str, bytes], config: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    escape = config.parent / "escaped"
    hostile = "onnx/decoder_model_merged_q4.onnx_data/" + "../" * 8 + str(escape).lstrip("/")
    hub.repos[REPO_ID] = {**release, hostile: b"written outside"}
    assert _pull(config, REPO_ID, "--endpoint", hub.url) == ExitCode.DOWNLOAD_FAILED
    assert "not a plain relative path, refused" in capsys.readouterr().err
    assert not escape.exists() and not (config.parent / "state" / "models" / "tiny-vision-it").exists()
