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
])
def test_bad_arguments_exit_with_a_message(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *TINY, *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_parse_value():
    assert [cli.parse_value(v) for v in ("1", "0.5", "true", "False", "none", "v2")] == [
        1, 0.5, True, False, None, "v2"]
