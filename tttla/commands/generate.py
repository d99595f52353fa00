"""``tttla generate``: emit the PyTorch forms of a variant, and its Triton form when it is parallel."""

from __future__ import annotations

import argparse

from tttla.commands._variant_arg import VARIANT_HELP, check_folder

EPILOG = """\
examples:
  tttla generate my_rule.py --out kernels/        writes kernels/my_rule/{__init__,_common,recurrent,chunk}.py
                                                  (and triton_chunk.py for a parallel variant)
  tttla generate lact_v2 --out /tmp/k             a catalog variant, outside the package
  tttla generate --catalog --force                regenerate the package's own tttla_kernels/ modules

The generated package is importable by path (codegen.generate.import_generated) or, once its
folder is on sys.path, as a normal package: from my_rule import chunk_my_rule. As a layer of a
model (projections, parameters, decoding cache): tttla_kernels.layers.build(my_rule, hidden_size=...,
num_heads=...) with the imported package.
"""


def add_parser(sub):
    p = sub.add_parser(
        "generate",
        help="generate PyTorch (recurrent and chunk) and Triton modules for a variant",
        description="Derive a variant and write its generated modules: recurrent.py (the "
        "linear-attention recurrence), chunk.py (the parallel chunked form, or the chunk scan "
        "for a variant that is not parallel) and, for a prefix_scan or delta_chunk variant, triton_chunk.py "
        "(Triton forward and backward kernels of the chunked form); _common.py holds what they share. "
        "It prints each form's kind (parallel, chunk_scan, recurrence) and why a form is not parallel.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("variant", metavar="VARIANT", nargs="?", help=VARIANT_HELP)
    p.add_argument("--out", "-o", default="tttla_generated", metavar="DIR",
                   help="folder to write VARIANT/ into (default ./tttla_generated)")
    p.add_argument("--catalog", action="store_true", help="regenerate every catalog variant into tttla_kernels/")
    p.add_argument("--force", action="store_true",
                   help="allow writing into the tttla_kernels package or over a folder tttla did not generate")
    p.set_defaults(handler=run)


def run(args) -> int:
    from codegen.generate import PACKAGE_ROOT, GenerationError, generate
    from codegen.plan import plan
    from derivations.catalog import CATALOG
    from derivations.derive import derive
    from derivations.loading import load_variant
    from verify.progress import progress

    if args.catalog:
        if args.variant:
            raise GenerationError("give either VARIANT or --catalog, not both")
        for name in progress(CATALOG, "generate", unit="variant"):
            generate(name, PACKAGE_ROOT, force=args.force)
        print(f"regenerated {len(CATALOG)} variants in {PACKAGE_ROOT}")
        return 0
    if not args.variant:
        raise GenerationError("name a VARIANT (catalog name or FILE.py[:ATTR]) or pass --catalog")
    check_folder(args.out)
    form = derive(load_variant(args.variant), certify=False)
    paths = generate(form, args.out, force=args.force)
    print(f"wrote {paths[0].parent}/")
    for path in paths:
        print(f"  {path.name}")
    print("forms (codegen.plan):")
    print("\n".join(f"  {line}" for line in plan(form).describe()))
    print(f"as a layer of a model: tttla_kernels.layers.build(codegen.generate.import_generated("
          f"{form.variant.name!r}, {str(args.out)!r}), hidden_size=..., num_heads=...)")
    return 0
