"""Builds the reference EnCodec (audiocraft 1.3.0) with random weights, and its real export file.

Shared by tests/test_encodec.py and benchmarks/bench_encodec.py. The reference is built from
explicit constructor arguments (the PyPI audiocraft has no Hydra config folder), with the same
values the checkpoint's `xp.cfg` YAML states, so the converter reads the config exactly as it
would read a release.
"""

from __future__ import annotations

import math
import os

from audiogen_jax.config import EncodecConfig

# The YAML audiocraft exports is the whole training config, unresolved. This keeps the
# interpolations a converter must follow (`${sample_rate}`, `${channels}`, `${encodec.causal}`)
# and one it must never touch.
_XP_CFG = """\
device: cpu
dtype: float32
sample_rate: {sample_rate}
channels: {channels}
compression_model: encodec
encodec:
  autoencoder: seanet
  quantizer: rvq
  sample_rate: ${{sample_rate}}
  channels: ${{channels}}
  causal: {causal}
  renormalize: {renormalize}
seanet:
  dimension: {dimension}
  channels: ${{channels}}
  causal: ${{encodec.causal}}
  n_filters: {n_filters}
  n_residual_layers: {n_residual_layers}
  ratios: {ratios}
  activation: ELU
  activation_params:
    alpha: {elu_alpha}
  norm: weight_norm
  norm_params: {{}}
  kernel_size: {kernel_size}
  residual_kernel_size: {residual_kernel_size}
  last_kernel_size: {last_kernel_size}
  dilation_base: {dilation_base}
  pad_mode: {pad_mode}
  true_skip: {true_skip}
  compress: {compress}
  lstm: {lstm}
  disable_norm_outer_blocks: 0
  decoder:
    trim_right_ratio: {trim_right_ratio}
    final_activation: {final_activation}
    final_activation_params: null
  encoder: {{}}
rvq:
  n_q: {n_q}
  q_dropout: false
  bins: {bins}
  decay: 0.99
  kmeans_init: true
  kmeans_iters: 50
  threshold_ema_dead_code: 2
  orthogonal_reg_weight: 0.0
  orthogonal_reg_active_codes_only: false
  orthogonal_reg_max_codes: null
dora:
  dir: /checkpoint/${{oc.env:USER}}/experiments/audiocraft/outputs
"""


def xp_cfg_yaml(cfg: EncodecConfig, renormalize: bool = False) -> str:
    """The compression xp.cfg that describes `cfg`, written the way audiocraft exports it."""
    d = cfg.to_dict()
    d["ratios"] = "[" + ", ".join(str(r) for r in cfg.ratios) + "]"
    d["final_activation"] = "null" if cfg.final_activation is None else cfg.final_activation
    for key in ("causal", "true_skip"):
        d[key] = str(d[key]).lower()
    return _XP_CFG.format(renormalize=str(renormalize).lower(), **d)


def build_reference(
    cfg: EncodecConfig, seed: int = 0, probe_seconds: float = 4.0, jitter: float = 1.0
):
    """A random-weight audiocraft `EncodecModel` for `cfg`, in eval mode.

    Weight norm is on (as in the release) and every `weight_g` is scaled by a random factor, so the
    effective weights differ from `weight_v` and the converter's fold is really exercised; biases
    are random too. The factor is U[0.5, 1.5), times sqrt(3) in the encoder: torch's default init,
    U(+-1/sqrt(fan_in)), has variance 1/(3 fan_in) and shrinks the signal by ~sqrt(3) per conv, so
    after a dozen convs the input would be lost under the biases, and float32 rounding would be a
    large share of what distinguishes one latent from another; with sqrt(3) each encoder conv keeps
    the signal's scale, as a trained codec does. (The decoder keeps the plain factor: its output is
    compared as floats, and the generation tests' audio tolerances were measured on it.)

    A fresh k-means RVQ is all zeros with `inited=0`, so the codebooks are filled the way k-means
    starts: stage by stage, with random frames of the residual the previous stages leave on a probe
    signal (noise and tones), plus Gaussian jitter of `jitter` times the residual's spread per
    dimension (frames drawn without repeats where the probe has enough; codewords checked to be
    distinct). The latents are first centred on the probe's mean. Codes then spread over the
    codebook and each stage removes energy, as in a trained codec, and no choice is a near-tie
    (`top2_gaps`).
    """
    import torch
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.modules.seanet import SEANetDecoder, SEANetEncoder
    from audiocraft.quantization.vq import ResidualVectorQuantizer

    torch.manual_seed(seed)
    common = {
        "channels": cfg.channels,
        "dimension": cfg.dimension,
        "n_filters": cfg.n_filters,
        "n_residual_layers": cfg.n_residual_layers,
        "ratios": list(cfg.ratios),
        "activation": "ELU",
        "activation_params": {"alpha": cfg.elu_alpha},
        "norm": "weight_norm",
        "norm_params": {},
        "kernel_size": cfg.kernel_size,
        "last_kernel_size": cfg.last_kernel_size,
        "residual_kernel_size": cfg.residual_kernel_size,
        "dilation_base": cfg.dilation_base,
        "causal": cfg.causal,
        "pad_mode": cfg.pad_mode,
        "true_skip": cfg.true_skip,
        "compress": cfg.compress,
        "lstm": cfg.lstm,
        "disable_norm_outer_blocks": 0,
    }
    encoder = SEANetEncoder(**common)
    decoder = SEANetDecoder(
        **common, trim_right_ratio=cfg.trim_right_ratio, final_activation=cfg.final_activation
    )
    quantizer = ResidualVectorQuantizer(
        dimension=cfg.dimension,
        n_q=cfg.n_q,
        bins=cfg.bins,
        decay=0.99,
        kmeans_init=True,
        kmeans_iters=50,
        threshold_ema_dead_code=2,
    )
    model = EncodecModel(
        encoder,
        decoder,
        quantizer,
        frame_rate=cfg.sample_rate // cfg.hop_length,
        sample_rate=cfg.sample_rate,
        channels=cfg.channels,
        causal=cfg.causal,
        renormalize=False,
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                gain = math.sqrt(3) if name.startswith("encoder.") else 1.0
                p.mul_(gain * (0.5 + torch.rand(p.shape, generator=gen)))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        n = int(probe_seconds * cfg.sample_rate)
        t = torch.arange(n) / cfg.sample_rate
        tones = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (110.0, 440.0, 1234.0)])
        probe = torch.cat([0.1 * torch.randn(2, n, generator=gen), 0.5 * tones])[:, None]
        probe = probe.expand(-1, cfg.channels, -1)
        # Random biases give every latent a large common offset; centre the probe's latents on zero
        # (through the last conv's bias), as a trained codec's roughly are. Left in, the offset
        # dwarfs the signal in |x|^2 - 2 x.e + |e|^2 and the first stage's choice is fp32 rounding.
        model.encoder.model[-1].conv.conv.bias.sub_(model.encoder(probe).mean((0, 2)))
        residual = model.encoder(probe).transpose(1, 2).reshape(-1, cfg.dimension)
        for layer in model.quantizer.vq.layers:
            n = residual.shape[0]
            # Distinct frames where there are enough; the jitter separates repeats otherwise.
            if n >= cfg.bins:
                pick = torch.randperm(n, generator=gen)[: cfg.bins]
            else:
                pick = torch.randint(0, n, (cfg.bins,), generator=gen)
            noise = jitter * residual.std(0) * torch.randn(cfg.bins, cfg.dimension, generator=gen)
            embed = residual[pick] + noise
            spacing = torch.cdist(embed, embed) + torch.diag(torch.full((cfg.bins,), torch.inf))
            assert spacing.min() > 1e-3 * residual.std(0).norm(), "near-duplicate codewords"
            layer._codebook.embed.copy_(embed)
            layer._codebook.inited.fill_(1.0)
            residual = residual - layer.decode(layer.encode(residual[None].transpose(1, 2)))[0].T
    return model


def save_reference(
    model, cfg: EncodecConfig, path: str | os.PathLike, renormalize: bool = False
) -> None:
    """Writes `model` in the real `compression_state_dict.bin` format (see tests/refutil.py)."""
    from refutil import save_audiocraft_package

    save_audiocraft_package(path, model.state_dict(), xp_cfg_yaml(cfg, renormalize=renormalize))


def top2_gaps(model, wav):
    """The reference's own margin per (frame, stage): how close the runner-up codeword came.

    Returns [B, K, T] = (second-best minus best distance) / (|residual|^2 + |best codeword|^2), the
    gap in units of the terms the expanded distance |x|^2 - 2 x.e + |e|^2 cancels. float32 rounds
    those terms at ~6e-8 of that scale, and our latents differ from the reference's by ~1e-6 of
    their size, so a gap near that would leave the choice to rounding; the codebooks of
    `build_reference` keep every gap measured in docs/parity.md well above it.
    """
    import torch

    with torch.no_grad():
        emb = model.encoder(torch.as_tensor(wav))
        B, D, T = emb.shape
        residual = emb.transpose(1, 2).reshape(-1, D)
        gaps = []
        for layer in model.quantizer.vq.layers:
            E = layer._codebook.embed
            dist = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ E.T + E.pow(2).sum(1)[None]
            top2 = dist.topk(2, largest=False)
            scale = residual.pow(2).sum(1) + E[top2.indices[:, 0]].pow(2).sum(1)
            gaps.append((top2.values[:, 1] - top2.values[:, 0]) / scale)
            residual = residual - E[dist.argmin(1)]
    return torch.stack(gaps, 1).reshape(B, T, -1).transpose(1, 2).numpy()


def save_transformers(model, cfg: EncodecConfig, directory: str | os.PathLike) -> str:
    """Writes `model` (an audiocraft EnCodec) as a transformers `EncodecModel` directory
    (`save_pretrained`: config.json + model.safetensors), the format of facebook/encodec_32khz.

    The two are the same SEANet under other names, so the state dict is renamed, not converted:
    `X.model.i` -> `X.layers.i`, `conv.conv` / `convtr.convtr` -> `conv`, weight norm's g and v ->
    the parametrisation's `original0` / `original1`, `quantizer.vq.layers.q._codebook` ->
    `quantizer.layers.q.codebook`. The target bandwidth is the one that selects all `n_q`
    codebooks.
    """
    import re

    import transformers

    if cfg.final_activation is not None or cfg.elu_alpha != 1.0:
        raise ValueError("transformers' EnCodec has no final activation and ELU alpha 1")
    hf_cfg = transformers.EncodecConfig(
        target_bandwidths=[cfg.n_q * cfg.frame_rate * math.log2(cfg.bins) / 1000],
        sampling_rate=cfg.sample_rate,
        audio_channels=cfg.channels,
        normalize=False,
        hidden_size=cfg.dimension,
        num_filters=cfg.n_filters,
        num_residual_layers=cfg.n_residual_layers,
        upsampling_ratios=list(cfg.ratios),
        kernel_size=cfg.kernel_size,
        last_kernel_size=cfg.last_kernel_size,
        residual_kernel_size=cfg.residual_kernel_size,
        dilation_growth_rate=cfg.dilation_base,
        use_causal_conv=cfg.causal,
        pad_mode=cfg.pad_mode,
        compress=cfg.compress,
        num_lstm_layers=cfg.lstm,
        trim_right_ratio=cfg.trim_right_ratio,
        codebook_size=cfg.bins,
        use_conv_shortcut=not cfg.true_skip,
    )
    hf = transformers.EncodecModel(hf_cfg)
    renames = [
        (r"^(encoder|decoder)\.model\.", r"\1.layers."),
        (r"\.(conv\.conv|convtr\.convtr)\.", ".conv."),
        (r"\.weight_g$", ".parametrizations.weight.original0"),
        (r"\.weight_v$", ".parametrizations.weight.original1"),
        (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
    ]
    state = {}
    for key, value in model.state_dict().items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        state[key] = value
    hf.load_state_dict(state, strict=True)
    hf.eval().save_pretrained(directory)
    return os.fspath(directory)
