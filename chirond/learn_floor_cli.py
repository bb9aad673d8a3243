"""`chirond learn-floor`: the floor per hour each model's own traffic of a past day asked for.

For every model with `learned_floor_price` (or the `--model`s named), the day's recorded
interactive requests run through fixed deployments of that model in the simulator (warm, the
configured policy's per-instance mechanisms), from `min_instances` up; each hour's floor is the
count with the fewest GPU-hours plus SLO misses at 1/price GPU-hour each, so one instance more
only where it would have avoided at least the price's misses per GPU-hour
(chirond.sim.hindsight). Traffic is recorded only for models that set `learned_floor_price`. A
day the daemon was up (20 hours or more) without a request learns `min_instances`. With `--save`
the daemon uses the floor from then on, above the model's own `min_instances_by_hour`; the daemon
runs this itself after each local midnight.

Exit status: 0 a floor learned for every model asked, 3 none recorded for some (the daemon was
down, or no chirond.db), 2 a bad argument, config or database."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from typing import Any

from chirond.cli_common import add_json_arg
from chirond.config import Config, ModelConfig, load_for_command
from chirond.db import SCHEMA_VERSION, SchemaError, connect, db_path, user_version
from chirond.traffic import LearnedFloor, day_requests, save_floor, up_hours

EXAMPLES = """\
  chirond learn-floor --config /etc/chirond/chirond.toml            # yesterday, print only
  chirond learn-floor --config /etc/chirond/chirond.toml --save     # and use it (the daemon does this nightly)
  chirond learn-floor --config c.toml --day 2026-11-30 --model llama-70b --price 45 --json
"""


def add_parser(sub: Any) -> None:
    s = sub.add_parser("learn-floor", help="learn each model's floor per hour from its own traffic of a past day",
                       description=__doc__, epilog="examples:\n" + EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", required=True, help="the daemon's TOML config file")
    s.add_argument("--day", default=None, help="the local day to learn from, YYYY-MM-DD (default: yesterday)")
    s.add_argument("--model", action="append", default=None,
                   help="learn this model's floor (again for more; default: every model with learned_floor_price)")
    s.add_argument("--price", type=float, default=None,
                   help="SLO misses per GPU-hour an instance must avoid (default: its learned_floor_price)")
    s.add_argument("--save", action="store_true", help="store the floors for the daemon (chirond.db)")
    add_json_arg(s)
    s.set_defaults(func=main)


NO_TRAFFIC = 3  # the exit status when a model's day was not recorded
UP_HOURS = 20  # a day without traffic counts as quiet, not down, after this many hours up


def learn(cfg: Config, m: ModelConfig, day: dt.date, price: float, db: sqlite3.Connection) -> dict[str, Any] | None:
    """One model's floor from `day`'s recorded traffic; None when the day was not recorded."""
    from chirond.sim.hindsight import learn_floor, policy_for, requests_by_hour
    from chirond.sim.runner import ModelSetup

    reqs = day_requests(db, m.name, day)
    if not reqs and up_hours(db, day)[0] < UP_HOURS:
        return None
    setup = ModelSetup(m.name, m.profile, m.slo, cold_start_s=0.0, max_instances=m.max_instances,
                       min_instances=m.min_instances, initial_instances=0, static_instances=0)
    policy = policy_for(cfg.daemon.policy, setup, cfg.daemon.policy_params)
    counts, fixed = learn_floor(reqs, setup, policy, price, tick_s=cfg.daemon.tick_s)
    return {"model": m.name, "day": day.isoformat(), "price": price, "requests": requests_by_hour(reqs).tolist(),
            "min_instances_by_hour": list(counts), "misses": {str(n): v.tolist() for n, v in fixed.items()}}


def _open(cfg: Config) -> sqlite3.Connection | None:
    """chirond.db as the daemon left it, never migrated from here (the daemon owns its schema:
    a child of a daemon not yet restarted after an upgrade must not change the file under it)."""
    path = db_path(cfg.daemon.state_dir)
    if not path.exists():
        return None
    db = connect(path, busy_timeout_s=30.0)
    found = user_version(db)
    if found != SCHEMA_VERSION:
        db.close()
        raise SchemaError(f"{path}: schema version {found}, where this chirond reads {SCHEMA_VERSION}: "
                          "start the daemon of this version once (it migrates the file), then learn")
    return db


def main(args: argparse.Namespace) -> int:
    cfg = load_for_command(args.config)
    if cfg is None:
        return 2
    try:
        day = dt.date.fromisoformat(args.day) if args.day else dt.date.today() - dt.timedelta(days=1)
    except ValueError:
        print(f"error: --day: {args.day!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    names = args.model or [n for n, m in cfg.models.items() if m.learned_floor_price > 0]
    unknown = [n for n in names if n not in cfg.models]
    if unknown:
        print(f"error: --model: no model {unknown[0]!r} in {cfg.path} (models: {', '.join(cfg.models)})",
              file=sys.stderr)
        return 2
    if not names:
        print(f"error: no model in {cfg.path} sets learned_floor_price; name one with --model and --price",
              file=sys.stderr)
        return 2
    if args.price is not None and args.price <= 0:
        print(f"error: --price must be > 0, got {args.price:g}", file=sys.stderr)
        return 2
    try:
        db = _open(cfg)
    except SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if db is None:
        print(f"no traffic recorded: {db_path(cfg.daemon.state_dir)} does not exist", file=sys.stderr)
        return NO_TRAFFIC
    out: list[dict[str, Any]] = []
    try:
        for name in names:
            m = cfg.models[name]
            price = args.price if args.price is not None else m.learned_floor_price
            if price <= 0:
                print(f"error: {name} sets no learned_floor_price: give --price", file=sys.stderr)
                return 2
            got = learn(cfg, m, day, price, db)
            if got is None:
                print(f"{name}: no traffic recorded on {day} (the daemon was up {up_hours(db, day)[0]} of its hours; "
                      "traffic is recorded only for models with learned_floor_price)", file=sys.stderr)
                continue
            if args.save:
                save_floor(db, name, LearnedFloor(tuple(got["min_instances_by_hour"]), got["day"], price, time.time()))
            out.append(got)
    finally:
        db.close()
    if args.json:
        print(json.dumps(out))
    else:
        for got in out:
            print(f"{got['model']}, {got['day']}, {got['price']:g} SLO misses per GPU-hour"
                  f"{' (saved: the daemon uses it)' if args.save else ''}")
            print("  hour      " + " ".join(f"{h:>4d}" for h in range(24)))
            print("  requests  " + " ".join(f"{n:>4d}" for n in got["requests"]))
            print("  instances " + " ".join(f"{n:>4d}" for n in got["min_instances_by_hour"]))
            print(f"  [models.{got['model']}] min_instances_by_hour = {got['min_instances_by_hour']}")
    return 0 if len(out) == len(names) else NO_TRAFFIC
