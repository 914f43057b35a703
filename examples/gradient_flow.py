"""Gradient flow of a point cloud onto a target of different mass, balanced vs unbalanced.

The source is a blob of 1 unit of mass; the target holds 1.5 units spread over two clusters
plus a far-away outlier cluster (1/9 of the target's points). Each particle follows
``-grad_x S_eps(a, b) / a_i`` (a Wasserstein gradient step on the debiased Sinkhorn
divergence). Balanced OT must send mass to the outliers; unbalanced OT (KL marginals,
``reach``) may leave them.

    python examples/gradient_flow.py --out outputs/gradient_flow

Writes ``gradient_flow.png`` (before / balanced / unbalanced) and prints one line of figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import torchuot as tu

OUTLIERS = torch.tensor([0.25, 1.6])


def make_clouds(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.08 * torch.randn(n, 2, generator=g) + torch.tensor([0.25, 0.5])
    k = n // 2
    y = torch.cat([
        0.05 * torch.randn(k, 2, generator=g) + torch.tensor([0.75, 0.3]),
        0.05 * torch.randn(k, 2, generator=g) + torch.tensor([0.75, 0.7]),
        0.03 * torch.randn(n // 8, 2, generator=g) + OUTLIERS,  # far-away outliers
    ])
    a = torch.full((n,), 1.0 / n)
    b = torch.full((y.shape[0],), 1.5 / y.shape[0])
    return x, y, a, b


def flow(x0, y, a, b, *, reach, steps, lr, blur):
    """Explicit Euler steps of the particle gradient flow; returns the final positions."""
    x = x0.clone().requires_grad_(True)
    loss = tu.SinkhornDivergence(blur=blur, reach=reach, tol=1e-3)
    for _ in range(steps):
        value = loss(a, x, b if reach is not None else b / b.sum(), y)
        (grad,) = torch.autograd.grad(value, x)
        with torch.no_grad():
            x -= lr * grad / a.unsqueeze(1)
    return x.detach(), float(value.detach())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/gradient_flow")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--blur", type=float, default=0.05)
    ap.add_argument("--reach", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x0, y, a, b = make_clouds(args.n, args.seed)
    t0 = time.perf_counter()
    xb, sb = flow(x0, y, a, b, reach=None, steps=args.steps, lr=args.lr, blur=args.blur)
    xu, su = flow(x0, y, a, b, reach=args.reach, steps=args.steps, lr=args.lr, blur=args.blur)
    seconds = time.perf_counter() - t0

    def outlier_share(x):  # fraction of particles that went to the outlier cluster
        return float(((x - OUTLIERS).norm(dim=1) < 0.3).float().mean())

    figures = dict(
        particles=args.n, steps=args.steps, seconds=round(seconds, 2),
        final_divergence_balanced=sb, final_divergence_unbalanced=su,
        outlier_share_balanced=outlier_share(xb), outlier_share_unbalanced=outlier_share(xu),
    )
    (out / "metrics.json").write_text(json.dumps(figures, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
        for ax, pts, title in zip(axes, (x0, xb, xu), ("start", "balanced (reach=None)",
                                                        f"unbalanced (reach={args.reach})"), strict=False):
            ax.scatter(*y.T, s=6, c="tab:orange", alpha=0.5, label="target (mass 1.5)")
            ax.scatter(*pts.T, s=6, c="tab:blue", alpha=0.7, label="particles (mass 1)")
            ax.set_title(title)
            ax.set_aspect("equal")
        axes[0].legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "gradient_flow.png", dpi=110)
        plt.close(fig)
    except ImportError:  # pragma: no cover - matplotlib is in the train/embed extras
        pass
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return figures


if __name__ == "__main__":
    main()
