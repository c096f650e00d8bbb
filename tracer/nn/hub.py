"""Hugging Face hub names (`ORG/NAME`, `ORG/NAME@REVISION`) -> a snapshot folder in the local hub cache.

The cache is the one transformers uses (`models--ORG--NAME/{refs,snapshots,blobs}` under `HF_HUB_CACHE`,
else `HF_HOME/hub`, else `~/.cache/huggingface/hub`). A cached snapshot is used as it is, without asking
the hub. Only a model that is not cached (or whose snapshot lacks files) is downloaded, through
`huggingface_hub` with its progress bars, and only when `HF_HUB_OFFLINE` is not set: the JSON and chat
template files and the safetensors weights, never a pickle `.bin`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import BadInput, TracerError
from tracer.nn.hf_folder import TOKENIZER, WEIGHTS, WEIGHTS_INDEX, hf_model_type, pickle_only_message, read_json

# A repo id as the hub allows it (letters, digits, - _ .; no "--" or ".."), then an optional @revision.
HUB_NAME = re.compile(r"(?P<repo>(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
COMMIT = re.compile(r"[0-9a-f]{40}")
TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass
class HubSnapshot:
    """One revision of a hub model in the local cache."""

    repo_id: str
    revision: str      # as asked for: a branch, a tag or a commit
    commit: str        # the snapshot folder's name
    path: Path


def parse_hub_name(text: str) -> tuple[str, str] | None:
    """`ORG/NAME[@REVISION]` -> (repo id, revision), or None when it cannot be a hub name."""
    match = HUB_NAME.fullmatch(text)
    if not match or "--" in match["repo"] or ".." in text or len(match["repo"]) > 96:
        return None
    return match["repo"], match["revision"] or "main"


def cache_dir() -> Path:
    """Where the hub cache is, from the environment as it is now (huggingface_hub reads it once, at import)."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def offline() -> bool:
    """True when the user has asked for no network (`HF_HUB_OFFLINE`, or transformers' `TRANSFORMERS_OFFLINE`)."""
    return any((os.environ.get(name) or "").upper() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_snapshot(repo_id: str, revision: str = "main", cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of `repo_id` at `revision` (through refs/, or a commit hash), if any."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    cache = cache or cache_dir()
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache), revision=revision)
    except (HFValidationError, OSError):
        return None
    return Path(found).parent if isinstance(found, str) else None


def snapshot_is_complete(path: Path) -> bool:
    """config.json, tokenizer.json and every weight file present (else a download may finish it)."""
    if not (path / "config.json").is_file() or not (path / TOKENIZER).is_file():
        return False
    if (path / WEIGHTS).is_file():
        return True
    index = path / WEIGHTS_INDEX
    if not index.is_file():
        return False
    try:
        shards = set(read_json(index)["weight_map"].values())
    except (BadInput, KeyError, TypeError, AttributeError):
        return True  # damaged: let the folder reader say what is wrong with it
    return all((path / str(shard)).is_file() for shard in shards)


def resolve_hub_name(text: str) -> HubSnapshot:
    """A hub name -> its snapshot in the cache, downloading it when it is not there and the user allows it."""
    parsed = parse_hub_name(text)
    if parsed is None:
        raise BadInput(f"{text!r} is not a Hugging Face model name (ORG/NAME or ORG/NAME@REVISION)")
    repo_id, revision = parsed
    cache = cache_dir()
    path = cached_snapshot(repo_id, revision, cache)
    if path is not None and (snapshot_is_complete(path) or offline()):
        return HubSnapshot(repo_id, revision, path.name, path)
    if offline():
        at = f" at revision {revision!r}" if revision != "main" else ""
        raise BadInput(f"no folder {text!r}, and {repo_id}{at} is not in the Hugging Face cache ({cache}); "
                       f"HF_HUB_OFFLINE is set, so it is not downloaded")
    path = download(repo_id, revision, cache, text)
    return HubSnapshot(repo_id, revision, path.name, path)


def download(repo_id: str, revision: str, cache: Path, text: str) -> Path:
    """Fetch what tracer reads of `repo_id` into the cache: JSON and chat templates, then the safetensors
    weights the repo lists (never pickle). Returns the snapshot folder."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        info = HfApi().model_info(repo_id, revision=revision)
        names = [sibling.rfilename for sibling in info.siblings or []]
        if WEIGHTS in names:
            weights = [WEIGHTS]
        elif WEIGHTS_INDEX in names:
            index = hf_hub_download(repo_id, WEIGHTS_INDEX, revision=revision, cache_dir=str(cache))
            weight_map = read_json(Path(index)).get("weight_map") or {}
            weights = [WEIGHTS_INDEX] + sorted({str(shard) for shard in weight_map.values()})
        else:
            raise BadInput(pickle_only_message(f"{repo_id} on the hub", names) or f"{repo_id} has no {WEIGHTS} on the hub")
        small = [name for name in names if name.endswith((".json", ".jinja", ".spm"))]  # .spm: Marian's tokenizer
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=small + weights))
    except GatedRepoError:
        raise BadInput(f"{repo_id} is gated: accept its terms on the hub, then log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise BadInput(f"no folder {text!r}, and no model {repo_id} on the Hugging Face hub "
                       f"(a private one needs `hf auth login`)") from None
    except RevisionNotFoundError:
        raise BadInput(f"{repo_id} has no revision {revision!r} on the Hugging Face hub") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, TimeoutError) as exc:
        raise TracerError(f"{repo_id} is not in the Hugging Face cache ({cache}) and the hub cannot be reached "
                          f"({type(exc).__name__})") from None
    except HfHubHTTPError as exc:
        raise TracerError(f"the Hugging Face hub refused {repo_id}: {str(exc).splitlines()[0][:160]}") from None
    except OSError as exc:
        raise TracerError(f"downloading {repo_id}: {exc.strerror or str(exc).splitlines()[0][:160]}") from None
    except Exception as exc:  # the HTTP client's own connection errors (httpx) are not OSErrors
        if isinstance(exc, TracerError):
            raise
        raise TracerError(f"downloading {repo_id} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


@dataclass
class CachedModel:
    """A model in the hub cache, as `tracer models` lists it."""

    name: str                # ORG/NAME
    path: Path               # the snapshot refs/main points at (else the newest one)
    model_type: str | None   # from its config.json; None when it has none
    has_weights: bool        # model.safetensors or its sharded index (a pickle-only model is never loaded)


def cached_models(cache: Path | None = None) -> list[CachedModel]:
    """Every model in the hub cache that has a snapshot with a Hugging Face config.json."""
    cache = cache or cache_dir()
    found = []
    for repo in sorted(cache.glob("models--*")) if cache.is_dir() else []:
        name = repo.name.removeprefix("models--").replace("--", "/")
        snapshot = cached_snapshot(name, "main", cache)
        if snapshot is None:
            snapshots = [p for p in (repo / "snapshots").glob("*") if (p / "config.json").is_file()]
            snapshot = max(snapshots, key=lambda p: p.stat().st_mtime) if snapshots else None
        if snapshot is not None:
            has_weights = (snapshot / WEIGHTS).exists() or (snapshot / WEIGHTS_INDEX).exists()
            found.append(CachedModel(name, snapshot, hf_model_type(snapshot), has_weights))
    return found
