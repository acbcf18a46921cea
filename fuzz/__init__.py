"""Fuzzing of every parser of untrusted bytes (``make fuzz``; a short run is in the tests).

Every fuzz input is a byte string read by :class:`fuzz.draw.Draw` as a sequence of choices:
which valid encoding to start from, which structured or raw mutations to apply, whether to
re-sign (and re-encrypt) the mutated value with an attacker's key so the mutation reaches
the code behind the signature and AEAD checks. The same targets run under two engines:
atheris (coverage-guided libFuzzer, ``python -m fuzz``) and a seeded random byte source
(``python -m fuzz --engine random``, and ``tests/test_fuzz_short.py``).

A parser may only raise :class:`~tierlink.errors.TierlinkError`; any other exception, and
any input costing more than the CPU bound, is a finding.
"""
