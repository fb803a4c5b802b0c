"""Files from the Hugging Face hub: the local cache first, the network only when it answers.

    path = hub.download("facebook/audiogen-medium", "state_dict.bin")   # None: not in the repo
    hub.offline_problem("facebook/audiogen-medium")   # None, or why it cannot be had, what to do

Also where converted hub models are cached (`converted_dir`) and what to tell a user who is offline.
This module imports nothing heavy, so the command line can answer "you are offline" before loading
JAX.

`huggingface_hub` retries an unreachable host for about 25 s before giving up. Here a file already
in its cache is used without touching the network, and before any download one quick probe (name
lookup and a TCP connection to the hub's host, `PROBE_TIMEOUT` seconds in all) decides whether to
try; when it fails, `HubUnreachable` is raised at once, and callers say what to do offline.

No probe is made when a proxy is configured (`HTTPS_PROXY` and friends: the host is reached through
it, so a direct connection proves nothing); `HF_HUB_OFFLINE=1` counts as unreachable.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlsplit

DEFAULT_MODEL = "facebook/audiogen-medium"  # what `AudioGen.from_pretrained()` loads
LM_FILE = "state_dict.bin"  # an audiocraft release's files
COMPRESSION_FILE = "compression_state_dict.bin"
# What a first download costs, for the offline message (scripts/model_sizes.py, docs/hardware.md):
# state_dict.bin + compression_state_dict.bin + the T5 files its config names.
DOWNLOAD_SIZES = {DEFAULT_MODEL: "6.86 GB with the t5-large text encoder"}
# The text encoder each released checkpoint's LM config names (`presets.CHECKPOINTS` has the rest
# of their configs); the offline message says where to get it.
TEXT_ENCODERS = {
    DEFAULT_MODEL: "t5-large",
    **{
        f"facebook/musicgen-{stereo}{scale}": "t5-base"
        for stereo in ("", "stereo-")
        for scale in ("small", "medium", "large")
    },
}
# Released checkpoints that need parts audiogen-jax does not implement: refused before any download.
_MELODY = (
    "it conditions on a melody through a chroma conditioner (a chromagram of a reference "
    "waveform), which audiogen-jax does not implement"
)
UNSUPPORTED = {
    "facebook/musicgen-melody": _MELODY,
    "facebook/musicgen-melody-large": _MELODY,
    "facebook/musicgen-stereo-melody": _MELODY,
    "facebook/musicgen-stereo-melody-large": _MELODY,
    "facebook/musicgen-style": "it conditions on a style excerpt (a MERT-based style conditioner), "
    "which audiogen-jax does not implement",
}
TINY_RANDOM = "tiny-random"  # the offline model (presets.py)
TOY = "toy"  # the small model trained from scratch that ships in the package (toy/)
PROBE_TIMEOUT = 1.5  # seconds for the name lookup and the connection together
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_probe_cache: dict[str, tuple[float, str | None]] = {}  # host -> (when, why unreachable)


class HubUnreachable(OSError):
    """The hub cannot be reached (offline, no DNS, a firewall, or HF_HUB_OFFLINE)."""


def _resolve(host: str, port: int, timeout: float) -> list:
    # getaddrinfo has no timeout of its own: run it in a daemon thread and stop waiting.
    result: dict[str, object] = {}

    def lookup() -> None:
        try:
            result["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise HubUnreachable(f"looking up {host} took more than {timeout:g} s")
    if "error" in result:
        raise HubUnreachable(f"cannot resolve {host} ({result['error']})")
    return result["addrs"]  # type: ignore[return-value]


def unreachable_reason(timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the hub cannot be reached, or None when it answers (remembered for 60 s)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    cached = _probe_cache.get(host)
    if cached is not None and time.monotonic() - cached[0] < 60:
        return cached[1]
    reason = None
    deadline = time.monotonic() + timeout
    try:
        family, kind, proto, _, addr = _resolve(host, port, timeout)[0]
        with socket.socket(family, kind, proto) as s:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.connect(addr)
    except HubUnreachable as e:
        reason = str(e)
    except OSError as e:
        reason = f"cannot connect to {host}:{port} ({e})"
    _probe_cache[host] = (time.monotonic(), reason)
    return reason


def download(repo_id: str, filename: str) -> str | None:
    """The local path of one file of a hub repository: cached, else downloaded.

    Returns:
      The path, or None when the repository has no such file.

    Raises:
      HubUnreachable: the file is not cached and the hub cannot be reached (fast).
      Exception: whatever `huggingface_hub` raises for other failures (unknown repository, HTTP
        errors, a full disk).
    """
    # Imported here: converting or loading local files never needs it.
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=True)
    except RemoteEntryNotFoundError:
        return None  # known not to exist in the repository
    except Exception:  # noqa: BLE001 - not cached (or an unreadable cache entry): try the network
        pass
    reason = unreachable_reason()
    if reason is not None:
        raise HubUnreachable(f"the Hugging Face hub cannot be reached: {reason}")
    try:
        return huggingface_hub.hf_hub_download(repo_id, filename)
    except RemoteEntryNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------
# Converted hub models, and what to do offline.


def cache_root() -> str:
    """Where converted models are cached: $AUDIOGEN_JAX_CACHE, else ~/.cache/audiogen_jax."""
    return os.environ.get("AUDIOGEN_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "audiogen_jax"
    )


def converted_dir(name: str, root: str | None = None) -> str:
    """The cache entry of hub model `name` (owner/name -> ROOT/owner--name)."""
    return os.path.join(root or cache_root(), name.replace("/", "--"))


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and " " not in name


def unsupported_message(name: str) -> str:
    return (
        f"{name} is not supported: {UNSUPPORTED[name]}. Supported checkpoints: "
        f"{', '.join(TEXT_ENCODERS)}"
    )


def how_to_get(name: str) -> str:
    t5 = TEXT_ENCODERS.get(name)
    t5_where = (
        f"https://huggingface.co/google-t5/{t5}"
        if t5
        else "the T5 its config names (t5-large for AudioGen, t5-base for MusicGen)"
    )
    return (
        f"To get it offline: download {LM_FILE} and {COMPRESSION_FILE} from "
        f"https://huggingface.co/{name} and the T5 files (config.json, model.safetensors, "
        f"spiece.model) from {t5_where}, convert them with `audiogen-jax convert "
        "--compression compression_state_dict.bin --lm state_dict.bin --t5 T5_DIR --out DIR` and "
        "pass DIR."
    )


def offline_help(name: str) -> str:
    size = DOWNLOAD_SIZES.get(name)
    return (
        (f"The download is {size}. " if size else "")
        + f"Without network, try the small model that ships with the package (`--model {TOY}`: "
        "beeps, chirps, noises and clicks), or: "
        f"{how_to_get(name)}"
    )


def offline_problem(name: str, root: str | None = None) -> str | None:
    """Why hub model `name` cannot be had now, with what to do; None when it can (converted
    already, its files in the Hugging Face cache, or the hub reachable).

    Cheap (no JAX): the command line asks it before loading anything.
    """
    if name in UNSUPPORTED:
        return unsupported_message(name)
    if os.path.isfile(os.path.join(converted_dir(name, root), "manifest.json")):
        return None
    import huggingface_hub

    try:
        for filename in (LM_FILE, COMPRESSION_FILE):
            huggingface_hub.hf_hub_download(name, filename, local_files_only=True)
        return None
    except Exception:  # noqa: BLE001 - not cached: the network decides
        pass
    reason = unreachable_reason()
    if reason is None:
        return None
    return (
        f"could not download {name!r}: the Hugging Face hub cannot be reached: {reason} "
        f"(offline?). {offline_help(name)}"
    )
