"""Few-shot evaluation: benchmarks (datasets: official files -> examples; benchmarks: name ->
reader, task and metric), metrics as the official tools compute them, prompts, RICES.

Nothing is imported here, so that `import flamingo_jax.evaluation.x` stays as light as x.
"""
