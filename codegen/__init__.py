"""Code generation: SymPy printers and Jinja templates that emit ``tttla_kernels`` modules."""
