"""How long a simulated answer is when nothing caps it: a "natural" length drawn from the bundled
ShareGPT output lengths, deterministically from the server's seed and the prompt, so the same
request to the same server always gets the same answer length (as a greedy model would)."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
from pathlib import Path

SHAREGPT_PATH = Path(__file__).resolve().parent.parent / "data" / "sharegpt_lengths.csv.gz"


@functools.cache
def _output_lengths() -> tuple[int, ...]:
    with gzip.open(SHAREGPT_PATH, "rt", newline="") as f:
        return tuple(int(row["output_tokens"]) for row in csv.DictReader(f))


def natural_length(seed: int, prompt_key: bytes) -> int:
    """An output length from the ShareGPT distribution, picked by a hash of `seed` and the prompt."""
    table = _output_lengths()
    h = hashlib.blake2b(prompt_key, digest_size=8, key=str(seed).encode()[:64]).digest()
    return table[int.from_bytes(h, "little") % len(table)]
