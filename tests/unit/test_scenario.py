from __future__ import annotations

import itertools
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from chirond.model import ReqClass
from chirond.sim.scenario import (
    DEFAULT_POLICIES,
    Scenario,
    ScenarioError,
    build_workload,
    load_scenario,
)

Writer = Callable[..., Path]

AZURE_CONV = Path(__file__).resolve().parents[2] / "chirond" / "data" / "azure2023_conv.csv"

BASE = """\
horizon_s = 3600

[cluster]
gpus = 50
gpus_per_node = 4

[models.llama-8b]
profile = "../profiles/p.toml"
slo = { ttft_s = 2.0, tpot_s = 0.1 }

[[models.llama-8b.workload]]
kind = "poisson"
rate_per_s = 2.0
duration_s = 600
lengths = { input_tokens = 111, output_tokens = 11 }
"""


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write a scenario into tmp/scenarios/ with a profile in tmp/profiles/ (relative paths)."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.toml").write_text("# not parsed here\n")
    (tmp_path / "scenarios").mkdir()

    def _write(text: str, name: str = "s.toml") -> Path:
        p = tmp_path / "scenarios" / name
        p.write_text(textwrap.dedent(text))
        return p

    return _write


def test_full_scenario(write: Writer, tmp_path: Path) -> None:
    (tmp_path / "scenarios" / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n")
    p = write(
        f"""\
        name = "paper"
        description = "two models"
        seed = 7
        horizon_s = 10800
        tick_s = 2.5

        [cluster]
        partition = "a100"
        gpus = 50
        gpus_per_node = 4
        queue_wait_s = [0, 30]
        time_limit_s = 14400
        [[cluster.failures]]
        at_s = 1800
        node = 3
        down_s = 60
        [[cluster.failures]]
        at_s = 900

        [models.llama-8b]
        profile = "../profiles/p.toml"
        cold_start_s = 60
        slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}
        max_gpus = 40
        min_instances = 2
        initial_instances = 3
        static_instances = 4

        [[models.llama-8b.workload]]
        kind = "azure"
        path = "{AZURE_CONV}"
        time_scale = 2
        limit = 100

        [[models.llama-8b.workload]]
        kind = "backlog"
        requests = 500
        deadline_s = 7200
        start_s = 60

        [[models.llama-8b.workload]]
        kind = "curve"
        points = [[0, 1.0], [3600, 5]]
        duration_s = 3600

        [[models.llama-8b.workload]]
        kind = "diurnal"
        class = "batch"
        deadline_s = 900
        peak_rate_per_s = 3
        trough_rate_per_s = 1
        duration_s = 3600

        [[models.llama-8b.workload]]
        kind = "trace"
        path = "t.csv"

        [models."qwen-0.5b"]
        profile = "../profiles/p.toml"
        slo = {{ ttft_s = 1, tpot_s = 0.05 }}

        [[models."qwen-0.5b".workload]]
        kind = "gamma"
        rate_per_s = 1
        cv = 4
        duration_s = 100

        [policies]
        run = ["static", "chiron"]
        [policies.params.chiron]
        initial_cap = 32
        """
    )
    s = load_scenario(p)
    assert (s.name, s.description, s.seed, s.horizon_s, s.tick_s) == ("paper", "two models", 7, 10800.0, 2.5)
    c = s.cluster
    assert (c.partition, c.gpus, c.gpus_per_node, c.nodes) == ("a100", 50, 4, 13)
    assert c.queue_wait_s == (0.0, 30.0) and c.time_limit_s == 14400.0
    assert [(f.at_s, f.node, f.down_s) for f in c.failures] == [(1800.0, 3, 60.0), (900.0, None, 600.0)]
    m, q = s.models
    assert m.name == "llama-8b" and q.name == "qwen-0.5b"
    assert m.profile_path == (tmp_path / "profiles" / "p.toml").resolve()
    assert (m.cold_start_s, m.ttft_s, m.tpot_s, m.max_gpus) == (60.0, 2.0, 0.1, 40)
    assert (m.min_instances, m.initial_instances, m.static_instances) == (2, 3, 4)
    # defaults
    assert (q.cold_start_s, q.max_gpus, q.min_instances, q.initial_instances, q.static_instances) == (
        None,
        50,
        1,
        1,
        1,
    )
    kinds = [(w.kind, w.cls) for w in m.workloads]
    assert kinds == [
        ("azure", ReqClass.INTERACTIVE),
        ("backlog", ReqClass.BATCH),
        ("curve", ReqClass.INTERACTIVE),
        ("diurnal", ReqClass.BATCH),
        ("trace", ReqClass.INTERACTIVE),
    ]
    az, bl, cu, di, tr = (w.params for w in m.workloads)
    assert az == {"start_s": 0.0, "deadline_s": None, "path": AZURE_CONV, "time_scale": 2.0, "limit": 100}
    assert bl["requests"] == 500 and bl["deadline_s"] == 7200.0 and bl["lengths"] == "sharegpt"
    assert cu["points"] == ((0.0, 1.0), (3600.0, 5.0))
    assert di["period_s"] == 86400.0 and di["peak_at_s"] == 43200.0 and di["deadline_s"] == 900.0
    assert tr["path"] == (tmp_path / "scenarios" / "t.csv").resolve()
    assert q.workloads[0].params["cv"] == 4.0
    assert s.policies == ("static", "chiron")
    assert s.policy_params == {"chiron": {"initial_cap": 32}}

    reqs = build_workload(s, np.random.default_rng(s.seed))
    lm = reqs["llama-8b"]
    assert sum(r.cls is ReqClass.BATCH for r in lm) > 500  # backlog + batch diurnal
    assert len([r for r in lm if r.arrival == 60.0 and r.deadline == 7260.0]) == 500
    all_ids = [r.id for rs in reqs.values() for r in rs]
    assert sorted(all_ids) == list(range(len(all_ids)))
    for rs in reqs.values():
        assert all(a.arrival <= b.arrival for a, b in itertools.pairwise(rs))
        assert all(r.deadline is not None for r in rs if r.cls is ReqClass.BATCH)


def test_defaults(write: Writer) -> None:
    s = load_scenario(write(BASE, name="mine.toml"))
    assert (s.name, s.description, s.seed, s.tick_s) == ("mine", "", 0, 5.0)
    assert s.cluster.partition == "gpu" and s.cluster.queue_wait_s == (0.0, 0.0)
    assert s.cluster.time_limit_s == 0.0 and s.cluster.failures == ()
    assert s.policies == DEFAULT_POLICIES and s.policy_params == {}
    w = s.models[0].workloads[0]
    assert w.params == {
        "start_s": 0.0,
        "deadline_s": None,
        "rate_per_s": 2.0,
        "duration_s": 600.0,
        "lengths": (111, 11),
    }


def _poisson_entry(model: str, inp: int, **extra: object) -> str:
    lines = [
        f"[[models.{model}.workload]]",
        'kind = "poisson"',
        "rate_per_s = 1.0",
        "duration_s = 600",
        f"lengths = {{ input_tokens = {inp}, output_tokens = 1 }}",
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n" + "\n".join(lines) + "\n"


def test_build_is_deterministic_and_entries_are_independent(write: Writer) -> None:
    s1 = load_scenario(write(BASE))
    a = build_workload(s1, np.random.default_rng(0))["llama-8b"]
    b = build_workload(s1, np.random.default_rng(0))["llama-8b"]
    assert [r.arrival for r in a] == [r.arrival for r in b]
    assert len(a) == pytest.approx(1200, abs=150)
    c = build_workload(s1, np.random.default_rng(1))["llama-8b"]
    assert [r.arrival for r in a] != [r.arrival for r in c]

    # Adding a workload entry and a model leaves the first entry's requests as they were.
    more = (
        BASE
        + _poisson_entry("llama-8b", 222)
        + textwrap.dedent(
            """
        [models.aaa]
        profile = "../profiles/p.toml"
        slo = { ttft_s = 1, tpot_s = 1 }
        """
        )
        + _poisson_entry("aaa", 333)
    )
    s2 = load_scenario(write(more, name="s2.toml"))
    out = build_workload(s2, np.random.default_rng(0))
    d = out["llama-8b"]
    assert [r.arrival for r in d if r.input_tokens == 111] == [r.arrival for r in a]
    assert sum(r.input_tokens == 222 for r in d) > 0
    ids = [r.id for rs in out.values() for r in rs]
    assert len(set(ids)) == len(ids) == len(d) + len(out["aaa"])


def test_trace_override(write: Writer, tmp_path: Path) -> None:
    p = write(
        BASE
        + textwrap.dedent(
            """
            [[models.llama-8b.workload]]
            kind = "backlog"
            requests = 10
            deadline_s = 100
            """
        )
    )
    s = load_scenario(p)
    trace = tmp_path / "over.jsonl"
    trace.write_text('{"arrival_s": 5, "input_tokens": 9, "output_tokens": 3}\n')
    reqs = build_workload(s, np.random.default_rng(0), trace_overrides={"llama-8b": trace})["llama-8b"]
    # the poisson entry is replaced; the batch backlog stays
    assert [(r.cls, r.input_tokens) for r in reqs if r.cls is ReqClass.INTERACTIVE] == [(ReqClass.INTERACTIVE, 9)]
    assert sum(r.cls is ReqClass.BATCH for r in reqs) == 10
    assert sorted(r.id for r in reqs) == list(range(11))

    with pytest.raises(ScenarioError) as e:
        build_workload(s, np.random.default_rng(0), trace_overrides={"llama-70b": trace})
    msg = str(e.value)
    assert msg.startswith(str(p)) and "llama-70b" in msg and "llama-8b" in msg


def test_bad_trace_in_scenario_names_file_and_line(write: Writer, tmp_path: Path) -> None:
    bad = tmp_path / "scenarios" / "bad.csv"
    bad.write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n1,2,x\n")
    s = load_scenario(write(BASE + '\n[[models.llama-8b.workload]]\nkind = "trace"\npath = "bad.csv"\n'))
    with pytest.raises(ScenarioError, match=r"bad\.csv:3: output_tokens: not an integer: 'x'"):
        build_workload(s, np.random.default_rng(0))


def test_batch_trace_uses_entry_deadline_as_default(write: Writer, tmp_path: Path) -> None:
    (tmp_path / "scenarios" / "b.csv").write_text("arrival_s,input_tokens,output_tokens\n10,1,1\n")
    s = load_scenario(
        write(
            BASE + '\n[[models.llama-8b.workload]]\nkind = "trace"\nclass = "batch"\npath = "b.csv"\ndeadline_s = 50\n'
        )
    )
    reqs = build_workload(s, np.random.default_rng(0))["llama-8b"]
    assert [(r.arrival, r.deadline) for r in reqs if r.cls is ReqClass.BATCH] == [(10.0, 60.0)]


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


WL = "models.llama-8b.workload[0]"

ERRORS = [
    (_edit("ttft_s = 2.0", "ttft_s = -1"), "models.llama-8b.slo.ttft_s: must be a positive number, got -1"),
    (
        _edit("tpot_s = 0.1", "tpot_s = 0.1, itl_s = 1"),
        "models.llama-8b.slo.itl_s: unknown key (valid: ttft_s",
    ),
    (_edit("slo = { ttft_s = 2.0, tpot_s = 0.1 }", ""), "models.llama-8b.slo: required"),
    (_edit("horizon_s = 3600", "horizon = 3600"), "horizon: unknown key (valid: name, description, seed"),
    (_edit("horizon_s = 3600", ""), "horizon_s: required"),
    (_edit("horizon_s = 3600", "horizon_s = 3600\nseed = -1"), "seed: must be an integer >= 0, got -1"),
    (_edit("horizon_s = 3600", "horizon_s = 3600\ntick_s = 0"), "tick_s: must be a positive number, got 0"),
    (_edit("gpus = 50", "gpus = true"), "cluster.gpus: must be a positive integer, got true"),
    (_edit("gpus = 50", "gpus = 2.5"), "cluster.gpus: must be a positive integer, got 2.5"),
    (_edit("[cluster]\ngpus = 50\ngpus_per_node = 4\n", ""), "cluster: required"),
    (
        _edit("gpus_per_node = 4", "gpus_per_node = 4\nqueue_wait_s = [30, 0]"),
        "cluster.queue_wait_s: must be",
    ),
    (_edit("gpus_per_node = 4", "gpus_per_node = 4\nqueue_wait_s = 5"), "cluster.queue_wait_s: must be"),
    (
        _edit("gpus_per_node = 4", "gpus_per_node = 4\n[[cluster.failures]]\nat_s = 10\nnode = 13"),
        "cluster.failures[0].node: must be < 13",
    ),
    (
        _edit("gpus_per_node = 4", "gpus_per_node = 4\n[[cluster.failures]]\nnode = 1"),
        "cluster.failures[0].at_s: required",
    ),
    (
        _edit("gpus_per_node = 4", "gpus_per_node = 4\n[[cluster.failures]]\nat_s = 1\nwhen = 2"),
        "cluster.failures[0].when: unknown key (valid: at_s, node, down_s)",
    ),
    (_edit("../profiles/p.toml", "../profiles/missing.toml"), "models.llama-8b.profile: no such file"),
    (_edit('profile = "../profiles/p.toml"\n', ""), "models.llama-8b.profile: required"),
    (
        _edit("[models.llama-8b]", "[models.llama-8b]\nmax_gpus = 51"),
        "models.llama-8b.max_gpus: must be <= cluster",
    ),
    (
        _edit("[models.llama-8b]", "[models.llama-8b]\nmin_instance = 1"),
        "models.llama-8b.min_instance: unknown key",
    ),
    (
        "horizon_s = 1\n[cluster]\ngpus = 1\n[models.llama-3.1-8b]\nprofile = 'x'\n",
        "models.llama-3.1-8b: unknown key",  # dotted bare key: a hint says to quote it
    ),
    ('horizon_s = 1\n[cluster]\ngpus = 1\n[models."a b"]\n', "models.a b: model names may use only"),
    ("horizon_s = 1\n[cluster]\ngpus = 1\n", "models: required"),
    ("horizon_s = 1\nmodels = {}\n[cluster]\ngpus = 1\n", "models: must be a table with at least one"),
    (_edit('kind = "poisson"', 'kind = "uniform"'), f"{WL}.kind: must be one of azure, trace, poisson"),
    (
        _edit('kind = "poisson"', ""),
        f"{WL}.kind: must be one of azure, trace, poisson, gamma, curve, diurnal, backlog; missing",
    ),
    (_edit("rate_per_s = 2.0\n", ""), f"{WL}.rate_per_s: required"),
    (_edit("rate_per_s = 2.0", "rate_per_s = 0"), f"{WL}.rate_per_s: must be a positive number, got 0"),
    (
        _edit("rate_per_s = 2.0", 'rate_per_s = "fast"'),
        f"{WL}.rate_per_s: must be a positive number, got 'fast'",
    ),
    (
        _edit("rate_per_s = 2.0", "rate_per_s = 2.0\ncv = 3"),
        f"{WL}.cv: unknown key (valid: kind, class, start_s, rate_per_s",
    ),
    (_edit("rate_per_s = 2.0", "rate_per_s = 2.0\nclass = 'batch'"), f"{WL}.deadline_s: required"),
    (
        _edit("rate_per_s = 2.0", "rate_per_s = 2.0\nclass = 'bulk'"),
        f"{WL}.class: must be 'interactive' or 'batch'",
    ),
    (
        _edit("rate_per_s = 2.0", "rate_per_s = 2.0\ndeadline_s = 5"),
        f'{WL}.deadline_s: only for class = "batch"',
    ),
    (
        _edit("lengths = { input_tokens = 111, output_tokens = 11 }", 'lengths = "lmsys"'),
        f"{WL}.lengths: must be",
    ),
    (
        _edit("input_tokens = 111", "input_tokens = [9, 3]"),
        f"{WL}.lengths.input_tokens: must be a positive integer or [low, high] with 0 < low <= high, got [9, 3]",
    ),
    (
        _edit('kind = "poisson"\nrate_per_s = 2.0', 'kind = "curve"\npoints = [[0, 1]]\ncv = -1'),
        f"{WL}.cv: must be",
    ),
    (
        _edit("input_tokens = 111", "input_tokens = 0"),
        f"{WL}.lengths.input_tokens: must be a positive integer, got 0",
    ),
    (_edit("output_tokens = 11", "output = 11"), f"{WL}.lengths.output: unknown key"),
    (
        _edit(
            'kind = "poisson"\nrate_per_s = 2.0\nduration_s = 600',
            'kind = "backlog"\nclass = "interactive"\nrequests = 5\ndeadline_s = 9',
        ),
        f"{WL}.class: a backlog is always batch",
    ),
    (
        _edit('kind = "poisson"\nrate_per_s = 2.0', 'kind = "curve"\npoints = [[0, 1], [0, 2]]'),
        f"{WL}.points[1]: times must be increasing",
    ),
    (
        _edit('kind = "poisson"\nrate_per_s = 2.0', 'kind = "curve"\npoints = [[0, -1]]'),
        f"{WL}.points[0]: must be [t_s, rate_per_s]",
    ),
    (
        _edit('kind = "poisson"\nrate_per_s = 2.0', 'kind = "curve"\npoints = []'),
        f"{WL}.points: must be a non-empty",
    ),
    (
        _edit(
            'kind = "poisson"\nrate_per_s = 2.0',
            'kind = "diurnal"\npeak_rate_per_s = 1\ntrough_rate_per_s = 2',
        ),
        f"{WL}.trough_rate_per_s: must be <= peak_rate_per_s (1)",
    ),
    (
        _edit(
            'kind = "poisson"\nrate_per_s = 2.0\nduration_s = 600\n'
            "lengths = { input_tokens = 111, output_tokens = 11 }",
            'kind = "azure"\npath = "nope.csv"',
        ),
        f"{WL}.path: no such file",
    ),
    (_edit("kind =", "limit = 5\nkind ="), f"{WL}.limit: unknown key"),
    (BASE + '\n[policies]\nrun = ["static", "static"]\n', "policies.run: lists static more than once"),
    (BASE + "\n[policies]\nrun = []\n", "policies.run: must be a non-empty array"),
    (BASE + "\n[policies]\nrun = ['x']\nmode = 1\n", "policies.mode: unknown key (valid: run, params)"),
    (BASE + "\n[policies.params]\nchiron = 3\n", "policies.params.chiron: must be a table"),
    (_edit("slo =", "min_instances_by_hour = [1, 2]\nslo ="),
     "models.llama-8b.min_instances_by_hour: must be an array of 24 instance counts"),
    (_edit("slo =", "min_instances_by_hour = [1, 2, -1" + ", 1" * 21 + "]\nslo ="),
     "models.llama-8b.min_instances_by_hour[2]: must be a non-negative integer, got -1"),
    ("extends = 3\n" + BASE, "extends: must be the file name of another scenario in the same directory, got 3"),
    ('extends = "../day.toml"\n' + BASE, "extends: must be the file name of another scenario in the same directory"),
    ('extends = "s.toml"\n' + BASE, "extends: s.toml extends this file again (a cycle)"),
    ('extends = "missing.toml"\n' + BASE, "extends: no scenario file"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][:50] for e in ERRORS])
def test_errors_name_file_and_key(write: Writer, text: str, expected: str) -> None:
    p = write(text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    assert expected in msg, msg


def test_dotted_model_name_hint(write: Writer) -> None:
    p = write("horizon_s = 1\n[cluster]\ngpus = 1\n[models.llama-3.1-8b]\nprofile = 'x'\n")
    with pytest.raises(ScenarioError, match=r"must be quoted"):
        load_scenario(p)


def test_toml_syntax_error_names_file(write: Writer) -> None:
    p = write("horizon_s = \n[cluster]\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: invalid TOML") and "line 1" in msg


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope\.toml: no such file"):
        load_scenario(tmp_path / "nope.toml")


def test_scenario_is_frozen(write: Writer) -> None:
    s: Scenario = load_scenario(write(BASE))
    with pytest.raises(AttributeError):
        s.seed = 3  # type: ignore[misc]
    assert s.model("llama-8b") is s.models[0]


def test_curve_cv_ranges_and_length_tables_load(write: Writer) -> None:
    text = BASE.replace("lengths = { input_tokens = 111, output_tokens = 11 }",
                        "lengths = { input_tokens = [100, 200], output_tokens = 777 }")
    text += (
        '\n[[models.llama-8b.workload]]\nkind = "diurnal"\npeak_rate_per_s = 2\ntrough_rate_per_s = 1\n'
        'cv = 2.5\nduration_s = 600\nlengths = "azure-code"\n'
    )
    sc = load_scenario(write(text))
    poisson, diurnal = sc.model("llama-8b").workloads
    assert poisson.params["lengths"] == ((100, 200), 777)
    assert diurnal.params["cv"] == 2.5 and diurnal.params["lengths"] == "azure-code"
    reqs = build_workload(sc, np.random.default_rng(0))["llama-8b"]
    ranged = [r.input_tokens for r in reqs if r.output_tokens == 777]
    assert len(ranged) > 900 and min(ranged) >= 100 and max(ranged) <= 200


def test_a_scenario_extends_another_and_replaces_only_what_it_names(write: Writer) -> None:
    write(BASE, "base.toml")
    p = write("""\
        extends = "base.toml"
        name = "variant"

        [models.llama-8b]
        min_instances_by_hour = [0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0]
        slo = { ttft_s = 1.0, tpot_s = 0.1 }
        """)
    write('extends = "s.toml"\n', "unnamed.toml")
    assert load_scenario(p.parent / "unnamed.toml").name == "unnamed"  # not the base's "variant"
    sc, base = load_scenario(p), load_scenario(p.parent / "base.toml")
    m, b = sc.model("llama-8b"), base.model("llama-8b")
    assert (sc.name, base.name) == ("variant", "base")
    assert m.min_instances_by_hour[7:9] == (0, 2) and b.min_instances_by_hour == ()
    assert (m.ttft_s, m.tpot_s, b.ttft_s) == (1.0, 0.1, 2.0)  # a table merged key by key: tpot_s kept
    assert m.workloads == b.workloads and m.profile_path == b.profile_path and sc.horizon_s == 3600
    # the same requests: a variant changes what runs, not the traffic
    assert [r.arrival for r in build_workload(sc, np.random.default_rng(1))["llama-8b"]] == \
        [r.arrival for r in build_workload(base, np.random.default_rng(1))["llama-8b"]]


def test_shipped_day_scheduled_is_day_with_a_floor_for_its_code_model() -> None:
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"
    day, sched = load_scenario(root / "day.toml"), load_scenario(root / "day-scheduled.toml")
    assert [m.name for m in sched.models] == [m.name for m in day.models]
    for m in sched.models:
        assert m.workloads == day.model(m.name).workloads
        assert bool(m.min_instances_by_hour) == (m.name == "llama-70b")
    assert sched.cluster == day.cluster


def test_shipped_day_learned_is_day_learning_every_floor_from_another_day() -> None:
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"
    day, learned = load_scenario(root / "day.toml"), load_scenario(root / "day-learned.toml")
    assert learned.history_seed not in (None, day.seed, 2)  # not a judged seed
    for m in learned.models:
        assert m.workloads == day.model(m.name).workloads and m.learned_floor_price == 30.0
    assert learned.cluster == day.cluster


def test_a_learned_floor_needs_a_history_day_drawn_not_recorded(write: Writer) -> None:
    slo = "slo = { ttft_s = 2.0, tpot_s = 0.1 }"
    learn = BASE.replace(slo, slo + "\nlearned_floor_price = 30")
    with pytest.raises(ScenarioError, match=r"models\.llama-8b\.learned_floor_price: learns from an earlier day: set "
                                            r"history_seed"):
        load_scenario(write(learn))
    sc = load_scenario(write("history_seed = 7\n" + learn))
    assert (sc.history_seed, sc.models[0].learned_floor_price) == (7, 30.0)
    recorded = learn.replace('kind = "poisson"', f'kind = "azure"\npath = "{AZURE_CONV}"').replace(
        "rate_per_s = 2.0\nduration_s = 600\nlengths = { input_tokens = 111, output_tokens = 11 }\n", "")
    with pytest.raises(ScenarioError, match=r"learned_floor_price: its interactive traffic is a recorded azure, the "
                                            r"same on every seed"):
        load_scenario(write("history_seed = 7\n" + recorded))
    with pytest.raises(ScenarioError, match=r"learned_floor_price: must be"):
        load_scenario(write("history_seed = 7\n" + learn.replace("= 30", "= -1")))
