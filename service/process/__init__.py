"""Process wiring beside the app factory: what one process opens and runs (runtime, startup, the
event hub, the metrics scrape, the shared weight budget, the worker's own HTTP)."""
