"""The adaptation run: Stage I (gated LoRA + mask embedding) then Stage II (K-head), with a tqdm
bar (loss, processed tokens/s, ETA), periodic checkpoints, ``resume``, and the final adapter
directory (``fluid_rt.adapter`` format)."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch

from fluid_rt.adapt.layout import collate, insert_masks
from fluid_rt.adapt.model import TARGETS, FrozenBase, GatedAdapter
from fluid_rt.adapt.objectives import (
    khead_labels,
    khead_loss,
    new_khead,
    soft_targets,
    stage1_loss,
    stage2_features,
)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 4
    max_k: int = 6
    rank: int = 16
    alpha: float = 32.0
    lr: float = 1e-3
    warmup: float = 0.05
    select_prob: float = 0.35
    seed: int = 0
    checkpoint_every_s: float = 300.0
    targets: tuple = TARGETS
    stage2_samples: int = 192
    stage2_epochs: int = 300
    ce_threshold: float = 2.8
    sigma: float = 1.5
    max_len: int = 256
    bf16: bool = True  # autocast the matmuls to bfloat16 (CPU AVX512-BF16: ~1.5x faster steps)
    extra: dict = field(default_factory=dict)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine to 10% of ``lr``."""
    warm = max(1, int(cfg.steps * cfg.warmup))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def sample_tokens(sample: dict, max_len: int) -> tuple[list[int], int]:
    """(prompt + answer ids cut to ``max_len``, index of the first answer token)."""
    p, a = list(sample["prompt_ids"]), list(sample["answer_ids"])
    return (p + a)[:max_len], len(p)


class Trainer:
    """Holds the base, the adapter, the optimizer and the data order; ``run`` trains to
    ``cfg.steps``, checkpointing to ``out/checkpoint``."""

    def __init__(
        self,
        cfg: TrainConfig,
        model_cfg,
        state: dict,
        samples: list[dict],
        mask_token_id: int,
        special_ids=frozenset(),
        base_identity: dict | None = None,
    ):
        self.cfg, self.model_cfg, self.samples = cfg, model_cfg, samples
        self.mask_token_id, self.special_ids = mask_token_id, frozenset(special_ids)
        self.base_identity = base_identity or {}
        self.base = FrozenBase(model_cfg, state)
        mask_init = self.base.embed.mean(0)  # a neutral start: the average token
        self.adapter = GatedAdapter(
            model_cfg, cfg.rank, cfg.alpha, mask_token_id, mask_init, cfg.targets, cfg.seed
        )
        self.opt = torch.optim.AdamW(self.adapter.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.step = 0
        self.processed = 0  # main + draft rows run so far (the tokens/s of the bar)
        self.losses: list[float] = []

    # -- data ----------------------------------------------------------------------------------
    def batch_at(self, step: int, stage2: bool = False):
        """The batch of ``step``: samples in a per-epoch permutation, masks drawn from an RNG
        seeded by (seed, step), so a resumed run sees exactly the batches it would have."""
        cfg, n = self.cfg, len(self.samples)
        picks = []
        for j in range(cfg.batch_size):
            idx = step * cfg.batch_size + j
            order = list(range(n))
            random.Random(cfg.seed * 100003 + idx // n).shuffle(order)
            picks.append(self.samples[order[idx % n]])
        rng = random.Random((cfg.seed + (7919 if stage2 else 0)) * 1_000_003 + step)
        seqs, lays = [], []
        for s in picks:
            tokens, start = sample_tokens(s, cfg.max_len)
            lays.append(
                insert_masks(
                    tokens,
                    start,
                    mask_id=self.mask_token_id,
                    max_k=cfg.max_k,
                    select_prob=cfg.select_prob,
                    rng=rng,
                    restore=not stage2,
                    fixed_k=stage2,
                    vocab_size=self.model_cfg.vocab_size,
                    special_ids=self.special_ids,
                )
            )
            seqs.append(tokens)
        return collate(seqs, lays, pad_id=0)

    # -- Stage I -------------------------------------------------------------------------------
    def train_step(self) -> float:
        batch = self.batch_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, self.step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            loss = stage1_loss(self.base, self.adapter, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.processed += int(batch.main_len.sum()) + batch.num_draft_rows
        self.losses.append(loss.item())
        return self.losses[-1]

    def run(self, out_dir: str, progress: bool = True, reload=None) -> None:
        """Train to ``cfg.steps``. ``reload``: a callable returning the current samples, called
        at each checkpoint (the data file may still be growing while training runs)."""
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="stage I",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        t0, p0, last_ckpt = time.perf_counter(), self.processed, time.perf_counter()
        ema = None
        while self.step < cfg.steps:
            loss = self.train_step()
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            rate = (self.processed - p0) / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{rate:.0f}")
            if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s:
                self.save_checkpoint(out_dir)
                last_ckpt = time.perf_counter()
                if reload is not None:
                    self.samples = reload()
        bar.close()
        self.save_checkpoint(out_dir)

    # -- Stage II ------------------------------------------------------------------------------
    def train_khead(self, progress: bool = True):
        """Backbone and adapter frozen: collect (trigger hidden, k*) over ``stage2_samples``
        samples, then fit the head on them. Returns (head, label histogram)."""
        from tqdm import tqdm

        cfg = self.cfg
        feats, labels = [], []
        steps = max(1, cfg.stage2_samples // cfg.batch_size)
        for s in tqdm(range(steps), desc="stage II features", disable=not progress):
            batch = self.batch_at(s, stage2=True)
            if batch.num_draft_rows == 0:
                continue
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                h, ce = stage2_features(self.base, self.adapter, batch, cfg.max_k)
            h, ce = h.float(), ce.float()
            feats.append(h)
            labels.append(khead_labels(ce, cfg.ce_threshold))
        h, k_star = torch.cat(feats), torch.cat(labels)
        head = new_khead(self.model_cfg.hidden_size, cfg.max_k, cfg.seed)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
        targets = soft_targets(k_star, cfg.max_k, cfg.sigma)
        for _ in tqdm(range(cfg.stage2_epochs), desc="stage II head", disable=not progress):
            loss = khead_loss(head(h), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        hist = torch.bincount(k_star, minlength=cfg.max_k + 1)[1:].tolist()
        return head, hist

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, out_dir: str) -> None:
        """``out/checkpoint/``: the adapter (runtime format, no K-head yet) and ``trainer.pt``
        (optimizer state, step, loss history), written to temporary names then renamed, so a kill
        mid-write leaves the previous checkpoint intact."""
        from fluid_rt.adapter import save_adapter

        ckpt = os.path.join(out_dir, "checkpoint")
        tmp = ckpt + ".tmp"
        save_adapter(tmp, self.adapter.tensors(), self.describe(), khead=None)
        torch.save(
            {
                "opt": self.opt.state_dict(),
                "step": self.step,
                "processed": self.processed,
                "losses": torch.tensor(self.losses),
            },
            os.path.join(tmp, "trainer.pt"),
        )
        if os.path.isdir(ckpt):
            old = ckpt + ".old"
            os.rename(ckpt, old)
            os.rename(tmp, ckpt)
            import shutil

            shutil.rmtree(old)
        else:
            os.rename(tmp, ckpt)

    def load_checkpoint(self, out_dir: str) -> None:
        """Continue from ``out/checkpoint``. Without ``trainer.pt`` (an adapter directory copied
        there, e.g. the shipped one, whose optimizer state is not kept) the optimizer starts
        afresh at the adapter's recorded step."""
        from fluid_rt.adapter import read_adapter

        ckpt = os.path.join(out_dir, "checkpoint")
        meta, tensors = read_adapter(ckpt)
        if int(meta["rank"]) != self.cfg.rank or int(meta["max_k"]) != self.cfg.max_k:
            raise ValueError(
                f"{ckpt}: checkpoint has rank {meta['rank']} / max_k "
                f"{meta['max_k']}, this run --rank {self.cfg.rank} / --max-k "
                f"{self.cfg.max_k}"
            )
        self.adapter.load_tensors({k: v.float() for k, v in tensors.items()})
        state_path = os.path.join(ckpt, "trainer.pt")
        if not os.path.isfile(state_path):
            self.step = int(meta.get("training", {}).get("steps_done", 0))
            return
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        self.opt.load_state_dict(state["opt"])
        self.step, self.processed = int(state["step"]), int(state["processed"])
        self.losses = state["losses"].tolist()

    def describe(self) -> dict:
        cfg = self.cfg
        return {
            "base": self.base_identity,
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "target_modules": list(cfg.targets),
            "mask_token_id": self.mask_token_id,
            "max_k": cfg.max_k,
            "hidden_size": self.model_cfg.hidden_size,
            "num_layers": self.model_cfg.num_layers,
            "training": {
                "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
                "steps_done": self.step,
                "processed_tokens": self.processed,
                "final_loss": (sum(self.losses[-50:]) / len(self.losses[-50:]) if self.losses else None),
            },
        }
