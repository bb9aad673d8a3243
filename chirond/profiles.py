"""Engine performance profiles (profiles/*.toml): step time, prefill cost, KV capacity, cold start."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from chirond.bundled import PROFILES_DIR


class ProfileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Profile:
    name: str  # file stem
    model: str
    gpu: str
    tensor_parallel: int
    gpus: int
    a_ms: float
    b_ms_per_seq: float
    c_ms_per_1k_ctx: float
    prefill_ms_per_token: float
    kv_capacity_tokens: int
    block_tokens: int
    weights_gb: float
    storage_gbps: float
    engine_init_s: float
    max_num_seqs: int
    max_num_batched_tokens: int

    @property
    def cold_start_s(self) -> float:
        return self.weights_gb / self.storage_gbps + self.engine_init_s

    @property
    def kv_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_tokens

    def step_s(self, batch: float, ctx_tokens: float) -> float:
        """One decode step with `batch` sequences holding `ctx_tokens` context tokens in all."""
        return (self.a_ms + self.b_ms_per_seq * batch + self.c_ms_per_1k_ctx * ctx_tokens / 1000.0) / 1000.0

    def prefill_s(self, tokens: float) -> float:
        return self.prefill_ms_per_token * tokens / 1000.0

    def max_batch_for_kv(self, ctx_per_seq: float) -> int:
        """How many sequences of this mean context fit in the KV cache (half a block lost each)."""
        per_seq = ctx_per_seq + self.block_tokens / 2
        return max(1, min(self.max_num_seqs, int(self.kv_capacity_tokens / per_seq)))

    def tpot_s(self, batch: float, ctx_per_seq: float, prompt_tokens_per_s: float = 0.0) -> float:
        """Mean time per output token at a steady concurrency `batch`, while the instance also
        prefills `prompt_tokens_per_s` (chunked prefill stretches every step by its share)."""
        busy = self.prefill_s(prompt_tokens_per_s)
        if busy >= 1.0:
            return math.inf
        return self.step_s(batch, batch * ctx_per_seq) / (1.0 - busy)

    def decode_tokens_per_s(self, batch: float, ctx_per_seq: float) -> float:
        return batch / self.step_s(batch, batch * ctx_per_seq)


_SECTIONS: dict[str, tuple[str, ...]] = {
    "profile": ("model", "gpu", "tensor_parallel", "gpus"),
    "decode": ("a_ms", "b_ms_per_seq", "c_ms_per_1k_ctx"),
    "prefill": ("ms_per_token",),
    "kv": ("capacity_tokens", "block_tokens", "bytes_per_token"),
    "weights": ("size_gb",),
    "cold_start": ("storage_gbps", "engine_init_s"),
    "engine": ("max_num_seqs", "max_num_batched_tokens"),
}


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile; errors name the file and the key."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: profile file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from None
    for section in doc:
        if section not in _SECTIONS:
            raise ProfileError(f"{path}: unknown section [{section}]; valid: {', '.join(_SECTIONS)}")
    values: dict[str, object] = {}
    for section, keys in _SECTIONS.items():
        table = doc.get(section)
        if not isinstance(table, dict):
            raise ProfileError(f"{path}: missing section [{section}]")
        for key in table:
            if key not in keys and key != "provenance":
                raise ProfileError(f"{path}: {section}.{key}: unknown key; valid: {', '.join(keys)}")
        for key in keys:
            if key not in table:
                raise ProfileError(f"{path}: {section}.{key}: missing")
            v = table[key]
            if section == "profile" and key in ("model", "gpu"):
                if not isinstance(v, str) or not v:
                    raise ProfileError(f"{path}: {section}.{key}: must be a non-empty string")
            elif isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ProfileError(f"{path}: {section}.{key}: must be a positive number, got {v!r}")
            values[f"{section}.{key}"] = v
        if section != "profile" and not isinstance(table.get("provenance"), str):
            raise ProfileError(f"{path}: {section}.provenance: every figure needs a provenance line")

    def num(key: str) -> float:
        return float(values[key])  # type: ignore[arg-type]

    return Profile(
        name=path.stem,
        model=str(values["profile.model"]),
        gpu=str(values["profile.gpu"]),
        tensor_parallel=int(num("profile.tensor_parallel")),
        gpus=int(num("profile.gpus")),
        a_ms=num("decode.a_ms"),
        b_ms_per_seq=num("decode.b_ms_per_seq"),
        c_ms_per_1k_ctx=num("decode.c_ms_per_1k_ctx"),
        prefill_ms_per_token=num("prefill.ms_per_token"),
        kv_capacity_tokens=int(num("kv.capacity_tokens")),
        block_tokens=int(num("kv.block_tokens")),
        weights_gb=num("weights.size_gb"),
        storage_gbps=num("cold_start.storage_gbps"),
        engine_init_s=num("cold_start.engine_init_s"),
        max_num_seqs=int(num("engine.max_num_seqs")),
        max_num_batched_tokens=int(num("engine.max_num_batched_tokens")),
    )


def available_profiles() -> list[str]:
    """Names of the shipped profiles (chirond/data/profiles/*.toml, without the suffix)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def resolve_profile(raw: str, base: Path) -> Path | None:
    """The profile file `raw` names: absolute, or relative to `base` (the config's directory) and
    then a shipped profile's name; `.toml` may be left out. None when there is none."""
    p = Path(raw).expanduser()
    names = [p] if raw.endswith(".toml") else [p, p.with_name(p.name + ".toml")]
    dirs = [Path("/")] if p.is_absolute() else [base, PROFILES_DIR]
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return (d / name).resolve()
    return None


def find_profile(raw: str) -> Path:
    """What a command line names: a file, or a shipped profile's bare name; ProfileError if neither."""
    path = resolve_profile(raw, Path.cwd())
    if path is None:
        raise ProfileError(f"no such profile: {raw!r} (not a file; shipped: {', '.join(available_profiles())})")
    return path
