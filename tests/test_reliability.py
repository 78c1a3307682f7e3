"""Files perfgraph must never corrupt or trust blindly: foreign databases, damaged checkpoints, and the
command line's errors (one line that names the file and the problem, exit code 2)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch

from perfgraph import cli
from perfgraph.cli import main
from perfgraph.data.store import Store, StoreError
from perfgraph.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_header, save_checkpoint
from perfgraph.models.registry import load_model
from perfgraph.paths import MODELS_DIR


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    error = capsys.readouterr().err
    assert error.startswith("perfgraph: error: ") and error.count("\n") == 1, error
    return error


# -- stores --------------------------------------------------------------------------------------------------------


def other_applications_database(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('keep me')")
    return path


def test_another_applications_sqlite_file_is_refused_and_left_unchanged(tmp_path):
    path = other_applications_database(tmp_path / "notes.sqlite")
    before = digest(path)
    with pytest.raises(StoreError, match=f"{path}: not a perfgraph store .*notes"):
        Store(path)
    assert digest(path) == before
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]


def test_stats_on_another_applications_sqlite_file_changes_nothing(tmp_path, capsys):
    path = other_applications_database(tmp_path / "notes.sqlite")
    before = digest(path)
    assert main(["stats", "--db", str(path)]) == 2
    assert str(path) in one_line_error(capsys)
    assert digest(path) == before and not Path(f"{path}-wal").exists()


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but somebody's notes\n" * 100)
    with pytest.raises(StoreError, match=f"{path}: not a perfgraph store: not an SQLite database"):
        Store(path)
    assert path.read_text() == "not a database, but somebody's notes\n" * 100


def test_an_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "new.db"
    path.touch()
    with Store(path) as store:
        assert store.counts()["pipelines"] == 0


# -- checkpoints ---------------------------------------------------------------------------------------------------


def saved_checkpoint(path: Path) -> Path:
    save_checkpoint(path, "test", {"weights": torch.arange(65536, dtype=torch.float32), "note": "ok"})
    return path


def test_a_checkpoint_with_4_kib_of_flipped_bytes_is_refused_naming_the_file(tmp_path):
    path = saved_checkpoint(tmp_path / "model.pt")
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2  # inside the 256 KiB of weights
    raw[middle : middle + 4096] = bytes(b ^ 0xFF for b in raw[middle : middle + 4096])
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{path}: corrupt checkpoint"):
        load_checkpoint(path, "test")


def test_a_checkpoint_whose_payload_no_longer_matches_its_sha256_is_refused(tmp_path):
    path = saved_checkpoint(tmp_path / "model.pt")
    record = torch.load(path, weights_only=True)
    record["payload"]["weights"][7] = -1.0  # a valid container around changed numbers
    torch.save(record, path)
    with pytest.raises(CheckpointError, match=f"{path}: corrupt checkpoint: .*sha256"):
        load_checkpoint(path, "test")


def test_a_checkpoint_round_trips_with_its_hash(tmp_path):
    path = saved_checkpoint(tmp_path / "model.pt")
    assert len(read_checkpoint_header(path)["payload_sha256"]) == 64
    assert torch.equal(load_checkpoint(path, "test")["weights"], torch.arange(65536, dtype=torch.float32))


def test_a_checkpoint_saved_while_torch_skips_crcs_still_loads(tmp_path):
    from torch.utils.serialization import config

    previous, config.save.compute_crc32 = config.save.compute_crc32, False
    try:
        path = saved_checkpoint(tmp_path / "model.pt")
        assert config.save.compute_crc32 is False  # torch's setting is left as it was
    finally:
        config.save.compute_crc32 = previous
    assert load_checkpoint(path, "test")["note"] == "ok"


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.pt")), ids=lambda p: p.name)
def test_the_shipped_checkpoints_pass_the_integrity_checks(path):
    assert load_model(path) is not None


def test_a_checkpoint_saved_before_the_hash_was_added_still_loads(tmp_path):
    path = saved_checkpoint(tmp_path / "model.pt")
    record = torch.load(path, weights_only=True)
    del record["payload_sha256"]
    torch.save(record, path)
    assert load_checkpoint(path, "test")["note"] == "ok"


# -- the command line's errors -------------------------------------------------------------------------------------


def test_a_db_that_is_a_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["stats", "--db", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a directory" in one_line_error(capsys)


def test_an_out_that_is_an_existing_directory_is_a_one_line_error(tmp_path, capsys):
    Store(tmp_path / "empty.db").close()
    (tmp_path / "out").mkdir()
    model = str(MODELS_DIR / "halide.pt")
    assert main(["predict", "--model", model, "--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'out'}: Is a directory" in one_line_error(capsys)


def make_read_only(path: Path) -> list[Path]:
    """The store file and its folder become unwritable, for root too (``chattr +i``); skips where impossible."""
    targets = [path, path.parent]
    if os.geteuid() != 0:
        for target in targets:
            target.chmod(0o555 if target.is_dir() else 0o444)
        return targets
    if subprocess.run(["chattr", "+i", *map(str, targets)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a file read-only for root here (chattr +i)")
    return targets


def make_writable(targets: list[Path]) -> None:
    if os.geteuid() != 0:
        for target in targets:
            target.chmod(0o755 if target.is_dir() else 0o644)
    else:
        subprocess.run(["chattr", "-i", *map(str, targets)], check=True)


def test_a_read_only_store_is_a_one_line_error_naming_it(tmp_path, capsys):
    db = tmp_path / "store" / "s.db"
    Store(db).close()
    targets = make_read_only(db)
    try:
        assert main(["stats", "--db", str(db)]) == 2
    finally:
        make_writable(targets)
    assert f"{db}: " in one_line_error(capsys)


def test_a_store_damaged_inside_is_a_one_line_sqlite_error_naming_it(tmp_path, capsys):
    db = tmp_path / "s.db"
    with Store(db) as store:
        for index in range(3000):
            store.add_failure(f"random:{index}", 0, None, "crash", "run", "x" * 1000, None)
    size = db.stat().st_size
    with db.open("r+b") as handle:  # a run of pages in the middle of the failures table
        handle.seek(size // 2 // 4096 * 4096)
        handle.write(b"\xff" * 65536)
    assert main(["stats", "--db", str(db)]) == 2
    assert f"perfgraph: error: {db}: SQLite: " in one_line_error(capsys)


def test_an_unexpected_end_of_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def stats_of_a_truncated_file(args):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(cli, "cmd_stats", stats_of_a_truncated_file)
    assert main(["stats", "--db", str(tmp_path / "s.db")]) == 2
    assert f"--db {tmp_path / 's.db'}: ends too early (Compressed file ended" in one_line_error(capsys)


def test_a_schedule_that_unrolls_a_loop_of_unknown_extent_compiles_with_that_loop_serial(monkeypatch):
    # Adams2019 sometimes unrolls such a loop (halide/Halide#4271); Halide's autotune loop permits it.
    import types

    import halide as hl
    import numpy as np

    from perfgraph.measure.worker import _compile
    from perfgraph.schedules.autoscheduler import benchmark_target

    monkeypatch.setenv("HL_PERMIT_FAILED_UNROLL", "0")  # recorded, so that what _compile sets is undone after
    monkeypatch.delenv("HL_PERMIT_FAILED_UNROLL")
    x, image = hl.Var("x"), hl.ImageParam(hl.Float(32), 1, "image")
    doubled = hl.Func("doubled")
    doubled[x] = image[x] * 2.0
    doubled.unroll(x)  # the output's extent: known only when it runs
    run, names = _compile(types.SimpleNamespace(pipeline=hl.Pipeline(doubled)), benchmark_target())
    data, out = np.arange(10, dtype=np.float32), np.zeros(10, dtype=np.float32)
    run(hl.Buffer(data), hl.Buffer(out))
    assert names == ["image"] and out.tolist() == (2 * data).tolist()
