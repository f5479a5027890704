"""Rich views of tasks, hosts and progress. Rendering only: callers fetch the data."""
