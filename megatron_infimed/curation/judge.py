"""Optional model judge: an OpenAI-compatible chat-completions endpoint scores chosen dimensions.

One request per (sample, dimension): the system message is that dimension's rubric, the user
message the conversation (plus the image as a data URL when ``send_images``). The reply must hold
``{"score": <0..1>}`` (a bare number is accepted). The judged score combines with the rule score
as ``min(rule, judge)``, so a judge can lower but never lift a rule failure.

Bounded concurrency (a thread pool of ``concurrency``), retries with exponential backoff on
connection errors, 429 and 5xx, and a JSONL cache keyed by sha256(model, dimension, rubric,
sample hash) so a rerun or a resumed run asks nothing twice. A request that still fails leaves
the rule score alone and is counted in the report (``judge.failures``).

Redirects are refused, not followed: urllib would turn the POST into a GET to the new location
and keep the ``Authorization`` header, so the key would leave the configured origin and a reply
that never saw the sample would be taken as its score. A redirect is a failed call instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

RUBRICS = {
    "image_quality": "Rate the usability of this medical image for training: 1 = diagnostic quality, 0 = blank, "
                     "corrupt or unreadable.",
    "text_quality": "Rate the text quality of this conversation: 1 = fluent, complete, clean; 0 = garbled, "
                    "repetitive, truncated or full of markup.",
    "image_text_consistency": "Rate whether the text agrees with the image and its metadata (modality, organ, "
                              "answer type): 1 = consistent, 0 = contradicts it.",
    "medical_relevance": "Rate how medical this conversation is: 1 = clinical content about a medical image, "
                         "0 = unrelated to medicine.",
    "answer_reliability": "Rate whether the answers are reliable and safe: 1 = they fit the questions and contain "
                          "no patient-identifying information, 0 = wrong type of answer, contradictions or PHI.",
}
_REPLY_FORMAT = ' Reply with JSON only: {"score": <number between 0 and 1>, "reason": "<a few words>"}.'


@dataclass(frozen=True, kw_only=True, slots=True)
class JudgeConfig:
    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    model: str
    dimensions: tuple[str, ...] = ("text_quality", "medical_relevance", "answer_reliability")
    rubrics: dict[str, str] = field(default_factory=dict)  # overrides RUBRICS per dimension
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from the environment, never from a file
    concurrency: int = 4
    retries: int = 3
    retry_delay_s: float = 0.5
    timeout_s: float = 60.0
    send_images: bool = False
    cache_path: str | None = None

    def rubric(self, dim: str) -> str:
        return self.rubrics.get(dim, RUBRICS[dim]) + _REPLY_FORMAT


class JudgeError(RuntimeError):
    pass


class JudgeRedirectError(JudgeError):
    """The endpoint answered with a redirect; asking again would get the same answer."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        raise JudgeRedirectError(f"judge endpoint {req.full_url} answered {code} redirecting to {newurl}; expected "
                                 "a chat-completions reply (redirects are refused so the key and the sample are "
                                 "sent only to --judge-url; point it at the final URL)")


def parse_score(content: str) -> float:
    """'{"score": 0.8}' -> 0.8; 'Score: 0.3' -> 0.3; anything outside [0, 1] is an error."""
    try:
        value = json.loads(content)["score"]
    except (ValueError, KeyError, TypeError):
        match = re.search(r"-?\d+(?:\.\d+)?", content)
        if not match:
            raise JudgeError(f"judge reply holds no score: {content[:120]!r}") from None
        value = match.group(0)
    score = float(value)
    if not 0.0 <= score <= 1.0:
        raise JudgeError(f"judge score {score} outside [0, 1]")
    return score


class ModelJudge:
    def __init__(self, config: JudgeConfig):
        unknown = set(config.dimensions) - set(RUBRICS)
        if unknown:
            raise ValueError(f"judge dimensions {sorted(unknown)} unknown; expected some of {sorted(RUBRICS)}")
        if config.retries < 0:
            raise ValueError(f"judge retries must be >= 0, got {config.retries}")
        self.config = config
        self.cache: dict[str, float] = {}
        self.stats = {"requests": 0, "cache_hits": 0, "failures": 0, "retries": 0}
        self.first_error: str | None = None  # why the first failed call failed, for the report
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._opener = urllib.request.build_opener(_RefuseRedirects)
        self._lock = threading.Lock()
        if config.cache_path and os.path.exists(config.cache_path):
            with open(config.cache_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        entry = json.loads(line)
                        self.cache[entry["key"]] = entry["score"]

    def cache_key(self, dim: str, sample_hash: str) -> str:
        text = "\n".join((self.config.model, dim, self.config.rubric(dim), sample_hash))
        return hashlib.sha256(text.encode()).hexdigest()

    def _request(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.config.model, "messages": messages, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._opener.open(request, timeout=self.config.timeout_s) as response:
            reply = json.loads(response.read())
        return reply["choices"][0]["message"]["content"]

    def _ask_with_retries(self, messages: list[dict]) -> float:
        """The score; raises JudgeError naming the last failure once retries are spent."""
        error = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self.config.retry_delay_s * 2 ** (attempt - 1))
            with self._lock:
                self.stats["requests"] += 1
            try:
                return parse_score(self._request(messages))
            except JudgeRedirectError:
                raise
            except urllib.error.HTTPError as exc:
                error = f"judge endpoint {self.url} answered HTTP {exc.code} {exc.reason}"
                if exc.code != 429 and exc.code < 500:
                    break  # a client error will not go away by asking again
            except (urllib.error.URLError, TimeoutError, ConnectionError, JudgeError, KeyError, IndexError,
                    TypeError, ValueError) as exc:
                error = f"judge call to {self.url} failed: {type(exc).__name__}: {exc}"
        raise JudgeError(f"{error} (after {attempt + 1} attempt(s))")

    def _messages(self, dim: str, text: str, images: list[tuple[str, bytes]]) -> list[dict]:
        user: object = text
        if self.config.send_images and images:
            mime = {"jpg": "image/jpeg", "png": "image/png"}
            user = [{"type": "text", "text": text}] + [
                {"type": "image_url", "image_url": {"url": f"data:{mime[ext]};base64,{base64.b64encode(b).decode()}"}}
                for ext, b in images]
        return [{"role": "system", "content": self.config.rubric(dim)}, {"role": "user", "content": user}]

    def judge_one(self, dim: str, sample_hash: str, text: str, images: list[tuple[str, bytes]]) -> float | None:
        """The judged score, from cache or endpoint; None when every attempt failed."""
        key = self.cache_key(dim, sample_hash)
        with self._lock:
            if key in self.cache:
                self.stats["cache_hits"] += 1
                return self.cache[key]
        try:
            score = self._ask_with_retries(self._messages(dim, text, images))
        except JudgeError as exc:
            with self._lock:
                self.stats["failures"] += 1
                self.first_error = self.first_error or str(exc)
            return None
        with self._lock:
            self.cache[key] = score
            if self.config.cache_path:
                with open(self.config.cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "score": score}) + "\n")
        return score

    def judge_many(self, items: list[tuple[str, str, list[tuple[str, bytes]]]]) -> list[dict[str, float | None]]:
        """items: (sample_hash, text, images) -> per item {dimension: score or None}, in order."""
        jobs = [(i, dim) for i in range(len(items)) for dim in self.config.dimensions]
        results: list[dict[str, float | None]] = [{} for _ in items]
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            scores = pool.map(lambda job: self.judge_one(job[1], *items[job[0]]), jobs)
            for (i, dim), score in zip(jobs, scores):
                results[i][dim] = score
        return results
