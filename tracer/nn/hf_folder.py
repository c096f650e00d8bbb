"""Read a Hugging Face model folder: config.json with a `model_type`, safetensors weights, tokenizer files.

A folder as `save_pretrained` writes it (or a hub snapshot): `config.json`, `model.safetensors` or a
sharded `model.safetensors.index.json`, `tokenizer.json` with `tokenizer_config.json` /
`special_tokens_map.json`, `generation_config.json`, and for sentence-transformers `modules.json` and
its module folders. Nothing here unpickles: a folder whose only weights are pickle files
(`pytorch_model.bin`, `*.pt`) is refused by name, without opening them, since loading a pickle can run
arbitrary code. Every problem is one BadInput line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from tracer.errors import BadInput

if TYPE_CHECKING:  # torch is needed only to load the weights, not to list or check a folder (`tracer models`)
    import torch

WEIGHTS = "model.safetensors"
MARIAN_TOKENIZER = ("source.spm", "target.spm", "vocab.json")  # MarianTokenizer's files (it has no tokenizer.json)
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
OTHER_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.onnx", "model.gguf")
# Small JSON files the converters may want (sentence-transformers modules, generation settings), by
# relative path. The big or already-read ones are left out.
NOT_EXTRAS = {"config.json", TOKENIZER, WEIGHTS_INDEX, "vocab.json", "target_vocab.json"}
EXTRA_MAX_BYTES = 1 << 20


@dataclass
class HFFolder:
    """What a Hugging Face folder holds, read and checked; the weights themselves are read on demand."""

    path: Path
    config: dict                     # config.json
    weight_files: list[Path]         # model.safetensors, or every shard the index names (in name order)
    weight_map: dict[str, str] | None = None   # weight name -> shard file name (sharded folders only)
    tokenizer_config: dict = field(default_factory=dict)     # tokenizer_config.json
    special_tokens_map: dict = field(default_factory=dict)   # special_tokens_map.json
    generation_config: dict = field(default_factory=dict)    # generation_config.json
    chat_template: str | None = None                         # chat_template.jinja or tokenizer_config's
    chat_template_file: str | None = None                    # which file it came from
    extras: dict[str, object] = field(default_factory=dict)  # other small JSON files, by relative path

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    @property
    def sentencepiece(self) -> bool:
        """The tokenizer is Marian's SentencePiece files, not a tokenizer.json."""
        return not (self.path / TOKENIZER).is_file() and all((self.path / name).is_file() for name in MARIAN_TOKENIZER)

    @property
    def tokenizer_file(self) -> Path:
        return self.path / TOKENIZER

    def load_weights(self) -> dict[str, torch.Tensor]:
        """Every weight, on the CPU in its stored dtype; a sharded folder's keys checked against its index."""
        weights: dict[str, torch.Tensor] = {}
        seen_in: dict[str, str] = {}
        for file in self.weight_files:
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        if key in seen_in:
                            raise BadInput(f"{self.path}: weight {key!r} is in both {seen_in[key]} and {file.name}")
                        if self.weight_map is not None and self.weight_map.get(key) != file.name:
                            where = self.weight_map.get(key)
                            raise BadInput(f"{file}: holds {key!r}, which {WEIGHTS_INDEX} "
                                           + (f"puts in {where}" if where else "does not list"))
                        seen_in[key] = file.name
                        weights[key] = handle.get_tensor(key)
            except (SafetensorError, OSError, ValueError) as exc:
                raise BadInput(f"{file}: cannot read weights ({str(exc).splitlines()[0][:160]})") from None
        if self.weight_map is not None:
            for key, shard in self.weight_map.items():
                if key not in weights:
                    raise BadInput(f"{self.path / WEIGHTS_INDEX}: weight {key!r} is not in {shard}, where the index puts it")
        return weights

    def weights_digest(self) -> str:
        """`sha256:<hex>` of the weights: the file's own sha256 for one file (what `sha256sum` prints, and
        the blob name in a hub cache), else the sha256 of the shards' `sha256sum`-style listing."""
        hashes = [(file_sha256(file), file.name) for file in self.weight_files]
        if len(hashes) == 1:
            return f"sha256:{hashes[0][0]}"
        listing = "".join(f"{digest}  {name}\n" for digest, name in hashes)
        return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks so a large checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, *, reject_duplicates: bool = False) -> object:
    """A JSON file, or one BadInput line saying why not (a key given twice counts, when asked)."""

    def no_duplicates(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise BadInput(f"{path}: {key!r} is listed twice")
            seen.add(key)
        return dict(pairs)

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates if reject_duplicates else None)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, a 5000-digit integer
        raise BadInput(f"{path}: not valid JSON ({(str(exc).splitlines() or ['nested too deep'])[0][:120]})") from None


def hf_model_type(folder: Path) -> str | None:
    """The folder's `model_type` when its config.json is a Hugging Face one, else None (tracer's own
    config.json has `arch` and no `model_type`)."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("model_type"), str):
        return data["model_type"]
    return None


def pickle_only_message(folder: Path, names: list[str]) -> str | None:
    """The refusal for a folder whose weights are only pickle (or other non-safetensors) files, if it is one."""
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) or n == "pytorch_model.bin.index.json")
    if pickles:
        shown = ", ".join(pickles[:3]) + (", …" if len(pickles) > 3 else "")
        return (f"{folder} has only pickle weights ({shown}); tracer never unpickles (a pickle can run code): "
                f"convert them to safetensors (transformers' save_pretrained writes {WEIGHTS})")
    others = sorted(n for n in names if n in OTHER_WEIGHTS)
    if others:
        return f"{folder} has no safetensors weights (only {', '.join(others)}); tracer reads {WEIGHTS} or {WEIGHTS_INDEX}"
    return None


def read_hf_folder(folder: str | os.PathLike) -> HFFolder:
    """Check a Hugging Face folder and read its small files; the weights are read by `load_weights`."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise BadInput(f"{folder / 'config.json'}: a Hugging Face config needs a model_type")
    names = sorted(os.listdir(folder))  # names only: no weight file is opened before it is known to be safetensors
    weight_map = None
    if WEIGHTS in names:
        weight_files = [folder / WEIGHTS]
    elif WEIGHTS_INDEX in names:
        weight_map, weight_files = read_weight_index(folder)
    else:
        raise BadInput(pickle_only_message(folder, names) or f"{folder} lacks {WEIGHTS} (or a sharded {WEIGHTS_INDEX})")
    if TOKENIZER not in names and not all(name in names for name in MARIAN_TOKENIZER):
        raise BadInput(f"{folder} lacks {TOKENIZER} (tracer reads fast tokenizers: loading the folder's tokenizer "
                       f"with transformers and calling save_pretrained writes one)")
    hf = HFFolder(folder, config, weight_files, weight_map)
    hf.tokenizer_config = optional_json_object(folder / "tokenizer_config.json")
    hf.special_tokens_map = optional_json_object(folder / "special_tokens_map.json")
    hf.generation_config = optional_json_object(folder / "generation_config.json")
    hf.chat_template, hf.chat_template_file = read_chat_template(folder, hf.tokenizer_config)
    hf.extras = read_extras(folder)
    return hf


def read_weight_index(folder: Path) -> tuple[dict[str, str], list[Path]]:
    """model.safetensors.index.json's weight map, with every shard it names present in the folder."""
    index_path = folder / WEIGHTS_INDEX
    index = read_json(index_path, reject_duplicates=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadInput(f"{index_path}: no weight_map")
    shards = sorted(set(weight_map.values()), key=str)
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise BadInput(f"{index_path}: {shard!r} is not a safetensors file name in this folder")
        if not (folder / shard).is_file():
            raise BadInput(f"{index_path}: shard {shard} is missing from {folder}")
    return weight_map, [folder / shard for shard in shards]


def optional_json_object(path: Path) -> dict:
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a JSON object")
    return data


def read_chat_template(folder: Path, tokenizer_config: dict) -> tuple[str | None, str | None]:
    """The chat template, where transformers looks: chat_template.jinja first, then tokenizer_config.json
    (a string, or a list of named templates of which "default" is used)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8"), jinja.name
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{jinja}: cannot read ({exc})") from None
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template:
        return template, "tokenizer_config.json"
    return None, None


def read_extras(folder: Path) -> dict[str, object]:
    """The folder's other small JSON files, top level and one folder down (sentence-transformers keeps its
    pooling settings in 1_Pooling/config.json)."""
    extras: dict[str, object] = {}
    candidates = [p for p in folder.glob("*.json")] + [p for p in folder.glob("*/*.json")]
    for path in sorted(candidates):
        relative = path.relative_to(folder).as_posix()
        if relative in NOT_EXTRAS or not path.is_file() or path.stat().st_size > EXTRA_MAX_BYTES:
            continue
        extras[relative] = read_json(path)
    return extras
