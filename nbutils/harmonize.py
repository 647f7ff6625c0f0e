"""Harmonize with a trained stage-2 model: slices in, slices out (images in [0, 1]).

- **scanner-free**: z^a ~ N(0, I) drawn from a fixed seed (the same for every image, so a
  whole data set is mapped to one common appearance), c = 0;
- **domain-to-domain, reference-guided**: z^a = the attribute mean of a reference image of
  the target scanner, c = the target's one-hot code;
- **domain-to-domain, sampled**: z^a drawn from the target's GM-VAE component p(z|y=k)
  (GMM-DRIT) or from N(0, I) (DRIT++), c = the target's one-hot code.

A :class:`Harmonizer` given the training slices (``Harmonizer(model, train)``, or
:meth:`Harmonizer.from_run` for a run's checkpoint) also knows the scanners by name: their codes
(:func:`scanner_codes`) and reference slices (:func:`references`), so that every caller translates
to scanner ``b`` the same way (:meth:`Harmonizer.to_domain`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import drit, gmvae, methods
from .data import Slices
from .data import for_run as slices_for_run
from .drit import Translator
from .train import pick_device


def scanner_codes(model: Translator, train: Slices) -> pd.DataFrame:
    """For each scanner: the code c to condition G on and the GM-VAE component to sample z^a
    from. With known labels (and for DRIT++) the code is the scanner itself; with inferred
    codes (GMM-DRIT) it is the component matched to that scanner on its training slices
    (:func:`nbutils.gmvae.scanner_components`, the one-to-one matching E1 scores)."""
    rows = []
    comps = None
    if model.cfg.variant == "gmm-drit":
        comps = gmvae.scanner_components(model.attribute.gmvae, train.images, train.labels, len(train.domains))
    for b, name in enumerate(train.domains):
        comp = int(comps[b]) if comps is not None else None
        code = b if (model.cfg.variant == "drit++" or model.cfg.known_labels) else comp
        rows.append(dict(scanner=name, code=code, component=comp))
    return pd.DataFrame(rows)


def references(train: Slices, n: int = 16, seed: int = 0) -> dict[int, np.ndarray]:
    """``n`` random training slices of each scanner, for reference-guided translation."""
    rng = np.random.default_rng(seed)
    out = {}
    for b in range(len(train.domains)):
        rows = np.flatnonzero(train.labels == b)
        out[b] = np.asarray(train.images[np.sort(rng.choice(rows, min(n, len(rows)), replace=False))], np.float32)
    return out


class Harmonizer:
    """A trained stage-2 model as a harmonizer. Given the training slices ``train`` it also knows
    the scanners by name (:attr:`domains`), their codes and reference slices (drawn with ``seed``)."""

    def __init__(self, model: Translator, train: Slices | None = None, *, seed: int = 0, batch_size: int = 32):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.k, self.attr = model.cfg.k, model.cfg.attr
        self.domains = list(train.domains) if train is not None else []
        self.codes = scanner_codes(model, train) if train is not None else None
        self.references = references(train, seed=seed) if train is not None else {}

    @classmethod
    def from_run(cls, run, method: str | methods.Method = methods.GMM_DRIT, checkpoint=None,
                 known_labels: bool = False) -> Harmonizer:
        """The run's trained ``method`` (default ``<run>/checkpoints/<method's checkpoint>``, which
        must have been trained with the run's seed; else the file ``checkpoint``, any model), with
        the run's training slices and seed."""
        method = methods.get(method)
        path = checkpoint or run.checkpoints / method.checkpoint(known_labels)
        model = drit.from_checkpoint(run.require(path, method.notebook), device=pick_device(),
                                     seed=None if checkpoint else run.seed)
        return cls(model, slices_for_run(run, "train"), seed=run.seed)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim == 2:
            images = images[None]
        shape = self.model.cfg.slices
        if images.ndim != 3 or images.shape[1:] != shape:
            raise ValueError(f"expected slices of shape (N, {shape[0]}, {shape[1]}) in [0, 1] "
                             f"(the size of the model's training slices), got {images.shape}")
        return images

    @torch.no_grad()
    def translate(self, images: np.ndarray, codes, desc: str | None = None) -> np.ndarray:
        """``images`` translated with each (z^a, c) of ``codes`` (tensors of one row, or of one row
        per image; :meth:`scanner_free_code`, :meth:`domain_code`, ...): (len(codes), N, H, W).
        The model's content encoder reads each image once for all codes. ``desc``: show a
        progress bar with this title."""
        images = self._check(images)
        rows = lambda v, s, n: v.expand(n, -1) if len(v) == 1 else v[s: s + n]
        out = [[] for _ in codes]
        for s in tqdm(range(0, len(images), self.batch_size), desc=desc, disable=desc is None, leave=False):
            x = torch.from_numpy(images[s: s + self.batch_size]).unsqueeze(1).to(self.device) * 2 - 1
            n = len(x)
            for o, y in zip(out, self.model.translate_each(x, [(rows(za, s, n), rows(c, s, n)) for za, c in codes])):
                o.append(((y + 1) / 2).clamp(0, 1)[:, 0].cpu().numpy())
        if not len(images) or not codes:
            return np.zeros((len(codes), len(images), *self.model.cfg.slices), np.float32)
        return np.stack([np.concatenate(o) for o in out])

    def outputs(self, images: np.ndarray, seed: int = 0, targets: bool = True, sampled: bool = False,
                desc: str | None = None) -> dict[str, np.ndarray]:
        """In one pass over ``images``: "scanner-free", its outputs (N, H, W) with the z^a ``seed``
        draws; "reference-guided", with ``targets``, the translations to every training scanner
        (K, N, H, W; without, (0, N, H, W)); "sampled", with ``sampled``, the same with z^a sampled."""
        k = len(self.domains) if targets else 0
        codes = [self.domain_code(b) for b in range(k)] + [self.sampled_code(b, seed) for b in range(k) if sampled]
        out = self.translate(images, codes + [self.scanner_free_code(seed)], desc)
        return {"reference-guided": out[:k]} | ({"sampled": out[k: 2 * k]} if sampled else {}) | {"scanner-free": out[-1]}

    def with_code(self, images: np.ndarray, za: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Translate with any attribute code ``za`` (attr,) and scanner code ``c`` (K,), e.g. a
        point between two GM-VAE components (notebook 11)."""
        za = torch.as_tensor(np.asarray(za, np.float32)).reshape(1, self.attr).to(self.device)
        c = torch.as_tensor(np.asarray(c, np.float32)).reshape(1, self.k).to(self.device)
        return self.translate(images, [(za, c)])[0]

    def scanner_free_code(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(z^a ~ N(0, I) drawn with ``seed``, c = 0): the scanner-free code."""
        za = torch.randn(1, self.attr, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return za, torch.zeros(1, self.k, device=self.device)

    def scanner_free(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        return self.translate(images, [self.scanner_free_code(seed)])[0]

    def scanner_free_draws(self, images: np.ndarray, seeds) -> np.ndarray:
        """The scanner-free outputs of ``images`` with the z^a each seed draws: (len(seeds), N, H, W)."""
        return self.translate(images, [self.scanner_free_code(s) for s in seeds])

    def scanner_code(self, target: int, reference: np.ndarray | None = None, component: int | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The code (z^a, c) of scanner code ``target``: z^a is the mean attribute of ``reference``
        slices of the target, else sampled (GMM-DRIT: from GM-VAE ``component``, by default
        ``target``; DRIT++: from N(0, I)) with a fixed seed."""
        if not 0 <= target < self.k:
            raise ValueError(f"target scanner {target} does not exist: the model knows {self.k} (0..{self.k - 1})")
        c = F.one_hot(torch.tensor([target]), self.k).float().to(self.device)
        if reference is not None:
            ref = torch.from_numpy(self._check(reference)).unsqueeze(1).to(self.device) * 2 - 1
            with torch.no_grad():
                za = self.model.attributes(ref, torch.full((len(ref),), target, device=self.device),
                                           sample=False)[0].mean(0, keepdim=True)
        elif self.model.cfg.variant == "gmm-drit":
            g = torch.Generator().manual_seed(seed)  # on the CPU: the same z^a whatever the model's device
            za = self.model.attribute.sample(target if component is None else component, 1, g)
        else:
            za = torch.randn(1, self.attr, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return za, c

    def to_scanner(self, images: np.ndarray, target: int, reference: np.ndarray | None = None,
                   component: int | None = None, seed: int = 0) -> np.ndarray:
        """Translate to scanner code ``target`` (:meth:`scanner_code`)."""
        return self.translate(images, [self.scanner_code(target, reference, component, seed)])[0]

    def _domain(self, b: int) -> int:
        if self.codes is None:
            raise ValueError("this Harmonizer does not know the scanners: build it with the training slices, "
                             "Harmonizer(model, train), or with Harmonizer.from_run(run, method)")
        if not 0 <= b < len(self.domains):
            raise ValueError(f"scanner {b} does not exist: the model was trained on {self.domains}")
        return int(self.codes.code[b])

    def domain_code(self, b: int, reference: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The code of training scanner ``b`` (an index of :attr:`domains`), guided by ``reference``
        slices of it (default: the run's reference slices of ``b``)."""
        return self.scanner_code(self._domain(b), reference=self.references[b] if reference is None else reference)

    def to_domain(self, images: np.ndarray, b: int, reference: np.ndarray | None = None) -> np.ndarray:
        """``images`` translated to training scanner ``b`` (:meth:`domain_code`)."""
        return self.translate(images, [self.domain_code(b, reference)])[0]

    def to_every_domain(self, images: np.ndarray) -> np.ndarray:
        """``images`` translated to every training scanner, reference-guided: (K, N, H, W)."""
        return self.translate(images, [self.domain_code(b) for b in range(len(self.domains))])

    def sampled_code(self, b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The code of training scanner ``b`` with z^a sampled (GMM-DRIT: from the GM-VAE component
        of ``b``; DRIT++: from N(0, I)) with a fixed seed."""
        comp = self.codes.component[b] if self.codes is not None else None
        return self.scanner_code(self._domain(b), component=None if pd.isna(comp) else int(comp), seed=seed)

    def sampled_to_domain(self, images: np.ndarray, b: int, seed: int = 0) -> np.ndarray:
        """``images`` translated to training scanner ``b``, z^a sampled (:meth:`sampled_code`)."""
        return self.translate(images, [self.sampled_code(b, seed)])[0]


def harmonize_volume(harm: Harmonizer, path, out_path, mode: str = "scanner-free", target: int | None = None,
                     reference: np.ndarray | None = None, seed: int = 0, progress: bool = True):
    """Harmonize one NIfTI volume registered to MNI space and save it with the input's affine
    and header: coronal slices -> model size -> harmonized in batches -> 182 x 182 -> volume
    -> back onto the input's grid, shape (an ``X x Y x Z x 1`` input stays 4-D) and orientation
    -> intensities in the input's range.

    ``mode`` is ``"scanner-free"`` or ``"to-scanner"`` (then ``target`` is one of the training
    scanners of ``harm``, an index of ``harm.domains``, and ``reference`` optional slices of it;
    default: its training reference slices). Voxels outside the brain keep
    their input values. The output is written atomically as float32."""
    from pathlib import Path

    import nibabel as nib
    from scipy import ndimage
    from skimage.transform import resize

    from .data import MASK_THRESHOLD, resize_slices
    from .io import atomic_path
    from .volumes import (MNI_AFFINE, MNI_SHAPE, DataError, coronal_slice, coronal_to_volume, load_volume,
                          normalisation_range, regrid, to_mni_grid)

    if mode not in ("scanner-free", "to-scanner"):
        raise ValueError(f"mode must be 'scanner-free' or 'to-scanner', got {mode!r}")
    if mode == "to-scanner" and target is None:
        raise ValueError("mode 'to-scanner' needs a target scanner")
    canon = load_volume(path)  # checks the file (clear errors); canonical RAS, float32
    original = nib.load(str(path))
    data = canon.get_fdata(dtype=np.float32)
    lo, hi = normalisation_range(data)
    norm = np.clip((data - lo) / (hi - lo), 0, 1)
    vol = to_mni_grid(nib.Nifti1Image(norm, canon.affine), source=path)
    ys = np.flatnonzero((vol > MASK_THRESHOLD).sum(axis=(0, 2)) > 0)
    if not len(ys):
        raise DataError(f"{path}: no brain found on the MNI grid; is it skull-stripped and registered?")
    size = harm.model.cfg.slices
    out = vol.copy()
    for start in tqdm(range(0, len(ys), harm.batch_size), desc=f"harmonizing {Path(path).name}", disable=not progress):
        chunk = ys[start: start + harm.batch_size]
        slices = resize_slices(np.stack([coronal_slice(vol, y) for y in chunk]), size[0])
        done = harm.scanner_free(slices, seed) if mode == "scanner-free" else \
            harm.to_domain(slices, target, reference=reference)
        for y, s in zip(chunk, done):
            out[:, y, :] = coronal_to_volume(s if s.shape == (182, 182) else resize(s, (182, 182), order=1, preserve_range=True))
    # back from the MNI grid onto the (canonical) input grid, then the input's orientation
    vox = np.linalg.inv(MNI_AFFINE) @ canon.affine  # input voxel -> MNI voxel
    back = regrid(out, vox, data.shape, order=1)
    # the voxels written back: the head in each coronal plane, dark voxels it encloses (CSF) included
    inside = np.stack([ndimage.binary_fill_holes(vol[:, y, :] > MASK_THRESHOLD) for y in range(vol.shape[1])], axis=1)
    brain = regrid(inside.astype(np.float32), vox, data.shape, order=0) > 0.5
    result = np.where(brain, back * (hi - lo) + lo, data).astype(np.float32)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(canon.affine),
                                           nib.orientations.io_orientation(original.affine))
    result = nib.orientations.apply_orientation(result, ornt).reshape(original.shape)  # X x Y x Z x 1 stays so
    header = original.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(result, original.affine, header)
    img.header.set_slope_inter(1, 0)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        nib.save(img, str(tmp))
    return Path(out_path)
