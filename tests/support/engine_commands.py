"""Every engine command chirond can render: each `command` of the shipped config examples (etc/),
with its model's profile, under each registered policy's engine flags (`policy.engine_args`),
exactly as `chirond.engines.engine_command` renders it for a launch."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

from chirond.config import ModelConfig, load_config
from chirond.engines import engine_command
from chirond.policy import REGISTRY, make_policy
from tests.support.toml import dumps_toml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "etc").glob("*.toml"))


def example_models(tmp: Path) -> list[tuple[str, ModelConfig]]:
    """(label, model) for every model with a `command` in the config examples; each example is
    loaded as chirond loads it, its [models] alone (the rest names files of a real host)."""
    out = []
    for path in EXAMPLES:
        doc = tomllib.loads(path.read_text())
        models = {k: v for k, v in doc.get("models", {}).items() if v.get("command")}
        if not models:
            continue
        copy = tmp / path.name
        copy.write_text(dumps_toml({"models": models}))
        for name, m in load_config(copy).models.items():
            out.append((f"{path.name}:{name}", m))
    return out


def rendered_commands(tmp: Path) -> list[tuple[str, list[str]]]:
    """(label, argv with {port} filled) for every example command x policy; the engine flags come
    from the policy for the model's own profile and SLO. Each command is also rendered for the model
    as an embedding model (`task = "embed"`, label ending ":embed"), under the first policy."""
    out = []
    for label, m in example_models(tmp):
        for i, policy_name in enumerate(REGISTRY):
            policy = make_policy(policy_name, {m.name: m.profile})
            args = policy.engine_args(m.name, m.slo)
            for task in ("generate", "embed") if i == 0 else ("generate",):
                rendered = engine_command(replace(m, task=task), args, host="0.0.0.0")
                argv = [a.replace("{port}", "8000") for a in rendered]
                out.append((f"{label}:{policy_name}{':embed' if task == 'embed' else ''}", argv))
    return out
