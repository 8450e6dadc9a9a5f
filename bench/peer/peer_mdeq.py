#!/usr/bin/env python3
"""PyTorch peer of our multiscale DEQ (MDEQ) benchmark.

A from-scratch PyTorch re-implementation of the `tiny` and `small` MDEQ presets of
`deq-models` (stem, f, head), of our per-sample limited-memory Broyden solver (`deq-core`
`solver/broyden.rs`, `step_inverse.rs`, `tracker.rs`; the inverse here in the additive form
`−I + U Vᵀ`, ours in product form over its steps) and of our implicit backward
(`backward/adjoint.rs`, `op.rs`), timed like `deq-train bench` so that both tools can be
compared on the same machine (see `bench/peer/README.md` and `compare.py`).

    python3 bench/peer/peer_mdeq.py --model tiny --batch 32 --forward-iters 18 --tol 1e-3 \
        --reps 20 --warmup 2 --threads 1 --device cpu --seed 0 --json OUT.json
    python3 bench/peer/peer_mdeq.py --model small --check-grad
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised by hand
    sys.stderr.write(
        "peer_mdeq.py: PyTorch is not installed for this Python "
        f"({sys.executable}).\nInstall it in a virtual environment:\n"
        "  python3 -m venv .venv-peer && .venv-peer/bin/pip install torch==2.15.0 numpy\n"
        "and run this script with .venv-peer/bin/python.\n"
    )
    sys.exit(2)

# --------------------------------------------------------------------------------------------
# Configuration: the presets of deq-models/src/mdeq/config.rs
# --------------------------------------------------------------------------------------------


@dataclass
class MdeqConfig:
    input_channels: int
    channels: list
    head_channels: list
    final_channels: int
    classes: int
    groups: int = 8
    expansion: int = 5
    dropout: float = 0.25
    downsample_times: int = 0
    injection_transform: bool | None = None
    init_std: float = 0.01
    image: tuple = (3, 32, 32)

    @property
    def branches(self) -> int:
        return len(self.channels)

    def uses_injection_transform(self) -> bool:
        if self.injection_transform is not None:
            return self.injection_transform
        return self.downsample_times > 0 or self.branches > 2


def preset(name: str) -> MdeqConfig:
    """`MdeqConfig::tiny()` / `small()`; the input shapes are those of `deq-train bench`."""
    if name == "tiny":
        return MdeqConfig(3, [24, 24], [8, 16], 200, 10, image=(3, 32, 32))
    if name == "small":
        return MdeqConfig(
            1, [8, 16], [4, 8], 64, 10, groups=4, dropout=0.1, downsample_times=1,
            image=(1, 28, 28),
        )
    raise ValueError(f"unknown preset {name!r} (expected tiny or small)")


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def conv(cin: int, cout: int, kernel: int, stride: int, bias: bool, std: float) -> nn.Conv2d:
    """Square conv, padding kernel // 2, weight and bias N(0, std) (our `mdeq::conv`)."""
    c = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
    nn.init.normal_(c.weight, 0.0, std)
    if bias:
        nn.init.normal_(c.bias, 0.0, std)
    return c


def group_norm(groups: int, channels: int, affine: bool) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-5, affine=affine)


def batch_norm(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1, affine=affine)


class WeightNormConv2d(nn.Module):
    """`w = g · v / ‖v‖`, norm per output channel, no bias; `v ~ N(0, std)`, `g = ‖v‖`."""

    def __init__(self, cin: int, cout: int, kernel: int, std: float):
        super().__init__()
        v = torch.randn(cout, cin, kernel, kernel) * std
        self.v = nn.Parameter(v)
        self.g = nn.Parameter(self._norm(v).clone())

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        return (v * v).flatten(1).sum(1).sqrt()

    def weight(self) -> torch.Tensor:
        v = self.v
        return v * (self.g / self._norm(v)).reshape(-1, 1, 1, 1)


class ResidualBlock(nn.Module):
    """`h = ReLU(GN(conv(z)))`, `h = dropout(conv(h)) + x`, `h = GN(h) + z`, `GN(ReLU(h))`."""

    def __init__(self, c: int, expansion: int, groups: int, dropout: float, std: float):
        super().__init__()
        inner = expansion * c
        self.conv1 = WeightNormConv2d(c, inner, 3, std)
        self.norm1 = group_norm(groups, inner, True)
        self.conv2 = WeightNormConv2d(inner, c, 3, std)
        self.norm2 = group_norm(groups, c, True)
        self.norm3 = group_norm(groups, c, True)
        self.dropout = dropout
        self.channels = c


class Upsample(nn.Module):
    """Coarser branch j to finer branch i: conv1×1 → GN → nearest upsampling by 2^(j−i)."""

    def __init__(self, cj: int, ci: int, groups: int, factor: int, std: float):
        super().__init__()
        self.conv = conv(cj, ci, 1, 1, False, std)
        self.norm = group_norm(groups, ci, True)
        self.factor = factor


class Downsample(nn.Module):
    """Finer branch j to coarser i: i−j stride-2 conv3×3, each + GN, ReLU between."""

    def __init__(self, cj: int, ci: int, steps: int, groups: int, std: float):
        super().__init__()
        convs, norms = [], []
        for k in range(steps):
            out = ci if k + 1 == steps else cj
            convs.append(conv(cj, out, 3, 2, False, std))
            norms.append(group_norm(groups, out, True))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)


class MdeqCore(nn.Module):
    """The parameters of f (residual blocks, fusion, post-fusion convs and norms)."""

    def __init__(self, cfg: MdeqConfig):
        super().__init__()
        std, ch, n = cfg.init_std, cfg.channels, cfg.branches
        self.blocks = nn.ModuleList(
            ResidualBlock(c, cfg.expansion, cfg.groups, cfg.dropout, std) for c in ch
        )
        up, down = [], []
        for i in range(n):
            for j in range(n):
                if j > i:
                    up.append(Upsample(ch[j], ch[i], cfg.groups, 1 << (j - i), std))
                elif j < i:
                    down.append(Downsample(ch[j], ch[i], i - j, cfg.groups, std))
        self.up = nn.ModuleList(up)
        self.down = nn.ModuleList(down)
        self.post_convs = nn.ModuleList(WeightNormConv2d(c, c, 1, std) for c in ch)
        self.post_norms = nn.ModuleList(group_norm(cfg.groups // 2, c, False) for c in ch)

    def prepare(self, shapes, batch: int, training: bool, dropout: float) -> "PreparedCore":
        """f for one forward pass: weights normalised once, dropout masks drawn once
        (`[batch, C, 1, 1]`, entries 0 or 1 / (1 − p); none when not training or p = 0)."""
        device = self.post_convs[0].v.device
        dtype = self.post_convs[0].v.dtype
        blocks = []
        for b in self.blocks:
            mask = None
            if training and dropout > 0.0:
                keep = 1.0 - dropout
                mask = torch.bernoulli(
                    torch.full((batch, b.channels, 1, 1), keep, device=device, dtype=dtype)
                ) / keep
            blocks.append(
                dict(
                    w1=b.conv1.weight(), w2=b.conv2.weight(),
                    n1=(b.norm1.num_groups, b.norm1.weight, b.norm1.bias),
                    n2=(b.norm2.num_groups, b.norm2.weight, b.norm2.bias),
                    n3=(b.norm3.num_groups, b.norm3.weight, b.norm3.bias),
                    mask=mask,
                )
            )
        up = [
            dict(w=u.conv.weight, n=(u.norm.num_groups, u.norm.weight, u.norm.bias),
                 factor=u.factor)
            for u in self.up
        ]
        down = [
            dict(ws=[c.weight for c in d.convs],
                 ns=[(g.num_groups, g.weight, g.bias) for g in d.norms])
            for d in self.down
        ]
        post = [c.weight() for c in self.post_convs]
        post_groups = [g.num_groups for g in self.post_norms]
        return PreparedCore(blocks, up, down, post, post_groups, shapes)


def _gn(x, norm):
    groups, weight, bias = norm
    return F.group_norm(x, groups, weight, bias, 1e-5)


def _detach(t):
    return None if t is None else t.detach()


class PreparedCore:
    """f(z, x) on the flattened state `[batch, Σ C_i H_i W_i]`, injection into branch 0."""

    def __init__(self, blocks, up, down, post, post_groups, shapes):
        self.blocks, self.up, self.down = blocks, up, down
        self.post, self.post_groups, self.shapes = post, post_groups, shapes
        self.sizes = [c * h * w for c, h, w in shapes]

    def detached(self) -> "PreparedCore":
        """The same f without autograd (our `without_autodiff`): used by the solvers."""
        dn = lambda n: (n[0], _detach(n[1]), _detach(n[2]))  # noqa: E731
        blocks = [
            dict(w1=b["w1"].detach(), w2=b["w2"].detach(), n1=dn(b["n1"]), n2=dn(b["n2"]),
                 n3=dn(b["n3"]), mask=b["mask"])
            for b in self.blocks
        ]
        up = [dict(w=u["w"].detach(), n=dn(u["n"]), factor=u["factor"]) for u in self.up]
        down = [dict(ws=[w.detach() for w in d["ws"]], ns=[dn(n) for n in d["ns"]])
                for d in self.down]
        post = [w.detach() for w in self.post]
        return PreparedCore(blocks, up, down, post, self.post_groups, self.shapes)

    def dim(self) -> int:
        return sum(self.sizes)

    def unflatten(self, z):
        batch = z.shape[0]
        return [p.reshape(batch, *s) for p, s in zip(torch.split(z, self.sizes, 1), self.shapes)]

    @staticmethod
    def flatten(branches):
        return torch.cat([b.reshape(b.shape[0], -1) for b in branches], 1)

    def forward_branches(self, zs, x):
        outs = []
        for i, (z, b) in enumerate(zip(zs, self.blocks)):
            h = F.relu(_gn(F.conv2d(z, b["w1"], padding=b["w1"].shape[-1] // 2), b["n1"]))
            h = F.conv2d(h, b["w2"], padding=b["w2"].shape[-1] // 2)
            if b["mask"] is not None:
                h = h * b["mask"]
            if i == 0:
                h = h + x
            h = _gn(h, b["n2"]) + z
            outs.append(_gn(F.relu(h), b["n3"]))
        n = len(outs)
        up, down = iter(self.up), iter(self.down)
        fused = []
        for i in range(n):
            y = outs[i]
            for j in range(n):
                if j > i:
                    t = next(up)
                    u = _gn(F.conv2d(outs[j], t["w"]), t["n"])
                    y = y + torch.repeat_interleave(
                        torch.repeat_interleave(u, t["factor"], 2), t["factor"], 3
                    )
                elif j < i:
                    t = next(down)
                    h = outs[j]
                    for k, (w, nrm) in enumerate(zip(t["ws"], t["ns"])):
                        h = _gn(F.conv2d(h, w, stride=2, padding=1), nrm)
                        if k + 1 < len(t["ws"]):
                            h = F.relu(h)
                    y = y + h
            fused.append(y)
        return [
            F.group_norm(F.conv2d(F.relu(y), w), g, None, None, 1e-5)
            for y, w, g in zip(fused, self.post, self.post_groups)
        ]

    def __call__(self, z, x):
        return self.flatten(self.forward_branches(self.unflatten(z), x))


class Stem(nn.Module):
    def __init__(self, cfg: MdeqConfig):
        super().__init__()
        c0, std = cfg.channels[0], cfg.init_std
        s1 = 2 if cfg.downsample_times >= 1 else 1
        s2 = 2 if cfg.downsample_times >= 2 else 1
        self.conv1 = conv(cfg.input_channels, c0, 3, s1, False, std)
        self.norm1 = batch_norm(c0)
        self.conv2 = conv(c0, c0, 3, s2, False, std)
        self.norm2 = batch_norm(c0)
        self.injection = None
        if cfg.uses_injection_transform():
            self.injection = nn.Sequential(conv(c0, c0, 1, 1, False, std), batch_norm(c0),
                                           nn.ReLU())

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return self.injection(x) if self.injection is not None else x


class Bottleneck(nn.Module):
    def __init__(self, c: int, h: int, std: float):
        super().__init__()
        self.conv1 = conv(c, h, 1, 1, False, std)
        self.norm1 = batch_norm(h, affine=False)
        self.conv2 = conv(h, h, 3, 1, False, std)
        self.norm2 = batch_norm(h, affine=False)
        self.conv3 = conv(h, 4 * h, 1, 1, False, std)
        self.norm3 = batch_norm(4 * h, affine=False)
        self.shortcut = conv(c, 4 * h, 1, 1, False, std)
        self.shortcut_norm = batch_norm(4 * h)

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        h = self.norm3(self.conv3(h))
        return F.relu(h + self.shortcut_norm(self.shortcut(x)))


class Head(nn.Module):
    def __init__(self, cfg: MdeqConfig):
        super().__init__()
        std, hc = cfg.init_std, cfg.head_channels
        self.incre = nn.ModuleList(Bottleneck(c, h, std) for c, h in zip(cfg.channels, hc))
        self.down = nn.ModuleList(
            nn.Sequential(conv(4 * a, 4 * b, 3, 2, True, std), batch_norm(4 * b))
            for a, b in zip(hc[:-1], hc[1:])
        )
        self.final_conv = conv(4 * hc[-1], cfg.final_channels, 1, 1, True, std)
        self.final_norm = batch_norm(cfg.final_channels)
        # Burn's Linear: weight and bias U(−1/√in, 1/√in), as torch's default.
        self.classifier = nn.Linear(cfg.final_channels, cfg.classes)

    def forward(self, branches):
        y = None
        for i, (z, block) in enumerate(zip(branches, self.incre)):
            inc = block(z)
            y = inc if y is None else inc + F.relu(self.down[i - 1](y))
        y = F.relu(self.final_norm(self.final_conv(y)))
        return self.classifier(y.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# Solver: per-sample limited-memory Broyden (deq-core solver/{broyden,step_inverse,tracker}.rs;
# ours keeps B in product form over its steps, the peer in the additive form −I + U Vᵀ)
# --------------------------------------------------------------------------------------------

REL_EPS = 1e-12  # relative residual ‖F(z) − z‖ / (‖F(z)‖ + ε)
DENOM_EPS = 1e-12  # skip the secant update when |vᵀΔg| ≤ ε ‖v‖ ‖Δg‖
# A sample that has not improved for RESTART_PATIENCE iterations (since its best iterate or its
# last restart), or whose residual exceeds RESTART_GROWTH × its lowest, restarts from its best
# iterate with B = −I (our broyden.rs; `restart=False` gives the solver without restarts).
RESTART_PATIENCE = 12
RESTART_GROWTH = 1e2
RESTART = True  # --no-restart turns the restarts off in every solve


@dataclass
class SolveStats:
    status: list  # per sample: converged | max_iterations | diverged | non_finite
    iterations: list  # evaluations after the initial one until the sample stopped
    best_iteration: list
    abs_residual: list
    rel_residual: list
    evaluations: int = 0

    def mean_iterations(self) -> float:
        return sum(self.iterations) / max(len(self.iterations), 1)

    def count(self, status: str) -> int:
        return sum(1 for s in self.status if s == status)


def _rows_mask(rows, like):
    return torch.tensor(rows, dtype=torch.bool, device=like.device).unsqueeze(1)


def where_rows(tensor, rows, value):
    """`tensor` with the rows where `rows` is true taken from `value`."""
    if not any(rows):
        return tensor
    if all(rows):
        return value
    return torch.where(_rows_mask(rows, tensor), value, tensor)


def zero_rows(tensor, rows):
    if not any(rows):
        return tensor
    return tensor.masked_fill(_rows_mask(rows, tensor), 0.0)


class Tracker:
    """Per-sample residuals, stopping, lowest-residual iterate and status."""

    def __init__(self, z0, tol: float, relative: bool, divergence_factor: float):
        b = z0.shape[0]
        self.tol, self.relative, self.div = tol, relative, divergence_factor
        self.active = [True] * b
        self.best_res = [math.inf] * b
        self.min_abs = [math.inf] * b
        self.best_z = z0
        self.best_fz = z0
        self.last_res = [math.inf] * b
        self.stats = SolveStats(["max_iterations"] * b, [0] * b, [0] * b, [math.inf] * b,
                                [math.inf] * b)

    def any_active(self):
        return any(self.active)

    def frozen(self):
        return [not a for a in self.active]

    def start(self, z, fz):
        non_finite = self._observe(0, z, fz)[1]
        return self._recover(z, fz, non_finite)

    def advance(self, it, fmap, step, z):
        z = where_rows(step, self.frozen(), z)
        fz = fmap(z)
        improved, non_finite = self._observe(it, z, fz)
        z, fz = self._recover(z, fz, non_finite)
        return z, fz, improved, non_finite

    def _recover(self, z, fz, non_finite):
        if any(non_finite):
            z = where_rows(z, non_finite, self.best_z)
            fz = where_rows(fz, non_finite, self.best_fz)
        return z, fz

    def _observe(self, it, z, fz):
        self.stats.evaluations += 1
        norms = torch.stack(
            [torch.linalg.vector_norm(fz - z, dim=1), torch.linalg.vector_norm(fz, dim=1)], 1
        ).double().cpu().tolist()  # one transfer per observation, like ours
        b = len(self.active)
        improved, non_finite = [False] * b, [False] * b
        s = self.stats
        for i in range(b):
            if not self.active[i]:
                continue
            ab, fn = norms[i]
            rel = ab / (fn + REL_EPS)
            res = rel if self.relative else ab
            s.iterations[i] = it
            self.last_res[i] = res
            if not (math.isfinite(res) and math.isfinite(rel)):
                s.status[i] = "non_finite"
                non_finite[i] = True
                self.active[i] = False
                continue
            if res < self.best_res[i]:
                self.best_res[i] = res
                s.abs_residual[i], s.rel_residual[i], s.best_iteration[i] = ab, rel, it
                improved[i] = True
            self.min_abs[i] = min(self.min_abs[i], ab)
            if res <= self.tol:
                s.status[i] = "converged"
                self.active[i] = False
            elif ab > self.div * self.min_abs[i]:
                s.status[i] = "diverged"
                self.active[i] = False
        self.best_z = where_rows(self.best_z, improved, z)
        self.best_fz = where_rows(self.best_fz, improved, fz)
        return improved, non_finite

    def progress(self, i, growth):
        """The iteration of sample i's lowest residual, and whether its latest residual is
        more than `growth` times that lowest one."""
        return self.stats.best_iteration[i], self.last_res[i] > growth * self.best_res[i]

    def return_to_best(self, rows, z, fz):
        return where_rows(z, rows, self.best_z), where_rows(fz, rows, self.best_fz)


class LowRankInverse:
    """Per-sample `B = −I + U Vᵀ`, ring buffers `[batch, capacity, dim]`, oldest overwritten
    first. (Ours also keeps the matrix of each sample's best iterate for SHINE; the implicit
    backward never uses it, so it is not reproduced here.)"""

    def __init__(self, like, capacity: int):
        b, d = like.shape
        self.u = like.new_zeros(b, capacity, d)
        self.v = like.new_zeros(b, capacity, d)
        self.pushes = [0] * b

    @staticmethod
    def _product(a, c, x):
        # −x + Σ_j a_j (c_j · x), per sample
        coef = torch.bmm(c, x.unsqueeze(2))  # [b, m, 1]
        return torch.bmm(coef.transpose(1, 2), a).squeeze(1) - x

    def apply(self, x):
        return self._product(self.u, self.v, x)

    def apply_transposed(self, x):
        return self._product(self.v, self.u, x)

    def push(self, u, v, write):
        cap = self.u.shape[1]
        rows = [i for i, w in enumerate(write) if w]
        slots = [self.pushes[i] % cap for i in rows]
        ri = torch.tensor(rows, device=u.device)
        si = torch.tensor(slots, device=u.device)
        self.u[ri, si] = u[ri]
        self.v[ri, si] = v[ri]
        for i in rows:
            self.pushes[i] += 1

    def reset(self, rows):
        """B = −I for the samples where `rows` is true (ours pushes zero pairs into every slot,
        which leaves the next write position where it was)."""
        if not any(rows):
            return
        mask = _rows_mask(rows, self.u).unsqueeze(2)
        self.u.masked_fill_(mask, 0.0)
        self.v.masked_fill_(mask, 0.0)
        cap = self.u.shape[1]
        for i, r in enumerate(rows):
            if r:
                self.pushes[i] += cap


def broyden(fmap, z0, tol, max_iter, memory, relative=True, divergence_factor=1e6,
            restart=None):
    """Solves z = fmap(z) from z0 (`[batch, dim]`); returns the per-sample lowest-residual
    iterate and the statistics. `max_iter` iterations at most after the initial evaluation."""
    restart = RESTART if restart is None else restart
    fz0 = fmap(z0)
    batch = z0.shape[0]
    last_restart = [0] * batch
    tracker = Tracker(z0, tol, relative, divergence_factor)
    inverse = LowRankInverse(z0, min(memory, max_iter))
    z, fz = tracker.start(z0, fz0)
    g = fz - z
    bg = inverse.apply(g)
    for it in range(1, max_iter + 1):
        if not tracker.any_active():
            break
        moving = list(tracker.active)
        frozen = tracker.frozen()
        dz = zero_rows(-bg, frozen)  # Δz = −B g; frozen samples do not move
        z, fz, _improved, non_finite = tracker.advance(it, fmap, z + dz, z)
        g_new = fz - z
        bg_new = inverse.apply(g_new)
        b_dg = zero_rows(bg_new - bg, frozen)
        dg = zero_rows(g_new - g, frozen)
        v = inverse.apply_transposed(dz)  # vᵀ = Δzᵀ B
        denom = (v * dg).sum(1, keepdim=True)
        scale = ((v * v).sum(1, keepdim=True) * (dg * dg).sum(1, keepdim=True)).sqrt()
        host = torch.cat([denom, scale], 1).double().cpu().tolist()
        write = [
            moving[i] and not non_finite[i] and math.isfinite(d) and math.isfinite(s)
            and abs(d) > DENOM_EPS * s
            for i, (d, s) in enumerate(host)
        ]
        bg = bg_new
        if any(write):
            skip = [not w for w in write]
            safe = where_rows(denom, skip, torch.ones_like(denom))
            u = zero_rows((dz - b_dg) / safe, skip)
            bg = bg + u * (v * g_new).sum(1, keepdim=True)  # B⁺ g⁺ = B g⁺ + u (v · g⁺)
            inverse.push(u, v, write)
        g = g_new

        if not restart:
            continue
        again = []
        for i in range(batch):
            if not tracker.active[i]:
                again.append(False)
                continue
            best, grew = tracker.progress(i, RESTART_GROWTH)
            again.append(grew or it - max(best, last_restart[i]) >= RESTART_PATIENCE)
        if any(again):
            for i, r in enumerate(again):
                if r:
                    last_restart[i] = it
            inverse.reset(again)
            z, fz = tracker.return_to_best(again, z, fz)
            g = fz - z
            bg = where_rows(bg, again, -g)
    return tracker.best_z, tracker.stats


# --------------------------------------------------------------------------------------------
# Implicit backward (deq-core backward/{adjoint,op}.rs)
# --------------------------------------------------------------------------------------------


@dataclass
class AdjointSettings:
    memory: int = 30
    max_iter: int = 30
    tol: float = 1e-6
    retain_graph: bool = True  # True: f's graph built once at z*, as ours reuses f's linearisation
    method: str = "broyden"  # broyden (ours); gmres and identity (JFB) for --check-grad only

    def spec(self) -> str:
        s = (f"implicit:solver=broyden,memory={self.memory},max_iter={self.max_iter},"
             f"tol={rust_e(self.tol)}")
        return (s + (",vjp=retain" if self.retain_graph else "")
                + ("" if RESTART else ",restart=off"))


class AdjointPlan:
    """What the backward needs (all without autograd), and the statistics it leaves."""

    def __init__(self, f_plain, x_plain, z_star, settings: AdjointSettings):
        self.f, self.x, self.z_star, self.settings = f_plain, x_plain, z_star, settings
        self.stats: SolveStats | None = None
        self.vjp_evaluations = 0

    def adjoint(self, grad):
        """Solves w = J_fᵀ w + ∇L (J_f at z*) with Broyden from w0 = ∇L."""
        s = self.settings
        if s.method == "identity":
            return grad
        with torch.enable_grad():
            if s.retain_graph:
                leaf = self.z_star.detach().requires_grad_(True)
                y = self.f(leaf, self.x)

            def vjp(w):
                self.vjp_evaluations += 1
                if s.retain_graph:
                    return torch.autograd.grad(y, leaf, w, retain_graph=True)[0]
                leaf_ = self.z_star.detach().requires_grad_(True)
                return torch.autograd.grad(self.f(leaf_, self.x), leaf_, w)[0]

            if s.method == "gmres":
                w, its, res = gmres(lambda w: w - vjp(w), grad, s.tol, s.max_iter)
                b = grad.shape[0]
                self.stats = SolveStats(["gmres"] * b, [its] * b, [its] * b, [res] * b,
                                        [res] * b, its)
                return w
            fmap = lambda w: vjp(w) + grad  # noqa: E731
            w, self.stats = broyden(fmap, grad, s.tol, s.max_iter, s.memory)
        return w


def gmres(matvec, b, tol, max_iter):
    """Unrestarted GMRES for A x = b (A given by `matvec`, the whole tensor one vector), to
    relative residual `tol`: (x, iterations, relative residual). For the gradient check."""
    beta = torch.linalg.vector_norm(b)
    basis = [b / beta]
    h = torch.zeros(max_iter + 1, max_iter, dtype=torch.float64)
    y, res, k = None, 1.0, 0
    for k in range(max_iter):
        w = matvec(basis[k])
        for _ in range(2):  # modified Gram-Schmidt, twice for stability
            for i in range(k + 1):
                c = (basis[i] * w).sum()
                h[i, k] += c.item()
                w = w - c * basis[i]
        h[k + 1, k] = torch.linalg.vector_norm(w).item()
        e = torch.zeros(k + 2, 1, dtype=torch.float64)
        e[0, 0] = beta.item()
        y = torch.linalg.lstsq(h[: k + 2, : k + 1], e).solution
        res = (torch.linalg.vector_norm(h[: k + 2, : k + 1] @ y - e) / beta).item()
        if res < tol or h[k + 1, k] < 1e-14 * beta.item():
            break
        basis.append(w / h[k + 1, k].item())
    x = sum(float(c) * q for c, q in zip(y[:, 0], basis))
    return x, k + 1, res


class ImplicitGradient(torch.autograd.Function):
    """Identity forward; backward replaces the incoming gradient g by the adjoint w."""

    @staticmethod
    def forward(ctx, z, plan):
        ctx.plan = plan
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        return ctx.plan.adjoint(grad.contiguous()), None


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class Mdeq(nn.Module):
    def __init__(self, cfg: MdeqConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(cfg)
        self.core = MdeqCore(cfg)
        self.head = Head(cfg)

    def state_shapes(self, h: int, w: int):
        h0, w0 = h >> self.cfg.downsample_times, w >> self.cfg.downsample_times
        return [(c, h0 >> i, w0 >> i) for i, c in enumerate(self.cfg.channels)]

    def prepare(self, x, training: bool, dropout: float):
        injection = self.stem(x)
        shapes = self.state_shapes(x.shape[2], x.shape[3])
        return self.core.prepare(shapes, x.shape[0], training, dropout), injection

    def forward(self, x, forward_iters=18, tol=1e-3, memory=12, adjoint=None, dropout=None,
                solve_tol=None):
        """Logits, forward solve statistics and the adjoint plan (its statistics appear after
        `loss.backward()`). Training mode follows `self.training`."""
        dropout = self.cfg.dropout if dropout is None else dropout
        core, injection = self.prepare(x, self.training, dropout)
        plain, x_plain = core.detached(), injection.detach()
        z0 = x.new_zeros(x.shape[0], core.dim())
        with torch.no_grad():
            z_star, stats = broyden(lambda z: plain(z, x_plain), z0, tol, forward_iters, memory)
        plan = None
        if self.training:
            tracked = core(z_star, injection)  # one tracked application of f at z*
            plan = AdjointPlan(plain, x_plain, z_star, adjoint or AdjointSettings())
            z = ImplicitGradient.apply(tracked, plan)
            z = where_rows(z, [st == "non_finite" for st in stats.status], z_star)
        else:
            z = z_star
        logits = self.head(core.unflatten(z))
        return logits, stats, plan


def trainable_params(model: nn.Module) -> int:
    """Trainable parameters: as ours, affine GN/BN parameters and weight-norm gains included,
    BatchNorm running statistics (buffers here) excluded."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_breakdown(model: Mdeq):
    return {name: trainable_params(getattr(model, name)) for name in ("stem", "core", "head")}


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def rust_e(x: float) -> str:
    """Rust's `{:e}` formatting: 1e-6, 1.5e-3, 1e0."""
    mantissa, exponent = f"{x:.15e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def spread(samples):
    """Median and quartiles by linear interpolation between order statistics (as ours)."""
    s = sorted(samples)

    def at(q):
        if not s:
            return float("nan")
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"median": at(0.5), "q1": at(0.25), "q3": at(0.75), "samples": list(samples)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU ({model})" if model else "CPU"


def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            sys.exit("peer_mdeq.py: --device cuda, but torch sees no CUDA device "
                     f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        return torch.device("cuda")
    return torch.device("cpu")


def make_batch(cfg: MdeqConfig, batch: int, seed: int, rep: int, device, dtype):
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rep + 1)
    x = torch.randn(batch, *cfg.image, generator=gen, dtype=dtype)
    y = torch.randint(0, cfg.classes, (batch,), generator=gen)
    return x.to(device), y.to(device)


def run_bench(args) -> dict:
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not args.tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    cfg = preset(args.model)
    dropout = cfg.dropout if args.dropout == "preset" else float(args.dropout or 0.0)
    torch.manual_seed(args.seed)
    model = Mdeq(cfg).to(device).train()
    params = trainable_params(model)
    snapshot = [p.detach().clone() for p in model.parameters()]
    adjoint = AdjointSettings(args.adjoint_memory, args.adjoint_max_iter, args.adjoint_tol,
                              args.vjp == "retain")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    fwd, bwd, step = [], [], []
    fwd_iters, adj_iters, rel_res, adj_res, converged, vjps = [], [], [], [], [], []
    for rep in range(args.warmup + args.reps):
        measured = rep >= args.warmup
        x, labels = make_batch(cfg, args.batch, args.seed, rep, device, torch.float32)
        for p in model.parameters():
            p.grad = None
        sync()
        t0 = time.perf_counter()
        logits, stats, plan = model(x, args.forward_iters, args.tol, args.memory, adjoint,
                                    dropout)
        loss = F.cross_entropy(logits, labels)
        loss_value = loss.item()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        # As `deq-train bench`: a fresh Adam (lr 1e-3, ε 1e-5) per step, and the step is
        # undone afterwards (outside the clock) so that every repetition sees the same weights.
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5)
        opt.step()
        sync()
        t3 = time.perf_counter()
        with torch.no_grad():
            for p, s in zip(model.parameters(), snapshot):
                p.copy_(s)
        if not math.isfinite(loss_value):
            sys.exit(f"peer_mdeq.py: non-finite loss {loss_value} at repetition {rep}")
        if not measured:
            continue
        fwd.append((t1 - t0) * 1e3)
        bwd.append((t2 - t1) * 1e3)
        step.append((t3 - t0) * 1e3)
        fwd_iters.append(stats.mean_iterations())
        rel_res.append(max(stats.rel_residual))
        converged.append(stats.count("converged"))
        if plan is not None and plan.stats is not None:
            adj_iters.append(plan.stats.mean_iterations())
            adj_res.append(max(plan.stats.rel_residual))
            vjps.append(plan.vjp_evaluations)
        if args.verbose:
            print(f"rep {rep - args.warmup}: forward {fwd[-1]:.1f} ms, backward {bwd[-1]:.1f} ms,"
                  f" step {step[-1]:.1f} ms, forward iters {fwd_iters[-1]:.2f}, max rel residual"
                  f" {rel_res[-1]:.2e}, adjoint iters "
                  f"{adj_iters[-1] if adj_iters else float('nan'):.2f}", file=sys.stderr)

    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    report = {
        "tool": "pytorch",
        "backend": device.type,
        "device": device_name(device),
        "model": args.model,
        "batch": args.batch,
        "input_shape": list(cfg.image),
        "parameters": params,
        "forward_iters": args.forward_iters,
        "memory": args.memory,
        "tol": args.tol,
        "reps": args.reps,
        "threads": torch.get_num_threads() if device.type == "cpu" else args.threads,
        "modes": [
            {
                "mode": "implicit",
                "spec": adjoint.spec(),
                "forward_ms": spread(fwd),
                "backward_ms": spread(bwd),
                "step_ms": spread(step),
                "forward_iterations_mean": mean(fwd_iters),
                "adjoint_iterations_mean": mean(adj_iters),
            }
        ],
    }
    b = param_breakdown(model)
    print(
        f"peer: MDEQ {args.model} ({params} parameters: stem {b['stem']}, f {b['core']}, head "
        f"{b['head']}), batch {args.batch}, input {list(cfg.image)}, dropout {dropout}, "
        f"torch {torch.__version__} on {report['device']}, {report['threads']} thread(s)",
        file=sys.stderr,
    )
    print(
        f"peer: forward {report['modes'][0]['forward_ms']['median']:.1f} ms, backward "
        f"{report['modes'][0]['backward_ms']['median']:.1f} ms, step "
        f"{report['modes'][0]['step_ms']['median']:.1f} ms (medians of {args.reps}); forward "
        f"iterations {mean(fwd_iters):.2f} (≤ {args.forward_iters}), converged "
        f"{mean(converged):.1f}/{args.batch}, max relative residual {mean(rel_res):.2e}; adjoint "
        f"iterations {mean(adj_iters) or 0:.2f} (≤ {args.adjoint_max_iter}), max relative "
        f"residual {mean(adj_res) or 0:.2e}, VJPs {mean(vjps) or 0:.1f}",
        file=sys.stderr,
    )
    return report


# --------------------------------------------------------------------------------------------
# Gradient check
# --------------------------------------------------------------------------------------------


def check_grad(args) -> int:
    """Checks the implicit backward in float64 on a tiny batch (see the README):

    A. against the exact implicit gradient at the same z*: the adjoint system
       (I − J_fᵀ) w = ∇L solved by GMRES to 1e-12 (vector-Jacobian products of f, no Broyden),
       w then backpropagated through the same tracked application of f;
    B. against central finite differences of the loss along a random direction in parameter
       space, with z*(θ ± εd) re-solved to relative residual 1e-13 each time. Only meaningful
       when the forward solve reaches an exact fixed point (`small` does in float64; `tiny` at
       initialisation does not, and B is skipped);
    and, for context, the gradients of the benchmark's adjoint budget (30 Broyden iterations to
    1e-6), of the Jacobian-free backward (w = ∇L) and of backprop through k unrolled
    applications of f from z* (the Neumann series Σ (J_fᵀ)ⁱ ∇L, exact only if f contracts)."""
    torch.set_num_threads(max(args.threads, 1))
    dtype = torch.float64
    cfg = preset(args.model)
    dropout = cfg.dropout if args.dropout in (None, "preset") else float(args.dropout)
    torch.manual_seed(args.seed)
    model = Mdeq(cfg).to(dtype).train()
    batch = args.check_batch
    x, labels = make_batch(cfg, batch, args.seed, 0, "cpu", dtype)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    mask_seed = args.seed + 12345
    n_it = args.check_iters
    solve_tol = 1e-13

    def run(adjoint, want_grad=True):
        torch.manual_seed(mask_seed)  # the same dropout masks every time
        logits, stats, plan = model(x, n_it, solve_tol, n_it, adjoint, dropout)
        loss = F.cross_entropy(logits, labels)
        if not want_grad:
            return loss.item(), stats, plan, None
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        return loss.item(), stats, plan, grads

    t0 = time.perf_counter()
    exact = AdjointSettings(memory=n_it, max_iter=n_it, tol=1e-12)
    _, stats, plan, g_impl = run(exact)
    fwd_exact = all(st == "converged" for st in stats.status)
    print(f"check-grad: {args.model}, batch {batch}, float64, dropout {dropout}; forward Broyden"
          f" (memory {n_it}): {stats.mean_iterations():.0f} iterations, max relative residual "
          f"{max(stats.rel_residual):.1e} ({'exact fixed point' if fwd_exact else 'NOT converged'})")
    print(f"check-grad: implicit backward, Broyden adjoint (memory {n_it}, ≤ {n_it} iterations, "
          f"tol 1e-12): {plan.stats.mean_iterations():.0f} iterations, max relative residual "
          f"{max(plan.stats.rel_residual):.1e}")
    _, _, plan_ref, g_ref = run(AdjointSettings(max_iter=n_it, tol=1e-12, method="gmres"))
    print(f"check-grad: reference, GMRES adjoint: {plan_ref.stats.iterations[0]} iterations, "
          f"relative residual {plan_ref.stats.rel_residual[0]:.1e}")
    _, _, plan_b, g_bench = run(AdjointSettings())
    _, _, _, g_jfb = run(AdjointSettings(method="identity"))

    # Backprop through k unrolled applications of f from z* (same z*, same masks).
    torch.manual_seed(mask_seed)
    core, injection = model.prepare(x, True, dropout)
    with torch.no_grad():
        z_star, _ = broyden(lambda z: core(z, injection), x.new_zeros(batch, core.dim()),
                            solve_tol, n_it, n_it)
    z = z_star
    for _ in range(args.check_unroll):
        z = core(z, injection)
    loss_u = F.cross_entropy(model.head(core.unflatten(z)), labels)
    g_unroll = torch.autograd.grad(loss_u, params, allow_unused=True)
    g_unroll = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_unroll)]

    flat = lambda gs, idx=None: torch.cat(  # noqa: E731
        [g.reshape(-1) for i, g in enumerate(gs) if idx is None or i in idx])
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    groups = {
        "all": None,
        "f": {i for i, n in enumerate(names) if n.startswith("core.")},
        "stem": {i for i, n in enumerate(names) if n.startswith("stem.")},
    }
    print("check-grad: relative error ‖g − g_ref‖ / ‖g_ref‖ against the GMRES reference "
          "(all parameters / f's / the stem's):")
    rows = [
        ("implicit, Broyden adjoint to 1e-12", g_impl),
        (f"implicit, benchmark budget ({plan_b.stats.mean_iterations():.0f} it., max residual "
         f"{max(plan_b.stats.rel_residual):.1e})", g_bench),
        ("Jacobian-free (w = ∇L)", g_jfb),
        (f"unrolled, {args.check_unroll} applications of f", g_unroll),
    ]
    errors = {}
    for label, g in rows:
        e = [rel(flat(g, idx), flat(g_ref, idx)) for idx in groups.values()]
        errors[label] = e[0]
        print(f"check-grad:   {label:<58} {e[0]:.2e} / {e[1]:.2e} / {e[2]:.2e}")
    err_a = errors[rows[0][0]]
    ref_ok = plan_ref.stats.rel_residual[0] < 1e-8
    if not ref_ok:
        print("check-grad: the GMRES reference itself did not converge (I − J_fᵀ is too badly "
              "conditioned at this z*), so comparison A is inconclusive (use --model small)")

    err_b = None
    if fwd_exact:
        gen = torch.Generator().manual_seed(args.seed + 7)
        direction = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in params]
        norm = math.sqrt(sum((d * d).sum().item() for d in direction))
        direction = [d / norm for d in direction]
        eps = args.check_eps
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, d in zip(params, direction):
                    p.add_(sign * eps * d)
                loss_value, st, _, _ = run(None, want_grad=False)
                values.append(loss_value)
                for p, d in zip(params, direction):
                    p.sub_(sign * eps * d)
                if not all(s_ == "converged" for s_ in st.status):
                    print("check-grad: warning: a perturbed forward solve did not converge")
        fd = (values[0] - values[1]) / (2 * eps)
        dot = lambda gs: sum((g * d).sum().item() for g, d in zip(gs, direction))  # noqa: E731
        err_b = abs(dot(g_impl) - fd) / abs(fd)
        print(f"check-grad: directional derivative along a random unit direction (ε = {eps:g}):"
              f" finite differences {fd:.9e}, implicit {dot(g_impl):.9e} (relative error "
              f"{err_b:.1e}); Jacobian-free {dot(g_jfb):.9e} (relative error "
              f"{abs(dot(g_jfb) - fd) / abs(fd):.1e})")
    else:
        print("check-grad: finite-difference check skipped: the forward solve reaches no exact "
              "fixed point here, so the loss is not a function of θ through z*(θ) to compare "
              "with (use --model small)")
    elapsed = time.perf_counter() - t0
    if not ref_ok:
        print(f"check-grad: INCONCLUSIVE ({elapsed:.0f} s)")
        return 2
    ok = err_a < args.check_rtol and (err_b is None or err_b < args.check_rtol)
    print(f"check-grad: {'PASS' if ok else 'FAIL'} (tolerance {args.check_rtol:g}; "
          f"{elapsed:.0f} s)")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch peer of `deq-train bench`: MDEQ tiny/small, Broyden forward, "
                    "implicit backward.")
    p.add_argument("--model", choices=["tiny", "small"], default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--forward-iters", type=int, default=18)
    p.add_argument("--tol", type=float, default=1e-3, help="forward relative-residual tolerance")
    p.add_argument("--memory", type=int, default=12,
                   help="forward Broyden memory (as `deq-train`'s default)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--dropout", default=None,
                   help="variational dropout probability, or 'preset' (default: 0 in the "
                        "benchmark, as `deq-train bench`, which turns dropout off; the preset's "
                        "in --check-grad)")
    p.add_argument("--adjoint-memory", type=int, default=30)
    p.add_argument("--adjoint-max-iter", type=int, default=30)
    p.add_argument("--adjoint-tol", type=float, default=1e-6)
    p.add_argument("--vjp", choices=["recompute", "retain"], default="retain",
                   help="retain: build f's graph at z* once and reuse it for every "
                        "vector-Jacobian product (as ours reuses f's linearisation); "
                        "recompute: one fresh evaluation of f per product")
    p.add_argument("--no-restart", action="store_true",
                   help="Broyden without the per-sample restarts (patience 12, growth 100) of "
                        "our solver")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: off)")
    p.add_argument("--verbose", action="store_true", help="print every repetition")
    p.add_argument("--check-grad", action="store_true",
                   help="check the implicit gradient in float64 instead of benchmarking")
    p.add_argument("--check-batch", type=int, default=2)
    p.add_argument("--check-iters", type=int, default=400,
                   help="Broyden iterations and memory of the forward and adjoint solves, and "
                        "GMRES iterations, in the gradient check")
    p.add_argument("--check-unroll", type=int, default=50)
    p.add_argument("--check-eps", type=float, default=1e-6)
    p.add_argument("--check-rtol", type=float, default=1e-5)
    args = p.parse_args(argv)
    if args.dropout not in (None, "preset"):
        try:
            d = float(args.dropout)
        except ValueError:
            p.error(f"--dropout: expected a number in [0, 1) or 'preset', got {args.dropout!r}")
        if not 0.0 <= d < 1.0:
            p.error(f"--dropout must lie in [0, 1), got {d}")
    for name in ("batch", "forward_iters", "memory", "reps", "adjoint_memory",
                 "adjoint_max_iter"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be ≥ 0")
    return args


def main(argv=None) -> int:
    global RESTART
    args = parse_args(argv)
    RESTART = not args.no_restart
    if args.check_grad:
        return check_grad(args)
    report = run_bench(args)
    text = json.dumps(report, indent=2)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.json)
        print(f"peer: wrote {args.json}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
