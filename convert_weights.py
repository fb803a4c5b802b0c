"""Convert the released PyTorch checkpoints into an audiogen-jax directory.

    python convert_weights.py --compression compression_state_dict.bin --out DIR
    python convert_weights.py --lm state_dict.bin [--dtype bfloat16] --out DIR
    python convert_weights.py --t5 t5-large_or_dir --out DIR

Any combination of the three may be given at once; each adds its weights and its section of
DIR/config.json. Reading the audiocraft pickles needs no torch (a restricted unpickler; see
audiogen_jax/io/torch_pickle.py); the weight maps are audiogen_jax/*_params.py.
"""

from audiogen_jax.cli import convert_main

if __name__ == "__main__":
    raise SystemExit(convert_main())
