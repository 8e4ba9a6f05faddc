"""Language models behind one interface: ``complete_json(system, user, schema) -> LLMResult``.

A call never raises: transport errors, timeouts, 429/5xx after the client's retries, invalid JSON and schema
mismatches all come back as ``ok=False`` with the reason in ``error`` (secrets redacted), so callers can fall
back to a deterministic score. ``NoLLM`` is the offline default and always tells the caller to fall back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import dagster as dg
from pydantic import PrivateAttr


MAX_RAW = 4000  # characters of a reply kept with a decision (a runaway answer is not stored whole)


def capped(raw: str | None) -> str | None:
    if raw is None or len(raw) <= MAX_RAW:
        return raw
    return raw[:MAX_RAW] + f"... [{len(raw) - MAX_RAW} more characters not stored]"


@dataclass(frozen=True)
class LLMResult:
    ok: bool
    value: dict | None = None
    error: str | None = None
    raw: str | None = None


class LLM(dg.ConfigurableResource):
    """Interface: a JSON object answer to (system, user) that validates against ``schema`` (JSON Schema)."""

    def complete_json(self, system: str, user: str, schema: dict, model: str | None = None,
                      temperature: float | None = None) -> LLMResult:  # pragma: no cover
        """``model``/``temperature``: per-call overrides (an agent's own settings)."""
        raise NotImplementedError


class NoLLM(LLM):
    """Deterministic fallback: no model; every call returns ``ok=False`` so the caller uses the lexicon."""

    def complete_json(self, system: str, user: str, schema: dict, model: str | None = None,
                      temperature: float | None = None) -> LLMResult:
        return LLMResult(ok=False, error="NoLLM: no language model configured; use the lexicon score")


class OpenAICompatibleLLM(LLM):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LM Studio, ...) through the
    ``openai`` client, asking for strict structured output (``response_format`` ``json_schema``) and checking
    the answer with ``jsonschema`` anyway, since not every server enforces it. The client retries 429/5xx/
    timeouts ``max_retries`` times (honouring ``retry-after``); ``timeout_s`` bounds each attempt."""

    base_url: str
    api_key: str
    model: str
    temperature: float = 0.0
    timeout_s: float = 20.0
    max_retries: int = 2
    _client: object = PrivateAttr(default=None)

    def _openai(self):
        import openai

        if self._client is None:
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                                         max_retries=self.max_retries)
        return self._client

    def _fail(self, error: str, raw: str | None = None) -> LLMResult:
        return LLMResult(ok=False, error=error.replace(self.api_key, "***") if self.api_key else error,
                         raw=capped(raw))

    def complete_json(self, system: str, user: str, schema: dict, model: str | None = None,
                      temperature: float | None = None) -> LLMResult:
        import jsonschema
        import openai

        try:
            resp = self._openai().chat.completions.create(
                model=model or self.model, temperature=self.temperature if temperature is None else temperature,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "answer", "schema": schema, "strict": True}})
        except openai.OpenAIError as e:
            return self._fail(f"{type(e).__name__}: {e}")
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):  # e.g. an HTML page with HTTP 200: the client hands back the text
            body = resp if isinstance(resp, str) else repr(resp)
            return self._fail(f"the endpoint did not answer with a chat completion: {len(body)} characters "
                              f"starting {body[:120]!r} (is llm.base_url the API's /v1 address?)", body)
        raw = choices[0].message.content if choices else None
        if raw is None:
            return self._fail("empty reply (no content; refusal or filtered)")
        try:
            value = json.loads(raw)
            jsonschema.validate(value, schema)
        except json.JSONDecodeError as e:
            return self._fail(f"invalid JSON: {e}", raw)
        except jsonschema.ValidationError as e:
            return self._fail(f"schema mismatch: {e.message}", raw)
        return LLMResult(ok=True, value=value, raw=capped(raw))
