"""Model pipeline pieces: manifest, recipes, import of a release layout, verify, the CLI verbs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from edged.cli import main
from edged.commands.model import verify_model
from edged.exitcodes import ExitCode
from edged.models import default
from edged.models.importer import ReleaseError, import_onnx_community
from edged.models.manifest import WINDOW_SLACK, Manifest, ManifestError
from model_cache import built_model

TINY = f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}"


@pytest.fixture(scope="module")
def tiny() -> Path:
    return built_model(TINY, weights="fp32")


def test_manifest_records_shapes_tokens_checksums_and_kv_cost(tiny: Path) -> None:
    m = Manifest.load(tiny)
    assert m.graphs == {"embed": "embed_tokens.onnx", "decoder": "decoder_model_merged.onnx", "vision": None,
                        "decoder_fused": "decoder_fused.onnx", "greedy": "greedy.onnx"}
    assert set(m.files) == {"embed_tokens.onnx", "decoder_model_merged.onnx", "decoder_fused.onnx", "greedy.onnx",
                            "tokenizer.json"}
    assert m.text.sliding_window == 8 and m.text.layer_types.count("full_attention") == 1
    assert m.tokens.start_of_turn == 260 and m.tokens.end_of_turn == 261 and 261 in m.tokens.eos
    # Fused layout: the one global layer grows per token; the five sliding ones hold a window (+ slack).
    assert m.kv_bytes_per_token == 1 * 2 * 2 * 16 * 4
    assert m.kv_window_bytes == 5 * 2 * 2 * 16 * 4 * (8 + WINDOW_SLACK - 1)
    data = json.loads((tiny / "edged-model.json").read_text())
    assert data["kv_cache"]["bytes_at_context_length"] == m.kv_bytes_per_token * 512 + m.kv_window_bytes
    assert m.check_files(tiny) == []


def test_verify_finds_corruption(tiny: Path, tmp_path: Path) -> None:
    ok, lines = verify_model(tiny, tokens=4)
    assert ok, lines
    copy = tmp_path / "m"
    shutil.copytree(tiny, copy)
    with open(copy / "tokenizer.json", "a") as fh:
        fh.write(" ")
    ok, lines = verify_model(copy)
    assert not ok and any("tokenizer.json" in line and "FAIL" in line for line in lines)
    (copy / "edged-model.json").write_text("{}")
    with pytest.raises(ManifestError, match="unknown format"):
        Manifest.load(copy)


def test_import_of_an_onnx_community_layout(tiny: Path, tmp_path: Path) -> None:
    release = tmp_path / "tiny-it-ONNX"
    (release / "onnx").mkdir(parents=True)
    shutil.copy(tiny / "embed_tokens.onnx", release / "onnx" / "embed_tokens_q4.onnx")
    shutil.copy(tiny / "decoder_model_merged.onnx", release / "onnx" / "decoder_model_merged_q4.onnx")
    shutil.copy(tiny / "tokenizer.json", release / "tokenizer.json")
    recipe = json.loads((REPO / "models" / "tiny-gemma3-text.json").read_text())
    (release / "config.json").write_text(json.dumps({"text_config": recipe["text_config"]}))
    with pytest.raises(ReleaseError, match="no embed_tokens/decoder_model_merged graphs for dtype fp16"):
        import_onnx_community(release, tmp_path / "out16", "fp16")
    m = import_onnx_community(release, tmp_path / "out", "q4", position_base=0)
    assert m.name == "tiny-it" and m.weights == "int4" and m.decoder["logits"] == "all"
    assert m.graphs["decoder"] == "decoder_model_merged_q4.onnx"
    ok, lines = verify_model(tmp_path / "out", tokens=4)
    assert ok, lines


def test_model_cli_verbs(tiny: Path, capsys) -> None:
    assert main(["model", "info", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "tiny-gemma3-text" in out and "bytes/token" in out and "fp32_vs_pytorch" in out
    assert "Every continuation is identical" in " ".join(out.split())  # the parity figures in words
    assert main(["model", "info", "--json", str(tiny)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "tiny-gemma3-text" and data["parity"]["fp32_vs_pytorch"]["greedy_tokens_equal"]
    assert any("against PyTorch" in line for line in data["explained"])
    assert main(["model", "verify", str(tiny), "--tokens", "3"]) == 0
    assert main(["model", "info", str(tiny.parent / "nope")]) == ExitCode.NOT_FOUND


def test_parity_figures_are_explained_as_what_they_mean() -> None:
    from edged.models.explain import parity

    rep = {"prompts": 5, "steps": 32, "max_abs_logit_diff": 22.5, "prefill_max_abs_logit_diff": 1.4,
           "greedy_tokens_equal": False, "greedy_agreement": [15, 32, 32, 2, 32]}
    text = parity("gguf_vs_fp32", rep)
    assert "3 of 5 continuations are identical" in text and "part after 2, 15 tokens" in text
    assert "at most 1.4" in text and "GGUF's own, bit for bit" in text
    assert "int4 build" in parity("int4_vs_fp32", rep) and "GGUF" not in parity("int4_vs_fp32", rep)


def test_default_recipe_matches_the_code() -> None:
    recipe = json.loads((REPO / "models" / "gemma-3-270m.json").read_text())
    assert recipe["name"] == default.NAME
    assert recipe["export"] == default.EXPORT
    assert recipe["source"]["package"] == default.PACKAGE and recipe["source"]["file"] == default.GGUF_FILE


def test_export_cli_takes_the_recipe_from_its_flags(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["model", "export", "--from", TINY, "--out", str(out), "--weights", "int4", "--algorithm", "rtn",
                 "--block-size", "16", "--symmetric", "--int8", "*/v_proj/*", "--int8", "*/k_proj/*",
                 "--accuracy-level", "1", "--no-verify"]) == 0
    q = Manifest.load(out).quantization
    assert (q["algorithm"], q["block"], q["symmetric"], q["accuracy_level"]) == ("rtn", 16, True, 1)
    assert q["int8"] == ["*/v_proj/*", "*/k_proj/*"] and q["types"]["int4 rtn sym b16"] > 0
    assert main(["model", "export", "--from", TINY, "--out", str(tmp_path / "g"), "--weights", "gguf"]) != 0
