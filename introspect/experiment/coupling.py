"""The introspective-coupling experiment, end to end, as resumable stages.

Three settings (``ExperimentConfig.setting``), each on the same stages:

- ``concurrent``: the model trains on the task's behaviour-shifting objective (anti-sycophancy
  for sycophancy and hint, refusal-shift for refusal) and, at the same time, as its own verbal
  explainer on the fixed labels, with the behavioural regulariser (``w_reg``); probes train
  alongside on its current hidden states. Controls: the model frozen, the same run without
  explanation training (``no-explanation``), shuffled labels, label noise, labels from another
  model.
- ``explain-only``: the model trains only to state its labels (verbal explainer, gradient into
  its own weights), with the regulariser; Self is measured against the explanation-trained
  model's own current Δ. Controls: no explanation training, shuffled labels, label noise.
- ``earlier-checkpoint``: M0 is first post-trained on the objective alone (``drift``), and the
  model is saved where r(Δ_M1, Δ_M0) on the held-out pairs first falls below each ρ target;
  each such M1 is then explanation-trained (as in ``explain-only``) on M0's labels: Orig is
  agreement with M0's labels, Self with the explained model's current Δ.

For each task:

1. ``pairs``: generate ``n_train + n_held`` pairs (or read the given pair files) and split them
   into training and held-out pairs;
2. ``labels``: extract M0's Δ on all of them (the fixed labels) and, with labels from another
   model (``labels="model:NAME"`` or the ``label_model`` control), that model's Δ, with the
   precondition ρ0 = r(its Δ, M0's Δ) on the held-out pairs measured and printed first (a model
   that cannot be loaded has its stage and conditions recorded as skipped, with the reason);
3. ``drift`` (``earlier-checkpoint`` only): the M1s, and ρ0 = r(Δ_M1, Δ_M0) of each;
4. ``train-<condition>``: :func:`introspect.training.train` with the condition's settings;
5. ``eval-<condition>``: re-extract the current model's Δ on the held-out pairs at every
   checkpoint and score Self and Orig (:func:`introspect.evaluation.checkpoints
   .evaluate_training`).

Then ``report`` writes ``report.md``: per setting and checkpoint ρ_t, Self, Orig, the gap and the
coupling index c with intervals, and verdicts over the whole trajectory, each naming the
precondition (ρ above ``rho_threshold``) it met or missed, withheld where the explainer's
shuffled-label control finds signal (:mod:`introspect.evaluation.decide`).

``state.json`` in the output directory lists the completed stages with their wall time; a run
started again with ``resume=True`` skips them, and a stage that was interrupted is redone from
scratch (its directory is removed first). Everything is seeded: the same configuration on the
same machine gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from introspect._io import write_json_atomic
from introspect._progress import format_seconds, say_stderr
from introspect.errors import BadInputError
from introspect.experiment.config import (
    OBJECTIVE_OF_TASK,
    PRESETS,
    SETTINGS,
    Condition,
    ExperimentConfig,
    ExperimentError,
    conditions_for,
    m1_name,
    plan_stages,
)

__all__ = [
    "OBJECTIVE_OF_TASK",
    "PRESETS",
    "SETTINGS",
    "Condition",
    "ExperimentConfig",
    "ExperimentError",
    "conditions_for",
    "plan_stages",
    "rescore_coupling",
    "run_coupling",
]

STATE_JSON = "state.json"
FORMAT_VERSION = 1


def _utc_now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class _State:
    """``state.json``: the configuration and the completed stages (written atomically)."""

    def __init__(self, out: Path, cfg: ExperimentConfig, resume: bool):
        self.path = out / STATE_JSON
        if self.path.is_file():
            if not resume:
                raise ExperimentError(
                    f"{out} already holds an experiment; pass --resume to continue it, or "
                    "choose another --out"
                )
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("identity") != cfg.identity():
                old = doc.get("identity", {})
                new = cfg.identity()
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ExperimentError(
                    f"{out}: cannot resume with different settings ({', '.join(diff)})"
                )
            self.doc = doc
        else:
            if out.exists() and any(out.iterdir()) and not resume:
                raise ExperimentError(f"{out} exists and is not empty; choose another --out")
            self.doc = {
                "format_version": FORMAT_VERSION,
                "started_utc": _utc_now(),
                "identity": cfg.identity(),
                "config": cfg.to_json(),
                "stages": {},
                "completed": [],
            }
        self.doc["config"] = cfg.to_json()

    def done(self, name: str) -> bool:
        return name in self.doc["completed"]

    def record(self, name: str, seconds: float, **info: Any) -> None:
        self.doc["stages"][name] = {"seconds": seconds, **info}
        if name not in self.doc["completed"]:
            self.doc["completed"].append(name)
        self.save()

    def info(self, name: str) -> dict[str, Any]:
        return self.doc["stages"].get(name, {})

    def save(self) -> None:
        write_json_atomic(self.path, self.doc)


class _Skip(Exception):
    """A stage that cannot run and is recorded as skipped, with the reason."""

    def __init__(self, reason: str, seconds: float = 0.0):
        super().__init__(reason)
        self.reason, self.seconds = reason, seconds


class _StepClock:
    """Appends the stage's ETA to the trainer's ``step k/n`` lines."""

    def __init__(self, name: str, say: Callable[[str], None]):
        self.name, self.say = name, say
        self.steps_from, self.first = time.perf_counter(), None

    def __call__(self, msg: str) -> None:
        if msg.startswith("M0 pass"):
            self.steps_from = time.perf_counter()
        m = re.match(r"step (\d+)/(\d+)", msg)
        if m:
            k, n = int(m.group(1)), int(m.group(2))
            if self.first is None:
                self.first = k - 1
            per = (time.perf_counter() - self.steps_from) / max(k - self.first, 1)
            msg = f"{msg} (stage ETA {format_seconds(per * (n - k))})"
        self.say(f"  [{self.name}] {msg}")


class _Experiment:
    """One run of the protocol (see :func:`run_coupling`): the stages as methods, each taking
    its arguments from :func:`plan_stages` and returning what ``state.json`` records."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        resume: bool,
        model: Any,
        tokenizer: Any,
        label_model: Any,
        label_tokenizer: Any,
        say: Callable[[str], None],
    ) -> None:
        from introspect.models import resolve_device

        self.cfg, self.say = cfg, say
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.state = _State(self.out, cfg, resume)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.save()
        self.stages = plan_stages(cfg)
        self.objects = {"m0": (model, tokenizer), "other": (label_model, label_tokenizer)}
        self._layer: int | None = None
        self.t_run = time.perf_counter()
        self.spent: dict[str, list[float]] = {}
        for name, kind, _ in self.stages:
            info = self.state.info(name)
            if self.state.done(name) and not info.get("skipped"):
                self.spent.setdefault(kind, []).append(float(info.get("seconds", 0.0)))

    # -- helpers -------------------------------------------------------------------------

    def eta(self, index: int) -> str:
        known = [s for k, v in self.spent.items() if k != "pairs" for s in v]
        if not known:
            return "unknown"
        mean_all = sum(known) / len(known)
        total = 0.0
        for name, kind, _ in self.stages[index:]:
            if not self.state.done(name):
                v = self.spent.get(kind)
                total += (sum(v) / len(v)) if v else mean_all
        return format_seconds(total)

    def load(self, which: str):
        """The main model (``"m0"``) or the label model (``"other"``): the caller's object, or
        loaded by name in float32."""
        from introspect.models import load_model

        obj, tok = self.objects[which]
        if obj is not None:
            return load_model(obj, tokenizer=tok)
        spec = self.cfg.model if which == "m0" else self.cfg.other_model
        return load_model(spec, dtype="float32", device=self.device)

    def main_layer(self) -> int:
        if self._layer is None:
            from introspect.layers import resolve_layer

            lm = self.load("m0")
            index = self.cfg.layer if self.cfg.layer is not None else lm.n_layers // 2
            try:
                self._layer = resolve_layer(index, lm.n_layers, model=self.cfg.model)
            except ValueError as exc:
                raise ExperimentError(str(exc)) from None
        return self._layer

    def label_dir(self, task: str, which: str) -> Path:
        return self.out / task / ("m0" if which == "m0" else "labels-other")

    def sub_say(self, name: str) -> Callable[[str], None]:
        return lambda m: self.say(f"  [{name}] {m}")

    # -- stages --------------------------------------------------------------------------

    def stage_pairs(self, name: str, task: str) -> dict[str, Any]:
        from introspect.data import read_pairs, write_pairs
        from introspect.data.tasks import generate

        cfg, tdir = self.cfg, self.out / task
        tdir.mkdir(parents=True, exist_ok=True)
        if task in cfg.pair_files:
            train_src, held_src = cfg.pair_files[task]
            train_pairs, _ = read_pairs(train_src)
            held_pairs, _ = read_pairs(held_src)
        else:
            pairs = generate(task, cfg.n_train + cfg.n_held, seed=cfg.seed)
            train_pairs, held_pairs = pairs[: cfg.n_train], pairs[cfg.n_train :]
        write_pairs(tdir / "train.jsonl", train_pairs)
        write_pairs(tdir / "held.jsonl", held_pairs)
        write_pairs(tdir / "all.jsonl", list(train_pairs) + list(held_pairs))
        return {"n_train": len(train_pairs), "n_held": len(held_pairs)}

    def stage_labels(self, name: str, task: str, which: str) -> dict[str, Any]:
        """Δ and hidden states of every pair (training and held-out) from M0 or the label
        model: the fixed labels. A label model that cannot be loaded skips its condition."""
        from introspect.engine.driver import extract
        from introspect.models import ModelLoadError, NoChatTemplateError, with_chat_template

        t0 = time.perf_counter()
        dest = self.label_dir(task, which)
        shutil.rmtree(dest, ignore_errors=True)
        spec = self.cfg.model if which == "m0" else self.cfg.other_model
        try:
            lm = self.load(which)
            # A base model (no chat template) reads the chat prompts as a transcript.
            _, template = with_chat_template(lm.tokenizer, "auto")
            if template == "plain":
                self.say(f"  {spec} has no chat template: its prompts are plain transcripts")
            layer = self.main_layer() if which == "m0" else lm.n_layers // 2
            run = extract(
                lm,
                None,
                self.out / task / "all.jsonl",
                dest,
                layers=[layer],
                batch_tokens=self.cfg.batch_tokens,
                chat_template="auto",
                model_id=spec,
                progress=self.sub_say(name),
                say=self.sub_say(name),
            )
        except (ModelLoadError, NoChatTemplateError) as exc:
            if which == "m0":
                raise
            shutil.rmtree(dest, ignore_errors=True)
            reason = " ".join(str(exc).split())
            self.say(f"  no labels from {spec}: {reason}; its conditions are skipped")
            raise _Skip(reason, time.perf_counter() - t0) from None
        info = {"model": spec, "n": len(run.ids), "chat_template": template}
        if self.cfg.verbal and self.cfg.verbal_format == "precursor":
            info["answers"] = self.write_answers(task, which, lm)
        if which == "other":
            info["precondition"] = self.precondition(task, run, f"Δ of {spec}")
        return info

    def answers_file(self, task: str, which: str) -> Path:
        return self.out / task / f"answers-{which}.json"

    def write_answers(self, task: str, which: str, lm: Any) -> str:
        """The label source's greedy answers on x and x' of every pair (the precursor
        format's labels), as ``answers-<which>.json``."""
        from introspect.data import read_pairs
        from introspect.models import with_chat_template
        from introspect.training.setup import source_answers

        pairs, _ = read_pairs(self.out / task / "all.jsonl")
        tok, _ = with_chat_template(lm.tokenizer, "auto")
        path = self.answers_file(task, which)
        write_json_atomic(path, source_answers(lm.model, tok, pairs))
        return path.name

    def precondition(self, task: str, labels_run: Any, what: str, current: Any = None):
        """ρ0 = r(labels, Δ of the model to be explained) on the held-out pairs, measured
        before training on labels from another model or checkpoint; printed and recorded."""
        from introspect.data import read_pairs
        from introspect.evaluation.decide import precondition
        from introspect.labels import labels_from_run

        held, _ = read_pairs(self.out / task / "held.jsonl")
        ids = [p.id for p in held]
        y = labels_from_run(labels_run, ids=ids).align(ids)
        if current is None:
            current = labels_from_run(self.label_dir(task, "m0"), ids=ids).align(ids)
        pre = precondition(
            current, y, threshold=self.cfg.rho_threshold, n_boot=self.cfg.n_boot, seed=self.cfg.seed
        )
        self.say(f"  precondition ({what} vs the explained model's Δ, held-out): {pre['text']}")
        return pre

    def stage_drift(self, name: str, task: str) -> dict[str, Any]:
        """The earlier-checkpoint setting's M1s: M0 post-trained on the task objective alone
        (no regulariser, no explanation), r(Δ_M1, Δ_M0) measured on the held-out pairs every
        ``drift_every`` steps, and the model saved (``drift/m1-rho<τ>/model``) where r first
        falls below each target τ. A target passed in the same measurement as the next lower
        one is jumped over (its M1 would be the lower target's) and recorded as such, as are
        targets not reached within ``drift_steps``."""
        import tempfile

        import numpy as np

        from introspect.data import read_pairs
        from introspect.engine.driver import extract
        from introspect.evaluation.metrics import pearson_r
        from introspect.labels import labels_from_run
        from introspect.training import TrainConfig
        from introspect.training.setup import kept_state
        from introspect.training.trainer import Trainer

        cfg = self.cfg
        dest = self.out / task / "drift"
        shutil.rmtree(dest, ignore_errors=True)
        held, _ = read_pairs(self.out / task / "held.jsonl")
        ids = [p.id for p in held]
        y0 = labels_from_run(self.label_dir(task, "m0"), ids=ids).align(ids)
        tcfg = TrainConfig(
            model=cfg.model,
            pairs=str(self.out / task / "train.jsonl"),
            labels=str(self.label_dir(task, "m0")),
            out=str(dest / "train"),
            objective=cfg.objective_of(task),
            concurrent=True,
            layer=self.main_layer(),
            steps=cfg.drift_steps,
            batch_size=cfg.batch_size,
            lr=cfg.drift_lr,
            probe_lr=cfg.probe_lr,
            difference_probe=False,
            checkpoint_every=cfg.drift_steps,
            seed=cfg.seed,
            device=self.device,
        )
        model, tok = self.objects["m0"]
        trainer = Trainer(tcfg, model=model, tokenizer=tok, say=_StepClock(name, self.say))
        targets = sorted(cfg.rho_targets, reverse=True)
        history, reached, jumped = [], {}, {}
        with kept_state(model):
            trainer.setup()
            for k in range(1, cfg.drift_steps + 1):
                trainer.step(k)
                if k % cfg.drift_every and k != cfg.drift_steps:
                    continue
                with tempfile.TemporaryDirectory(prefix="introspect-drift-") as tmp:
                    run = extract(
                        trainer.model, trainer.tok, held, Path(tmp) / "run",
                        batch_tokens=cfg.batch_tokens, chat_template="auto", say=lambda _m: None,
                    )  # fmt: skip
                    r = float(pearson_r(np.asarray(run.delta), y0))
                before = history[-1]["rho"] if history else 1.0
                history.append({"step": k, "rho": r})
                self.say(f"  [{name}] step {k}: r(Δ_M1, Δ_M0) on held-out pairs = {r:+.3f}")
                crossed = []
                while targets and r < targets[0]:
                    crossed.append(targets.pop(0))
                for t in crossed[:-1]:
                    jumped[m1_name(t)] = {"target": t, "step": k, "rho": r, "before": before}
                    self.say(
                        f"  [{name}] ρ target {t:g} jumped over: r fell from {before:+.3f} to "
                        f"{r:+.3f} within {cfg.drift_every} step(s); lower --drift-lr to reach it"
                    )
                if crossed:
                    m1 = m1_name(crossed[-1])
                    trainer.model.save_pretrained(dest / m1 / "model")
                    trainer.tok.save_pretrained(dest / m1 / "model")
                    reached[m1] = {"target": crossed[-1], "step": k, "rho": r}
                    self.say(f"  [{name}] saved {m1} at step {k}")
                if not targets:
                    break
        shutil.rmtree(dest / "train", ignore_errors=True)  # its checkpoint is not needed
        for t in targets:
            self.say(f"  [{name}] ρ target {t:g} not reached in {cfg.drift_steps} steps")
        return {"history": history, "reached": reached, "jumped": jumped, "not_reached": targets}

    def start_of(self, task: str, cond: Condition) -> str | None:
        """The saved M1 a condition starts from (None: M0); a ``_Skip`` when it was not
        reached."""
        if cond.start == "m0":
            return None
        info = self.state.info(f"{task}/drift")
        jump = info.get("jumped", {}).get(cond.start)
        if jump is not None:
            raise _Skip(
                f"{cond.start} jumped over: r(Δ_M1, Δ_M0) fell from {jump['before']:+.3f} to "
                f"{jump['rho']:+.3f} at step {jump['step']}, past the next target too"
            )
        if cond.start not in info.get("reached", {}):
            raise _Skip(f"{cond.start} not reached: r(Δ_M1, Δ_M0) stayed above its target")
        return str(self.out / task / "drift" / cond.start / "model")

    def stage_train(self, name: str, task: str, cond: Condition) -> dict[str, Any]:
        from introspect.training import TrainConfig, train

        cfg = self.cfg
        skipped = self.state.info(f"{task}/labels-{cond.labels}").get("skipped")
        if skipped:
            self.say(f"  skipped: the labels of {cfg.other_model} are missing ({skipped})")
            raise _Skip(f"{cfg.other_model} not available: {skipped}")
        start = self.start_of(task, cond)
        dest = self.out / task / f"train-{cond.name}"
        shutil.rmtree(dest, ignore_errors=True)
        tcfg = TrainConfig(
            model=start or cfg.model,
            pairs=str(self.out / task / "train.jsonl"),
            labels=str(self.label_dir(task, cond.labels)),
            out=str(dest),
            objective=cfg.objective_of(task) if cond.behaviour else "none",
            concurrent=cond.concurrent,
            layer=self.main_layer(),
            steps=cfg.train_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            probe_lr=cfg.probe_lr,
            w_reg=cfg.w_reg if cond.concurrent else 0.0,
            noise=cond.noise,
            shuffle_labels=cond.shuffle,
            checkpoint_every=cfg.checkpoint_every if cond.trajectory else cfg.train_steps,
            verbal=cfg.verbal,
            w_verbal=1.0 if cond.explain else 0.0,
            verbal_format=cfg.verbal_format,
            verbal_answers=(
                str(self.answers_file(task, cond.labels))
                if cfg.verbal and cfg.verbal_format == "precursor"
                else None
            ),
            seed=cfg.seed,
            device=self.device,
        )
        model, tok = self.objects["m0"] if start is None else (None, None)
        kw = {} if model is None else {"model": model, "tokenizer": tok}
        # M0's prompts are rendered as its labels were (a base model's as plain transcripts); a
        # checkpoint's saved tokenizer carries the template it was trained with.
        template = self.state.info(f"{task}/labels-m0").get("chat_template", "model")
        kw["chat_template"] = template if start is None else "model"
        doc = train(tcfg, say=_StepClock(name, self.say), **kw)
        return {"steps": doc["step"], "layer": doc["layer"], "train_s": doc["wall_s"]}

    def stage_eval(self, name: str, task: str, cond: Condition) -> dict[str, Any]:
        from introspect.evaluation.checkpoints import evaluate_training

        skipped = self.state.info(f"{task}/train-{cond.name}").get("skipped")
        if skipped:
            raise _Skip(skipped)
        tdir = self.out / task
        dest = tdir / f"eval-{cond.name}"
        shutil.rmtree(dest, ignore_errors=True)
        model, tok = self.objects["m0"] if cond.start == "m0" else (None, None)
        summary = evaluate_training(
            tdir / f"train-{cond.name}",
            tdir / "held.jsonl",
            self.label_dir(task, cond.labels),
            dest,
            model=model,
            tokenizer=tok,
            n_boot=self.cfg.n_boot,
            seed=self.cfg.seed,
            include_start=cond.trajectory or not cond.concurrent,
            batch_tokens=self.cfg.batch_tokens,
            device=self.device,
            say=self.sub_say(name),
        )
        return {"checkpoints": summary["checkpoints"], "n": summary["n"]}

    def stage_report(self, name: str) -> dict[str, Any]:
        from introspect.experiment.report import write_report

        self.state.doc["wall_s_so_far"] = time.perf_counter() - self.t_run
        path = write_report(self.out, self.cfg, self.state.doc, self.stages)
        return {"path": str(path.relative_to(self.out))}

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        n = len(self.stages)
        for index, (name, kind, args) in enumerate(self.stages):
            if self.state.done(name):
                self.say(f"[{index + 1}/{n}] {name}: done earlier, skipped")
                continue
            self.say(
                f"[{index + 1}/{n}] {name}: start (elapsed "
                f"{format_seconds(time.perf_counter() - self.t_run)}, ETA {self.eta(index)})"
            )
            t0 = time.perf_counter()
            try:
                info = getattr(self, f"stage_{kind}")(name, **args)
            except _Skip as skip:
                self.state.record(name, skip.seconds, skipped=skip.reason)
                continue
            seconds = time.perf_counter() - t0
            self.spent.setdefault(kind, []).append(seconds)
            self.state.record(name, seconds, **info)
            self.say(f"[{index + 1}/{n}] {name}: done in {format_seconds(seconds)}")
        self.state.doc["complete"] = True
        self.state.save()
        return self.state.doc


def run_coupling(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    model: Any = None,
    tokenizer: Any = None,
    label_model: Any = None,
    label_tokenizer: Any = None,
    say: Callable[[str], None] = say_stderr,
) -> dict[str, Any]:
    """Runs (or continues) the experiment into ``cfg.out``; returns the contents of
    ``state.json``. Stages already completed are skipped when ``resume``.

    ``model`` (with ``tokenizer``): the model to study as an object in memory, instead of
    loading ``cfg.model`` (which is then only the name the report and files record); it is
    never changed (a training run trains a copy). ``label_model`` / ``label_tokenizer``: the
    same for ``cfg.label_model``.

    Example::

        from introspect.experiment import ExperimentConfig
        cfg = ExperimentConfig.from_preset("quick", model="my-model", out="build/coupling")
        state = introspect.run_coupling(cfg, model=model, tokenizer=tok)
    """
    job = _Experiment(
        cfg,
        resume=resume,
        model=model,
        tokenizer=tokenizer,
        label_model=label_model,
        label_tokenizer=label_tokenizer,
        say=say,
    )
    return job.run()


def _config_from_json(d: dict[str, Any]) -> ExperimentConfig:
    d = dict(d)
    d["tasks"] = tuple(d["tasks"])
    d["noise_levels"] = tuple(d["noise_levels"])
    if "rho_targets" in d:
        d["rho_targets"] = tuple(d["rho_targets"])
    if "setting" not in d:  # a run made before the settings: concurrent, unregularised
        d.update(setting="concurrent", w_reg=0.0)
    d["pair_files"] = {k: tuple(v) for k, v in d.get("pair_files", {}).items()}
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    return ExperimentConfig(**{k: v for k, v in d.items() if k in known})


def rescore_coupling(out: str | Path, *, say: Callable[[str], None] = say_stderr) -> dict[str, Any]:
    """Recomputes every completed evaluation's ``metrics.jsonl`` (and its Self-vs-Orig plot) from
    its ``predictions.jsonl`` with this version's metrics, then rewrites the report; no model
    runs. Returns ``state.json``'s contents."""
    from introspect.evaluation import recompute_metrics, write_jsonl
    from introspect.experiment.report import write_report

    out = Path(out)
    path = out / STATE_JSON
    if not path.is_file():
        raise BadInputError(f"{out}: no {STATE_JSON} here (not a coupling experiment)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    cfg = dataclasses.replace(_config_from_json(doc["config"]), out=str(out))
    stages = plan_stages(cfg)
    done = set(doc.get("completed", []))
    n = 0
    for name, kind, args in stages:
        if kind != "eval" or name not in done or doc["stages"].get(name, {}).get("skipped"):
            continue
        edir = out / args["task"] / f"eval-{args['cond'].name}"
        preds = edir / "predictions.jsonl"
        if not preds.is_file() and preds.with_suffix(".jsonl.gz").is_file():
            preds = preds.with_suffix(".jsonl.gz")  # a published run keeps them compressed
        if not preds.is_file():
            raise BadInputError(f"{preds}: missing; the evaluation cannot be rescored")
        t0 = time.perf_counter()
        rows = recompute_metrics(preds, n_boot=cfg.n_boot, seed=cfg.seed)
        write_jsonl(edir / "metrics.jsonl", rows)
        if (edir / "self_vs_orig.png").is_file():
            try:
                from introspect.evaluation.plots import plot_coupling

                plot_coupling(rows, edir / "self_vs_orig.png")
            except ImportError:
                pass
        n += 1
        say(f"{name}: rescored {len(rows)} metric rows ({time.perf_counter() - t0:.1f} s)")
    if "report" in done:
        write_report(out, cfg, doc, stages)
        say(f"report rewritten: {out / 'report.md'}")
    doc["rescored_utc"] = _utc_now()
    write_json_atomic(path, doc)
    say(f"{n} evaluation(s) rescored")
    return doc
