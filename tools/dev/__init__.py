"""Developer tools the plugin zip leaves out: benchmarks, the demo's steps, test data, the layer check."""
