"""`gfcore demo`, the main job: job (the command: data, the runs, their rollouts and metrics),
analysis (the statistics and probes of the report) and report (report.md and its figures).
Nothing in the library imports this package."""
