"""BLiMP download: fetched from a local HTTP server (tests never go online), verified, unpacked atomically."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from babyllama.cli import main
from babyllama.errors import UserError
from babyllama.evaluate import download
from babyllama.evaluate.blimp import load_pairs
from babyllama.evaluate.download import BLIMP_SHA256, download_blimp, parse_sums

FIX = Path(__file__).parent / "fixtures" / "eval" / "blimp_original"
FILES = {p.name: p.read_bytes() for p in sorted(FIX.glob("*.jsonl"))}


def sums_text(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  ./{name}\n" for name, data in files.items())


def make_zip(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("blimp-abc/README.md", "BLiMP\n")
        zf.writestr("blimp-abc/raw_results/adjunct_island.jsonl", "not the data file\n")  # data/ wins
        for name, data in files.items():
            zf.writestr(f"blimp-abc/data/{name}", data)
        for name, data in (extra or {}).items():
            zf.writestr(f"blimp-abc/{name}", data)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www over HTTP on 127.0.0.1; yields (folder, base URL, list of requested paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_sums_inside_the_archive(server, tmp_path):
    www, base, hits = server
    (www / "blimp.zip").write_bytes(make_zip(FILES, {"SHA256SUMS": sums_text(FILES).encode()}))
    dest = download_blimp(tmp_path / "out" / "blimp", url=f"{base}/blimp.zip")
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, "SHA256SUMS"])
    assert all((dest / n).read_bytes() == d for n, d in FILES.items())
    assert len(load_pairs(dest)[0]) == 7
    n_hits = len(hits)
    assert download_blimp(dest, url=f"{base}/blimp.zip") == dest and len(hits) == n_hits  # verified copy: no fetch


def test_sums_next_to_the_url_and_tar_archives(server, tmp_path):
    www, base, _ = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in FILES.items():
            info = tarfile.TarInfo(f"blimp/data/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (www / "blimp.tar.gz").write_bytes(buf.getvalue())
    (www / "SHA256SUMS").write_text(sums_text(FILES))
    dest = download_blimp(tmp_path / "b", url=f"{base}/blimp.tar.gz")
    assert parse_sums((dest / "SHA256SUMS").read_text(), "x") == parse_sums(sums_text(FILES), "y")


def test_checksum_mismatch_leaves_nothing(server, tmp_path, capsys):
    www, base, _ = server
    tampered = dict(FILES)
    tampered["adjunct_island.jsonl"] = FILES["adjunct_island.jsonl"].replace(b"Derek", b"Derik")
    (www / "blimp.zip").write_bytes(make_zip(tampered))
    (www / "SHA256SUMS").write_text(sums_text(FILES))
    dest = tmp_path / "out" / "blimp"
    with pytest.raises(UserError, match=r"adjunct_island\.jsonl has sha256 .* expected"):
        download_blimp(dest, url=f"{base}/blimp.zip")
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []
    assert main(["download", "blimp", "--to", str(dest), "--url", f"{base}/blimp.zip"]) == 2
    assert "Traceback" not in capsys.readouterr().err and not dest.exists()


def test_default_url_uses_the_release_checksums(server, tmp_path, monkeypatch):
    www, base, _ = server
    assert len(BLIMP_SHA256) == 67 and all(len(d) == 64 for d in BLIMP_SHA256.values())
    # Our fixture files are not the release's: with the default URL, the built-in sums reject them.
    (www / "blimp.zip").write_bytes(make_zip(FILES, {"SHA256SUMS": sums_text(FILES).encode()}))
    monkeypatch.setattr(download, "DEFAULT_URL", f"{base}/blimp.zip")
    with pytest.raises(UserError, match=r"lacks anaphor_number_agreement\.jsonl \(\+\d+ more\)"):
        download_blimp(tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_self_vouching_copy_is_not_the_pinned_release(server, tmp_path, monkeypatch):
    www, base, _ = server
    monkeypatch.setattr(download, "BLIMP_SHA256", parse_sums(sums_text(FILES), "pinned"))  # the fixture = "the release"
    custom = dict(FILES)
    custom["adjunct_island.jsonl"] = FILES["adjunct_island.jsonl"].replace(b"Derek", b"Derik")
    (www / "custom.zip").write_bytes(make_zip(custom, {"SHA256SUMS": sums_text(custom).encode()}))
    dest = download_blimp(tmp_path / "b", url=f"{base}/custom.zip")  # the user's own data, vouched by its archive
    with pytest.raises(UserError, match="not a verified copy of the pinned BLiMP release"):
        download_blimp(dest)
    (www / "release.zip").write_bytes(make_zip(FILES))
    monkeypatch.setattr(download, "DEFAULT_URL", f"{base}/release.zip")
    good = download_blimp(tmp_path / "good")
    assert download_blimp(good) == good


@pytest.mark.parametrize("member", ["x/..", "../evil.jsonl", "/abs.jsonl"])
def test_archive_members_that_climb_are_refused(server, tmp_path, member, capsys):
    www, base, _ = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(f"blimp/data/{name}", data)
        zf.writestr(member, b"x")
    (www / "bad.zip").write_bytes(buf.getvalue())
    (www / "SHA256SUMS").write_text(sums_text(FILES))
    dest = tmp_path / "d"
    assert main(["download", "blimp", "--to", str(dest), "--url", f"{base}/bad.zip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a plain relative path" in err and not dest.exists()


def test_download_errors(server, tmp_path):
    _, base, _ = server
    with pytest.raises(UserError, match="HTTP 404"):
        download_blimp(tmp_path / "x", url=f"{base}/missing.zip")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a verified BLiMP copy"):
        download_blimp(occupied, url=f"{base}/blimp.zip")
    assert (occupied / "mine.txt").read_text() == "keep me"


def make_tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"blimp/data/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _corrupted_zip() -> bytes:
    data = bytearray(make_zip(FILES))
    name = sorted(FILES)[0]
    at = bytes(data).index(FILES[name][:40])  # a stored member's bytes: flip one, its CRC no longer matches
    data[at + 5] ^= 0x20
    return bytes(data)


@pytest.mark.parametrize("archive", ["corrupted.zip", "truncated.tar.gz"])
def test_a_damaged_archive_is_one_line_and_writes_nothing(server, tmp_path, archive, capsys):
    www, base, _ = server
    blob = _corrupted_zip() if archive.endswith(".zip") else make_tar_gz(FILES)[: len(make_tar_gz(FILES)) * 2 // 3]
    (www / archive).write_bytes(blob)
    (www / "SHA256SUMS").write_text(sums_text(FILES))
    dest = tmp_path / "d"
    assert main(["download", "blimp", "--to", str(dest), "--url", f"{base}/{archive}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged or truncated archive" in err and "Traceback" not in err, err
    assert not dest.exists()
