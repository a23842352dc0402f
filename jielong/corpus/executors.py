"""Run the corpus pipeline's datatrove stages one after another on a local pool, Ray or Slurm.

The pipeline is a list of `Stage`s (filter, exact dedup, MinHash signatures, buckets, clusters,
final filter); each runs as its own datatrove executor with its own logging dir, whose
`completions/` markers let a re-run skip what a killed run had finished. The executor only
decides where tasks run: the steps, the tasks and therefore the output are the same on all three.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from jielong.corpus import CorpusError
from jielong.log import get_logger

log = get_logger("corpus")


@dataclass
class Stage:
    """One datatrove executor's worth of the pipeline: steps (keyed for the funnel) and a task count."""

    name: str
    steps: list[tuple[str, object]]  # (funnel key, or "" for a step that removes nothing, datatrove step)
    tasks: int
    logging_dir: Path = field(default=Path())

    @property
    def pipeline(self) -> list:
        return [step for _, step in self.steps]

    def completed(self) -> int:
        done = self.logging_dir / "completions"
        return len(list(done.iterdir())) if done.is_dir() else 0


def run_stages(stages: list[Stage], p, logs: Path) -> None:
    """Run every stage in order with the executor `p.executor` names; fail naming a stage left incomplete."""
    for i, stage in enumerate(stages):
        stage.logging_dir = logs / f"{i:02d}-{stage.name}"
    if p.executor == "local":
        _local(stages, p)
    elif p.executor == "ray":
        _ray(stages, p)
    else:
        _slurm(stages, p)
    for stage in stages:
        if stage.completed() < stage.tasks:
            raise CorpusError(f"corpus stage {stage.name!r}: {stage.completed()}/{stage.tasks} tasks completed "
                              f"(corpus.executor={p.executor}); see {stage.logging_dir}/logs")


def _local(stages: list[Stage], p) -> None:
    from datatrove.executor import LocalPipelineExecutor

    # fork, not datatrove's default forkserver: a forkserver worker starts a fresh interpreter that
    # imports the stage module (great-expectations, polars, ...) and every step again, 10-20 s a
    # stage; a fork inherits them. The parent starts no threads before this (polars and GE are
    # first used after the pipeline), so forking is safe.
    for stage in stages:
        start = _announce(stage)
        LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(p.workers, stage.tasks),
                              logging_dir=str(stage.logging_dir), start_method="fork").run()
        log.info("stage %s: done in %.1fs", stage.name, time.perf_counter() - start)


def _ray(stages: list[Stage], p) -> None:
    import ray
    from datatrove.executor import RayPipelineExecutor

    started = not ray.is_initialized()
    if started:
        # corpus.ray.address null starts a local cluster with `workers` CPUs; an address joins one.
        # "local", not None: ray.init(address=None) joins the last cluster started on this machine
        # (/tmp/ray/ray_current_cluster), one a killed run may have left behind
        ray.init(address=p.ray.address or "local", num_cpus=p.workers if p.ray.address is None else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for stage in stages:
            start = _announce(stage)
            RayPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(p.workers, stage.tasks),
                                logging_dir=str(stage.logging_dir), cpus_per_task=p.ray.cpus_per_task,
                                mem_per_cpu_gb=p.ray.mem_per_cpu_gb).run()
            log.info("stage %s: done in %.1fs", stage.name, time.perf_counter() - start)
            if stage.completed() < stage.tasks:
                break  # run_stages names it
    finally:
        if started:
            ray.shutdown()


def slurm_executors(stages: list[Stage], p) -> list:
    """One SlurmPipelineExecutor per stage, each depending on the one before (afterok)."""
    from datatrove.executor import SlurmPipelineExecutor

    s, executors = p.slurm, []
    for stage in stages:
        executors.append(SlurmPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, workers=p.workers, time=s.time, partition=s.partition,
            cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos,
            job_name=f"{s.job_name}-{stage.name}", venv_path=s.venv_path, env_command=s.env_command,
            sbatch_args=dict(s.sbatch_args), logging_dir=str(stage.logging_dir),
            slurm_logs_folder=str(stage.logging_dir / "slurm"), depends=executors[-1] if executors else None,
            mail_type="NONE"))
    return executors


def _slurm(stages: list[Stage], p) -> None:
    executors = slurm_executors(stages, p)
    executors[-1].run()  # submits every stage as a job array chained by dependencies
    jobs = [str(e.job_id) for e in executors if e.job_id not in (None, -1)]
    deadline = time.monotonic() + p.slurm.wait_hours * 3600
    last = stages[-1]
    while last.completed() < last.tasks:
        if time.monotonic() > deadline:
            raise CorpusError(f"corpus.slurm.wait_hours={p.slurm.wait_hours}: Slurm jobs not done; "
                              f"progress in {last.logging_dir.parent}/*/completions")
        time.sleep(p.slurm.poll_s)
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True)
        if jobs and queued.returncode == 0 and not queued.stdout.strip() and last.completed() < last.tasks:
            break  # nothing of ours left in the queue: a stage failed; run_stages names it


def _announce(stage: Stage) -> float:
    done = stage.completed()
    log.info("stage %s: %d tasks%s", stage.name, stage.tasks,
             f" ({done} already completed, resuming)" if done else "")
    return time.perf_counter()
