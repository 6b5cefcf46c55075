#!/bin/bash
# Print the array indices of job JOBID that did not complete, comma-separated, for
# `sbatch --array=$(pipelines/slurm/failed_indices.sh JOBID) pipelines/slurm/extract.sbatch ...`.
set -euo pipefail
JOB=${1:?usage: failed_indices.sh JOBID}
sacct -j "$JOB" --array --noheader --parsable2 --format=JobID,State -X \
    | awk -F'|' '$2 !~ /^COMPLETED/ { n = split($1, a, "_"); if (n == 2) print a[2] }' \
    | paste -sd, -
