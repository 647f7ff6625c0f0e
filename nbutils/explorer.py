"""An interactive explorer of a trained stage-2 model for JupyterLab (notebook 11).

Pick a held-out slice and its source scanner, then a mode: scanner-free (a random attribute
from a seed, c = 0), a target scanner (reference-guided), or a point on the line between two
GM-VAE components (z^a = (1 - t) mu_i + t mu_j, c = (1 - t) e_i + t e_j). The figure shows
input, output, their difference, and where the input's attribute code falls in the PCA of the
training slices' attribute codes. :meth:`Explorer.figure` is plain plotly (testable headless);
:meth:`Explorer.widget` wraps it in ipywidgets controls.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from . import methods, plots
from .data import Slices
from .data import for_run as slices_for_run
from .harmonize import Harmonizer

INTERPOLATE = "between two components"
SCANNER_FREE = "scanner-free"


class Explorer:
    def __init__(self, harm: Harmonizer, train: Slices, test: Slices, seed: int = 0):
        from sklearn.decomposition import PCA

        self.harm, self.model, self.train, self.test, self.seed = harm, harm.model, train, test, seed
        self.domains = harm.domains
        self.train_codes = self.attribute_codes(np.asarray(train.images, np.float32), train.labels)
        self.pca = PCA(2).fit(self.train_codes)
        self.train_xy = self.pca.transform(self.train_codes)

    @classmethod
    def from_run(cls, run, method: str | methods.Method = methods.GMM_DRIT) -> Explorer:
        """The explorer of the run's trained ``method`` (name or slug) on its held-out slices."""
        harm = Harmonizer.from_run(run, method)
        return cls(harm, slices_for_run(run, "train"), slices_for_run(run, "test"), seed=run.seed)

    @property
    def gmm(self) -> bool:
        return self.model.cfg.variant == "gmm-drit"

    def modes(self) -> list[str]:
        return [SCANNER_FREE, *self.domains] + ([INTERPOLATE] if self.gmm else [])

    @torch.no_grad()
    def attribute_codes(self, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> np.ndarray:
        out = []
        device = self.harm.device
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).unsqueeze(1).to(device) * 2 - 1
            lab = torch.from_numpy(np.array(labels[s:s + batch])).long().to(device)
            out.append(self.model.attributes(x, lab, sample=False)[0].cpu().numpy())
        return np.concatenate(out)

    def component_mean(self, k: int) -> np.ndarray:
        y = torch.nn.functional.one_hot(torch.tensor([k]), self.model.cfg.k).float().to(self.harm.device)
        with torch.no_grad():
            return self.model.attribute.gmvae.prior(y)[0][0].cpu().numpy()

    def output(self, index: int, mode: str, t: float = 0.5, components: tuple[int, int] = (0, 1),
               seed: int | None = None) -> np.ndarray:
        """The harmonized test slice ``index`` under ``mode`` (see :meth:`modes`)."""
        if not 0 <= index < len(self.test):
            raise ValueError(f"slice {index} does not exist: the test split has {len(self.test)}")
        img = np.asarray(self.test.images[index], np.float32)
        seed = self.seed if seed is None else seed
        if mode == SCANNER_FREE:
            return self.harm.scanner_free(img, seed)[0]
        if mode in self.domains:
            return self.harm.to_domain(img, self.domains.index(mode))[0]
        if mode == INTERPOLATE and self.gmm:
            i, j = components
            k = self.model.cfg.k
            if not (0 <= i < k and 0 <= j < k):
                raise ValueError(f"components must be in 0..{k - 1}, got {components}")
            za = (1 - t) * self.component_mean(i) + t * self.component_mean(j)
            c = (1 - t) * np.eye(k)[i] + t * np.eye(k)[j]
            return self.harm.with_code(img, za, c)[0]
        raise ValueError(f"unknown mode {mode!r}: choose one of {self.modes()}")

    def figure(self, index: int, mode: str, t: float = 0.5, components: tuple[int, int] = (0, 1),
               seed: int | None = None) -> go.Figure:
        img = np.asarray(self.test.images[index], np.float32)
        out = self.output(index, mode, t, components, seed)
        row = self.test.manifest.iloc[index]
        xy = self.pca.transform(self.attribute_codes(img[None], self.test.labels[index:index + 1]))[0]
        fig = make_subplots(1, 4, subplot_titles=[f"input ({row['domain']})", f"output ({mode})",
                                                  "output − input (blue −0.5 … red +0.5)",
                                                  "attribute PCA (training slices)"],
                            column_widths=[0.22, 0.22, 0.22, 0.34])
        for col, (im, cmap, lim) in enumerate([(img, "gray", (0, 1)), (out, "gray", (0, 1)),
                                               (out - img, "RdBu_r", (-0.5, 0.5))], start=1):
            fig.add_trace(go.Image(source=_png(im, cmap, lim), hoverinfo="skip"), 1, col)
            fig.update_xaxes(visible=False, row=1, col=col)
            fig.update_yaxes(visible=False, row=1, col=col)
        names = np.asarray(self.domains)[self.train.labels]
        for name in self.domains:
            sel = names == name
            fig.add_trace(go.Scatter(x=self.train_xy[sel, 0], y=self.train_xy[sel, 1], mode="markers",
                                     marker=dict(size=4, opacity=0.5), name=name), 1, 4)
        fig.add_trace(go.Scatter(x=[xy[0]], y=[xy[1]], mode="markers", name="this slice",
                                 marker=dict(size=14, symbol="x", color="black")), 1, 4)
        fig.update_xaxes(title_text="PC1 of z^a", row=1, col=4)
        fig.update_yaxes(title_text="PC2 of z^a", row=1, col=4)
        fig.update_layout(height=340, width=1150, template="plotly_white", margin=dict(t=40, b=10),
                          title=dict(text=f"{row['subject']} · slice {row['slice_index']} · {plots.SIMULATED}", x=0.5,
                                     font=dict(size=12)))
        return fig

    def widget(self):
        """The live explorer (ipywidgets). In a headless run (``$NB_HEADLESS`` set: ``make run``,
        ``make test``) the first slice's static figure instead: a cell that displays widgets
        sometimes never returns under nbclient (jupyter/nbclient#312; seen here in 1 of 3 clean-clone
        pipeline runs, the kernel idle and the client waiting)."""
        if os.environ.get("NB_HEADLESS"):
            print("headless run: the live explorer appears when this notebook runs in JupyterLab")
            return self.figure(0, SCANNER_FREE)
        import ipywidgets as w
        from IPython.display import display

        n = len(self.test)
        index = w.IntSlider(0, 0, n - 1, description="test slice")
        mode = w.Dropdown(options=self.modes(), value=SCANNER_FREE, description="mode")
        t = w.FloatSlider(0.5, min=0, max=1, step=0.05, description="t (i → j)")
        k = self.model.cfg.k
        ci = w.Dropdown(options=list(range(k)), value=0, description="component i")
        cj = w.Dropdown(options=list(range(k)), value=min(1, k - 1), description="component j")
        draw = w.Button(description="random attribute", tooltip="scanner-free with a new random z^a")
        seed = w.IntText(self.seed, description="seed")
        out = w.Output()

        def update(*_):
            with out:
                out.clear_output(wait=True)
                display(self.figure(index.value, mode.value, t.value, (ci.value, cj.value), seed.value))

        def new_attribute(_):
            seed.value = int(np.random.default_rng().integers(0, 2**31 - 1))
            mode.value = SCANNER_FREE
            update()

        for c in (index, mode, t, ci, cj, seed):
            c.observe(update, names="value")
        draw.on_click(new_attribute)
        update()
        controls = w.HBox([w.VBox([index, mode, seed, draw]), w.VBox([t, ci, cj])])
        return w.VBox([controls, out])


def _png(image: np.ndarray, cmap: str, lim: tuple[float, float]) -> str:
    """An image as a PNG data URI through a matplotlib colormap: a 1 mm slice is a few tens of kB
    this way against ~200 kB as a plotly heatmap's numbers, so the explorer redraws quickly."""
    import base64
    import io

    from matplotlib import colormaps
    from PIL import Image

    rgb = colormaps[cmap]((np.clip(image, *lim) - lim[0]) / (lim[1] - lim[0]))[..., :3]
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def slice_table(test: Slices) -> pd.DataFrame:
    """Index, subject, slice and scanner of every test slice (to pick one by number)."""
    return test.manifest[["subject", "slice_index", "domain"]].rename_axis("test slice").reset_index()
