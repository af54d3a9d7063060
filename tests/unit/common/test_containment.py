"""Issue 9: one containment rule for every URI a param, an event or a listing names (tasks.common.storage)."""

from __future__ import annotations

import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.common import storage
from tasks.common.settings import load_settings
from tasks.common.storage import ContainmentError, Refused, contained, owned_output, remove_tree, storage_path
from tasks.curation.curate import CurationOptions, curate_uri
from tasks.model.taxonomy import load_taxonomy
from tasks.nightly import steps
from tests.conftest import encode, pattern


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    (path / "datasets" / "old").mkdir(parents=True)
    (path / "models" / "v1").mkdir(parents=True)
    (path / "models" / "v1" / "weights.bin").write_bytes(b"weights")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the root, with files a hostile param would like read or deleted."""
    path = tmp_path / "outside"
    (path / "3").mkdir(parents=True)
    (path / "3" / "a.png").write_bytes(encode(pattern(seed=1)))
    (path / "secret.txt").write_bytes(b"secret")
    return path


def settings_for(root: Path, **env: str):
    return load_settings({"PIPELINE_STORAGE_URI": root.as_uri(), **env})


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/",
        "file:///etc/passwd",
        "{root}/../outside/secret.txt",
        "{root}/datasets/../../outside",
        "{root}x/sibling-with-a-common-prefix",
        "s3://other-bucket/x",
        "http://example.com/a.png",
        "/etc/passwd",
        "file:relative/path",
    ],
)
def test_uris_outside_the_root_are_refused_naming_the_param(root: Path, uri: str) -> None:
    with pytest.raises(ContainmentError, match=r"param incoming_uri"):
        contained(uri.format(root=root.as_uri()), settings_for(root), param="incoming_uri")


def test_a_contained_uri_is_normalised(root: Path) -> None:
    path = contained(f"{root.as_uri()}/incoming/./dt=1/../dt=2/", settings_for(root), param="p")
    assert path.path == str(root / "incoming" / "dt=2")


def test_input_roots_are_readable_but_never_writable(root: Path, outside: Path) -> None:
    settings = settings_for(root, PIPELINE_INPUT_ROOTS=f"s3://drop/raw, {outside.as_uri()}")
    assert contained(f"{outside.as_uri()}/3", settings, param="raw_uri").path == str(outside / "3")
    assert contained("s3://drop/raw/hotel", settings, param="raw_uri").path == "drop/raw/hotel"
    with pytest.raises(ContainmentError):
        contained("s3://drop/rawx", settings, param="raw_uri")
    with pytest.raises(ContainmentError):
        contained(f"{outside.as_uri()}/3", settings, param="dataset_uri", inputs=False)
    with pytest.raises(ValueError, match="PIPELINE_INPUT_ROOTS entries must be URIs"):
        load_settings({"PIPELINE_INPUT_ROOTS": "/mnt/drop"})


def test_a_symlink_inside_the_root_does_not_lead_a_param_out(root: Path, outside: Path) -> None:
    (root / "incoming").mkdir()
    (root / "incoming" / "dt=2026-11-02").symlink_to(outside)
    with pytest.raises(ContainmentError, match="symlink"):
        contained(f"{root.as_uri()}/incoming/dt=2026-11-02", settings_for(root), param="incoming_uri")


@pytest.mark.parametrize("name", ["", "datasets", "datasets/", "datasets/old/..", "models/v1", "datasets/../models/v1"])
def test_outputs_are_only_below_their_owned_prefix(root: Path, name: str) -> None:
    with pytest.raises(ContainmentError, match="dataset_uri"):
        owned_output(f"{root.as_uri()}/{name}", settings_for(root), param="dataset_uri", prefix=storage.DATASETS)
    ok = owned_output(f"{root.as_uri()}/datasets/new", settings_for(root), param="dataset_uri", prefix="datasets")
    assert ok.path == str(root / "datasets" / "new")


def test_remove_tree_never_deletes_its_owner_or_above(root: Path) -> None:
    datasets = storage_path(f"{root.as_uri()}/datasets")
    for victim in (datasets, storage_path(root.as_uri()), storage_path(f"{root.as_uri()}/datasets/old/../..")):
        with pytest.raises(ContainmentError, match="refusing to delete"):
            remove_tree(victim, owner=datasets)
    assert (root / "models" / "v1" / "weights.bin").exists()
    remove_tree(datasets / "old", owner=datasets)
    assert not (root / "datasets" / "old").exists()


def curate(root: Path, raw_uri: str, dataset_uri: str) -> dict:
    return curate_uri(raw_uri, dataset_uri, load_taxonomy("digits"), CurationOptions(), settings=settings_for(root))


@pytest.mark.parametrize(
    "dataset_uri",
    ["{root}", "{root}/datasets", "{root}/datasets/../../outside", "{outside}", "{root}/models/v1", "s3://b/x"],
)
def test_curation_refuses_a_dataset_uri_it_does_not_own_before_deleting(root, outside, dataset_uri, monkeypatch):
    listed = []
    monkeypatch.setattr(storage, "iter_files", lambda top: listed.append(top) or iter(()))
    before = sorted(p for p in root.parent.rglob("*"))
    with pytest.raises(ContainmentError, match="param dataset_uri"):
        curate(root, f"{root.as_uri()}/raw", dataset_uri.format(root=root.as_uri(), outside=outside.as_uri()))
    assert sorted(p for p in root.parent.rglob("*")) == before and listed == []  # nothing read, nothing deleted


@pytest.mark.parametrize("raw_uri", ["file:///etc/", "{outside}", "{root}/raw/../../outside"])
def test_curation_refuses_a_raw_uri_outside_the_roots_before_listing(root, outside, raw_uri, monkeypatch):
    listed = []
    monkeypatch.setattr(storage, "iter_files", lambda top: listed.append(top) or iter(()))
    with pytest.raises(ContainmentError, match="param raw_uri"):
        curate(root, raw_uri.format(root=root.as_uri(), outside=outside.as_uri()), f"{root.as_uri()}/datasets/x")
    assert listed == [] and not (root / "datasets" / "x").exists()


def test_nightly_refuses_an_incoming_uri_outside_the_roots(root: Path) -> None:
    for uri in ("file:///etc/", f"{root.as_uri()}/incoming/../../outside"):
        with pytest.raises(ContainmentError, match="param incoming_uri"):
            steps.look_for_partition(
                settings_for(root),
                {"incoming_uri": uri, "late_data_wait_minutes": 0},
                None,
                datetime(2026, 11, 2, tzinfo=UTC),
            )
        with pytest.raises(ContainmentError, match="param incoming_uri"):
            steps.count_images(settings_for(root), uri)


@pytest.mark.parametrize("reader", ["path", "child"])
def test_capped_reads_refuse_links_special_files_and_large_files_before_reading(tmp_path: Path, reader: str) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 101)
    (tmp_path / "ok.bin").write_bytes(b"x" * 100)
    (tmp_path / "passwd.jpg").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo.jpg")

    def read(name: str) -> bytes:
        if reader == "child":  # the nightly path: a key below the listed root
            return storage.read_child_capped(storage_path(tmp_path.as_uri()), name, 100)
        return storage.read_bytes_capped(storage_path((tmp_path / name).as_uri()), 100)

    assert read("ok.bin") == b"x" * 100
    with pytest.raises(Refused, match="too large: 101 bytes"):
        read("big.bin")
    with pytest.raises(Refused, match="symlink"):
        read("passwd.jpg")
    done = threading.Event()

    def read_fifo() -> None:
        with pytest.raises(Refused, match="special file"):
            read("fifo.jpg")
        done.set()

    threading.Thread(target=read_fifo, daemon=True).start()
    assert done.wait(5), "opening a FIFO blocked"


def test_a_file_that_grows_between_the_size_check_and_the_read_is_refused(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "growing.jpg").write_bytes(b"x" * 80)
    real_fstat = os.fstat

    def fstat_before_the_append(fd: int) -> os.stat_result:  # the size it had when the check was made
        st = list(real_fstat(fd))
        st[stat.ST_SIZE] = 50
        return os.stat_result(st)

    monkeypatch.setattr(os, "fstat", fstat_before_the_append)
    with pytest.raises(Refused, match="changed while read"):
        storage.read_child_capped(storage_path(tmp_path.as_uri()), "growing.jpg", 100)


def test_hostile_names_get_printable_keys_that_keep_the_raw_bytes() -> None:
    assert storage.printable_key("Room/ünï code.jpg".encode()) == ("Room/ünï code.jpg", None)
    key, problem = storage.printable_key(b"caf\xe9.jpg")
    assert key == "caf\\xe9.jpg" and key.isprintable() and b"caf\xe9.jpg".hex() in problem
    key, problem = storage.printable_key(b"new\nline.jpg")
    assert key == "new\\nline.jpg" and problem
