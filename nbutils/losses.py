"""Stage-2 losses: non-saturating GAN terms with logits, and BCE scanner classification on
one-hot (or all-zero, "no scanner") targets, as the thesis describes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def discriminator(d, real: torch.Tensor, fake: torch.Tensor, c_real: torch.Tensor) -> torch.Tensor:
    """Real/fake on both, plus the scanner head on real images only (their inferred code)."""
    adv_real, cls_real = d(real)
    adv_fake, _ = d(fake)
    return bce(adv_real, torch.ones_like(adv_real)) + bce(adv_fake, torch.zeros_like(adv_fake)) + bce(cls_real, c_real)


def generator(d, fake: torch.Tensor, c_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial, classification): look real, and be classified as ``c_target`` (the target
    scanner's one-hot code, or zeros for scanner-free outputs)."""
    adv, cls = d(fake)
    return bce(adv, torch.ones_like(adv)), bce(cls, c_target)
