"""The studies and the grid they share (arms x hackers x seeds -> tables with intervals over seeds).

`grid` (the shared runner), `demo` (the main table), `transfer` (paper Table 2), `faces` with
`face_metrics` and `faces_cli` (the face case study, paper Table 3), `robustness` (the defences table).
Nothing is imported here, so `mem-toolkit --help` stays fast.
"""
