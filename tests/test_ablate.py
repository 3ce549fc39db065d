"""`pcmci ablate`: variants, table, JSON and plots, and the variant list itself."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcmci.config import Config, ConfigError, reweights
from pcmci.experiments import ablate
from pcmci.experiments.ablate import (DEFAULT_VARIANTS, SWITCHES, VARIANTS, markdown, source_digest, summarise,
                                      summarise_follows, summarise_weights, variant_config)
from pcmci.cli import main


def test_variants_cover_baseline_singles_pairs_full_and_reversed() -> None:
    assert VARIANTS["baseline"] == [] and VARIANTS["full"] == ["ich", "ici", "ivc"]
    assert VARIANTS["reversed"] == ["ivc", "ici", "ich"]
    singles = [VARIANTS[v] for v in DEFAULT_VARIANTS if len(VARIANTS[v]) == 1]
    pairs = [VARIANTS[v] for v in DEFAULT_VARIANTS if len(VARIANTS[v]) == 2]
    assert sorted(map(tuple, singles)) == [("ich",), ("ici",), ("ivc",)]
    assert sorted(map(tuple, pairs)) == [("ich", "ici"), ("ich", "ivc"), ("ici", "ivc")]


def test_named_switch_variants_configure_the_stage(tmp_path: Path) -> None:
    """The still-pixel shortcut and IVC without its weights are variants by name, not edits of the model."""
    def config(name: str) -> Config:
        return variant_config("tiny", [], VARIANTS[name], 0, tmp_path, SWITCHES.get(name))

    static, plain = config("ivc-static"), config("ivc")
    assert static.model.ivc.static and static.model.ivc.static_input and not reweights(static)
    assert not plain.model.ivc.static and not plain.model.ivc.static_input and reweights(plain)
    assert not reweights(config("ivc-noreweight")) and not plain.model.ivc.mediator_only
    # the backdoor weights come with IVC; the weighted baseline has them without any stage
    assert [name for name in DEFAULT_VARIANTS if reweights(config(name))] == [
        "reweight", "ivc", "ich+ivc", "ici+ivc", "full", "reversed"]
    assert config("reweight").model.stages == [] == config("baseline").model.stages
    assert variant_config("tiny", [], ["ivc"], 0, tmp_path, SWITCHES["ivc-mediator-only"]).model.ivc.mediator_only
    assert set(SWITCHES) - {"reweight"} == set(VARIANTS) - set(DEFAULT_VARIANTS)


def test_summary_and_config_of_one_run(tmp_path: Path) -> None:
    s = summarise([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.163299, abs=1e-6)
    cfg = variant_config("tiny", ["optim.lr=0.01"], ["ivc", "ich"], 2, tmp_path / "x")
    assert cfg.model.stages == ["ivc", "ich"] and cfg.run.seed == 2 and cfg.optim.lr == 0.01
    assert cfg.run.out_dir == str(tmp_path / "x")


def test_table_shows_each_counterfactual_score_or_na() -> None:
    cell = {"test_ood": {"acc": summarise([0.5, 0.7]), "map": summarise([0.4, 0.4])}}
    report = {"config": "tiny", "overrides": [], "seeds": 2, "splits": ["test_ood"], "seconds": 1.0, "variants": {
        "full": {"stages": ["ich"], **cell, "flip_rate": summarise([0.25, 0.75]),
                 "still_object_acc": summarise([1.0, 0.5])},
        "baseline": {"stages": [], **cell, "flip_rate": None, "still_object_acc": None}}}
    md = markdown(report)
    assert "| full | `['ich']` | 0.6000 ± 0.1000 | 0.4000 ± 0.0000 | 0.5000 ± 0.2500 | 0.7500 ± 0.2500 |" in md
    assert "| baseline | `[]` | 0.6000 ± 0.1000 | 0.4000 ± 0.0000 | n/a | n/a |" in md
    assert "What the models follow" not in md and "backdoor weights" not in md  # no such data: no table


def test_follows_and_weights_are_summarised_over_seeds_and_tabled() -> None:
    seeds = [{"clips": 9, "label": 0.5, "background": 0.25, "distractor": 0.0},
             {"clips": 9, "label": 0.7, "background": 0.05, "distractor": 0.2}]
    follows = summarise_follows(seeds)
    assert follows["clips"] == 9 and follows["label"]["mean"] == pytest.approx(0.6)
    assert follows["background"]["std"] == pytest.approx(0.1)
    balance = [{"clips": 720, "independence": 0.2, "effective_size": 70.0, "unweighted": {"background": 0.9},
                "weighted": {"background": 0.3}},
               {"clips": 720, "independence": 0.2, "effective_size": 80.0, "unweighted": {"background": 0.9},
                "weighted": {"background": 0.2}}]
    weights = summarise_weights(balance)
    assert weights["effective_size"]["mean"] == 75.0
    assert weights["weighted"]["background"]["mean"] == pytest.approx(0.25)
    cell = {"test_ood": {"acc": summarise([0.5]), "map": summarise([0.4])}}
    report = {"config": "tiny", "overrides": [], "seeds": 2, "splits": ["test_ood"], "seconds": 1.0, "variants": {
        "full": {"stages": ["ivc"], **cell, "flip_rate": None, "still_object_acc": None, "follows": follows,
                 "weights": weights},
        "baseline": {"stages": [], **cell, "flip_rate": None, "still_object_acc": None, "follows": None,
                     "weights": None}}}
    md = markdown(report)
    assert "| full | 0.600 ± 0.100 | 0.150 ± 0.100 | 0.100 ± 0.100 |" in md
    assert "| full | 75 ± 5 | 0.250 ± 0.050 |" in md and "unweighted: background 0.900" in md
    assert "| baseline |" not in md.split("What the models follow")[1]


def test_source_digest_follows_the_training_code_and_ignores_bytecode(tmp_path: Path) -> None:
    """A finished run is reused only under the code that trained it: any edit of a training source file (a folder
    of them or one file) changes the key; the studies' own code is not part of it."""
    from pcmci.experiments.ablate import TRAINING_SOURCES

    pkg, kern, config = tmp_path / "pkg", tmp_path / "kern", tmp_path / "config.py"
    for folder in (pkg / "__pycache__", kern):
        folder.mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (kern / "k.py").write_text("y = 2\n")
    config.write_text("z = 0\n")
    roots = (config, pkg, kern)
    first = source_digest(roots)
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(roots) == first
    (kern / "k.py").write_text("y = 3\n")
    second = source_digest(roots)
    config.write_text("z = 1\n")
    assert len({first, second, source_digest(roots)}) == 3 and len(first) == 64
    assert {p.name for p in TRAINING_SOURCES} == {"config.py", "data", "model", "engine", "kernels"}


@pytest.mark.slow
def test_ablate_command_writes_table_json_and_charts(synthetic_set: Path, tmp_path: Path, capsys,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Two runs at a time in worker processes; then the same ablation again reuses every finished run."""
    out = tmp_path / "ablate"
    args = ["--quiet", "ablate", "tiny", f"data.manifest={synthetic_set}", "optim.epochs=1", "optim.batch_size=6",
            "model.dictionaries.clips=12", "--seeds", "2", "--variants", "baseline", "ivc", "--out", str(out)]
    assert main([*args, "--jobs", "2"]) == 0
    report = json.loads((out / "ablation.json").read_text())
    assert report["splits"] == ["test_id", "test_ood"] and list(report["variants"]) == ["baseline", "ivc"]
    for variant in report["variants"].values():
        for split in report["splits"]:
            for metric in ("acc", "map"):
                cell = variant[split][metric]
                assert len(cell["values"]) == 2 and 0.0 <= cell["mean"] <= 1.0
        flips = variant["flip_rate"]["values"]
        assert len(flips) == 2 and all(0.0 <= f <= 1.0 for f in flips)
        assert variant["still_object_acc"] is None  # the fixture set has no still-object pair
    assert report["variants"]["baseline"]["weights"] is None and report["variants"]["ivc"]["weights"]["clips"] == 24
    meta = json.loads((synthetic_set.parent / "meta.json").read_text())
    assert report["environment"]["data_rendered_sha256"] == meta["rendered_sha256"]
    assert report["environment"]["threads_per_run"] == max(1, (os.cpu_count() or 1) // 2)
    md = (out / "ablation.md").read_text()
    assert ("| variant | stages | test_id acc | test_id mAP | test_ood acc | test_ood mAP | test_ood flip rate | "
            "test_ood still-object acc |") in md
    assert "| ivc | `['ivc']` |" in md and md.count("| n/a |") == 2
    for png in ("ablation_acc.png", "ablation_map.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "ivc-seed1" / "checkpoint.pt").is_file()
    assert "ablation.md" in capsys.readouterr().out
    stamp = (out / "ivc-seed1" / "checkpoint.pt").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="pcmci.experiments.ablate"):
        assert main(args) == 0
    assert sum("reusing" in r.getMessage() for r in caplog.records) == 4
    assert (out / "ivc-seed1" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert json.loads((out / "ablation.json").read_text())["variants"] == report["variants"]
    assert main(["--quiet", "ablate", "tiny", "--variants", "nope", "--out", str(out)]) == 1


def test_an_interrupted_run_resumes_and_another_keys_checkpoint_is_dropped(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The run file is stamped with its key before training: a checkpoint under the same key and no results is an
    interrupted run (resumed), a finished one is reused, and another key's checkpoint is never resumed."""
    calls: list[tuple[bool, bool, dict]] = []

    def fake_train(cfg: Config, resume: bool = False) -> Path:
        checkpoint = Path(cfg.run.out_dir) / "checkpoint.pt"
        calls.append((resume, checkpoint.is_file(), json.loads((checkpoint.parent / "ablation_run.json").read_text())))
        checkpoint.write_bytes(b"weights")
        return checkpoint

    monkeypatch.setattr(ablate, "train", fake_train)
    monkeypatch.setattr(ablate, "evaluate", lambda checkpoint, splits, **_: {s: {"acc": 0.5, "map": 0.25}
                                                                             for s in splits})
    monkeypatch.setattr(ablate, "synthetic_pairs", lambda *_, **__: None)
    monkeypatch.setattr(ablate, "source_digest", lambda: "code")
    saved = tmp_path / "baseline-seed0" / "ablation_run.json"

    def run() -> dict:
        return ablate.run_one("tiny", ["optim.epochs=2"], "baseline", 0, tmp_path, "cpu", False)

    def stamp(**key_changes: object) -> None:
        record = json.loads(saved.read_text())
        saved.write_text(json.dumps({"key": {**record["key"], **key_changes}}))

    first = run()
    assert [c[:2] for c in calls] == [(False, False)] and "results" not in calls[0][2]  # stamped, not yet done
    assert first["results"]["test_ood"] == {"acc": 0.5, "map": 0.25} and first["key"] == calls[0][2]["key"]
    stamp()  # killed after a checkpoint, before the results
    assert run()["results"] == first["results"] and calls[-1][:2] == (True, True)
    run()  # finished: reused
    assert len(calls) == 2
    stamp(seed=1)  # a checkpoint of another key
    run()
    assert calls[-1][:2] == (False, False) and calls[-1][2]["key"] == first["key"]


_ORPHANS = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from pcmci.experiments.ablate import _worker_init

if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")  # the watch does not depend on the start method; fork starts fast
    watched = ProcessPoolExecutor(1, mp_context=fork, initializer=_worker_init, initargs=(1, 30, os.getpid(), 0.1))
    unwatched = ProcessPoolExecutor(1, mp_context=fork, initializer=_worker_init, initargs=(1, 30))
    print(watched.submit(os.getpid).result(), unwatched.submit(os.getpid).result(), flush=True)
    watched.submit(time.sleep, 60)
    unwatched.submit(time.sleep, 60)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_ablation_workers_end_with_their_parent(tmp_path: Path) -> None:
    """A killed ablation leaves no worker training on; a worker without the watch (the control) outlives it."""
    script = tmp_path / "pools.py"
    script.write_text(_ORPHANS)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    watched, unwatched = map(int, parent.stdout.readline().split())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(watched) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # ten of the watch's polling intervals
    try:
        assert not _alive(watched) and _alive(unwatched)
    finally:
        for pid in (watched, unwatched):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_second_ablation_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    with ablate.out_lock(tmp_path):
        with pytest.raises(ConfigError, match=rf"in use by another pcmci ablate \(pid {os.getpid()}\)"):
            ablate.run_ablation("tiny", [], 1, tmp_path, ["baseline"])
    with ablate.out_lock(tmp_path):  # released with the block
        pass


def test_runs_of_another_configuration_are_refused_not_deleted(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An ablation into an --out that holds another configuration's runs stops before training and names them (it
    would delete their checkpoints); a run of the same configuration by older code is retrained; --overwrite
    replaces."""
    trained: list[list[str]] = []

    def fake_run_one(source: str, overrides: list[str], name: str, seed: int, out: Path, *_: object) -> dict:
        trained.append(overrides)
        run_dir = out / f"{name}-seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.pt").write_bytes(b"weights")
        (run_dir / "ablation_run.json").write_text(json.dumps({"key": ablate.run_key(source, overrides, name, seed)}))
        return {"results": {s: {"acc": 0.5, "map": 0.5} for s in ("test_id", "test_ood")}}

    monkeypatch.setattr(ablate, "run_one", fake_run_one)
    monkeypatch.setattr(ablate, "write_report", lambda *_: None)
    monkeypatch.setattr(ablate, "source_digest", lambda: "old code")
    ablate.run_ablation("tiny", ["optim.lr=0.001"], 1, tmp_path, ["baseline"], progress=False)
    monkeypatch.setattr(ablate, "source_digest", lambda: "new code")
    ablate.run_ablation("tiny", ["optim.lr=0.001"], 1, tmp_path, ["baseline"], progress=False)  # same config
    with pytest.raises(ConfigError, match=r"baseline-seed0 \(overrides: \['optim.lr=0.001'\]\).*--overwrite"):
        ablate.run_ablation("tiny", ["optim.lr=0.002"], 1, tmp_path, ["baseline"], progress=False)
    assert trained == [["optim.lr=0.001"]] * 2 and (tmp_path / "baseline-seed0" / "checkpoint.pt").is_file()
    ablate.run_ablation("tiny", ["optim.lr=0.002"], 1, tmp_path, ["baseline"], progress=False, overwrite=True)
    assert trained[-1] == ["optim.lr=0.002"]


def test_a_checkpoint_no_ablation_stamped_is_refused_not_deleted(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run folder holding a checkpoint but no ablation_run.json (a ``pcmci train`` run.out_dir named like a
    variant) is another configuration's: refused before training, kept; --overwrite replaces it."""
    trained: list[str] = []
    monkeypatch.setattr(ablate, "run_one", lambda _s, _o, name, *_: trained.append(name) or
                        {"results": {s: {"acc": 0.5, "map": 0.5} for s in ("test_id", "test_ood")}})
    monkeypatch.setattr(ablate, "write_report", lambda *_: None)
    checkpoint = tmp_path / "baseline-seed0" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"the user's weights")
    with pytest.raises(ConfigError, match=r"baseline-seed0 \(a checkpoint.pt without ablation_run.json.*--overwrite"):
        ablate.run_ablation("tiny", [], 1, tmp_path, ["baseline"], progress=False)
    assert trained == [] and checkpoint.read_bytes() == b"the user's weights"
    ablate.run_ablation("tiny", [], 1, tmp_path, ["baseline"], progress=False, overwrite=True)
    assert trained == ["baseline"]


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "device 'gpu' is not one of auto, cpu, cuda, cuda:N"),
    (["data.eval_splits=[test_id,test_odd]"], "split 'test_odd' has no rows; available splits: ['test_id', 'train']"),
    (["data.train_split=training"], "split 'training' has no rows; available splits: ['test_id', 'train']"),
])
def test_a_device_or_split_no_run_can_use_is_refused_before_any_run(argv: list[str], message: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a bug hunt: a bad --device or evaluation split stopped the ablation only once the first run had
    trained (minutes), its folder created and stamped."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\na.webm,fry egg,train\nb.webm,boil egg,test_id\n")
    monkeypatch.setattr(ablate, "train", lambda *_, **__: pytest.fail("trained"))
    out = tmp_path / "ablate"
    assert main(["--quiet", "ablate", "tiny", f"data.manifest={manifest}", "data.eval_splits=[test_id]", *argv,
                 "--variants", "baseline", "--seeds", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcmci: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()
