"""Where a generated form spends its GPU time: torch.profiler's kernel table for one call.

    python benchmarks/profile_gpu.py lact_v2 --form triton --T 32768 --dim 384 --chunk 2048
    python benchmarks/profile_gpu.py linear_attention --batch 4 --heads 16 --T 8192 --dim 128 --chunk 64 128 256

Prints, per chunk size, the median time of the forward and of forward+backward (as
benchmarks/run_gpu.py measures them) and the top kernels of one profiled forward+backward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from run_gpu import _case, _forward, timing  # noqa: E402

from verify.bench import forward_backward  # noqa: E402
from verify.forms import cast_case  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant")
    parser.add_argument("--form", default="triton")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--T", type=int, default=32768)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk", type=int, nargs="+", default=[2048])
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args(argv)
    from codegen.generate import import_generated
    from derivations.catalog import CATALOG

    variant = CATALOG[args.variant]
    fn = import_generated(args.variant).FORMS[args.form]
    for chunk in args.chunk:
        shape = {"batch": args.batch, "heads": args.heads, "seq_len": args.T, "dim": args.dim, "chunk": chunk}
        case, _ = _case(variant, shape)
        compute_chunk = chunk if variant.schedule.fixed else None
        forward = _forward(variant, fn, cast_case(case, torch.bfloat16, requires_grad=False, device="cuda"),
                           compute_chunk)
        both = forward_backward(variant, fn, cast_case(case, torch.bfloat16, requires_grad=True, device="cuda"),
                                compute_chunk)
        print(f"{args.variant} {args.form} chunk={chunk}: forward {timing(forward, 'cuda').median * 1e3:.3f} ms, "
              f"forward+backward {timing(both, 'cuda').median * 1e3:.3f} ms", flush=True)
        for what, run in (("forward", forward), ("forward+backward", both)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
            print(f"-- {what}, chunk={chunk}")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
