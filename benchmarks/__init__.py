"""Speed and memory measurements. Each benchmark writes JSON to benchmarks/results/ (git-ignored)."""
