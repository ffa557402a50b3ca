"""Host time of the optimizer step alone, per setup of ``step_speed.py`` (CUDA only).

BERT-base grads from one backward; then 20 optimizer steps timed on the host (the GPU runs
behind), and a cProfile of 20 more, sorted by own time: where the per-step Python goes. The
default rule runs in its state after a shift (``step_speed._as_after_shift``); ``--v4``
adds the previous default's rows.

    PYTHONPATH=src python benchmarks/host_time_gpu.py [--v4]
"""

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_speed as S  # noqa: E402


def main() -> None:
    dev = torch.device("cuda")
    rows = S.GPU_ROWS[:4] + S.NO_GRAPH_ROWS + (S.V4_ROWS if "--v4" in sys.argv[1:] else ())
    for name in rows:
        model, ids, labels = S._bert(dev)
        params = [p for p in model.parameters() if p.requires_grad]
        opt_step, _, owner = S._setup(name, params)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(input_ids=ids, labels=labels).loss.backward()
        for _ in range(5):
            opt_step()
        if owner is not None:
            S._as_after_shift(owner, params)
            opt_step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            opt_step()
        host = (time.perf_counter() - t) / 20 * 1e3
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 20 * 1e3
        print(f"== {name}: host {host:.2f} ms/step, wall incl. sync {wall:.2f} ms/step")
        if name != S.GPU_ROWS[0]:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(20):
                opt_step()
            prof.disable()
            torch.cuda.synchronize()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(22)
            print(out.getvalue()[-6000:])
        del model, params, opt_step, owner
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
