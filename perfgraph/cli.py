"""The ``perfgraph`` command line: a thin layer over the package, one sub-command per step of the flow."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from itertools import zip_longest
from pathlib import Path

from perfgraph.paths import DEFAULT_DB, DEFAULT_SHARDS, MODELS_DIR, RETRAINED_WEIGHTS


class CliError(Exception):
    """A problem with the command's input, printed as ``perfgraph: error: ...`` with exit code 2."""


def open_store(db: Path | None, must_exist: bool = True):  # type: ignore[no-untyped-def]
    """Open ``--db``; the default store is rebuilt from the shipped shards when it is missing."""
    from perfgraph.data.shards import rebuild_store
    from perfgraph.data.store import Store

    path = Path(db) if db else DEFAULT_DB
    if not path.exists() and db is None and any(DEFAULT_SHARDS.glob("shard-*.jsonl.gz")):
        print(f"perfgraph: building {path} from the shards in {DEFAULT_SHARDS} ...", file=sys.stderr)
        return rebuild_store(DEFAULT_SHARDS, path)
    if must_exist and not path.exists():
        raise CliError(f"no dataset at {path}: run 'perfgraph collect --db {path} ...' first")
    return Store(path)


def _workload_uris(args: argparse.Namespace, allow_none: bool = False) -> list[str]:
    from perfgraph.workloads.base import WorkloadError, zoo_uri
    from perfgraph.workloads.user import user_uri
    from perfgraph.workloads.zoo import ZOO, zoo_variants

    random_uris = [f"random:{args.seed + i}" for i in range(args.random)]
    dlrandom_uris = [f"dlrandom:{args.seed + i}" for i in range(args.dlrandom)]
    for name in args.zoo or []:
        if name not in ZOO and name != "all":
            raise CliError(f"--zoo {name!r}: no such zoo entry; known: {', '.join(sorted(ZOO))}, or 'all'")
    names = sorted(ZOO) if "all" in (args.zoo or []) else list(dict.fromkeys(args.zoo or []))
    zoo_uris: list[str] = []
    for name in names:
        zoo_uris += zoo_variants(name, args.zoo_variants, seed=args.seed) if args.zoo_variants > 1 else [zoo_uri(name)]
    # Interleave families, so that a collection stopped early still covers every kind of workload.
    by_round = zip_longest(_round_robin(zoo_uris, args.zoo_variants), random_uris, dlrandom_uris)
    uris = [uri for pair in by_round for uri in pair if uri is not None]
    for spec in args.pipeline or []:
        try:
            uri = user_uri(spec)
        except WorkloadError as error:
            raise CliError(str(error)) from None
        path = Path(uri[len("file:") :].rsplit(":", 1)[0])
        if not path.is_file():
            raise CliError(f"--pipeline {spec!r}: no such file {str(path)!r}")
        uris.append(uri)
    if not uris and not allow_none:
        raise CliError(
            "nothing to collect: give --random N, --dlrandom N, --zoo NAME ... or --pipeline FILE.py:FUNCTION"
        )
    return list(dict.fromkeys(uris))


def _round_robin(uris: list[str], per_entry: int) -> list[str]:
    """Variant 1 of every entry, then variant 2 of every entry, ... (``uris`` is grouped by entry)."""
    step = max(per_entry, 1)
    return [uris[i] for offset in range(step) for i in range(offset, len(uris), step)]


def cmd_collect(args: argparse.Namespace) -> int:
    from perfgraph.measure.collector import Collector

    uris = _workload_uris(args, allow_none=args.upgrade_labels)
    store = open_store(args.db, must_exist=False)
    with contextlib.ExitStack() as stack:
        executor = None if args.ray is None else _on_ray_cluster(stack, args.ray)
        workers = args.workers or (executor.cpus if executor is not None else 2)
        collector = Collector(store, _collect_options(args, workers, uris), executor)
        if not uris:  # --upgrade-labels alone: every stored pipeline with stale labels on this machine kind
            uris = collector.stale_label_pipelines()
            print(
                f"{store.path}: {len(uris)} pipelines have labels to upgrade on {collector.machine_kind}",
                file=sys.stderr,
            )
        summary = collector.collect(uris)
    # A user pipeline that yields no sample is the user's problem to fix: say why, naming it. (Not after a
    # stop, which may have come before its candidates ran.)
    unusable = [] if summary.stopped else _user_pipelines_without_samples(store, uris)
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        s = summary.to_json()
        print(
            f"collected {s['measured']} samples ({s['duplicates']} duplicate schedules skipped, "
            f"{s['remeasured']} re-measured, {s['upgraded']} labels upgraded) for {s['pipelines']} pipelines "
            f"in {s['elapsed_s']:.0f} s "
            f"({s['samples_per_min']:.1f} samples/min); failures: {s['failures'] or 'none'}"
        )
    if summary.stopped:
        print("perfgraph: collection stopped early; run the same command again to resume", file=sys.stderr)
        return 130  # like a shell's Ctrl-C: scripts must not take a partial collection for a finished one
    for message in unusable:
        print(f"perfgraph: error: {message}", file=sys.stderr)
    return 2 if unusable else 0


def _on_ray_cluster(stack: contextlib.ExitStack, address: str):  # type: ignore[no-untyped-def]
    """Connect to the Ray cluster of ``--ray ADDRESS`` until ``stack`` closes; its executor."""
    try:
        from perfgraph.measure import ray_executor
    except ImportError as error:
        raise CliError(f"--ray needs Ray: pip install 'perfgraph[ray]' ({error})") from None
    try:  # a bare --ray: this machine's cluster, else a new local one
        return stack.enter_context(ray_executor.on_cluster(address or None))
    except ConnectionError as error:
        raise CliError(f"--ray {address}: {error}") from None


def _collect_options(args: argparse.Namespace, workers: int, uris: list[str]):  # type: ignore[no-untyped-def]
    """The collector's options; ``--upgrade-labels`` without workloads (``uris`` empty) does nothing else."""
    from perfgraph.measure.collector import CollectOptions

    return CollectOptions(
        schedules_per_pipeline=args.schedules,
        workers=workers,
        compile_on_idle_benchmark_cpus=args.compile_on_idle_benchmark_cpus,
        remeasure_fraction=args.remeasure_fraction,
        upgrade_labels=args.upgrade_labels,
        upgrade_only=args.upgrade_labels and not uris,
        top_up=args.top_up,
        max_beam_size=args.max_beam,
        memory_mb=args.memory_mb,
        show_progress=not args.json,
    )


def _user_pipelines_without_samples(store, uris: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """For each ``file:`` pipeline of ``uris`` that has no measured sample: why, naming the file and function."""
    from perfgraph.workloads.user import split_user_target

    messages = []
    for uri in uris:
        if not uri.startswith("file:"):
            continue
        measured = store.execute(
            "SELECT COUNT(*) FROM measurements m JOIN schedules s USING (schedule_id) "
            "JOIN pipelines p USING (pipeline_id) WHERE p.uri = ?",
            (uri,),
        ).fetchone()[0]
        if measured:
            continue
        failures = store.execute(
            "SELECT candidate_index, kind, phase, message FROM failures WHERE pipeline_uri = ? "
            "ORDER BY candidate_index",
            (uri,),
        ).fetchall()
        path, function = split_user_target(uri[len("file:") :])
        where = f"pipeline file {str(path)!r}, function {function!r}: no sample measured"
        if not failures:
            messages.append(f"{where} (every candidate was a duplicate, or none ran)")
            continue
        index, kind, phase, message = failures[0]  # the analysis (-1) first: then no candidate ran
        what = "the pipeline's analysis" if index == -1 else f"all {len(failures)} candidates failed; the first"
        # Messages already naming the workload start with it; keep them whole but on one line.
        reason = " ".join(message.split())
        messages.append(f"{where}: {what} failed with {kind} during {phase or 'start'}: {reason}")
    return messages


def cmd_stats(args: argparse.Namespace) -> int:
    from perfgraph.data.stats import dataset_stats

    stats = dataset_stats(open_store(args.db))
    print(json.dumps(stats.to_json()) if args.json else stats.to_text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from perfgraph.data.export import export_parquet, export_samples

    if args.machine is not None and args.format != "samples":
        raise CliError(f"--machine is only used with --format samples, not --format {args.format}")
    if args.format == "weights":
        return _export_halide_weights(args)
    if args.model is not None:
        raise CliError(f"--model is only used with --format weights, not --format {args.format}")
    store = open_store(args.db)
    if args.format == "parquet":
        written = export_parquet(store, args.out)
        print(f"wrote {len(written)} parquet files to {args.out}")
        return 0
    kind = args.machine or store.default_machine_kind()
    written = export_samples(store, args.out, machine=kind)
    print(f"wrote {len(written)} .sample files{f' of machine {kind}' if kind else ''} to {args.out}")
    return 0


def _export_halide_weights(args: argparse.Namespace) -> int:
    """``export --format weights``: a ``halide`` checkpoint as a Halide Adams2019 ``.weights`` file."""
    from perfgraph.models.halide_weights import export_checkpoint_weights

    if args.model is None:
        raise CliError("--format weights needs --model CHECKPOINT (a model trained with 'train --model halide')")
    if args.out.suffix != ".weights":
        raise CliError(f"--out {args.out}: must end in '.weights' (Halide reads any other path as a folder)")
    exported = export_checkpoint_weights(args.model, args.out)
    print(
        f"wrote {exported.path}: Adams2019 weights_path; with parallelism={exported.num_cores} Halide's cost "
        f"is this model's prediction in Halide units (x {exported.ms_per_halide_unit:.4g} = ms)"
    )
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from perfgraph.data.shards import export_new_shard, rebuild_store

    if args.action == "export":
        path = export_new_shard(open_store(args.db), args.shards)
        print(f"wrote {path}" if path else "nothing new to export")
    else:
        store = rebuild_store(args.shards, args.db or DEFAULT_DB, force=args.force)
        print(f"rebuilt {store.path}: {store.counts()}")
    return 0


def _machine_samples(store, machine: str | None, quiet: bool = False):  # type: ignore[no-untyped-def]
    """The store's samples measured on one machine kind (default: the kind with most samples, named)."""
    kinds = store.samples_by_machine_kind()
    kind = machine or store.default_machine_kind()
    if kind is not None and kind not in kinds:
        raise CliError(f"--machine {kind!r}: no samples from it in {store.path}; known: {', '.join(kinds) or 'none'}")
    if not quiet and len(kinds) > 1:
        others = ", ".join(f"{k} ({n})" for k, n in kinds.items() if k != kind)
        print(f"perfgraph: machine {kind} ({kinds[kind]} samples); also in the store: {others}", file=sys.stderr)
    return store.samples(machine=kind)


def _training_machines(store, spec: str | None) -> list[str]:  # type: ignore[no-untyped-def]
    """The machine kinds ``train --machine`` names: one kind, ``A,B``, ``all``, or (None) the one with most samples."""
    kinds = store.samples_by_machine_kind()
    if not kinds:
        raise CliError(f"{store.path}: no measured samples to train on (perfgraph collect measures some)")
    if spec is None:
        return [store.default_machine_kind()]
    wanted = list(kinds) if spec == "all" else [kind.strip() for kind in spec.split(",") if kind.strip()]
    unknown = [kind for kind in wanted if kind not in kinds]
    if unknown or not wanted:
        raise CliError(
            f"--machine {spec!r}: no samples from {', '.join(unknown) or 'any kind'} in {store.path}; "
            f"known: {', '.join(kinds) or 'none'}"
        )
    return list(dict.fromkeys(wanted))


def _split(samples, split: str):  # type: ignore[no-untyped-def]
    from perfgraph.features.splits import SplitError, split_samples

    try:
        return split_samples(samples, "family" if split == "family" else "fixed")
    except SplitError as error:
        raise CliError(str(error)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from perfgraph.models.train import train_model

    store = open_store(args.db)
    machines = _training_machines(store, args.machine)
    if len(machines) > 1 and not args.machine_features:
        raise CliError(
            f"train --machine {args.machine}: {len(machines)} machine kinds ({', '.join(machines)}); a model "
            "trained on several must be told which machine each run time is from: add --machine-features"
        )
    samples = [sample for kind in machines for sample in _machine_samples(store, kind, quiet=len(machines) > 1)]
    hparams = {
        key: value
        for key, value in (("loss", args.loss), ("conv", args.conv), ("target", args.target), ("size", args.size))
        if value is not None
    }
    if args.schedule_edges:
        hparams["schedule_edges"] = True
    if args.cost_terms:
        hparams["cost_terms"] = True
    if args.layers is not None:
        hparams["layers"] = args.layers
    if args.machine_features:
        hparams["machine_features"] = True
    try:
        result = train_model(
            samples,
            args.model,
            args.out,
            epochs=args.epochs,
            device=args.device,
            seed=args.seed,
            split="family" if args.split == "family" else "fixed",
            machine=machines,
            **hparams,
        )
    except (TypeError, ValueError) as error:
        raise CliError(f"train --model {args.model}: {error}") from None
    print(result.split.describe())
    _print_training_result(result)
    if len(machines) > 1:
        print(f"trained on {len(machines)} machine kinds: {', '.join(machines)}")
    return 0


def _print_training_result(result) -> None:  # type: ignore[no-untyped-def]
    """A trained (or pooled) model's metrics per part, then the files written."""
    for part, metrics in result.metrics.items():
        print(f"{part:6s} " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    print(f"wrote {result.checkpoint_path}, {result.log_path}" + (f", {result.plot_path}" if result.plot_path else ""))


def cmd_pool(args: argparse.Namespace) -> int:
    from perfgraph.models.base import NotFittedError
    from perfgraph.models.ensemble import pool_ensembles
    from perfgraph.models.registry import load_model
    from perfgraph.models.train import save_trained

    if len(args.models) < 2:
        raise CliError("pool: give two or more checkpoints (ensembles or gnn/sequence models) to pool")
    try:
        pooled = pool_ensembles([load_model(path) for path in args.models])
    except (ValueError, NotFittedError) as error:
        raise CliError(f"pool {' '.join(map(str, args.models))}: {error}") from None
    store = open_store(args.db)
    machines = list(pooled.machine_kinds) or [store.default_machine_kind()]
    known = store.samples_by_machine_kind()
    missing = [kind for kind in machines if kind not in known]
    if missing:
        raise CliError(f"pool: the models were trained on {', '.join(missing)}, of which {store.path} has no samples")
    samples = [sample for kind in machines for sample in _machine_samples(store, kind, quiet=True)]
    parts = _split(samples, args.split)
    calibrating = set(parts.pipelines("valid"))
    for path in args.models:  # the uncertainty is calibrated on pipelines no member trained on
        log = Path(f"{path}.log.json")
        trained_on = set(json.loads(log.read_text()).get("split", {}).get("train", [])) if log.is_file() else set()
        if leaked := calibrating & trained_on:
            raise CliError(
                f"pool: {path} was trained on {len(leaked)} of the validation pipelines that would calibrate the "
                f"uncertainty (e.g. {min(leaked)}); give the store and --split it was trained with"
            )
    pooled.calibrate_uncertainty(parts.valid)
    split = "family" if args.split == "family" else "fixed"
    sources = [str(path.resolve()) for path in args.models]
    result = save_trained(pooled, "ensemble", parts, split, args.out, pooled_from=sources)
    print(f"pooled {pooled.size} members of {len(args.models)} checkpoints; sd scale {pooled.sigma_scale_:.3g}")
    _print_training_result(result)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from perfgraph.models.registry import load_model

    if args.pipeline is None and args.db is None:
        raise CliError("predict: give --pipeline SPEC (rank new candidates) or --db D (predict stored samples)")
    if args.pipeline is not None and args.db is not None and args.machine is None:
        raise CliError("predict: --pipeline with --db needs --machine KIND (the stored machine to predict for)")
    model = load_model(args.model)
    if args.pipeline is None:
        from perfgraph.models.predict import write_predictions_csv

        samples = _machine_samples(open_store(args.db), args.machine)
        path = write_predictions_csv(model, samples, args.out or Path("predictions.csv"))
        print(f"wrote {len(samples)} predictions of {args.model} to {path}")
        return 0
    from perfgraph.search.predict import predict_candidates

    uri = _pipeline_uri(args.pipeline)
    machine = _stored_machine(open_store(args.db), args.machine, model) if args.machine else None
    _warn_if_unseen_machine(model, args.model, machine.kind if machine else None)
    with _progress(args.candidates, "featurizing", quiet=args.json) as bar:
        result = predict_candidates(
            uri,
            model,
            n=args.candidates,
            workers=args.workers,
            on_candidate=bar.update,
            machine=machine,
            memory_mb=args.memory_mb,
        )
    if args.out:
        result.write_sources(args.out)
    print(json.dumps(result.to_json()) if args.json else result.to_table())
    if args.out and not args.json:
        print(f"wrote {len(result.candidates)} schedule sources to {args.out}")
    return 0 if result.candidates else 2


def cmd_schedule(args: argparse.Namespace) -> int:
    from perfgraph.data.store import Store
    from perfgraph.measure.builder import analyse_stage_graph
    from perfgraph.models.registry import load_model
    from perfgraph.search.tune import beam_seed, tune, write_schedule_file

    uri = _pipeline_uri(args.pipeline)
    model = load_model(args.model)
    _warn_if_unseen_machine(model, args.model)
    say = (lambda _m: None) if args.json else (lambda message: print(message, file=sys.stderr))
    weights = {"none": None, "shipped": None, "retrained": str(RETRAINED_WEIGHTS)}.get(args.beam_seed, args.beam_seed)
    if weights is not None and not Path(weights).is_file():
        raise CliError(
            f"--beam-seed {args.beam_seed}: no such .weights file {weights} (perfgraph export --format weights; "
            "--beam-seed none searches without the seed)"
        )
    graph = analyse_stage_graph(uri, memory_mb=args.memory_mb)  # before --db exists: a bad pipeline leaves none
    weights_path = None if weights is None else str(Path(weights).resolve())
    seeds = [] if args.beam_seed == "none" else [beam_seed(graph, weights_path)]
    result = tune(
        uri,
        model,
        Store(args.db),
        n=args.candidates,
        k=args.measure_top,
        rounds=args.rounds,
        workers=args.workers,
        on_progress=say,
        seeds=seeds,
        graph=graph,
        memory_mb=args.memory_mb,
    )
    if result.best is not None:
        write_schedule_file(result, args.out)
    print(json.dumps(result.to_json()) if args.json else result.to_table())
    if result.best is None:
        print(f"perfgraph: error: {uri}: none of the benchmarked candidates could be measured", file=sys.stderr)
        return 2
    return 0


def _stored_machine(store, kind: str, model):  # type: ignore[no-untyped-def]
    """The store's record of machine ``kind``, for ranking candidates as that machine would run them."""
    from perfgraph.models.base import reads_machines

    if not reads_machines(model):
        raise CliError(
            f"predict --machine {kind}: {model.name} is machine-blind, its predictions are the same for every "
            "machine; train one with --machine-features (the shipped ensemble is one)"
        )
    ids = store.machine_ids(kind)
    if not ids:
        known = ", ".join(store.samples_by_machine_kind()) or "none"
        raise CliError(f"predict --machine {kind!r}: no record of that machine kind in {store.path}; known: {known}")
    return store.machines()[ids[0]]


def _warn_if_unseen_machine(model, path: Path, kind: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Say so when the model was trained on other machine kinds than ``kind`` (default: this machine's)."""
    from perfgraph.measure.host import current_machine
    from perfgraph.schedules.autoscheduler import benchmark_target

    here = kind or current_machine(str(benchmark_target())).kind
    if here in model.machine_kinds:
        return
    trained = ", ".join(model.machine_kinds) or "machines it does not record"
    which = f"machine {here}" if kind else f"this machine ({here})"
    print(
        f"perfgraph: warning: {path} was trained on {trained}, not on {which}: run times may be off by a "
        f"machine-wide factor and some orderings; 'perfgraph adapt' fine-tunes it on that machine's samples",
        file=sys.stderr,
    )


def _pipeline_uri(spec: str) -> str:
    """A workload URI from ``FILE.py:FUNCTION``, ``zoo:NAME?...``, ``random:N`` or ``file:...``."""
    from perfgraph.workloads.base import WorkloadError, parse_uri
    from perfgraph.workloads.user import user_uri

    try:
        if spec.startswith(("zoo:", "random:", "dlrandom:", "file:")):
            parse_uri(spec)
            return spec
        uri = user_uri(spec)
    except WorkloadError as error:
        raise CliError(f"--pipeline {spec!r}: {error}") from None
    path = Path(uri[len("file:") :].rsplit(":", 1)[0])
    if not path.is_file():
        raise CliError(f"--pipeline {spec!r}: no such file {str(path)!r}")
    return uri


def _add_memory_option(parser: argparse.ArgumentParser, permanence: str = "") -> None:
    """``--memory-mb N``: every worker process's address-space cap (``collect``, ``predict``, ``schedule``)."""
    parser.add_argument(
        "--memory-mb",
        type=_at_least(MIN_WORKER_MEMORY_MB),
        metavar="N",
        help=f"cap each worker's address space at N MiB; a candidate that needs more fails as out_of_memory"
        f"{permanence} (default: no limit; at least {MIN_WORKER_MEMORY_MB}; a worker reserves 0.3-1.2 GiB: 4096 is "
        "sensible)",
    )


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (argparse's error names the option).

    >>> _at_least(1)("3")
    3
    >>> _at_least(1)("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be >= 1, got 0
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


_POSITIVE, _COUNT = _at_least(1), _at_least(0)
# Below this a worker cannot even import Halide (about 300 MiB of address space); every candidate would be
# recorded as failed, for good.
MIN_WORKER_MEMORY_MB = 512


def _progress(total: int, desc: str, quiet: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="candidate", disable=quiet, dynamic_ncols=True, leave=False)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from perfgraph.evaluate.run import evaluate_models
    from perfgraph.models.registry import load_model

    checkpoints = args.models or sorted(MODELS_DIR.glob("*.pt"))
    if not checkpoints:
        raise CliError(f"no models given and none shipped in {MODELS_DIR}; train one with 'perfgraph train'")
    models = {name: load_model(path) for name, path in _model_names(checkpoints).items()}
    store = open_store(args.db)
    test = _split(_machine_samples(store, args.machine, quiet=args.json), args.split).test
    test_pipelines = {s.pipeline_id for s in test}
    all_pairs = store.repeat_pairs(machine=args.machine)
    pairs = [p for p in all_pairs if p[0] in test_pipelines]
    noise = ([p[2] for p in pairs], [p[3] for p in pairs], [p[0] for p in pairs]) if pairs else None
    # The shipped Halide-trainer figure was measured on the shipped dataset only.
    extra = _halide_trainer_row(args.halide_trainer) if args.db is None and args.machine is None else {}
    if all_pairs:
        from perfgraph.data.store import MEASUREMENT_PROTOCOLS
        from perfgraph.evaluate.noise import NOISE_CEILING, noise_ceiling

        # Each label's noise is drawn from the re-measurements of the protocol it was taken under.
        label_protocols = store.label_protocols(machine=args.machine)
        by_protocol = {
            protocol: [math.log(b / a) for *_, a, b in store.repeat_pairs(machine=args.machine, protocol=protocol)]
            for protocol in MEASUREMENT_PROTOCOLS
        }
        ceiling = noise_ceiling(
            [s.runtime_ms for s in test],
            [s.pipeline_id for s in test],
            [math.log(b / a) for *_, a, b in all_pairs],
            protocols=[label_protocols[s.schedule_id] for s in test],
            ratios_by_protocol=by_protocol,
        )
        extra = {**(extra or {}), NOISE_CEILING: ceiling.as_dict()}
    report, predictions = evaluate_models(
        models, test, noise, extra_rows=extra, reference="gnn" if "gnn" in models else None, split=args.split
    )
    if args.report:
        from perfgraph.evaluate.report import write_report

        stage_costs = None
        if hasattr(models.get("gnn"), "stage_costs"):
            example = max(test, key=lambda s: s.num_stages)
            stage_costs = (example, models["gnn"].stage_costs(example))
        write_report(report, predictions, test, args.report, stage_costs=stage_costs)
    print(json.dumps(report.to_json_dict()) if args.json else report.to_table())
    return 0


def _model_names(checkpoints: Sequence[Path]) -> dict[str, Path]:
    """A unique report name per checkpoint: its stem, prefixed by its folder where two stems are equal.

    >>> _model_names([Path("runs/a/gnn.pt"), Path("runs/b/gnn.pt"), Path("xgboost.pt")])
    {'a/gnn': PosixPath('runs/a/gnn.pt'), 'b/gnn': PosixPath('runs/b/gnn.pt'), 'xgboost': PosixPath('xgboost.pt')}
    """
    by_file: dict[Path, Path] = {}
    for given in checkpoints:  # a file given twice counts once
        by_file.setdefault(Path(given).resolve(), Path(given))
    stems = [path.stem for path in by_file]
    names: dict[str, Path] = {}
    for path, given in by_file.items():
        name = path.stem if stems.count(path.stem) == 1 else f"{path.parent.name}/{path.stem}"
        if name in names:  # same folder name and stem: the whole path
            name = str(path.with_suffix(""))
        names[name] = given
    return names


def cmd_adapt(args: argparse.Namespace) -> int:
    from perfgraph.models.adapt import adapt, few_shot_samples
    from perfgraph.models.base import reads_machines
    from perfgraph.models.registry import load_model
    from perfgraph.models.train import evaluate_model

    if args.out.is_dir():
        raise CliError(f"--out {args.out}: is a directory; give the checkpoint file to write")
    store = open_store(args.db)
    split = _split(_machine_samples(store, args.machine, quiet=True), "test")
    model = load_model(args.model)
    shots = few_shot_samples(split.train, args.samples, seed=args.seed)
    # A machine-aware model rehearses the other kinds it was trained on, so that it does not forget them.
    in_store = store.samples_by_machine_kind()
    kept = [k for k in model.machine_kinds if k != args.machine and k in in_store]
    aware = reads_machines(model)
    old = {}
    for kind in kept if aware else []:
        try:
            old[kind] = _split(store.samples(machine=kind), "test")
        except CliError as error:  # too few pipelines of that kind to split: neither replayed nor scored
            print(f"perfgraph: machine {kind}: {error}; not replayed", file=sys.stderr)
    replay = few_shot_samples([s for part in old.values() for s in part.train], args.replay, seed=args.seed)
    scored = {args.machine: split.test, **{k: part.test for k, part in old.items()}}
    before = {k: evaluate_model(model, test) for k, test in scored.items() if test}
    adapt(model, shots, epochs=args.epochs, replay=replay)
    model.machine_kinds = tuple(dict.fromkeys([*model.machine_kinds, args.machine]))
    after = {k: evaluate_model(model, test) for k, test in scored.items() if test}
    model.save(args.out)
    print(
        f"adapted {args.model} to machine {args.machine} on {len(shots)} samples of "
        f"{len({s.pipeline_id for s in shots})} training pipelines ({args.epochs} epochs)"
        + (f", replaying {len(replay)} samples of {', '.join(old)}" if replay else "")
    )
    if kept and not replay:
        why = "it does not read the machine" if not aware else "--replay 0"
        print(f"(no replay of {', '.join(kept)}: {why}; its predictions for them may drift)")
    for kind, test in scored.items():
        for name, metrics in (("before", before.get(kind)), ("after", after.get(kind))):
            if metrics:
                print(
                    f"{name:6s} {kind} test ({len(test)} samples) "
                    + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                )
    print(f"wrote {args.out}")
    return 0


def _halide_trainer_row(path: Path | None) -> dict | None:
    """The correct-ordering rate of Halide's own trainer, as recorded by ``benchmarks/halide_trainer.py``."""
    if path is None or not Path(path).is_file():
        return None
    recorded = json.loads(Path(path).read_text())
    return {"halide_trainer": {"pairwise_accuracy": recorded["halide_trainer_correct_ordering"]}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perfgraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    collect = sub.add_parser("collect", help="sample schedules with Adams2019, measure them, store the samples")
    collect.add_argument("--db", type=Path, help=f"SQLite store (default {DEFAULT_DB})")
    collect.add_argument("--random", type=_COUNT, default=0, metavar="N", help="N seeded random pipelines")
    collect.add_argument("--dlrandom", type=_COUNT, default=0, metavar="N", help="N seeded random DL pipelines")
    collect.add_argument("--seed", type=int, default=0, help="first random-pipeline seed; zoo-variant seed")
    collect.add_argument(
        "--zoo", nargs="+", action="extend", metavar="NAME", help="zoo entries ('all' for every entry)"
    )
    collect.add_argument("--zoo-variants", type=_POSITIVE, default=1, metavar="V", help="shape variants per zoo entry")
    collect.add_argument(
        "--pipeline", nargs="+", action="extend", metavar="FILE.py:FUNCTION", help="your own pipelines"
    )
    collect.add_argument(
        "--schedules", type=_POSITIVE, default=32, metavar="K", help="measured schedules wanted per pipeline"
    )
    collect.add_argument(
        "--workers", type=_POSITIVE, help="candidates in flight at once (default 2; with --ray, the cluster's CPUs)"
    )
    collect.add_argument(
        "--compile-on-idle-benchmark-cpus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compile on the benchmark cores while nobody benchmarks there (default; more samples/min)",
    )
    collect.add_argument(
        "--max-beam",
        type=_POSITIVE,
        metavar="B",
        help="cap the beam of the beam-search candidate (default: 32, less for big pipelines)",
    )
    collect.add_argument(
        "--remeasure-fraction",
        type=_fraction,
        default=0.05,
        help="share of schedules measured a second time, for the noise floor",
    )
    collect.add_argument(
        "--upgrade-labels",
        action="store_true",
        help="re-measure the schedules whose labels on this machine kind were taken under an older timing protocol "
        "(window-v1, quiet-v2, quiet-v3): the new measurement becomes the label, the old one is kept. Without "
        "workloads: only that, for every stored pipeline with such labels, the oldest protocol's first",
    )
    collect.add_argument(
        "--no-top-up",
        dest="top_up",
        action="store_false",
        help="stop at K candidates even when duplicates leave fewer than K measured schedules",
    )
    _add_memory_option(collect, ", for good")
    collect.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the jobs as Ray tasks on a Ray cluster: 'auto' (the running cluster), HOST:PORT, or nothing "
        "(this machine's cluster, else a new local one); needs perfgraph[ray]",
    )
    collect.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    collect.set_defaults(run=cmd_collect)

    stats = sub.add_parser("stats", help="summarise a dataset")
    stats.add_argument("--db", type=Path)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(run=cmd_stats)

    export = sub.add_parser("export", help="write Halide .sample files, Parquet, or Halide .weights")
    export.add_argument("--db", type=Path)
    export.add_argument("--format", choices=("samples", "parquet", "weights"), required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--model", type=Path, help="--format weights: the halide checkpoint to export")
    export.add_argument(
        "--machine", help="--format samples: the machine kind whose run times to write (default: the one with most)"
    )
    export.set_defaults(run=cmd_export)

    shards = sub.add_parser("shards", help="export new rows as an immutable shard, or rebuild a store from shards")
    shards.add_argument("action", choices=("export", "rebuild"))
    shards.add_argument("--db", type=Path)
    shards.add_argument("--shards", type=Path, default=DEFAULT_SHARDS)
    shards.add_argument(
        "--force",
        action="store_true",
        help="rebuild: replace a store that holds rows in no shard (a copy is kept as DB.bak-<time>)",
    )
    shards.set_defaults(run=cmd_shards)
    train = sub.add_parser("train", help="train a cost model on a dataset (split by pipeline)")
    train.add_argument("--db", type=Path)
    train.add_argument(
        "--model",
        default="gnn",
        help="gnn, sequence, ensemble (GNNs with an uncertainty), halide, xgboost or xgboost_sum",
    )
    train.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    train.add_argument("--epochs", type=_POSITIVE, help="training epochs (default: the model's own)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--split", default="test", choices=("test", "family"))
    train.add_argument(
        "--machine",
        help="machine kind whose run times to train on (default: the one with most); several, A,B or all, "
        "with --machine-features",
    )
    train.add_argument(
        "--machine-features",
        action="store_true",
        help="gnn, sequence, ensemble: the model reads each sample's machine, so one checkpoint serves several kinds",
    )
    train.add_argument(
        "--loss", help="gnn/sequence: mse, relative, rank, listnet, sums like mse+rank; halide: halide, mse_log"
    )
    train.add_argument(
        "--conv",
        help="gnn graph convolution: gcn, sage, gatv2, gin, gin-dir (GIN, producers and consumers apart), transformer",
    )
    train.add_argument("--target", help="xgboost target: throughput (Ansor's) or log_runtime")
    train.add_argument("--size", type=_POSITIVE, help="ensemble: how many members (default 5)")
    train.add_argument(
        "--layers",
        type=_COUNT,
        help="gnn, ensemble, sequence: layers (gnn: message-passing rounds; 0 = per-stage costs, no graph)",
    )
    train.add_argument(
        "--schedule-edges",
        action="store_true",
        help="gnn, ensemble: convolutions also read where each producer is computed relative to its consumer",
    )
    train.add_argument(
        "--cost-terms",
        action="store_true",
        help="gnn, ensemble: each stage's cost mixes Halide's hand-designed cost terms with learned coefficients",
    )
    train.set_defaults(run=cmd_train)
    pool = sub.add_parser(
        "pool", help="one ensemble of the members of several trained ones (members of different configurations)"
    )
    pool.add_argument("models", type=Path, nargs="+", help="checkpoints: ensembles, gnn or sequence models")
    pool.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    pool.add_argument("--db", type=Path, help="store whose validation pipelines calibrate the uncertainty")
    pool.add_argument("--split", default="test", choices=("test", "family"), help="the split the models trained on")
    pool.set_defaults(run=cmd_pool)

    predict = sub.add_parser(
        "predict", help="rank never-run candidate schedules of a pipeline, or predict a dataset's samples"
    )
    predict.add_argument("--pipeline", metavar="SPEC", help="FILE.py:FUNCTION, zoo:NAME?... or random:N")
    predict.add_argument("--candidates", type=_POSITIVE, default=64, metavar="N", help="distinct candidates to rank")
    predict.add_argument(
        "--model", type=Path, default=MODELS_DIR / "ensemble.pt", help="checkpoint (default: the shipped ensemble)"
    )
    predict.add_argument("--db", type=Path, help="predict this store's measured samples instead (writes a CSV)")
    predict.add_argument(
        "--machine",
        help="with --db: the machine kind of the stored samples (default: the one with most); with --pipeline, a "
        "machine-aware model ranks the candidates for this stored machine kind instead of this machine",
    )
    predict.add_argument(
        "--out", type=Path, help="with --pipeline: a folder for every schedule source; with --db: the CSV"
    )
    predict.add_argument("--workers", type=_POSITIVE, default=2, help="autoscheduler processes at once")
    _add_memory_option(predict)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(run=cmd_predict)

    adapt = sub.add_parser("adapt", help="fine-tune a trained model on a few samples of another machine kind")
    adapt.add_argument(
        "--model", type=Path, default=MODELS_DIR / "ensemble.pt", help="checkpoint (default: the shipped ensemble)"
    )
    adapt.add_argument("--db", type=Path)
    adapt.add_argument("--machine", required=True, help="the new machine kind (perfgraph stats lists them)")
    adapt.add_argument("--samples", type=_POSITIVE, default=128, metavar="N", help="samples of its training pipelines")
    adapt.add_argument("--epochs", type=_POSITIVE, default=30, help="fine-tuning epochs")
    adapt.add_argument(
        "--replay",
        type=_COUNT,
        default=4096,
        metavar="N",
        help="a machine-aware model replays N training samples of the other kinds it knows (0: none)",
    )
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--out", type=Path, required=True, help="the adapted checkpoint to write")
    adapt.set_defaults(run=cmd_adapt)

    schedule = sub.add_parser("schedule", help="model-guided search: rank candidates, benchmark the best, keep one")
    schedule.add_argument("--pipeline", metavar="SPEC", required=True, help="FILE.py:FUNCTION, zoo:... or random:N")
    schedule.add_argument(
        "--model", type=Path, default=MODELS_DIR / "ensemble.pt", help="checkpoint (default: the shipped ensemble)"
    )
    schedule.add_argument("--candidates", type=_POSITIVE, default=256, metavar="N", help="candidates scored per round")
    schedule.add_argument("--measure-top", type=_POSITIVE, default=8, metavar="K", help="benchmarked per round")
    schedule.add_argument("--rounds", type=_POSITIVE, default=1, metavar="R", help="update the model between rounds")
    schedule.add_argument(
        "--db", type=Path, default=Path("tuning.db"), help="store for the benchmarked candidates (default tuning.db)"
    )
    schedule.add_argument(
        "--beam-seed",
        nargs="?",
        const="shipped",
        default="retrained",
        metavar="WEIGHTS",
        help="also benchmark Adams2019's own beam search, so that the search returns at worst its schedule, with: "
        f"'retrained' (default: models/{RETRAINED_WEIGHTS.name}, our Halide network exported as .weights), 'shipped' "
        "(Halide's own weights; the flag alone), a .weights file (perfgraph export --format weights), or 'none'",
    )
    schedule.add_argument("--out", type=Path, default=Path("schedule.py"), help="the chosen schedule as Python")
    schedule.add_argument("--workers", type=_POSITIVE, default=2)
    _add_memory_option(schedule)
    schedule.add_argument("--json", action="store_true")
    schedule.set_defaults(run=cmd_schedule)

    evaluate = sub.add_parser("evaluate", help="compare models on pipelines never seen in training")
    evaluate.add_argument("--db", type=Path)
    evaluate.add_argument(
        "--models", type=Path, nargs="+", action="extend", help=f"checkpoints (default: every {MODELS_DIR}/*.pt)"
    )
    evaluate.add_argument("--split", default="test", choices=("test", "family"))
    evaluate.add_argument("--machine", help="machine kind to evaluate on (default: the one with most samples)")
    evaluate.add_argument("--report", type=Path, metavar="DIR", help="write report.md, report.json and plots here")
    evaluate.add_argument(
        "--halide-trainer",
        type=Path,
        default=MODELS_DIR / "halide_trainer.json",
        help="recorded result of Halide's own trainer (benchmarks/halide_trainer.py)",
    )
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sqlite3

    from perfgraph.data.export import ExportError
    from perfgraph.data.shards import ShardError
    from perfgraph.data.store import StoreError
    from perfgraph.measure.builder import BuildError
    from perfgraph.models.base import SchemaMismatchError
    from perfgraph.models.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    # The files the command was given, to name in an error that does not say which one it is about.
    paths = {key.replace("_", "-"): value for key, value in vars(args).items() if isinstance(value, Path)}
    given = ", ".join(f"--{key} {value}" for key, value in paths.items())
    try:
        return args.run(args)
    # BuildError: a pipeline that cannot be built or analysed (predict, schedule); its message names it.
    except (CliError, CheckpointError, SchemaMismatchError, StoreError, ShardError, ExportError, BuildError) as error:
        print(f"perfgraph: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except OSError as error:  # a read-only or full disk, a folder where a file is expected, ...
        where = error.filename if error.filename is not None else given or "perfgraph"
        print(f"perfgraph: error: {where}: {error.strerror or error}", file=sys.stderr)
        return 2
    except sqlite3.Error as error:
        db = getattr(args, "db", None) or DEFAULT_DB
        print(f"perfgraph: error: {db}: SQLite: {error}", file=sys.stderr)
        return 2
    except EOFError as error:  # a file that ends too early
        print(f"perfgraph: error: {given or 'perfgraph'}: ends too early ({error or 'EOFError'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perfgraph: interrupted; everything measured so far is in the store", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
