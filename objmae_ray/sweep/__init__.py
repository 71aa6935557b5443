"""A sweep file to Ray Tune: `spec` (YAML with line numbers, overrides, environment -> SweepSpec),
`checks` (what the schema cannot see, every trial rule on the space), `space` (searched fields and
their values), `search` (Optuna sampler, OptunaSearch, repeats, ASHA), `plan` (trial count and cost),
`rundir` (the run directory and its readers), `tuner` (the Tuner, Ray start-up, fit / resume) and
`cluster` (cluster-launcher YAMLs)."""
