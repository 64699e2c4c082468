"""The application layer: the `clusterloss` command line and what it runs (data settings,
loss recipes with typed options, training runs and their directories, evaluation, galleries,
comparisons, reports). The library (`clusterloss.losses`, `layers`, `models`, `evaluation`,
`index`, ...) never imports it."""
