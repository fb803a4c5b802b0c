"""The toy training command's work directory: an interrupted run resumes where it stopped.

`python -m audiogen_jax.toy train --out DIR` keeps everything a later run can reuse in DIR.training,
beside DIR:

    DIR.training/
        settings.json       the run's settings; a rerun with other ones is refused
        tokenizer/          spiece.model (the first stage, a second)
        codec/              the trained codec (a converted directory), written whole at its end
        codec-checkpoints/  the codec stage's CodecTrainState every --save-every updates (orbax)
        clips.npz           the training clips' codes and captions (encoded once)
        lm-checkpoints/     the LM stage's TrainState every --save-every updates (orbax)
        lm-losses.json      every LM update's loss so far (the command's report)

Rerunning the same command skips the finished stages and restores the running one's last
checkpoint. Nothing is replayed or re-drawn: the codec's batches and its codebook restarts, the LM's
batches and dropout coins are pure functions of (seed, step), and the optimizer, EMA and step live
in the checkpointed state, so a resumed run's weights are bit-identical to an uninterrupted one's.
Ctrl-C in a training stage finishes the update, checkpoints it and raises `Interrupted`; elsewhere
(tokenizer, encoding, writing DIR) it stops at once, losing at most that stage's work, since every
file here is written whole. DIR is written at the end and the work directory then removed.

Checkpoints use the fine-tuning command's orbax functions (`trainer.checkpoint_manager`,
`save_state`, `restore_state`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading

from audiogen_jax import atomic, trainer

SUFFIX = ".training"
SETTINGS_FILE = "settings.json"
# Updates between checkpoints: an LM checkpoint takes about 0.5 s, 100 updates 30 s (docs/toy.md).
SAVE_EVERY = 100


class ResumeError(Exception):
    """A work directory that this run cannot continue; the message is one line for the user."""


class Interrupted(Exception):  # noqa: N818 - an event the command reports, not a failure
    """Ctrl-C during a training stage, after its state was checkpointed."""

    def __init__(self, stage: str, step: int):
        super().__init__(f"{stage} update {step}")
        self.stage, self.step = stage, step


def work_directory(out: str | os.PathLike) -> str:
    """DIR.training beside DIR (not `.DIR.partial-*`: `atomic` removes those as stale)."""
    return os.path.realpath(out) + SUFFIX


def open_work(work: str, settings: dict, restart: bool) -> bool:
    """Starts the work directory, or checks that it holds a run of the same settings.

    Returns:
      whether an earlier run's work is there to continue.
    """
    if restart and os.path.isdir(work):
        print(f"--restart: discarding {work}", file=sys.stderr, flush=True)
        shutil.rmtree(work)
    path = os.path.join(work, SETTINGS_FILE)
    if not os.path.isfile(path):
        os.makedirs(work, exist_ok=True)
        atomic.write_json(path, settings, indent=1)
        return False
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    changed = [k for k in sorted(settings.keys() | old.keys()) if old.get(k) != settings.get(k)]
    if changed:
        diffs = ", ".join(f"{k} {old.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
        raise ResumeError(
            f"{work} holds an unfinished run with other settings ({diffs}): rerun with its "
            "settings to resume it, or add --restart to discard it and start over"
        )
    return True


def read_json(path: str, default=None):
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Checkpoints:
    """One training stage's checkpoints: every `every` updates, and on Ctrl-C (then `Interrupted`).

    Used as a context manager, which turns Ctrl-C into a flag for the stage's duration.

    Args:
      directory: the orbax directory (created).
      stage: its name in messages ("codec", "LM").
      every: updates between checkpoints.
      history: a JSON file saved with each checkpoint (the LM's losses), or None.
    """

    def __init__(self, directory: str, stage: str, every: int, history: str | None = None):
        self.directory, self.stage, self.every, self.history = directory, stage, every, history
        self._interrupted: list[bool] = []
        self._manager = None
        self._previous = None

    def __enter__(self) -> Checkpoints:
        self._manager = trainer.checkpoint_manager(self.directory)
        self._interrupted.clear()
        if threading.current_thread() is threading.main_thread():  # where Python runs handlers
            self._previous = signal.signal(signal.SIGINT, lambda *_: self._interrupted.append(True))
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        self._manager.close()

    def latest_step(self) -> int | None:
        """The last checkpointed update, without opening orbax (for the resume message)."""
        if not os.path.isdir(self.directory):
            return None
        steps = [int(n) for n in os.listdir(self.directory) if n.isdigit()]
        return max(steps, default=None)

    def restore(self, state, history: list | None = None):
        """(the last checkpoint's state, or `state`; the history up to its step)."""
        try:
            state = trainer.restore_state(self._manager, state)
        except trainer.TrainError as e:
            raise ResumeError(
                f"{self.directory}: {e}; add --restart to discard it and start over"
            ) from e.__cause__
        step = int(state.step)
        if self.history is not None:
            history = read_json(self.history, [])[:step]
        return state, history

    def save(self, state, history: list | None = None) -> None:
        # The history first: it may run ahead of the checkpoint, and `restore` cuts it to the step.
        # Its device scalars become floats in place, so each is fetched once.
        if self.history is not None:
            history[:] = [float(x) for x in history]
            atomic.write_json(self.history, history, indent=1)
        trainer.save_state(self._manager, state)

    def after_update(self, step: int, state, history: list | None = None) -> None:
        """Checkpoints update `step` when it is due or Ctrl-C was pressed (then raises)."""
        if step % self.every == 0 or self._interrupted:
            self.save(state, history)
        if self._interrupted:
            raise Interrupted(self.stage, step)
