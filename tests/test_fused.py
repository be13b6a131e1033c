"""The fused decoder (GroupQueryAttention, in-place KV, window buffers) against the traced export.

The traced decoder is the reference: it is checked against PyTorch (test_engine.py). Every fused
path is held to it: logits within 1e-3, greedy tokens equal, past the sliding window, with a
prompt as long as the context, and rows run by continuous batching equal to the same prompts
run alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edged.engine.api import ModelUnavailable, Request, RequestError
from edged.engine.generate import Generator, GenParams
from edged.engine.onnx import DecodeSettings, OnnxEngine
from edged.engine.session import SessionSettings
from edged.engine.slots import SlotGenerator
from edged.models.manifest import Manifest
from model_cache import built_model

REPO = Path(__file__).resolve().parent.parent
TINY = f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}"
TINY_VLM = f"random:{REPO / 'models' / 'tiny-gemma3-vision.json'}"
GREEDY = {"stop_on_eos": False, "repetition_guard": False}


def _sessions(folder: Path) -> tuple[Manifest, ort.InferenceSession, ort.InferenceSession, ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    m = Manifest.load(folder)
    open_ = lambda name: ort.InferenceSession(str(folder / name), opts, providers=cpu)  # noqa: E731
    return m, open_(m.graph("embed")), open_(m.graph("decoder")), open_(m.graph("decoder_fused"))


@pytest.fixture(scope="module", params=["fp32", "int4"])
def tiny(request):
    folder = built_model(TINY, weights=request.param)
    return _sessions(folder)


def _traced_logits(m, embed, decoder, prompt: list[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
    """Greedy steps of the traced decoder, and the logits at each."""
    gen = Generator(embed, decoder, m)
    n = m.text.num_layers
    kvh, hd = m.text.num_kv_heads, m.text.head_dim
    past = [gen._value(np.zeros((1, kvh, 0, hd), np.float32)) for _ in range(2 * n)]
    ids = np.asarray([prompt], np.int64)
    logits, past = gen._step(gen._embed(ids), np.ones_like(ids), np.arange(len(prompt))[None], past)
    out, tokens = [logits[0].copy()], [int(logits[0].argmax())]
    for s in range(steps):
        total = len(prompt) + s + 1
        logits, past = gen._step(gen._embed(np.asarray([[tokens[-1]]], np.int64)), np.ones((1, total), np.int64),
                                 np.array([[total - 1]]), past)
        out.append(logits[0].copy())
        tokens.append(int(logits[0].argmax()))
    return out, tokens


def _fused_logits(gen: SlotGenerator, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """Teacher-forced with the traced run's tokens, so every step compares the same context."""
    from edged.engine.generate import SeqOut
    from edged.engine.slots import _Row

    row = _Row(0, prompt, GenParams(), None, SeqOut(), slot=0)
    logits, _ = gen._prefill_chunk_all(row)
    out = [logits]
    for token in tokens[:-1]:
        row.token = token
        (_, z, _), = gen._decode_one([row])
        out.append(z)
    return out


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_fused_graph_is_built_of_fused_kernels_and_quantized_like_the_traced_one(weights: str) -> None:
    folder = built_model(TINY, weights=weights)
    m, _, _, fused = _sessions(folder)
    graph = onnx.load(str(folder / m.graph("decoder_fused")), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("GroupQueryAttention") == m.text.num_layers
    assert "Concat" not in ops and "Shape" not in ops  # no cache copies, no shape plumbing
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * m.text.num_layers
    traced = onnx.load(str(folder / m.graph("decoder")), load_external_data=False)
    kinds = lambda g: sorted(n.op_type for n in g.graph.node if n.op_type.startswith("MatMul"))  # noqa: E731
    if weights == "int4":
        # Every projection and the head on block kernels, as in the traced graph, from the same bytes.
        assert kinds(graph) == [k for k in kinds(traced) if k == "MatMulNBits"] and "MatMul" not in kinds(graph)
        shared = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert shared == {"weights.data"}
    assert len(graph.graph.node) < len(traced.graph.node) / 4
    names = {i.name for i in fused.get_inputs()}
    assert {"seqlens_k", "total_sequence_length", "inputs_embeds"} <= names
    assert "attention_mask" not in names and "position_ids" not in names
    assert {o.name for o in fused.get_outputs()} >= {"logits"}


def test_fused_logits_match_the_traced_decoder_past_the_window(tiny) -> None:
    m, embed, traced, fused = tiny
    rng = np.random.default_rng(3)
    prompt = [2, *rng.integers(3, 300, size=20).tolist()]
    steps = 4 * m.text.sliding_window + 5  # the window slides and the buffer compacts, several times
    ref, tokens = _traced_logits(m, embed, traced, prompt, steps)
    got = _fused_logits(SlotGenerator(embed, fused, m, slots=2, chunk=7), prompt, tokens)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    assert worst <= 1e-3
    assert [int(z.argmax()) for z in got] == tokens


def test_continuous_batching_rows_equal_the_same_prompts_alone(tiny) -> None:
    m, embed, traced, fused = tiny
    rng = np.random.default_rng(1)
    w = m.text.sliding_window
    lengths = (5, 30, 12, 3, 9 * w, 9, 17, 2, 40, 11)  # one prompt many windows long
    budgets = (40, 7, 25, 60, 13, 33, 5, 50, 20, 44)  # rows finish at different steps
    prompts = [[2, *rng.integers(3, 300, size=n - 1).tolist()] for n in lengths]
    params = [GenParams(max_new_tokens=k, **GREEDY) for k in budgets]
    solo = SlotGenerator(embed, fused, m, slots=1, chunk=512)
    alone = [solo.run([p], [gp])[0][0].tokens for p, gp in zip(prompts, params, strict=True)]
    if m.weights == "fp32":
        # In fp32 even whole greedy runs agree with the traced decoder; with 8-bit activations
        # (int4 weights, accuracy_level 4) a near tie of the random model may fall either way,
        # which the teacher-forced logits test bounds instead.
        old = Generator(embed, traced, m)
        assert alone == [old.run([p], [gp])[0][0].tokens for p, gp in zip(prompts, params, strict=True)]
    for slots, chunk in ((3, 16), (8, 5)):
        outs, timing = SlotGenerator(embed, fused, m, slots=slots, chunk=chunk).run(prompts, params)
        assert [o.tokens for o in outs] == alone, (slots, chunk)
        assert [len(o.tokens) for o in outs] == list(budgets)
        # Slots are refilled as rows finish: far fewer steps than the rows' lengths end to end.
        assert timing.steps < sum(budgets)


def test_fresh_prompts_of_one_length_are_prefilled_in_one_call(tiny) -> None:
    """A burst of like jobs (one template, one page each) goes in together: one call for all of
    their first chunks, every row as it would be alone."""
    m, embed, _, fused = tiny
    rng = np.random.default_rng(5)
    prompts = [[2, *rng.integers(3, 300, size=n - 1).tolist()] for n in (12, 12, 12, 12, 12, 7, 12)]
    params = [GenParams(max_new_tokens=9, **GREEDY) for _ in prompts]
    gen = SlotGenerator(embed, fused, m, slots=8, chunk=12)
    rows = [gen.add(i, p, gp) for i, (p, gp) in enumerate(zip(prompts, params, strict=True))]
    gen.step()
    # Slots 0-4 in one call; the 7-token prompt is a wall (another length), so the last waits.
    assert [r.prefilled for r in rows] == [True] * 5 + [False, False]
    while gen.busy():
        gen.step()
    solo = SlotGenerator(embed, fused, m, slots=1, chunk=12)
    assert [r.out.tokens for r in rows] == [solo.run([p], [gp])[0][0].tokens
                                            for p, gp in zip(prompts, params, strict=True)]


def test_sampled_rows_are_the_same_alone_and_batched(tiny) -> None:
    m, embed, _, fused = tiny
    gen = SlotGenerator(embed, fused, m, slots=4, chunk=8)
    prompts = [[2, 10 + i, 20, 30 + i] for i in range(6)]
    params = [GenParams(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=i, **GREEDY) for i in range(6)]
    batched = [o.tokens for o in gen.run(prompts, params)[0]]
    alone = [gen.run([p], [gp])[0][0].tokens for p, gp in zip(prompts, params, strict=True)]
    assert batched == alone
    assert len({tuple(t) for t in batched}) > 1


def test_the_greedy_graph_chooses_as_the_host_does() -> None:
    """The device path (logits in a device buffer, ArgMax in its own graph, only ids to the host),
    run on the CPU provider: the same tokens as numpy's argmax, sampled rows the same too."""
    folder = built_model(TINY, weights="fp32")
    m, embed, _, fused = _sessions(folder)
    opts = ort.SessionOptions()
    greedy = ort.InferenceSession(str(folder / m.graph("greedy")), opts, providers=["CPUExecutionProvider"])
    prompts = [[2, 10 + i, 20, 30 + i] * (i + 1) for i in range(5)]
    params = [GenParams(max_new_tokens=18, **GREEDY), GenParams(max_new_tokens=9, temperature=0.8, seed=3, **GREEDY)]
    params = [params[i % 2] for i in range(5)]
    host = SlotGenerator(embed, fused, m, slots=3, chunk=4).run(prompts, params)[0]
    dev = SlotGenerator(embed, fused, m, slots=3, chunk=4, greedy=greedy)
    dev.device_choice = True  # as on CUDA, with the CPU standing in for the device
    assert [o.tokens for o in dev.run(prompts, params)[0]] == [o.tokens for o in host]
    assert dev.logits_dev is not None


def test_a_prompt_as_long_as_the_context(tiny) -> None:
    m, embed, traced, fused = tiny
    ctx = m.text.context_length
    rng = np.random.default_rng(5)
    params = [GenParams(max_new_tokens=50, **GREEDY)]
    for room in (5, 0):  # five tokens of room; none (the prompt fills the context: one token)
        prompt = [2, *rng.integers(3, 300, size=ctx - 1 - room).tolist()]
        ref = Generator(embed, traced, m).run([prompt], params)[0][0]
        got = SlotGenerator(embed, fused, m, slots=2, chunk=64).run([prompt], params)[0][0]
        assert len(got.tokens) == max(room, 1) and got.finish_reason == "length"
        if m.weights == "fp32":
            assert got.tokens == ref.tokens
    with pytest.raises(RequestError, match="longer than the model's context"):
        SlotGenerator(embed, fused, m, slots=1).run([prompt + [5]], params)
    with pytest.raises(RequestError, match="positions a KV slot holds"):
        SlotGenerator(embed, fused, m, slots=1, context=64).run([prompt[:65]], params)


def test_sliding_layers_hold_a_window_not_the_context(tiny) -> None:
    m, embed, _, fused = tiny
    small = SlotGenerator(embed, fused, m, slots=2, context=64)
    large = SlotGenerator(embed, fused, m, slots=2, context=512)
    sliding = sum(1 for k in m.text.layer_types if k == "sliding_attention")
    full = len(m.text.layer_types) - sliding
    per_position = 2 * 2 * m.text.num_kv_heads * m.text.head_dim * 4  # key + value, 2 slots, fp32
    # Only the global layers grow with the context.
    assert large.kv_bytes() - small.kv_bytes() == full * (512 - 64) * per_position
    assert all(cap < 2 * m.text.sliding_window + 64 for cap, k in zip(small.caps, m.text.layer_types, strict=True)
               if k == "sliding_attention")


def test_the_engine_takes_the_fused_decoder_for_text_and_the_traced_one_when_asked() -> None:
    folder = built_model(TINY, weights="fp32")
    session = SessionSettings(provider="cpu", threads=1)
    fused = OnnxEngine(folder, session, decode=DecodeSettings(slots=3))
    traced = OnnxEngine(folder, session, decode=DecodeSettings(decoder="traced"))
    assert isinstance(fused.generator, SlotGenerator) and fused.continuous
    assert isinstance(traced.generator, Generator) and not getattr(traced, "continuous", False)
    reqs = [Request(text=f"line {i} of the test", max_new_tokens=6 + i) for i in range(7)]
    assert [g.text for g in fused.generate(reqs)] == [g.text for g in traced.generate(reqs)]


def test_fused_is_refused_for_a_model_without_one(tmp_path: Path) -> None:
    """A model exported before the fused decoder (or an imported release) has none: asking for it
    is a clear refusal, auto runs the traced one."""
    import json
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(built_model(TINY_VLM, weights="fp32"), folder)
    data = json.loads((folder / "edged-model.json").read_text())
    data["graphs"]["decoder_fused"] = None
    (folder / "edged-model.json").write_text(json.dumps(data))
    session = SessionSettings(provider="cpu", threads=1)
    assert isinstance(OnnxEngine(folder, session).generator, Generator)
    with pytest.raises(ModelUnavailable, match="no fused decoder"):
        OnnxEngine(folder, session, decode=DecodeSettings(decoder="fused"))


def test_the_export_checks_the_fused_decoder_and_records_it() -> None:
    m = Manifest.load(built_model(TINY, weights="int4"))
    rep = m.parity["fused_vs_traced"]  # measured on the fp32 graphs, before quantization
    assert rep["max_abs_logit_diff"] < 1e-4 and rep["greedy_tokens_equal"]
    assert rep["prompts"] == 2 and rep["steps"] > 1


def test_on_a_device_auto_keeps_the_traced_decoder(monkeypatch) -> None:
    """The fused graph is fp32 and CUDA's GroupQueryAttention is fp16/bf16 only: on a device, auto
    must not put the attention on the CPU behind the operator's back."""
    import edged.engine.onnx as onnx_engine

    real = onnx_engine.open_session

    def as_if_cuda(path, settings, want):
        sess, _ = real(path, settings, "cpu")
        return sess, "cuda"
    monkeypatch.setattr(onnx_engine, "open_session", as_if_cuda)
    folder = built_model(TINY, weights="fp32")
    engine = OnnxEngine(folder, SessionSettings(provider="cpu", threads=1))
    assert isinstance(engine.generator, Generator) and not engine.continuous


def test_an_onnxruntime_without_the_fused_kernels_runs_the_traced_decoder(monkeypatch) -> None:
    """ONNX Runtime 1.23 (the last for Python 3.10) refuses the fused graph (sliding_window_cache is
    unknown to it): auto runs the traced decoder and says why; fused, asked for, is an error."""
    import edged.engine.onnx as onnx_engine

    real = onnx_engine.open_session

    def old_runtime(path, settings, want):
        if path.name == "decoder_fused.onnx":
            raise ModelUnavailable(f"{path.name}: onnxruntime cannot load it: Unrecognized attribute:"
                                   " sliding_window_cache for operator GroupQueryAttention")
        return real(path, settings, want)
    monkeypatch.setattr(onnx_engine, "open_session", old_runtime)
    folder = built_model(TINY, weights="fp32")
    session = SessionSettings(provider="cpu", threads=1)
    engine = OnnxEngine(folder, session)
    assert isinstance(engine.generator, Generator) and not engine.continuous
    assert engine.generate([Request(text="still answers", max_new_tokens=4)])[0].output_tokens >= 1
    with pytest.raises(ModelUnavailable, match="sliding_window_cache"):
        OnnxEngine(folder, session, decode=DecodeSettings(decoder="fused"))
