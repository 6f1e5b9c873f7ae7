"""``make scale``: ImageNet's size simulated with tiny real JPEGs and hard links, step by step, at a few fractions.

At each fraction of ImageNet-1k (1,281,167 train and 50,000 val images in 1,000 classes) the harness writes, in a
temporary folder outside the repo (removed after):

* one tiny real JPEG per class; every other image is a hard link to it (no 140 GB needed);
* the three download shapes ``prepare`` reads: Kaggle's tree (with ``LOC_val_solution.csv``), a tree of class
  folders (the prepared ``train/``), and ILSVRC2012 archives (a train tar of 1,000 class tars, a val tar, the
  devkit's ground truth);

then times, each step in its own interpreter (its own peak RSS, imports not counted in the step's seconds):
``prepare`` of each shape, ``--check``, ``prepare --format litdata`` (580 images a chunk, ImageNet's chunk count)
and 5,000 random reads from the optimized train split, the data module's scan (``ImageNetDataModule.layout``) of
the prepared split folders and of the class-folder tree (split per class), a ``fit`` to its first training batch
(tiny model, 2 loader workers), the resume state that fit's checkpoint holds, and ``predict`` over the val images.

``python -m bench.scale --scale 0.01,0.1,1`` prints a table and writes ``bench/scale.json``. Targets: every step's
cost per file at the largest fraction within 1.5x of the smallest's; the scan and set-up of 1.28M files under 60 s
and 1 GB peak RSS; the whole run at 100% under 25 minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import scale_records
from bench.common import PEAK_RSS_MB, REPO, run_python

TRAIN_IMAGES = 1_281_167
VAL_IMAGES = 50_000
CLASSES = 1000
LINEAR_TARGET = 1.5  # cost per file at the largest fraction / at the smallest
SCAN_TARGET_S, SCAN_TARGET_MB = 60.0, 1024.0
TOTAL_TARGET_S = 25 * 60
OPTIMIZED_READS = 5000  # random items read from the optimized train split at every fraction: the cost should not grow
ITEMS_PER_CHUNK = 580  # ImageNet's ~140 GB in LitData's 64 MB chunks: ~2,200 chunks of ~580 images
MIN_TIMED_S = 0.05  # a step shorter than this at a small fraction is not a baseline for its cost per file


# ---- the simulated download ----------------------------------------------------------------------------------
def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal counts (at least one each)."""
    return [max(1, total // parts + (i < total % parts)) for i in range(parts)]


def val_label(index: int, wnids: list[str]) -> str:
    """The class of val image ``index`` (from 0): spread evenly over the classes, not in blocks."""
    return wnids[(index * 7919) % len(wnids)]


class Download:
    """The simulated download at one fraction, under ``root``: ``build_trees`` then ``build_archives``."""

    def __init__(self, root: Path, fraction: float) -> None:
        from imagenet_cls.data.classes import imagenet_class_names

        self.root = root
        self.names = imagenet_class_names()
        self.wnids = sorted(self.names)
        self.per_class = spread(round(TRAIN_IMAGES * fraction), CLASSES)
        self.train, self.val = sum(self.per_class), max(1, round(VAL_IMAGES * fraction))
        self.val_labels = [val_label(i, self.wnids) for i in range(self.val)]
        self.kaggle, self.archives = root / "kaggle", root / "archives"
        self.kaggle_train = self.kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train"  # also the class-folder tree

    def build_trees(self) -> None:
        """The base JPEGs and Kaggle's tree, hard links (ext4 allows 65,000 per file; a tmpfs counts each link
        against its inodes, so there are never more than two trees of links at a time)."""
        self.base = _base_jpegs(self.root / "base", self.wnids)
        kaggle_data = self.kaggle / "ILSVRC" / "Data" / "CLS-LOC"
        for wnid, count in zip(self.wnids, self.per_class, strict=True):
            source = str(self.base[wnid])
            tree = kaggle_data / "train" / wnid
            tree.mkdir(parents=True)
            prefix = f"{tree}/{wnid}_"
            for i in range(count):
                os.link(source, f"{prefix}{i}.JPEG")
        (kaggle_data / "val").mkdir()
        for i, wnid in enumerate(self.val_labels):
            os.link(self.base[wnid], kaggle_data / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        mapping = "".join(f"{w} {self.names[w].replace('_', ' ')}\n" for w in self.wnids)
        (self.kaggle / "LOC_synset_mapping.txt").write_text(mapping)
        rows = "".join(f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4\n" for i, w in enumerate(self.val_labels))
        (self.kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)

    def build_archives(self) -> None:
        """ILSVRC2012's train tar (1,000 class tars), val tar and devkit, holding the same JPEGs."""
        self.archives.mkdir()
        data = {wnid: self.base[wnid].read_bytes() for wnid in self.wnids}
        with tarfile.open(self.archives / "ILSVRC2012_img_train.tar", "w", format=tarfile.USTAR_FORMAT) as outer:
            for wnid, count in zip(self.wnids, self.per_class, strict=True):
                inner = io.BytesIO()
                with tarfile.open(fileobj=inner, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for i in range(count):
                        _add(tar, f"{wnid}_{i}.JPEG", data[wnid])
                _add(outer, f"{wnid}.tar", inner.getvalue())
        with tarfile.open(self.archives / "ILSVRC2012_img_val.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, wnid in enumerate(self.val_labels):
                _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", data[wnid])
        _devkit(self.archives / "ILSVRC2012_devkit_t12.tar.gz", self.wnids, self.val_labels)


def _base_jpegs(folder: Path, wnids: list[str]) -> dict[str, Path]:
    """One real 16x16 JPEG (a few hundred bytes) per class, each a different colour with noise."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = {}
    for index, wnid in enumerate(wnids):
        colour = np.array([index % 10 * 25, index // 10 % 10 * 25, index // 100 * 25])
        pixels = np.clip(colour + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        paths[wnid] = folder / f"{wnid}.JPEG"
        Image.fromarray(pixels).save(paths[wnid], quality=90)
    return paths


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _devkit(path: Path, wnids: list[str], val_labels: list[str]) -> None:
    """``ILSVRC2012_devkit_t12.tar.gz`` as ``prepare`` reads it: ``meta.mat`` synsets and the val ground truth."""
    import numpy as np
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    synsets = np.zeros((len(wnids) + 1, 1), dtype=[(f, object) for f in fields])
    for i, wnid in enumerate(wnids):
        synsets[i, 0] = (i + 1, wnid, wnid, "", 0, np.zeros(0), 0)
    synsets[len(wnids), 0] = (len(wnids) + 1, "n00001740", "entity", "", 2, np.array([1, 2]), 19)  # not a leaf
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    ids = {wnid: i + 1 for i, wnid in enumerate(wnids)}
    truth = "".join(f"{ids[w]}\n" for w in val_labels).encode()
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)


# ---- the steps, each in its own interpreter ------------------------------------------------------------------
CHILD = (
    PEAK_RSS_MB
    + """
import json, sys, time
from pathlib import Path
P = json.loads(sys.argv[1]) if len(sys.argv) > 1 else PARAMS
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
def begin():  # the step starts (after its imports)
    global CPU_START
    CPU_START = time.process_time()
    return time.perf_counter()
def report(**result):  # cpu_s: this process's CPU seconds in the step (not its loader workers')
    print(json.dumps({**result, "cpu_s": time.process_time() - CPU_START, "peak_rss_mb": peak_rss_mb()}))
"""
)

PREPARE = """
from imagenet_cls.prepare.sources import prepare
start = begin()
done = prepare(Path(P["source"]), Path(P["dest"]), split=(0.8, 0.1, 0.1), progress=False)
report(seconds=time.perf_counter() - start, placed=done["placed"], mode=done["mode"])
"""

VAL_LABELS = """
from imagenet_cls.prepare.sources import _archive_val_labels
start = begin()
labels = _archive_val_labels(Path(P["source"]))
report(seconds=time.perf_counter() - start, labels=len(labels))
"""

CHECK = """
from imagenet_cls.prepare.check import check_dataset
start = begin()
summary = check_dataset(Path(P["dest"]), Path(P["dest"]) / "check_report.csv", full=False, progress=False)
images = sum(s["images"] for s in summary["splits"].values())
report(seconds=time.perf_counter() - start, images=images, problems=summary["problems"])
"""

SCAN = """
from imagenet_cls.data.datamodule import ImageNetDataModule
imported_mb = rss_mb()
start = begin()
data = ImageNetDataModule(data_dir=Path(P["dest"]), split=(0.8, 0.1, 0.1), num_workers=0)
layout = data.layout
classes = data.classes
images = {split: len(samples) for split, samples in layout.splits.items()}
report(seconds=time.perf_counter() - start, images=images, classes=len(classes), imported_rss_mb=imported_mb)
"""

OPTIMIZE = """
from imagenet_cls.prepare.litdata_writer import write_litdata
start = begin()
done = write_litdata(Path(P["source"]), Path(P["dest"]), num_workers=2, progress=False, chunk_size=P["chunk_size"])
report(seconds=time.perf_counter() - start, splits=done["splits"])
"""

OPTIMIZED_READ = """
import json, random
from imagenet_cls.data.datamodule import ImageNetDataModule
from imagenet_cls.data.streaming import OptimizedSplit
start = begin()
layout = ImageNetDataModule(data_dir=Path(P["dest"]), num_workers=0).layout
items = OptimizedSplit(layout.split_url("train"), len(layout.samples("train")))
items[0]
opened = time.perf_counter() - start
for index in random.Random(0).sample(range(len(items)), P["reads"]):
    items[index]
chunks = len(json.loads((Path(P["dest"]) / "train" / "index.json").read_text())["chunks"])
report(seconds=time.perf_counter() - start, open_s=opened, chunks=chunks, images=len(items))
"""

FIRST_BATCH = """
import glob, io, os, torch
from lightning.pytorch import Callback
from imagenet_cls.cli import ImageNetCLI
imported = time.time()
begin()

class FirstBatch(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        global first_batch, first_batch_cpu
        if batch_idx == 0:
            first_batch, first_batch_cpu = time.time(), time.process_time() - CPU_START

ImageNetCLI(args=P["args"] + ["--trainer.callbacks+=__main__.FirstBatch"])
checkpoint = glob.glob(os.path.join(P["root"], "**", "last.ckpt"), recursive=True)[0]
state = torch.load(checkpoint, map_location="cpu", weights_only=False)

def size(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())

resume = [v for k, v in state["callbacks"].items() if "ResumeState" in k][0]
report(seconds=first_batch - imported, from_launch_s=first_batch - P["launched"], first_batch_cpu_s=first_batch_cpu,
       datamodule_state_bytes=size(state["ImageNetDataModule"]), resume_state_bytes=size(resume),
       datamodule_state=state["ImageNetDataModule"], checkpoint_bytes=os.path.getsize(checkpoint))
"""

PREDICT = """
from imagenet_cls.cli import ImageNetCLI
begin()
cli = ImageNetCLI(args=P["args"])
writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PredictionWriter")
rows = sum(1 for _ in open(Path(P["output"]) / "predictions.csv")) - 1
report(seconds=writer.seconds, rows=rows)
"""

TINY = ["--model.model_name", "test_resnet", "--model.num_classes", "1000", "--model.image_size", "32"]
QUIET = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false"]
QUIET += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def child(code: str, **params) -> dict:
    """Run one step in a fresh interpreter; its last stdout line is its JSON result (``wall_s``: with start-up)."""
    text = CHILD.replace("PARAMS", repr(json.loads(json.dumps(params, default=str)))) + code
    env = {"WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = json.loads(run_python(text, env=env, timeout=3600).strip().splitlines()[-1])
    return {**result, "wall_s": time.perf_counter() - start}


def _log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def run_fraction(fraction: float, work: Path, run: dict, save: Callable[[], None], only: str = "all") -> None:
    """Every step at one fraction into ``run["steps"]`` (``files``: what its cost per file divides by), saving
    after each. The steps the targets name come first, so an interrupted run still has them."""
    root = Path(tempfile.mkdtemp(prefix=f"scale-{fraction:g}-", dir=work))
    steps = run["steps"]

    def timed(name: str, files: int | None, function: Callable[[], object]) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        function()
        steps[name] = {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "files": files}
        _log(f"{name}: {steps[name]['seconds']:.2f} s")
        save()

    def record(name: str, found: dict) -> None:
        steps[name] = found
        _log(f"{name}: {found['seconds']:.2f} s")
        save()

    def step(name: str, files: int | None, code: str, **params) -> None:
        steps[name] = {**child(code, **params), "files": files}
        _log(f"{name}: {steps[name]['seconds']:.2f} s")
        save()

    try:
        if only == "records":
            run.update(train=round(TRAIN_IMAGES * fraction))
            scale_records.run_steps(work / "imagenet-cls-scale-records", run["train"], record)
            return
        download = Download(root, fraction)
        n_train, n_val = download.train, download.val
        everything, dest = n_train + n_val, root / "dest"
        run.update(train=n_train, val=n_val)
        timed("build the Kaggle tree (harness)", everything, download.build_trees)
        step("prepare kaggle (links)", everything, PREPARE, source=download.kaggle, dest=dest / "kaggle")
        step("scan split folders (data module)", everything, SCAN, dest=dest / "kaggle")
        step("scan class folders + split (data module)", n_train, SCAN, dest=download.kaggle_train)
        fit_root = root / "fit"
        args = ["fit", *TINY, *QUIET, "--data.data_dir", str(dest / "kaggle"), "--data.batch_size", "32"]
        args += ["--data.num_workers", "2", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
        args += ["--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(fit_root)]
        args += ["--test_after_fit", "false"]
        step(
            "fit: to the first training batch", everything, FIRST_BATCH, args=args, root=fit_root, launched=time.time()
        )
        step("check (--check, quick)", everything, CHECK, dest=dest / "kaggle")
        step("optimize --format litdata (ImageNet's chunk count)", everything, OPTIMIZE, source=dest / "kaggle",
             dest=dest / "litdata", chunk_size=ITEMS_PER_CHUNK)  # fmt: skip
        step(f"optimized train: open + {OPTIMIZED_READS} random items", OPTIMIZED_READS, OPTIMIZED_READ,
             dest=dest / "litdata", reads=OPTIMIZED_READS)  # fmt: skip
        _remove(dest / "litdata")
        _remove(download.kaggle / "ILSVRC")
        # The prepared train/ is a tree of class folders (wnids) with nothing else: the seed's shape.
        step("prepare class folders (links, split)", n_train, PREPARE, source=dest / "kaggle" / "train",
             dest=dest / "folders")  # fmt: skip
        for done in (dest / "kaggle" / "train", dest / "folders"):
            _remove(done)  # on a tmpfs --work, memory: the archives and their 1.33M extracted files come next
        timed("build archives (harness)", everything, download.build_archives)
        step("prepare archives (extract)", everything, PREPARE, source=download.archives, dest=dest / "archives")
        step("val labels from the devkit", n_val, VAL_LABELS, source=download.archives)
        step("val labels from LOC_val_solution.csv", n_val, VAL_LABELS, source=download.kaggle)
        output = root / "predictions"
        trained = next(fit_root.rglob("last.ckpt"))  # predict needs weights: the fit step's checkpoint
        args = ["predict", "--ckpt_path", str(trained), *QUIET, "--data.predict_path", str(dest / "kaggle" / "val")]
        args += ["--data.batch_size", "64", "--data.num_workers", "2", "--writer.output_dir", str(output)]
        args += ["--writer.write_images", "false"]
        step("predict val (tiny model, CSV only)", n_val, PREDICT, args=args, output=output)
        scale_records.run_steps(work / "imagenet-cls-scale-records", n_train, record)
    finally:
        timed("remove the temporary folder (harness)", None, lambda: _remove(root))


def _remove(root: Path) -> None:
    """``rm -rf`` (a C loop; ~1.3M entries per 10%), else Python's rmtree."""
    if shutil.which("rm") is None or subprocess.run(["rm", "-rf", str(root)], check=False).returncode != 0:
        shutil.rmtree(root, ignore_errors=True)


# ---- report --------------------------------------------------------------------------------------------------
def cpu() -> str:
    """The CPU model and its vector extensions (AVX2, AVX-512, AMX), as ``lscpu`` shows them."""
    model, flags = "unknown", set()
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    found = [f for f in ("avx2", "avx512f", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {'/'.join(found) or 'no avx2'}"


def per_file_us(step: dict | None, key: str = "seconds") -> float | None:
    if not step or not step.get("files") or step.get(key) is None:
        return None
    return step[key] / step["files"] * 1e6


def summarise(runs: list[dict], total_s: float, finished: bool) -> dict:
    """Targets: cost per file (largest fraction vs smallest, wall and CPU), the scan at the largest, the total."""
    last = runs[-1]
    verdicts: dict[str, dict] = {}
    for name, step in last["steps"].items():
        if "(harness" in name:  # the harness's own set-up (writing the sources, removing them): no target
            continue
        # Against the smallest fraction where the step took long enough to time (the 1% CSV read: under 1 ms).
        base = next((r for r in runs[:-1] if (r["steps"].get(name) or {}).get("seconds", 0) >= MIN_TIMED_S), None)
        small, large = per_file_us(base["steps"][name]) if base else None, per_file_us(step)
        if small and large:
            small_cpu, large_cpu = per_file_us(base["steps"][name], "cpu_s"), per_file_us(step, "cpu_s")
            cpu_ratio = large_cpu / small_cpu if small_cpu and large_cpu else None
            verdicts[name] = {"per_file_ratio": large / small, "per_file_cpu_ratio": cpu_ratio}
            verdicts[name].update(against=base["fraction"], met=large / small <= LINEAR_TARGET)
    scan = last["steps"].get("scan split folders (data module)")
    if scan:
        verdicts["scan + set-up"] = {
            "files": scan["files"],
            "seconds": scan["seconds"],
            "peak_rss_mb": scan["peak_rss_mb"],
            "imported_rss_mb": scan["imported_rss_mb"],
            "met": scan["seconds"] < SCAN_TARGET_S and scan["peak_rss_mb"] < SCAN_TARGET_MB,
        }
    verdicts.update(scale_records.verdicts(last["steps"]))
    verdicts["total"] = {"seconds": total_s, "finished": finished, "met": finished and total_s < TOTAL_TARGET_S}
    return verdicts


def format_table(runs: list[dict], verdicts: dict) -> str:
    """The steps as rows, each fraction's seconds, cost per file and peak RSS as columns, then the ratios."""
    labels = [f"{r['fraction'] * 100:g}%" for r in runs]
    head = f"{'step':44}" + "".join(f"{label + ' s':>10}{'us/file':>9}{'MB':>6}" for label in labels)
    head += f"{'ratio':>7}{'cpu':>6}"
    lines = [head, "-" * len(head)]
    names = list(dict.fromkeys(name for run in runs for name in run["steps"]))
    for name in names:
        cells = ""
        for run in runs:
            step = run["steps"].get(name)
            cost, rss = per_file_us(step), (step or {}).get("peak_rss_mb")
            cells += f"{step['seconds']:10.2f}" if step else f"{'-':>10}"
            cells += f"{cost:9.1f}" if cost else " " * 9
            cells += f"{rss:6.0f}" if rss else " " * 6
        verdict = verdicts.get(name, {})
        if verdict:
            cells += f"{verdict['per_file_ratio']:7.2f}" + ("!" if not verdict["met"] else " ")
            cpu_ratio = verdict["per_file_cpu_ratio"]
            cells += f"{cpu_ratio:5.2f}" if cpu_ratio else " " * 5
            if verdict["against"] != runs[0]["fraction"]:
                cells += f" (vs {verdict['against'] * 100:g}%)"
        lines.append(f"{name:44}{cells}")
    lines.append("")
    fits = [r["steps"].get("fit: to the first training batch") for r in runs]
    fits = [(label, f) for label, f in zip(labels, fits, strict=True) if f]
    if fits:
        lines.append(
            "resume state in a checkpoint (data module + ResumeState; whole checkpoint): "
            + ", ".join(
                f"{label} {f['datamodule_state_bytes']} + {f['resume_state_bytes']} B "
                f"({f['checkpoint_bytes'] / 1e6:.1f} MB)"
                for label, f in fits
            )
        )
        lines.append(
            "first training batch from launch (imports, CLI, scan, set-up, loader start): "
            + ", ".join(f"{label} {f['from_launch_s']:.1f} s" for label, f in fits)
        )
    scan = verdicts.get("scan + set-up")
    if scan:
        lines.append(
            f"scan + set-up of {scan['files']} files: {scan['seconds']:.1f} s, peak RSS {scan['peak_rss_mb']:.0f} MB "
            f"({scan['imported_rss_mb']:.0f} MB after imports); target < {SCAN_TARGET_S:.0f} s and "
            f"< {SCAN_TARGET_MB:.0f} MB: " + ("met" if scan["met"] else "MISSED")
        )
    for kind in ("parquet", "webdataset"):
        setup = verdicts.get(f"{kind} set-up")
        if setup:
            lines.append(
                f"{kind} index set-up of {setup['files']} rows: {setup['seconds']:.1f} s, RSS after it "
                f"{setup['rss_mb']:.0f} MB ({setup['imported_rss_mb']:.0f} MB of it imports); target < "
                f"{scale_records.SETUP_TARGET_S:.0f} s and < {scale_records.RSS_TARGET_MB:.0f} MB: "
                + ("met" if setup["met"] else "MISSED")
            )
    total = verdicts["total"]
    each = ", ".join(
        f"{label} {run['seconds']:.0f} s" for label, run in zip(labels, runs, strict=True) if "seconds" in run
    )
    lines.append(
        f"whole harness: {total['seconds']:.0f} s ({each})"
        + ("" if total["finished"] else " (interrupted)")
        + f"; target at 100% < {TOTAL_TARGET_S} s"
    )
    if len(runs) > 1:
        lines.append(
            f"ratio: cost per file at {labels[-1]} / at {labels[0]}, wall clock (target <= {LINEAR_TARGET}; ! missed; "
            f"(vs N%): the step took under {MIN_TIMED_S} s at the smaller fractions); cpu: the same from the step's "
            "own CPU seconds (less distorted by other load)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m bench.scale``."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="0.01,0.1,1", help="fractions of ImageNet's size (default 0.01,0.1,1)")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the temporary folder goes (default: the system's temp folder; a tmpfs such as /dev/shm measures "
        "our code rather than the disk's metadata speed, and needs ~8 GB of memory at 100%%)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scale.json", help="the JSON results")
    parser.add_argument(
        "--only",
        choices=["all", "records"],
        default="all",
        help="records: only the parquet and WebDataset steps (bench/scale_records.py; their sources are cached "
        "under --work/imagenet-cls-scale-records)",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        help="a scale.json whose runs at other fractions join this table (each run keeps its own date and load)",
    )
    args = parser.parse_args(argv)
    fractions = sorted(float(x) for x in args.scale.split(","))
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        parser.error("--scale takes fractions in (0, 1], e.g. 0.01,0.1,1")
    if (args.work.resolve() / "x").is_relative_to(REPO):
        parser.error(f"--work {args.work} is inside the repository: choose a folder outside it (e.g. /tmp)")
    _check_room(args.work, fractions[-1])
    started = time.perf_counter()
    runs: list[dict] = []
    earlier = json.loads(args.previous.read_text())["runs"] if args.previous else []
    earlier = [run for run in earlier if run["fraction"] not in fractions and "load_after" in run]

    def save(finished: bool = False) -> dict:
        runs[:] = sorted([*earlier, *(r for r in runs if r not in earlier)], key=lambda run: run["fraction"])
        verdicts = summarise(runs, sum(run.get("seconds", time.perf_counter() - started) for run in runs), finished)
        payload = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": cpu(),
            "finished": finished,
            "total_seconds": time.perf_counter() - started,
            "targets": verdicts,
            "runs": runs,
        }
        args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        return verdicts

    for fraction in fractions:
        print(f"scale {fraction:g} ...", file=sys.stderr, flush=True)
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        current = {"fraction": fraction, "date": date, "load_before": os.getloadavg(), "steps": {}}
        runs.append(current)
        run_start = time.perf_counter()
        try:
            run_fraction(fraction, args.work, current, save, args.only)
        finally:
            current.update(seconds=time.perf_counter() - run_start, load_after=os.getloadavg())
            save()
    verdicts = save(finished=True)
    loads = ", ".join(f"{r['fraction']:g}: {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}" for r in runs)
    print(f"\n{cpu()}; load average (1 min) before -> after each fraction: {loads}")
    print(format_table(runs, verdicts))
    print(f"written {args.out}")
    return 0


def _check_room(work: Path, fraction: float) -> None:
    """Refuse to start when the largest fraction cannot fit: an inode and a block per extracted file, and on a
    tmpfs the memory those take."""
    files = (TRAIN_IMAGES + VAL_IMAGES) * fraction
    need_inodes, need_bytes = int(files * 1.1) + 10_000, int(files * 8_000)
    stat = os.statvfs(work)
    free_inodes, free_bytes = stat.f_favail, stat.f_bavail * stat.f_frsize
    if _is_tmpfs(work):
        need_inodes = int(files * 2.05) + 10_000  # a tmpfs counts hard links as inodes: two trees at a time
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable"))
        free_bytes = min(free_bytes, available - 4 * 2**30)  # leave the system and the steps themselves 4 GiB
    if free_inodes < need_inodes or free_bytes < need_bytes:
        raise SystemExit(
            f"error: --work {work} has {free_inodes} free inodes and {free_bytes / 1e9:.1f} GB; scale {fraction:g} "
            f"needs about {need_inodes} and {need_bytes / 1e9:.1f} GB: free some or pass --work elsewhere"
        )


def _is_tmpfs(path: Path) -> bool:
    """Whether ``path`` lies on a tmpfs (its mount point: the longest one that contains it)."""
    resolved, best, kind = path.resolve(), Path("/"), ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            mount = Path(fields[1])
            if resolved.is_relative_to(mount) and len(mount.parts) >= len(best.parts):
                best, kind = mount, fields[2]
    return kind == "tmpfs"


if __name__ == "__main__":
    sys.exit(main())
