"""Experiment trackers, offline: W&B's offline run and MLflow's file store, read back, hold
exactly the rows of ``metrics.jsonl`` at their steps, each once, across a stop and resume
and across a kill and resume, in the same tracker run; a tracker that fails warns once and
the run finishes without it."""
import glob
import json
import os
import re
import struct
import sys

import ml_collections
import mlflow
import pytest
import wandb
from mlflow.tracking import MlflowClient
from PIL import Image
from wandb.proto import wandb_internal_pb2

from conftest import metric_rows, read_summary
from jaxrlhf import api, checkpoint, trackers
from jaxrlhf.cli import command_help
from jaxrlhf.errors import ConfigError
from jaxrlhf.metrics import MetricWriter
from jaxrlhf.sections import LoggingSettings
from jaxrlhf.settings import RunSettings

SFT = "configs/sft/quickstart.py"
TINY = {"model.d_model": 32, "model.d_ff": 64, "data.num_train": 64, "data.num_eval": 16,
        "train.batch_size": 16, "train.steps": 8, "train.log_every": 1, "train.eval_every": 2,
        "train.checkpoint_every": 3, "train.num_samples": 2, "train.sample_tokens": 6,
        "train.tensorboard": False}
PROJECT = "jaxrlhf-tests"


def _offline(patch, root):
    """W&B offline, its own files under ``root``; MLflow's file store allowed."""
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        patch.setenv(name, str(root / name.lower()))
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    patch.setattr(trackers, "_FAILED", set())


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)


def _run(workdir, **overrides):
    return api.run("sft", api.load_config(SFT, **{**TINY, **overrides}), str(workdir))


def _expected(workdir):
    """``{metric: [(step, value), ...]}`` of ``workdir/metrics.jsonl``."""
    series = {}
    for row in metric_rows(workdir):
        for key, value in row.items():
            if key != "step":
                series.setdefault(key, []).append((row["step"], value))
    return series


def _state(workdir):
    with open(os.path.join(workdir, trackers.STATE_FILE)) as f:
        return json.load(f)


def _mlflow_history(uri, run_id):
    """``{metric: [(step, value), ...]}`` of an MLflow run, ``summary/*`` left out."""
    client = MlflowClient(tracking_uri=uri)
    names = [k for k in client.get_run(run_id).data.metrics if not k.startswith("summary/")]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
            for name in names}


def _wandb_records(path):
    """The records of a ``.wandb`` file (LevelDB log blocks of 32 KiB after a 7-byte header)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", path
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:             # a block's tail too short for a header
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):                      # a full record, or a record's last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        elif kind in (2, 3):                    # a record's first or middle chunk
            pending += chunk
    return records


def _items(items):
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in items}


def _wandb_runs(run_dirs):
    """``(history, runs, summary)`` of W&B's offline run directories: ``[(step, {metric:
    value})]`` of every history row, the run records, and the summary updates merged."""
    history, runs, summary = [], [], {}
    for run_dir in run_dirs:
        for record in _wandb_records(glob.glob(os.path.join(run_dir, "run-*.wandb"))[0]):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = _items(record.history.item)
                history.append((row["_step"], {k: v for k, v in row.items()
                                               if not k.startswith("_")}))
            elif kind == "run":
                runs.append(record.run)
            elif kind == "summary":
                summary.update(_items(record.summary.update))
    return history, runs, summary


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory):
    """A tiny SFT run to step 4 (``train.run_steps``), a figure planted in its workdir, then
    the same command again to step 8, with W&B offline and an MLflow file store."""
    root = tmp_path_factory.mktemp("trackers")
    workdir, uri = root / "run", f"file:{root / 'mlruns'}"
    with pytest.MonkeyPatch.context() as patch:
        _offline(patch, root)
        logging = {"logging.wandb_project": PROJECT, "logging.wandb_tags": "tiny,ci",
                   "logging.mlflow_uri": uri}
        _run(workdir, **logging, **{"train.run_steps": 4})
        first = _state(workdir)
        os.makedirs(workdir / "figures")
        Image.new("RGB", (8, 8), "red").save(workdir / "figures" / "curve.png")
        _run(workdir, **logging)
    return workdir, uri, first


def test_mlflow_holds_exactly_the_metrics_of_metrics_jsonl_in_one_resumed_run(
        stopped_and_resumed, monkeypatch):
    workdir, uri, first = stopped_and_resumed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = mlflow.search_runs(experiment_names=["Default"])
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    run_id = runs.loc[0, "run_id"]
    assert run_id == first["mlflow"]["run_id"] == _state(workdir)["mlflow"]["run_id"]
    expected = _expected(workdir)
    assert [step for step, _ in expected["eval/loss"]] == [0, 2, 4, 6, 8]
    assert _mlflow_history(uri, run_id) == expected
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.params["train.steps"] == "8" and run.data.params["model.d_model"] == "32"
    assert run.data.metrics["summary/eval_loss"] == read_summary(workdir)["eval_loss"]
    assert run.data.tags["jaxrlhf.stage"] == "sft"
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}
    assert {"summary.json", "figures"} <= artifacts
    assert [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, "figures")] \
        == ["figures/curve.png"]


def test_wandb_offline_runs_in_the_workdir_hold_each_metrics_row_once(stopped_and_resumed):
    workdir = stopped_and_resumed[0]
    run_id = _state(workdir)["wandb"]["run_id"]
    assert run_id == stopped_and_resumed[2]["wandb"]["run_id"]
    run_dirs = sorted(glob.glob(str(workdir / "wandb" / "offline-run-*")))
    assert run_dirs and all(f"-{run_id}" in os.path.basename(d) for d in run_dirs)
    history, runs, summary = _wandb_runs(run_dirs)
    assert sorted(step for step, _ in history) == list(range(9))   # each step once
    rows = {row.pop("step"): row for row in metric_rows(workdir)}
    assert {step: row for step, row in history} == rows
    assert list(runs[0].tags) == ["tiny", "ci"] and runs[0].job_type == "sft"
    assert _items(runs[0].config.update)["model.d_model"] == 32      # the flattened config
    assert summary["summary/eval_loss"] == read_summary(workdir)["eval_loss"]
    assert glob.glob(str(workdir / "wandb" / "offline-run-*" / "files" / "media" / "images"
                         / "figures" / "curve*.png"))


def test_a_killed_and_resumed_run_continues_the_mlflow_run_with_each_step_once(tmp_path,
                                                                                monkeypatch):
    """Killed as checkpoint 6 is written: every row is sent, the newest checkpoint is 3, so
    the resume replays steps 4-6, which MLflow does not get again."""
    class Killed(Exception):
        pass

    save = checkpoint.Checkpointer.save

    def dying_save(self, step, *args, **kwargs):
        if step == 6:
            self.wait()
            raise Killed
        return save(self, step, *args, **kwargs)

    uri = f"file:{tmp_path / 'mlruns'}"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpointer, "save", dying_save)
        with pytest.raises(Killed):
            _run(tmp_path / "run", **{"train.steps": 6, "logging.mlflow_uri": uri})
    killed = _state(tmp_path / "run")["mlflow"]
    assert killed["sent_through"] == 6
    _run(tmp_path / "run", **{"train.steps": 6, "logging.mlflow_uri": uri})
    assert _state(tmp_path / "run")["mlflow"]["run_id"] == killed["run_id"]
    runs = MlflowClient(tracking_uri=uri).search_runs(["0"])
    assert [r.info.run_id for r in runs] == [killed["run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert _mlflow_history(uri, killed["run_id"]) == _expected(tmp_path / "run")


def test_failing_trackers_warn_once_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", failing_init)
    _run(tmp_path, **{"train.steps": 2, "logging.wandb_project": PROJECT,
                      "logging.mlflow_uri": "http://127.0.0.1:9"})
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("jaxrlhf: warning:")]
    assert len(warnings) == 2, warnings
    wandb_line, mlflow_line = sorted(warnings, key=lambda line: "mlflow" in line)
    assert "the wandb tracker (jaxrlhf-tests) failed" in wandb_line
    assert "RuntimeError: no network" in wandb_line and "WANDB_MODE=offline" in wandb_line
    assert "the mlflow tracker (http://127.0.0.1:9, experiment Default) failed" in mlflow_line
    assert "ConnectionRefusedError" in mlflow_line and "config.logging.mlflow_uri" in mlflow_line
    assert len(calls) == 1            # the stage's end does not try a failed tracker again
    assert [row["step"] for row in metric_rows(tmp_path)] == [0, 1, 2]
    assert read_summary(tmp_path)["step"] == 2
    assert not os.path.exists(tmp_path / trackers.STATE_FILE)


class Recorder:
    """A tracker that records what it is sent."""
    name, destination, install, remedy = "recorder", "memory", "", ""

    def __init__(self, sent):
        self.sent, self.run_id = sent, "r1"

    def open(self, workdir, run_id, stage, config):
        self.sent.append(("open", run_id, config is not None))

    def log(self, step, values):
        self.sent.append(step)

    def finish(self, summary, figures, step):
        self.sent.append(("finish", step))

    def close(self):
        self.sent.append("close")


def _recording(monkeypatch, workdir):
    sent = []
    monkeypatch.setattr(trackers, "configured", lambda settings: [Recorder(sent)])
    config = api.load_config(SFT)
    group = trackers.Trackers(LoggingSettings(), str(workdir), "sft")
    return sent, config, group


def test_a_resume_sends_neither_the_replayed_steps_nor_the_kept_ones_again(tmp_path,
                                                                             monkeypatch):
    sent, config, group = _recording(monkeypatch, tmp_path)
    group.start(config, resume=False)
    writer = MetricWriter(str(tmp_path), tensorboard=False, send=group.log)
    for step in range(7):
        writer.write(step, {"loss": float(step), "perf/tokens_per_sec": 1.0})
    assert sent == [("open", None, True), *range(7)]
    writer.keep_through(3)                               # the checkpoint of step 3 restored
    sent, config, group = _recording(monkeypatch, tmp_path)
    group.start(config, resume=True)
    writer = MetricWriter(str(tmp_path), tensorboard=False, send=group.log)
    for step in range(4, 9):
        writer.write(step, {"loss": float(step)})
    group.finish({"eval_loss": 1.0})
    assert sent == [("open", "r1", False), 7, 8, ("finish", 8), "close"]


def test_a_tracker_named_on_resume_gets_the_kept_rows_and_a_fresh_start_a_new_run(
        tmp_path, monkeypatch):
    MetricWriter(str(tmp_path), tensorboard=False).write(0, {"loss": 1.0})
    MetricWriter(str(tmp_path), tensorboard=False).write(2, {"loss": 0.5})
    sent, config, group = _recording(monkeypatch, tmp_path)
    group.start(config, resume=True)
    assert sent == [("open", None, True), 0, 2]
    sent, config, group = _recording(monkeypatch, tmp_path)
    group.start(config, resume=False)             # metrics.jsonl is emptied before this
    assert sent[0] == ("open", None, True)


def test_a_tracker_that_is_not_installed_warns_once_naming_the_extra(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    settings = LoggingSettings(mlflow_uri=f"file:{tmp_path / 'mlruns'}")
    config = api.load_config(SFT)
    for _ in range(2):                            # a later stage of the same process too
        group = trackers.Trackers(settings, str(tmp_path), "sft")
        group.start(config, resume=True)
        group.log(1, {"loss": 1.0})
        group.finish({})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxrlhf: warning: the mlflow tracker")
    assert "ModuleNotFoundError" in err[0] and err[0].endswith("to fix: pip install -e '.[mlflow]'")


def _with_logging(**fields):
    """The SFT quickstart config with ``fields`` of its logging section set, as a config
    file that assigns any value would build it."""
    tree = api.load_config(SFT).to_dict()
    tree["logging"].update(fields)
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize("fields, message", [
    ({"wandb_project": "me/runs"}, "config.logging.wandb_project='me/runs' must not contain"),
    ({"wandb_entity": "me"},
     "config.logging.wandb_entity='me' has no effect without logging.wandb_project"),
    ({"mlflow_experiment": "rlhf"},
     "config.logging.mlflow_experiment='rlhf' has no effect without logging.mlflow_uri"),
    ({"wandb_project": PROJECT, "wandb_tags": "a,,b"},
     "config.logging.wandb_tags='a,,b' must be comma-separated tags"),
    ({"mlflow_uri": 3}, "config.logging.mlflow_uri=3 must be a string"),
])
def test_bad_logging_fields_are_named(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunSettings.from_config(_with_logging(**fields))


def test_every_stage_reads_the_logging_section():
    assert "logging" in command_help("sft") and "logging" in command_help("ppo")
    settings = RunSettings.from_config(api.load_config(SFT, **{
        "logging.wandb_project": PROJECT, "logging.wandb_tags": "a, b"}))
    assert settings.logging.tags == ("a", "b")
