"""The training objective: similarity + regulariser (+ Dice on warped one-hot labels)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..spatial import warp
from .config import ConfigError

__all__ = ["RegistrationLoss", "build_loss"]


class RegistrationLoss(nn.Module):
    """sim_weight · similarity(warped, fixed) + reg_weight · regulariser(flow)
    [+ dice_weight · Dice(one-hot moving labels warped linearly, fixed labels)].

    Returns the total and its parts (detached floats) for logging."""

    def __init__(self, similarity: nn.Module, sim_weight: float, regulariser: nn.Module, reg_weight: float,
                 dice: nn.Module | None, dice_weight: float, num_labels: int | None):
        super().__init__()
        self.similarity = similarity
        self.sim_weight = sim_weight
        self.regulariser = regulariser
        self.reg_weight = reg_weight
        self.dice = dice
        self.dice_weight = dice_weight
        self.num_labels = num_labels

    def forward(self, out: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        fixed = batch["fixed"]
        sim = self.similarity(out.warped.float(), fixed.float())
        reg = self.regulariser(out.flow.float())
        total = self.sim_weight * sim + self.reg_weight * reg
        parts = {"similarity": float(sim.detach()), "regulariser": float(reg.detach())}
        if self.dice is not None and "moving_labels" in batch:
            onehot = F.one_hot(batch["moving_labels"][:, 0], self.num_labels).movedim(-1, 1).float()
            warped = warp(onehot, out.flow.float())
            dice = self.dice(warped, batch["fixed_labels"])
            total = total + self.dice_weight * dice
            parts["dice_loss"] = float(dice.detach())
        return total, parts


def build_loss(cfg: Any, num_labels: int | None) -> RegistrationLoss:
    """The training loss of ``cfg`` (a :class:`~transreg.training.config.LossConfig`)."""
    from .. import losses

    similarity_cls = {"ncc": losses.NCC, "mse": losses.MSE, "mi": losses.MutualInformation}[cfg.similarity]
    try:
        similarity = similarity_cls(**cfg.similarity_args)
    except TypeError as err:
        raise ConfigError(f"loss.similarity_args {cfg.similarity_args} do not fit {cfg.similarity}: {err}") from None
    regulariser = {"diffusion": losses.Diffusion, "bending": losses.BendingEnergy}[cfg.regulariser]()
    dice = None
    if cfg.dice_weight > 0:
        if not num_labels:
            raise ConfigError("loss.dice_weight > 0 needs training data with label maps")
        dice = losses.DiceLoss()
    return RegistrationLoss(similarity, cfg.sim_weight, regulariser, cfg.reg_weight, dice, cfg.dice_weight, num_labels)
