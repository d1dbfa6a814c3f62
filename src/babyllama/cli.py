"""The `babyllama` command: one verb per pipeline stage.

Verbs parse their arguments here and call the stage's public function; stage modules are imported
lazily so `babyllama --help` stays fast. A `UserError` or an `OSError` anywhere becomes one line on
stderr and exit status 2 (3 when a resource ran out: disk full, quota, memory); anything else is a bug and
keeps its traceback. Commands that write into an out_dir hold its lock (babyllama.lock) while they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from babyllama import threads  # first: the thread policy must be in place before anything imports torch
from babyllama.errors import (
    ERROR_PREFIX,
    EXIT_RESOURCE,
    EXIT_USER,
    UserError,
    describe_os_error,
    describe_out_of_memory,
    is_out_of_memory,
)
from babyllama.fast_exit import exit_now


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (e.g. configs/demo.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted; repeatable), e.g. --set out_dir=runs/x --set teachers.0.train.lr=1e-3",
    )


def _lock(args: argparse.Namespace, out: Path) -> None:
    """Hold the out_dir lock until the command ends (rank 0 only: the other ranks are the same command)."""
    from babyllama.distributed import is_main_process
    from babyllama.lock import out_dir_lock
    from babyllama.side_by_side import is_child

    if is_main_process() and not is_child():  # a stage of `run` side by side: the run holds the lock
        args.held.enter_context(out_dir_lock(out, " ".join(["babyllama", *args.argv])[:200]))


def _load(args: argparse.Namespace, lock: bool = True, vet: Callable[[Any], object] | None = None):
    """The config, vetted (``vet``: a command's own checks, also before anything is written), locked, saved."""
    from babyllama.config import load_config, save_resolved
    from babyllama.distributed import is_main_process
    from babyllama.existing import check_sources
    from babyllama.side_by_side import is_child

    cfg = load_config(args.config, args.overrides)
    check_sources(cfg)  # existing models named by `from`: vetted before anything is written
    if vet is not None:
        vet(cfg)
    if lock:
        _lock(args, cfg.out)
    if is_main_process() and not is_child():
        save_resolved(cfg)
    return cfg


def _check_out_file(out: str | None) -> None:
    """``--out FILE`` must name a file in a folder that exists or can be made (checked before the work)."""
    if out and Path(out).is_dir():
        raise UserError(f"--out {out}: is a folder, expected a file name (e.g. {Path(out) / 'result.json'})")
    blocked = next((p for p in Path(out).parents if p.exists() and not p.is_dir()), None) if out else None
    if blocked is not None:
        raise UserError(f"{blocked}: is a file, not a folder (needed as a folder for --out {out})")


def cmd_prepare(args: argparse.Namespace) -> None:
    from babyllama.data.prepare import prepare

    prepare(_load(args))


def cmd_train(args: argparse.Namespace) -> None:
    from babyllama.training import train_model

    cfg = _load(args)
    train_model(cfg, args.model, resume=args.resume)


def cmd_distill(args: argparse.Namespace) -> None:
    from babyllama.training import distill

    distill(_load(args), resume=args.resume)


def _eval_settings(args: argparse.Namespace, keys: tuple[str, ...]):
    """The evaluation settings of --protocol, with the flags given on the command line overriding it."""
    from pydantic import ValidationError

    from babyllama.config import EvalConfig

    explicit = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    try:
        return EvalConfig.model_validate({"protocol": args.protocol, "batch_size": args.batch_size, **explicit})
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"evaluate: --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def _model_arg(model: str) -> Path:
    """--model: a folder, or a model id present in the local Hugging Face cache (no network)."""
    from babyllama.evaluate.formats import resolve_model_dir

    return resolve_model_dir(model)


def _write_result(result: dict, out: str | None) -> None:
    from babyllama.io import atomic_write_json

    if out:
        atomic_write_json(out, result)
        print(f"wrote {out}")


def cmd_eval_blimp(args: argparse.Namespace) -> None:
    from babyllama.evaluate.blimp import format_blimp_table
    from babyllama.evaluate.registry import score_blimp

    _check_out_file(args.out)
    ev = _eval_settings(args, ("prefix", "leading_space", "reduction", "ties", "seed", "aggregation", "truncate"))
    result = score_blimp(_model_arg(args.model), args.data, ev, device=args.device)
    print(format_blimp_table(result))
    _write_result(result, args.out)


def cmd_eval_data(args: argparse.Namespace) -> None:
    """`babyllama evaluate <task>` for every evaluator that scores a data file alone (registry.DataScorer)."""
    from babyllama.evaluate.registry import evaluator

    _check_out_file(args.out)
    ev = _eval_settings(args, ("context_prefix", "ties", "seed", "truncate", "ewok_pairing", "entity_skip_nothing"))
    task = evaluator(args.task)
    result = task.score_data(_model_arg(args.model), args.data, ev, device=args.device)
    print(task.cli.table(result))
    _write_result(result, args.out)


def cmd_eval_reading(args: argparse.Namespace) -> None:
    from babyllama.evaluate.reading import evaluate_reading, format_reading_table

    _check_out_file(args.out)
    if args.batch_size < 1:
        raise UserError(f"evaluate reading: --batch-size must be at least 1, got {args.batch_size}")
    result = evaluate_reading(Path(args.model), args.data, batch_size=args.batch_size, device=args.device)
    print(format_reading_table(result))
    _write_result(result, args.out)


def cmd_eval_perplexity(args: argparse.Namespace) -> None:
    from babyllama.evaluate.perplexity import (
        evaluate_perplexity,
        format_perplexity_table,
        perplexity_for_config,
    )

    _check_out_file(args.out)
    if args.model:
        if not args.config and not args.data_dir:
            raise UserError("evaluate perplexity --model DIR needs --data-dir <out_dir>/data or a CONFIG")
        cfg = _load(args) if args.config else None
        data_dir = Path(args.data_dir) if args.data_dir else cfg.data_dir
        seq_len = args.seq_len or (cfg.data.seq_len if cfg else 128)
        results = {Path(args.model).name: evaluate_perplexity(_model_arg(args.model), data_dir, seq_len=seq_len,
                                                              device=args.device,
                                                              allow_unchecked_tokenizer=args.allow_unchecked_tokenizer)}
    else:
        if not args.config:
            raise UserError("evaluate perplexity needs a CONFIG (every model of it) or --model DIR --data-dir DIR")
        results = perplexity_for_config(_load(args), device=args.device)
    print(format_perplexity_table(results))
    if args.out:
        from babyllama.io import atomic_write_json

        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")


def cmd_eval_curve(args: argparse.Namespace) -> None:
    from babyllama.evaluate.curves import evaluate_curves

    cfg = _load(args)
    for name, path in evaluate_curves(cfg).items():
        print(f"wrote {path} ({name})")


def cmd_finetune(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from babyllama.config import FinetuneConfig
    from babyllama.evaluate.finetune import finetune_task

    overrides = {k: v for k, v in {"lr": args.lr, "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed,
                                   "patience": args.patience, "eval_every": args.eval_every,
                                   "max_train_examples": args.max_train_examples}.items() if v is not None}
    try:
        hp = FinetuneConfig(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"finetune: --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a file, expected a folder (for result.json, predictions.json, model/)")
    result = finetune_task(_model_arg(args.model), args.data, args.task, hp, out=args.out, device=args.device,
                           missing="error")
    print(json.dumps(result, indent=2))


def cmd_download_blimp(args: argparse.Namespace) -> None:
    from babyllama.evaluate.download import download_blimp

    path = download_blimp(args.to, url=args.url)
    print(f"BLiMP is in {path}")


def cmd_run(args: argparse.Namespace) -> None:
    from babyllama.pipeline import run_pipeline

    # the closing hint names the config as typed, unless --set changed it (then the resolved copy in out_dir)
    cfg = _load(args)
    run_pipeline(cfg, force=args.force or [], config_arg=args.config if not args.overrides else str(cfg.out / "config.yaml"))


def cmd_sweep(args: argparse.Namespace) -> None:
    from babyllama import sweep
    from babyllama.distributed import is_main_process

    # One member (a child of `sweep --jobs`, or a scheduler's array job) locks its own folder, not the
    # sweep's: members run side by side, sharing data and teachers under the sweep's own lock.
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"sweep --seeds {args.seeds}: expected at least 1")
    if args.jobs < 1:
        raise UserError(f"sweep --jobs {args.jobs}: expected at least 1")
    # every member's config (its grid point's teachers and vocabularies too) is vetted before anything is written
    cfg = _load(args, lock=args.member is None, vet=lambda c: sweep.sweep_members(c, args.seeds or c.sweep.seeds))
    n_seeds = args.seeds or cfg.sweep.seeds
    members = sweep.sweep_members(cfg, n_seeds)
    if args.plan:
        path = sweep.write_plan(cfg, members)
        for m in members:
            print(f"{m.index}\t{m.name}\t{m.label}\tseed {m.seed}")
        print(f"wrote {path}: {len(members)} members (run one with --member I, I = 0..{len(members) - 1})")
        return
    if args.member is not None:
        _run_planned_member(args, cfg, members)
        return
    if args.collect and sweep.read_plan(cfg) is not None:  # the plan is the truth about which members exist
        members = [m for m, _ in sweep.read_plan(cfg) or []]
    if not args.collect:
        if is_main_process():
            sweep.write_plan(cfg, members)
        if args.jobs > 1:
            sweep.run_parallel(cfg, members, args.jobs, sweep.cli_command(args.config, args.overrides, n_seeds))
        else:
            for m in members:
                sweep.run_member(cfg, m, len(members))
    if is_main_process():
        from babyllama.render import markdown_table
        from babyllama.sweep_report import collect, comparison_rows, missing_members

        result = collect(cfg, members)
        print()
        print(markdown_table(*comparison_rows(result)))
        print()
        for line in result["verdict"] + result["conditions"]:
            print(f"- {line}")
        if result["missing"]:  # each with why: not finished, run under another config, or a result not verified
            print(f"\nNot counted: {missing_members(result)}")
        out = sweep.sweep_dir(cfg)
        print(f"\nSweep: {out / 'sweep.json'}, {out / 'report.md'} and {out / 'report.html'}")


def _run_planned_member(args: argparse.Namespace, cfg, members: list) -> None:
    """`sweep --member I`: member I of plan.json (written now from this config when there is none yet),
    holding the lock of every folder it writes: its own, and the shared ones (run_member)."""
    from babyllama import sweep

    if sweep.read_plan(cfg) is None:
        with sweep.shared_lock(cfg):
            if sweep.read_plan(cfg) is None:
                sweep.write_plan(cfg, members)
    m = sweep.planned_member(cfg, args.member)
    _lock(args, sweep.sweep_dir(cfg) / m.name)
    sweep.run_member(cfg, m, len(sweep.read_plan(cfg) or []), lock_shared=True)


def cmd_report(args: argparse.Namespace) -> None:
    from babyllama.report import build_report

    if not Path(args.out_dir).is_dir():
        raise UserError(f"{args.out_dir}: not an experiment folder (no such folder)")
    _lock(args, Path(args.out_dir))
    paths = build_report(Path(args.out_dir))
    for p in paths:
        print(f"wrote {p}")


def cmd_export(args: argparse.Namespace) -> None:
    from babyllama.export import export_model

    for path in export_model(args.model_dir, args.to, fmt=args.format, quant=args.quant,
                             license_=args.license, language=args.language, base_model=args.base_model):
        print(f"wrote {path}")


def cmd_check_submission(args: argparse.Namespace) -> None:
    from babyllama.export.submission_check import check_submission

    m = check_submission(args.folder)
    print(f"{args.folder}: a valid BabyLM submission layout ({m['track']}, protocol {m['protocol']}): main model, "
          f"{len(m['revisions'])} checkpoints, zero-shot {', '.join(m['zero_shot']) or 'none'}, fine-tuning "
          f"{', '.join(m['finetune']) or 'none'}; not included: {', '.join(m.get('not_scored', [])) or 'nothing'}")


def cmd_config(args: argparse.Namespace) -> None:
    from babyllama.config import config_docs, load_config

    if args.docs:
        print(config_docs(), end="")
        return
    if not args.config:
        raise UserError("config: give a CONFIG to show, or --docs")
    print(load_config(args.config, args.overrides).to_yaml(), end="")


def _add_scoring_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """What every zero-shot scorer takes: the model, its data, where to write, and the protocol."""
    p.add_argument("--model", required=True, help="Hugging Face causal-LM folder, or a model id in the local Hugging Face cache")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", help="write the result JSON here")
    _add_protocol_args(p)


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    from babyllama.protocols import PROTOCOLS

    p.add_argument("--protocol", choices=list(PROTOCOLS), default="babyllama",
                   help="settings preset (docs/config.md, eval.protocol); the flags below override it")
    p.add_argument("--ties", choices=["correct", "wrong", "random", "expected"], default=None,
                   help="a tie for the top score: correct (BabyLM 2023-2025), wrong (ours), random (BabyLM 2026, seeded by "
                   "--seed) or expected (1/k credit); default: the protocol's")
    p.add_argument("--ties-correct", dest="ties", action="store_const", const="correct", help="same as --ties correct")
    p.add_argument("--ties-wrong", dest="ties", action="store_const", const="wrong", help="same as --ties wrong")
    p.add_argument("--seed", type=int, default=None, help="seed of the tie draws under --ties random (eval.seed)")
    p.add_argument("--no-truncate", dest="truncate", action="store_const", const=False, default=None,
                   help="never cut an input longer than the model's positions (BabyLM 2025/2026; default: the protocol's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's whole surface, verb by verb in the order of the pipeline; each handler is a cmd_* function."""
    parser = argparse.ArgumentParser(
        prog="babyllama",
        description="Baby Llama end to end: prepare data, train teachers, distil a student, evaluate, report.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_training_verbs(sub)
    _add_evaluation_verbs(sub)
    _add_publishing_verbs(sub)
    _add_threads_flag(parser)
    return parser


def _add_training_verbs(sub: Any) -> None:
    """prepare, train, distill, run, sweep: the verbs that make data and models."""
    p = sub.add_parser("prepare", help="clean the corpus, train the tokenizer, write token files")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one model (a teacher, or the control) without distillation")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="model name from the config ('control' for the student trained alone)")
    p.add_argument("--resume", action="store_true", help="require a saved state to resume from (default: resume if one exists)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil the teachers' ensemble into the student")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="require a saved state to resume from (default: resume if one exists)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("run", help="the whole chain: prepare, teachers, distill, control, evaluate, report")
    _add_config_args(p)
    p.add_argument("--force", action="append", metavar="STAGE", help="redo this stage and everything after it (repeatable)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="seeds and ablations of one config, with confidence intervals")
    _add_config_args(p)
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: sweep.seeds, 3)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--plan", action="store_true", help="write <out_dir>/sweep/plan.json and list the members")
    what.add_argument("--member", type=int, metavar="I", help="run member I only (e.g. one task of a scheduler's array)")
    what.add_argument("--collect", action="store_true", help="only aggregate the finished members")
    p.add_argument("--jobs", type=int, default=1, metavar="K", help="run K members at a time as local processes")
    p.set_defaults(func=cmd_sweep)


def _add_evaluation_verbs(sub: Any) -> None:
    """evaluate (every zero-shot task and perplexity) and finetune."""
    p = sub.add_parser("evaluate", help="zero-shot evaluation (BLiMP, EWoK, entity tracking, COMPS, GlobalPIQA, "
                       "WUG adj / past, reading, dev perplexity)")
    esub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = esub.add_parser("blimp", help="BLiMP-style minimal pairs: original, BabyLM 2023/2024 filtered, supplement")
    _add_scoring_args(b, "folder or file of minimal pairs")
    b.add_argument("--prefix", choices=["eos", "bos", "none", "tokenizer"], default=None,
                   help="token each sentence is conditioned on (default: the protocol's)")
    b.add_argument("--no-leading-space", dest="leading_space", action="store_const", const=False, default=None,
                   help="do not prepend a space to each sentence")
    b.add_argument("--reduction", choices=["sum", "mean"], default=None)
    b.add_argument("--aggregation", choices=["phenomena", "paradigms"], default=None,
                   help="headline: mean over phenomena or over paradigms (default: the protocol's)")
    b.set_defaults(func=cmd_eval_blimp)
    from babyllama.evaluate.registry import REGISTRY

    for e in (e for e in REGISTRY if e.cli is not None):
        c = esub.add_parser(e.name.replace("_", "-"), aliases=[e.name] if "_" in e.name else [],
                            help=f"{e.name.replace('_', ' ')} zero-shot, in the BabyLM pipelines' format ({e.switch})")
        _add_scoring_args(c, "folder or file in the official format")
        c.add_argument("--context-prefix", choices=["eos", "bos", "none", "tokenizer"], default=None,
                       help="token before each context (default: the protocol's; official pipelines: none, or the "
                       "tokenizer's own special tokens from 2025 on)")
        for option in e.cli_options:
            c.add_argument(*option.flags, **option.kwargs)
        c.set_defaults(func=cmd_eval_data, task=e.name)
    r = esub.add_parser("reading", help="surprisal against human reading times (BabyLM 2025/2026 reading_data.csv)")
    r.add_argument("--model", required=True, help="Hugging Face causal-LM directory")
    r.add_argument("--data", required=True, help="the pipeline's reading_data.csv")
    r.add_argument("--out", help="write the result JSON here")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    r.set_defaults(func=cmd_eval_reading)
    q = esub.add_parser("perplexity", help="dev cross-entropy, perplexity and bits per word")
    q.add_argument("config", nargs="?", help="experiment YAML: evaluate every model of it")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--model", help="one Hugging Face causal-LM directory instead")
    q.add_argument("--data-dir", help="prepared data folder (<out_dir>/data) holding dev.bin")
    q.add_argument("--seq-len", type=int, default=None)
    q.add_argument("--allow-unchecked-tokenizer", action="store_true",
                   help="score a model folder that has no tokenizer to compare with the data's (vocabulary size only)")
    q.add_argument("--out", help="write the result JSON here")
    q.add_argument("--device", default=None)
    q.set_defaults(func=cmd_eval_perplexity)
    k = esub.add_parser("curve", help="the fast suite on every train.save_at_words checkpoint of every model of a config")
    _add_config_args(k)
    k.set_defaults(func=cmd_eval_curve)

    p = sub.add_parser("finetune", help="fine-tune on a (Super)GLUE or MSGS task in BabyLM's format")
    p.add_argument("--model", required=True, help="Hugging Face causal-LM folder, or a model id in the local Hugging Face cache")
    p.add_argument("--data", required=True, help="folder with {task}.train.json(l) and validation files")
    p.add_argument("--task", required=True, help="cola, sst2, mrpc, qqp, mnli, mnli-mm, qnli, rte, boolq, multirc, wsc, or an MSGS task")
    p.add_argument("--out", help="folder for the results (result.json, predictions.json) and the selected model (model/)")
    for flag, typ in [("--lr", float), ("--batch-size", int), ("--epochs", int), ("--seed", int), ("--patience", int),
                      ("--eval-every", int), ("--max-train-examples", int)]:
        p.add_argument(flag, type=typ, default=None,
                       help="override the BabyLM pipeline default (docs/config.md, eval.finetune_defaults)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_finetune)


def _add_publishing_verbs(sub: Any) -> None:
    """download, report, export, config: data in, results and models out, and the config itself."""
    p = sub.add_parser("download", help="fetch public evaluation data")
    dsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    d = dsub.add_parser("blimp", help="download BLiMP (67 paradigms) and verify it")
    d.add_argument("--to", default=None, help="destination folder (default: ~/.cache/babyllama/blimp)")
    d.add_argument("--url", default=None, help="archive URL (default: the public BLiMP release)")
    d.set_defaults(func=cmd_download_blimp)

    p = sub.add_parser("report", help="rebuild report.md / report.html from what is on disk")
    p.add_argument("out_dir", help="an experiment's out_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="publish a model: Hub-ready folder or GGUF for llama.cpp, with a model card")
    p.add_argument("model_dir", help="a model folder, e.g. runs/demo/models/baby-llama-demo")
    p.add_argument("--to", required=True, help="destination folder (new, empty, or an earlier export)")
    p.add_argument("--format", default="gguf", help="gguf (llama.cpp; default), hf (folder for huggingface-cli upload) or "
                   "babylm-submission (final model, chck_<N>M checkpoints, official results files, card)")
    p.add_argument("--quant", default=None, help="GGUF weight type: f16 (default), f32 or q8_0")
    p.add_argument("--license", default="apache-2.0", help="licence id for the model card (default: apache-2.0)")
    p.add_argument("--language", default="en", help="language code for the model card (default: en)")
    p.add_argument("--base-model", default=None, metavar="OWNER/NAME",
                   help="GGUF: the Hub id of the original (the --format hf upload); the card declares the GGUF a "
                        "quantization of it (base_model, base_model_relation: quantized)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check-submission", help="check a BabyLM submission folder against the organisers' layout")
    p.add_argument("folder", help="a folder written by `babyllama export --format babylm-submission`")
    p.set_defaults(func=cmd_check_submission)

    p = sub.add_parser("config", help="show a resolved config, or document every key")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--docs", action="store_true", help="print every key with its type, default and meaning")
    p.set_defaults(func=cmd_config)


def _add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` on every command (each leaf of the verb tree)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    children = {id(c): c for s in subs for c in s.choices.values()}  # an alias maps to the same parser
    for child in children.values():
        _add_threads_flag(child)
    if not subs:
        parser.add_argument("--threads", type=_thread_count, default=None, metavar="N",
                            help=f"CPU threads for torch (default: the CPUs this process may use; env {threads.ENV_VAR})")


def _thread_count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress: no per-file weight-loading bars or advisory warnings."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it for its loading bars
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def main(argv: list[str] | None = None) -> int:
    from contextlib import ExitStack

    argv = sys.argv[1:] if argv is None else list(argv)
    bad = next((a for a in argv if any(ord(c) < 32 or ord(c) == 127 for c in a)), None)
    if bad is not None:  # a NUL or newline in a path or name: refused before anything is opened or written
        return _fail(f"argument {bad!r} holds a control character; names and paths must be plain text", EXIT_USER)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _expand_paths(args)
    _quiet_libraries()
    try:
        from babyllama.side_by_side import is_child

        threads.apply(args.threads, log=args.verb != "config" and not is_child())
        with ExitStack() as held:  # the out_dir lock, released however the command ends
            args.held = held
            args.func(args)
    except UserError as e:  # a stage run side by side fails with its own process's status
        return _fail(str(e), getattr(e, "exit_code", EXIT_USER))
    except OSError as e:
        return _fail(*describe_os_error(e))
    except (MemoryError, RuntimeError) as e:  # torch's out-of-memory is a RuntimeError (CPU) or a subclass (CUDA)
        if not is_out_of_memory(e):
            raise  # any other RuntimeError is a bug: keep its traceback
        return _fail(describe_out_of_memory(e), EXIT_RESOURCE)
    except KeyboardInterrupt:
        print("babyllama: interrupted", file=sys.stderr)
        return 130
    return 0


#: Command-line options that name a file or folder (``~`` expanded, as in every path of the config).
PATH_ARGS = ("config", "model", "data", "out", "to", "model_dir", "out_dir", "data_dir")


def _expand_paths(args: argparse.Namespace) -> None:
    """``~`` in a path option is the home folder even where the shell does not expand it (``--to=~/x``)."""
    import os

    for key in PATH_ARGS:
        value = getattr(args, key, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, os.path.expanduser(value))


def _fail(message: str, code: int) -> int:
    print(f"{ERROR_PREFIX}{message.replace(chr(10), ' ')}", file=sys.stderr)  # always one line
    return code


def entry() -> NoReturn:
    """The `babyllama` script and `python -m babyllama`: ``main`` on the command line, then a quick exit
    (babyllama.fast_exit: no interpreter teardown once the command's output is complete)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
