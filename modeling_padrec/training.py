"""A small, readable training loop on accelerate, shared by every padrec model that trains.

* batches group examples of similar length (when the dataset says its ``lengths``), so compute goes to tokens,
  not padding;
* one process or many (``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...``): the model and optimizer go
  through ``Accelerator.prepare``; batches are sharded by hand from a per-epoch permutation seeded by
  ``seed + epoch``, so the data order is a pure function of (seed, step) and a resumed run sees exactly the
  batches an uninterrupted one would;
* checkpoints every ``save_every`` steps into ``work_dir/<stage>/``: trainable weights and optimizer state in
  safetensors, counters in JSON — nothing is pickled;
* a tqdm progress bar and ``train_log.jsonl`` (one JSON object per logged step) on the main process; its
  ``elapsed_s`` is the stage's training time so far, carried through checkpoints across resumes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .catalog import catalog_record
from .errors import DataError, PadrecError
from .fileio import staged_dir
from .hardware import hardware_info

LOG_NAME = "train_log.jsonl"


@dataclass
class StageConfig:
    """One training stage: how long, how big, how fast."""

    name: str
    max_steps: int
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    save_every: int = 200


def lr_lambda(cfg: StageConfig) -> Callable[[int], float]:
    warmup = max(1, int(cfg.max_steps * cfg.warmup_ratio))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.max_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class Checkpointer:
    """Save and restore (trainable weights, optimizer state, step) for one stage, without pickle."""

    def __init__(self, folder: Path, fingerprint: dict):
        self.folder = folder
        self.fingerprint = fingerprint

    def _params(self, model) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def save(self, model, optimizer, step: int, elapsed_s: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {n: p.detach().contiguous().clone() for n, p in self._params(model).items()}
        opt = {}
        for i, state in optimizer.state_dict()["state"].items():
            for k, v in state.items():
                opt[f"{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).contiguous().clone()
        with staged_dir(self.folder / "ckpt") as tmp:
            save_file(weights, tmp / "weights.safetensors")
            save_file(opt, tmp / "optimizer.safetensors")
            state = {"step": step, "elapsed_s": round(elapsed_s, 2), "fingerprint": self.fingerprint}
            (tmp / "state.json").write_text(json.dumps(state))

    def load(self, model, optimizer) -> tuple[int, float]:
        """Restore the latest checkpoint if it matches this run; return the step to continue from and the
        training time spent up to it (0 for a checkpoint written before checkpoints kept their time)."""
        final = self.folder / "ckpt"
        if not (final / "state.json").is_file():
            return 0, 0.0
        state = json.loads((final / "state.json").read_text())
        if state.get("fingerprint") != self.fingerprint:
            return 0, 0.0  # another run's checkpoint: start over rather than mix runs
        weights = load_file(final / "weights.safetensors")
        params = self._params(model)
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        flat = load_file(final / "optimizer.safetensors")
        sd = optimizer.state_dict()
        restored: dict[int, dict] = {}
        for key, t in flat.items():
            i, k = key.split(".", 1)
            restored.setdefault(int(i), {})[k] = t
        sd["state"] = restored
        optimizer.load_state_dict(sd)
        return int(state["step"]), float(state.get("elapsed_s", 0.0))


def run_settings(settings: dict, drop: tuple[str, ...] = ()) -> dict:
    """A run's settings as its checkpoints record them: without ``drop`` (settings that do not change the
    result), every local path resolved, so a run resumed from another directory or with a path spelled
    another way (relative, absolute, through ``..``) still matches its checkpoint. Hub ids and presets stay."""
    out = {}
    for key, value in settings.items():
        if key in drop:
            continue
        if (
            key in ("data", "target", "target_dir", "base")
            and isinstance(value, str)
            and Path(value).exists()
        ):
            value = str(Path(value).resolve())
        out[key] = value
    return out


def epoch_batches(dataset, batch_size: int, seed: int, group: int = 64) -> list[list[int]]:
    """One epoch's batches, a pure function of ``seed``. If the dataset has ``lengths``, examples of similar
    length share a batch (sorted within windows of ``group`` batches, then the batches shuffled), so little of a
    batch is padding; otherwise plain random batches. Incomplete batches are dropped."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        window = batch_size * group
        order = [
            i
            for w in range(0, len(order), window)
            for i in sorted(order[w : w + window], key=lengths.__getitem__)
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def read_log(path: Path) -> list[dict]:
    """The rows of a ``train_log.jsonl``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, stage: str, start: int) -> None:
    if not path.is_file():
        return
    rows = read_log(path)
    keep = [r for r in rows if r["stage"] != stage or r["step"] <= start]
    if len(keep) != len(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def training_seconds(rows: list[dict]) -> float | None:
    """The training time a ``train_log.jsonl`` records (its rows, parsed), all stages together; None without any.

    A resumed stage goes on from its checkpoint's clock, except from checkpoints written before they kept their
    time, where the clock restarts: each stage's time is the sum of every run's last ``elapsed_s``, a run ending
    where the clock falls. A killed run's time after its last checkpoint went with the log lines cut on resume.
    """
    clocks: dict[str, list[float]] = {}
    for row in rows:
        if "elapsed_s" in row:
            clocks.setdefault(row["stage"], []).append(row["elapsed_s"])
    if not clocks:
        return None
    ends = [a for c in clocks.values() for a, b in zip(c, c[1:], strict=False) if b < a]
    return sum(ends) + sum(c[-1] for c in clocks.values())


def train_stage(
    model,
    dataset,
    collate_fn: Callable,
    cfg: StageConfig,
    *,
    accelerator,
    work_dir: Path,
    seed: int,
    run_fingerprint: dict,
    loss_fn: Callable | None = None,
    log_extra: dict | None = None,
):
    """Train ``model`` on ``dataset`` for ``cfg.max_steps`` steps; returns the unwrapped model.

    ``loss_fn(model, batch) -> (loss, metrics)``; by default the model's own loss (``labels`` in the batch).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpointer(work_dir / cfg.name, {**run_fingerprint, "stage": asdict(cfg), "seed": seed})
    start, spent = ckpt.load(model, optimizer)
    schedule = lr_lambda(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule(start + i))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = len(dataset) // (cfg.batch_size * world)
    if per_epoch == 0:
        raise DataError(
            f"stage {cfg.name}: {len(dataset)} training examples are fewer than one batch of {cfg.batch_size} "
            f"on each of {world} processes; use a smaller --batch-size or more data"
        )
    loss_fn = loss_fn or (lambda m, b: (m(**b).loss, {}))
    log_path = work_dir / LOG_NAME
    if accelerator.is_main_process:
        _truncate_log(log_path, cfg.name, start)  # a resumed run rewrites the steps after its checkpoint
    bar = tqdm(
        total=cfg.max_steps,
        initial=start,
        desc=cfg.name,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    # elapsed_s in the log counts the whole training: a resumed run continues the checkpoint's clock
    t0, running, batches, epoch = time.time() - spent, [], None, -1
    for step in range(start, cfg.max_steps):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            batches = epoch_batches(dataset, cfg.batch_size, seed + epoch)[rank::world]
        # randomness (dropout) is a pure function of (seed, step, rank), so a resumed run matches exactly
        torch.manual_seed(seed * 1_000_003 + step * 101 + rank)
        batch = collate_fn([dataset[i] for i in batches[step % per_epoch]])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss, metrics = loss_fn(model, batch)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            mean = accelerator.reduce(
                torch.tensor(sum(running) / len(running), device=accelerator.device), "mean"
            )
            row = {
                "stage": cfg.name,
                "step": done,
                "loss": round(mean.item(), 5),
                "lr": scheduler.get_last_lr()[0],
                "epoch": epoch,
                "elapsed_s": round(time.time() - t0, 2),
                **{k: round(float(v), 5) for k, v in metrics.items()},
                **(log_extra or {}),
            }
            running = []
            if accelerator.is_main_process:
                bar.set_postfix(loss=row["loss"])
                with open(log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if done % cfg.save_every == 0 and done < cfg.max_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                ckpt.save(accelerator.unwrap_model(model), optimizer, done, time.time() - t0)
            accelerator.wait_for_everyone()
    bar.close()
    accelerator.wait_for_everyone()
    model.eval()
    return accelerator.unwrap_model(model)


# --------------------------------------------------------------------------- the target recipe

# Steps per stage when --max-steps is not given: (stage-1 sequence pretraining, stage-2 LoRA list-wise).
DEFAULT_STEPS = {
    "qwen2-tiny": (300, 300),
    "qwen2-small": (2500, 2000),
    "qwen2-deep": (2500, 2000),
    None: (0, 1000),
}


@dataclass
class TargetTrainArgs:
    """Everything ``padrec train-target`` takes; stored in the target's metadata."""

    data: str
    out: str
    base: str = "qwen2-small"
    list_len: int = 10
    history_len: int = 20
    max_steps: int | None = None
    batch_size: int = 16
    pretrain_lr: float = 2e-3
    lora_lr: float = 2e-3
    lora_r: int = 16
    seed: int = 0
    save_every: int = 200
    # "train+valid": also learn from the validation period (then not for evaluation)
    fit_splits: str = "train"
    # stage 3 (time splits): LoRA steps on "training period → validation period" lists; needs train+valid
    period_steps: int = 0
    period_lr: float = 5e-4

    def stage_steps(self, preset: str | None) -> tuple[int, int]:
        pre, lora = DEFAULT_STEPS.get(preset, DEFAULT_STEPS[None])
        if self.max_steps is not None:
            pre, lora = (self.max_steps if pre else 0), self.max_steps
        return pre, lora


FIT_SPLITS = ("train", "train+valid")


def fit_dataset(dataset, fit_splits: str):
    """The dataset whose ``train`` sequences the target learns from: the training split, or each user's training
    then validation interactions (a time split's most recent period before the test; the cut between the two
    is then a "history → the next period's items" example, the test's own form)."""
    from dataclasses import replace

    if fit_splits not in FIT_SPLITS:
        raise PadrecError(f"--fit-splits must be one of {', '.join(FIT_SPLITS)}, got {fit_splits!r}")
    if fit_splits == "train":
        return dataset
    train = {u: list(s) + list(dataset.valid.get(u, [])) for u, s in dataset.train.items()}
    return replace(dataset, train=train)


def train_target(args: TargetTrainArgs, accelerator=None) -> Path:
    """Stage 1 (preset bases only): causal LM on the interaction sequences. Stage 2: LoRA list-wise."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import get_peft_model

    from .data import load_dataset
    from .examples import ItemEncoder, ListwiseExamples, PeriodExamples, SequenceExamples, collate
    from .target import TargetMeta, is_preset, load_base, lora_config, save_target
    from .tokenization import TokenMap

    if args.period_steps and args.fit_splits != "train+valid":
        raise PadrecError(
            "--period-steps trains on the validation period's lists: it needs --fit-splits train+valid "
            "(the validation split can then not be evaluated)"
        )
    accelerator = accelerator or Accelerator()
    set_seed(args.seed)
    splits = load_dataset(args.data)
    dataset = fit_dataset(splits, args.fit_splits)
    preset = args.base if is_preset(args.base) else None
    model, tokenizer, new_ids = load_base(args.base, dataset.index, seed=args.seed)
    tm = TokenMap.from_tokenizer(tokenizer, dataset.index, vocab_size=model.config.vocab_size)
    enc = ItemEncoder(tm, dataset)
    pad = tm.pad_id
    out = Path(args.out).absolute()
    work = out.with_name(f"{out.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = run_settings(asdict(args), drop=("out", "save_every"))
    pre_steps, lora_steps = args.stage_steps(preset)

    if pre_steps:
        model = train_stage(
            model,
            SequenceExamples(dataset, enc),
            lambda b: collate(b, pad),
            StageConfig(
                "pretrain",
                pre_steps,
                batch_size=args.batch_size * 2,
                lr=args.pretrain_lr,
                weight_decay=0.01,
                save_every=args.save_every,
            ),
            accelerator=accelerator,
            work_dir=work,
            seed=args.seed,
            run_fingerprint=fingerprint,
        )
    base_dir = None
    if preset:  # the trained preset base ships inside the target folder; save it before PEFT wraps it
        base_dir = work / "base"
        if accelerator.is_main_process:
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
        accelerator.wait_for_everyone()
    peft_model = get_peft_model(
        model, lora_config(new_ids, r=args.lora_r, tied=bool(model.config.tie_word_embeddings))
    )
    examples = ListwiseExamples(dataset, enc, args.history_len, args.list_len)
    peft_model = train_stage(
        peft_model,
        examples,
        lambda b: collate(b, pad),
        StageConfig(
            "lora", lora_steps, batch_size=args.batch_size, lr=args.lora_lr, save_every=args.save_every
        ),
        accelerator=accelerator,
        work_dir=work,
        seed=args.seed + 1,
        run_fingerprint=fingerprint,
    )
    if args.period_steps:
        peft_model = train_stage(
            peft_model,
            PeriodExamples(splits, enc, args.history_len, args.list_len),
            lambda b: collate(b, pad),
            StageConfig(
                "period",
                args.period_steps,
                batch_size=args.batch_size,
                lr=args.period_lr,
                save_every=args.save_every,
            ),
            accelerator=accelerator,
            work_dir=work,
            seed=args.seed + 2,
            run_fingerprint=fingerprint,
        )
    if accelerator.is_main_process:
        meta = TargetMeta(
            base=args.base,
            dataset=dataset.name,
            levels=dataset.index.levels,
            history_len=args.history_len,
            list_len=args.list_len,
            token_map_fingerprint=tm.fingerprint(),
            preset=preset,
            catalog=catalog_record(dataset.index),
            train={
                **asdict(args),
                "pretrain_steps": pre_steps,
                "lora_steps": lora_steps,
                "processes": accelerator.num_processes,
                "environment": hardware_info(str(accelerator.device)),  # a retraining elsewhere may differ
            },
        )
        save_target(
            peft_model, tokenizer, meta, out, base_dir=base_dir, extra_files={LOG_NAME: work / LOG_NAME}
        )
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out
