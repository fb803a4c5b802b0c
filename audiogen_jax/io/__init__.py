"""File formats, at the bottom of the import graph: nothing here imports the models.

  `errors`        the error types every reader raises (`FormatError`, `ConversionError`).
  `torch_pickle`  `torch.save` zip archives read without torch, through a restricted unpickler.
  `audiocraft`    audiocraft export packages and their `xp.cfg` YAML with `${...}` interpolation.
  `safetensors`   one safetensors reader and one streaming writer, with the one dtype table.
  `rules`         the declarative mapping of source keys onto parameter paths, with its checks.

Each model's own mapping (its source config, its `Rule` table and its `convert_*` entry point)
sits beside the model: `encodec_params.py`, `t5_params.py`, `lm_params.py`.
"""
