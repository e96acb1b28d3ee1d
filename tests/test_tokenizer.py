"""fluid_rt.tokenizer against independent references: transformers (same GGUF, same tokenizer.json),
sentencepiece itself, and transformers' chat template rendering.

The GGUF comparison builds transformers' tokenizer from the 49k-token SmolLM2 file once per module
(~15 s on the 2-core CI box); everything else uses tiny tokenizers trained in the test.
"""

from __future__ import annotations

import io
import json
import os
import random

import pytest

from fluid_rt.tokenizer import Tokenizer, load_tokenizer

TEXTS = [
    "Hello, world!",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nend",
    "naïve café — “quotes” 🦙🚀 日本語のテキスト 한국어 Ελληνικά",
    "def f(x):\n    return x**2  # square\n\nprint(f(3))\n",
    "I'm sure we'll see they've DON'T",
    "\u00a0no-break\u2009thin space",
    "   \n  \n",
    "x\r\ny",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "3.14159 1e-10 0x1F 1,000,000 and 2024-11-27",
    "a  123, x = 1  2   3 and ½ Ⅻ ١٢٣",  # numerals after whitespace runs (see test below)
    "",
]


# ---------------------------------------------------------------------------------------------
# The SmolLM2 GGUF tokenizer against transformers reading the same file
# ---------------------------------------------------------------------------------------------


def _gguf_path_or_skip():
    from fluid_rt.weights.gguf import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def smol_tok():
    from fluid_rt.weights.gguf import load_gguf_tokenizer

    return load_gguf_tokenizer(_gguf_path_or_skip())


@pytest.fixture(scope="module")
def hf_smol_tok():
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.set_verbosity_error()
    directory, name = os.path.split(_gguf_path_or_skip())
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)


def _smollm2_original_pre_tokenizer():
    """The pre-tokenizer of SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct):
    every digit split off, then GPT-2's byte-level regex. llama.cpp's "smollm" pre-type is the same
    two regexes; transformers' GGUF converter does not know the name and keeps plain GPT-2 splitting."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )


def _has_numerals(text):
    return any(ch.isnumeric() for ch in text)


def test_gguf_ids_match_transformers(smol_tok, hf_smol_tok):
    import copy

    patched = copy.deepcopy(hf_smol_tok)
    patched.backend_tokenizer.pre_tokenizer = _smollm2_original_pre_tokenizer()
    assert smol_tok.vocab_size == len(hf_smol_tok) == 49152
    for text in TEXTS:
        ours = smol_tok.encode(text)
        # the ids of the original SmolLM2 pipeline, for every text
        assert ours == patched.encode(text, add_special_tokens=False), text
        # and transformers' GGUF tokenizer as it is, wherever the digit split cannot matter
        if not _has_numerals(text) or text.startswith("3.14159"):
            assert ours == hf_smol_tok.encode(text, add_special_tokens=False), text
        assert smol_tok.encode(text, add_special_tokens=True) == patched.encode(text), text


def test_gguf_digit_split_differs_from_transformers_only_there(smol_tok, hf_smol_tok):
    """Documents the one known divergence: whitespace runs before numerals (and non-ASCII numerals).
    Ours keeps SmolLM2's trained split (`"12  34"` -> 1, 2, "  ", 3, 4)."""
    text = "12  34"
    ours = smol_tok.encode(text)
    assert [smol_tok.id_to_token(i) for i in ours] == ["1", "2", "ĠĠ", "3", "4"]
    assert ours != hf_smol_tok.encode(text, add_special_tokens=False)
    assert smol_tok.decode(ours) == hf_smol_tok.decode(ours) == text


def test_gguf_decode_matches_transformers(smol_tok, hf_smol_tok):
    rng = random.Random(0)
    for text in TEXTS:
        ids = smol_tok.encode(text)
        assert smol_tok.decode(ids) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        assert smol_tok.decode(ids, skip_special_tokens=False) == text
    for _ in range(20):  # arbitrary id sequences, split UTF-8 and special tokens included
        ids = [rng.randrange(smol_tok.vocab_size) for _ in range(rng.randrange(1, 30))] + [2, 1, 0]
        rng.shuffle(ids)
        for skip in (True, False):
            assert smol_tok.decode(ids, skip_special_tokens=skip) == hf_smol_tok.decode(
                ids, skip_special_tokens=skip
            ), ids


def test_gguf_chat_template_matches_transformers(smol_tok, hf_smol_tok):
    conversations = [
        [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            ours = smol_tok.apply_chat_template(messages, add_generation_prompt=gen)
            ref = hf_smol_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours == ref
            assert smol_tok.encode(ours) == hf_smol_tok.encode(ref, add_special_tokens=False)


def test_gguf_special_tokens(smol_tok):
    assert smol_tok.eos_token_ids == (2,) and smol_tok.id_to_token(2) == "<|im_end|>"
    assert smol_tok.bos_token_id == 1 and smol_tok.pad_token_id == 2
    assert smol_tok.has_chat_template
    assert smol_tok.encode("<|im_start|>assistant\n") == [1, 520, 9531, 198]
    assert smol_tok.encode("x", add_special_tokens=True) == smol_tok.encode("x")  # adds no BOS
    prompt = smol_tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and "<|im_start|>user\nHi" in prompt
    assert smol_tok.decode([smol_tok.vocab_size]) == ""  # past the vocabulary: nothing, as in HF
    with pytest.raises(ValueError, match="ids"):
        smol_tok.decode([-1])


# ---------------------------------------------------------------------------------------------
# Streaming detokenization
# ---------------------------------------------------------------------------------------------


def _check_stream(tok: Tokenizer, ids, rng, skip=True):
    stream = tok.decode_stream(skip_special_tokens=skip)
    pieces, i = [], 0
    while i < len(ids):
        n = rng.choice([1, 1, 1, 2, 3])
        piece = stream.push(ids[i : i + n])
        assert "\ufffd" not in piece or "\ufffd" in tok.decode(ids, skip)
        pieces.append(piece)
        i += n
    pieces.append(stream.flush())
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
    return pieces


def test_decode_stream_gguf(smol_tok):
    rng = random.Random(1)
    for text in TEXTS:
        ids = smol_tok.encode(text)
        pieces = _check_stream(smol_tok, ids, rng)
        _check_stream(smol_tok, ids, rng, skip=False)
        if "🦙" in text:  # the llama emoji is 4 bytes over several tokens: never half-emitted
            assert any("🦙" in p for p in pieces)
    one_by_one = smol_tok.decode_stream()
    emoji = smol_tok.encode("🦙")
    assert len(emoji) > 1
    assert [one_by_one.push(i) for i in emoji] == [""] * (len(emoji) - 1) + ["🦙"]
    assert one_by_one.push(smol_tok.encode(" ok")) == " ok"


# ---------------------------------------------------------------------------------------------
# sentencepiece (tokenizer.model)
# ---------------------------------------------------------------------------------------------

SP_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello tokenizer! Numbers 123 and 4567.",
    "数字 ünïcödé text with accents é à ü",
    "code: def f(x): return x * 2",
] * 10


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_LINES),
        model_writer=model,
        vocab_size=330,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        minloglevel=2,
    )
    d = tmp_path_factory.mktemp("sp")
    (d / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "special": True},
        "add_bos_token": True,
        "chat_template": "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}"
        "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4]}))
    return d


def test_sentencepiece_matches_sentencepiece(sp_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = load_tokenizer(str(sp_dir))
    assert tok.vocab_size == sp.get_piece_size() == 330
    assert tok.bos_token_id == sp.bos_id() == 1 and tok.eos_token_ids == (2, 4)
    texts = ["Hello world", " two  spaces", "数字 99 ok ✓ 🦙", "The lazy dog.", "a<|im_end|>b", ""]
    for text in texts:
        ids = tok.encode(text)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids), text
        assert tok.encode(text, add_special_tokens=True) == [sp.bos_id()] + sp.encode(text)
    rng = random.Random(2)
    for _ in range(20):  # arbitrary non-control ids, byte pieces included
        ids = [rng.randrange(3, tok.vocab_size) for _ in range(rng.randrange(1, 20))]
        assert tok.decode(ids) == sp.decode(ids)
        _check_stream(tok, ids, rng)


def test_sentencepiece_special_tokens_in_text(sp_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = load_tokenizer(str(sp_dir))
    # control pieces spelled in the text (a chat template writes them) map to their ids, the
    # chunks between them go through sentencepiece as they are
    ids = tok.encode("<s>hi</s> there")
    assert ids == [1] + sp.encode("hi") + [2] + sp.encode(" there")
    assert tok.decode(ids) == sp.decode(sp.encode("hi")) + sp.decode(sp.encode(" there"))
    assert tok.decode(ids, skip_special_tokens=False).startswith("<s>")
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}])
    assert prompt == "<s><|im_start|>user hello<|im_end|><|im_start|>assistant "
    assert tok.encode(prompt)[0] == 1


# ---------------------------------------------------------------------------------------------
# tokenizer.json (HF tokenizers) against transformers' PreTrainedTokenizerFast
# ---------------------------------------------------------------------------------------------

JSON_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set sys = 'default' %}{% endif %}"
    "{{ bos_token }}<|im_start|>system\n{{ sys }}<|im_end|>\n"
    "{% for message in messages %}\n"
    "  {% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}\n"
    "  <|im_start|>{{ message['role'] }}\n"
    "  {% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% if message.meta is defined %} {{ message.meta | tojson }}{% endif %}{{ eos_token }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SP_LINES, trainer)
    d = tmp_path_factory.mktemp("json")
    tok.save(str(d / "tokenizer.json"))
    config = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": None,
        "chat_template": JSON_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def json_ref(json_dir):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(json_dir))


def test_tokenizer_json_matches_transformers(json_dir, json_ref):
    tok = load_tokenizer(str(json_dir))
    assert tok.vocab_size == len(json_ref)
    assert tok.eos_token_ids == (json_ref.eos_token_id,) and tok.bos_token_id == json_ref.bos_token_id
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == json_ref.encode(text, add_special_tokens=False), text
        for skip in (True, False):
            assert tok.decode(ids, skip) == json_ref.decode(ids, skip_special_tokens=skip), text


def test_chat_template_matches_transformers(json_dir, json_ref):
    tok = load_tokenizer(str(json_dir))
    conversations = [
        [{"role": "user", "content": "Hi <b>&</b>"}, {"role": "assistant", "content": "Hello!"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "x", "meta": {"k": "<é>", "n": [1, 2]}},
        ],
    ]
    for messages in conversations:
        for gen in (True, False):
            ours = tok.apply_chat_template(messages, add_generation_prompt=gen)
            assert ours == json_ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert '{"k": "<é>", "n": [1, 2]}' in tok.apply_chat_template(conversations[1])  # no HTML escaping
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    # the template runs sandboxed
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template(
            [{"role": "user", "content": "x"}], chat_template="{{ messages.__class__.__mro__ }}"
        )


def test_chat_template_lookup(tmp_path, json_dir):
    """chat_template.jinja wins over tokenizer_config.json; a named-template list picks 'default'."""
    import shutil

    d = tmp_path / "t"
    shutil.copytree(json_dir, d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(str(d)).apply_chat_template([]) == "D"
    (d / "chat_template.jinja").write_text("J{{ messages | length }}")
    assert load_tokenizer(str(d)).apply_chat_template([{"role": "user", "content": "a"}]) == "J1"
    del config["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    os.remove(d / "chat_template.jinja")
    tok = load_tokenizer(str(d))
    assert not tok.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "a"}])


def test_load_tokenizer_without_files(tmp_path):
    assert load_tokenizer(str(tmp_path)) is None
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_gguf_unsupported_tokenizer_kinds():
    from fluid_rt.tokenizer import tokenizer_from_gguf_metadata

    with pytest.raises(ValueError, match="'llama'"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ValueError, match="pre='weird'"):
        tokenizer_from_gguf_metadata(
            {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": ["a"],
                "tokenizer.ggml.merges": [],
                "tokenizer.ggml.pre": "weird",
            }
        )


def test_decode_skips_ids_past_the_vocabulary(sp_dir, json_dir):
    # A padded embedding matrix lets a model generate ids its tokenizer has no token for: they
    # decode to nothing, as in HF tokenizers (which skips unknown ids), in decode and decode_stream.
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(json_dir / "tokenizer.json"))
    for tok in (load_tokenizer(str(sp_dir)), load_tokenizer(str(json_dir))):
        ids = tok.encode("Hello world 🦙")
        past = [tok.vocab_size, tok.vocab_size + 1, 1 << 40]
        mixed = past[:1] + ids[:2] + past[1:] + ids[2:] + past[2:]
        assert tok.decode(mixed) == tok.decode(ids)
        assert tok.id_to_token(tok.vocab_size) is None and tok.id_to_token(1 << 40) is None
        stream = tok.decode_stream()
        assert "".join(stream.push(i) for i in mixed) + stream.flush() == tok.decode(ids)
        with pytest.raises(ValueError, match="-1 is negative"):
            tok.decode([-1])
    assert hf.decode(ids[:2] + [tok.vocab_size] + ids[2:]) == tok.decode(ids)  # what HF does


def test_decode_stream_returns_complete_text_before_a_split_character(smol_tok):
    # "a" is complete when the first bytes of the emoji arrive with it: only the emoji waits
    a, emoji = smol_tok.encode("a"), smol_tok.encode("🦙")
    stream = smol_tok.decode_stream()
    assert stream.push(a + emoji[:1]) == "a"
    assert [stream.push(i) for i in emoji[1:]] == [""] * (len(emoji) - 2) + ["🦙"]
    assert stream.push(emoji[:1]) == "" and stream.flush() == smol_tok.decode(emoji[:1])
