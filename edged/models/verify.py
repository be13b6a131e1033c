"""`edged model verify`, the model's half: is this folder whole and shaped as the engine expects?

(Whether it is alive, one short generation, is the engine's half: engine/selftest.py.)"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edged.models.manifest import Manifest, ManifestError


def _io(path: Path) -> tuple[set[str], set[str]]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return {i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()}


def check_model(folder: Path) -> tuple[bool, list[str]]:
    lines: list[str] = []
    try:
        m = Manifest.load(folder)
    except ManifestError as exc:
        return False, [f"FAIL manifest: {exc}"]
    lines.append(f"ok   manifest: {m.name}, {m.weights}, {len(m.files)} files")
    problems = m.check_files(folder)
    lines += [f"FAIL file {p}" for p in problems] or [f"ok   checksums of {len(m.files)} files"]
    ok = not problems
    past = {f"past_key_values.{i}.{k}" for i in range(m.text.num_layers) for k in ("key", "value")}
    present = {f"present.{i}.{k}" for i in range(m.text.num_layers) for k in ("key", "value")}
    expect = {
        "embed": ({"input_ids"}, {"inputs_embeds"}),
        "decoder": ({"inputs_embeds", "attention_mask"} | past, {"logits"} | present),
    }
    for role, (ins, outs) in expect.items():
        name = m.graphs.get(role)
        if not name:
            lines.append(f"FAIL manifest names no {role} graph")
            ok = False
            continue
        try:
            have_in, have_out = _io(folder / name)
        except Exception as exc:  # any load failure is the finding
            lines.append(f"FAIL {name}: cannot load: {exc}")
            ok = False
            continue
        missing = sorted((ins - have_in) | (outs - have_out))
        if missing:
            lines.append(f"FAIL {name}: missing inputs/outputs {missing[:6]}{' …' if len(missing) > 6 else ''}")
            ok = False
        else:
            lines.append(f"ok   {name}: {len(have_in)} inputs, {len(have_out)} outputs as expected")
    return ok, lines
