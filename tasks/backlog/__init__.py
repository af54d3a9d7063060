"""classify_backlog: months of history through Batch Transform (or the local runner), into the nightly partitions."""
