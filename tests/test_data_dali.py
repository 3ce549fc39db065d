"""DALI-CPU decoding against PyAV, backend fallback, and the sharded DALI loader (CPU pipeline)."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from pcmci.data.dali import DaliLoader  # noqa: E402
from pcmci.data.datasets import ManifestDataset, VideoDataset, read_manifest  # noqa: E402
from pcmci.data.decode import VideoDecodeError, decode_frames, probe  # noqa: E402
from pcmci.data.synthetic import CODECS, encode_video, synthesize  # noqa: E402

# DALI and PyAV convert YUV 4:2:0 to RGB with different chroma upsampling. Bounds on the mean absolute
# difference (grey levels of 255) for the same frame: the synthetic activity videos < 3 (measured ~1.6-1.9);
# worst case, 8x8 blocks of random colour (a chroma edge every 8 px) < 12 (measured ~8), while
# neighbouring frames of that video differ by > 60 (measured ~82) — the bound tells frames apart.
MAD_BOUND = 3.0
MAD_BOUND_BLOCKS, MAD_NEIGHBOURS = 12.0, 60.0


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali")
    return {codec: synthesize(root / codec, n_train=4, n_test=2, codec=codec, progress=False)
            for codec in ("vp9", "mjpeg", "h264")}


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_matches_pyav(sets, codec, tmp_path):
    for row in read_manifest(sets[codec])[:3]:
        info = probe(row.path)
        indices = [3, 4, 17, info.num_frames - 1, 9, 9]
        ours, _ = decode_frames(row.path, indices, "pyav", info)
        dali, _ = decode_frames(row.path, indices, "dali", info)
        assert dali.shape == ours.shape and dali.dtype == np.uint8
        assert mad(dali, ours) < MAD_BOUND
    rng = np.random.default_rng(0)
    blocks = [np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)) for _ in range(40)]
    path = tmp_path / f"blocks.{CODECS[codec][1]}"
    encode_video(path, blocks, codec, fps=8, gop=10)
    indices = [0, 5, 13, 39, 22, 22]
    dali, _ = decode_frames(path, indices, "dali")
    ours, _ = decode_frames(path, indices, "pyav")
    neighbours, _ = decode_frames(path, [i + 1 for i in indices[:3]], "pyav")
    assert mad(dali, ours) < MAD_BOUND_BLOCKS and mad(dali[:3], neighbours) > MAD_NEIGHBOURS


def test_dali_backend_falls_back_to_pyav_for_h264(sets):
    path = read_manifest(sets["h264"])[0].path
    a, _ = decode_frames(path, [1, 20], "dali")
    b, _ = decode_frames(path, [1, 20], "pyav")
    np.testing.assert_array_equal(a, b)


def test_dali_loader_cpu_batches_match_the_dataset_and_shard(sets):
    dataset = ManifestDataset(sets["vp9"], "train", frames=8, image_size=64)
    loader = DaliLoader(dataset, batch_size=3, device="cpu")
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    video = torch.cat([b["video"] for b in batches])
    assert video.shape == (4, 8, 3, 64, 64) and video.dtype == torch.float32 and 0 <= video.min() <= video.max() <= 1
    reference = torch.stack([dataset[i]["video"] for i in range(4)])
    assert (video - reference).abs().mean() * 255 < MAD_BOUND
    assert torch.equal(torch.cat([b["label"] for b in batches]), torch.stack([dataset[i]["label"] for i in range(4)]))
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3]

    train = ManifestDataset(sets["vp9"], "train", frames=8, image_size=64, train=True, seed=3)
    shards = [DaliLoader(train, 2, "cpu", shuffle=True, rank=r, world=2) for r in (0, 1)]
    seen = []
    for shard in shards:
        shard.set_epoch(1)
        seen.append([i for b in shard for i in b["index"].tolist()])
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3] and not set(seen[0]) & set(seen[1])
    uneven = [DaliLoader(train, 2, "cpu", shuffle=True, rank=r, world=3)._order() for r in range(3)]
    assert [len(o) for o in uneven] == [2, 2, 2] and set(sum(uneven, [])) == {0, 1, 2, 3}  # padded, as DDP needs


def test_dali_loader_skips_bad_videos(tmp_path, sets):
    rows = sets["vp9"].read_text().splitlines()
    good = [f"{sets['vp9'].parent / r.split(',')[0]},{r.split(',')[1]}" for r in rows[1:3]]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join([good[0], "gone.webm,make tea", good[1]]) + "\n")
    dataset = ManifestDataset(tmp_path / "m.csv", None, frames=4, image_size=32, skip_bad=True)
    (batch,) = list(DaliLoader(dataset, batch_size=3, device="cpu"))
    assert batch["video"].shape == (2, 4, 3, 32, 32) and batch["index"].tolist() == [0, 2]
    assert len(batch["bad"]) == 1 and "gone.webm" in batch["bad"][0] and "file not found" in batch["bad"][0]


def _mixed_manifest(tmp_path, sets):
    """vp9, h264, vp9: the H.264 video probes fine but DALI's CPU decoder cannot open it inside ``pipe.run()``."""
    rows = []
    for codec, line in (("vp9", 1), ("h264", 1), ("vp9", 2)):
        path, label = sets[codec].read_text().splitlines()[line].split(",")[:2]
        rows.append(f"{sets[codec].parent / path},{label}")
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return tmp_path / "m.csv", rows[1].split(",")[0]


def test_dali_loader_finds_and_skips_a_video_failing_inside_the_pipeline(tmp_path, sets):
    manifest, h264 = _mixed_manifest(tmp_path, sets)
    dataset = ManifestDataset(manifest, None, frames=4, image_size=32, skip_bad=True)
    (batch,) = list(DaliLoader(dataset, batch_size=3, device="cpu"))
    assert batch["index"].tolist() == [0, 2] and batch["video"].shape == (2, 4, 3, 32, 32)
    assert len(batch["bad"]) == 1 and h264 in batch["bad"][0] and "Failed to create video decoder" in batch["bad"][0]
    reference = torch.stack([dataset[i]["video"] for i in (0, 2)])
    assert (batch["video"] - reference).abs().mean() * 255 < MAD_BOUND
    assert torch.equal(batch["label"], torch.stack([dataset[i]["label"] for i in (0, 2)]))

    strict = ManifestDataset(manifest, None, frames=4, image_size=32)
    with pytest.raises(VideoDecodeError, match="Failed to create video decoder") as err:
        list(DaliLoader(strict, batch_size=3, device="cpu"))
    assert h264 in str(err.value)


def test_dali_loader_watchdog_covers_the_pipeline_run(tmp_path, sets, monkeypatch):
    """Every ``pipe.run()`` is watched: runs made 0.5 s slow time out at 0.1 s (a fixed margin, not a race)."""
    from pcmci.data import dali

    class Slow:
        def __init__(self, pipe) -> None:
            self.pipe = pipe

        def feed_input(self, *args, **kwargs):
            return self.pipe.feed_input(*args, **kwargs)

        def run(self):
            time.sleep(0.5)
            return self.pipe.run()

    build = dali._pipeline
    monkeypatch.setattr(dali, "_pipeline", lambda *args: Slow(build(*args)))
    rows = [f"{sets['vp9'].parent / line.split(',')[0]},{line.split(',')[1]}"
            for line in sets["vp9"].read_text().splitlines()[1:4]]
    manifest = tmp_path / "good.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    strict = ManifestDataset(manifest, None, frames=4, image_size=32)
    with pytest.raises(VideoDecodeError, match=r"timed out after 0.1 s"):
        list(DaliLoader(strict, batch_size=3, device="cpu", timeout=0.1))
    skipping = ManifestDataset(manifest, None, frames=4, image_size=32, skip_bad=True)
    (batch,) = list(DaliLoader(skipping, batch_size=3, device="cpu", timeout=0.1))
    assert "video" not in batch and batch["index"].tolist() == [] and len(batch["bad"]) == 3
    assert all("timed out" in entry for entry in batch["bad"])
    time.sleep(0.6)  # the abandoned runs (the thread watchdog cannot stop them) finish before the next test


@pytest.mark.parametrize("kind", ["vp9", "mjpeg", "prepared-vp9"])
def test_dali_loader_decodes_exactly_the_sampled_frames(tmp_path, kind):
    """Training clips (seeded, two epochs) from DALI's sparse-index decoder (``fn.decoders.video(frames=...)``) are the
    frames the PyAV sampler picks: each is within the chroma bound of PyAV's decode of that frame and far from the
    frames one before and one after (random 8x8 blocks: neighbours differ by > MAD_NEIGHBOURS)."""
    from pcmci.data import prepare
    from pcmci.data.records import LabelSet, VideoRecord, VideoSet

    rng = np.random.default_rng(1)
    blocks = [np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)) for _ in range(48)]
    codec = "mjpeg" if kind == "mjpeg" else "vp9"
    path = tmp_path / f"blocks.{CODECS[codec][1]}"
    encode_video(path, blocks, codec, fps=8, gop=24)  # long GOPs: sparse frames need real seeking
    if kind == "prepared-vp9":
        entry = prepare.prepare_video(path, tmp_path, Path("prepared.webm"),
                                      prepare.PrepareSettings(short_side=64, gop=4, codec="vp9"))
        assert entry["status"] == "done", entry
        path = tmp_path / "prepared.webm"
    videos = VideoSet(LabelSet(["a"]), [VideoRecord(path, 0, [], "train")] * 3, "test")
    dataset = VideoDataset(videos, frames=8, image_size=64, train=True, seed=5)
    loader = DaliLoader(dataset, batch_size=3, device="cpu")
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        (batch,) = list(loader)
        for row, index in enumerate(batch["index"].tolist()):
            picked = dataset.plan(index).clips[0]
            dali = (batch["video"][row].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
            for f, frame in enumerate(picked):
                ours, _ = decode_frames(path, [frame], "pyav", timeout=0)
                assert mad(dali[f], ours[0]) < MAD_BOUND_BLOCKS
                for other in (frame - 1, frame + 1):
                    if 0 <= other < len(blocks):
                        theirs, _ = decode_frames(path, [other], "pyav", timeout=0)
                        assert mad(dali[f], theirs[0]) > MAD_NEIGHBOURS


def test_dali_cpu_after_this_process_built_a_pipeline(sets):
    """DALI does not survive a fork (a worker forked after this process built a pipeline hangs building its own), so
    from then on DALI-CPU decodes run here under the thread watchdog instead of in the decode worker."""
    from pcmci.data import dali, watchdog

    path = read_manifest(sets["vp9"])[0].path
    here, _ = decode_frames(path, [2, 9], "dali", timeout=0)  # this process builds its pipeline
    assert dali.built_pipelines()
    watchdog.shutdown()
    tic = time.perf_counter()
    again, _ = decode_frames(path, [2, 9], "dali", timeout=20)
    assert time.perf_counter() - tic < 10 and watchdog.worker_pid() is None  # no worker was forked for it
    np.testing.assert_array_equal(here, again)
