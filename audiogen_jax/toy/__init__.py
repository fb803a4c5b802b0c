"""The toy world: a small AudioGen trained from scratch on synthetic sounds with captions.

    world.py    the sound world: a grammar of scenes, their captions, and the waveforms (numpy)
    checker.py  reads a scene back from a waveform (source, pitch, sweep, count, order)
    codec.py    the toy EnCodec's config and the command that trains it from scratch
    text.py     the captions' sentencepiece tokenizer (T5 layout) and the small T5's config
    model.py    the LM stage, and the whole model trained from scratch into a converted directory
    resume.py   the training command's work directory, from which an interrupted run resumes
    quality.py  generates for fixed captions and scores the clips with the checker

Everything here is deterministic from a seed and runs on a laptop CPU.
"""

import os

# The shipped toy model: a converted directory inside the package.
WEIGHTS = os.path.join(os.path.dirname(__file__), "weights")
