import json

import pytest

from swgl import cli

TINY = ["--scenario", "split-class", "--methods", "naive-sgd,swgl-sgd", "--seeds", "1",
        "--hidden", "16", "--epochs", "1", "--train-per-task", "40", "--test-per-task", "20",
        "--no-tune"]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    parser = cli.build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    for action in bench._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, action.option_strings


def test_bench_json(tmp_path, capsys):
    assert cli.main(["bench", *TINY, "--json", "--out-dir", str(tmp_path), "--no-plots",
                     "--swgl-opts", "rule=v1,lambda_reg=0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["swgl_opts"] == {"rule": "v1", "lambda_reg": 0}
    assert {r["method"] for r in out["summary"]} == {"naive-sgd", "swgl-sgd"}
    assert (tmp_path / out["run_id"] / "results.csv").is_file()


@pytest.mark.parametrize("opts, label", [(["--swgl-opts", "rule=v7"], "swgl-* rows: rule=v7"),
                                         ([], "swgl-* rows: the default rule (v6)")])
def test_the_table_says_which_rule_the_swgl_rows_ran(tmp_path, capsys, opts, label):
    """``--swgl-opts rule=v7`` changed every swgl-* row and the table did not say so (a user's
    audit of v7)."""
    assert cli.main(["bench", *TINY, "--out-dir", str(tmp_path), "--no-plots", *opts]) == 0
    assert label in " ".join(capsys.readouterr().out.split())


def test_run_files_are_readable_and_their_columns_unique(tmp_path, capsys):
    import csv
    import os

    from swgl.bench import results

    old = os.umask(0o022)
    results._umask.cache_clear()   # read once per process: read it under this test's
    try:
        assert cli.main(["bench", *TINY, "--out-dir", str(tmp_path), "--no-plots"]) == 0
    finally:
        os.umask(old)
        results._umask.cache_clear()
    (run_dir,) = tmp_path.iterdir()
    for name in ("results.json", "results.csv", "cells.csv"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name   # mkstemp's is 0600
    with open(run_dir / "cells.csv") as f:
        header = next(csv.reader(f))
    assert len(header) == len(set(header)), header


@pytest.mark.parametrize("argv, match", [
    (["--variant", "swgl-sgd=naive-sgd:lr=0.01"], "has the name of a registered method"),
    (["--tune", "--tune-grid", "swgl-sdg=none"], "['swgl-sdg'], not among the run's methods"),
    # a user's audit (twenty-first session): each was ignored, replaced or failed mid-run
    (["--tune", "--methods", "naive-sgd,fast", "--variant", "fast=naive-sgd:lr=0.5"],
     "variant 'fast' sets ['lr'], which --tune tunes"),
    (["--tune", "--methods", "naive-sgd,e2", "--variant", "e2=ewc:lam=5"],
     "variant 'e2' sets ['lam'], which --tune tunes"),
    (["--no-tune", "--methods", "ewc", "--method-opts", "ewc.lam=abc"],
     "ewc.lam must be a real number, got 'abc'"),
    (["--no-tune", "--methods", "ewc", "--method-opts", "ewc.lam=nan"],
     "ewc.lam must be finite, got nan"),
    (["--no-tune", "--methods", "ewc", "--method-opts", "ewc.lam=-5"],
     "ewc.lam must be >= 0.0, got -5"),
    (["--no-tune", "--methods", "naive-sgd", "--method-opts", "naive-sgd.lr=-1"],
     "naive-sgd.lr must be > 0.0, got -1"),
    (["--no-tune", "--methods", "naive-sgd", "--method-opts", "naive-sgd.momentum=-1"],
     "Invalid momentum value"),
    (["--methods", "naive-sgd,naive-sgd"], "methods lists ['naive-sgd'] more than once"),
    (["--device", "gpu"], "device must be a torch device such as cpu, cuda or cuda:1"),
    (["--no-tune", "--tune-grid", "ewc.lam=1:2", "--lr-range", "sgd=0.1:1"],
     "--tune-grid, --lr-range set the tuning, which --no-tune skips"),
    (["--scenario", "text-domains", "--preset", "short"],
     "not read by the text scenarios"),
    (["--variant", "x=naive-sgd:lr=0.5"], "variants ['x'] are not in methods"),
    (["--methods", "naive-sgd", "--swgl-opts", "alpah=0.9"], "no method of ['naive-sgd']"),
    (["--data-dir", "/tmp"], "--data-dir: digits is embedded"),
    (["--steps-per-task", "5"], "--epochs: --steps-per-task"),
    (["--stream-steps", "5"], "--stream-steps: stream-scenario option(s)"),
    (["--device", "meta"], "the benchmark trains on ['cpu', 'cuda', 'mps']"),
    pytest.param(["--device", "cuda"], "torch.cuda.is_available() is False",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(),
                                          reason="checks the CPU's answer")),
])
def test_what_a_run_would_ignore_replace_or_fail_on_is_refused_first(argv, match, tmp_path,
                                                                     capsys):
    # before any cell: no run folder is made
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *TINY, "--out-dir", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bench_table_and_plot_command(tmp_path, capsys):
    assert cli.main(["bench", *TINY, "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ACC %" in out and "naive-sgd" in out
    run_dir = next(tmp_path.iterdir())
    for png in run_dir.glob("*.png"):
        png.unlink()
    assert cli.main(["plot", str(run_dir)]) == 0
    assert list(run_dir.glob("acc_matrix_*.png"))


@pytest.mark.parametrize("argv, match", [
    (["--methods", "naive-sgd,bogus"], "method must be one of"),
    (["--swgl-opts", "alpha"], "expected KEY=VALUE"),
    (["--method-opts", "lr=0.1"], "METHOD.OPTION=VALUE"),
    (["--variant", "x"], "NAME=BASE"),
    (["--threads", "0"], "--threads"),
    (["--scenario", ""], "expected a comma-separated list, got ''"),   # was taken as text
])
def test_bad_arguments_exit_with_a_message(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *TINY, *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_parse_value():
    assert [cli.parse_value(v) for v in ("1", "0.5", "true", "False", "none", "v2")] == [
        1, 0.5, True, False, None, "v2"]


TUNE = ["bench", "--scenario", "permuted", "--tasks", "2", "--methods", "swgl-sgd",
        "--seeds", "2", "--hidden", "16", "--epochs", "1", "--train-per-task", "60",
        "--test-per-task", "30", "--tune-lrs", "1", "--tune-grid", "swgl-sgd.swgl.lambda_reg=1:10"]


def test_tune_is_one_command_with_a_table_and_a_frontier(tmp_path, capsys):
    assert cli.main([*TUNE, "--out-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "vs naive-sgd" in captured.out and "baseline" in captured.out
    assert "cell" in captured.err                          # the progress bar
    (tune_dir,) = tmp_path.glob("tune-digits-*")
    assert (tune_dir / "frontier_permuted.png").is_file()
    grid = json.loads((tune_dir / "grid.json").read_text())
    assert {len(p) for p in grid["grids"].values()} == {2}
    assert (cli.main([*TUNE, "--out-dir", str(tmp_path), "--resume", "--json", "--no-plots"])
            == 0)
    out = json.loads(capsys.readouterr().out)
    assert out["tune_dir"] == str(tune_dir)
    assert {r["method"] for r in out["rows"]} == {"naive-sgd", "swgl-sgd"}


def test_tune_without_plots_still_writes_the_final_runs_results(tmp_path, capsys):
    """``--no-plots`` dropped results.json and the CSVs of the final runs, so ``swgl plot``
    could not read them (a user's audit)."""
    assert cli.main([*TUNE, "--out-dir", str(tmp_path), "--no-plots"]) == 0
    (tune_dir,) = tmp_path.glob("tune-digits-*")
    (run_dir,) = (tune_dir / "test").iterdir()
    for name in ("results.json", "results.csv", "cells.csv"):
        assert (run_dir / name).is_file(), name
    assert not list(tune_dir.rglob("*.png"))


def test_plot_of_a_tune_folder_says_where_its_plots_come_from(tmp_path, capsys):
    assert cli.main([*TUNE, "--out-dir", str(tmp_path), "--no-plots"]) == 0
    (tune_dir,) = tmp_path.glob("tune-digits-*")
    with pytest.raises(SystemExit) as exc:
        cli.main(["plot", str(tune_dir)])
    assert exc.value.code == 2
    assert "it is a --tune folder" in capsys.readouterr().err
    assert cli.main([*TUNE, "--out-dir", str(tmp_path), "--resume"]) == 0   # as it says
    assert (tune_dir / "frontier_permuted.png").is_file()


def test_bench_without_scenario_runs_the_presets_scenarios(tmp_path, capsys):
    # the README's main job passes no --scenario (once crashed in the text dispatch)
    argv = [a for a in TUNE if a not in ("--scenario", "permuted")]
    assert cli.main([*argv, "--out-dir", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out   # (a narrow column may wrap "vs naive-sgd")
    assert "baseline" in out and "split-class" in out and "permuted" in out


def test_preset_sets_fields_and_flags_win():
    from swgl.bench.presets import PRESETS

    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--preset", "literature", "--dataset", "digits",
                              "--tasks", "3"])
    cfg = cli._config(args)
    assert (cfg.dataset, cfg.n_tasks, cfg.hidden, cfg.steps_per_task, cfg.batch_size) == (
        "digits", 3, 1000, 5000, 128)
    for name in PRESETS:                      # every preset is a valid config
        cli._config(parser.parse_args(["bench", "--preset", name]))
    assert {"short", "long", "literature", "rotated", "split-domain", "stream-input",
            "stream-label", "single-task"} <= set(PRESETS)
    default = cli._config(parser.parse_args(["bench"]))
    assert default.dataset == "digits" and default.seeds == (0, 1, 2)


@pytest.mark.parametrize("argv, match", [
    (["--tune-lrs", "0"], "--tune-lrs must be >= 1"),
    (["--tune-seeds", "x"], "--tune-seeds must be an int"),
    (["--tune-grid", "ewc=3"], "METHOD.OPTION=V1:V2"),
    (["--lr-range", "sgd=0.1"], "OPTIMIZER=LOW:HIGH"),
    (["--lr-range", "sgd=1:0.1"], "lr_ranges['sgd']"),
    (["--lr-range", "nadam=0.1:1"], "optimizer must be one of"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--eval-split", "val"], "--eval-split is set by --tune"),
    (["--method-opts", "swgl-sgd.lr=0.1"], "which --tune tunes"),
])
def test_bad_tune_arguments_exit_with_a_message(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*TUNE, "--out-dir", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


COUNTS = ["--seeds", "--epochs", "--steps-per-task", "--batch-size", "--evals-per-task",
          "--hidden", "--tasks", "--train-per-task", "--test-per-task", "--threads", "--jobs",
          "--stream-steps", "--stream-batch", "--consolidate-every"]


@pytest.mark.parametrize("argv, message", [
    *[([flag, value], f"{flag} must be >= 1, got {value}")
      for flag in COUNTS for value in ("0", "-1")],
    (["--workers", "0"], "argument --jobs/--workers: --jobs must be >= 1, got 0"),
    (["--seeds", "two"], "argument --seeds: --seeds must be an int, got 'two'"),
    (["--first-seed", "-1"], "argument --first-seed: --first-seed must be >= 0, got -1"),
    (["--steps-per-domain", "0"], "--steps-per-domain must be >= 1, got 0"),
])
def test_bad_counts_are_refused_by_the_parser(argv, message, capsys):
    # refused while parsing, before any data is loaded or the progress bar starts
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_exits_with_a_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    from swgl.bench import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "run", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *TINY, "--out-dir", str(tmp_path)])
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err


def test_zero_is_a_valid_first_seed():
    assert cli.build_parser().parse_args(["bench", "--first-seed", "0"]).first_seed == 0


def test_jobs_is_the_process_pool():
    args = cli.build_parser().parse_args(["bench", "--jobs", "4"])
    assert args.workers == 4


def test_preset_lr_spans_reach_the_tuning_and_the_flag_wins():
    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--preset", "literature", "--lr-range", "sgd=0.01:0.1"])
    opts = cli._tune_options(args, cli._config(args))
    assert opts.lr_ranges["adam"] == (1e-6, 1e-3)          # the preset's
    assert opts.lr_ranges["sgd"] == (0.01, 0.1)            # the flag's
    assert cli._tune_options(parser.parse_args(["bench", "--preset", "short"]),
                             cli._config(parser.parse_args(["bench"]))).lr_ranges == {}
