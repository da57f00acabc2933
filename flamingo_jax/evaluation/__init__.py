"""Few-shot evaluation: benchmarks (datasets: official files -> examples; benchmarks: name ->
reader, task, metric), metrics as the official tools compute them, prompts, RICES; one evaluator
per kind (generation: captions and answers; scoring: classification; binding: episodic
support), which the harness orchestrates.

Nothing is imported here, so that `import flamingo_jax.evaluation.x` stays as light as x.
"""
