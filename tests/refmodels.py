"""A whole reference AudioGen (audiocraft 1.3.0) with random weights, in the release's formats.

Shared by `benchmarks/bench_generate.py` (and usable by tests). It reuses the component builders the
tests already have (`encodec_reference.build_reference`, `test_t5.random_hf_t5`,
`test_lm.xp_cfg_yaml`, `refutil.save_audiocraft_package`, `spm_util.make_spiece_dir`) and adds what
none of them has: the LM's state dict filled directly at full size (1.84 B parameters in fp16 in
about a minute, instead of the 74 s gaussian init of a torch `LMModel` plus an fp32 copy), and the
reference `AudioGen` assembled from the files, with a real `T5Conditioner` in its
`ConditioningProvider`, so the reference runs exactly the weights our converter reads.

    # writes state_dict.bin, compression_state_dict.bin and t5/
    files = write_checkpoints(directory, Bundle.medium())
    convert(files, out_dir, "bfloat16")  # convert_weights.py, as a user runs it
    model = reference_audiogen(files, Bundle.medium())  # audiocraft AudioGen on the same weights
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types

from audiogen_jax.config import EncodecConfig, LMConfig, T5Config

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
T5_DIR = "t5"
DONE = "checkpoints.json"  # written last: its presence means the files are complete


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The three component configs of one AudioGen, and the T5 name its LM config states."""

    codec: EncodecConfig
    t5: T5Config
    lm: LMConfig
    t5_name: str

    @classmethod
    def medium(cls) -> Bundle:
        return cls(EncodecConfig.medium(), T5Config.large(), LMConfig.medium(), "t5-large")

    @classmethod
    def musicgen(cls, scale: str = "small", stereo: bool = False, num_layers=None) -> Bundle:
        """A MusicGen (32 kHz codec, t5-base widths); `num_layers` shortens the LM and the T5."""
        t5 = T5Config.base()
        if num_layers is not None:
            t5 = dataclasses.replace(t5, num_layers=num_layers)
        lm = LMConfig.musicgen(scale, stereo=stereo, num_layers=num_layers)
        return cls(EncodecConfig.musicgen(), t5, lm, "t5-base")

    @classmethod
    def tiny(cls) -> Bundle:
        from audiogen_jax.presets import tiny_random_configs

        codec, t5, lm = tiny_random_configs()
        # Not a real T5 name: the converter then reads the text width from the output_proj shape.
        return cls(codec, t5, lm, "t5-tiny-random")


def lm_state_dict(cfg: LMConfig, seed: int = 0) -> dict:
    """A random fp16 audiocraft LM state dict (output_proj included), filled tensor by tensor.

    Keys and shapes come from `measure_convert_memory.audiocraft_lm_shapes`, which tests/test_lm.py
    checks against a real `LMModel`. Scales follow audiocraft's gaussian init (std 1/sqrt(fan_in),
    divided by sqrt(2 (layer + 1)) inside the transformer, its `depthwise_init='current'`); norms
    get 1 + noise.
    """
    import torch

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from measure_convert_memory import audiocraft_lm_shapes

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in audiocraft_lm_shapes(cfg).items():
        t = torch.empty(shape, dtype=torch.float16)
        if len(shape) == 2:
            std = shape[1] ** -0.5
            if key.startswith("transformer.layers."):
                std /= (2 * (int(key.split(".")[2]) + 1)) ** 0.5
            t.normal_(0.0, std, generator=gen)
        elif "norm" in key and key.endswith("weight"):
            t.normal_(1.0, 0.1, generator=gen)
        else:
            t.normal_(0.0, 0.1, generator=gen)
        state[key] = t
    return state


def write_checkpoints(
    directory: str | os.PathLike,
    bundle: Bundle,
    seed: int = 0,
    codec_and_t5_from: dict[str, str] | None = None,
    probe_seconds: float = 4.0,
    pretrained_codec: str | None = None,
) -> dict[str, str]:
    """Writes the three checkpoints in their release formats (once; later calls reuse them).

    `codec_and_t5_from`: the files of an earlier call whose bundle has the same codec and T5; they
    are reused (the compression file hard-linked, the T5 directory shared) and only the LM is
    written. `probe_seconds`: the audio the codebooks are seeded from (`build_reference`).
    `pretrained_codec`: a hub id; the codec is then written as a transformers EnCodec directory
    (files["pretrained_codec"]) and compression_state_dict.bin only points to it by that id, as
    audiocraft's `export_pretrained_compression_model` packages facebook/encodec_32khz.

    Returns:
      {"lm": state_dict.bin (fp16 audiocraft export), "compression": compression_state_dict.bin,
       "t5": a Hugging Face T5 directory (save_pretrained + spiece.model)}.
    """
    import torch
    from encodec_reference import build_reference, save_reference
    from refutil import save_audiocraft_package
    from spm_util import make_spiece_dir
    from test_lm import xp_cfg_yaml
    from test_t5 import random_hf_t5

    directory = os.fspath(directory)
    files = {
        "lm": os.path.join(directory, LM_FILE),
        "compression": os.path.join(directory, COMPRESSION_FILE),
        "t5": os.path.join(directory, T5_DIR),
    }
    if codec_and_t5_from is not None:
        files["t5"] = codec_and_t5_from["t5"]
    if pretrained_codec is not None:
        files["pretrained_codec"] = os.path.join(directory, "pretrained_codec")
        files["compression_package"] = os.path.join(directory, "compression_package.bin")
    done = os.path.join(directory, DONE)
    if os.path.isfile(done):
        return files
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(seed)
    if codec_and_t5_from is None:
        codec = build_reference(bundle.codec, seed=seed, probe_seconds=probe_seconds)
        save_reference(codec, bundle.codec, files["compression"])
        hf = random_hf_t5(bundle.t5, seed)
        hf.save_pretrained(files["t5"])
        del hf
        make_spiece_dir(files["t5"])
    else:
        if os.path.exists(files["compression"]):
            os.remove(files["compression"])
        os.link(codec_and_t5_from["compression"], files["compression"])
    if pretrained_codec is not None:
        import torch
        from encodec_reference import save_transformers

        codec = build_reference(bundle.codec, probe_seconds=0.1)
        codec.load_state_dict(torch.load(files["compression"], weights_only=False)["best_state"])
        save_transformers(codec, bundle.codec, files["pretrained_codec"])
        # The same codec as an audiocraft package, kept beside for comparison.
        os.replace(files["compression"], files["compression_package"])
        torch.save(
            {"pretrained": pretrained_codec, "exported": True, "version": "1.3.0"},
            files["compression"],
        )
    state = lm_state_dict(bundle.lm, seed)
    # test_lm's config states AudioGen's top_k 250; a tiny codebook needs its own (the converter
    # reads it).
    xp = xp_cfg_yaml(bundle.lm, bundle.t5_name).replace("top_k: 250", f"top_k: {bundle.lm.top_k}")
    save_audiocraft_package(files["lm"], state, xp, half=True)
    del state
    with open(done, "w") as f:
        json.dump({"bundle": repr(bundle), "seed": seed}, f)
    return files


def convert(files: dict[str, str], out_dir: str | os.PathLike, dtype: str) -> str:
    """Converts the three checkpoints with `convert_weights.py` in a child process, as users do."""
    out_dir = os.fspath(out_dir)
    if os.path.isfile(os.path.join(out_dir, DONE)):
        return out_dir
    cmd = [
        sys.executable,
        os.path.join(REPO, "convert_weights.py"),
        "--compression",
        files["compression"],
        "--t5",
        files["t5"],
        "--lm",
        files["lm"],
        "--dtype",
        dtype,
        "--out",
        out_dir,
    ]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    with open(os.path.join(out_dir, DONE), "w") as f:
        json.dump({"dtype": dtype}, f)
    return out_dir


def reference_audiogen(
    files: dict[str, str], bundle: Bundle, lm_dtype: str = "float32", device: str = "cpu"
):
    """audiocraft's `AudioGen` (or `MusicGen`, by the LM config's family) on the weights in `files`.

    A stereo LM gets the codec wrapped in `InterleaveStereoCompressionModel`, as `BaseGenModel`
    wraps it from the checkpoint's config; a codec the release only names (`pretrained_codec`) is
    the transformers EnCodec in `HFEncodecCompressionModel`, as `CompressionModel.get_pretrained`
    builds it.

    EnCodec, T5Conditioner and LM are built as audiocraft's loaders build them. The LM is built on
    the meta device (no init cost) and filled from the fp16 export with `load_state_dict`, which
    upcasts to float32 like audiocraft's CPU loader; `lm_dtype='bfloat16'` then casts it with
    `lm.to(torch.bfloat16)` (T5 and EnCodec stay float32: only the LM is cast).
    On a CUDA `device`, audiocraft itself runs generation under float16 autocast.
    """
    import torch
    import transformers
    from audiocraft.models.audiogen import AudioGen
    from audiocraft.models.encodec import InterleaveStereoCompressionModel
    from audiocraft.models.musicgen import MusicGen
    from audiocraft.modules import conditioners
    from encodec_reference import build_reference
    from refutil import reference_lm

    if "pretrained_codec" in files:  # what `CompressionModel.get_pretrained` builds for a hub id
        from audiocraft.models.encodec import HFEncodecCompressionModel

        hf_codec = transformers.EncodecModel.from_pretrained(files["pretrained_codec"]).eval()
        codec = HFEncodecCompressionModel(hf_codec).eval()
    else:
        codec = build_reference(bundle.codec, probe_seconds=0.1)
        codec.load_state_dict(torch.load(files["compression"], weights_only=False)["best_state"])

    cfg = bundle.lm
    hf = transformers.T5EncoderModel.from_pretrained(files["t5"]).eval()
    tok = transformers.T5Tokenizer.from_pretrained(files["t5"])

    def fake(obj):
        # Stands in for a transformers class: its from_pretrained returns our prebuilt `obj`.
        return types.SimpleNamespace(from_pretrained=lambda name, **kw: obj)

    saved = conditioners.T5EncoderModel, conditioners.T5Tokenizer
    conditioners.T5EncoderModel, conditioners.T5Tokenizer = fake(hf), fake(tok)
    try:
        name = bundle.t5_name if bundle.t5_name in conditioners.T5Conditioner.MODELS else "t5-large"
        text = conditioners.T5Conditioner(name, output_dim=cfg.dim, finetune=False, device=device)
    finally:
        conditioners.T5EncoderModel, conditioners.T5Tokenizer = saved
    if text.output_proj.in_features != bundle.t5.d_model:  # a tiny T5: the name fixes 1024 inputs
        text.output_proj = torch.nn.Linear(bundle.t5.d_model, cfg.dim)
    provider = conditioners.ConditioningProvider({"description": text}, device=device)
    with torch.device("meta"):  # no init: every weight comes from the checkpoint
        lm = reference_lm(cfg, provider, cfg_coef=cfg.cfg_coef, two_step_cfg=False)
    lm = lm.to_empty(device="cpu")
    state = torch.load(files["lm"], mmap=True, weights_only=False)["best_state"]
    missing, unexpected = lm.load_state_dict(state, strict=False)
    del state
    # The sinusoidal embedding has no buffers; anything missing would be uninitialised memory.
    if missing or unexpected:
        raise RuntimeError(
            f"reference LM state mismatch: missing {missing}, unexpected {unexpected}"
        )
    lm = lm.eval()
    if lm_dtype == "bfloat16":
        lm = lm.to(torch.bfloat16)
    elif lm_dtype != "float32":
        raise ValueError(f"lm_dtype must be float32 or bfloat16, got {lm_dtype!r}")
    codec = codec.to(device)
    if cfg.interleave_stereo:
        codec = InterleaveStereoCompressionModel(codec)
    cls = {"audiogen": AudioGen, "musicgen": MusicGen}[cfg.family]
    return cls(f"{cfg.family}-random", codec, lm.to(device), max_duration=cfg.max_duration)
