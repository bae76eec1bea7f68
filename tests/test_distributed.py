"""More than one replica on a CPU-only machine, against one process on one device:
MirroredStrategy over two logical CPUs (a process of its own), and two needles-train workers on
localhost under MultiWorkerMirroredStrategy, each started with its own TF_CONFIG. A killed worker
stops the chief with one line; starting both again resumes the run."""

import dataclasses
import json
import os
import socket
import sys
import time

import pytest
from tiny_runs import finish, last_line, start, start_binary, tiny_nmnist

from needles_tf import run_dir
from needles_tf.training import cluster
from needles_tf.training.callbacks import read_history
from needles_tf.training.trainer import TrainConfig, train

SETTINGS = dict(receptive_field=9, blocks=(1, 1, 1, 1), width_scale=1 / 16, normalization=False,
                batch_size=16, train_size=72, reference_size=0, epochs=6, lr_milestones=(5,),
                optimizer="adam", learning_rate=2e-3, deterministic=True, log_images=0)
FLAGS = ("--receptive_field=9", "--blocks=1,1,1,1", "--width_scale=0.0625", "--nonormalization",
         "--batch_size=16", "--train_size=72", "--reference_size=0", "--epochs=6",
         "--lr_milestones=5", "--optimizer=adam", "--learning_rate=2e-3", "--deterministic",
         "--log_images=0", "--strategy=multi_worker", "--verbose=2")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(data_dir: str, model_dir: str) -> list:
    workers = [f"localhost:{port}" for port in free_ports(2)]
    return [start_binary("train", *FLAGS, f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                         env={"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                       "task": {"type": "worker", "index": i}})})
            for i in range(2)]


def committed_epochs(model_dir: str) -> int:
    return (run_dir.checkpoint_state(model_dir) or {"epoch": 0})["epoch"]


def losses(model_dir) -> list[float]:
    return [row["loss"] for row in read_history(os.path.join(model_dir, run_dir.METRICS))]


def test_two_replicas_and_two_workers_train_as_one_process(tmp_path):
    """The global batch of 16 split between two mirrored replicas (each accumulating two
    micro-batches of 4), or between two workers, gives one device's losses per epoch, the
    last, partial batch of 8 too (one replica's share of it is empty); the workers' run
    directory is the one a single process writes."""
    data_dir = tiny_nmnist(str(tmp_path / "data"), 0, {"train": 1, "val": 1, "test": 1})
    model_dir = str(tmp_path / "cluster")
    workers = start_workers(data_dir, model_dir)
    mirrored = start([sys.executable, os.path.join(os.path.dirname(__file__), "two_replicas.py"),
                      json.dumps(dataclasses.asdict(TrainConfig(
                          data_dir, str(tmp_path / "mirrored"), micro_batch_size=4,
                          **SETTINGS)))])
    single = train(TrainConfig(data_dir, str(tmp_path / "single"), **SETTINGS), verbose=0)
    assert single["replicas"] == 1

    # worker 1 is killed once the chief has committed an epoch: the chief stops with one line
    deadline = time.time() + 120
    while committed_epochs(model_dir) < 1 and time.time() < deadline:
        assert all(w.poll() is None for w in workers), finish(workers[0]).stderr[-2000:]
        time.sleep(0.05)
    workers[1].kill()
    chief = finish(workers[0], timeout=120)
    finish(workers[1])
    done = committed_epochs(model_dir)
    assert chief.returncode == 1 and 1 <= done < 6, chief.stderr[-2000:]
    assert "start every worker again with the same command to resume" in last_line(chief.stderr)
    assert "Traceback" not in chief.stderr

    result = finish(mirrored, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(last_line(result.stdout))
    assert summary["replicas"] == 2 and summary["val"]["count"] == single["val"]["count"]
    assert losses(tmp_path / "mirrored") == pytest.approx(losses(tmp_path / "single"), rel=1e-4)

    # both workers again: the run resumes where the chief's checkpoint is, finishes on both
    chief, worker = [finish(w, timeout=180) for w in start_workers(data_dir, model_dir)]
    assert chief.returncode == 0 and worker.returncode == 0, (chief.stderr + worker.stderr)[-3000:]
    for process in (chief, worker):
        assert f"resuming at epoch {done + 1} of 6" in process.stdout.splitlines()
    assert last_line(worker.stdout).endswith("this worker's part is done; the chief wrote the run")
    assert "test accuracy" in last_line(chief.stdout)
    summary = run_dir.read_summary(model_dir)
    assert summary["replicas"] == 2 and summary["val"]["count"] == single["val"]["count"]
    assert len(losses(model_dir)) == 6
    assert losses(model_dir) == pytest.approx(losses(tmp_path / "single"), rel=1e-4)
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(tmp_path / "single"))


def test_the_cluster_comes_from_tf_config_else_from_the_slurm_job_step(monkeypatch):
    for name in [v for v in os.environ if v.startswith("SLURM_")] + ["TF_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG.*srun"):
        cluster.resolver()
    monkeypatch.setenv("TF_CONFIG", "{'cluster': ")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        cluster.resolver()
    monkeypatch.delenv("TF_CONFIG")
    # task 1 of a two-node job step, as srun starts it (no GPUs allocated)
    for name, value in {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
                        "SLURM_STEP_NODELIST": "node[07-08]",
                        "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}.items():
        monkeypatch.setenv(name, value)
    slurm = cluster.resolver()
    assert slurm.cluster_spec().as_dict() == {"worker": ["node07:8888", "node08:8888"]}
    assert (slurm.task_type, slurm.task_id) == ("worker", 1)
