"""Property-based fuzzing (hypothesis): image bytes, YAML configs, checkpoint files, LitData's index.json, parquet
files and WebDataset tar shards (read for validate and predict).

Each case must end in a result, a one-line ``UserError`` (or the option parser's exit 2), or a counted bad image:
never another exception, never a hang (10 s per case). ``make test`` runs a few cases of each; the ``slow`` copies
run many more (the counts are the ``CASES`` below).
"""

import io
import json
import shutil
import signal
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagenet_cls.errors import UserError
from tests.conftest import make_class_folders, write_image

CASES = {"fast": 25, "slow": 400}  # per property; YAML configs: a fifth of these (each parses the whole CLI)


@contextmanager
def _no_hang(seconds: int = 10):
    def expire(signum, frame):
        raise AssertionError(f"a case ran over {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _fuzz(strategy, check, cases: int) -> None:
    """Run ``check`` on ``cases`` values drawn from ``strategy``."""

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        with _no_hang():
            check(value)

    run()


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` truncated, with bytes overwritten, or spliced with random bytes; and random bytes."""
    size = len(base)
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8)

    def flip(changes):
        data = bytearray(base)
        for at, value in changes:
            data[at] = value
        return bytes(data)

    return st.one_of(
        st.integers(0, size).map(lambda n: base[:n]),
        flips.map(flip),
        st.tuples(st.integers(0, size), st.binary(max_size=64)).map(lambda c: base[: c[0]] + c[1] + base[c[0] :]),
        st.binary(max_size=256),
    )


# ---- image bytes ---------------------------------------------------------------------------------------------
def _image_bytes(fmt: str) -> bytes:
    path = write_image(Path("fuzz_base") / f"base.{fmt}", (200, 40, 40), size=(20, 14))
    return path.read_bytes()


def _decode_or_user_error(data: bytes) -> None:
    from imagenet_cls.data.images import ImageFile

    try:
        pixels = ImageFile("fuzz.jpg", data=data).decode()
    except UserError as error:
        assert "\n" not in str(error).strip()
        return
    assert pixels.dtype == torch.uint8 and pixels.ndim == 3 and pixels.shape[0] == 3


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_image_bytes_decode_or_one_line(fmt):
    _fuzz(_mutations(_image_bytes(fmt)), _decode_or_user_error, CASES["fast"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_image_bytes_decode_or_one_line_many(fmt):
    _fuzz(_mutations(_image_bytes(fmt)), _decode_or_user_error, CASES["slow"])


# ---- checkpoint files ----------------------------------------------------------------------------------------
def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(3, 2)}, "hyper_parameters": {"model_name": "x"}, "epoch": 1}, buffer)
    return buffer.getvalue()


def _load_or_user_error(data: bytes) -> None:
    from imagenet_cls.runs.checkpoints import load_checkpoint

    path = Path("fuzz.ckpt")
    path.write_bytes(data)
    for mmap in (False, True):
        try:
            load_checkpoint(path, mmap=mmap)
        except UserError as error:
            assert str(path) in str(error) and "\n" not in str(error)


def test_checkpoint_files_load_or_one_line():
    _fuzz(_mutations(_checkpoint_bytes()), _load_or_user_error, CASES["fast"])


@pytest.mark.slow
def test_checkpoint_files_load_or_one_line_many():
    _fuzz(_mutations(_checkpoint_bytes()), _load_or_user_error, CASES["slow"])


# ---- YAML configs --------------------------------------------------------------------------------------------
OPTIONS = ["model.lr", "model.model_name", "model.image_size", "data.batch_size", "data.split", "data.num_workers",
           "trainer.max_epochs", "trainer.precision", "trainer.callbacks", "seed_everything", "model",
           "data"]  # fmt: skip
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
CONFIGS = st.one_of(
    st.dictionaries(st.sampled_from(OPTIONS), VALUES, max_size=4).map(
        lambda d: __import__("yaml").safe_dump(_nest(d), allow_unicode=True)
    ),
    st.text(max_size=120),
)


def _nest(flat: dict) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {}) if isinstance(node.get(parent, {}), dict) else {}
        node[last] = value
    return nested


def _parse_or_exit_2(text: str) -> None:
    from imagenet_cls.cli import main

    path = Path("fuzz.yaml")
    path.write_text(text, encoding="utf-8")
    err = io.StringIO()
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code = main(["fit", "--config", str(path), "--data.data_dir", ".", "--print_config"])
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, 2, None), (code, err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue()


def test_yaml_configs_parse_or_exit_2():
    _fuzz(CONFIGS, _parse_or_exit_2, CASES["fast"] // 5)


@pytest.mark.slow
def test_yaml_configs_parse_or_exit_2_many():
    _fuzz(CONFIGS, _parse_or_exit_2, CASES["slow"] // 5)


# ---- LitData index.json --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def optimized(tmp_path_factory) -> Path:
    from imagenet_cls.prepare.sources import main as prepare_main

    root = tmp_path_factory.mktemp("fuzz_optimized")
    source = make_class_folders(root / "source", per_class=3)
    with pytest.MonkeyPatch.context() as patch:  # see tests/test_paths_from_data.py: LitData's own layout
        patch.setattr("litdata.streaming.writer.is_arrow_footer_type", lambda *args: False)
        assert prepare_main([str(source), str(root / "dest"), "--format", "litdata", "--no-progress"]) == 0
    return root / "dest"


INDEX_PATHS = ["chunks", "chunks.0", "chunks.0.chunk_size", "chunks.0.filename", "chunks.0.chunk_bytes",
               "config", "config.data_format", "config.data_spec", "config.chunk_bytes"]  # fmt: skip
INDEX_EDITS = st.tuples(st.sampled_from(INDEX_PATHS), VALUES | st.sampled_from(["../../../etc/passwd", "/etc/hosts"]))


def _read_all_or_user_error(dataset: Path, edit) -> None:
    from imagenet_cls.data.datasets import BadSample
    from imagenet_cls.data.streaming import StreamingImageDataset, read_optimized_layout

    work = Path("fuzz_dataset")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(dataset, work)
    split = next(p.name for p in sorted(work.iterdir()) if (p / "index.json").is_file())
    index_file = work / split / "index.json"
    index = json.loads(index_file.read_text())
    *parents, last = edit[0].split(".")
    node = index
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = edit[1]
    index_file.write_text(json.dumps(index))
    try:
        layout = read_optimized_layout(work)
        images = StreamingImageDataset(str(work / split), len(layout.splits[split]), lambda image: image.decode(),
                                       skip_bad=True)  # fmt: skip
        for i in range(len(images)):
            item = images[i]
            assert isinstance(item, BadSample) or (isinstance(item, tuple) and item[1] in range(3))
    except UserError as error:
        assert "\n" not in str(error).strip()


def test_litdata_index_reads_or_one_line(optimized):
    _fuzz(INDEX_EDITS, lambda edit: _read_all_or_user_error(optimized, edit), CASES["fast"])


@pytest.mark.slow
def test_litdata_index_reads_or_one_line_many(optimized):
    _fuzz(INDEX_EDITS, lambda edit: _read_all_or_user_error(optimized, edit), CASES["slow"])


# ---- parquet files and tar shards, read through the record backends (validate and predict) --------------------
def _parquet_bytes(table=None) -> bytes:
    """A small parquet file as ``datasets`` writes one (image struct of bytes and path, an int label), 2 row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table is None:
        jpg = _image_bytes("jpg")
        images = [{"bytes": jpg, "path": f"c{i % 3}/img_{i}.jpg"} for i in range(4)]
        table = pa.table({"image": images, "label": pa.array([0, 1, 2, 0], pa.int64())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=2)
    return buffer.getvalue()


def _wrong_schemas() -> list[bytes]:
    """Well-formed parquet files with the wrong columns, types or values."""
    import pyarrow as pa

    jpg, rows, labels = _image_bytes("jpg"), 3, pa.array([0, 1, 2])
    image = pa.array([{"bytes": jpg, "path": "a.jpg"}] * rows)
    tables = [
        {"image": pa.array([1, 2, 3])},
        {"image": pa.array(["a", "b", "c"]), "label": pa.array([0, 1, 2])},
        {"label": pa.array([0, 1, 2])},
        {"image": image, "label": pa.array(["0", "x", "2"])},
        {"image": image, "label": pa.array([0.5, float("nan"), 2.0])},
        {"image": image, "label": pa.array([0, -5, 2**40])},
        {"image": image, "label": pa.array([0, None, 1])},
        {"image": image, "label": pa.array([[0], [1], []])},
        {"image": pa.array([{"path": "a.jpg"}] * rows), "label": pa.array([0, 1, 2])},
        {"image": pa.array([{"bytes": None, "path": None}, {"bytes": b"", "path": "\x00"}, None]), "label": labels},
        {"image": pa.array([{"bytes": "text", "path": 1}] * rows), "label": pa.array([0, 1, 2])},
        {"image": pa.array([jpg] * rows, pa.large_binary()), "label": pa.array([0, 1, 2], pa.int8())},
        {"image": pa.array([[jpg]] * rows), "label": pa.array([0, 1, 2])},
        {"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())},
    ]
    return [_parquet_bytes(pa.table(columns)) for columns in tables]


def _tar_bytes() -> bytes:
    """A WebDataset shard as ``webdataset`` writes one: ``<key>.jpg`` + ``<key>.cls`` for 3 samples."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (extension, data) in enumerate([("jpg", _image_bytes("jpg")), ("cls", b"1")] * 3):
            info = tarfile.TarInfo(f"s{i // 2:04d}.{extension}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_edits() -> list[bytes]:
    """Shards that are tar files but not good ones: a .cls with garbage, members without images, odd names."""
    import tarfile

    jpg = _image_bytes("jpg")
    cases = [
        [("a.jpg", jpg), ("a.cls", b"\xff\xfe garbage")],
        [("a.jpg", jpg), ("a.cls", b"99999999999999999999999")],
        [("a.jpg", jpg), ("a.cls", b"-7")],
        [("a.jpg", jpg), ("a.json", b"{not json")],
        [("a.jpg", jpg), ("a.json", b'{"label": [1]}')],
        [("a.cls", b"1")],
        [("a.txt", b"x"), ("b.jpg", jpg)],
        [("../../a.jpg", jpg), ("../../a.cls", b"0")],
        [(".jpg", jpg)],
        [("a.jpg", b"")],
        [("a.jpg", jpg), ("a.cls", b"0"), ("b.jpg", jpg)],  # b has no label: a bad sample, never class -1
        [("a.jpg", jpg), ("a.cls", b"2147483000")],  # numbered classes up to it would never end
    ]
    shards = []
    for members in cases:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        shards.append(buffer.getvalue())
    return shards


def _records_or_user_error(suffix: str, data: bytes) -> None:
    """Validate (every labelled record) and predict (every record) on ``data`` saved as one file: each record is
    an image, a counted bad image or a predict row with its error; the file as a whole may be a one-line error."""
    from imagenet_cls.data.backends import open_layout, open_predict_split
    from imagenet_cls.data.datasets import BadSample
    from imagenet_cls.data.records import RecordDataset, RecordPredictDataset
    from imagenet_cls.data.transforms import EvalTransform

    path = Path(f"fuzz{suffix}")
    path.write_bytes(data)
    try:
        layout = open_layout(path, (0.8, 0.1, 0.1), 0)
        for split in layout.splits:
            records = layout.labelled(split)
            images = RecordDataset(records, lambda image: image.decode(), skip_bad=True)
            for i in range(len(images)):
                item = images[i]
                assert isinstance(item, BadSample) or item[1] in range(len(layout.classes)), item
    except UserError as error:
        assert "\n" not in str(error).strip()
    try:
        records = open_predict_split(str(path))
        assert records is not None
        predict = RecordPredictDataset(records, EvalTransform((16, 16), 1.0, "bilinear"), None)
        for i in range(len(predict)):
            item = predict[i]
            assert "\n" not in item["error"].strip() and item["image"].shape == (3, 16, 16)
            assert not Path(item["relative"]).is_absolute() and ".." not in Path(item["relative"]).parts
    except UserError as error:
        assert "\n" not in str(error).strip()


def _parquet_cases() -> st.SearchStrategy[bytes]:
    return _mutations(_parquet_bytes()) | st.sampled_from(_wrong_schemas())


def _tar_cases() -> st.SearchStrategy[bytes]:
    return _mutations(_tar_bytes()) | st.sampled_from(_tar_edits())


def test_every_wrong_schema_and_tar_edit_reads_or_one_line():
    for data in _wrong_schemas():
        with _no_hang():
            _records_or_user_error(".parquet", data)
    for data in _tar_edits():
        with _no_hang():
            _records_or_user_error(".tar", data)


def test_parquet_files_read_or_one_line():
    _fuzz(_parquet_cases(), lambda data: _records_or_user_error(".parquet", data), CASES["fast"])


@pytest.mark.slow
def test_parquet_files_read_or_one_line_many():
    _fuzz(_parquet_cases(), lambda data: _records_or_user_error(".parquet", data), CASES["slow"])


def test_tar_shards_read_or_one_line():
    _fuzz(_tar_cases(), lambda data: _records_or_user_error(".tar", data), CASES["fast"])


@pytest.mark.slow
def test_tar_shards_read_or_one_line_many():
    _fuzz(_tar_cases(), lambda data: _records_or_user_error(".tar", data), CASES["slow"])
