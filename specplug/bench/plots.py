"""PNG plots of a benchmark: speedup vs concurrency per configuration, and tau per configuration.

matplotlib (the `bench` extra) is imported lazily; without it the benchmark still writes its
JSON and markdown and says why no plot was made.
"""

from __future__ import annotations

from pathlib import Path


def write_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[specplug] no plots: matplotlib is not installed (pip install 'specplug[bench]')")
        return []
    from specplug.bench.report import pool_phases

    ok = pool_phases(rows)  # per-category phases merged: one point per configuration and concurrency
    configs = list(dict.fromkeys(r["config"] for r in ok))
    paths = []

    # tab10 repeats its colours after ten lines: a headline run has eleven configurations
    colours = plt.get_cmap("tab20" if len(configs) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for i, cfg in enumerate(configs):
        pts = sorted((r["concurrency"], r.get("speedup", float("nan"))) for r in ok if r["config"] == cfg)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=cfg, color=colours(i),
                ls="--" if cfg.startswith("vllm") else "-")  # the engine's own methods dashed
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tok/s relative to no speculation")
    ax.set_title("Speedup vs concurrency")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    paths.append(out_dir / "speedup_vs_concurrency.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    phases = sorted({r["concurrency"] for r in ok})
    width = 0.8 / max(len(phases), 1)
    for j, c in enumerate(phases):
        taus = [next((r["tau"] for r in ok if r["config"] == cfg and r["concurrency"] == c), 0.0) for cfg in configs]
        ax.bar([i + j * width for i in range(len(configs))], taus, width, label=f"c={c}")
    ax.set_xticks([i + width * (len(phases) - 1) / 2 for i in range(len(configs))])
    ax.set_xticklabels(configs, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("τ: tokens per target forward")
    ax.set_title("Mean accepted tokens per step (incl. bonus)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "tau_per_method.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
