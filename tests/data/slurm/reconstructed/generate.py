"""Writes the reconstructed squeue/sinfo/sacct outputs in this directory (see README.md).

The same jobs and nodes are rendered in each release's shape, so a test can check that every
dialect parses to the same facts. Run from the repository root:
    python tests/data/slurm/reconstructed/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
T0 = 1717000000  # 2024-05-29T16:26:40Z
USER = "chirond-test"
TAG = "chirond:0f1e2d3c-aaaa-bbbb-cccc-000000000001"

# One row per job, in neutral form: state is (base, flags); exit is (code, signal) or None (not ended).
JOBS: list[dict[str, Any]] = [
    dict(id=101, name="chirond-llama-8b-1", user=USER, state=("RUNNING", []), reason="None", nodes="gpu01",
         submit=T0 - 60, start=T0, end=T0 + 3600, limit=60, exit=None, comment=f"{TAG}:1"),
    dict(id=102, name="chirond-llama-8b-2", user=USER, state=("PENDING", []), reason="Resources", nodes="",
         submit=T0 + 100, start=T0 + 900, end=T0 + 4500, limit=60, exit=None, comment=f"{TAG}:2"),
    dict(id=103, name="chirond-llama-8b-3", user=USER, state=("COMPLETED", ["COMPLETING"]), reason="None",
         nodes="gpu02", submit=T0 - 300, start=T0 - 240, end=T0 + 200, limit=60, exit=(0, 0), comment=f"{TAG}:3"),
    dict(id=104, name="chirond-qwen-7b-4", user=USER, state=("FAILED", []), reason="NonZeroExitCode",
         nodes="gpu02", submit=T0 - 600, start=T0 - 590, end=T0 - 500, limit=120, exit=(3, 0), comment=f"{TAG}:4"),
    dict(id=105, name="chirond-llama-8b-5", user=USER, state=("TIMEOUT", []), reason="TimeLimit", nodes="gpu01",
         submit=T0 - 900, start=T0 - 880, end=T0 - 812, limit=1, exit=(0, 15), comment=f"{TAG}:5"),
    dict(id=106, name="chirond-llama-8b-6", user=USER, state=("CANCELLED", []), reason="None", nodes="gpu02",
         submit=T0 - 400, start=T0 - 390, end=T0 - 30, limit=60, exit=(0, 15), comment=f"{TAG}:6"),
    dict(id=107, name="chirond-llama-8b-7", user=USER, state=("NODE_FAIL", []), reason="NodeDown", nodes="gpu03",
         submit=T0 - 700, start=T0 - 690, end=T0 - 100, limit=60, exit=(0, 9), comment=f"{TAG}:7"),
    dict(id=108, name="interactive", user=USER, state=("RUNNING", []), reason="None", nodes="gpu01",
         submit=T0 - 50, start=T0 - 40, end=T0 + 3560, limit=60, exit=None, comment=""),
    dict(id=109, name="chirond-llama-8b-9", user="alice", state=("RUNNING", []), reason="None", nodes="gpu01",
         submit=T0 - 50, start=T0 - 45, end=T0 + 3555, limit=60, exit=None, comment=""),
    dict(id=110, name="chirond-llama-8b-10", user=USER, state=("PENDING", ["REQUEUED"]), reason="ReqNodeNotAvail",
         nodes="", submit=T0 + 200, start=0, end=0, limit=None, exit=None, comment=f"{TAG}:10"),
]

# Nodes: (name, base state, flags, partitions, gres, gres_used, reason)
NODES = [
    ("gpu01", "MIXED", [], ["a100"], "gpu:a100:4(S:0)", "gpu:a100:2(IDX:0-1)", ""),
    ("gpu02", "IDLE", [], ["a100", "debug"], "gpu:a100:4(S:0)", "gpu:a100:0(IDX:N/A)", ""),
    ("gpu03", "IDLE", ["DRAIN"], ["a100"], "gpu:a100:4(S:0)", "gpu:a100:0(IDX:N/A)", "maintenance"),
    ("gpu04", "DOWN", ["NOT_RESPONDING"], ["a100"], "gpu:a100:4(S:0)", "gpu:a100:0(IDX:N/A)", "Not responding"),
    ("cpu01", "IDLE", [], ["cpu"], "", "", ""),
]

# The flags that job_state_string() puts in place of the base state (22.05 prints one word).
FLAG_ORDER = ["COMPLETING", "REQUEUED"]


def n39(v: int | None, *, infinite: bool = False) -> dict[str, Any]:
    """A number as data_parser v0.0.39+ prints it."""
    if infinite:
        return {"set": False, "infinite": True, "number": 0}
    if v is None:
        return {"set": False, "infinite": False, "number": 0}
    return {"set": True, "infinite": False, "number": v}


def wait_status(exit: tuple[int, int] | None) -> int:
    if exit is None:
        return 0
    code, sig = exit
    return (code << 8) | sig


def one_word(state: tuple[str, list[str]]) -> str:
    base, flags = state
    return next((f for f in FLAG_ORDER if f in flags), base)


def gres_req(old: bool) -> str:
    return "gres:gpu:a100:1" if old else "gres/gpu:a100:1"


def common(j: dict[str, Any]) -> dict[str, Any]:
    return {
        "account": "inference",
        "batch_flag": True,
        "batch_host": j["nodes"],
        "cluster": "chirond-test",
        "command": "(null)",
        "comment": j["comment"],
        "current_working_directory": "/shared/chirond/run",
        "name": j["name"],
        "nodes": j["nodes"],
        "partition": "a100",
        "qos": "normal",
        "state_description": "",
        "state_reason": j["reason"],
        "standard_output": f"/shared/chirond/run/{j['name']}-{j['id']}.log",
        "tres_alloc_str": "cpu=8,mem=64G,node=1,billing=8,gres/gpu=1" if j["nodes"] else "",
        "tres_req_str": "cpu=8,mem=64G,node=1,billing=8,gres/gpu=1",
        "user_name": j["user"],
    }


def job_2205(j: dict[str, Any]) -> dict[str, Any]:
    return {
        **common(j),
        "array_job_id": 0,
        "array_task_id": None,
        "exit_code": wait_status(j["exit"]),
        "derived_exit_code": 0,
        "end_time": j["end"],
        "flags": ["JOB_WAS_RUNNING"] if j["nodes"] else [],
        "gres_detail": ["gpu:a100:1(IDX:0)"] if j["nodes"] else [],
        "job_id": j["id"],
        "job_state": one_word(j["state"]),
        "node_count": 1,
        "restart_cnt": 1 if "REQUEUED" in j["state"][1] else 0,
        "start_time": j["start"],
        "submit_time": j["submit"],
        "time_limit": j["limit"],  # minutes; null = UNLIMITED
        "tres_per_node": gres_req(old=True),
        "user_id": 1001 if j["user"] == USER else 1002,
    }


def job_2302(j: dict[str, Any]) -> dict[str, Any]:
    base, flags = j["state"]
    return {
        **common(j),
        "array_job_id": n39(0),
        "array_task_id": n39(None),
        "exit_code": wait_status(j["exit"]),  # UINT32 in this data_parser revision
        "derived_exit_code": 0,
        "end_time": j["end"],  # UINT64 timestamps in this revision
        "flags": ["JOB_WAS_RUNNING"] if j["nodes"] else [],
        "gres_detail": ["gpu:a100:1(IDX:0)"] if j["nodes"] else [],
        "job_id": n39(j["id"]),  # UINT32_NO_VAL in this revision
        "job_state": [base, *flags],
        "node_count": n39(1),
        "restart_cnt": 1 if "REQUEUED" in flags else 0,
        "start_time": j["start"],
        "submit_time": j["submit"],
        "time_limit": n39(j["limit"], infinite=j["limit"] is None),
        "tres_per_node": gres_req(old=False),
        "user_id": 1001 if j["user"] == USER else 1002,
    }


def exit_2405(j: dict[str, Any]) -> dict[str, Any]:
    if j["exit"] is None:
        return {"status": ["PENDING"], "return_code": n39(None), "signal": {"id": n39(None), "name": ""}}
    code, sig = j["exit"]
    names = {9: "KILL", 15: "TERM"}
    if sig:
        return {"status": ["SIGNALED"], "return_code": n39(0), "signal": {"id": n39(sig), "name": names[sig]}}
    return {"status": ["SUCCESS" if code == 0 else "ERROR"], "return_code": n39(code),
            "signal": {"id": n39(None), "name": ""}}


def job_2405(j: dict[str, Any]) -> dict[str, Any]:
    base, flags = j["state"]
    return {
        **common(j),
        "array_job_id": n39(0),
        "array_task_id": n39(None),
        "exit_code": exit_2405(j),
        "derived_exit_code": {"status": ["SUCCESS"], "return_code": n39(0), "signal": {"id": n39(None), "name": ""}},
        "end_time": n39(j["end"]),
        "flags": ["JOB_WAS_RUNNING"] if j["nodes"] else [],
        "gres_detail": ["gpu:a100:1(IDX:0)"] if j["nodes"] else [],
        "job_id": j["id"],
        "job_state": [base, *flags],
        "node_count": n39(1),
        "restart_cnt": 1 if "REQUEUED" in flags else 0,
        "start_time": n39(j["start"]),
        "submit_time": n39(j["submit"]),
        "time_limit": n39(j["limit"], infinite=j["limit"] is None),
        "tres_per_node": gres_req(old=False),
        "user_id": 1001 if j["user"] == USER else 1002,
    }


META_2205 = {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
             "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}}
META_2302 = {"plugin": {"type": "openapi/v0.0.39", "name": "Slurm OpenAPI v0.0.39",
                        "data_parser": "data_parser/v0.0.39"},
             "Slurm": {"version": {"major": 23, "micro": 5, "minor": 2}, "release": "23.02.5"}}
META_2405 = {"plugin": {"type": "", "name": "", "data_parser": "data_parser/v0.0.41", "accounting_storage": ""},
             "client": {"source": "/dev/pts/0", "user": USER, "group": USER},
             "command": ["squeue", "--json"],
             "slurm": {"version": {"major": "24", "micro": "3", "minor": "05"}, "release": "24.05.3",
                       "cluster": "chirond-test"}}


def node_old(n: tuple[Any, ...], list_state: bool) -> dict[str, Any]:
    name, base, flags, parts, gres, used, reason = n
    d: dict[str, Any] = {
        "architecture": "x86_64", "cores": 8, "cpus": 32, "hostname": "loopback", "address": "127.0.0.1",
        "gres": gres, "gres_drained": "N/A", "gres_used": used, "name": name, "partitions": parts,
        "real_memory": 65536, "reason": reason, "sockets": 1, "threads": 1, "tres": "cpu=32,mem=64G,billing=32",
    }
    if list_state:
        d["state"] = [base, *flags]
    else:
        d["state"] = base.lower()
        d["state_flags"] = flags
    return d


def sinfo_2405() -> list[dict[str, Any]]:
    recs = []
    for name, base, flags, parts, gres, used, reason in NODES:
        for p in parts:  # sinfo prints one group per partition a node is in
            recs.append({
                "port": 6818,
                "node": {"state": [base, *flags]},
                "nodes": {"allocated": 1 if base == "MIXED" else 0, "idle": 1 if base == "IDLE" else 0,
                          "other": 1 if base == "DOWN" else 0, "total": 1,
                          "hostnames": ["loopback"], "addresses": ["127.0.0.1"], "nodes": [name]},
                "cpus": {"allocated": 8 if base == "MIXED" else 0, "idle": 24 if base == "MIXED" else 32,
                         "other": 0, "total": 32},
                "gres": {"total": gres, "used": used},
                "reason": {"description": reason, "time": n39(T0 - 3600 if reason else 0),
                           "user": "root" if reason else ""},
                "partition": {"name": p, "nodes": {"configured": name}},
                "cluster": "chirond-test",
                "comment": "",
                "extra": "",
            })
    return recs


def squeue_text() -> str:
    """What `squeue -h -t all -u chirond-test -o '%i|%T|%N|%b|%M|%l|%j|%R|%k'` prints (22.05)."""
    lines = []
    for j in JOBS:
        if j["user"] != USER:
            continue
        word = one_word(j["state"])
        used = 0 if word in ("PENDING", "REQUEUED") else (min(j["end"], T0 + 300) - j["start"])
        limit = "UNLIMITED" if j["limit"] is None else f"{j['limit'] // 60}:{j['limit'] % 60:02d}:00"
        mm, ss = divmod(max(used, 0), 60)
        hh, mm = divmod(mm, 60)
        elapsed = f"{hh}:{mm:02d}:{ss:02d}" if hh else f"{mm}:{ss:02d}"
        # %R: the reason in parentheses for pending and failed jobs, the node list for all others
        failed = word in ("FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY")
        reason = f"({j['reason']})" if word in ("PENDING", "REQUEUED") or failed else j["nodes"]
        lines.append("|".join([str(j["id"]), word, j["nodes"], gres_req(old=True), elapsed, limit, j["name"], reason,
                               j["comment"] or "(null)"]))
    return "\n".join(lines) + "\n"


def sacct_text() -> str:
    """What `sacct -X -n -P -j ... -o JobID,JobName,User,State,ExitCode,Start,End,NodeList` prints."""
    import datetime as dt

    def t(x: int) -> str:
        return dt.datetime.fromtimestamp(x).isoformat(timespec="seconds") if x else "Unknown"

    lines = []
    for j in JOBS:
        if j["user"] != USER or not j["name"].startswith("chirond-"):
            continue
        base = j["state"][0]
        state = "CANCELLED by 1001" if base == "CANCELLED" else base
        code, sig = j["exit"] or (0, 0)
        end = t(j["end"]) if j["exit"] is not None else "Unknown"
        start = t(j["start"]) if j["nodes"] else "None"
        lines.append("|".join([str(j["id"]), j["name"], j["user"], state, f"{code}:{sig}", start, end,
                               j["nodes"] or "None assigned"]))
    return "\n".join(lines) + "\n"


def dump(name: str, doc: Any) -> None:
    (HERE / name).write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    dump("squeue-22.05.json", {"meta": META_2205, "errors": [], "jobs": [job_2205(j) for j in JOBS]})
    dump("squeue-23.02.json", {"meta": META_2302, "errors": [], "warnings": [], "jobs": [job_2302(j) for j in JOBS]})
    dump("squeue-24.05.json", {"jobs": [job_2405(j) for j in JOBS], "last_backfill": n39(T0 - 20),
                               "last_update": n39(T0), "meta": META_2405, "errors": [], "warnings": []})
    dump("sinfo-22.05.json", {"meta": META_2205, "errors": [], "nodes": [node_old(n, False) for n in NODES]})
    dump("sinfo-23.02.json", {"meta": META_2302, "errors": [], "warnings": [],
                              "nodes": [node_old(n, True) for n in NODES]})
    dump("sinfo-24.05.json", {"sinfo": sinfo_2405(), "meta": {**META_2405, "command": ["sinfo", "--json"]},
                              "errors": [], "warnings": []})
    (HERE / "squeue-22.05.txt").write_text(squeue_text())
    (HERE / "sacct-22.05.txt").write_text(sacct_text())


if __name__ == "__main__":
    main()
