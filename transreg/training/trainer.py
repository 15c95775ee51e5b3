"""One trainer for every registry model.

``Trainer(config).fit()`` trains ``config.model`` on ``config.data`` with
similarity + ``reg_weight`` × regulariser (+ ``dice_weight`` × Dice when labels exist),
Adam/AdamW, constant/poly/cosine schedules with linear warm-up, gradient accumulation and
clipping, mixed precision (``32 | bf16-mixed | 16-mixed``), gradient checkpointing, DDP
under ``torchrun`` (gloo on CPU, NCCL on CUDA), atomic checkpoints every
``run.ckpt_every`` steps and on SIGTERM/Ctrl-C, exact resume, and a run folder::

    OUT/config.yaml          the resolved config
    OUT/metrics.jsonl        one JSON object per step: step, loss, similarity, ...
    OUT/validation.jsonl     one JSON object per validation: step, val_loss, val_dice
    OUT/checkpoints/step_00000100/   model (transreg checkpoint format) + training_state.pt
    OUT/final/               config.json + model.safetensors + README.md (draft zoo card)
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..data import build_datasets
from ..data.sampler import StepBatchSampler
from ..cpu_tuning import return_freed_memory
from .threads import apply_threads
from ..spatial import warp
from .config import ConfigError, TrainConfig
from .distributed import init_distributed
from .objective import build_loss
from .precision import amp_settings
from .runlog import RunLog
from .schedules import lr_factor
from .state import (STATE_FILE, checkpoint_dirs, latest_checkpoint, remove_stale_temporaries, rng_state,
                    seed_everything, set_rng_state)

__all__ = ["Trainer", "TrainingError"]


class TrainingError(RuntimeError):
    """Training stopped (diverged loss, a model that does not fit the data, ...)."""


# --------------------------------------------------------------------------- the trainer


StepCallback = Callable[[int, dict[str, Any]], None]


class Trainer:
    """Trains one model as ``config`` says; see the module docstring for the run folder.

    ``model``, ``train_data`` and ``val_data`` may be given directly (Python use);
    otherwise they are built from the config. ``callbacks`` are called after every
    optimiser step with ``(step, record)`` (the metrics.jsonl record).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False, model: nn.Module | None = None,
                 train_data: Dataset | None = None, val_data: Dataset | None = None,
                 callbacks: list[StepCallback] | None = None, recipe: str | None = None):
        self.config = config
        self.recipe = recipe
        self.resume = resume
        self.callbacks = list(callbacks or [])
        self.run_dir = Path(config.run.out)
        self._stop_signal: int | None = None
        self.last_val: dict[str, float] = {}
        self.step_lr = config.optim.lr
        self.dist, self.device = init_distributed(config.run.device)
        self.threads = apply_threads(config.run.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.run.cudnn_benchmark
        self.amp = amp_settings(config.run.precision, self.device.type)
        self._check_run_dir()
        seed_everything(config.run.seed)
        if train_data is None:
            train_data, built_val = build_datasets(config.data, seed=config.run.seed)
            val_data = val_data if val_data is not None else built_val
        self.train_data, self.val_data = train_data, val_data
        self.ndim = int(getattr(train_data, "ndim"))
        self.num_labels: int | None = getattr(train_data, "num_labels", None)
        self.model = model if model is not None else self._build_model()
        self._check_model()
        self.model.to(self.device)
        if config.model.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
            if self.device.type == "cpu":  # memory-lean: the resident peak follows the live tensors
                return_freed_memory()
        if config.model.freeze_encoder:
            self._freeze_encoder()
        self.loss = build_loss(config.loss, self.num_labels).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters (everything is frozen)")
        opt_cls = torch.optim.AdamW if config.optim.name == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=config.optim.lr, betas=tuple(config.optim.betas),
                                 weight_decay=config.optim.weight_decay)
        o = config.optim
        min_ratio = o.min_lr / o.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, config.run.steps, o.schedule, o.warmup_steps, min_ratio, o.poly_power),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.use_scaler)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._write_run_dir()
        if resume:
            self._load_latest()
        self.ddp_model: nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    # ----------------------------------------------------------------- setup helpers

    def _check_run_dir(self) -> None:
        has_run = (self.run_dir / "metrics.jsonl").exists() or latest_checkpoint(self.run_dir) is not None
        if has_run and not self.resume:
            raise ConfigError(
                f"run folder {str(self.run_dir)!r} already holds a run: pass --resume to continue it "
                f"or choose another --out"
            )

    def _write_run_dir(self) -> None:
        """Create the run folder and its config.yaml (after data and model were checked)."""
        if self.dist.main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            except OSError as err:
                raise ConfigError(f"cannot write the run folder {str(self.run_dir)!r}: {err}") from None
        self._barrier()

    def _build_model(self) -> nn.Module:
        from ..zoo.factory import create_model

        m = self.config.model
        if m.pretrained:
            model = create_model(m.pretrained, pretrained=True)
        else:
            try:
                model = create_model(m.name, **{"ndim": self.ndim, **m.args})
            except TypeError as err:
                raise ConfigError(f"model.args {m.args} do not fit {m.name!r}: {err}") from None
        return self._cascaded(model, m.cascade_passes)

    @staticmethod
    def _cascaded(model: nn.Module, passes: int) -> nn.Module:
        """``model`` as a recursive cascade of ``passes`` (model.cascade_passes; 1: as is)."""
        from ..models.cascade import RecursiveCascade

        if isinstance(model, RecursiveCascade):
            if passes not in (1, model.passes):
                raise ConfigError(f"model.pretrained is a recursive cascade of {model.passes} passes; "
                                  f"model.cascade_passes {passes} does not match it (leave it out or set it to {model.passes})")
            return model
        if passes == 1:
            return model
        if passes < 1:
            raise ConfigError(f"model.cascade_passes must be at least 1, got {passes}")
        return RecursiveCascade.wrapping(model, passes)

    def _check_model(self) -> None:
        model_ndim = getattr(self.model, "ndim", None)
        if model_ndim is not None and model_ndim != self.ndim:
            raise ConfigError(f"the model is {model_ndim}-D but the training data is {self.ndim}-D (data.size / images)")

    def _freeze_encoder(self) -> None:
        network = getattr(self.model, "base", self.model)  # a recursive cascade's shared network
        encoder = getattr(network, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise ConfigError(f"model.freeze_encoder: {type(self.model).__name__} has no .encoder to freeze")
        for p in encoder.parameters():
            p.requires_grad_(False)

    def _barrier(self) -> None:
        if self.dist.world > 1:
            dist.barrier()

    # ----------------------------------------------------------------- checkpoints

    def _training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def _save_model(self, folder: Path) -> None:
        from ..zoo.checkpoint import save_pretrained

        save_pretrained(self.model, folder, preprocessing=self._preprocessing(), card=self._draft_card())

    def _draft_card(self) -> Any:
        """A draft zoo card: training summary and the latest validation Dice."""
        from ..zoo.cards import EvalResult, card_from_config, public_source
        from ..zoo.checkpoint import build_config

        c = self.config
        evaluations = []
        if self.last_val.get("val_dice") is not None:
            source = public_source(c.data.val) if c.data.val else f"{public_source(c.data.train)} (held-out)"
            evaluations.append(EvalResult(dataset=f"validation: {source}", metrics={"dice": self.last_val["val_dice"]},
                                          split=f"{len(self.val_data)} pairs"))
        lines = [
            f"Draft card written by `transreg train` at step {self.step} of {c.run.steps}; edit before publishing.",
            "",
            f"- data: `{public_source(c.data.train)}`, size {c.data.size}, batch {c.data.batch_size} x {self.dist.world} process(es)",
            f"- loss: {c.loss.sim_weight} x {c.loss.similarity} + {c.loss.reg_weight} x {c.loss.regulariser}"
            + (f" + {c.loss.dice_weight} x Dice" if c.loss.dice_weight else ""),
            f"- optimiser: {c.optim.name}, lr {c.optim.lr}, schedule {c.optim.schedule}, precision {c.run.precision}",
            f"- started from: {public_source(c.model.pretrained) if c.model.pretrained else 'random initialisation'}",
            "- resolved recipe: `config.yaml` in the run folder",
        ]
        config = build_config(self.model, self._preprocessing())
        return card_from_config(config, evaluations, name=c.model.name,
                                summary="Trained with the transreg trainer (draft card).",
                                recipe=public_source(self.recipe) if self.recipe else None,
                                extra_sections={"Training": "\n".join(lines)})

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` atomically (a temp folder renamed into place) and
        keep the newest ``run.keep_checkpoints``. Rank 0 writes; others wait."""
        final = self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        if self.dist.main:
            tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._save_model(tmp)
            torch.save(self._training_state(), tmp / STATE_FILE)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoint_dirs(self.run_dir)[: -self.config.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        self.last_checkpoint = final
        return final

    def _load_latest(self) -> None:
        from safetensors.torch import load_file

        if self.dist.main:
            for stale in remove_stale_temporaries(self.run_dir):
                print(f"removed {stale}, a checkpoint a stopped run left half-written", file=sys.stderr)
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            if self.dist.main:
                print(f"no checkpoint in {self.run_dir}/checkpoints: starting from step 0", file=sys.stderr)
            return
        weights = load_file(str(ckpt / "model.safetensors"), device=str(self.device))
        self.model.load_state_dict(weights, strict=True)
        state = torch.load(ckpt / STATE_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.last_checkpoint = ckpt
        if self.dist.main:
            print(f"resumed from {ckpt} (step {self.step})", file=sys.stderr)

    # ----------------------------------------------------------------- data

    def _batches(self) -> Iterator[dict[str, Tensor]]:
        d = self.config.data
        sampler = StepBatchSampler(len(self.train_data), d.batch_size, self.dist.world, self.dist.rank,
                                   self.config.run.seed, start_batch=self.step * self.config.optim.accumulate)
        loader = DataLoader(self.train_data, batch_sampler=sampler, num_workers=d.num_workers,
                            generator=torch.Generator(), persistent_workers=d.num_workers > 0)
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp.dtype)

    def _preprocessing(self) -> dict[str, Any]:
        """What the trained model expects (the checkpoint's ``preprocessing``)."""
        d = self.config.data
        synthetic = d.train.startswith("synthetic:")
        inherited = dict(getattr(self.model, "preprocessing", None) or {})
        return {
            **inherited,
            "size": d.size if d.size is not None else inherited.get("size"),
            "spacing": d.spacing if d.spacing is not None else inherited.get("spacing"),
            "orientation": None if synthetic or self.ndim == 2 else "RAS",
            "intensity": {"method": "minmax"} if synthetic else {"method": "percentile", "lower": 0.5, "upper": 99.5},
            "modality": inherited.get("modality") or ("synthetic (any contrast)" if synthetic else None),
        }

    # ----------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean over the validation pairs of the loss, the % of folding voxels and (with
        labels) the Dice averaged over the non-background labels, the model in eval mode.
        Rank 0 only."""
        from ..metrics import dice as dice_metric
        from ..metrics import folding_percent, structure_mean

        if self.val_data is None or len(self.val_data) == 0:
            return {}
        self.model.eval()
        losses, dices, folding = [], [], []
        for i in range(len(self.val_data)):
            item = self.val_data[i]
            batch = {k: v[None].to(self.device) for k, v in item.items()}
            with torch.no_grad(), self._autocast():
                out = self.model(batch["moving"], batch["fixed"])
                loss, _ = self.loss(out, batch)
            losses.append(float(loss))
            folding.append(folding_percent(out.flow.float()))
            if "moving_labels" in batch:
                warped = warp(batch["moving_labels"], out.flow.float(), mode="nearest")
                score = structure_mean(dice_metric(warped[0, 0].cpu(), batch["fixed_labels"][0, 0].cpu()))
                if not math.isnan(score):
                    dices.append(score)
        self.model.train()
        result = {"val_loss": sum(losses) / len(losses), "val_folding": sum(folding) / len(folding)}
        if dices:
            result["val_dice"] = sum(dices) / len(dices)
        return result

    def _validate_and_log(self, log: RunLog) -> float | None:
        if not self.dist.main:
            self._barrier()
            return None
        result = self.validate()
        self.last_val = result
        if result:
            log.val({"step": self.step, **result})
        self._barrier()
        return result.get("val_dice")

    # ----------------------------------------------------------------- the loop

    def _signal_handler(self, signum: int, frame: Any) -> None:
        """First SIGTERM/SIGINT: finish the step, checkpoint, stop. A second one: stop now."""
        if self._stop_signal is not None:
            raise KeyboardInterrupt(f"stopped by a second signal at step {self.step}, without a checkpoint")
        self._stop_signal = signum

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` OR-ed over all ranks (so that every rank takes the same branch)."""
        if self.dist.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0])

    def _train_step(self, batches: Iterator[dict[str, Tensor]]) -> tuple[Tensor, dict[str, float], float | None]:
        accumulate = self.config.optim.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        parts_sum: dict[str, float] = {}
        for micro in range(accumulate):
            batch = next(batches)
            sync = micro == accumulate - 1 or self.dist.world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx:
                with self._autocast():
                    out = self.ddp_model(batch["moving"], batch["fixed"])
                    loss, parts = self.loss(out, batch)
                if self._any_rank(not bool(torch.isfinite(loss))):  # every rank agrees, so none waits in backward's all-reduce
                    nan = torch.full((), float("nan"), device=self.device)
                    return (loss.detach() if not torch.isfinite(loss) else nan), parts, None
                self.scaler.scale(loss / accumulate).backward()
            total = total + loss.detach() / accumulate
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / accumulate
        return total, parts_sum, self._optimizer_step()

    def _check_gradients(self) -> None:
        """Stop on non-finite gradients (float16 runs leave them to the GradScaler, which
        skips such steps and lowers its scale)."""
        bad = [n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if self._any_rank(bool(bad)):
            hint = ""
            if self.device.type == "cpu" and self.amp.dtype == torch.bfloat16:
                hint = (" PyTorch's CPU bfloat16 conv3d weight gradient is unreliable for feature maps only 2 voxels "
                        "long on their first axis (e.g. a TransMorph decoder at inputs below 64 voxels): use "
                        "run.precision 32 on the CPU or a larger data.size.")
            raise self._diverged(f"non-finite gradients ({', '.join(bad[:3]) or 'on another rank'})", hint)

    def _diverged(self, what: str, hint: str = "") -> TrainingError:
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint was written before it")
        return TrainingError(
            f"{what} at step {self.step + 1}: training stopped; {where}.{hint or ' Lower optim.lr, set optim.clip_grad, or use run.precision 32/bf16-mixed.'}"
        )

    def _optimizer_step(self) -> float | None:
        if not self.amp.use_scaler:
            self._check_gradients()
        grad_norm = None
        clip = self.config.optim.clip_grad
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return grad_norm

    def fit(self) -> Path:
        """Train until ``run.steps``; return the final checkpoint folder (``OUT/final``).

        On SIGTERM/SIGINT a checkpoint is written and :class:`KeyboardInterrupt` raised;
        a non-finite loss raises :class:`TrainingError` naming the last good checkpoint."""
        run = self.config.run
        log = RunLog(self.run_dir, self.dist.main, run.steps, self.step)
        handlers = {sig: signal.signal(sig, self._signal_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop(log)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            log.close()
            if self.dist.owns_group:
                dist.destroy_process_group()

    def _loop(self, log: RunLog) -> Path:
        run = self.config.run
        self.model.train()
        val_dice = self._validate_and_log(log) if self.step == 0 else None
        if self.step == 0 and val_dice is not None:
            log.message(f"step 0: val dice {val_dice:.3f}")
        batches = self._batches()
        start, start_step = time.perf_counter(), self.step
        while self.step < run.steps:
            loss, parts, grad_norm = self._train_step(batches)
            if not torch.isfinite(loss):
                raise self._diverged(f"the loss became {float(loss)}")
            self.step += 1
            elapsed = time.perf_counter() - start
            steps_per_s = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
            record: dict[str, Any] = {"step": self.step, "loss": float(loss), **parts,
                                      "lr": self.step_lr, "steps_per_s": steps_per_s}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            if self.amp.use_scaler:
                record["loss_scale"] = float(self.scaler.get_scale())
            log.step(record)
            for callback in self.callbacks:
                callback(self.step, record)
            if self.step % run.val_every == 0 or self.step == run.steps:
                val_dice = self._validate_and_log(log)
            if self.step % run.log_every == 0 or self.step == run.steps:
                log.progress(self.step, float(loss), record["lr"], steps_per_s, val_dice)
            if self.step % run.ckpt_every == 0 and self.step < run.steps:
                self.save_checkpoint()
            if self._any_rank(self._stop_signal is not None) and self.step < run.steps:
                path = self.save_checkpoint()
                log.message(f"stopped by signal at step {self.step}; checkpoint {path}; continue with --resume")
                raise KeyboardInterrupt(f"training stopped at step {self.step}; resume from {path}")
        self.save_checkpoint()
        final = self.run_dir / "final"
        if self.dist.main:
            tmp = final.with_name(f".final.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            self._save_model(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            log.message(f"done: {run.steps} steps; final checkpoint {final}")
        self._barrier()
        return final
