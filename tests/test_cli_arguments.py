"""The command line takes every flag it is given, and refuses nonsense before it touches any file."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfgraph.cli import _model_names, _workload_uris, build_parser, main

from .conftest import USER_PIPELINES


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


# -- repeated flags add up ------------------------------------------------------------------------------------------


def test_a_repeated_pipeline_flag_keeps_every_pipeline():
    args = parse("collect", "--pipeline", f"{USER_PIPELINES}:blur", "--pipeline", f"{USER_PIPELINES}:conv_relu")
    assert _workload_uris(args) == [f"file:{USER_PIPELINES}:blur", f"file:{USER_PIPELINES}:conv_relu"]


def test_a_repeated_zoo_flag_keeps_every_entry():
    args = parse("collect", "--zoo", "conv2d", "--zoo", "dense")
    assert [uri.split("?")[0] for uri in _workload_uris(args)] == ["zoo:conv2d", "zoo:dense"]


def test_a_repeated_models_flag_keeps_every_checkpoint():
    args = parse("evaluate", "--models", "x.pt", "--models", "y.pt", "z.pt")
    assert args.models == [Path("x.pt"), Path("y.pt"), Path("z.pt")]


def test_checkpoints_with_the_same_file_name_keep_apart_by_folder():
    names = _model_names([Path("runs/a/gnn.pt"), Path("runs/b/gnn.pt"), Path("runs/b/xgboost.pt")])
    assert list(names) == ["a/gnn", "b/gnn", "xgboost"]
    assert names["a/gnn"] == Path("runs/a/gnn.pt")


def test_one_checkpoint_given_twice_is_evaluated_once():
    assert list(_model_names([Path("m/gnn.pt"), Path("m/../m/gnn.pt")])) == ["gnn"]


def test_an_unknown_zoo_entry_beside_all_is_an_error(capsys):
    assert main(["collect", "--db", "unused.db", "--zoo", "all", "nosuch"]) == 2
    assert "--zoo 'nosuch': no such zoo entry" in capsys.readouterr().err


# -- numbers are checked at the boundary, before any file is created -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["collect", "--random", "1", "--schedules", "0"], "--schedules"),
        (["collect", "--random", "1", "--schedules", "-2"], "--schedules"),
        (["collect", "--random", "-3"], "--random"),
        (["collect", "--zoo", "conv2d", "--zoo-variants", "-2"], "--zoo-variants"),
        (["collect", "--random", "1", "--workers", "0"], "--workers"),
        (["collect", "--random", "1", "--max-beam", "0"], "--max-beam"),
        (["collect", "--random", "1", "--remeasure-fraction", "1.5"], "--remeasure-fraction"),
        (["collect", "--random", "1", "--schedules", "many"], "--schedules"),
        (["train", "--model", "xgboost", "--out", "m.pt", "--epochs", "0"], "--epochs"),
        (["train", "--model", "xgboost", "--out", "m.pt", "--epochs", "-1"], "--epochs"),
        (["train", "--model", "gnn", "--out", "m.pt", "--layers", "-1"], "--layers"),
        (["train", "--model", "ensemble", "--out", "m.pt", "--size", "0"], "--size"),
        (["predict", "--pipeline", "random:1", "--candidates", "0"], "--candidates"),
        (["schedule", "--pipeline", "random:1", "--rounds", "0"], "--rounds"),
        (["adapt", "--machine", "m", "--out", "m.pt", "--samples", "0"], "--samples"),
    ],
)
def test_a_nonsense_number_is_refused_naming_the_option_before_any_file_exists(argv, option, tmp_path, capsys):
    db = tmp_path / "store.db"
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--db", str(db)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}" in error and "Traceback" not in error, error
    assert not any(tmp_path.iterdir())


def test_the_documented_defaults_still_parse():
    args = parse("collect", "--random", "0", "--zoo", "conv2d", "--remeasure-fraction", "0")
    # --workers unset: 2 on this machine, the cluster's CPUs with --ray (cmd_collect decides).
    assert (args.random, args.schedules, args.workers, args.remeasure_fraction) == (0, 32, None, 0.0)
