"""What a pull's NAME means, and which files it fetches.

NAME is a hub repository id (`onnx-community/gemma-3-4b-it-ONNX`), a hub URL of one
(`https://huggingface.co/owner/repo[/tree/REV]`), or the URL of a .gguf file. A repository is
an onnx-community release when it has `onnx/embed_tokens<sfx>.onnx` and
`onnx/decoder_model_merged<sfx>.onnx` for the dtype (plus their external-data files, the
vision encoder and the config and tokenizer files the import reads), else a GGUF repository
(one .gguf, or the one --file names).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from edged.exitcodes import EdgedError, ExitCode
from edged.models.fetch.hub import DownloadError, Hub
from edged.models.importer import SUFFIX

# Read by the import (config, tokenizer, chat format) or kept for the record; tokenizer.model
# (SentencePiece, unused: tokenizer.json is what the engine loads) is left on the hub.
RELEASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "preprocessor_config.json", "processor_config.json",
                 "chat_template.json", "chat_template.jinja")
GRAPHS = ("embed_tokens", "decoder_model_merged")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # as the hub allows: no "..", no dotfile
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SourceError(EdgedError):
    """A NAME or option that names nothing a pull can fetch."""

    code = ExitCode.USAGE


@dataclass(frozen=True)
class Source:
    kind: str  # "hub" | "url"
    endpoint: str
    revision: str
    repo: Optional[str] = None
    url: Optional[str] = None

    @property
    def default_name(self) -> str:
        """The model's folder name: the repository's or the file's, without -ONNX/-GGUF."""
        if self.repo:
            base = self.repo.split("/")[-1]
        else:
            base = PurePosixPath(unquote(urlsplit(self.url or "").path)).stem
        for suffix in ("-ONNX", "-onnx", "-GGUF", "-gguf", "_ONNX", "_GGUF"):
            base = base.removesuffix(suffix)
        return base

    def describe(self) -> str:
        return f"{self.repo}@{self.revision}" if self.repo else str(self.url)


@dataclass(frozen=True)
class RemoteFile:
    path: str  # where it goes below the download folder (its path in the repository)
    url: str
    size: Optional[int] = None
    sha256: Optional[str] = None  # an LFS file's oid, the hub's X-Linked-Etag, or --sha256
    git_sha1: Optional[str] = None  # a small (non-LFS) file's git blob id


@dataclass(frozen=True)
class Plan:
    kind: str  # "release" | "gguf"
    source: Source
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> Optional[int]:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def gguf(self) -> Optional[RemoteFile]:
        return self.files[0] if self.kind == "gguf" else None


def parse_source(name: str, endpoint: str, revision: str) -> Source:
    if name.startswith(("http://", "https://")):
        parts = urlsplit(name)
        path = unquote(parts.path)
        if path.lower().endswith(".gguf"):
            if not re.match(r"^[A-Za-z0-9]", PurePosixPath(path).name):
                raise SourceError(f"{name}: the file's name gives no folder name; pull it with --out DIR")
            return Source("url", endpoint, revision, url=name)
        segs = [s for s in path.split("/") if s]
        if len(segs) >= 2 and _REPO.match("/".join(segs[:2])):
            if len(segs) == 2 or (len(segs) >= 4 and segs[2] == "tree"):
                rev = "/".join(segs[3:]) if len(segs) >= 4 else revision
                return Source("hub", f"{parts.scheme}://{parts.netloc}", rev, repo="/".join(segs[:2]))
        raise SourceError(f"{name}: a URL must name a .gguf file or a hub repository (https://HOST/OWNER/NAME)")
    if _REPO.match(name):
        return Source("hub", endpoint, revision, repo=name)
    raise SourceError(f"{name!r}: expected a Hugging Face repository id (OWNER/NAME, e.g."
                      f" onnx-community/gemma-3-4b-it-ONNX), a hub URL, or the URL of a .gguf file")


def safe_path(path: str) -> str:
    """A repository path to write below the download folder, or DownloadError.

    The file list comes from whatever server the name or --endpoint points at: `..`, an
    absolute path or a backslash there would write outside the folder."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\0" in path
            or any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts)):
        raise DownloadError(f"the server lists a file at {path!r}: not a plain relative path, refused")
    return path


def _remote(hub: Hub, source: Source, entry: dict[str, Any]) -> RemoteFile:
    lfs = entry.get("lfs") or {}
    path = safe_path(str(entry["path"]))
    assert source.repo is not None
    return RemoteFile(path=path, url=hub.resolve_url(source.repo, source.revision, path),
                      size=int(lfs.get("size", entry.get("size", 0))),
                      sha256=str(lfs["oid"]).lower() if lfs.get("oid") else None,
                      git_sha1=None if lfs else (str(entry["oid"]) if entry.get("oid") else None))


def _release(entries: dict[str, dict[str, Any]], dtype: str) -> Optional[list[str]]:
    sfx = SUFFIX[dtype]
    graphs = [f"onnx/{stem}{sfx}.onnx" for stem in GRAPHS]
    if not all(g in entries for g in graphs):
        return None
    vision = f"onnx/vision_encoder{sfx}.onnx"
    if vision not in entries and "onnx/vision_encoder.onnx" in entries:
        vision = "onnx/vision_encoder.onnx"  # as the import does: fp32 vision tower beside a q4 body
    if vision in entries:
        graphs.append(vision)
    # External data: the name the graph refers to, `<graph>_data` (and `_data_1`, …, for files
    # over 2 GB) or `<graph>.data`.
    data = [p for p in entries for g in graphs if p.startswith(g + "_data") or p == g + ".data"]
    return [p for p in RELEASE_FILES if p in entries] + graphs + sorted(set(data))


def _ggufs(entries: dict[str, dict[str, Any]], pattern: Optional[str]) -> list[str]:
    found = sorted(p for p in entries if p.lower().endswith(".gguf"))
    if pattern:
        return [p for p in found if fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern)]
    # A vision GGUF ships its projector as a second file; the export reads the language model only.
    return [p for p in found if "mmproj" not in p.lower()]


def plan_pull(hub: Hub, source: Source, dtype: str, pattern: Optional[str], sha256: Optional[str]) -> Plan:
    if dtype not in SUFFIX:
        raise SourceError(f"--dtype {dtype!r}: choose one of {', '.join(SUFFIX)}")
    if sha256 is not None and not _HEX64.match(sha256.lower()):
        raise SourceError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    if source.kind == "url":
        assert source.url is not None
        name = safe_path(PurePosixPath(unquote(urlsplit(source.url).path)).name)
        return Plan("gguf", source, (RemoteFile(path=name, url=source.url, sha256=sha256.lower() if sha256 else None),))
    assert source.repo is not None
    entries = {str(e["path"]): e for e in hub.tree(source.repo, source.revision)}
    if not entries:
        raise DownloadError(f"{source.describe()}: the repository has no files")
    chosen = None if pattern else _release(entries, dtype)
    kind = "release"
    if chosen is None:
        kind = "gguf"
        chosen = _ggufs(entries, pattern)
        if len(chosen) != 1:
            graphs = sorted(p for p in entries if p.startswith("onnx/") and p.endswith(".onnx"))
            if not chosen:
                what = (f"no .gguf file matches --file {pattern!r}" if pattern else
                        f"no onnx/embed_tokens{SUFFIX[dtype]}.onnx + onnx/decoder_model_merged{SUFFIX[dtype]}.onnx"
                        f" (--dtype {dtype}) and no .gguf file")
                raise SourceError(f"{source.describe()}: {what}; its graphs: {graphs or 'none'}, its GGUFs:"
                                  f" {sorted(p for p in entries if p.lower().endswith('.gguf')) or 'none'}")
            raise SourceError(f"{source.describe()}: several GGUF files {chosen}; pick one with --file PATTERN"
                              f" (e.g. --file '*Q4_K_M.gguf')")
    if sha256 and kind == "gguf":
        entries[chosen[0]] = {**entries[chosen[0]], "lfs": {**(entries[chosen[0]].get("lfs") or {}), "oid": sha256}}
    return Plan(kind, source, tuple(_remote(hub, source, entries[p]) for p in chosen))
