"""pytest-benchmark micro-benchmarks of fastproxy's Cython pieces (`make bench-micro`)."""
