"""Benchmarks behind ``tools/benchmark.py {model,train,data,eval,deform-attn}``; each mode is one module."""
