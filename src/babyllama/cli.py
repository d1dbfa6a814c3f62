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
from pathlib import Path

from babyllama.errors import EXIT_RESOURCE, EXIT_USER, UserError, describe_os_error


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
    from babyllama.lock import out_dir_lock
    from babyllama.train.distributed import is_main_process

    if is_main_process():
        args.held.enter_context(out_dir_lock(out, " ".join(["babyllama", *args.argv])[:200]))


def _load(args: argparse.Namespace):
    from babyllama.config import load_config, save_resolved
    from babyllama.train.distributed import is_main_process

    cfg = load_config(args.config, args.overrides)
    _lock(args, cfg.out)
    if is_main_process():
        save_resolved(cfg)
    return cfg


def _check_out_file(out: str | None) -> None:
    """``--out FILE`` must name a file in a folder that exists or can be made (checked before the work)."""
    if out and Path(out).is_dir():
        raise UserError(f"--out {out}: is a folder, expected a file name (e.g. {Path(out) / 'result.json'})")


def cmd_prepare(args: argparse.Namespace) -> None:
    from babyllama.data.prepare import prepare

    prepare(_load(args))


def cmd_train(args: argparse.Namespace) -> None:
    from babyllama.train.pretrain import train_model

    cfg = _load(args)
    train_model(cfg, args.model, resume=args.resume)


def cmd_distill(args: argparse.Namespace) -> None:
    from babyllama.distill.run import distill

    distill(_load(args), resume=args.resume)


def cmd_eval_blimp(args: argparse.Namespace) -> None:
    from babyllama.evaluate.blimp import evaluate_blimp, format_blimp_table
    from babyllama.io import atomic_write_json

    _check_out_file(args.out)
    result = evaluate_blimp(
        args.model,
        args.data,
        prefix=args.prefix,
        leading_space=not args.no_leading_space,
        reduction=args.reduction,
        ties_correct=args.ties_correct,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(format_blimp_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


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
        results = {Path(args.model).name: evaluate_perplexity(args.model, data_dir, seq_len=seq_len, device=args.device)}
    else:
        if not args.config:
            raise UserError("evaluate perplexity needs a CONFIG (every model of it) or --model DIR --data-dir DIR")
        results = perplexity_for_config(_load(args), device=args.device)
    print(format_perplexity_table(results))
    if args.out:
        from babyllama.io import atomic_write_json

        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")


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
    result = finetune_task(args.model, args.data, args.task, hp, out=args.out, device=args.device, missing="error")
    print(json.dumps(result, indent=2))


def cmd_download_blimp(args: argparse.Namespace) -> None:
    from babyllama.evaluate.download import download_blimp

    path = download_blimp(args.to, url=args.url)
    print(f"BLiMP is in {path}")


def cmd_run(args: argparse.Namespace) -> None:
    from babyllama.pipeline import run_pipeline

    run_pipeline(_load(args), force=args.force or [])


def cmd_report(args: argparse.Namespace) -> None:
    from babyllama.report import build_report

    if not Path(args.out_dir).is_dir():
        raise UserError(f"{args.out_dir}: not an experiment folder (no such folder)")
    _lock(args, Path(args.out_dir))
    paths = build_report(Path(args.out_dir))
    for p in paths:
        print(f"wrote {p}")


def cmd_config(args: argparse.Namespace) -> None:
    from babyllama.config import config_docs, load_config

    if args.docs:
        print(config_docs(), end="")
        return
    if not args.config:
        raise UserError("config: give a CONFIG to show, or --docs")
    print(load_config(args.config, args.overrides).to_yaml(), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babyllama",
        description="Baby Llama end to end: prepare data, train teachers, distil a student, evaluate, report.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

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

    p = sub.add_parser("evaluate", help="zero-shot evaluation (BLiMP, dev perplexity)")
    esub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = esub.add_parser("blimp", help="BLiMP-style minimal pairs: original, BabyLM 2023/2024 filtered, supplement")
    b.add_argument("--model", required=True, help="Hugging Face causal-LM directory")
    b.add_argument("--data", required=True, help="folder or file of minimal pairs")
    b.add_argument("--out", help="write the result JSON here")
    b.add_argument("--prefix", choices=["eos", "bos", "none"], default="eos", help="token each sentence is conditioned on")
    b.add_argument("--no-leading-space", action="store_true", help="do not prepend a space to each sentence")
    b.add_argument("--reduction", choices=["sum", "mean"], default="sum")
    b.add_argument("--ties-correct", action="store_true", help="count ties as correct, as the BabyLM pipelines do")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    b.set_defaults(func=cmd_eval_blimp)
    q = esub.add_parser("perplexity", help="dev cross-entropy, perplexity and bits per word")
    q.add_argument("config", nargs="?", help="experiment YAML: evaluate every model of it")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--model", help="one Hugging Face causal-LM directory instead")
    q.add_argument("--data-dir", help="prepared data folder (<out_dir>/data) holding dev.bin")
    q.add_argument("--seq-len", type=int, default=None)
    q.add_argument("--out", help="write the result JSON here")
    q.add_argument("--device", default=None)
    q.set_defaults(func=cmd_eval_perplexity)

    p = sub.add_parser("finetune", help="fine-tune on a (Super)GLUE or MSGS task in BabyLM's format")
    p.add_argument("--model", required=True, help="Hugging Face causal-LM directory")
    p.add_argument("--data", required=True, help="folder with {task}.train.json(l) and validation files")
    p.add_argument("--task", required=True, help="cola, sst2, mrpc, qqp, mnli, mnli-mm, qnli, rte, boolq, multirc, wsc, or an MSGS task")
    p.add_argument("--out", help="folder for the results (result.json, predictions.json) and the selected model (model/)")
    for flag, typ in [("--lr", float), ("--batch-size", int), ("--epochs", int), ("--seed", int), ("--patience", int),
                      ("--eval-every", int), ("--max-train-examples", int)]:
        p.add_argument(flag, type=typ, default=None,
                       help="override the BabyLM pipeline default (docs/config.md, eval.finetune_defaults)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("download", help="fetch public evaluation data")
    dsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    d = dsub.add_parser("blimp", help="download BLiMP (67 paradigms) and verify it")
    d.add_argument("--to", default=None, help="destination folder (default: ~/.cache/babyllama/blimp)")
    d.add_argument("--url", default=None, help="archive URL (default: the public BLiMP release)")
    d.set_defaults(func=cmd_download_blimp)

    p = sub.add_parser("run", help="the whole chain: prepare, teachers, distill, control, evaluate, report")
    _add_config_args(p)
    p.add_argument("--force", action="append", metavar="STAGE", help="redo this stage and everything after it (repeatable)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild report.md / report.html from what is on disk")
    p.add_argument("out_dir", help="an experiment's out_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("config", help="show a resolved config, or document every key")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--docs", action="store_true", help="print every key with its type, default and meaning")
    p.set_defaults(func=cmd_config)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress: no per-file weight-loading bars or advisory warnings."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it for its loading bars
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def main(argv: list[str] | None = None) -> int:
    from contextlib import ExitStack

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _quiet_libraries()
    try:
        with ExitStack() as held:  # the out_dir lock, released however the command ends
            args.held = held
            args.func(args)
    except UserError as e:
        return _fail(str(e), EXIT_USER)
    except OSError as e:
        return _fail(*describe_os_error(e))
    except MemoryError:
        return _fail("out of memory; use smaller batches or models, or a machine with more memory", EXIT_RESOURCE)
    except KeyboardInterrupt:
        print("babyllama: interrupted", file=sys.stderr)
        return 130
    return 0


def _fail(message: str, code: int) -> int:
    print(f"babyllama: error: {message.replace(chr(10), ' ')}", file=sys.stderr)  # always one line
    return code


if __name__ == "__main__":
    sys.exit(main())
