"""Generated runtime modules of tttla, one folder per variant, plus shared helpers.

Imports only torch (and Triton for the Triton forms): a model that uses the kernels
needs neither SymPy nor Jinja.
"""
