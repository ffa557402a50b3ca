"""The text benchmark (issue 14) on a tiny corpus made in tmp_path."""

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from swgl import SWGLWrapper, cli
from swgl.bench.methods import Context
from swgl.bench.text import bench, metrics, report
from swgl.bench.text.config import TextConfig
from swgl.bench.text.corpora import (
    CHUNK,
    _stdlib,
    load_domain,
    read_domain,
    split_bytes,
)
from swgl.bench.text.methods import build_method, text_spec
from swgl.bench.text.model import ByteTransformer, ModelSize
from swgl.bench.text.stream import domain_weights, eval_windows, sample_windows
from swgl.bench.text.train import lr_lambda
from swgl.rules.synaptic import STRENGTH

FORTUNES = Path("usr/share/games/fortunes")
WORDS = {
    "en": ["the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on",
           "are", "as", "with", "his", "they"],
    "de": ["der", "die", "und", "in", "den", "von", "zu", "das", "mit", "sich", "des", "auf",
           "ist", "im", "dem", "nicht", "ein"],
}


def _text(words: list[str], n_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(words) for _ in range(8)) + "\n%\n"
        out.append(line)
        size += len(line)
    return "".join(out)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder mimicking / with English and German fortunes and a small stdlib."""
    root = tmp_path_factory.mktemp("root")
    for name, sub in (("en", ""), ("de", "de")):
        folder = root / FORTUNES / sub
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (folder / f"{name}{i}").write_text(_text(WORDS[name], 30 * CHUNK // 2, i))
            (folder / f"{name}{i}.dat").write_bytes(b"\x00" * 64)  # index files are skipped
    (root / FORTUNES / "art").write_text("ASCII ART\n" * 100)  # excluded by name
    (root / FORTUNES / "link").symlink_to(root / FORTUNES / "de" / "de0")  # fortunes-it style
    stdlib = _stdlib(root)
    (stdlib / "test").mkdir(parents=True)
    (stdlib / "mod.py").write_text("def f(x):\n    return x + 1\n" * 3000)
    (stdlib / "test" / "test_mod.py").write_text("SKIPPED = True\n" * 10)
    return root


def tiny(root: Path, **kw) -> TextConfig:
    base = dict(size="tiny", domains=("en", "de", "python"), seeds=(0,), data_dir=str(root),
                steps_per_domain=4, methods=("naive-adamw",))
    return TextConfig(**{**base, **kw})


# -- corpora ----------------------------------------------------------------------------------


def test_fortunes_loader_reads_only_text_files(root):
    data = read_domain("en", root)
    expected = b"".join((root / FORTUNES / f"en{i}").read_bytes() for i in range(2))
    assert data == expected.replace(b"\n%\n", b"\n\n")
    assert b"ASCII ART" not in data and b"der" not in data.split()


def test_python_loader_skips_test_folders(root):
    data = read_domain("python", root)
    assert data.startswith(b"def f(x)") and b"SKIPPED" not in data


def test_splits_are_fixed_disjoint_and_interleaved():
    data = bytes(range(256)) * (40 * CHUNK // 256)
    a, b = split_bytes("x", data), split_bytes("x", data)
    assert torch.equal(a.val, b.val) and torch.equal(a.test, b.test)
    assert (len(a.train), len(a.val), len(a.test)) == (32 * CHUNK, 4 * CHUNK, 4 * CHUNK)
    chunks = np.frombuffer(data, np.uint8).reshape(-1, CHUNK)
    assert torch.equal(a.val[:CHUNK], torch.from_numpy(chunks[8].copy()))
    assert torch.equal(a.test[-CHUNK:], torch.from_numpy(chunks[39].copy()))
    capped = split_bytes("x", data, max_bytes=20 * CHUNK)
    assert len(capped.train) + len(capped.val) + len(capped.test) == 20 * CHUNK
    with pytest.raises(ValueError, match="at least"):
        split_bytes("x", b"abc")


@pytest.mark.parametrize("domain, package", [("de", "fortunes-de"), ("es", "fortunes-es"),
                                             ("it", "fortunes-it"), ("kjv", "bible-kjv")])
def test_missing_corpus_says_which_package(tmp_path, domain, package):
    with pytest.raises(FileNotFoundError, match=f"apt-get install {package}"):
        read_domain(domain, tmp_path)


def test_unknown_domain():
    with pytest.raises(ValueError, match="domain must be one of"):
        read_domain("klingon")


@pytest.mark.skipif(shutil.which("bible") is None or not Path("/usr/lib/bible.data").is_file(),
                    reason="needs apt packages bible-kjv and bible-kjv-text")
def test_kjv_decodes_the_whole_bible():
    data = read_domain("kjv")
    assert data.count(b"In the beginning God created") == 1
    assert b"The grace of our Lord Jesus Christ be with you all. Amen." in data
    assert len(data) > 4_000_000


# -- stream, model, schedule ------------------------------------------------------------------


def test_domain_weights():
    assert domain_weights("text-domains", 7, 4, 3).tolist() == [0, 1, 0]
    assert domain_weights("text-drift", 0, 4, 3).tolist() == [1, 0, 0]     # pure first half
    assert domain_weights("text-drift", 6, 4, 3).tolist() == [0, 1, 0]     # middle of 1
    assert np.allclose(domain_weights("text-drift", 8, 4, 3), [0, 0.5, 0.5])
    assert domain_weights("text-drift", 11, 4, 3).tolist() == [0, 0, 1]
    steps = [domain_weights("text-drift", s, 4, 3) for s in range(12)]
    assert all(abs(w.sum() - 1) < 1e-12 for w in steps)
    assert max(np.abs(a - b).max() for a, b in zip(steps, steps[1:])) <= 0.25  # smooth


def test_windows():
    data = torch.arange(100, dtype=torch.uint8)
    w = sample_windows(data, 5, 9, torch.Generator().manual_seed(0))
    assert w.shape == (5, 10) and w.dtype == torch.int64
    assert torch.equal(w[:, 1:] - w[:, :-1], torch.ones(5, 9, dtype=torch.int64))
    e = eval_windows(data, 3, 9)
    assert e[0, 0] == 0 and e[-1, -1] == 99


def test_model_is_causal_and_class_second():
    torch.manual_seed(0)
    model = ByteTransformer(ModelSize(16, 2, 2, 12))
    x = torch.randint(0, 256, (2, 12))
    out = model(x)
    assert out.shape == (2, 256, 12)
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 256
    assert torch.allclose(model(y)[:, :, :8], out[:, :, :8], atol=1e-6)
    assert not torch.allclose(model(y)[:, :, 8:], out[:, :, 8:])
    assert model.head.weight is model.tok.weight
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_lr_schedule():
    f = lr_lambda(100, 0.1, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.1, abs=1e-3)
    assert f(55) == pytest.approx(0.55)
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_on_a_hand_made_loss_matrix():
    L = [[2.0, 5.0, 5.5],
         [2.6, 1.5, 5.0],
         [3.0, 1.9, 1.2]]
    assert metrics.final_loss(L) == pytest.approx((3.0 + 1.9 + 1.2) / 3)
    assert metrics.learning_loss(L) == pytest.approx((2.0 + 1.5 + 1.2) / 3)
    # domain 0: 3.0 - min(2.0, 2.6); domain 1: 1.9 - 1.5
    assert metrics.forgetting(L) == pytest.approx(((3.0 - 2.0) + (1.9 - 1.5)) / 2)
    # the best loss after training counts, not only the one right after it
    assert metrics.forgetting([[2.0, 9.0], [1.5, 1.0]]) == pytest.approx(-0.5)
    assert metrics.forgetting([[2.0]]) == 0.0
    assert metrics.relative_gap(1.01, 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="square"):
        metrics.final_loss([[1.0, 2.0]])


# -- methods ------------------------------------------------------------------------------------


def test_methods_run_on_adamw_and_groups_leave_non_weights_unmodulated(root):
    cfg = tiny(root, methods=("replay", "l2-init", "upgd", "swgl-adamw-groups"))
    assert text_spec("replay", cfg).optimizer == "adamw"
    assert text_spec("upgd", cfg).optimizer == "upgd"
    model = ByteTransformer(cfg.model_size())
    method = build_method(text_spec("swgl-adamw-groups", cfg), model, Context(256, 4), 1e-3)
    assert isinstance(method.optimizer, SWGLWrapper)
    # the default v6: no damping and no pull leave a step as AdamW makes it
    strength = {id(p): (g.get("swgl_lambda_reg"), g.get("swgl_consolidation"))
                for g in method.optimizer.param_groups for p in g["params"]}
    assert strength[id(model.tok.weight)] == strength[id(model.ln_f.weight)] == (0.0, 0.0)
    assert strength[id(model.blocks[0].qkv.bias)] == (0.0, 0.0)
    assert strength[id(model.blocks[0].qkv.weight)] == (0.0, STRENGTH)  # v6's defaults
    l2 = build_method(text_spec("l2-init", cfg), model, Context(256, 4), 1e-3)
    assert float(l2.penalty().detach()) == 0.0
    with torch.no_grad():
        model.ln_f.bias.add_(1.0)
    assert float(l2.penalty().detach()) == pytest.approx(0.5 * l2.lam * model.ln_f.bias.numel())


def test_config_rejects_bad_values(root):
    with pytest.raises(ValueError, match="scenario must be one of"):
        tiny(root, scenarios=("permuted",))
    with pytest.raises(ValueError, match="method must be one of"):
        tiny(root, methods=("nope",))
    with pytest.raises(ValueError, match="unknown option"):
        tiny(root, method_opts={"naive-adamw": {"lamb": 1}})
    with pytest.raises(ValueError, match="divisible"):
        tiny(root, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="repeat"):
        tiny(root, domains=("en", "en"))
    with pytest.raises(ValueError, match="lr_grid must hold positive"):
        tiny(root, lr_grid=(1e-3, 0.0))
    with pytest.raises(TypeError, match="steps_per_domain must be an int"):
        tiny(root, steps_per_domain=2.5)


# -- end to end ---------------------------------------------------------------------------------


METHODS = ("naive-adamw", "replay", "ewc", "online-ewc", "l2-init", "upgd", "swgl-adamw",
           "swgl-adamw-groups")


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of CPU attention
def test_end_to_end_every_method(root, tmp_path):
    cfg = tiny(root, methods=METHODS, lr_grid=(3e-3, 1e-2), upgd_grid=(0.05,),
               method_opts={"ewc": {"lam": 10.0}})
    res = bench.run(cfg, out_dir=tmp_path)
    report.write_all(res)
    assert len(res.tuning) == 3 * 2 + 1
    for s in cfg.scenarios:
        assert res.chosen_lr[s]["naive-adamw"] in (3e-3, 1e-2)
        assert res.chosen_lr[s]["replay"] == res.chosen_lr[s]["naive-adamw"]
        assert res.chosen_lr[s]["upgd"] == 0.05
    for cell in res.cells:
        L = np.array(cell["L"])
        assert L.shape == (3, 3) and np.isfinite(L).all()
        assert cell["split"] == "test"
        assert L[0, 0] < cell["b"][0]  # training on a domain lowers its loss
    assert {r["method"] for r in res.summary} == set(METHODS)
    for name in ("results.json", "results.csv", "loss_matrix_text-domains.png",
                 "domain_curves_text-domains.png"):
        assert (res.run_dir / name).is_file()
    # resume reuses every cell
    seen = []
    bench.run(cfg, out_dir=tmp_path, resume=True, on_cell=lambda c, cached: seen.append(cached))
    assert seen and all(seen)


def test_cells_are_reproducible(root, tmp_path):
    cfg = tiny(root, lr_grid=())
    a = bench.run(cfg, out_dir=tmp_path / "a").cells[0]
    b = bench.run(cfg, out_dir=tmp_path / "b").cells[0]
    assert a["L"] == b["L"] and a["lr"] == b["lr"] == 3e-3


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_cli_runs_the_boundary_free_form(root, tmp_path, capsys):
    args = ["bench", "--scenario", "text-drift", "--text-size", "tiny", "--text-domains",
            "en,python", "--seeds", "1", "--steps-per-domain", "5", "--lr-grid", "none",
            "--data-dir", str(root), "--out-dir", str(tmp_path), "--json", "--no-plots",
            "--methods", "naive-adamw,online-ewc,swgl-adamw",
            "--method-opts", "swgl-adamw.lr=0.002"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen_lr"]["text-drift"] == {"naive-adamw": 3e-3, "online-ewc": 3e-3,
                                              "swgl-adamw": 0.002}
    assert cli.main(["plot", out["run_dir"], "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "domain_curves_text-drift.png", "loss_matrix_text-drift.png"]
    assert all(math.isfinite(r["final_loss_mean"]) for r in out["summary"])


def test_cli_without_methods_runs_the_text_defaults():
    # the --help example passes no --methods (argparse leaves it None): it once reached the
    # config as None and failed
    from swgl.bench.config import DEFAULT_METHODS as IMAGE_METHODS
    from swgl.bench.text import cli as text_cli
    from swgl.bench.text.config import DEFAULT_METHODS

    for argv in ([], ["--methods", ",".join(IMAGE_METHODS)]):
        args = cli.build_parser().parse_args(["bench", "--scenario", "text-domains", *argv])
        cfg = text_cli._config(args, IMAGE_METHODS, {}, {})
        assert cfg.methods == DEFAULT_METHODS


def test_cli_refuses_image_flags_and_mixed_scenarios(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--scenario", "text-domains", "--epochs", "3"])
    assert "--epochs: image-scenario option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--scenario", "text-domains,permuted"])
    assert "cannot share a run" in capsys.readouterr().err


def test_prepared_corpus_gives_the_same_splits(root, tmp_path):
    from swgl.bench.text.corpora import DOMAINS, export

    only = {k: DOMAINS[k] for k in ("en", "python")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("swgl.bench.text.corpora.DOMAINS", only)
        files = export(tmp_path, root, max_bytes=12 * CHUNK)
    assert [f.name for f in files] == ["en.txt", "python.txt"]
    for name in only:
        a = split_bytes(name, read_domain(name, root), 12 * CHUNK)
        b = split_bytes(name, read_domain(name, tmp_path), 12 * CHUNK)
        assert all(torch.equal(a.split(s), b.split(s)) for s in ("train", "val", "test"))


def test_load_domain_is_cached(root):
    assert load_domain("en", root) is load_domain("en", root)
