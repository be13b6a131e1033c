"""The manifest's figures in words, for `edged model info`: what was compared, and what it means."""

from __future__ import annotations

from typing import Any

from edged.models.manifest import Manifest

_SIDES = {"pytorch": "PyTorch on the same weights", "fp32": "the fp32 export of the same source"}
_NAMES = {"fused_image": "fused decoder (masked) on an image prompt", "vision_fp32": "fp32 export with an image"}


def _sides(key: str) -> tuple[str, str]:
    left, _, right = key.partition("_vs_")
    return _NAMES.get(left, left), _SIDES.get(right, right)


def parity(key: str, rep: dict[str, Any]) -> str:
    left, right = _sides(key)
    agreement = rep.get("greedy_agreement")
    agree = [agreement] if isinstance(agreement, int) else list(agreement or [])  # one prompt: a number
    steps, prompts = rep.get("steps", "?"), rep.get("prompts", len(agree))
    whole = sum(1 for a in agree if a == steps)
    first = rep.get("prefill_max_abs_logit_diff", float("nan"))
    largest = rep.get("max_abs_logit_diff", float("nan"))
    what = (f"The {left} build against {right}: {prompts} prompts, {steps} greedy tokens each. ")
    if rep.get("greedy_tokens_equal"):
        return what + (f"Every continuation is identical; the logits differ by at most {largest:.2g} "
                       "(float rounding), so the export computes what its source computes.")
    parted = sorted(a for a in agree if a != steps)
    text = what + (f"{whole} of {len(agree)} continuations are identical; the others part after "
                   f"{', '.join(map(str, parted))} tokens. ")
    text += (f"On the prompt itself the logits differ by at most {first:.2g}. A parting happens where the "
             "two builds' best next tokens were nearly tied: from there they write different, not "
             "necessarily worse, text, and the later logit differences (largest "
             f"{largest:.3g}) compare different contexts.")
    if left == "gguf":
        text += (" The weights are the GGUF's own, bit for bit; what differs is the arithmetic "
                 "(int8 activations, as in llama.cpp's own dot products).")
    return text


def quantization(m: Manifest) -> list[str]:
    q = m.quantization or {}
    lines = []
    if m.weights == "gguf":
        types = ", ".join(f"{n} {t}" for t, n in (q.get("source_types") or {}).items())
        lines.append(f"Weights carried from the GGUF as they were quantized ({types}); nothing re-rounded.")
        lines += [f"Fallback: {f}" for f in q.get("fallbacks") or []]
    elif m.weights in ("int4", "int8") and "algorithm" in q:
        eight = ", ".join(q.get("int8") or []) or "none"
        lines.append(f"Quantized here: {q.get('bits')}-bit {q.get('algorithm')} blocks of {q.get('block')}; "
                     f"8-bit: output layer/embedding ({q.get('head_bits')}-bit) and layers {eight}.")
        measured = q.get("measured")
        if measured:
            lines.append(f"This recipe measured perplexity {measured['ppl_ratio']:.3f}x the fp32 export's on "
                         f"{measured['on']} ({measured['command']}).")
        lines += [f"Note: {n}" for n in q.get("notes") or []]
    return lines


def words(m: Manifest) -> list[str]:
    return quantization(m) + [parity(k, rep) for k, rep in m.parity.items()]
