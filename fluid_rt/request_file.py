"""``--input`` request files: one JSON object a line, each a prompt plus ``DecodeConfig`` fields.

Every line is read and checked (JSON syntax, prompt keys, and the decode fields by
``DecodeConfig`` itself) before anything is decoded, and an error names the file and line.
"""

from __future__ import annotations

import json

from fluid_rt.config import is_int
from fluid_rt.decode.config import FIELDS, DecodeConfig

PROMPT_KEYS = ("prompt", "prompt_ids", "chat")
# The keys a request line may have: its prompt, and any DecodeConfig field.
REQUEST_KEYS = PROMPT_KEYS + FIELDS


class RequestError(ValueError):
    """A request file that cannot be used; the message names the file and line."""


def check_text(text: str, what: str) -> None:
    """A command-line argument that is not UTF-8 reaches Python as lone surrogates (and a JSON
    string may spell one as \\ud800): the tokenizer would fail on them with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid UTF-8 text (at character {err.start + 1})") from None


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_prompt(req: dict) -> None:
    if "prompt" in req:
        if not isinstance(req["prompt"], str):
            raise ValueError(f"prompt: expected a string, got {_show(req['prompt'])}")
        check_text(req["prompt"], "prompt")
    if "chat" in req and not isinstance(req["chat"], bool):
        raise ValueError(f"chat: expected true or false, got {_show(req['chat'])}")
    ids = req.get("prompt_ids")
    if "prompt_ids" in req and (not isinstance(ids, list) or not ids or not all(map(is_int, ids))):
        raise ValueError(f"prompt_ids: expected a non-empty list of integers, got {_show(ids)}")
    if "prompt" in req and "prompt_ids" in req:
        raise ValueError("give prompt or prompt_ids, not both")
    if "prompt" not in req and "prompt_ids" not in req:
        raise ValueError("a request needs prompt (text) or prompt_ids")
    if req.get("chat") and "prompt_ids" in req:
        raise ValueError("chat: the chat template applies to prompt text, not to prompt_ids")


def decode_fields(req: dict) -> dict:
    """The request's ``DecodeConfig`` fields."""
    return {k: v for k, v in req.items() if k not in PROMPT_KEYS}


def check_request(req, defaults: dict) -> dict:
    """A request line's object, checked: its keys, its prompt, and its decode fields over
    ``defaults`` (the flags) as ``DecodeConfig`` checks them. Values keep their JSON type."""
    if not isinstance(req, dict):
        kind = (
            "null"
            if req is None
            else {list: "a list", str: "a string", bool: "a boolean"}.get(type(req), "a number")
        )
        raise ValueError(f"expected a JSON object, got {kind}")  # noqa: TRY004
    unknown = set(req) - set(REQUEST_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (known: {', '.join(REQUEST_KEYS)})")
    _check_prompt(req)
    DecodeConfig(**{**defaults, **decode_fields(req)})
    return req


class _BadValue(ValueError):
    """Valid JSON syntax that a request still cannot hold."""


def _reject_constant(name: str):
    raise _BadValue(f"{name} is not a JSON number")  # Python's json accepts NaN and Infinity


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:  # json.loads would keep the last one silently
        raise _BadValue(f"key {dup!r} appears twice")
    return dict(pairs)


_BLANK = object()  # a blank line: skipped, but counted


def _parse_line(raw: bytes, n: int):
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})") from None
    if n == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not line.strip():
        return _BLANK
    try:
        return json.loads(line, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except _BadValue:
        raise
    except (ValueError, RecursionError) as err:
        raise ValueError(f"not JSON ({err})") from None


def read_requests(path: str, defaults: dict) -> list[tuple[int, dict]]:
    """(line number, request) for each non-blank line of a JSONL file, all checked now, so a bad
    line late in the file fails before any decoding."""
    requests = []
    try:
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported by number
            for n, raw in enumerate(f, 1):
                try:
                    req = _parse_line(raw, n)
                    if req is not _BLANK:
                        requests.append((n, check_request(req, defaults)))
                except ValueError as err:
                    raise RequestError(f"{path}:{n}: {err}") from None
    except OSError as err:
        raise RequestError(f"--input {path}: cannot read it ({err.strerror or err})") from None
    return requests
