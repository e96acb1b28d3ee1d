"""Tokenizers and chat templates for the checkpoints fluid_rt loads, without transformers.

One `Tokenizer` class over two backends:

* a HF `tokenizers.Tokenizer`: from a `tokenizer.json`, or built here from a GGUF's byte-level BPE
  vocabulary (`tokenizer.ggml.model == "gpt2"`: tokens + merges + token types + pre-tokenizer name);
* a `sentencepiece` model (`tokenizer.model`, e.g. openPangu / Llama-2 style checkpoints).

Chat templates are rendered with Jinja2 the way transformers renders them (sandboxed environment,
`trim_blocks`/`lstrip_blocks`, `raise_exception`, `tojson` without HTML escaping, special tokens passed
in), so a prompt built here is byte-identical to `apply_chat_template(..., tokenize=False)`.

Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

__all__ = ["Tokenizer", "DecodeStream", "load_tokenizer", "tokenizer_from_gguf_metadata"]


# ----------------------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------------------

_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_chat_template(source: str):
    """A Jinja2 template compiled in the environment HF chat templates are written for."""
    cached = _TEMPLATE_CACHE.get(source)
    if cached is not None:
        return cached
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks in HF;
        # for inference it only renders its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own `tojson` HTML-escapes `<`, `>`, `&` and `'`; chat templates expect plain JSON.
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    template = env.from_string(source)
    _TEMPLATE_CACHE[source] = template
    return template


# ----------------------------------------------------------------------------------------------
# Backends: the minimal surface Tokenizer needs from each library
# ----------------------------------------------------------------------------------------------


_U32 = 1 << 32  # tokenizers takes ids as u32 and raises OverflowError past it


class _HFBackend:
    """A `tokenizers.Tokenizer` (special tokens are its added tokens marked special)."""

    def __init__(self, tok):
        self.tok = tok
        self.special_ids = frozenset(
            i for i, t in tok.get_added_tokens_decoder().items() if getattr(t, "special", False)
        )

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        # tokenizers itself skips ids it has no token for; only ids past its u32 would raise.
        ids = [i for i in ids if i < _U32]
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.tok.id_to_token(index) if 0 <= index < _U32 else None


class _SentencePieceBackend:
    """A sentencepiece model. Special tokens written in the text (chat templates write `<s>`,
    `<|im_start|>`...) are matched first and map straight to their ids, like HF's slow
    `LlamaTokenizer` does; each chunk between them goes through sentencepiece as is."""

    def __init__(
        self, sp, extra_special_tokens: Iterable[str] = (), add_bos: bool = True, add_eos: bool = False
    ):
        self.sp = sp
        self.add_bos = add_bos
        self.add_eos = add_eos
        specials: dict[str, int] = {}  # text that is matched whole -> its id
        for i in range(sp.get_piece_size()):
            # Control pieces (<s>, </s>) never come out of sp.encode, so text that spells them must be
            # matched here (user-defined pieces do come out of sp.encode whole).
            if sp.is_control(i) or sp.is_unknown(i):
                specials[sp.id_to_piece(i)] = i
        skipped = {i for i in specials.values() if sp.is_control(i) or sp.is_unknown(i)}
        for token in extra_special_tokens:  # bos/eos/pad/additional specials named by the config
            index = self.token_to_id(token)
            if index is not None:
                specials[token] = index
                skipped.add(index)
        self.special_tokens = specials
        self.special_ids = frozenset(skipped)
        # The empty control piece sentencepiece keeps for id 0 in some models must not match text.
        matchable = sorted((t for t in specials if t), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in matchable) + ")") if matchable else None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        ids: list[int] = []
        if add_special_tokens and self.add_bos and self.sp.bos_id() >= 0:
            ids.append(self.sp.bos_id())
        chunks = self._split.split(text) if self._split is not None else [text]
        for i, chunk in enumerate(chunks):
            if i % 2 == 1:  # a matched special token
                ids.append(self.special_tokens[chunk])
            elif chunk:
                ids.extend(self.sp.encode(chunk))
        if add_special_tokens and self.add_eos and self.sp.eos_id() >= 0:
            ids.append(self.sp.eos_id())
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        # sp.decode drops control pieces; write the non-skipped specials back in place ourselves.
        # Ids past the vocabulary decode to nothing, as in HF tokenizers (sp.decode would raise).
        out: list[str] = []
        run: list[int] = []
        size = self.sp.get_piece_size()
        for index in ids:
            index = int(index)
            if index >= size:
                continue
            if index in self.special_ids:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    out.append(self.sp.id_to_piece(index))
            else:
                run.append(index)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        index = self.sp.piece_to_id(token)
        if index == self.sp.unk_id() and token != self.sp.id_to_piece(index):
            return None
        return index

    def id_to_token(self, index: int) -> str | None:
        if 0 <= index < self.sp.get_piece_size():
            return self.sp.id_to_piece(index)
        return None


# ----------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------


class Tokenizer:
    """Text <-> token ids, plus the model's chat template.

    Attributes:
        bos_token_id: int or None.
        eos_token_ids: tuple[int, ...], every id that ends generation (first is the tokenizer's eos).
        pad_token_id: int or None.
        vocab_size: number of ids the tokenizer can produce (added tokens included).
        has_chat_template: whether `apply_chat_template` can render.
    """

    def __init__(
        self,
        backend,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        chat_template: str | None = None,
    ):
        self._backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.bos_token_id = self._id_of(bos_token)
        self.pad_token_id = self._id_of(pad_token)
        eos = [] if self._id_of(eos_token) is None else [self._id_of(eos_token)]
        for index in extra_eos_token_ids:
            if index is not None and int(index) not in eos:
                eos.append(int(index))
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        self.chat_template = chat_template

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    # -- properties ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._backend.special_ids

    # -- text <-> ids --------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>` from a chat
        template) map to their ids. `add_special_tokens` adds what the tokenizer adds around a
        sequence (BOS for most Llama-style tokenizers, nothing for SmolLM2)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list, tuple or 1-D tensor of ints).

        An id the tokenizer has no token for (at or past `vocab_size`: a model's embedding matrix
        is often padded past its tokenizer, and such a model can generate those ids) decodes to
        nothing, as HF tokenizers decodes unknown ids; a negative id raises ValueError."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if i < 0]
        if bad:
            raise ValueError(f"ids: {bad[0]} is negative: token ids are >= 0")
        return self._backend.decode(ids, skip_special_tokens)

    def id_to_token(self, index: int) -> str | None:
        return self._backend.id_to_token(int(index))

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def decode_stream(self, skip_special_tokens: bool = True) -> DecodeStream:
        """An incremental detokenizer: `push(ids)` returns only the text completed by those ids."""
        return DecodeStream(self, skip_special_tokens)

    # -- chat ----------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **template_kwargs,
    ) -> str:
        """Render `messages` (`[{"role": ..., "content": ...}, ...]`) into the prompt text.

        Extra keyword arguments (e.g. `tools`, `enable_thinking`) are passed to the template."""
        source = chat_template or self.chat_template
        if not source:
            raise ValueError("this tokenizer has no chat template; pass chat_template= or use raw prompts")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise TypeError(f"messages[{i}]: expected a dict with 'role' and 'content', got {message!r}")
        special = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
        }
        special = {k: v for k, v in special.items() if v is not None}
        return _compile_chat_template(source).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            **{**special, **template_kwargs},
        )


class DecodeStream:
    """Incremental detokenization for streaming output.

    Decoding token by token breaks on two things: a byte-level BPE token can end in the middle of a
    UTF-8 character (the decoded text then ends in U+FFFD), and sentencepiece drops the leading space
    of the first piece it decodes. So each push decodes a short window that starts a few tokens back
    (`prefix`) and returns only what lies past the text already returned, and holds back an
    incomplete character at the end (only that: the complete text before it is returned). The
    concatenation of all returned pieces (plus `flush()`) equals `decode(all ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are fully emitted and never re-decoded
        self._read = 0  # tokens before it are emitted
        self._extra = 0  # characters emitted past those tokens' text (before an incomplete one)

    def push(self, ids: int | Iterable[int]) -> str:
        """Append token id(s); return the newly completed text ('' while a character is incomplete)."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            ids = [int(ids)]
        self._ids.extend(int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids))
        done, text = self._window()
        if len(text) > done and not text.endswith("\ufffd"):
            self._prefix, self._read, self._extra = self._read, len(self._ids), 0
            return text[done:]
        # The text ends inside a character: what comes before it is final already.
        stable = text.rstrip("\ufffd")
        if len(stable) > done:
            self._extra += len(stable) - done
            return stable[done:]
        return ""

    def _window(self) -> tuple[int, str]:
        """(characters of the window's text already emitted, the window's text)."""
        done = len(self._tok.decode(self._ids[self._prefix : self._read], self._skip)) + self._extra
        return done, self._tok.decode(self._ids[self._prefix :], self._skip)

    def flush(self) -> str:
        """Text still held back (a generation that ends inside a character): emitted as decoded."""
        done, text = self._window()
        self._prefix = self._read = len(self._ids)
        self._extra = 0
        return text[done:]


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------

# Pre-tokenizer split regexes, keyed by GGUF `tokenizer.ggml.pre`. These are the splits llama.cpp
# applies for each name (and the ones the original tokenizer.json files use).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Pre-tokenizers that are GPT-2's ByteLevel regex, after cutting every digit into its own piece
# (SmolLM's tokenizer.json: Digits(individual_digits=True) then ByteLevel; llama.cpp's "smollm"
# is the same two regexes).
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact"}
_GPT2_PRES = {None, "", "default", "gpt-2", "gpt2", "olmo", "jais"}


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable unicode character map (bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level_pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _PRE_SPLITS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in _GPT2_PRES:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise ValueError(
        f"GGUF tokenizer.ggml.pre={pre!r} is not supported (known: "
        f"{sorted(str(p) for p in _PRE_SPLITS.keys() | _DIGITS_THEN_GPT2 | (_GPT2_PRES - {None}))})"
    )


def tokenizer_from_gguf_metadata(meta: dict[str, Any]) -> Tokenizer:
    """Build the tokenizer a GGUF file describes from its `tokenizer.*` metadata (plain Python values:
    `tokenizer.ggml.tokens` list[str], `.merges` list[str], `.token_type` list[int], ids as ints).

    Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE)."""
    from gguf import Keys, TokenType
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    K = Keys.Tokenizer
    kind = meta.get(K.MODEL)
    if kind != "gpt2":
        raise ValueError(f"GGUF {K.MODEL}={kind!r} is not supported (only 'gpt2' byte-level BPE)")
    tokens: list[str] = list(meta[K.LIST])
    token_types = list(meta.get(K.TOKEN_TYPE) or [TokenType.NORMAL] * len(tokens))
    vocab, merges = _gguf_bpe_vocab(tokens, meta.get(K.MERGES))
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _byte_level_pre_tokenizer(meta.get(K.PRE))
    tok.decoder = decoders.ByteLevel()
    _add_gguf_added_tokens(tok, tokens, token_types, vocab)

    def token_at(key):
        index = meta.get(key)
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    bos, eos = token_at(K.BOS_ID), token_at(K.EOS_ID)
    _add_bos_eos(
        tok, vocab, bos if meta.get(K.ADD_BOS, False) else None, eos if meta.get(K.ADD_EOS, False) else None
    )
    extra_eos = [meta.get(k) for k in (K.EOT_ID, K.EOM_ID)]
    return Tokenizer(
        _HFBackend(tok),
        bos_token=bos,
        eos_token=eos,
        pad_token=token_at(K.PAD_ID),
        unk_token=token_at(K.UNK_ID),
        extra_eos_token_ids=[int(i) for i in extra_eos if i is not None],
        chat_template=meta.get(K.CHAT_TEMPLATE),
    )


def _gguf_bpe_vocab(tokens: list[str], merges_raw) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE model's vocabulary (token -> id) and merges of a GGUF byte-level tokenizer."""
    from gguf import Keys

    if merges_raw is None:
        raise ValueError(f"GGUF byte-level tokenizer has no {Keys.Tokenizer.MERGES}")
    alphabet = _byte_level_alphabet()
    spelled = set(alphabet.values())
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        # Every real byte-level token is written in the byte alphabet already; one that is not (a
        # mislabelled added token) is respelled from its UTF-8 bytes so the BPE model can hold it.
        key = token if set(token) <= spelled else "".join(alphabet[b] for b in token.encode("utf-8"))
        vocab.setdefault(key, index)
    merges = []
    for merge in merges_raw:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ValueError(f"GGUF {Keys.Tokenizer.MERGES}: malformed merge {merge!r}")
        merges.append((left, right))
    return vocab, merges


def _add_gguf_added_tokens(tok, tokens: list[str], token_types: list, vocab: dict[str, int]) -> None:
    """Control tokens (<|im_end|>...) are matched whole in the text and are special (skipped on
    decode); user-defined ones (<think>...) are matched whole but decode as text. A control token
    outside the byte alphabet is a labelling mistake in the file and is left to the BPE model."""
    from gguf import TokenType
    from tokenizers import AddedToken

    spelled = set(_byte_level_alphabet().values())
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, token_types)
        if kind == TokenType.CONTROL and set(t) <= spelled
    ]
    # (only those the BPE vocabulary holds as spelled: adding any other would create a new id)
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(tokens, token_types)
        if kind == TokenType.USER_DEFINED and t in vocab
    ]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)


def _add_bos_eos(tok, vocab: dict[str, int], bos: str | None, eos: str | None) -> None:
    """Wrap every encoded sequence in ``bos`` / ``eos`` (None: that one is not added)."""
    from tokenizers import processors

    if bos is None and eos is None:
        return
    single = ([f"{bos}:0"] if bos is not None else []) + ["$A:0"] + ([f"{eos}:0"] if eos is not None else [])
    pair = single + ["$B:1"] + ([f"{eos}:1"] if eos is not None else [])
    specials = [(t, vocab[t]) for t in {bos, eos} - {None}]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _token_content(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read JSON ({err})") from err
    return value if isinstance(value, dict) else {}


def _chat_template_of(directory: str, config: dict) -> str | None:
    # Newer HF checkpoints keep the template in its own file; older ones in tokenizer_config.json,
    # either as a string or as a list of named templates of which "default" is the chat one.
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None:
        template = _read_json(os.path.join(directory, "chat_template.json")).get("chat_template")
    return template


def _eos_ids_of(directory: str) -> list[int]:
    """eos_token_id from generation_config.json / config.json (an int or a list)."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = _read_json(os.path.join(directory, name)).get("eos_token_id")
        for index in value if isinstance(value, list) else [value]:
            if isinstance(index, int) and index not in ids:
                ids.append(index)
    return ids


def load_tokenizer(directory: str) -> Tokenizer | None:
    """The tokenizer of a HF checkpoint directory: `tokenizer.json` (HF tokenizers), else
    `tokenizer.model` (sentencepiece), with special tokens and chat template from
    `tokenizer_config.json`. Returns None when the directory has neither file."""
    json_path = os.path.join(directory, "tokenizer.json")
    sp_path = os.path.join(directory, "tokenizer.model")
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    special = {k: _token_content(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    chat_template = _chat_template_of(directory, config)

    if os.path.isfile(json_path):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_file(json_path)
        except Exception as err:  # tokenizers raises a bare Exception on parse errors
            raise ValueError(f"{json_path}: cannot load tokenizer ({err})") from err
        backend = _HFBackend(tok)
    elif os.path.isfile(sp_path):
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.load(sp_path)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{sp_path}: cannot load sentencepiece model ({err})") from err
        # Defaults follow the sentencepiece model itself, as HF's LlamaTokenizer does.
        for key, index in (
            ("bos_token", sp.bos_id()),
            ("eos_token", sp.eos_id()),
            ("unk_token", sp.unk_id()),
        ):
            if special[key] is None and index >= 0:
                special[key] = sp.id_to_piece(index)
        if special["pad_token"] is None and sp.pad_id() >= 0:
            special["pad_token"] = sp.id_to_piece(sp.pad_id())
        added = [_token_content(t) for t in (config.get("added_tokens_decoder") or {}).values()]
        added += [_token_content(t) for t in config.get("additional_special_tokens") or []]
        backend = _SentencePieceBackend(
            sp,
            extra_special_tokens=[t for t in added + list(special.values()) if t],
            add_bos=bool(config.get("add_bos_token", True)),
            add_eos=bool(config.get("add_eos_token", False)),
        )
    else:
        return None
    return Tokenizer(
        backend,
        bos_token=special["bos_token"],
        eos_token=special["eos_token"],
        pad_token=special["pad_token"],
        unk_token=special["unk_token"],
        extra_eos_token_ids=_eos_ids_of(directory),
        chat_template=chat_template,
    )
