"""Real-time REST serving of the registry champion.

``app`` (factory + lifespan) → ``routes/`` (one module per resource) → ``deps`` (what a route receives),
``schemas`` (request/response shapes), ``uploads`` (reading /predict bodies); ``reload`` follows the
model source, ``batcher`` shares forward passes between requests, ``sources`` says where models come from.
"""
