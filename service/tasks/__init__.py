"""The task machinery: durable tasks claimed by any process (registry, runner, single_task), what a
task is and records (jobs, records), and what makes them (configs, scheduler)."""
