"""HTTP for pulls (urllib, no dependency): the hub's endpoint and token, redirects, errors in words.

The token (HF_TOKEN) goes only to the endpoint's own host: the hub answers a download with a
redirect to its CDN, and a bearer token has no business travelling there (nor to a plain URL
on another host). The headers of every hop are kept, because the hub puts a file's sha256
(`X-Linked-Etag`) and size on the redirect, not on the CDN's answer.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import quote, urlsplit

from edged.exitcodes import EdgedError, ExitCode

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 60.0
USER_AGENT = "edged-model-pull (urllib)"


class DownloadError(EdgedError):
    """A pull that could not fetch or check a file; the message says what to do."""

    code = ExitCode.DOWNLOAD_FAILED


def endpoint_from_env(given: Optional[str] = None) -> str:
    return (given or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token_from_env() -> Optional[str]:
    return os.environ.get("HF_TOKEN") or None


@dataclass
class Answer:
    """An open response and the headers of the redirects that led to it."""

    response: http.client.HTTPResponse
    hops: list[Any] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.response.status)

    def header(self, name: str) -> Optional[str]:
        """The last hop that sent `name` (the final response counts as the last hop)."""
        value = self.response.headers.get(name)
        if value is not None:
            return str(value)
        for headers in reversed(self.hops):
            if headers.get(name) is not None:
                return str(headers.get(name))
        return None

    def close(self) -> None:
        self.response.close()


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        hops = getattr(req, "edged_hops", None)
        if hops is not None:
            hops.append(headers)
        if new is not None:
            new.edged_hops = hops  # type: ignore[attr-defined]
            auth = req.unredirected_hdrs.get("Authorization")
            if auth and urlsplit(newurl).netloc == urlsplit(req.full_url).netloc:
                new.add_unredirected_header("Authorization", auth)
        return new


class Hub:
    def __init__(self, endpoint: str, token: Optional[str], timeout: float = TIMEOUT_S) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_Redirects)

    def _authorised(self, url: str) -> bool:
        return bool(self.token) and urlsplit(url).netloc == urlsplit(self.endpoint).netloc

    def open(self, url: str, headers: Optional[dict[str, str]] = None, what: str = "") -> Answer:
        """GET `url`; HTTP errors other than 416 (the caller's to handle) become DownloadError."""
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
        if self._authorised(url):
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        hops: list[Any] = []
        req.edged_hops = hops  # type: ignore[attr-defined]
        try:
            return Answer(self._opener.open(req, timeout=self.timeout), hops)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                return Answer(exc, hops)  # type: ignore[arg-type]
            exc.close()
            raise DownloadError(self._refusal(exc.code, url, what)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"cannot reach {urlsplit(url).netloc} for {what or url}: {reason}"
                                f" (set the hub with --endpoint or HF_ENDPOINT)") from None

    def _refusal(self, code: int, url: str, what: str) -> str:
        subject = what or url
        if code in (401, 403):
            if urlsplit(url).netloc != urlsplit(self.endpoint).netloc:
                return f"{subject}: HTTP {code} from {urlsplit(url).netloc} (access refused)"
            sent = ("HF_TOKEN was sent and refused: check that it is a valid read token of an account"
                    " that has accepted the licence" if self.token else "no HF_TOKEN is set")
            return (f"{subject}: HTTP {code}, access refused ({sent}). Gemma repositories are gated: log in"
                    f" at {self.endpoint}, open the model's page and accept the Gemma licence"
                    f" (Gemma Terms of Use, https://ai.google.dev/gemma/terms), create a read token at"
                    f" {self.endpoint}/settings/tokens, then run again with HF_TOKEN=<token>")
        if code == 404:
            return f"{subject}: not found (HTTP 404 for {url}); check the repository id, --revision and --file"
        return f"{subject}: HTTP {code} for {url}"

    def json(self, url: str, what: str) -> tuple[Any, Answer]:
        answer = self.open(url, {"Accept": "application/json"}, what)
        try:
            return json.loads(answer.response.read().decode("utf-8")), answer
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"{what}: unreadable answer from {url}: {exc}") from None
        finally:
            answer.close()

    def tree(self, repo: str, revision: str) -> list[dict[str, Any]]:
        """Every file of `repo` at `revision`: path, size, git blob oid, and `lfs` {oid: sha256, size}."""
        url: Optional[str] = (f"{self.endpoint}/api/models/{repo}/tree/{quote(revision, safe='')}"
                              f"?recursive=true")
        entries: list[dict[str, Any]] = []
        while url:
            page, answer = self.json(url, f"the file list of {repo}@{revision}")
            if not isinstance(page, list):
                raise DownloadError(f"{repo}: the hub's file list is not a list: {str(page)[:200]}")
            entries += [e for e in page if isinstance(e, dict) and e.get("type") == "file"]
            url = _next_page(answer.header("Link"))  # the hub pages long listings
        return entries

    def resolve_url(self, repo: str, revision: str, path: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def _next_page(link: Optional[str]) -> Optional[str]:
    if not link:
        return None
    for part in link.split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if m:
            return m.group(1)
    return None
