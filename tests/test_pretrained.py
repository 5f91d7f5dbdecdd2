"""Named published weights (`keras_alexnet.pretrained`, `keras_alexnet.model.pretrained_dir`):
download once, verify, convert once, cache; every failure a user meets.

Nothing here reaches beyond 127.0.0.1: a local HTTP server (started by the module) serves
small random Caffe files in the published format (conv layers of the real shapes, fc6 / fc7
8 wide) with their hashes, and counts every request. The table's entries are pointed at it
with `dataclasses.replace`, so the code under test is the code users run.
"""

import dataclasses
import hashlib
import http.server
import json
import re
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from keras_alexnet import pretrained
from test_convert import SMALL_1000, caffe_layers, pb_net, random_caffe_weights

REPO = Path(__file__).resolve().parents[1]
FC = 8  # the fixtures' fc6 / fc7 width (SMALL_1000)


# ---------------------------------------------------------------------------------------
# The local server.


class Server:
    """Serves ``files`` {url path: bytes}; ``behaviour`` {url path: "404" | "truncate" |
    "slow"}; ``requests`` lists every GET's path."""

    def __init__(self):
        self.files, self.behaviour, self.requests = {}, {}, []
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    server.requests.append(self.path)
                body = server.files.get(self.path)
                how = server.behaviour.get(self.path)
                if body is None or how == "404":
                    self.send_error(404)
                    return
                if how == "slow":  # two clients overlap
                    time.sleep(1.5)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if how == "truncate":  # the connection closes mid-file
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self, path):
        return self.requests.count(path)


@pytest.fixture(scope="module")
def caffe_blobs():
    return random_caffe_weights(0, SMALL_1000)


@pytest.fixture(scope="module")
def server(caffe_blobs):
    s = Server()
    body = pb_net(caffe_layers(caffe_blobs, "bvlc_alexnet"))
    for path in ("/bvlc/bvlc_alexnet.caffemodel", "/mirror/bvlc_alexnet.caffemodel",
                 "/slow/bvlc_alexnet.caffemodel", "/cut/bvlc_alexnet.caffemodel",
                 "/gone/bvlc_alexnet.caffemodel"):
        s.files[path] = body
    s.behaviour.update({"/slow/bvlc_alexnet.caffemodel": "slow",
                        "/cut/bvlc_alexnet.caffemodel": "truncate",
                        "/gone/bvlc_alexnet.caffemodel": "404"})
    s.body, s.sha1 = body, hashlib.sha1(body).hexdigest()
    s.sha256 = hashlib.sha256(body).hexdigest()
    yield s
    s.httpd.shutdown()


def refused_url():
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/bvlc_alexnet.caffemodel"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pretrained.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(pretrained.MIRROR_ENV, raising=False)
    return tmp_path / "cache" / "weights"


def point_at(monkeypatch, server, urls, hash_=None, name="bvlc_alexnet"):
    """The table's entry ``name`` served by the local server from ``urls`` (paths)."""
    entry = dataclasses.replace(
        pretrained.WEIGHTS[name], urls=tuple(u if u.startswith("http") else server.url + u for u in urls),
        unverified_urls=(), hash=hash_ or f"sha1:{server.sha1}")
    monkeypatch.setitem(pretrained.WEIGHTS, name, entry)
    return entry


def kernel(model, name):
    from keras_alexnet.weight_files import _targets

    parts = _targets(model)[name]
    return np.concatenate([layer.get_weights()[0] for layer, _ in parts], axis=-1)


# ---------------------------------------------------------------------------------------


def test_imagenet_downloads_converts_once_then_uses_the_cache(cache, server, caffe_blobs, monkeypatch):
    import keras_alexnet
    from keras_alexnet import applications, runs, weight_files

    entry = point_at(monkeypatch, server, ["/gone/bvlc_alexnet.caffemodel", "/bvlc/bvlc_alexnet.caffemodel"])
    before = len(server.requests)
    model = keras_alexnet.AlexNet(weights="imagenet", fc_units=FC)
    # The first URL's 404 fell through to the second; one download.
    assert server.requests[before:] == ["/gone/bvlc_alexnet.caffemodel", "/bvlc/bvlc_alexnet.caffemodel"]
    assert model.variant == "bvlc_alexnet"
    # The weights are the file's: Caffe's (out, in) fc8 transposed, conv1 OIHW -> HWIO.
    np.testing.assert_array_equal(model.get_layer("fc8").get_weights()[0], caffe_blobs["fc8"][0].T)
    np.testing.assert_array_equal(kernel(model, "conv1"), caffe_blobs["conv1"][0].transpose(2, 3, 1, 0))
    cached = pretrained.model_dir_path(entry)
    config = json.loads((cached / "config.json").read_text())
    assert config["source"]["sha256"] == server.sha256 and config["source"]["name"] == "bvlc_alexnet"
    assert pretrained.file_path(entry).is_file() and not (cached.parent / ".partial").exists()

    # Second call, and every tool: no request, no conversion.
    monkeypatch.setattr(weight_files, "read_keras_weights", lambda *a, **k: pytest.fail("converted again"))
    n = len(server.requests)
    again = keras_alexnet.AlexNet(weights="bvlc_alexnet", fc_units=FC)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    run = runs.open_run("bvlc_alexnet")
    assert run.path == cached and run.preprocessing.channel_order == "BGR"
    np.testing.assert_allclose(run.preprocessing.mean, [123.0, 117.0, 104.0])
    crops = np.random.default_rng(0).uniform(0, 255, (2, 227, 227, 3)).astype(np.float32)
    probs = run.model.predict(applications.preprocess_input(crops, run="imagenet"), verbose=0)
    top = applications.decode_predictions(probs, top=3, run="bvlc_alexnet")
    assert len(top) == 2 and top[0][0][0].startswith("n")
    # keras.applications' include_top / classes: every layer but fc8 is the file's.
    headless = keras_alexnet.AlexNet(weights="imagenet", include_top=False)
    np.testing.assert_array_equal(kernel(headless, "conv5"), kernel(model, "conv5"))
    five = keras_alexnet.AlexNet(weights="imagenet", classes=5, fc_units=FC)
    np.testing.assert_array_equal(five.get_layer("fc7").get_weights()[0], model.get_layer("fc7").get_weights()[0])
    assert five.get_layer("fc8").get_weights()[0].shape == (FC, 5)
    assert len(server.requests) == n


def test_a_wrong_hash_removes_the_file_and_names_what_to_do(cache, server, monkeypatch):
    import keras_alexnet

    entry = point_at(monkeypatch, server, ["/bvlc/bvlc_alexnet.caffemodel"], hash_="sha1:" + "0" * 40)
    with pytest.raises(pretrained.WeightsError) as e:
        keras_alexnet.AlexNet(weights="bvlc_alexnet", fc_units=FC)
    msg = str(e.value)
    assert "hash mismatch" in msg and "removed" in msg and "sha1:" + "0" * 40 in msg
    assert str(pretrained.file_path(entry)) in msg  # where a hand-downloaded file may go
    assert not any(p.is_file() for p in pretrained.entry_dir(entry).rglob("*") if p.name != ".lock")


def test_refused_and_cut_connections_are_never_used_and_all_urls_are_named(cache, server, monkeypatch):
    import keras_alexnet

    refused = refused_url()
    entry = point_at(monkeypatch, server, [refused, "/cut/bvlc_alexnet.caffemodel"])
    with pytest.raises(pretrained.WeightsError) as e:
        keras_alexnet.AlexNet(weights="bvlc_alexnet", fc_units=FC)
    msg = str(e.value)
    assert refused in msg and f"{server.url}/cut/bvlc_alexnet.caffemodel" in msg
    assert f"sha1:{server.sha1}" in msg and str(pretrained.file_path(entry)) in msg
    # Nothing half-downloaded is left to be taken for the file.
    assert not any(p.is_file() for p in pretrained.entry_dir(entry).rglob("*") if p.name != ".lock")


def test_offline_hand_placed_file_mirror_and_a_path_of_the_same_name(cache, server, monkeypatch, tmp_path, caplog):
    from keras_alexnet import runs

    entry = point_at(monkeypatch, server, ["/bvlc/bvlc_alexnet.caffemodel"])
    n = len(server.requests)
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    with pytest.raises(pretrained.WeightsError, match=pretrained.OFFLINE_ENV) as e:
        runs.locate("bvlc_alexnet")
    assert str(pretrained.file_path(entry)) in str(e.value)
    # A file downloaded by hand and put where the message says is verified and converted.
    pretrained.file_path(entry).write_bytes(server.body)
    assert (runs.locate("bvlc_alexnet") / "model.keras").is_file()
    assert len(server.requests) == n
    # The mirror is tried before the publisher's URLs.
    monkeypatch.delenv(pretrained.OFFLINE_ENV)
    monkeypatch.setenv(pretrained.MIRROR_ENV, server.url + "/mirror/")
    pretrained.clear("bvlc_alexnet")
    runs.locate("bvlc_alexnet")
    assert server.requests[n:] == ["/mirror/bvlc_alexnet.caffemodel"]
    # An existing path of the same name wins, with a note.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bvlc_alexnet").mkdir()
    assert runs.locate("bvlc_alexnet") == Path("bvlc_alexnet")
    assert "not the named weights" in caplog.text


def test_a_url_with_and_without_its_hash_and_hash_prefixes(cache, server, tmp_path):
    from keras_alexnet import runs

    url = f"{server.url}/bvlc/bvlc_alexnet.caffemodel"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = runs.locate(url, file_hash=f"sha256:{server.sha256}")
    assert not [w for w in caught if "not verified" in str(w.message)]  # a hash given: no warning
    assert json.loads((out / "config.json").read_text())["source"]["variant"] == "bvlc_alexnet"
    pretrained.clear(url)
    with pytest.warns(UserWarning, match="not verified"):
        runs.locate(url)
    with pytest.raises(pretrained.WeightsError, match="hash mismatch"):
        runs.locate(f"{server.url}/mirror/bvlc_alexnet.caffemodel", file_hash="sha256:" + "1" * 64)
    # torchvision publishes 8 hex digits of the SHA-256 (its file names).
    path = tmp_path / "f.bin"
    path.write_bytes(b"alexnet")
    digest = hashlib.sha256(b"alexnet").hexdigest()
    assert pretrained.hash_matches(path, f"sha256:{digest[:8]}")
    assert not pretrained.hash_matches(path, f"sha256:{'0' * 8}")
    with pytest.raises(ValueError, match="at least 8"):
        pretrained.hash_matches(path, "sha256:7be5")


def test_two_processes_at_once_download_and_convert_once(cache, server):
    url = f"{server.url}/slow/bvlc_alexnet.caffemodel"
    code = ("import sys; from keras_alexnet import pretrained; from keras_alexnet.model import "
            f"pretrained_dir; print(pretrained_dir(pretrained.named({url!r}, {('sha1:' + server.sha1)!r})))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and Path(outs[0][0].strip(), "model.keras").is_file()
    assert server.count("/slow/bvlc_alexnet.caffemodel") == 1
    assert sum("Converting" in err for _, err in outs) == 1


def test_the_cache_command_lists_and_clears(cache, server, monkeypatch, capsys):
    from keras_alexnet import runs

    point_at(monkeypatch, server, ["/bvlc/bvlc_alexnet.caffemodel"])
    runs.locate("imagenet")
    assert pretrained.main(["list"]) == 0
    table = capsys.readouterr().out
    assert "bvlc_alexnet (imagenet)" in table and "57.1%" in table and str(cache) in table
    line = next(l for l in table.splitlines() if l.startswith("bvlc_alexnet"))
    assert "MB" in line and next(l for l in table.splitlines() if l.startswith("caffenet")).endswith("no")
    assert pretrained.main(["clear", "imagenet"]) == 0
    assert [p.name for p in (cache / "bvlc_alexnet").iterdir()] == [".lock"]  # the lock file stays
    assert pretrained.main(["clear", "nonsense"]) == 2


def test_every_command_takes_the_names(cache, server, monkeypatch, tmp_path, capsys):
    """evaluate.py --checkpoint, the notebooks' run, export's and the figure command's RUN:
    the same name opens the same cached model directory (runs.open_run / runs.locate)."""
    from PIL import Image

    import evaluate
    from keras_alexnet import export, notebook_utils, runs, visualize

    entry = point_at(monkeypatch, server, ["/bvlc/bvlc_alexnet.caffemodel"])
    cached = runs.locate("imagenet")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(photo)
    assert evaluate.main(["--checkpoint", "imagenet", "--predict", str(photo)]) == 0
    out = capsys.readouterr().out
    assert str(cached) in out and "BGR" in out and len(re.findall(r"\(n\d{8}\)", out)) == 5
    assert notebook_utils.get_run("bvlc_alexnet") == cached == pretrained.model_dir_path(entry)
    assert export.parse_args(["imagenet", "--out", str(tmp_path / "m")]).run == "imagenet"
    written = visualize.main(["--run", "imagenet", "--out", str(tmp_path / "figures")])
    assert any("conv1" in Path(p).name for p in written)
    with pytest.raises(SystemExit):  # neither a path nor a name
        evaluate.parse_args(["--checkpoint", "no_such_run", "--predict", str(photo)])
    assert "nor is it named weights" in capsys.readouterr().err


def test_the_cache_never_serves_unverified_bytes(cache, server, monkeypatch):
    """A URL asked for with another hash, a cached file damaged on disk, a wrong file put by
    hand, a file that is not what its name says: each is checked, never used as it is."""
    from keras_alexnet import runs

    url = f"{server.url}/bvlc/bvlc_alexnet.caffemodel"
    good = runs.locate(f"{url}#sha256={server.sha256}")  # a command line's URL#sha256=<hex>
    assert json.loads((good / "config.json").read_text())["source"]["hash"] == f"sha256:{server.sha256}"
    with pytest.raises(pretrained.WeightsError, match="hash mismatch"):
        runs.locate(url, file_hash="sha256:" + "1" * 64)  # not the cached directory of the right hash
    # Named weights: a file damaged in the cache (before conversion) is removed and fetched again.
    entry = point_at(monkeypatch, server, ["/bvlc/bvlc_alexnet.caffemodel"])
    pretrained.file_path(entry).parent.mkdir(parents=True, exist_ok=True)
    pretrained.file_path(entry).write_bytes(server.body[:1000])
    n = server.count("/bvlc/bvlc_alexnet.caffemodel")
    runs.locate("bvlc_alexnet")
    assert server.count("/bvlc/bvlc_alexnet.caffemodel") == n + 1
    assert pretrained.file_path(entry).read_bytes() == server.body
    # Offline, a wrong file put by hand is refused (and removed), never converted.
    pretrained.clear("bvlc_alexnet")
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    pretrained.file_path(entry).write_bytes(b"not the model")
    with pytest.raises(pretrained.WeightsError, match="hash mismatch"):
        runs.locate("bvlc_alexnet")
    assert not pretrained.file_path(entry).exists()
    monkeypatch.delenv(pretrained.OFFLINE_ENV)
    # An unverified URL whose bytes are not a Caffe file: an error naming the URL, the file removed.
    server.files["/html/page.caffemodel"] = b"<html>moved</html>"
    with pytest.warns(UserWarning, match="not verified"):
        with pytest.raises(pretrained.WeightsError, match="not a Caffe") as e:
            runs.locate(f"{server.url}/html/page.caffemodel")
    assert f"{server.url}/html/page.caffemodel" in str(e.value) and "removed" in str(e.value)
    assert not list((cache).glob("url-*/page.caffemodel"))
    with pytest.raises(ValueError, match="applies to a URL"):
        pretrained.named("imagenet", "sha256:" + "0" * 64)
