#!/usr/bin/env bash
# The 4 x 4 x 4 grid: 64 runs of run_my_experiment.py, dispatched to the hosts of a hosts.toml.
#
#   bash examples/grid.sh                 # uses ./hosts.toml and the queue in ./.labtasker/
#   HOSTS=my-hosts.toml bash examples/grid.sh
#
# Each host runs the script from the same absolute path, so on remote hosts put this examples
# directory at that path too (or on the NFS home every server mounts), or edit SCRIPT below.
# LABTASKER names the command (default: labtasker); LABTASKER_DB picks another queue file.
set -euo pipefail

LABTASKER=${LABTASKER:-labtasker}
HOSTS=${HOSTS:-hosts.toml}
SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run_my_experiment.py"

# 1. Queue the grid. The keys are crossed (64 tasks); %{...} fills in each task's values, shell-
#    quoted. --skip-existing makes re-running this script harmless: queued commands are skipped.
$LABTASKER queue add --name grid444 --skip-existing \
    --grid p1=1,2,3,4 --grid p2=a,b,c,d --grid p3=0.1,0.2,0.3,0.4 \
    -- python3 "$SCRIPT" --param1 %{p1} --param2 %{p2} --param3 %{p3}

# 2. Run them: until the queue drains, on every host of $HOSTS (Ctrl-C leaves running tasks
#    running; run dispatch again to collect them).
$LABTASKER dispatch --hosts "$HOSTS"

# 3. What happened: counts per state, then one row per task with its args and result.
$LABTASKER status
$LABTASKER results --state succeeded --format csv --output grid444.csv
$LABTASKER sql "SELECT args.p2 AS p2, avg((result->>'score')::INT) AS mean_score, count(*) AS runs
                FROM tasks WHERE state = 'succeeded' GROUP BY p2 ORDER BY p2"
