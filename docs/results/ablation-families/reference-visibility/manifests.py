"""Manifests that label each video of the demo set's unconfounded twin (`runs/easy-c0`) by one of its confounders
instead of its activity: can IVC's single-frame reference architecture read that confounder from one frame?

    .venv/bin/python -P docs/results/ablation-families/reference-visibility/manifests.py runs/easy-c0 runs/visibility
    pcmci --quiet train tiny data.manifest=runs/visibility/distractor/manifest.csv \
        data.labels=runs/visibility/distractor/labels.json model.stages=[] model.timesformer.frames=1 data.frames=1 \
        optim.epochs=6 data.cache_frames=true run.out_dir=runs/visibility/run-distractor run.tensorboard=false
    pcmci --quiet eval runs/visibility/run-distractor/checkpoint.pt
    (the same with background for distractor)

`model.stages=[] model.timesformer.frames=1 data.frames=1 optim.epochs=6` is the reference of
`pcmci.engine.propensity` (the baseline architecture on one frame, `model.ivc.reference_epochs` = 6 epochs).
"""
import csv
import json
import sys
from pathlib import Path

source, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
meta = json.loads((source / "meta.json").read_text())
for kind, names in (("distractor", meta["distractors"]), ("background", meta["backgrounds"])):
    folder = out / kind
    folder.mkdir(parents=True, exist_ok=True)
    rows = [["path", "label", "split"]] + [[str(source / v["path"]), names[v[kind]], v["split"]] for v in meta["videos"]]
    with (folder / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (folder / "labels.json").write_text(json.dumps({"classes": names, "actions": []}))
    print(f"{folder / 'manifest.csv'}: {len(rows) - 1} videos labelled by their {kind} ({len(names)} kinds)")
