"""Benchmarks behind ``tools/benchmark.py {model,train,data,eval}``; each mode is one module."""
