"""Figures and tables: one helper saves each under a stable name (docs/design.md, "House style").

Static figures are PNG through matplotlib (no browser needed); interactive ones HTML
through plotly with ``include_plotlyjs='directory'`` so they open offline. Tables are
written as CSV and Markdown. Every figure is labelled as coming from simulated data
when it does.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from .io import atomic_path, atomic_write_text


def save_figure(fig, name: str, folder: str | Path) -> Path:
    """Save a matplotlib figure as ``<folder>/<name>.png`` or a plotly one as ``.html``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(fig, "write_html"):
        path = folder / f"{name}.html"
        with atomic_path(path) as tmp:
            # 'directory' writes plotly.min.js beside the HTML once and links it: works offline
            fig.write_html(str(tmp), include_plotlyjs="directory", full_html=True)
        return path
    path = folder / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    return path


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, folder: str | Path, note: str = "") -> Path:
    """Write ``<folder>/<name>.csv`` and ``<folder>/<name>.md`` (with ``note`` above the table)."""
    folder = Path(folder)
    with atomic_path(folder / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(folder / f"{name}.md", (f"{note}\n\n" if note else "") + markdown_table(df))
    return folder / f"{name}.csv"


SIMULATED = "simulated scanners (built-in data, not real devices)"
BUILT_IN = SIMULATED
SIMULATED_BY = "SIMULATED data made by nbutils."  # how the README.txt of a set this project simulated begins
SIMULATION_MARK = SIMULATED_BY + "phantom"  # … of a set nbutils.phantom made (nbutils.tissuesim: + "tissuesim")


def describe_data(source_csv: str | Path) -> str:
    """Set and return the label every figure and table of this kernel carries (``SIMULATED``):
    the simulated-scanner label when the CSV of volumes was made by :mod:`nbutils.phantom` or
    :mod:`nbutils.tissuesim` (its folder's README.txt says so), else the CSV's name, so results on
    real data are not called simulated."""
    global SIMULATED
    readme = Path(source_csv).parent / "README.txt"
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    other = re.search(r"^Scanners: (.*) \(simulations", text, re.M) if "Not the built-in scanners" in text else None
    if not text.startswith(SIMULATED_BY):
        SIMULATED = f"data of {Path(source_csv).name} (not simulated by this project)"
    else:  # the built-in set, or another set of simulated scanners (phantom.OTHER_SCANNERS, tissuesim)
        SIMULATED = f"simulated scanners {other.group(1)} (another set, not real devices)" if other else BUILT_IN
    return SIMULATED


def montage(images: dict[str, np.ndarray], title: str = "", ncols: int | None = None,
            vmax: float = 1.0, cmap: str = "gray"):
    """A grid of 2-D images with their names as captions; returns the matplotlib figure."""
    names = list(images)
    ncols = ncols or len(names)
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
        ax.set(xticks=[], yticks=[])  # no ticks to lay out (axes off alone still computes them)
    for ax, name in zip(axes.flat, names):
        ax.imshow(np.asarray(images[name], np.float32), cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    # keep 0.4 inch for the title: in a tall grid tight_layout left it on the first row's captions
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()) if title else None)
    return fig


def intensity_histograms(values: dict[str, np.ndarray], title: str, bins: int = 100):
    """Density of in-mask intensities per group, as a matplotlib figure and a plotly figure."""
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(6, 3.5))
    pfig = go.Figure()
    for name, v in values.items():
        dens, _ = np.histogram(np.asarray(v, np.float32), bins=edges, density=True)
        ax.plot(centres, dens, label=name)
        pfig.add_trace(go.Scatter(x=centres, y=dens, mode="lines", name=name))
    ax.set(xlabel="normalised intensity (brain mask)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    pfig.update_layout(title=title, xaxis_title="normalised intensity (brain mask)",
                       yaxis_title="density", template="plotly_white")
    return fig, pfig


def slice_browser(images: np.ndarray, labels: np.ndarray, names: list[str], title: str, n: int = 40):
    """Plotly figure: one panel per domain, a slider through the first ``n`` slices of each
    (in the traveling-subject test split the same slider position is the same anatomy)."""
    rows = [np.flatnonzero(labels == k) for k in range(len(names))]
    n = min(n, *(len(r) for r in rows))
    stack = np.stack([np.asarray(images[r[:n]], np.float32) for r in rows], axis=1)
    fig = px.imshow(stack, animation_frame=0, facet_col=1, binary_string=True, title=title,
                    labels={"animation_frame": "slice"})
    for i, name in enumerate(names):
        fig.layout.annotations[i].text = name
    return fig


def loss_curves(history: pd.DataFrame, title: str, columns: list[str] | None = None, smooth: int = 20):
    """Training losses against iteration (light: raw, dark: running mean over ``smooth``)."""
    columns = columns or [c for c in history.columns if c != "step"]
    fig, axes = plt.subplots(1, len(columns), figsize=(2.8 * len(columns), 2.6), squeeze=False)
    for ax, col in zip(axes[0], columns):
        ax.plot(history["step"], history[col], color="tab:blue", alpha=0.3, lw=0.8)
        ax.plot(history["step"], history[col].rolling(smooth, min_periods=1).mean(), color="tab:blue")
        ax.set(title=col, xlabel="iteration")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def learning_curve(curve: pd.DataFrame, title: str, columns: list[str] | None = None):
    """Scores of training snapshots against iterations (bottom axis) and training minutes
    (top axis), one panel per score."""
    columns = columns or [c for c in curve.columns if c not in ("step", "seconds")]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 2.8), squeeze=False)
    for ax, col in zip(axes[0], columns):
        ax.plot(curve["step"], curve[col], "o-", color="tab:blue")
        ax.set(title=col, xlabel="iteration")
        top = ax.secondary_xaxis("top", functions=(
            lambda s: np.interp(s, curve["step"], curve["seconds"] / 60),
            lambda m: np.interp(m, curve["seconds"] / 60, curve["step"])))
        top.set_xlabel("training minutes", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def probe_control(control: pd.DataFrame, chance: float, bar: float, title: str):
    """Probe accuracy against the scanner share, one line per code of ``control``
    (:func:`nbutils.usage.probe_control`; share on a log axis, the scale-0 point left off), the
    code as it is ringed; chance and the bar as horizontal lines. Probes that could not be read (NaN:
    fewer than two traveling test subjects per scanner) are left off, and said so when none was."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    drawn = control[(control.share > 0) & control.probe.notna()]
    for name, c in drawn.groupby("code", sort=False):
        line, = ax.plot(c.share, c.probe, "o-", label=name)
        first = c[c.scale == 1]
        ax.plot(first.share, first.probe, "o", ms=12, mfc="none", color=line.get_color())
    ax.axhline(chance, color="grey", ls=":", label=f"chance {chance:.2f}")
    ax.axhline(bar, color="tab:red", ls="--", lw=1, label=f"bar {bar:.2f}")
    ax.set(xlabel="scanner share of the code (ringed: as it is)", ylabel="probe accuracy", ylim=(0, 1.05))
    if len(drawn):
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no probe read: it holds each traveling subject out,\nand needs two of them per scanner",
                transform=ax.transAxes, ha="center", va="center", fontsize=8)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def source_maps(maps: dict[str, np.ndarray], domains: list[str], title: str,
                label: str = "source mean less the mean over sources"):
    """One row per set of images (e.g. inputs, scanner-free outputs), one column per scanner: its
    map (e.g. from :func:`nbutils.usage.source_maps`: what that source leaves), on one symmetric
    colour scale for all, to the 99.5th percentile of |map| (red above zero, blue below; NaN blank)."""
    rows = list(maps)
    scale = max(float(np.nanpercentile(np.abs(m), 99.5)) for m in maps.values()) or 1.0
    fig, axes = plt.subplots(len(rows), len(domains), figsize=(2.6 * len(domains), 2.7 * len(rows)), squeeze=False,
                             layout="compressed")  # no blank band where fixed-aspect images leave room
    for r, name in enumerate(rows):
        for b, dom in enumerate(domains):
            ax = axes[r, b]
            im = ax.imshow(maps[name][b], cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_title(f"{name}: {dom}", fontsize=8)
            ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label=label)
    fig.suptitle(title, fontsize=9)
    return fig


def attribute_pca(codes: np.ndarray, colourings: dict[str, list[str]], title: str):
    """2-D PCA of attribute codes, one panel per colouring (e.g. by scanner, by component);
    returns a matplotlib figure, a plotly figure and the explained variance ratios."""
    from sklearn.decomposition import PCA

    pca = PCA(2).fit(codes)
    xy = pca.transform(codes)
    ev = pca.explained_variance_ratio_
    axis = [f"PC{i + 1} ({100 * ev[i]:.0f} % of variance)" for i in range(2)]
    fig, axes = plt.subplots(1, len(colourings), figsize=(4.6 * len(colourings), 4), squeeze=False)
    frames = []
    for ax, (name, groups) in zip(axes[0], colourings.items()):
        groups = np.asarray(groups)
        for g in sorted(set(groups)):
            sel = groups == g
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, label=g)
            frames.append(pd.DataFrame({axis[0]: xy[sel, 0], axis[1]: xy[sel, 1], "group": g, "colour by": name}))
        ax.set(title=f"coloured by {name}", xlabel=axis[0], ylabel=axis[1])
        ax.legend(fontsize=7, markerscale=1.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    pfig = px.scatter(pd.concat(frames), x=axis[0], y=axis[1], color="group", facet_col="colour by",
                      title=title, opacity=0.7, template="plotly_white")
    pfig.update_traces(marker_size=5)
    return fig, pfig, ev


def anatomy_rows(manifest: pd.DataFrame, anatomy: int = 0) -> np.ndarray:
    """Rows of a traveling-subject split showing its ``anatomy``-th (subject, slice), one per scanner."""
    m = manifest.reset_index(drop=True)
    keys = m[["subject", "slice_index"]].drop_duplicates()
    if not 0 <= anatomy < len(keys):
        raise ValueError(f"anatomy {anatomy} does not exist: the split has {len(keys)} (0..{len(keys) - 1})")
    key = keys.iloc[anatomy]
    return m.index[(m["subject"] == key["subject"]) & (m["slice_index"] == key["slice_index"])].to_numpy()


def translation_montage(images: np.ndarray, scanner_free: np.ndarray, to_target: np.ndarray, rows: np.ndarray,
                        sources: list[str], targets: list[str], title: str):
    """The thesis's Figure 3 layout: one row per source slice (``rows`` of the arrays); columns
    the input, its scanner-free output and its translation to each target scanner."""
    panels = {}
    for r, src in zip(rows, sources):
        panels[f"{src} input"] = images[r]
        panels[f"{src} → scanner-free"] = scanner_free[r]
        for b, name in enumerate(targets):
            panels[f"{src} → {name}"] = to_target[b][r]
    return montage(panels, title, ncols=2 + len(targets))


def score_boxes(df: pd.DataFrame, value: str, x: str, hue: str, title: str):
    """Per-unit scores as box plots: ``x`` groups along the axis, one box per ``hue`` in each
    (bars instead when each group holds a single value); a matplotlib and a plotly figure."""
    xs, hues = sorted(dict.fromkeys(df[x])), list(dict.fromkeys(df[hue]))
    bars = df.groupby([x, hue]).size().max() == 1
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(xs) * max(1, len(hues) / 2)), 3.6))
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        data = [df.loc[(df[x] == g) & (df[hue] == h), value].to_numpy() for g in xs]
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        if bars:
            ax.bar(pos, [d[0] if len(d) else np.nan for d in data], width * 0.9, color=plt.cm.tab10(j), label=h)
            continue
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for box in bp["boxes"]:
            box.set_facecolor(plt.cm.tab10(j))
        ax.plot([], [], color=plt.cm.tab10(j), lw=6, label=h)
    ax.set_xticks(np.arange(len(xs)), xs)
    ax.set(ylabel=value, title=title)
    ax.legend(fontsize=7, ncols=min(len(hues), 3))
    fig.tight_layout()
    if bars:
        pfig = px.bar(df, x=x, y=value, color=hue, barmode="group", title=title, template="plotly_white")
    else:
        pfig = px.box(df, x=x, y=value, color=hue, title=title, template="plotly_white", points=False)
    return fig, pfig


def paired_dots(df: pd.DataFrame, columns: list[str], pair: tuple[str, str], by: str, unit: str, title: str,
                notes: dict[str, str] | None = None):
    """One panel per column: each ``unit``'s (e.g. seed's) two values, of ``pair`` in column ``by``,
    joined by a line and labelled with the unit; ``notes[column]`` under its panel (e.g. its controls)."""
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    wide = {name: df[df[by] == name].set_index(unit) for name in pair}
    for ax, column in zip(axes.flat, columns):
        for u in wide[pair[0]].index:
            ys = [wide[name].loc[u, column] for name in pair]
            ax.plot([0, 1], ys, "o-", color="0.4", alpha=0.7)
            ax.annotate(str(u), (0, ys[0]), xytext=(-12, 0), textcoords="offset points", fontsize=7, va="center")
        ax.set_xticks([0, 1], list(pair))
        ax.set_xlim(-0.4, 1.3)
        ax.set_title(column, fontsize=9)
        if notes and column in notes:
            ax.set_xlabel(textwrap.fill(notes[column], 48), fontsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def pair_heatmaps(matrices: dict[str, pd.DataFrame], title: str, higher_is_better: bool = True, fmt: str = ".2f"):
    """One heatmap per reference, stacked: rows are methods (ceilings last, below a line),
    columns are 'source → target' pairs; every cell annotated. Greener is better."""
    fig, axes = plt.subplots(len(matrices), 1, squeeze=False,
                             figsize=(1.0 + 0.62 * max(m.shape[1] for m in matrices.values()),
                                      1.2 + sum(0.42 * m.shape[0] + 0.9 for m in matrices.values())))
    cmap = "RdYlGn" if higher_is_better else "RdYlGn_r"
    for ax, (name, mat) in zip(axes[:, 0], matrices.items()):
        values = mat.to_numpy(float)
        finite = values[np.isfinite(values)]
        ax.imshow(values, cmap=cmap, aspect="auto", vmin=finite.min(), vmax=finite.max())
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=7)
        ax.set_title(name, fontsize=9)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=6)
        ceilings = [i for i, m in enumerate(mat.index) if str(m).startswith("ceiling")]
        if ceilings:
            ax.axhline(min(ceilings) - 0.5, color="k", lw=1.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusions(matrices: dict[str, pd.DataFrame], title: str):
    """One heatmap per method, side by side: rows the source scanners, columns the scanner a
    classifier names, each cell the share of the row's images (:func:`nbutils.classifier.confusion`).
    A diagonal is a source still recognised; one column for every row, one look for all."""
    fig, axes = plt.subplots(1, len(matrices), squeeze=False,
                             figsize=(0.4 + 2.3 * len(matrices), 1.2 + 0.45 * max(len(m) for m in matrices.values())))
    for ax, (name, mat) in zip(axes[0], matrices.items()):
        values = mat.to_numpy(float)
        ax.imshow(values, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(mat.shape[0]), mat.index if ax is axes[0, 0] else [], fontsize=7)
        ax.set_xlabel("named", fontsize=7)
        ax.set_title(name, fontsize=9)
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, format(v, ".2f"), ha="center", va="center", fontsize=6,
                    color="white" if v > 0.6 else "black")
    axes[0, 0].set_ylabel("source", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def collapse_diagnostics(kl_per_dim: np.ndarray, occupancy: np.ndarray, title: str):
    """Two bar charts: the KL each latent dimension carries (sorted) and each component's share."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw=dict(width_ratios=[2, 1]))
    kl = np.sort(np.asarray(kl_per_dim))[::-1]
    a.bar(np.arange(len(kl)), kl, color="tab:blue")
    a.set(xlabel="latent dimension (sorted)", ylabel="KL (nats)", title=f"KL per dimension, total {kl.sum():.1f} nats")
    b.bar(np.arange(len(occupancy)), occupancy, color="tab:orange")
    b.axhline(1 / len(occupancy), color="k", lw=1, ls="--", label="uniform")
    b.set(xlabel="component", ylabel="share of training slices", title="component occupancy", xticks=range(len(occupancy)))
    b.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
