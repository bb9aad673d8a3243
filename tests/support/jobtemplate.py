"""Job specs for the instance job template (chirond.cluster.jobtemplate): the golden cases and hostile values."""

from __future__ import annotations

from chirond.cluster.jobtemplate import JobSpec
from tests.support.paths import DATA, PROFILE_8B, ROOT

GOLDEN = DATA / "slurm" / "golden"
DAEMON = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"

CASES: dict[str, JobSpec] = {
    # A production-like vLLM job: every optional scheduler field, typed GRES, hooks, env.
    "vllm-a100": JobSpec(
        model="meta-llama/Llama-3.1-8B-Instruct",
        instance_id=12,
        daemon_id=DAEMON,
        engine_argv=("vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "{port}",
                     "--max-num-seqs", "256", "--served-model-name", "llama-8b", "--shutdown-timeout", "60"),
        run_dir="/shared/chirond/run",
        partition="a100",
        account="inference",
        qos="normal",
        reservation="llm-serving",
        gpus=1,
        gpu_type="a100",
        cpus_per_task=8,
        mem="64G",
        time_limit_s=4 * 3600,
        warn_before_s=300,
        site_hooks=("module load cuda/12.4", "source /shared/venvs/vllm/bin/activate"),
        env={"HF_HOME": "/shared/hf", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "INFO"},
    ),
    # The simulated server on the loopback cluster: only the required fields, --gpus flavour.
    "fake-vllm-minimal": JobSpec(
        model="llama-8b",
        instance_id=0,
        daemon_id=DAEMON,
        engine_argv=("python3", "-m", "chirond", "fake-vllm", "--profile", str(PROFILE_8B.relative_to(ROOT)),
                     "--model", "llama-8b", "--host", "127.0.0.1", "--port={port}"),
        run_dir="/tmp/chirond-loopback/run",
        gpus=2,
        gpu_option="gpus",
        warn_before_s=None,
        advertise_host="127.0.0.1",
        port_range=(41000, 41999),
    ),
}

HOSTILE = [
    "x; rm -rf /",
    "$(id)",
    "`id`",
    "a\nb; id",
    "it's \"quoted\"",
    "$HOME ${PATH} \\ *",
    "--x={port}",
    "{port}{port}",
    "",
]
