"""python cli.py serve: the tiny model behind HTTP, started as a subprocess on a free loopback port."""

from __future__ import annotations

import base64
import io
import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest
import requests
from PIL import Image

from bench.serving import REPO, Server
from imagenet_cls.cli import main
from tests.conftest import FAST_TRAINER, NAMES, fit_args, make_class_folders

MAX_BODY = 200_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of the tiny model fitted for one epoch (``best.ckpt`` in it)."""
    root = tmp_path_factory.mktemp("fit")
    for split, count in (("train", 8), ("val", 3)):
        make_class_folders(root / "data" / split, per_class=count)
    (root / "data" / "folder_num_class_map.txt").write_text(
        "".join(f"{w} {i} {NAMES[w]}\n" for i, w in enumerate(sorted(NAMES)))
    )
    assert main(fit_args(root / "data", root / "run", "--trainer.max_epochs", "1", "--model.lr", "0.01")) == 0
    assert (root / "run" / "best.ckpt").exists()
    return root / "run"


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["--ckpt_path", "best", "--root", str(trained), "--max_body_bytes", str(MAX_BODY), "--max_batch_size", "4"]
    running = Server(args, log)
    yield running
    assert running.stop() == 0, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return sorted(make_class_folders(tmp_path_factory.mktemp("images"), per_class=2).rglob("*.jpg"))


def _multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def test_predict_gives_predict_probabilities_for_several_images(server, trained, images, tmp_path):
    answer = requests.post(f"{server.url}/predict?top_k=3", files=_multipart(images), timeout=60)
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    assert [p["image"] for p in served] == [p.name for p in images]
    out = tmp_path / "out"
    args = ["predict", "--ckpt_path", str(trained / "best.ckpt"), "--data.predict_path", str(images[0].parents[1])]
    args += ["--data.num_workers", "0", "--writer.output_dir", str(out), "--writer.top_k", "3", "--writer.write_images"]
    assert main([*args, "false", *FAST_TRAINER]) == 0
    rows = pd.read_csv(out / "predictions.csv").set_index("path")
    for path, prediction in zip(images, served):
        row = rows.loc[str(path)]
        for rank, top in enumerate(prediction["top_k"], start=1):
            assert top["index"] == row[f"top{rank}_index"] and top["name"] == row[f"top{rank}_name"]
            assert abs(top["probability"] - row[f"top{rank}_prob"]) < 2e-6, (path, rank)


def test_raw_bytes_base64_json_and_multipart_agree(server, images):
    data = images[0].read_bytes()
    raw = requests.post(f"{server.url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
    encoded = base64.b64encode(data).decode()
    as_json = requests.post(f"{server.url}/predict", json={"images": [encoded, f"data:image/jpeg;base64,{encoded}"]})
    form = requests.post(f"{server.url}/predict", files=_multipart(images[:1]), timeout=60)
    tops = [raw.json()["predictions"][0], *as_json.json()["predictions"], form.json()["predictions"][0]]
    assert len(tops) == 4 and all(t["top_k"] == tops[0]["top_k"] for t in tops)
    assert len(tops[0]["top_k"]) == 3  # --top_k 5 capped at the model's 3 classes


def test_annotated_image_is_the_writers_drawing(server, images):
    answer = requests.post(f"{server.url}/predict?annotate=1", files=_multipart(images[:1]), timeout=60).json()
    annotated = Image.open(io.BytesIO(base64.b64decode(answer["predictions"][0]["annotated_jpeg"])))
    assert annotated.format == "JPEG" and annotated.size == (600, 600)  # 24x24 fitted within 800x600
    top_left, centre = annotated.getpixel((2, 2)), annotated.getpixel((300, 400))
    assert max(top_left) < 60 and max(centre) > 100  # the writer's dark label box over the coloured image


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels: Pillow refuses it before decoding anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    )  # fmt: skip


BAD_INPUTS = {
    "not an image": (b"I am not a JPEG", "image/jpeg", 422, "cannot be decoded"),
    "truncated": (None, "image/jpeg", 422, "truncated"),
    "decompression bomb": (_png_header(40_000, 40_000), "image/png", 422, "exceeds"),
    "over the body limit": (b"\xff" * (MAX_BODY + 1), "image/jpeg", 413, "--max_body_bytes"),
    "wrong content type": (b"hello", "text/plain", 415, "Content-Type text/plain is not accepted"),
    "bad base64": (b'{"image": "%%%"}', "application/json", 400, "not valid base64"),
    "empty": (b"", "image/jpeg", 400, "empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_clear_4xx_and_the_server_keeps_serving(server, images, case):
    body, content_type, status, words = BAD_INPUTS[case]
    if body is None:
        big = Image.new("RGB", (256, 256))
        big.putdata([(x % 256, (x * 7) % 256, 90) for x in range(256 * 256)])
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=95)
        body = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    answer = requests.post(f"{server.url}/predict", data=body, headers={"Content-Type": content_type}, timeout=60)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert words in detail and "\n" not in detail and "Traceback" not in detail
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    good = requests.post(f"{server.url}/predict", files=_multipart(images[:1]), timeout=60)
    assert good.status_code == 200


def test_a_bad_image_does_not_fail_the_requests_batched_with_it(server, images):
    results = {}

    def post(name: str, body: bytes) -> None:
        answer = requests.post(f"{server.url}/predict", data=body, headers={"Content-Type": "image/jpeg"}, timeout=60)
        results[name] = answer.status_code

    threads = [threading.Thread(target=post, args=(f"good{i}", images[i].read_bytes())) for i in range(3)]
    threads.append(threading.Thread(target=post, args=("bad", b"not an image")))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {"good0": 200, "good1": 200, "good2": 200, "bad": 422}


@pytest.mark.slow  # an export and a second server: about a minute here
def test_an_exported_folder_serves_its_onnx_file_with_the_checkpoints_numbers(server, trained, images, tmp_path):
    from imagenet_cls.export import main as export_main

    assert export_main([str(trained / "best.ckpt"), str(tmp_path / "exported")]) == 0
    exported = Server(["--export", str(tmp_path / "exported")], tmp_path / "serve.log")
    try:
        info = requests.get(f"{exported.url}/info", timeout=10).json()["model"]
        answer = requests.post(f"{exported.url}/predict", files=_multipart(images), timeout=60)
    finally:
        assert exported.stop() == 0
    assert info["runtime"] == {"backend": "onnxruntime", "onnx": "model.onnx"} and info["class_names"][0] == "red"
    expected = requests.post(f"{server.url}/predict", files=_multipart(images), timeout=60).json()["predictions"]
    for got, want in zip(answer.json()["predictions"], expected, strict=True):
        assert [c["index"] for c in got["top_k"]] == [c["index"] for c in want["top_k"]]
        assert max(abs(a["probability"] - b["probability"]) for a, b in zip(got["top_k"], want["top_k"])) < 1e-5


def test_health_info_docs_and_page(server):
    assert requests.get(f"{server.url}/health", timeout=10).text == "ok"
    info = requests.get(f"{server.url}/info", timeout=10).json()["model"]
    assert info["model_name"] == "test_resnet" and info["class_names"] == ["red", "green", "blue"]
    assert info["preprocessing"]["input_size"] == [3, 32, 32] and info["runtime"]["backend"] == "onnxruntime"
    assert "/predict" in requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200
    page = requests.get(f"{server.url}/", timeout=10)
    assert page.headers["content-type"].startswith("text/html") and 'id="drop"' in page.text


@pytest.mark.parametrize("to", ["process", pytest.param("group", marks=pytest.mark.slow)])
def test_sigterm_lets_the_request_in_flight_finish(trained, images, tmp_path, to):
    """SIGTERM to the server's process (docker stop, kill PID) or to its whole group (timeout, SLURM)."""
    # A batch waits up to --batch_timeout for more requests: a lone request stays in flight for 4 s.
    server = Server(["--ckpt_path", "best", "--root", str(trained), "--batch_timeout", "4"], tmp_path / "serve.log")
    answer = {}

    def post() -> None:
        data = images[0].read_bytes()
        response = requests.post(f"{server.url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
        answer["status"] = response.status_code

    request = threading.Thread(target=post)
    request.start()
    time.sleep(1.5)
    assert "status" not in answer  # still in flight
    if to == "group":
        os.killpg(server.process.pid, signal.SIGTERM)
    code = server.stop(timeout=60)
    request.join(10)
    assert answer.get("status") == 200, server.log.read_text()[-2000:]
    assert code == 0, server.log.read_text()[-2000:]
    assert "finishing the requests in flight" in server.log.read_text()


def test_serve_errors_are_one_line(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "serve needs exactly one model source" in capsys.readouterr().err
    assert main(["serve", "--export", str(tmp_path)]) == 2
    assert "has no predict.yaml" in capsys.readouterr().err
    assert main(["serve", "--ckpt_path", "best", "--root", str(tmp_path)]) == 2
    assert "no best.ckpt under" in capsys.readouterr().err
    assert main(["serve", "--config", str(REPO / "config" / "efficientnet_lite0.yaml"), "--port", "80"]) == 2
    assert "--port 80 must be from 1024 to 65535" in capsys.readouterr().err


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DROP_FILE = """([name, type, b64]) => {
    const data = new DataTransfer();
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], name, { type }));
    return data;
}"""


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` installs Debian's chromium")
def test_page_in_headless_chromium_shows_labels_and_the_annotated_image(server, images, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    expected = requests.post(f"{server.url}/predict", files=_multipart(images[:1]), timeout=60).json()
    expected_names = [c["name"] for c in expected["predictions"][0]["top_k"]]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/", timeout=30_000)
            page.wait_for_function("document.getElementById('model').textContent.includes('test_resnet')")

            def drop(name: str, content_type: str, data: bytes) -> None:
                transfer = page.evaluate_handle(DROP_FILE, [name, content_type, base64.b64encode(data).decode()])
                page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})

            drop(images[0].name, "image/jpeg", images[0].read_bytes())
            page.wait_for_selector("#annotated:not([hidden])", timeout=60_000)
            labels = page.locator("#labels li").all_inner_texts()
            assert [label.rsplit(" (", 1)[0] for label in labels] == expected_names
            assert page.evaluate("document.getElementById('annotated').naturalWidth") == 600  # a decoded JPEG
            page.screenshot(path=str(tmp_path / "page.png"))
            drop("notes.jpg", "image/jpeg", b"not an image")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
            assert "notes.jpg (image 1 of the request) cannot be decoded" in page.inner_text("#error")
            assert page.locator("#labels li").count() == 0
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 1000
