"""Pictures of an elastic decode's horizons: where it sprints (long K) and where it downshifts.

``coloured`` prints the text block by block in a colour per K band (``--show-horizon``);
``plot_horizon`` draws K per block along the output, each with its text (``--horizon-plot``).
Both read only a ``Generation``'s tokens and trace.
"""

from __future__ import annotations

# Four K bands, shortest to longest: the terminal colour and the plot colour of each.
BANDS = (
    ("\033[31m", "tab:red", "shortest K (downshift)"),
    ("\033[33m", "goldenrod", "short K"),
    ("\033[32m", "tab:green", "long K"),
    ("\033[36m", "tab:cyan", "longest K (sprint)"),
)
RESET = "\033[0m"


def k_band(k: int, k_max: int) -> int:
    """The band (0 = shortest) of horizon ``k`` among horizons up to ``k_max``."""
    return min(len(BANDS) - 1, (k * len(BANDS)) // (k_max + 1))


def block_texts(g, tokenizer) -> list[tuple[dict, str]]:
    """Each block of ``g.trace`` with the text it completes (an incremental decoder: a character
    whose bytes span two blocks shows whole, with the block that finishes it; decoding each block
    alone would print U+FFFD halves). Without a tokenizer, the ids. A last piece held back by the
    decoder, or tokens past the trace, come as a block ``None``."""
    stream = tokenizer.decode_stream() if tokenizer is not None else None
    pieces, pos = [], 0
    for b in g.trace:
        ids = g.tokens[pos : pos + b["committed"]]
        pos += b["committed"]
        text = (stream.push(ids) if stream else " ".join(map(str, ids)) + " ") if ids else ""
        pieces.append((b, text))
    rest = g.tokens[pos:]
    if stream is not None:
        pieces.append((None, stream.push(rest) + stream.flush()))
    elif rest:
        pieces.append((None, " ".join(map(str, rest))))
    return pieces


def coloured(g, tokenizer) -> str:
    """The text block by block, coloured by K band: red (shortest K) < yellow < green < cyan
    (longest K)."""
    k_max = max((b["K"] for b in g.trace), default=1)
    out = []
    for b, text in block_texts(g, tokenizer):
        if b is None:
            out.append(text)
        elif text:
            out.append(f"{BANDS[k_band(b['K'], k_max)][0]}{text}{RESET}")
    return "".join(out)


def _blocks(g) -> list[tuple[int, int, dict]]:
    """(first output index, tokens in the output, trace entry) per block; the last block's
    ``committed`` may count past the output (EOS/budget cut), its width here does not."""
    spans, pos = [], 0
    for b in g.trace:
        width = max(0, min(b["committed"], len(g.tokens) - pos))
        spans.append((pos, width, b))
        pos += b["committed"]
    return spans


def _draw_blocks(ax, g, spans, k_max) -> list:
    """One bar per block: as wide as its tokens, as high as its K, coloured by K band; a cross
    where a verify rejected a drafted token. Returns the legend handles."""
    from matplotlib.patches import Patch

    bands = [k_band(b["K"], k_max) for _, _, b in spans]
    ax.bar(
        [s for s, _, _ in spans],
        [b["K"] for _, _, b in spans],
        width=[max(w, 0.3) for _, w, _ in spans],
        align="edge",
        color=[BANDS[i][1] for i in bands],
        edgecolor="black",
        linewidth=0.4,
    )
    handles = [Patch(color=BANDS[i][1], label=BANDS[i][2]) for i in sorted(set(bands))]
    miss = [
        (s + b["mismatch"] + 0.5, b["K"])
        for s, _, b in spans
        if b["mismatch"] is not None and b["mismatch"] < len(g.tokens) - s
    ]
    if miss:
        handles.append(
            ax.plot(
                [x for x, _ in miss],
                [k + 0.35 for _, k in miss],
                "kx",
                markersize=5,
                label="first rejected draft",
            )[0]
        )
    return handles


def _label_text(ax, spans, texts) -> None:
    """Each block's text inside its bar (rotated, bottom up), when there are few enough to
    read: the horizon against the text it drafted."""
    if len(spans) > 80:
        return
    for (start, width, b), text in zip(spans, texts):
        label = " ".join(text.split())
        label = label if len(label) <= 4 * b["K"] else label[: 4 * b["K"] - 1] + "…"
        if label and width:
            ax.text(
                start + width / 2, 0.1, label, rotation=90, ha="center", va="bottom", fontsize=6, clip_on=True
            )


def plot_horizon(g, path: str, tokenizer=None) -> None:
    """Plot K per block along the output (bars as wide as the block's tokens, coloured from
    downshift to sprint), each block's text in its bar (with a ``tokenizer``: its
    ``decode_stream``), and write it to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = _blocks(g)
    k_max = max((b["K"] for _, _, b in spans), default=1)
    texts = [t for b, t in block_texts(g, tokenizer) if b is not None]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    handles = _draw_blocks(ax, g, spans, k_max)
    ax.set_xlim(0, max(len(g.tokens), 1))
    ax.set_ylim(0, k_max + 1)
    ax.set_xlabel("output token index")
    ax.set_ylabel("horizon K")
    ax.set_title(
        f"elastic horizon: {len(g.tokens)} tokens in {g.forwards} forwards "
        f"({g.tokens_per_forward:.2f} tokens/forward)",
        fontsize=10,
    )
    if tokenizer is not None:
        _label_text(ax, spans, texts)
    # Outside the axes: a legend never covers a bar.
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
