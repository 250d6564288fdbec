"""Benchmarks and the demo: accuracy sweeps, speed, the README's demo report."""
